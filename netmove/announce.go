package netmove

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// Announce tells the neighbours on iface that ip now lives at iface's MAC
// address, at once: one gratuitous ARP request (RFC 5227's ARP announcement)
// and one gratuitous ARP reply, as some stacks heed only one of the two.
// Linux peers update an existing neighbour entry from either, which is what
// lets traffic follow an address that moved; a late announcement was seen
// stalling a connection for ~30 s. ip should already be on iface.
//
// Announce writes the frames itself on a packet socket rather than running
// arping, because arping -c 1 waits a second for replies before it exits,
// and that second would be downtime. An interface without an Ethernet
// address (lo) has no neighbours to tell: nothing is sent. IPv6 addresses
// are left to the kernel's unsolicited neighbour advertisements.
//
// Equivalent to: arping -U -c 1 -I $iface $ip; arping -A -c 1 -I $iface $ip
func Announce(iface, ip string) error {
	addr := net.ParseIP(ip)
	if addr == nil {
		return fmt.Errorf("announce: bad IP %q", ip)
	}
	ip4 := addr.To4()
	if ip4 == nil {
		return nil
	}
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return fmt.Errorf("announce %s: %w", ip, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		return fmt.Errorf("announce %s: packet socket: %w", ip, err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index, Halen: 6}
	copy(to.Addr[:], broadcastMAC)
	var errs []error
	for _, op := range []uint16{arpRequest, arpReply} {
		if err := unix.Sendto(fd, arpFrame(op, ifi.HardwareAddr, ip4), 0, to); err != nil {
			errs = append(errs, fmt.Errorf("announce %s on %s: %w", ip, iface, err))
		}
	}
	return errors.Join(errs...)
}

const (
	arpRequest = 1
	arpReply   = 2
)

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// arpFrame builds a broadcast Ethernet frame holding a gratuitous ARP packet
// for ip at mac: sender and target protocol address are both ip. A request
// carries a zero target hardware address (RFC 5227), a reply carries mac.
func arpFrame(op uint16, mac net.HardwareAddr, ip net.IP) []byte {
	f := make([]byte, 14+28)
	copy(f[0:6], broadcastMAC)
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:14], unix.ETH_P_ARP)
	a := f[14:]
	binary.BigEndian.PutUint16(a[0:2], 1)             // hardware type: Ethernet
	binary.BigEndian.PutUint16(a[2:4], unix.ETH_P_IP) // protocol type: IPv4
	a[4], a[5] = 6, 4                                 // address lengths
	binary.BigEndian.PutUint16(a[6:8], op)
	copy(a[8:14], mac)       // sender hardware address
	copy(a[14:18], ip.To4()) // sender protocol address
	if op == arpReply {      // target hardware address
		copy(a[18:24], mac)
	}
	copy(a[24:28], ip.To4()) // target protocol address
	return f
}

// htons converts a 16-bit value to network byte order, as packet sockets
// want their protocol numbers.
func htons(v uint16) uint16 {
	return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, v))
}
