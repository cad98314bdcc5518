// Package integration runs the toolkit on a namespace cluster (cluster.sh):
// real daemons, real CRIU, real processes and sockets. It needs root; without
// it the tests skip.
package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	repo     string
	cluster  string
	hostsEnv string
	nHosts   = 4
)

func TestMain(m *testing.M) {
	_, file, _, _ := runtime.Caller(0)
	repo = filepath.Join(filepath.Dir(file), "..", "..")
	cluster = filepath.Join(repo, "test", "integration", "cluster.sh")
	if os.Geteuid() != 0 {
		fmt.Println("integration tests need root: skipped")
		os.Exit(m.Run())
	}
	build := exec.Command("go", "build", "-o", filepath.Join(repo, "bin")+"/", "./cmd/...", "./test/integration/migtest", "./examples/...")
	build.Dir, build.Stdout, build.Stderr = repo, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Println("build failed:", err)
		os.Exit(1)
	}
	up := exec.Command(cluster, "up", strconv.Itoa(nHosts))
	up.Stdout, up.Stderr = os.Stderr, os.Stderr
	if err := up.Run(); err != nil {
		fmt.Println("cluster up failed:", err)
		exec.Command(cluster, "down").Run()
		os.Exit(1)
	}
	out, err := exec.Command(cluster, "env").Output()
	if err != nil {
		fmt.Println("cluster env failed:", err)
		os.Exit(1)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			os.Setenv(k, v)
			if k == "MIGRATED_HOSTS" {
				hostsEnv = v
			}
		}
	}
	code := m.Run()
	if os.Getenv("KEEP_CLUSTER") == "" {
		down := exec.Command(cluster, "down")
		down.Stdout, down.Stderr = os.Stderr, os.Stderr
		if err := down.Run(); err != nil {
			fmt.Println("cluster down failed:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// needRoot skips the test without root, and otherwise guards the hosts for
// it (guardHosts): every test that uses the cluster calls it first.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root and the namespace cluster")
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
// daemons list (finished ones too), addresses beyond each host's own on
// eth0, CRIU network-lock tables, and armed fault points. A host whose
// daemon does not answer (restarting after a crash fault) is waited for.
func leftovers(t *testing.T) []leftover {
	t.Helper()
	var out []leftover
	for k := 1; k <= nHosts; k++ {
		var snap string
		var err error
		for end := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			snap, err = on(k, "sh", "-c", `migrated ps --json && echo '#addrs' && ip -4 -o addr show dev eth0 &&
				echo '#nft' && nft list tables`)
			if err == nil || time.Now().After(end) {
				break
			}
		}
		if err != nil {
			t.Fatalf("cannot see what is on h%d: %v", k, err)
		}
		psOut, rest, _ := strings.Cut(snap, "#addrs\n")
		addrs, tables, _ := strings.Cut(rest, "#nft\n")
		var procs []procInfo
		if err := json.Unmarshal([]byte(psOut), &procs); err != nil {
			t.Fatalf("ps --json on h%d: %v: %s", k, err, psOut)
		}
		for _, p := range procs {
			done := p.State == "exited" || p.State == "lost"
			out = append(out, leftover{fmt.Sprintf("h%d: process %s (%s) %s", k, p.ID, p.Name, p.State), !done,
				func() { on(k, "migrated", "kill", p.ID) }})
		}
		own := fmt.Sprintf("10.77.0.%d/24", k)
		for _, l := range strings.Split(addrs, "\n") {
			f := strings.Fields(l) // 2: eth0    inet 10.77.0.2/24 brd ...
			if len(f) < 4 || f[2] != "inet" || f[3] == own {
				continue
			}
			out = append(out, leftover{fmt.Sprintf("h%d: address %s", k, f[3]), true,
				func() { on(k, "ip", "addr", "del", f[3], "dev", "eth0") }})
		}
		for _, l := range strings.Split(tables, "\n") {
			f := strings.Fields(l) // table inet CRIU-...
			if len(f) == 3 && strings.HasPrefix(f[2], "CRIU-") {
				out = append(out, leftover{fmt.Sprintf("h%d: CRIU lock table %s %s", k, f[1], f[2]), true,
					func() { on(k, "nft", "delete", "table", f[1], f[2]) }})
			}
		}
		faults, _ := os.ReadDir(filepath.Join(stateDir(k), "faults"))
		for _, e := range faults {
			path := filepath.Join(stateDir(k), "faults", e.Name())
			out = append(out, leftover{fmt.Sprintf("h%d: armed fault point %s", k, e.Name()), true,
				func() { os.Remove(path) }})
		}
	}
	return out
}

// removeLeftovers removes what leftovers lists, waiting for what takes a
// moment (a migration that settles), and reports what it first found and
// what stayed.
func removeLeftovers(t *testing.T) (found, stayed []leftover) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
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

// addr is the daemon address of host hK.
func addr(k int) string { return fmt.Sprintf("10.77.0.%d:7077", k) }

// on runs a command inside host hK and returns its stdout; stderr goes into
// the error.
func on(k int, args ...string) (string, error) {
	cmd := exec.Command(cluster, append([]string{"exec", fmt.Sprintf("h%d", k)}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s on h%d: %v: %s%s", strings.Join(args, " "), k, err, errb.String(), out.String())
	}
	return out.String(), nil
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
	deadline := time.Now().Add(60 * time.Second)
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
	for end := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
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
