package netmove

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Iface picks the interface an address in cidr belongs on: the one that
// holds its IP already, else the first one that has an address in the same
// subnet, else the interface of the default route. A bare IP without a
// prefix is accepted.
func Iface(cidr string) (string, error) {
	addr, err := parseAddr(cidr)
	if err != nil {
		return "", err
	}
	addrs, err := listAddrs(familyOf(addr.IP))
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if a.IP.Equal(addr.IP) {
			return linkName(a.LinkIndex)
		}
	}
	for _, a := range addrs {
		// Either subnet containing the other's address counts: the
		// existing address's, or the one cidr gives.
		if a.IPNet.Contains(addr.IP) || addr.IPNet.Contains(a.IP) {
			return linkName(a.LinkIndex)
		}
	}
	routes, err := netlink.RouteList(nil, familyOf(addr.IP))
	if err != nil {
		return "", fmt.Errorf("listing routes: %w", err)
	}
	for _, r := range routes {
		if !isDefault(r) {
			continue
		}
		idx := r.LinkIndex
		if idx == 0 && len(r.MultiPath) > 0 {
			idx = r.MultiPath[0].LinkIndex
		}
		if idx != 0 {
			return linkName(idx)
		}
	}
	return "", fmt.Errorf("no interface for %s: none has an address in its subnet and there is no default route", cidr)
}

// AddAddr puts cidr on iface. An address already there is not an error.
//
// Equivalent to: ip addr add $cidr dev $iface
func AddAddr(iface, cidr string) error {
	link, addr, err := linkAndAddr(iface, cidr)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding %s to %s: %w", cidr, iface, err)
	}
	return nil
}

// DelAddr removes cidr from iface. An address that is not there is not an
// error; a missing interface is.
//
// Equivalent to: ip addr del $cidr dev $iface
func DelAddr(iface, cidr string) error {
	link, addr, err := linkAndAddr(iface, cidr)
	if err != nil {
		return err
	}
	if err := netlink.AddrDel(link, addr); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("removing %s from %s: %w", cidr, iface, err)
	}
	return nil
}

// savedAddr is an address as a host held it: everything `ip addr add` can
// set. RestoreAddr puts it back from this, not from the CIDR alone, which
// would lose what the kernel does not derive from it: a re-added
// 127.0.0.1/8 gets scope global instead of host, an address added without
// a broadcast gets one computed, a label is lost.
type savedAddr struct {
	Iface     string `json:"iface"`
	CIDR      string `json:"cidr"` // IP/PREFIX
	Peer      string `json:"peer,omitempty"`
	Broadcast string `json:"broadcast,omitempty"` // IPv4; "" none
	Label     string `json:"label,omitempty"`     // IPv4
	Scope     int    `json:"scope"`
	Flags     int    `json:"flags"` // those an add may set (settableFlags)
	// Lifetimes in seconds as they were when saved; 0xFFFFFFFF is forever.
	ValidLft     int `json:"valid_lft,omitempty"`
	PreferredLft int `json:"preferred_lft,omitempty"`
}

// settableFlags are the address flags a user sets when adding an address;
// the kernel derives the others (secondary, permanent, tentative,
// deprecated, DAD failed) and ignores or recomputes them on an add.
const settableFlags = unix.IFA_F_NODAD | unix.IFA_F_OPTIMISTIC | unix.IFA_F_HOMEADDRESS |
	unix.IFA_F_MANAGETEMPADDR | unix.IFA_F_NOPREFIXROUTE | unix.IFA_F_MCAUTOJOIN

// SaveAddr describes address cidr of iface as it is now (prefix length,
// scope, flags, label, broadcast, peer, lifetimes), for RestoreAddr. The
// description is text (JSON), to be journaled by the caller. An address
// iface does not hold with that prefix length is an error.
//
// Equivalent to: ip -j addr show dev $iface to $cidr
func SaveAddr(iface, cidr string) (string, error) {
	link, want, err := linkAndAddr(iface, cidr)
	if err != nil {
		return "", err
	}
	var addrs []netlink.Addr
	for range 5 {
		if addrs, err = netlink.AddrList(link, familyOf(want.IP)); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return "", fmt.Errorf("listing the addresses of %s: %w", iface, err)
	}
	for _, a := range addrs {
		if !a.IP.Equal(want.IP) || a.Mask.String() != want.Mask.String() {
			continue
		}
		s := savedAddr{Iface: iface, CIDR: a.IPNet.String(), Label: a.Label, Scope: a.Scope,
			Flags: a.Flags & settableFlags, ValidLft: a.ValidLft, PreferredLft: a.PreferedLft}
		if a.Peer != nil && !a.Peer.IP.Equal(a.IP) {
			s.Peer = a.Peer.String()
		}
		if a.Broadcast != nil {
			s.Broadcast = a.Broadcast.String()
		}
		b, err := json.Marshal(&s)
		if err != nil {
			return "", err
		}
		return string(b), nil
	}
	return "", fmt.Errorf("%s does not hold %s (`ip addr show dev %s` lists what it holds): %w", iface, cidr, iface,
		ErrNoSuchAddr)
}

// RestoreAddr puts back an address SaveAddr described, exactly as it was.
// An address already there is not an error.
//
// Equivalent to: ip addr add $cidr dev $iface scope $scope [brd $brd] [label $label] [peer $peer] [$flags] ...
func RestoreAddr(saved string) error {
	var s savedAddr
	if err := json.Unmarshal([]byte(saved), &s); err != nil {
		return fmt.Errorf("a saved address that does not parse (%v): %.100q", err, saved)
	}
	link, addr, err := linkAndAddr(s.Iface, s.CIDR)
	if err != nil {
		return err
	}
	addr.Label, addr.Scope, addr.Flags = s.Label, s.Scope, s.Flags
	addr.ValidLft, addr.PreferedLft = s.ValidLft, s.PreferredLft
	if s.Peer != "" {
		if addr.Peer, err = netlink.ParseIPNet(s.Peer); err != nil {
			return fmt.Errorf("saved address %s: bad peer %q", s.CIDR, s.Peer)
		}
	}
	if addr.IP.To4() != nil {
		// netlink computes a broadcast for a nil one; 0.0.0.0 sends none,
		// as the address had.
		addr.Broadcast = net.IPv4zero
		if s.Broadcast != "" {
			if addr.Broadcast = net.ParseIP(s.Broadcast).To4(); addr.Broadcast == nil {
				return fmt.Errorf("saved address %s: bad broadcast %q", s.CIDR, s.Broadcast)
			}
		}
	}
	if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("putting %s back on %s: %w", s.CIDR, s.Iface, err)
	}
	return nil
}

// HasAddr reports whether any interface holds the IP of cidr (its prefix
// length does not matter).
//
// Equivalent to: ip -o addr show to ${cidr%/*} | grep -q .
func HasAddr(cidr string) (bool, error) {
	addr, err := parseAddr(cidr)
	if err != nil {
		return false, err
	}
	addrs, err := listAddrs(familyOf(addr.IP))
	if err != nil {
		return false, err
	}
	for _, a := range addrs {
		if a.IP.Equal(addr.IP) {
			return true, nil
		}
	}
	return false, nil
}

// parseAddr parses "IP/PREFIX" or a bare IP, which stands for a host route
// (/32 or /128).
func parseAddr(cidr string) (*netlink.Addr, error) {
	s := cidr
	if !strings.Contains(s, "/") {
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, fmt.Errorf("bad address %q: want IP or IP/PREFIX", cidr)
		}
		if ip.To4() != nil {
			s += "/32"
		} else {
			s += "/128"
		}
	}
	addr, err := netlink.ParseAddr(s)
	if err != nil {
		return nil, fmt.Errorf("bad address %q: want IP or IP/PREFIX", cidr)
	}
	return addr, nil
}

func linkAndAddr(iface, cidr string) (netlink.Link, *netlink.Addr, error) {
	addr, err := parseAddr(cidr)
	if err != nil {
		return nil, nil, err
	}
	link, err := netlink.LinkByName(iface)
	if err != nil {
		return nil, nil, fmt.Errorf("interface %q: %w", iface, err)
	}
	return link, addr, nil
}

func familyOf(ip net.IP) int {
	if ip.To4() != nil {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// listAddrs lists the addresses of every interface, retrying a dump that
// the kernel interrupted because the list changed under it.
func listAddrs(family int) ([]netlink.Addr, error) {
	var err error
	for range 5 {
		var addrs []netlink.Addr
		if addrs, err = netlink.AddrList(nil, family); err == nil {
			return addrs, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("listing addresses: %w", err)
}

func linkName(index int) (string, error) {
	link, err := netlink.LinkByIndex(index)
	if err != nil {
		return "", fmt.Errorf("interface #%d: %w", index, err)
	}
	return link.Attrs().Name, nil
}

// isDefault reports whether r is a default route of the main table
// (netlink reports its destination as nil or as 0.0.0.0/0).
func isDefault(r netlink.Route) bool {
	if r.Table != 0 && r.Table != unix.RT_TABLE_MAIN {
		return false
	}
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}
