package netmove

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// A host as the cluster's hosts are: lo, eth0 with its own address, a
// secondary of a process's own, a link-local IPv6 address; eth1 with one
// address; eth2 with a primary and a secondary in one subnet.
var testHost = []HostAddr{
	{Iface: "lo", Loopback: true, Prefix: netip.MustParsePrefix("127.0.0.1/8")},
	{Iface: "lo", Loopback: true, Prefix: netip.MustParsePrefix("10.9.9.9/32")},
	{Iface: "lo", Loopback: true, Prefix: netip.MustParsePrefix("::1/128")},
	{Iface: "eth0", Prefix: netip.MustParsePrefix("10.77.0.1/24")},
	{Iface: "eth0", Prefix: netip.MustParsePrefix("10.77.0.101/24"), Secondary: true},
	{Iface: "eth0", Prefix: netip.MustParsePrefix("10.77.0.150/32")},
	{Iface: "eth0", Prefix: netip.MustParsePrefix("fe80::1/64")},
	{Iface: "eth1", Prefix: netip.MustParsePrefix("192.168.5.5/24")},
	{Iface: "eth1", Prefix: netip.MustParsePrefix("fe80::2/64")},
	{Iface: "eth2", Prefix: netip.MustParsePrefix("172.16.0.1/16")},
	{Iface: "eth2", Prefix: netip.MustParsePrefix("172.16.0.2/16"), Secondary: true},
	{Iface: "eth2", Prefix: netip.MustParsePrefix("2001:db8::7/64")},
}

func TestCheckRemove(t *testing.T) {
	own := []netip.Addr{netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("192.0.2.1")}
	srcs := []routeSrc{{to: netip.MustParseAddr("10.77.0.2"), src: netip.MustParseAddr("10.77.0.1")},
		{to: netip.MustParseAddr("203.0.113.9"), src: netip.MustParseAddr("10.77.0.150")}}
	for _, c := range []struct {
		cidr  string
		iface string // "" refused
		why   string // in the error
		nsa   bool   // ErrNoSuchAddr
	}{
		{"10.77.0.101/24", "eth0", "", false},
		{"172.16.0.2/16", "eth2", "", false},                       // a secondary goes alone
		{"2001:db8::7/64", "", "last IPv6 address on eth2", false}, // counted per family
		{"127.0.0.1/8", "", "loopback", false},                     // the case
		{"127.0.0.1", "", "loopback", false},
		{"127.0.0.2/8", "", "loopback", false}, // not held, still loopback first
		{"::1/128", "", "loopback", false},
		{"10.9.9.9/32", "", "loopback interface lo", false},
		{"10.77.0.1/24", "", "daemon's own address", false},
		{"10.77.0.150/32", "", "reaches 203.0.113.9 from", false},
		{"192.168.5.5/24", "", "last IPv4 address on eth1", false},
		{"172.16.0.1/16", "", "secondary addresses (172.16.0.2/16)", false},
		{"10.77.0.101/32", "", "holds 10.77.0.101/24 on eth0, not 10.77.0.101/32", true},
		{"10.77.0.101", "", "holds 10.77.0.101/24", true},
		{"10.77.0.99/24", "", "holds no address 10.77.0.99", true},
	} {
		p, err := parsePrefix(c.cidr)
		if err != nil {
			t.Fatalf("parsePrefix(%s): %v", c.cidr, err)
		}
		a, err := checkRemove(p, testHost, own, srcs)
		switch {
		case c.iface != "" && (err != nil || a.Iface != c.iface):
			t.Errorf("checkRemove(%s) = %q, %v; want %s", c.cidr, a.Iface, err, c.iface)
		case c.iface == "" && (err == nil || !strings.Contains(err.Error(), c.why)):
			t.Errorf("checkRemove(%s) = %q, %v; want an error saying %q", c.cidr, a.Iface, err, c.why)
		case c.iface == "" && errors.Is(err, ErrNoSuchAddr) != c.nsa:
			t.Errorf("checkRemove(%s): errors.Is(ErrNoSuchAddr) = %v, want %v (%v)", c.cidr, !c.nsa, c.nsa, err)
		}
	}
	for _, bad := range []string{"", "x", "10.77.0.300/24", "10.77.0.1/33", "fe80::1%eth0"} {
		if _, err := parsePrefix(bad); err == nil {
			t.Errorf("parsePrefix(%q): no error", bad)
		}
	}
}

// In a real namespace: the host's addresses and route as netlink reports
// them.
func TestCheckRemoveNetns(t *testing.T) {
	tn := newTestNet(t, 4)
	mustIn(t, tn.a, func() error {
		if err := AddAddr("nma", tn.subnet+".20/24"); err != nil {
			return err
		}
		peer := netip.MustParseAddr(tn.subnet + ".2")
		if src, err := RouteSrc(peer); err != nil || src != netip.MustParseAddr(tn.subnet+".1") {
			t.Errorf("RouteSrc(%s) = %v, %v; want %s.1", peer, src, err, tn.subnet)
		}
		keep := Keep{Targets: []netip.Addr{peer}}
		if iface, err := CheckRemove(tn.subnet+".20/24", keep); err != nil || iface != "nma" {
			t.Errorf("CheckRemove(secondary) = %q, %v; want nma", iface, err)
		}
		for _, c := range []struct{ cidr, why string }{
			{"127.0.0.1/8", "loopback"},
			{tn.subnet + ".1/24", "reaches " + peer.String() + " from"},
			{"10.78.250.1/24", "holds no address"},
		} {
			if _, err := CheckRemove(c.cidr, keep); err == nil || !strings.Contains(err.Error(), c.why) {
				t.Errorf("CheckRemove(%s) = %v; want an error saying %q", c.cidr, err, c.why)
			}
		}
		// Without a target, the host's own address is still its subnet's
		// primary, with a secondary.
		if _, err := CheckRemove(tn.subnet+".1/24", Keep{}); err == nil || !strings.Contains(err.Error(), "primary") {
			t.Errorf("CheckRemove(primary) = %v; want a primary-address refusal", err)
		}
		return nil
	})
}

// An address put back after SaveAddr is the address that was there: scope,
// flags, label, prefix length and broadcast (or none).
func TestSaveRestoreAddr(t *testing.T) {
	tn := newTestNet(t, 5)
	s := tn.subnet
	// Subnets of their own: a secondary must have its primary's scope.
	run(t, "ip", "-n", tn.a, "addr", "add", "10.78.98.30/24", "dev", "nma", "scope", "site", "label", "nma:mv",
		"noprefixroute")
	run(t, "ip", "-n", tn.a, "addr", "add", "10.78.97.31/24", "dev", "nma", "brd", "10.78.97.200", "scope", "link")
	run(t, "ip", "-n", tn.a, "addr", "add", s+".32/24", "dev", "nma")               // a secondary, as rank addresses are
	run(t, "ip", "-n", tn.a, "addr", "add", "10.78.99.1/32", "dev", "nma", "nodad") // no broadcast at all
	run(t, "ip", "-n", tn.a, "addr", "add", "fd00:78::5/64", "dev", "nma", "nodad", "noprefixroute")
	// The case: loopback's address, put back with scope global.
	run(t, "ip", "-n", tn.a, "addr", "add", "127.0.0.9/8", "dev", "lo", "scope", "host")
	mustIn(t, tn.a, func() error {
		for _, c := range []struct{ iface, cidr string }{
			{"nma", "10.78.98.30/24"}, {"nma", "10.78.97.31/24"}, {"nma", s + ".32/24"}, {"nma", "10.78.99.1/32"},
			{"nma", "fd00:78::5/64"},
			{"lo", "127.0.0.9/8"},
		} {
			iface, cidr := c.iface, c.cidr
			before := addrAttrs(t, iface, cidr)
			saved, err := SaveAddr(iface, cidr)
			if err != nil {
				t.Errorf("SaveAddr(%s): %v", cidr, err)
				continue
			}
			if err := DelAddr(iface, cidr); err != nil {
				t.Fatal(err)
			}
			if ok, _ := HasAddr(cidr); ok {
				t.Fatalf("%s still there after DelAddr", cidr)
			}
			for i := range 2 { // twice: an address already back is not an error
				if err := RestoreAddr(saved); err != nil {
					t.Errorf("RestoreAddr(%s) #%d: %v", saved, i+1, err)
				}
			}
			if after := addrAttrs(t, iface, cidr); after != before {
				t.Errorf("%s put back as\n  %s\nwas\n  %s", cidr, after, before)
			}
		}
		if _, err := SaveAddr("nma", s+".32/32"); !errors.Is(err, ErrNoSuchAddr) {
			t.Errorf("SaveAddr(another prefix length) = %v; want ErrNoSuchAddr", err)
		}
		if err := RestoreAddr("{"); err == nil {
			t.Errorf("RestoreAddr(garbage): no error")
		}
		return nil
	})
}

// addrAttrs describes the address cidr on iface as netlink reports it, but
// for its remaining lifetimes.
func addrAttrs(t *testing.T, iface, cidr string) string {
	t.Helper()
	link, want, err := linkAndAddr(iface, cidr)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := netlink.AddrList(link, familyOf(want.IP))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if a.IP.Equal(want.IP) {
			return fmt.Sprintf("%s scope=%d flags=%#x label=%q brd=%v peer=%v", a.IPNet, a.Scope, a.Flags, a.Label,
				a.Broadcast, a.Peer)
		}
	}
	t.Fatalf("%s not on %s", cidr, iface)
	return ""
}
