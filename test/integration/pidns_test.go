package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// nsPids returns pid's pids on hk, one per pid namespace level, outermost
// (the host's) first: the NSpid line of its status.
func nsPids(t *testing.T, k, pid int) []string {
	t.Helper()
	out := mustOn(t, k, "grep", "^NSpid:", fmt.Sprintf("/proc/%d/status", pid))
	return strings.Fields(out)[1:]
}

// workload returns the host pids of a process on hk: its workload (what ps
// shows) and the workload's parent, its init.
func workload(t *testing.T, k int, id string) (work, init int) {
	t.Helper()
	p := find(t, k, id)
	if p == nil {
		t.Fatalf("%s is not on h%d", id, k)
	}
	out := mustOn(t, k, "awk", "{print $4}", fmt.Sprintf("/proc/%d/stat", p.PID))
	fmt.Sscan(out, &init)
	if comm := strings.TrimSpace(mustOn(t, k, "cat", fmt.Sprintf("/proc/%d/comm", init))); !strings.HasPrefix(comm, "tini") {
		t.Fatalf("the parent of %s's pid %d on h%d is %s (%d), want its init, tini", id, p.PID, k, comm, init)
	}
	return p.PID, init
}

// takePid makes a process on hk hold pid (the host's number), and kills it
// when the test ends. The next pid is set to pid and a sleep started in the
// same shell, at once: anything else forked on the host meanwhile (the exec
// of a command there forks too) may take the pid first, and then that is
// tried again, unless the pid is held by then (by another process: taken
// either way).
func takePid(t *testing.T, k, pid int) {
	t.Helper()
	for end := within(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		out, err := on(k, "sh", "-c", `if [ -e /proc/$1 ]; then echo taken; exit; fi
			echo $(($1 - 1)) >/proc/sys/kernel/ns_last_pid
			sleep 600 </dev/null >/dev/null 2>&1 &
			if [ $! = $1 ]; then echo ours; else kill $!; fi`, "take-pid", fmt.Sprint(pid))
		if err != nil {
			t.Fatal(err)
		}
		switch strings.TrimSpace(out) {
		case "ours":
			t.Logf("h%d: pid %d held by a sleep", k, pid)
			t.Cleanup(func() {
				on(k, "sh", "-c", `[ "$(cat /proc/$1/comm 2>/dev/null)" != sleep ] || kill $1`, "untake-pid", fmt.Sprint(pid))
			})
			return
		case "taken":
			t.Logf("h%d: pid %d held already", k, pid)
			return
		}
		if time.Now().After(end) {
			t.Fatalf("could not take pid %d on h%d", pid, k)
		}
	}
}

// Every host hands out the same pids (the cluster has no per-host ranges), so
// a process's pids are often taken where it goes. In a pid namespace of its
// own it moves anyway: onto a host where processes hold both its init's and
// its workload's pids, and back; inside, it is pid 2 under its init all along,
// and it counts on with nothing lost.
func TestPidTakenOnTarget(t *testing.T) {
	needHosts(t, 2)
	id := start(t, 1, "pids", "migtest", "counter")
	waitLog(t, 1, id, `count \d+`, 5)
	work1, init1 := workload(t, 1, id)
	if got := nsPids(t, 1, work1); len(got) != 2 || got[1] != "2" {
		t.Fatalf("the workload's pids are %v, want its host pid and 2 (its own namespace)", got)
	}
	takePid(t, 2, init1)
	takePid(t, 2, work1)
	migrate(t, 1, 2, id)
	work2, init2 := workload(t, 2, id)
	if work2 == work1 || init2 == init1 {
		t.Fatalf("restored on h2 as pids %d (init %d), which processes there hold", work2, init2)
	}
	if got := nsPids(t, 2, work2); len(got) != 2 || got[1] != "2" {
		t.Fatalf("on h2 the workload's pids are %v, want 2 inside its namespace", got)
	}
	waitLog(t, 2, id, `count \d+`, 5)
	// Back: h1's own processes may hold its old pids by now; it does not care.
	takePid(t, 1, init1)
	migrate(t, 2, 1, id)
	waitLog(t, 1, id, `count \d+`, 5)
	if n := checkConsecutive(t, logs(t, 1, id), "count ", 1); n < 15 {
		t.Fatalf("only %d counts after two moves", n)
	}
}

// A restore conflict that is not the process's fault (here: a process on the
// target listens on its port) is refused in one sentence saying what to do,
// not a page of CRIU log, and the process runs on, on its source.
func TestRestoreConflictSaysWhy(t *testing.T) {
	needHosts(t, 2)
	port := 23000 + int(time.Now().UnixNano()%5000)
	id := start(t, 1, "listener", "migtest", "tcp-server", fmt.Sprintf("0.0.0.0:%d", port))
	waitLog(t, 1, id, `server conns`, 2)
	// A listener without SO_REUSEPORT (nc sets it, and so may share the
	// port with the restored socket).
	blocker := start(t, 2, "blocker", "migtest", "tcp-server", fmt.Sprintf("0.0.0.0:%d", port))
	waitLog(t, 2, blocker, `server conns`, 1)
	out, err := on(1, "sh", "-c", "exec 2>&1; exec migrated migrate "+id+" --to "+addr(2))
	if err == nil {
		t.Fatalf("the migration succeeded although h2 listens on port %d:\n%s", port, out)
	}
	t.Logf("refused:\n%s", out)
	if !strings.Contains(out, fmt.Sprintf("port %d", port)) || strings.Contains(out, "criu/") {
		t.Errorf("the refusal does not say in one sentence that port %d is taken on the target:\n%s", port, out)
	}
	if p := find(t, 1, id); p == nil || p.State != "running" {
		t.Fatalf("after the refused move h1 shows %+v, want %s running", p, id)
	}
	waitLog(t, 1, id, `server conns`, 2)
}
