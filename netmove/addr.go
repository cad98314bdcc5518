package netmove

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Iface picks the interface an address in cidr belongs on: the first one
// that already has an address in the same subnet, else the interface of the
// default route. A bare IP without a prefix is accepted.
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
