package placement

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"dsmigrate/internal/api"
)

const gib = 1 << 30

// host is a daemon with total and free GiB of memory, the load average,
// CPUs and processes given.
func host(addr string, total, free, load float64, cpus, procs int) Host {
	return Host{Addr: addr, Info: api.DaemonInfo{ID: "id-" + addr, MachineID: "m-" + addr, BootID: "b",
		MemTotalBytes: int64(total * gib), MemAvailableBytes: int64(free * gib), CPUs: cpus, Load1: load, Procs: procs,
		ImagesFreeBytes: int64(free * gib / 2), Subnets: []string{"10.77.0.0/24"}}}
}

func addrs(cs []Choice) []string {
	out := []string{}
	for _, c := range cs {
		out = append(out, c.Addr)
	}
	return out
}

func TestRankPolicies(t *testing.T) {
	hosts := []Host{
		host("a", 16, 2, 0.1, 4, 0),  // short of memory, idle
		host("b", 16, 12, 3.9, 4, 2), // memory, but busy
		host("c", 16, 8, 1.0, 4, 1),  // between
	}
	need := Need{Memory: 256 << 20}
	for _, tc := range []struct {
		p    Policy
		want []string
	}{
		{Balanced, []string{"a", "c", "b"}}, // a: 0.89+0.03+0 = 0.92, c: 0.52+0.25+0.25 = 1.02, b: 0.27+0.98+0.5 = 1.74
		{Memory, []string{"b", "c", "a"}},
		{CPU, []string{"a", "c", "b"}},
	} {
		cs, skips := Rank(hosts, need, tc.p)
		if len(skips) != 0 {
			t.Errorf("%s: skips %v", tc.p, skips)
		}
		if got := addrs(cs); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %v, want %v (%+v)", tc.p, got, tc.want, cs)
		}
	}
}

// Daemons on one machine report the same memory and load: the processes
// each runs tell them apart, and readings a few pages apart are a tie.
func TestRankSameMachine(t *testing.T) {
	// Read a moment apart: h3's load average moved on since h2's.
	hosts := []Host{host("h1", 8, 6, 1.5, 2, 2), host("h2", 8, 6.001, 1.5, 2, 1), host("h3", 8, 5.7, 1.9, 2, 1)}
	for i := range hosts {
		hosts[i].Info.MachineID = "one"
	}
	cs, _ := Rank(hosts, Need{Memory: 64 << 20}, Balanced)
	if got := addrs(cs); !reflect.DeepEqual(got, []string{"h2", "h3", "h1"}) {
		t.Errorf("got %v, want the ones with fewer processes first, in the order given", got)
	}
	got, err := Spread(hosts, 4, Need{Memory: 64 << 20}, Balanced)
	if err != nil {
		t.Fatal(err)
	}
	// h2 and h3 take one each (then all run 2), then h1, h2 in order.
	if want := []string{"h2", "h3", "h1", "h2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Spread: %v, want %v", got, want)
	}
	// Other machines' memory is their own: the busy one's placements do
	// not count against the idle one.
	two := []Host{host("x", 8, 4, 0, 2, 0), host("y", 8, 4, 0, 2, 0)}
	Count(two, "x", Need{Memory: 1 << 30})
	if two[1].Info.MemAvailableBytes != 4*gib || two[0].Info.Procs != 1 || two[1].Info.Procs != 0 {
		t.Errorf("Count on x: %+v", two)
	}
	Count(hosts, "h1", Need{Memory: 1 << 30})
	for _, h := range hosts[1:] {
		if h.Info.MemAvailableBytes >= 5*gib {
			t.Errorf("Count on h1 of the same machine left %s's memory at %d", h.Addr, h.Info.MemAvailableBytes)
		}
	}
}

func TestLeftOut(t *testing.T) {
	src := host("src", 8, 6, 0, 2, 1)
	drained := host("drained", 8, 6, 0, 2, 0)
	drained.Info.Drained = true
	full := host("full", 8, 0.3, 0, 2, 0)
	full.Info.KeepFreeBytes = 256 << 20
	noImages := host("noimages", 8, 6, 0, 2, 0)
	noImages.Info.ImagesFreeBytes = 100 << 20
	otherNet := host("othernet", 8, 6, 0, 2, 0)
	otherNet.Info.Subnets = []string{"192.168.1.0/24"}
	down := Host{Addr: "down", Err: errors.New("connection refused")}
	ok := host("ok", 8, 6, 0, 2, 3)
	hosts := []Host{src, drained, full, noImages, otherNet, down, ok}
	need := Need{Memory: 512 << 20, OwnIP: netip.MustParsePrefix("10.77.0.100/24"), From: src.Info}
	cs, skips := Rank(hosts, need, Balanced)
	if got := addrs(cs); !reflect.DeepEqual(got, []string{"ok"}) {
		t.Errorf("chosen %v, want [ok]", got)
	}
	want := map[string]string{"src": "own host", "drained": "drained", "full": "memory", "noimages": "images room",
		"othernet": "10.77.0.100/24", "down": "connection refused"}
	if len(skips) != len(want) {
		t.Errorf("skips %v", skips)
	}
	for _, s := range skips {
		if !strings.Contains(s.Why, want[s.Addr]) {
			t.Errorf("%s left out because %q, want it to say %q", s.Addr, s.Why, want[s.Addr])
		}
	}
	// Post-copy needs no images room; without an own address any network
	// does.
	cs, _ = Rank(hosts, Need{Memory: 512 << 20, PostCopy: true, From: src.Info}, Balanced)
	if got := addrs(cs); !reflect.DeepEqual(got, []string{"noimages", "othernet", "ok"}) {
		t.Errorf("post-copy, no own address: %v", got)
	}
	err := NoHost(skips, "process x")
	if !strings.Contains(err.Error(), "no host can take process x: src is the process's own host; drained is drained") {
		t.Errorf("NoHost: %v", err)
	}
	if err := NoHost(nil, "a new process"); !strings.Contains(err.Error(), "--peers") {
		t.Errorf("NoHost without hosts: %v", err)
	}
	if _, err := Spread([]Host{src}, 1, need, Balanced); err == nil {
		t.Error("Spread with no host but the source: no error")
	}
}

func TestParsePolicy(t *testing.T) {
	for s, want := range map[string]Policy{"": Balanced, "balanced": Balanced, "memory": Memory, "cpu": CPU} {
		if p, err := ParsePolicy(s); err != nil || p != want {
			t.Errorf("ParsePolicy(%q) = %q, %v", s, p, err)
		}
	}
	if _, err := ParsePolicy("fastest"); err == nil || !strings.Contains(err.Error(), "balanced, memory, cpu") {
		t.Errorf("ParsePolicy(fastest): %v", err)
	}
}
