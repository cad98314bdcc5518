package netmove

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Removing an address from a host can cut the host off: the issue that
// brought these checks moved 127.0.0.1/8 away, and every local service on
// the machine broke for minutes; a host's own address would have cut SSH
// and the daemon's link. CheckRemove refuses, before anything is touched,
// every removal that can hurt the host it runs on, and says what to do.

// ErrNoSuchAddr is returned (wrapped) by CheckRemove for an address this
// host does not hold with that prefix length.
var ErrNoSuchAddr = errors.New("no such address on this host")

// HostAddr is one address of a host, as CheckRemove sees it.
type HostAddr struct {
	Iface     string
	Loopback  bool         // its interface is a loopback interface (lo)
	Prefix    netip.Prefix // the address and its prefix length (not masked)
	Secondary bool         // IPv4: a secondary address of its subnet
}

// Keep is what a removal must leave alone besides the host's loopback and
// its last addresses.
type Keep struct {
	// Own are the addresses the migration daemon is reached at (its
	// listen and advertised addresses).
	Own []netip.Addr
	// Targets are the addresses of the daemon a migration goes to: the
	// address the kernel sends from to reach them stays.
	Targets []netip.Addr
}

// CheckRemove returns the interface holding cidr ("IP/PREFIX") if removing
// it from this host is safe, and otherwise an error saying why not and
// what to do: loopback (any address on a loopback interface, in 127.0.0.0/8
// or ::1), the daemon's own address (keep.Own), the address this host
// reaches any of keep.Targets from (`ip route get`'s src), an interface's
// last address, and an IPv4 primary address with secondaries in its subnet
// (the kernel would remove them with it, or promote one) are refused. An
// address this host does not hold, or holds with another prefix length, is
// an error matching ErrNoSuchAddr.
func CheckRemove(cidr string, keep Keep) (string, error) {
	p, err := parsePrefix(cidr)
	if err != nil {
		return "", err
	}
	addrs, err := HostAddrs()
	if err != nil {
		return "", err
	}
	var srcs []routeSrc
	for _, t := range keep.Targets {
		src, err := RouteSrc(t)
		if err != nil {
			continue // no route: the migration fails to connect, before anything is touched
		}
		srcs = append(srcs, routeSrc{to: t, src: src})
	}
	a, err := checkRemove(p, addrs, keep.Own, srcs)
	if err != nil {
		return "", err
	}
	return a.Iface, nil
}

// routeSrc is the source address the kernel picks to reach to.
type routeSrc struct{ to, src netip.Addr }

// checkRemove is CheckRemove over a given list of the host's addresses and
// routes: the decision alone, with no netlink, for tests.
func checkRemove(p netip.Prefix, addrs []HostAddr, own []netip.Addr, srcs []routeSrc) (HostAddr, error) {
	ip := p.Addr()
	if ip.IsLoopback() {
		return HostAddr{}, fmt.Errorf("%s is a loopback address, which this host's own services need: it never moves; "+
			"give the process an address of its own on a real interface", p)
	}
	if slices.Contains(own, ip) {
		return HostAddr{}, fmt.Errorf("%s is the migration daemon's own address, "+
			"which its peers call: it never moves; give the process an address of its own beside it", p)
	}
	for _, r := range srcs {
		if r.src == ip {
			return HostAddr{}, fmt.Errorf("%s is the address this host reaches %s from (`ip route get %s` says "+
				"src %s): moving it would cut the migration's own connection; give the process an address of "+
				"its own beside it", p, r.to, r.to, ip)
		}
	}
	var held *HostAddr
	for i := range addrs {
		if addrs[i].Prefix.Addr() == ip {
			held = &addrs[i]
			break
		}
	}
	if held == nil {
		return HostAddr{}, fmt.Errorf("this host holds no address %s (`ip addr` lists them): give one it holds: %w",
			ip, ErrNoSuchAddr)
	}
	if held.Loopback {
		return HostAddr{}, fmt.Errorf("%s is on the loopback interface %s, which this host's own services need: "+
			"it never moves; give the process an address of its own on a real interface", p, held.Iface)
	}
	if held.Prefix.Bits() != p.Bits() {
		return HostAddr{}, fmt.Errorf("this host holds %s on %s, not %s: give the prefix length it has: %w",
			held.Prefix, held.Iface, p, ErrNoSuchAddr)
	}
	others, secondaries := 0, []string(nil)
	for _, a := range addrs {
		if a.Iface != held.Iface || a.Prefix.Addr() == ip || a.Prefix.Addr().Is4() != ip.Is4() {
			continue
		}
		if !a.Prefix.Addr().IsLinkLocalUnicast() {
			others++
		}
		if ip.Is4() && !held.Secondary && a.Secondary && a.Prefix.Bits() == p.Bits() && p.Masked().Contains(a.Prefix.Addr()) {
			secondaries = append(secondaries, a.Prefix.String())
		}
	}
	if others == 0 {
		return HostAddr{}, fmt.Errorf("%s is the last %s address on %s: removing it would cut the host off "+
			"that network; give the process an address of its own beside it", p, familyName(ip), held.Iface)
	}
	if len(secondaries) > 0 {
		return HostAddr{}, fmt.Errorf("%s is the primary address of its subnet on %s, and the kernel would take "+
			"its secondary addresses (%s) with it: move a secondary address instead", p, held.Iface,
			strings.Join(secondaries, ", "))
	}
	return *held, nil
}

func familyName(ip netip.Addr) string {
	if ip.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// parsePrefix parses "IP/PREFIX" or a bare IP (a host prefix, /32 or
// /128), as parseAddr does.
func parsePrefix(cidr string) (netip.Prefix, error) {
	if !strings.Contains(cidr, "/") {
		ip, err := netip.ParseAddr(cidr)
		if err != nil || ip.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("bad address %q: want IP or IP/PREFIX", cidr)
		}
		return netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()), nil
	}
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("bad address %q: want IP or IP/PREFIX", cidr)
	}
	if p.Addr().Is4In6() {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p, nil
}

// HostAddrs lists every address of this host (the calling thread's network
// namespace).
//
// Equivalent to: ip -o addr show
func HostAddrs() ([]HostAddr, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing interfaces: %w", err)
	}
	byIndex := map[int]*netlink.LinkAttrs{}
	for _, l := range links {
		byIndex[l.Attrs().Index] = l.Attrs()
	}
	addrs, err := listAddrs(netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	out := make([]HostAddr, 0, len(addrs))
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		ones, _ := a.Mask.Size()
		h := HostAddr{Prefix: netip.PrefixFrom(ip, ones), Secondary: a.Flags&unix.IFA_F_SECONDARY != 0}
		if l := byIndex[a.LinkIndex]; l != nil {
			h.Iface, h.Loopback = l.Name, l.Flags&net.FlagLoopback != 0
		}
		out = append(out, h)
	}
	return out, nil
}

// RouteSrc returns the source address the kernel uses to reach dst.
//
// Equivalent to: ip route get $dst | grep -o 'src [^ ]*'
func RouteSrc(dst netip.Addr) (netip.Addr, error) {
	routes, err := netlink.RouteGet(net.IP(dst.Unmap().AsSlice()))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("route to %s: %w", dst, err)
	}
	for _, r := range routes {
		if src, ok := netip.AddrFromSlice(r.Src); ok {
			return src.Unmap(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("route to %s: the kernel names no source address", dst)
}
