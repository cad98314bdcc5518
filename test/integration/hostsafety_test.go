package integration

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// hostAddrs lists hK's addresses, one line each, without their lifetimes.
func hostAddrs(t *testing.T, k int) string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(mustOn(t, k, "ip", "-o", "addr", "show")), "\n") {
		l, _, _ = strings.Cut(l, `\`) // ip -o ends the address with "\    valid_lft ..."
		out = append(out, strings.Join(strings.Fields(l), " "))
	}
	return strings.Join(out, "\n")
}

// --move-ip refuses, before anything is touched, an address whose move
// would hurt the host: loopback, the daemon's own address, the address the
// host reaches the target from, and one the host does not hold. The
// process keeps running on its source, and the host keeps its addresses.
func TestMoveIPRefused(t *testing.T) {
	needHosts(t, 2)
	// An address that carries h1's route to h2 without being the daemon's:
	// a host route to h2 with it as the source.
	dev, bits := ifc(1), hosts[0].prefix
	route, other := subnetIP(151), subnetIP(152)
	withIP(t, 1, fmt.Sprintf("%s/%d", route, bits))
	withIP(t, 1, fmt.Sprintf("%s/%d", other, bits)) // a process's own, given with another prefix length
	mustOn(t, 1, "ip", "route", "add", hostIP(2)+"/32", "dev", dev, "src", route)
	t.Cleanup(func() { on(1, "ip", "route", "del", hostIP(2)+"/32", "dev", dev) })
	if out := mustOn(t, 1, "ip", "route", "get", hostIP(2)); !strings.Contains(out, "src "+route) {
		t.Fatalf("the route to h2 does not go from %s: %s", route, out)
	}
	before := hostAddrs(t, 1)
	id := start(t, 1, "stays", "migtest", "counter")
	waitLog(t, 1, id, `count`, 3)
	for _, c := range []struct{ cidr, why string }{
		{"127.0.0.1/8", "127.0.0.1/8 is a loopback address"},
		{ownCIDR(1), ownCIDR(1) + " is the migration daemon's own address"},
		{fmt.Sprintf("%s/%d", route, bits), fmt.Sprintf("%s/%d is the address this host reaches %s from", route, bits, hostIP(2))},
		{subnetCIDR(199), "this host holds no address " + subnetIP(199)},
		{other + "/32", fmt.Sprintf("this host holds %s/%d on %s, not %s/32", other, bits, dev, other)},
	} {
		out, err := on(1, "sh", "-c", "exec 2>&1; exec migrated migrate "+id+" --to "+addr(2)+" --move-ip "+c.cidr)
		if err == nil {
			t.Fatalf("--move-ip %s was accepted:\n%s", c.cidr, out)
		}
		if !strings.Contains(out, "--move-ip refused, nothing was touched: "+c.why) {
			t.Errorf("--move-ip %s: the error does not say %q:\n%s", c.cidr, c.why, out)
		}
		if p := find(t, 1, id); p == nil || p.State != "running" {
			t.Fatalf("after --move-ip %s was refused, h1 shows %+v", c.cidr, p)
		}
		if p := find(t, 2, id); p != nil {
			t.Fatalf("after --move-ip %s was refused, h2 shows %+v", c.cidr, p)
		}
	}
	l := waitLog(t, 1, id, `count`, 3) // still counting, never stopped
	checkConsecutive(t, l, "count ", 1)
	if after := hostAddrs(t, 1); after != before {
		t.Errorf("h1's addresses changed:\n%s\nwere:\n%s", after, before)
	}
	if !regexp.MustCompile(`lo\s+inet 127\.0\.0\.1/8 scope host lo`).MatchString(hostAddrs(t, 1)) {
		t.Errorf("h1's loopback address is not as it was:\n%s", hostAddrs(t, 1))
	}
	// The source's history has no migration of it: nothing began.
	if h := mustOn(t, 1, "migrated", "history", "--json"); strings.Contains(h, id) {
		t.Errorf("a refused migration left a record:\n%s", h)
	}
}

// A daemon listening on every address needs --advertise (the address peers
// call back), and refuses to start without it; with it, it starts.
func TestListenNeedsAdvertise(t *testing.T) {
	needHosts(t, 3)
	const k, port = 3, "7179"
	dir := hostDir(t, nil)                      // on h3
	sock := "/run/hostsafety-" + port + ".sock" // h3's own /run: no clash with its daemon's
	serve := func(extra ...string) string {
		return fmt.Sprintf("exec env MIGRATED_SOCKET=%s migrated serve --listen 0.0.0.0:%s --state-dir %s %s",
			sock, port, filepath.Join(dir, "state"), strings.Join(extra, " "))
	}
	for _, listen := range []string{"0.0.0.0:" + port, ":" + port, "[::]:" + port} {
		cmd := strings.Replace(serve(), "0.0.0.0:"+port, listen, 1)
		out, err := on(k, "timeout", fmt.Sprint(int(scaled(20*time.Second).Seconds())), "sh", "-c", "exec 2>&1; "+cmd)
		if err == nil {
			t.Fatalf("migrated serve --listen %s without --advertise started (and ended):\n%s", listen, out)
		}
		if !strings.Contains(err.Error(), "add --advertise ADDR:PORT") {
			t.Errorf("migrated serve --listen %s: the error does not say to add --advertise: %v", listen, err)
		}
	}
	if _, err := on(k, "test", "-e", filepath.Join(dir, "state")); err == nil {
		t.Errorf("a refused daemon made its state directory")
	}

	logf := filepath.Join(dir, "daemon.log")
	readLog := func() string { b, _ := on(k, "cat", logf); return b }
	adv := fmt.Sprintf("%s:%s", hostIP(k), port)
	out := mustOn(t, k, "sh", "-c", serve("--advertise", adv)+" >"+logf+" 2>&1 </dev/null & echo $!")
	pid := strings.TrimSpace(out)
	if !regexp.MustCompile(`^[0-9]+$`).MatchString(pid) {
		t.Fatalf("starting a daemon on h%d printed %q, want its pid", k, out)
	}
	// Stopped by its pid (SIGTERM: it unmounts its images tmpfs), waited for.
	t.Cleanup(func() {
		on(k, "kill", pid)
		for end := within(10 * time.Second); time.Now().Before(end); {
			if _, err := on(k, "kill", "-0", pid); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		on(k, "kill", "-KILL", pid)
	})
	waitPort(t, k, adv)
	if _, err := on(k, "kill", "-0", pid); err != nil {
		t.Fatalf("the daemon with --advertise is not running:\n%s", readLog())
	}
	if b := readLog(); !strings.Contains(b, "advertise="+adv) {
		t.Errorf("the daemon's log does not name the advertised address:\n%s", b)
	}
}

// A move that fails after the address left the source puts the address
// back exactly as it was (its label and flags too), and the history
// records how long the process was stopped, not 0.
func TestMoveIPRollback(t *testing.T) {
	needHosts(t, 3)
	ip, cidr := subnetIP(153), subnetCIDR(153)
	mustOn(t, 1, "ip", "addr", "add", cidr, "dev", ifc(1), "label", ifc(1)+":mv", "noprefixroute")
	announce(t, 1, ip)
	t.Cleanup(func() {
		for h := 1; h <= nHosts; h++ {
			on(h, "ip", "addr", "del", cidr, "dev", ifc(h))
		}
	})
	before := hostAddrs(t, 1)
	srv := start(t, 3, "rb-srv", "migtest", "tcp-server", "0.0.0.0:7153")
	waitLog(t, 3, srv, `server conns`, 1)
	cli := start(t, 1, "rb-cli", "migtest", "tcp-client", ip, hostIP(3)+":7153")
	waitLog(t, 1, cli, `client ok`, 3)
	armFault(t, 1, "source-before-restore") // after move-ip: the address is gone from h1 then
	out, err := on(1, "sh", "-c", "exec 2>&1; exec migrated migrate "+cli+" --to "+addr(2)+" --move-ip "+cidr)
	if err == nil {
		t.Fatalf("the migration succeeded through its fault point:\n%s", out)
	}
	if !strings.Contains(out, "resumed on the source") {
		t.Errorf("the failed migration does not say the process resumed:\n%s", out)
	}
	if after := hostAddrs(t, 1); after != before {
		t.Errorf("h1's addresses after the rollback:\n%s\nwere:\n%s", after, before)
	}
	if strings.Contains(mustOn(t, 2, "ip", "-o", "addr", "show"), " "+ip+"/") {
		t.Errorf("h2 holds %s after the failed move", ip)
	}
	var recs []struct {
		ID       string
		Downtime float64 `json:"downtime_ms"`
		Outcome  string
		Result   string
	}
	if err := json.Unmarshal([]byte(mustOn(t, 1, "migrated", "history", "--json")), &recs); err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, r := range recs {
		if r.ID != cli {
			continue
		}
		found = true
		t.Logf("the failed migration's record: downtime %v ms, outcome %q", r.Downtime, r.Outcome)
		if r.Downtime <= 0 || r.Outcome == "ok" || r.Result != "refused" {
			t.Errorf("the failed migration's record: downtime %v, outcome %q; want its real downtime", r.Downtime,
				r.Outcome)
		}
	}
	if !found {
		t.Errorf("no record of the failed migration in h1's history")
	}
	// Last: the process itself runs on, its connection too (the undo
	// takes its sockets out of the repair mode the dump left them in).
	if p := find(t, 1, cli); p == nil || p.State != "running" {
		t.Fatalf("after the failed move h1 shows %+v, want it running", p)
	}
	l := waitLog(t, 1, cli, `client ok`, 10)
	if strings.Contains(l, "FAIL") {
		t.Fatalf("the client failed after the rollback:\n%s", tail(l, 5))
	}
}
