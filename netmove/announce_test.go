package netmove

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"
)

func TestArpFrame(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 7}
	ip := net.IPv4(10, 78, 0, 9)
	for _, c := range []struct {
		op  uint16
		tha []byte
	}{{arpRequest, make([]byte, 6)}, {arpReply, mac}} {
		f := arpFrame(c.op, mac, ip)
		want := bytes.Join([][]byte{
			{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, mac, {0x08, 0x06}, // Ethernet
			{0, 1, 0x08, 0, 6, 4, 0, byte(c.op)}, // ARP header
			mac, {10, 78, 0, 9}, c.tha, {10, 78, 0, 9},
		}, nil)
		if !bytes.Equal(f, want) {
			t.Errorf("op %d:\n got %x\nwant %x", c.op, f, want)
		}
	}
}

// TestAnnounce moves an address's owner on the peer's neighbour table: the
// peer holds a stale entry with another MAC, and one announcement fixes it.
func TestAnnounce(t *testing.T) {
	tn := newTestNet(t, 4)
	ip := tn.subnet + ".10"
	run(t, "ip", "-n", tn.b, "neigh", "add", ip, "lladdr", "02:00:00:00:00:01", "dev", "nmb", "nud", "stale")
	// The kernel ignores updates within locktime (1 s) of the last one.
	run(t, "ip", "netns", "exec", tn.b, "sysctl", "-qw", "net.ipv4.neigh.nmb.locktime=0")
	var mac string
	mustIn(t, tn.a, func() error {
		ifi, err := net.InterfaceByName("nma")
		if err != nil {
			return err
		}
		mac = ifi.HardwareAddr.String()
		if err := AddAddr("nma", ip+"/24"); err != nil {
			return err
		}
		t0 := time.Now()
		if err := Announce("nma", ip); err != nil {
			return err
		}
		if d := time.Since(t0); d > 100*time.Millisecond {
			t.Errorf("Announce took %v", d)
		}
		return nil
	})
	deadline := time.Now().Add(2 * time.Second)
	for {
		out := run(t, "ip", "-n", tn.b, "neigh", "show", ip, "dev", "nmb")
		if strings.Contains(out, mac) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("peer's neighbour entry after Announce: %q, want MAC %s", out, mac)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAnnounceNoEthernet(t *testing.T) {
	tn := newTestNet(t, 5)
	mustIn(t, tn.a, func() error {
		if err := Announce("lo", "127.0.0.1"); err != nil {
			t.Errorf("Announce on lo: %v", err)
		}
		if err := Announce("nosuchif0", tn.subnet+".1"); err == nil {
			t.Errorf("Announce on a missing interface: no error")
		}
		if err := Announce("nma", "not-an-ip"); err == nil {
			t.Errorf("Announce(bad IP): no error")
		}
		return nil
	})
}
