// Package integration runs the toolkit on a cluster of hosts: real daemons,
// real CRIU, real processes and sockets. It needs root; without it the tests
// skip.
//
// The hosts come from a cluster driver: a script with the verbs of
// test/integration/cluster.sh (namespace hosts on this machine, the default)
// or scripts/vagrant/cluster.sh (the Vagrantfile's VMs):
//
//	DRIVER up N           bring up hosts h1..hN, each running migrated
//	DRIVER down           remove everything up made
//	DRIVER exec hK CMD..  run CMD as root on hK (stdin, stdout and stderr passed
//	                      through, exit status CMD's), with the repository's bin/
//	                      on PATH: the repository is at the same path on every host
//	DRIVER env            describe the hosts, one NAME=VALUE a line (or
//	                      `export NAME=VALUE;`, for eval):
//	    MIGRATED_HOSTS=ADDR:PORT,...  each host's daemon address, h1 first; their
//	                                  number is the number of hosts
//	    MIGRATED_TOKEN_FILE=PATH      the cluster's token, on this machine (dsmrun)
//	    CLUSTER_STATE_DIRS=DIR,...    each host's daemon --state-dir, on the host
//	    CLUSTER_TOKEN_FILE=PATH       the cluster's token, on the hosts
//
// Each host's network interface and subnet are those of its daemon's address
// (asked of the host at the start). The tests touch a host only through
// `DRIVER exec` (on): no file of a host is read or written from here, so the
// hosts may be other machines. Addresses that tests add and move are taken
// from the hosts' subnet (subnetIP), at host numbers 101-249; hosts and
// gateways must sit outside that range.
//
// Settings (environment variables):
//
//	DSMIGRATE_TEST_CLUSTER=PATH  the driver (default test/integration/cluster.sh;
//	                             a relative PATH is from the repository's top)
//	DSMIGRATE_TEST_UP=0          the hosts are up already: use them as they
//	                             are, and neither bring them up nor take them
//	                             down (default 1: `up` before the tests, `down`
//	                             after them unless KEEP_CLUSTER is set)
//	DSMIGRATE_TEST_HOSTS=N       how many hosts `up` makes (default 4)
//	DSMIGRATE_TEST_SLOW=F        stretch every wait and deadline F times (default
//	                             1; e.g. 10 for TCG-emulated VMs; go test's own
//	                             -timeout must be stretched too)
//	KEEP_CLUSTER=1               leave the hosts up after the tests
//
// A test that needs more hosts than there are skips, saying how many it needs
// (needHosts). The namespace cluster has 4, the Vagrantfile's VMs 3.
package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// host is one host of the cluster, as the driver and the host itself describe it.
type host struct {
	addr     string // the daemon's ADDR:PORT
	ip       string // the daemon's address
	stateDir string // the daemon's state directory, on the host
	iface    string // the interface that holds ip
	prefix   int    // ip's prefix length there
}

var (
	repo     string
	cluster  string     // the driver
	hosts    []host     // h1 is hosts[0]
	nHosts   int        // len(hosts)
	subnet   *net.IPNet // the hosts' subnet (IPv4)
	tokenOn  string     // the cluster's token file, on the hosts
	slow     = 1.0      // DSMIGRATE_TEST_SLOW
	hostsEnv string
)

func TestMain(m *testing.M) {
	_, file, _, _ := runtime.Caller(0)
	repo = filepath.Join(filepath.Dir(file), "..", "..")
	cluster = filepath.Join(repo, "test", "integration", "cluster.sh")
	if c := os.Getenv("DSMIGRATE_TEST_CLUSTER"); c != "" {
		cluster = c
		if !filepath.IsAbs(c) { // go test runs the tests in their package's directory
			cluster = filepath.Join(repo, c)
		}
	}
	if os.Geteuid() != 0 {
		fmt.Println("integration tests need root: skipped")
		os.Exit(m.Run())
	}
	if s := os.Getenv("DSMIGRATE_TEST_SLOW"); s != "" {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || f < 1 {
			fmt.Printf("DSMIGRATE_TEST_SLOW=%q: want a number >= 1\n", s)
			os.Exit(2)
		}
		slow = f
	}
	bringUp := os.Getenv("DSMIGRATE_TEST_UP") != "0"
	n := 4
	if s := os.Getenv("DSMIGRATE_TEST_HOSTS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			fmt.Printf("DSMIGRATE_TEST_HOSTS=%q: want a number >= 1\n", s)
			os.Exit(2)
		}
	}
	build := exec.Command("go", "build", "-o", filepath.Join(repo, "bin")+"/", "./cmd/...", "./test/integration/migtest", "./examples/...")
	build.Dir, build.Stdout, build.Stderr = repo, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Println("build failed:", err)
		os.Exit(1)
	}
	down := func() int {
		if !bringUp || os.Getenv("KEEP_CLUSTER") != "" {
			return 0
		}
		down := exec.Command(cluster, "down")
		down.Stdout, down.Stderr = os.Stderr, os.Stderr
		if err := down.Run(); err != nil {
			fmt.Println("cluster down failed:", err)
			return 1
		}
		return 0
	}
	if bringUp {
		up := exec.Command(cluster, "up", strconv.Itoa(n))
		up.Stdout, up.Stderr = os.Stderr, os.Stderr
		if err := up.Run(); err != nil {
			fmt.Println("cluster up failed:", err)
			exec.Command(cluster, "down").Run()
			os.Exit(1)
		}
	}
	if err := loadHosts(); err != nil {
		fmt.Printf("the hosts of %s: %v\n", cluster, err)
		os.Exit(1 | down())
	}
	fmt.Fprintf(os.Stderr, "integration: %d hosts from %s (%s), subnet %s, deadlines x%g\n",
		nHosts, cluster, hostsEnv, subnet, slow)
	code := m.Run()
	os.Exit(code | down())
}

// loadHosts learns the hosts from the driver's env and each host's
// interface and prefix from the host.
func loadHosts() error {
	out, err := exec.Command(cluster, "env").Output()
	if err != nil {
		return fmt.Errorf("env: %w", err)
	}
	env := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		// `export NAME=VALUE;` (for eval), or NAME=VALUE.
		l = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(l), "export "), ";")
		if k, v, ok := strings.Cut(l, "="); ok {
			os.Setenv(k, v) // MIGRATED_HOSTS and MIGRATED_TOKEN_FILE for dsmrun
			env[k] = v
		}
	}
	hostsEnv, tokenOn = env["MIGRATED_HOSTS"], env["CLUSTER_TOKEN_FILE"]
	addrs, dirs := strings.Split(hostsEnv, ","), strings.Split(env["CLUSTER_STATE_DIRS"], ",")
	switch {
	case hostsEnv == "":
		return fmt.Errorf("env printed no MIGRATED_HOSTS")
	case len(dirs) != len(addrs) || dirs[0] == "":
		return fmt.Errorf("env printed %d hosts (MIGRATED_HOSTS) and %d state dirs (CLUSTER_STATE_DIRS)", len(addrs), len(dirs))
	case tokenOn == "":
		return fmt.Errorf("env printed no CLUSTER_TOKEN_FILE")
	}
	nHosts = len(addrs)
	hosts = make([]host, nHosts)
	for i, a := range addrs {
		ip, _, err := net.SplitHostPort(a)
		if err != nil || net.ParseIP(ip).To4() == nil {
			return fmt.Errorf("h%d: %q is not an IPv4 ADDR:PORT", i+1, a)
		}
		hosts[i] = host{addr: a, ip: ip, stateDir: dirs[i]}
	}
	for k := 1; k <= nHosts; k++ {
		h := &hosts[k-1]
		out, err := on(k, "ip", "-4", "-o", "addr", "show")
		if err != nil {
			return err
		}
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l) // 2: eth0    inet 10.77.0.2/24 brd ...
			if len(f) < 4 || f[2] != "inet" {
				continue
			}
			if ip, n, err := net.ParseCIDR(f[3]); err == nil && ip.String() == h.ip {
				h.iface = f[1]
				h.prefix, _ = n.Mask.Size()
				if subnet == nil {
					subnet = n
				} else if subnet.String() != n.String() {
					return fmt.Errorf("h%d's address %s is not in h1's subnet %s", k, f[3], subnet)
				}
			}
		}
		if h.iface == "" {
			return fmt.Errorf("h%d holds no address %s:\n%s", k, h.ip, out)
		}
	}
	if ones, _ := subnet.Mask.Size(); ones > 24 {
		return fmt.Errorf("the hosts' subnet %s is smaller than a /24: the tests need host numbers 101-249 in it", subnet)
	}
	return nil
}

// addr is the daemon address of host hK.
func addr(k int) string { return hosts[k-1].addr }

// hostIP is hK's own address (its daemon's).
func hostIP(k int) string { return hosts[k-1].ip }

// ifc is the interface of hK that holds its address, where tests add theirs.
func ifc(k int) string { return hosts[k-1].iface }

// stateDir is hK's daemon state directory, on hK.
func stateDir(k int) string { return hosts[k-1].stateDir }

// ownCIDR is hK's own address with its prefix length, as ip addr shows it.
func ownCIDR(k int) string { return fmt.Sprintf("%s/%d", hosts[k-1].ip, hosts[k-1].prefix) }

// subnetIP is the address with host number n in the hosts' subnet (n in
// 101-249 for the tests' own addresses: 10.77.0.n on the namespace cluster).
// It panics on a host's own address.
func subnetIP(n int) string {
	ip := subnet.IP.To4()
	v := uint32(ip[0])<<24 | uint32(ip[1])<<16 | uint32(ip[2])<<8 | uint32(ip[3])
	v += uint32(n)
	s := net.IPv4(byte(v>>24), byte(v>>16), byte(v>>8), byte(v)).String()
	for k := 1; k <= nHosts; k++ {
		if hostIP(k) == s {
			panic(fmt.Sprintf("subnetIP(%d) is h%d's own address %s", n, k, s))
		}
	}
	return s
}

// subnetCIDR is subnetIP(n) with the subnet's prefix length.
func subnetCIDR(n int) string {
	ones, _ := subnet.Mask.Size()
	return fmt.Sprintf("%s/%d", subnetIP(n), ones)
}

// scaled is d stretched by DSMIGRATE_TEST_SLOW.
func scaled(d time.Duration) time.Duration { return time.Duration(float64(d) * slow) }

// within is the deadline d from now, stretched by DSMIGRATE_TEST_SLOW.
func within(d time.Duration) time.Time { return time.Now().Add(scaled(d)) }

// needHosts skips the test without root or with fewer than n hosts, and
// otherwise guards the hosts for it (guardHosts): every test that uses the
// cluster calls it first.
func needHosts(t *testing.T, n int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root and a cluster of hosts")
	}
	if nHosts < n {
		t.Skipf("needs %d hosts, the cluster (%s) has %d", n, filepath.Base(filepath.Dir(cluster))+"/"+filepath.Base(cluster), nHosts)
	}
	guardHosts(t)
}

// leftover is something on a host that no test should find there when it
// starts, with how to remove it.
type leftover struct {
	what   string // e.g. "h2: process 0123456789ab (counter) running"
	live   bool   // a running process, an address, a lock or an armed fault (not a finished process's entry)
	remove func()
}

// leftovers lists what is on the hosts besides the daemons: processes the
// daemons list (finished ones too), addresses beyond each host's own on its
// interface, CRIU network-lock tables, armed fault points and a drained
// mark. A host whose daemon does not answer (restarting after a crash
// fault) is waited for.
func leftovers(t *testing.T) []leftover {
	t.Helper()
	// Every host at once: a look takes a few processes on each, and every
	// test looks before and after.
	snaps, errs := make([]string, nHosts+1), make([]error, nHosts+1)
	var wg sync.WaitGroup
	for k := 1; k <= nHosts; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for end := within(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
				snaps[k], errs[k] = on(k, "sh", "-c", `migrated ps --json && echo '#addrs' && ip -4 -o addr show dev "$1" &&
					echo '#nft' && nft list tables && echo '#faults' && { ls -A "$2/faults" 2>/dev/null || true; } &&
					echo '#drained' && { ls "$2/drained" 2>/dev/null || true; }`,
					"leftovers", ifc(k), stateDir(k))
				if errs[k] == nil || time.Now().After(end) {
					return
				}
			}
		}()
	}
	wg.Wait()
	var out []leftover
	for k := 1; k <= nHosts; k++ {
		snap, err := snaps[k], errs[k]
		if err != nil {
			t.Fatalf("cannot see what is on h%d: %v", k, err)
		}
		psOut, rest, _ := strings.Cut(snap, "#addrs\n")
		addrs, rest, _ := strings.Cut(rest, "#nft\n")
		tables, rest, _ := strings.Cut(rest, "#faults\n")
		faults, drained, _ := strings.Cut(rest, "#drained\n")
		var procs []procInfo
		if err := json.Unmarshal([]byte(psOut), &procs); err != nil {
			t.Fatalf("ps --json on h%d: %v: %s", k, err, psOut)
		}
		for _, p := range procs {
			done := p.State == "exited" || p.State == "lost"
			out = append(out, leftover{fmt.Sprintf("h%d: process %s (%s) %s", k, p.ID, p.Name, p.State), !done,
				func() { on(k, "migrated", "kill", p.ID) }})
		}
		for _, l := range strings.Split(addrs, "\n") {
			f := strings.Fields(l) // 2: eth0    inet 10.77.0.2/24 brd ...
			if len(f) < 4 || f[2] != "inet" || f[3] == ownCIDR(k) {
				continue
			}
			out = append(out, leftover{fmt.Sprintf("h%d: address %s", k, f[3]), true,
				func() { on(k, "ip", "addr", "del", f[3], "dev", ifc(k)) }})
		}
		for _, l := range strings.Split(tables, "\n") {
			f := strings.Fields(l) // table inet CRIU-...
			if len(f) == 3 && strings.HasPrefix(f[2], "CRIU-") {
				out = append(out, leftover{fmt.Sprintf("h%d: CRIU lock table %s %s", k, f[1], f[2]), true,
					func() { on(k, "nft", "delete", "table", f[1], f[2]) }})
			}
		}
		for _, name := range strings.Fields(faults) {
			path := filepath.Join(stateDir(k), "faults", name)
			out = append(out, leftover{fmt.Sprintf("h%d: armed fault point %s", k, name), true,
				func() { on(k, "rm", "-f", path) }})
		}
		if strings.TrimSpace(drained) != "" {
			out = append(out, leftover{fmt.Sprintf("h%d: drained (migrated drain)", k), true,
				func() { on(k, "migrated", "undrain") }})
		}
	}
	return out
}

// removeLeftovers removes what leftovers lists, waiting for what takes a
// moment (a migration that settles), and reports what it first found and
// what stayed.
func removeLeftovers(t *testing.T) (found, stayed []leftover) {
	t.Helper()
	for end := within(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		l := leftovers(t)
		if found == nil {
			found = l
		}
		if len(l) == 0 || time.Now().After(end) {
			return found, l
		}
		for _, x := range l {
			x.remove()
		}
	}
}

// settleLocks waits (10 s at most) until the hosts hold no CRIU lock table:
// a source removes its migration's after answering the client (the cleanup
// step runs in the background), so a test that ends right after a
// migration may see it for a moment. One that stays is a leftover.
func settleLocks(t *testing.T) {
	t.Helper()
	for end := within(10 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		locked := false
		for _, x := range leftovers(t) {
			locked = locked || strings.Contains(x.what, "CRIU lock table")
		}
		if !locked {
			return
		}
	}
}

// guardHosts keeps one test's failure from becoming the next one's: what an
// earlier test left on the hosts is removed before this one starts (and
// logged), and what this one leaves behind when it ends, failed or not, is
// removed and fails it unless it is only finished processes' entries. Tests
// call it through needRoot; subtests that start things call it themselves.
func guardHosts(t *testing.T) {
	t.Helper()
	found, stayed := removeLeftovers(t)
	if len(stayed) > 0 {
		t.Fatalf("the hosts hold what an earlier test left and it cannot be removed:\n  %s", describe(stayed))
	}
	if len(found) > 0 {
		t.Logf("removed what an earlier test left on the hosts:\n  %s", describe(found))
	}
	t.Cleanup(func() {
		settleLocks(t)
		found, stayed := removeLeftovers(t)
		var live []leftover
		for _, x := range found {
			if x.live {
				live = append(live, x)
			}
		}
		switch {
		case len(stayed) > 0:
			t.Errorf("the test left behind what cannot be removed:\n  %s", describe(stayed))
		case len(live) > 0:
			t.Errorf("the test left behind (now removed):\n  %s", describe(live))
		case len(found) > 0:
			t.Logf("removed finished processes' entries the test left:\n  %s", describe(found))
		}
	})
}

func describe(l []leftover) string {
	var s []string
	for _, x := range l {
		s = append(s, x.what)
	}
	return strings.Join(s, "\n  ")
}

// on runs a command on host hK (through the driver's exec) and returns its
// stdout; stderr goes into the error.
func on(k int, args ...string) (string, error) { return onIn(k, "", args...) }

// onIn is on with stdin.
func onIn(k int, stdin string, args ...string) (string, error) {
	cmd := exec.Command(cluster, append([]string{"exec", fmt.Sprintf("h%d", k)}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s on h%d: %w: %s%s", strings.Join(args, " "), k, err, errb.String(), out.String())
	}
	return out.String(), nil
}

// exitStatus is the exit status of the command whose error (from on, or
// exec) err is: 0 for nil, -1 if it did not exit.
func exitStatus(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// hostDir makes a new directory at the same path on every host (a fresh
// path of this machine's temporary directory) with files in it, name to
// content (executable if it starts with "#!" or "\x7fELF"), and removes it
// from every host when the test ends. Programs that migrate need their
// files at the same path on every host.
func hostDir(t *testing.T, files map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	for k := 1; k <= nHosts; k++ {
		t.Cleanup(func() { on(k, "rm", "-rf", dir) })
		if _, err := on(k, "mkdir", "-p", dir); err != nil {
			t.Fatal(err)
		}
		for name, b := range files {
			mode := "0644"
			if bytes.HasPrefix(b, []byte("#!")) || bytes.HasPrefix(b, []byte("\x7fELF")) {
				mode = "0755"
			}
			if _, err := onIn(k, string(b), "sh", "-c", `cat >"$1" && chmod "$2" "$1"`, "put", filepath.Join(dir, name), mode); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

// exclusive is a pkill/pgrep -f pattern that matches s but not itself: over
// ssh and sudo the command line that runs pkill holds the pattern too.
func exclusive(s string) string {
	return "[" + regexp.QuoteMeta(s[:1]) + "]" + regexp.QuoteMeta(s[1:])
}

func mustOn(t *testing.T, k int, args ...string) string {
	t.Helper()
	out, err := on(k, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// start launches a workload on hK and returns its ID; it is killed when the
// test ends, wherever it then is.
func start(t *testing.T, k int, name string, argv ...string) string {
	t.Helper()
	out := mustOn(t, k, append([]string{"migrated", "run", "--name", name, "--"}, argv...)...)
	id := strings.TrimSpace(out)
	if !regexp.MustCompile(`^[0-9a-f]{12}$`).MatchString(id) {
		t.Fatalf("migrated run printed %q, want an ID", out)
	}
	t.Cleanup(func() {
		for h := 1; h <= nHosts; h++ {
			on(h, "migrated", "kill", id)
		}
	})
	return id
}

type procInfo struct {
	ID, Name, State string
	PID             int
}

func ps(t *testing.T, k int) []procInfo {
	t.Helper()
	var out []procInfo
	if err := json.Unmarshal([]byte(mustOn(t, k, "migrated", "ps", "--json")), &out); err != nil {
		t.Fatalf("ps --json on h%d: %v", k, err)
	}
	return out
}

func find(t *testing.T, k int, id string) *procInfo {
	for _, p := range ps(t, k) {
		if p.ID == id {
			return &p
		}
	}
	return nil
}

func logs(t *testing.T, k int, id string) string {
	t.Helper()
	return mustOn(t, k, "migrated", "logs", id)
}

// waitLog waits until the log of id on hK matches re at least n times more
// than it did when called, and returns the log.
func waitLog(t *testing.T, k int, id, re string, n int) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	before := len(rx.FindAllString(logs(t, k, id), -1))
	deadline := within(60 * time.Second)
	for {
		l := logs(t, k, id)
		if len(rx.FindAllString(l, -1)) >= before+n {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("log of %s on h%d: %q did not appear %d more times; log tail:\n%s", id, k, re, n, tail(l, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// migrate moves id from hFrom to hTo and checks that the target lists it
// under the same ID and name, and the source no longer does.
func migrate(t *testing.T, from, to int, id string, extra ...string) string {
	t.Helper()
	name := find(t, from, id)
	if name == nil {
		t.Fatalf("%s is not on h%d", id, from)
	}
	out, err := on(from, "sh", "-c", "exec 2>&1; exec migrated migrate "+id+" --to "+addr(to)+" "+strings.Join(extra, " "))
	if err != nil {
		t.Fatalf("migrate %s h%d -> h%d: %v", id, from, to, err)
	}
	// The target may finish a step of its own after the source is done (a
	// lost commit is settled by asking the source): give it a moment.
	for end := within(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		got, left := find(t, to, id), find(t, from, id)
		if got != nil && got.Name == name.Name && got.State == "running" && left == nil {
			return out
		}
		if time.Now().After(end) {
			if left != nil {
				t.Fatalf("after migrating away, h%d still lists %+v", from, left)
			}
			t.Fatalf("after migrating to h%d, ps there shows %+v; want %s %s running", to, got, id, name.Name)
		}
	}
}

// checkConsecutive checks that the numbers after prefix in log run 0, step, 2*step...
// with no gap and no repeat: nothing lost, nothing done twice.
func checkConsecutive(t *testing.T, log, prefix string, step int) int {
	t.Helper()
	next := 0
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), prefix)
		if !ok {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(rest))
		if err != nil {
			t.Fatalf("bad line %q", sc.Text())
		}
		if n != next {
			t.Fatalf("%s: got %d, want %d (a gap or a repeat)", prefix, n, next)
		}
		next += step
	}
	return next
}
