package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A stateful process goes round h1 -> h2 -> h3 -> h1 and keeps counting from
// where it was: its log, which travels with it, has every number once.
func TestStatefulRoundTrip(t *testing.T) {
	needHosts(t, 3)
	id := start(t, 1, "counter", "migtest", "counter")
	waitLog(t, 1, id, `count \d+`, 10)
	route := []int{1, 2, 3, 1}
	for i := 0; i+1 < len(route); i++ {
		out := migrate(t, route[i], route[i+1], id)
		for _, ph := range []string{"freeze", "dump", "transfer", "restore", "resume"} {
			if !strings.Contains(out, ph) {
				t.Errorf("migrate output lacks phase %q:\n%s", ph, out)
			}
		}
		waitLog(t, route[i+1], id, `count \d+`, 10)
	}
	n := checkConsecutive(t, logs(t, 1, id), "count ", 1)
	if n < 40 {
		t.Fatalf("only %d counts after three moves", n)
	}
}

// 256 MiB of touched memory arrives with identical content.
func TestLargeMemory(t *testing.T) {
	needHosts(t, 2)
	id := start(t, 1, "mem256", "migtest", "mem", "256")
	l := waitLog(t, 1, id, `mem ok`, 1)
	want := regexp.MustCompile(`mem ready 256 MiB ([0-9a-f]+)`).FindStringSubmatch(l)
	if want == nil {
		t.Fatalf("no digest in log:\n%s", l)
	}
	migrate(t, 1, 2, id)
	l = waitLog(t, 2, id, `mem ok `+want[1], 3)
	if strings.Contains(l, "BAD") {
		t.Fatalf("memory changed in transit:\n%s", tail(l, 5))
	}
}

// A multi-threaded Go program keeps its threads and their work.
func TestThreads(t *testing.T) {
	needHosts(t, 3)
	id := start(t, 2, "threads", "migtest", "threads", "6")
	l := waitLog(t, 2, id, `threads \d+ tasks \d+`, 3)
	before := lastMatch(t, l, `threads (\d+) tasks`)
	migrate(t, 2, 3, id)
	l = waitLog(t, 3, id, `threads \d+ tasks \d+`, 5)
	after := lastMatch(t, l, `threads (\d+) tasks`)
	tasks := lastMatch(t, l, `threads \d+ tasks (\d+)`)
	if len(after) < len(before) || (len(after) == len(before) && after <= before) {
		t.Fatalf("the threads' work did not go on: %s before, %s after", before, after)
	}
	if n, _ := strconv.Atoi(tasks); n < 7 {
		t.Fatalf("%s threads after the move, want the 6 workers and main", tasks)
	}
}

// armFault arms the fault point name of hK's daemon once, as a failure.
func armFault(t *testing.T, k int, name string) {
	t.Helper()
	armFaultMode(t, k, name, "")
}

// The commit message is lost after the source killed its copy (the fault
// point before the source's confirm step drops the connection instead): the
// target asks the source how the migration ended, learns that it committed,
// and resumes the process, which counts on with no number lost or repeated.
func TestCommitLost(t *testing.T) {
	needHosts(t, 2)
	id := start(t, 1, "commit-lost", "migtest", "counter")
	waitLog(t, 1, id, `count \d+`, 5)
	armFault(t, 1, "source-before-confirm")
	migrate(t, 1, 2, id)
	if faultArmed(t, 1, "source-before-confirm") {
		t.Fatal("the migration never reached the fault point source-before-confirm")
	}
	waitLog(t, 2, id, `count \d+`, 5)
	checkConsecutive(t, logs(t, 2, id), "count ", 1)
	if h := mustOn(t, 1, "migrated", "history"); !strings.Contains(h, "source-before-confirm") {
		t.Fatalf("h1's history does not tell of the lost commit:\n%s", h)
	}
}

// Threads that take page faults all the time (here without end: the
// handler returns and the write faults again) move safely and go on. A
// plain CRIU dump of such a process fails and the process dies of the
// parasite's SIGTRAP (criu/quiesce.go); the daemon quiesces it first.
func TestFaultingThreads(t *testing.T) {
	needHosts(t, 3)
	// Built here, run on the hosts: at the same path on every host, with
	// its count file beside it (the faulter keeps it open, and CRIU reopens
	// it by path on the target: it must be there, as on the source, 21
	// bytes long).
	bin := filepath.Join(t.TempDir(), "faulter")
	if out, err := exec.Command("cc", "-O2", "-pthread", "-o", bin, filepath.Join(repo, "criu", "testdata", "faulter.c")).CombinedOutput(); err != nil {
		t.Fatalf("building the faulter: %v\n%s", err, out)
	}
	prog, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	dir := hostDir(t, map[string][]byte{"faulter": prog, "count": []byte(fmt.Sprintf("%20d\n", 0))})
	bin, countFile := filepath.Join(dir, "faulter"), filepath.Join(dir, "count")
	count := func(k int) uint64 {
		out, _ := on(k, "cat", countFile)
		n, _ := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
		return n
	}
	var id string
	goesOn := func(when string, k int) {
		t.Helper()
		n := count(k)
		for end := within(10 * time.Second); count(k) <= n; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("%s the faulter's count stays at %d (h%d lists %+v)", when, n, k, find(t, k, id))
			}
		}
	}
	id = start(t, 1, "faulter", bin, countFile)
	goesOn("at the start", 1)
	for i, hop := range [][2]int{{1, 2}, {2, 3}, {3, 1}, {1, 3}} {
		migrate(t, hop[0], hop[1], id)
		goesOn(fmt.Sprintf("after move %d", i+1), hop[1])
	}
}

// A parent and its children move as one tree and all go on working.
func TestProcessTree(t *testing.T) {
	needHosts(t, 3)
	id := start(t, 3, "tree", "migtest", "tree", "3")
	waitLog(t, 3, id, `child 2 tick`, 3)
	migrate(t, 3, 1, id)
	for k := 0; k < 3; k++ {
		waitLog(t, 1, id, fmt.Sprintf(`child %d tick`, k), 5)
	}
	waitLog(t, 1, id, `parent tick`, 5)
	for k := 0; k < 3; k++ {
		checkConsecutive(t, logs(t, 1, id), fmt.Sprintf("child %d tick ", k), 1)
	}
}

// withIP puts an extra address on hK's interface for the test, and
// announces it (announce).
func withIP(t *testing.T, k int, cidr string) {
	t.Helper()
	mustOn(t, k, "ip", "addr", "add", cidr, "dev", ifc(k))
	announce(t, k, strings.Split(cidr, "/")[0])
	t.Cleanup(func() {
		for h := 1; h <= nHosts; h++ {
			on(h, "ip", "addr", "del", cidr, "dev", ifc(h))
		}
	})
}

// announce sends a gratuitous ARP for ip from hK: the other hosts may still
// have it in their neighbour tables with the MAC of the host that held it in
// an earlier test, and would answer that host instead for seconds (seen on
// the VMs: a client's dial from a test address timed out).
func announce(t *testing.T, k int, ip string) {
	t.Helper()
	mustOn(t, k, "arping", "-q", "-U", "-c", "1", "-I", ifc(k), ip)
}

// A TCP client keeps its connection to a server on h3 through a move with
// its address: the server sees no reset, every echo comes back in order.
func TestTCPClientMoveIP(t *testing.T) {
	needHosts(t, 3)
	ip, cidr := subnetIP(101), subnetCIDR(101)
	withIP(t, 1, cidr)
	srv := start(t, 3, "echo-srv", "migtest", "tcp-server", "0.0.0.0:7101")
	waitLog(t, 3, srv, `server conns`, 1)
	cli := start(t, 1, "echo-cli", "migtest", "tcp-client", ip, hostIP(3)+":7101")
	waitLog(t, 1, cli, `client ok`, 3)
	migrate(t, 1, 2, cli, "--move-ip", cidr)
	l := waitLog(t, 2, cli, `client ok`, 10)
	if strings.Contains(l, "FAIL") {
		t.Fatalf("client failed:\n%s", tail(l, 5))
	}
	checkConsecutive(t, l, "client ok ", 10) // every tenth echo, in order: none lost or doubled
	sl := logs(t, 3, srv)
	if strings.Contains(sl, "closed") {
		t.Fatalf("server saw the connection end:\n%s", tail(sl, 5))
	}
	if strings.Contains(mustOn(t, 1, "ip", "-4", "addr", "show", "dev", ifc(1)), " "+ip+"/") {
		t.Fatalf("h1 still holds %s after the move", ip)
	}
	if !strings.Contains(mustOn(t, 2, "ip", "-4", "addr", "show", "dev", ifc(2)), " "+ip+"/") {
		t.Fatalf("h2 does not hold %s after the move", ip)
	}
}

// A TCP server moves with its address and keeps serving its clients.
func TestTCPServerMoveIP(t *testing.T) {
	needHosts(t, 4)
	ip, cidr := subnetIP(102), subnetCIDR(102)
	withIP(t, 1, cidr)
	srv := start(t, 1, "srv", "migtest", "tcp-server", ip+":7102")
	waitLog(t, 1, srv, `server conns`, 1)
	c1 := start(t, 3, "cli1", "migtest", "tcp-client", "", ip+":7102")
	c2 := start(t, 4, "cli2", "migtest", "tcp-client", "", ip+":7102")
	waitLog(t, 3, c1, `client ok`, 3)
	waitLog(t, 4, c2, `client ok`, 3)
	migrate(t, 1, 2, srv, "--move-ip", cidr)
	for _, c := range []struct {
		k  int
		id string
	}{{3, c1}, {4, c2}} {
		l := waitLog(t, c.k, c.id, `client ok`, 10)
		if strings.Contains(l, "FAIL") {
			t.Fatalf("client on h%d failed:\n%s", c.k, tail(l, 5))
		}
		checkConsecutive(t, l, "client ok ", 10)
	}
	if l := logs(t, 2, srv); strings.Contains(l, "closed") || !strings.Contains(tail(l, 1), "conns 2") {
		t.Fatalf("server after the move:\n%s", tail(l, 5))
	}
}

// The target daemon dies (kill -9, at a fault point) in the middle of a
// migration, while the pages of a large process stream to it: the process
// goes on running on the source, once, with its memory intact.
func TestTargetKilledMidMigration(t *testing.T) {
	needHosts(t, 4)
	id := start(t, 1, "victim", "migtest", "mem", "768")
	waitLog(t, 1, id, `mem ok`, 1)
	armFaultMode(t, 4, "target-after-pages", "crash")
	out, err := on(1, "sh", "-c", "exec 2>&1; exec migrated migrate "+id+" --to "+addr(4))
	if faultArmed(t, 4, "target-after-pages") {
		t.Fatalf("the migration never reached h4's fault point (migrate: %v):\n%s", err, out)
	}
	if err == nil {
		t.Fatalf("migrate succeeded although the target died:\n%s", out)
	}
	if !strings.Contains(out+err.Error(), "resumed on the source") {
		t.Errorf("migrate did not say the process resumed:\n%s%v", out, err)
	}
	p := find(t, 1, id)
	if p == nil || p.State != "running" {
		t.Fatalf("after the failed migration h1 shows %+v", p)
	}
	l := waitLog(t, 1, id, `mem ok`, 3)
	if strings.Contains(l, "BAD") {
		t.Fatal(tail(l, 5))
	}
	waitPort(t, 4, addr(4)) // the host's supervisor (cluster.sh's loop, systemd) restarts it
	// The restarted daemon drops its copy (it asks the source how the
	// migration ended): h1 alone lists the process.
	if k := settled(t, id); k != 1 {
		t.Fatalf("after h4's restart the process runs on h%d, want h1", k)
	}
}

// A daemon with another token is refused: nothing is sent, the process stays.
func TestBadTokenRefused(t *testing.T) {
	needHosts(t, 3)
	dir := hostDir(t, map[string][]byte{"token": []byte("an-entirely-different-secret-token\n")})
	tok, state, listen := filepath.Join(dir, "token"), filepath.Join(dir, "state"), hostIP(3)+":7078"
	on(3, "chmod", "0600", tok)
	// A second daemon on h3, port 7078, with its own token and socket.
	served := make(chan struct{})
	go func() {
		defer close(served)
		on(3, "env", "MIGRATED_SOCKET=/run/rogue.sock", "migrated", "serve", "--listen", listen,
			"--state-dir", state, "--token-file", tok)
	}()
	// Gone before its state directory is removed (cleanups run last first).
	t.Cleanup(func() {
		on(3, "pkill", "-f", exclusive("--listen "+listen))
		select {
		case <-served:
		case <-time.After(scaled(10 * time.Second)):
			on(3, "pkill", "-KILL", "-f", exclusive("--listen "+listen))
			<-served
		}
		on(3, "rm", "-f", "/run/rogue.sock")
	})
	waitPort(t, 3, listen)
	id := start(t, 1, "stay", "migtest", "counter")
	waitLog(t, 1, id, `count`, 3)
	out, err := on(1, "migrated", "migrate", id, "--to", listen)
	if err == nil {
		t.Fatalf("migration to a daemon with another token succeeded:\n%s", out)
	}
	if !strings.Contains(err.Error(), "authentication") {
		t.Errorf("error does not say why: %v", err)
	}
	if p := find(t, 1, id); p == nil || p.State != "running" {
		t.Fatalf("h1 shows %+v after the refused migration", p)
	}
	waitLog(t, 1, id, `count`, 5)
	checkConsecutive(t, logs(t, 1, id), "count ", 1)
}

// Unreachable target: refused before anything is frozen.
func TestUnreachableTarget(t *testing.T) {
	needHosts(t, 3)
	id := start(t, 2, "stay2", "migtest", "counter")
	waitLog(t, 2, id, `count`, 3)
	_, err := on(2, "migrated", "migrate", id, "--to", hostIP(3)+":1")
	if err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("want an 'unreachable' error, got %v", err)
	}
	waitLog(t, 2, id, `count`, 5)
	checkConsecutive(t, logs(t, 2, id), "count ", 1)
}

func lastMatch(t *testing.T, s, re string) string {
	t.Helper()
	m := regexp.MustCompile(re).FindAllStringSubmatch(s, -1)
	if m == nil {
		t.Fatalf("no %q in:\n%s", re, tail(s, 5))
	}
	return m[len(m)-1][1]
}

func killDaemon(t *testing.T, k int) {
	t.Helper()
	if _, err := on(k, "pkill", "-KILL", "-x", "migrated"); err != nil {
		t.Fatalf("cannot kill h%d's daemon: %v", k, err)
	}
}

func waitPort(t *testing.T, k int, hostport string) {
	t.Helper()
	deadline := within(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := on(k, "nc", "-z", "-w", "1", strings.Split(hostport, ":")[0], strings.Split(hostport, ":")[1]); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %s in h%d", hostport, k)
}

// `migrated logs -f` prints a process's output as it grows and follows it to
// the host it moves to, until it exits there: every count once, in order,
// from before the move to after it, and the exit said.
func TestLogsFollow(t *testing.T) {
	needHosts(t, 2)
	id := start(t, 1, "followed", "migtest", "counter")
	waitLog(t, 1, id, `count \d+`, 5)
	cmd := exec.Command(cluster, "exec", "h1", "migrated", "logs", "-f", id)
	var mu sync.Mutex
	var ob, eb bytes.Buffer
	cmd.Stdout, cmd.Stderr = lockedBuf{&mu, &ob}, lockedBuf{&mu, &eb}
	// Its own process group: the cleanup kills the driver and the client
	// it runs on the host, whose output pipes Wait waits for.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})
	seen := func() int {
		mu.Lock()
		defer mu.Unlock()
		return strings.Count(ob.String(), "count ")
	}
	for end := within(10 * time.Second); seen() < 10; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("logs -f printed %d counts in 10 s", seen())
		}
	}
	migrate(t, 1, 2, id)
	before := seen()
	for end := within(15 * time.Second); seen() < before+25; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("logs -f printed nothing from h2: %d counts before the move, %d now", before, seen())
		}
	}
	mustOn(t, 2, "migrated", "kill", id)
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("logs -f: %v\n%s", waitErr, eb.String())
		}
	case <-time.After(scaled(15 * time.Second)):
		t.Fatal("logs -f did not end when the process did")
	}
	mu.Lock()
	defer mu.Unlock()
	checkConsecutive(t, ob.String(), "count ", 1)
	if !strings.Contains(eb.String(), "process "+id+" exited") {
		t.Errorf("logs -f did not say how the process ended:\n%s", eb.String())
	}
}
