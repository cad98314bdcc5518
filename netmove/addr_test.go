package netmove

import (
	"strings"
	"testing"
)

func TestAddrAddDelIdempotent(t *testing.T) {
	tn := newTestNet(t, 1)
	cidr := tn.subnet + ".10/24"
	mustIn(t, tn.a, func() error {
		for i := range 2 {
			if err := AddAddr("nma", cidr); err != nil {
				t.Errorf("AddAddr #%d: %v", i+1, err)
			}
		}
		if ok, err := HasAddr(cidr); err != nil || !ok {
			t.Errorf("HasAddr after add = %v, %v; want true", ok, err)
		}
		// The prefix length does not matter to HasAddr.
		if ok, _ := HasAddr(tn.subnet + ".10"); !ok {
			t.Errorf("HasAddr(bare IP) = false after add")
		}
		for i := range 2 {
			if err := DelAddr("nma", cidr); err != nil {
				t.Errorf("DelAddr #%d: %v", i+1, err)
			}
		}
		if ok, err := HasAddr(cidr); err != nil || ok {
			t.Errorf("HasAddr after del = %v, %v; want false", ok, err)
		}
		// The interface's own address is untouched.
		if ok, _ := HasAddr(tn.subnet + ".1/24"); !ok {
			t.Errorf("the interface lost its own address")
		}
		return nil
	})
	// The other namespace never saw it.
	mustIn(t, tn.b, func() error {
		if ok, _ := HasAddr(cidr); ok {
			t.Errorf("HasAddr in the peer namespace = true")
		}
		return nil
	})
}

func TestAddrErrors(t *testing.T) {
	tn := newTestNet(t, 2)
	mustIn(t, tn.a, func() error {
		if err := AddAddr("nosuchif0", tn.subnet+".10/24"); err == nil {
			t.Errorf("AddAddr on a missing interface: no error")
		}
		if err := DelAddr("nosuchif0", tn.subnet+".10/24"); err == nil {
			t.Errorf("DelAddr on a missing interface: no error")
		}
		for _, bad := range []string{"", "10.78.2", "10.78.2.300/24", "x/24"} {
			if err := AddAddr("nma", bad); err == nil {
				t.Errorf("AddAddr(%q): no error", bad)
			}
			if _, err := HasAddr(bad); err == nil {
				t.Errorf("HasAddr(%q): no error", bad)
			}
		}
		return nil
	})
}

func TestIface(t *testing.T) {
	tn := newTestNet(t, 3)
	// A second interface (a veth pair with both ends here: no dummy driver).
	run(t, "ip", "-n", tn.a, "link", "add", "nmd", "type", "veth", "peer", "name", "nmd2")
	run(t, "ip", "-n", tn.a, "addr", "add", "10.78.103.1/24", "dev", "nmd")
	run(t, "ip", "-n", tn.a, "link", "set", "nmd", "up")
	mustIn(t, tn.a, func() error {
		for _, c := range []struct{ cidr, want string }{
			{tn.subnet + ".50/24", "nma"},
			{tn.subnet + ".50", "nma"}, // bare IP: the subnet of the existing address
			{"10.78.103.7/24", "nmd"},
		} {
			if got, err := Iface(c.cidr); err != nil || got != c.want {
				t.Errorf("Iface(%s) = %q, %v; want %q", c.cidr, got, err, c.want)
			}
		}
		// No matching subnet and no default route: a clear error.
		if got, err := Iface("10.78.200.5/24"); err == nil || !strings.Contains(err.Error(), "no default route") {
			t.Errorf("Iface(unrouted) = %q, %v; want a no-default-route error", got, err)
		}
		return nil
	})
	run(t, "ip", "-n", tn.a, "route", "add", "default", "via", tn.subnet+".2", "dev", "nma")
	mustIn(t, tn.a, func() error {
		if got, err := Iface("10.78.200.5/24"); err != nil || got != "nma" {
			t.Errorf("Iface(via default) = %q, %v; want nma", got, err)
		}
		return nil
	})
}
