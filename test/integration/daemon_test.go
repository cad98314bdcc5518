package integration

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Nothing is lost when a daemon dies: processes live under shims of their
// own, the daemon's state is journaled, and a migration interrupted at any
// step is settled so that the process runs exactly once.

// armFaultMode arms fault point name on hK's daemon: mode "fail" makes the
// step fail, "crash" makes the daemon kill itself with SIGKILL there ("" is
// the default, outcome.go). The daemon removes the file when it fires.
func armFaultMode(t *testing.T, k int, name, mode string) {
	t.Helper()
	dir := filepath.Join(stateDir(k), "faults")
	if _, err := on(k, "sh", "-c", `umask 077 && mkdir -p "$1" && printf '%s' "$3" >"$1/.$2" && mv "$1/.$2" "$1/$2"`, "arm", dir, name, mode+"\n"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { on(k, "rm", "-f", filepath.Join(dir, name)) })
}

// faultArmed reports whether fault point name on hK is still armed (has not
// fired).
func faultArmed(t *testing.T, k int, name string) bool {
	t.Helper()
	out, err := on(k, "sh", "-c", `if [ -e "$1" ]; then echo armed; fi`, "armed", filepath.Join(stateDir(k), "faults", name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out) == "armed"
}

// copies counts the live tasks (running or stopped, not zombies) on hK whose
// command line holds marker: the copies of a workload.
func copies(t *testing.T, k int, marker string) int {
	t.Helper()
	out, _ := on(k, "sh", "-c", `for p in $(pgrep -x migtest); do
		grep -qaF -- "$1" /proc/$p/cmdline 2>/dev/null || continue
		s=$(awk '{print $3}' /proc/$p/stat 2>/dev/null)
		[ -n "$s" ] && [ "$s" != Z ] && echo $p
	done; true`, "copies", marker)
	return len(strings.Fields(out))
}

// settled waits until exactly one host lists id, as running, and returns it.
func settled(t *testing.T, id string) int {
	t.Helper()
	deadline := within(90 * time.Second)
	for {
		where, states := 0, []string{}
		for k := 1; k <= nHosts; k++ {
			if p := find(t, k, id); p != nil {
				states = append(states, fmt.Sprintf("h%d:%s", k, p.State))
				if p.State == "running" {
					where = k
				}
			}
		}
		if len(states) == 1 && where != 0 {
			return where
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %s never settled on one host: %v", id, states)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// exactlyOnce checks that the workload with marker runs on hK and nowhere
// else, once, with its memory intact and an unbroken output sequence.
func exactlyOnce(t *testing.T, k int, id, marker, digest string) {
	t.Helper()
	for h := 1; h <= nHosts; h++ {
		want := 0
		if h == k {
			want = 1
		}
		if n := copies(t, h, marker); n != want {
			t.Fatalf("h%d has %d copies of %s, want %d (it should run once, on h%d)", h, n, id, want, k)
		}
	}
	l := waitLog(t, k, id, `count \d+`, 10)
	if strings.Contains(l, "BAD") || strings.Contains(l, "FAIL") {
		t.Fatalf("the process's memory or work went wrong:\n%s", tail(l, 5))
	}
	if !strings.Contains(tail(l, 40), "mem ok "+digest) {
		t.Fatalf("no recent memory check with digest %s:\n%s", digest, tail(l, 10))
	}
	checkConsecutive(t, l, "count ", 1)
}

// startMemcount starts a process with 16 MiB of checked memory and a
// numbered output sequence on hK, and returns its ID, marker and digest.
func startMemcount(t *testing.T, k int, name string) (id, marker, digest string) {
	t.Helper()
	marker = fmt.Sprintf("mark-%s-%d", name, time.Now().UnixNano())
	id = start(t, k, name, "migtest", "memcount", "16", marker)
	l := waitLog(t, k, id, `count \d+`, 5)
	m := regexp.MustCompile(`mem ready 16 MiB ([0-9a-f]+)`).FindStringSubmatch(l)
	if m == nil {
		t.Fatalf("no digest in the log:\n%s", tail(l, 5))
	}
	return id, marker, m[1]
}

// A daemon killed with SIGKILL and restarted knows every process it had:
// they never stopped, their output written meanwhile is in their logs, and
// ps, logs, migrate and kill work as before.
func TestDaemonRestartKeepsProcesses(t *testing.T) {
	needHosts(t, 2)
	id, marker, digest := startMemcount(t, 1, "survivor")
	id2 := start(t, 1, "survivor2", "migtest", "counter")
	waitLog(t, 1, id2, `count \d+`, 3)
	before := find(t, 1, id)
	for round := 0; round < 2; round++ {
		killDaemon(t, 1)
		// While it is down the process writes on (no SIGPIPE): give it
		// time to write some lines nobody collects.
		time.Sleep(300 * time.Millisecond)
		waitPort(t, 1, addr(1))
		p := find(t, 1, id)
		if p == nil || p.State != "running" || p.PID != before.PID {
			t.Fatalf("after daemon restart %d h1 shows %+v, want %s running as pid %d", round+1, p, id, before.PID)
		}
		exactlyOnce(t, 1, id, marker, digest)
	}
	if p := find(t, 1, id2); p == nil || p.State != "running" {
		t.Fatalf("the second process after the restarts: %+v", p)
	}
	checkConsecutive(t, waitLog(t, 1, id2, `count \d+`, 3), "count ", 1)
	// Migrate and kill after the restart.
	migrate(t, 1, 2, id)
	exactlyOnce(t, 2, id, marker, digest)
	mustOn(t, 1, "migrated", "kill", id2)
	if p := find(t, 1, id2); p != nil {
		t.Fatalf("killed process still listed: %+v", p)
	}
}

// An upgrade: a new binary in place of the old one, the daemon restarted
// gracefully (SIGTERM, as systemctl restart does); nothing is lost.
func TestDaemonUpgrade(t *testing.T) {
	needHosts(t, 3)
	id, marker, digest := startMemcount(t, 3, "upgraded")
	// A new inode in place of the binary, as a package upgrade makes (on
	// h3: the hosts may have bin/ of their own).
	bin := filepath.Join(repo, "bin", "migrated")
	if _, err := on(3, "sh", "-c", `cp -p "$1" "$1.new" && mv "$1.new" "$1"`, "upgrade", bin); err != nil {
		t.Fatal(err)
	}
	if _, err := on(3, "pkill", "-TERM", "-x", "migrated"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	waitPort(t, 3, addr(3))
	if p := find(t, 3, id); p == nil || p.State != "running" {
		t.Fatalf("after the upgrade h3 shows %+v", p)
	}
	exactlyOnce(t, 3, id, marker, digest)
}

// A second daemon on the same state directory and socket refuses to start,
// and says why; the first one serves on.
func TestSecondServeRefused(t *testing.T) {
	needHosts(t, 2)
	out, err := on(2, "sh", "-c", "exec 2>&1; exec timeout 20 migrated serve --listen "+hostIP(2)+":7079 --state-dir "+stateDir(2)+
		" --token-file "+tokenOn)
	if err == nil || !strings.Contains(out+err.Error(), "another migrated is serving here") {
		t.Fatalf("a second serve on h2's state dir: %v\n%s", err, out)
	}
	id := start(t, 2, "still-served", "migtest", "counter")
	waitLog(t, 2, id, `count \d+`, 3)
}

// The steps of a migration, as the engine names them (internal/migration).
var (
	sourceSteps = []string{"claim", "connect", "prepare", "freeze", "dump", "transfer", "restore", "commit",
		"kill", "confirm", "cleanup"}
	targetSteps = []string{"accept", "pages", "images", "await-restore", "restore", "await-commit",
		"resume", "rebind", "cleanup"}
)

// committedAt reports whether a fault at side-when-step falls after the
// migration committed (the process must end on the target) or before (it
// must end on the source).
func committedAt(side, when, step string) bool {
	pivot := map[string]string{"source": "commit", "target": "await-commit"}[side]
	steps := map[string][]string{"source": sourceSteps, "target": targetSteps}[side]
	i, p := -1, -1
	for k, s := range steps {
		if s == step {
			i = k
		}
		if s == pivot {
			p = k
		}
	}
	return i > p || (i == p && when == "after")
}

// A fault at every step of both sides, as a failure and as a kill -9 of the
// daemon there: the process runs exactly once afterwards, on the source if
// the fault came before the commit and on the target after it, with its
// memory intact and its output sequence unbroken.
func TestFaultAtEveryStep(t *testing.T) {
	needHosts(t, 2)
	for _, mode := range []string{"fail", "crash"} {
		for _, side := range []string{"source", "target"} {
			steps := map[string][]string{"source": sourceSteps, "target": targetSteps}[side]
			for _, step := range steps {
				for _, when := range []string{"before", "after"} {
					point := side + "-" + when + "-" + step
					t.Run(mode+"/"+point, func(t *testing.T) {
						faultAt(t, mode, side, when, step, point)
					})
				}
			}
		}
	}
}

func faultAt(t *testing.T, mode, side, when, step, point string) {
	guardHosts(t) // one case's leftovers are not the next one's
	id, marker, digest := startMemcount(t, 1, "f-"+strconv.Itoa(int(time.Now().UnixNano()%100000)))
	got, want, out, err := faultMigrate(t, mode, side, when, step, id)
	exactlyOnce(t, got, id, marker, digest)
	if mode == "fail" && want == 1 && err == nil {
		t.Fatalf("migrate succeeded although %s failed:\n%s", point, out)
	}
	// The exit status says what became of the process (docs/cli.md):
	// refused (4) when it runs on the source as before, unreachable (6)
	// when the source's daemon died under the client.
	code := exitStatus(err)
	switch {
	case step == "cleanup" && side == "source":
		// After the answer: whatever happens there, the process moved.
		if code != 0 {
			t.Errorf("migrate exited %d with a %s at %s, after its answer; want 0:\n%s", code, mode, point, out)
		}
	case mode == "crash" && side == "source" && code != 6:
		t.Errorf("migrate exited %d after its daemon crashed at %s, want 6:\n%s", code, point, out)
	case mode == "fail" && want == 1 && code != 4:
		t.Errorf("migrate exited %d after %s failed and the process stayed on h1, want 4:\n%s", code, point, out)
	}
}

// faultMigrate arms the fault point side-when-step (as a failure or a crash)
// on its host, migrates id from h1 to h2 with the extra arguments, and
// returns the host where id has settled, which must be the one it wants (h1
// before the commit, h2 after it), with migrate's output. The lock tables
// that appear meanwhile are gone when it returns (and are removed in any
// case when the test ends).
func faultMigrate(t *testing.T, mode, side, when, step, id string, extra ...string) (got, want int, out string, err error) {
	t.Helper()
	const src, dst = 1, 2
	point := side + "-" + when + "-" + step
	before := map[int]string{src: lockTables(t, src), dst: lockTables(t, dst)}
	t.Cleanup(func() {
		for k, had := range before {
			for _, tb := range strings.Fields(lockTables(t, k)) {
				if !strings.Contains(had, tb) {
					on(k, "nft", "delete", "table", "inet", tb)
				}
			}
		}
	})
	host := map[string]int{"source": src, "target": dst}[side]
	armFaultMode(t, host, point, mode)
	out, err = on(src, "sh", "-c", "exec 2>&1; exec migrated migrate "+id+" --to "+addr(dst)+" "+strings.Join(extra, " "))
	// The source's cleanup runs after migrate has answered: its fault
	// points fire a moment later.
	for end := within(30 * time.Second); faultArmed(t, host, point); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the fault point %s was never reached (migrate: %v)\n%s", point, err, out)
		}
	}
	if mode == "crash" {
		waitPort(t, host, addr(host)) // the supervisor restarts it
	}
	want = src
	if committedAt(side, when, step) {
		want = dst
	}
	got = settled(t, id)
	if got != want {
		t.Fatalf("after a %s at %s the process runs on h%d, want h%d (migrate: %v)\n%s", mode, point, got, want, err, out)
	}
	noLocks(t, before, src, dst)
	return got, want, out, err
}

// lockTables lists the CRIU lock tables on hK.
func lockTables(t *testing.T, k int) string {
	out, _ := on(k, "sh", "-c", `nft list tables | awk '$3 ~ /^CRIU-/ {print $3}'`)
	return out
}

// noLocks checks that no CRIU network lock is left on the hosts beyond
// those there before (a settled migration may still be removing its own for
// a moment).
func noLocks(t *testing.T, before map[int]string, hosts ...int) {
	t.Helper()
	for _, k := range hosts {
		for end := within(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			var left []string
			for _, tb := range strings.Fields(lockTables(t, k)) {
				if !strings.Contains(before[k], tb) {
					left = append(left, tb)
				}
			}
			if len(left) == 0 {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("h%d keeps CRIU lock tables: %v", k, left)
			}
		}
	}
}

// The same with a TCP client that moves with its own address, from the dump
// on (before it nothing differs from the plain case): exactly one copy runs
// afterwards, the address is on its host and no other, and the connection
// lives on, every echo in order. This is the undo that takes the sockets out
// of the repair mode the dump left them in, and the rollback of the address.
func TestMoveIPFaultAtEveryStep(t *testing.T) {
	needHosts(t, 3)
	srv := start(t, 3, "mf-srv", "migtest", "tcp-server", "0.0.0.0:7160")
	waitLog(t, 3, srv, `server conns`, 1)
	steps := map[string][]string{
		"source": {"dump", "transfer", "move-ip", "restore", "commit", "kill"},
		"target": {"pages", "images", "await-restore", "net", "restore", "await-commit", "resume"},
	}
	n := 0
	for _, mode := range []string{"fail", "crash"} {
		for _, side := range []string{"source", "target"} {
			for _, step := range steps[side] {
				for _, when := range []string{"before", "after"} {
					point := side + "-" + when + "-" + step
					ip := subnetIP(160 + n%90)
					n++
					t.Run(mode+"/"+point, func(t *testing.T) { moveIPFaultAt(t, mode, side, when, step, ip) })
				}
			}
		}
		// Inside the dump, while CRIU streams the memory: the connection
		// is locked and its socket in repair mode, and the inventory that
		// names the lock is not written yet. A failure there breaks the
		// page stream (a target or link lost mid-dump) and a crash kills
		// the daemon: either way CRIU's next write fails, and it unlocks,
		// takes the socket out of repair mode and puts the tree back.
		ip := subnetIP(160 + n%90)
		n++
		t.Run(mode+"/source-during-dump", func(t *testing.T) { moveIPFaultAt(t, mode, "source", "during", "dump", ip) })
	}
}

func moveIPFaultAt(t *testing.T, mode, side, when, step, ip string) {
	const src = 1
	cidr := fmt.Sprintf("%s/%d", ip, hosts[src-1].prefix)
	withIP(t, src, cidr)
	mib := "0"
	if when == "during" {
		// The dump streams memory after the connection is locked: the
		// fault point inside it waits for the first MiB.
		mib = "64"
	}
	id := start(t, src, "mf-"+strings.ReplaceAll(ip, ".", "-"), "migtest", "tcp-client", ip, hostIP(3)+":7160", mib)
	waitLog(t, src, id, `client ok`, 2)
	got, _, out, err := faultMigrate(t, mode, side, when, step, id, "--move-ip", cidr)
	for k := 1; k <= nHosts; k++ {
		if n := copies(t, k, ip); n != map[bool]int{true: 1, false: 0}[k == got] {
			t.Fatalf("h%d has %d copies of the client", k, n)
		}
		held := strings.Contains(mustOn(t, k, "ip", "-4", "-o", "addr", "show"), " "+ip+"/")
		if held != (k == got) {
			t.Fatalf("h%d holds %s: %v; the process runs on h%d", k, ip, held, got)
		}
	}
	l := waitLog(t, got, id, `client ok`, 5)
	if strings.Contains(l, "FAIL") || strings.Contains(l, "BAD") {
		t.Fatalf("the connection did not live through it (migrate: %v)\n%s\n%s", err, out, tail(l, 5))
	}
	checkConsecutive(t, l, "client ok ", 10)
}
