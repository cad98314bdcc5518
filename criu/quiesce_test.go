package criu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// faulter builds and starts testdata/faulter.c: two threads that fault
// without end. It returns the process and a function reading its fault count.
func faulter(t *testing.T) (*exec.Cmd, func() uint64) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "faulter")
	if out, err := exec.Command("cc", "-O2", "-pthread", "-o", bin, "testdata/faulter.c").CombinedOutput(); err != nil {
		t.Fatalf("building testdata/faulter.c: %v\n%s", err, out)
	}
	count := filepath.Join(dir, "count")
	cmd := exec.Command(bin, count)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	read := func() uint64 {
		b, _ := os.ReadFile(count)
		n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		return n
	}
	waitFor(t, "the faulter to count faults", func() bool { return read() > 0 })
	return cmd, read
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !ok(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// allStopped reports whether every thread of pid is in a group stop with no
// synchronous signal queued.
func allStopped(t *testing.T, pid int) bool {
	tids, err := threads(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, tid := range tids {
		st, err := threadState(pid, tid)
		if err != nil {
			t.Fatal(err)
		}
		if st != 'T' {
			return false
		}
		if p, err := syncPending(pid, tid); err != nil || p {
			t.Fatalf("thread %d stopped with a synchronous signal queued (err %v)", tid, err)
		}
	}
	return true
}

// Threads that fault without end are exactly what makes a plain CRIU dump
// fail and kill the process (see quiesce.go). Quiesced first, every dump
// succeeds, and the process, continued, goes on faulting and counting; a
// restore of a quiesced image comes back stopped and runs when continued.
func TestQuiesceFaultingThreads(t *testing.T) {
	c := client(t)
	cmd, count := faulter(t)
	pid := cmd.Process.Pid
	for i := range 8 {
		if err := Quiesce(pid); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if !allStopped(t, pid) {
			t.Fatalf("round %d: Quiesce returned before every thread stopped", i)
		}
		if _, err := c.Dump(context.Background(), DumpOpts{Pid: pid, ImagesDir: t.TempDir(), LeaveRunning: true}); err != nil {
			t.Fatalf("round %d: dump of the quiesced faulter: %v", i, err)
		}
		// CRIU queues SIGSTOP as it lets go: the threads stop again soon.
		waitFor(t, "the faulter to be stopped after the dump", func() bool { return allStopped(t, pid) })
		syscall.Kill(pid, syscall.SIGCONT)
		n := count()
		waitFor(t, "the faulter to go on", func() bool { return count() > n })
	}

	if err := Quiesce(pid); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dropLock(t, dir)
	if _, err := c.Dump(context.Background(), DumpOpts{Pid: pid, ImagesDir: dir, LeaveStopped: true}); err != nil {
		t.Fatal(err)
	}
	rpid, _ := restoreInstead(t, c, cmd, dir)
	waitFor(t, "the restored faulter to be stopped", func() bool { return allStopped(t, rpid) })
	n := count()
	syscall.Kill(rpid, syscall.SIGCONT)
	waitFor(t, "the restored faulter to go on", func() bool { return count() > n })
}

// Quiesce stops a whole tree, children included.
func TestQuiesceTree(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	cmd := exec.Command("sh", "-c", "sleep 300 & sleep 300 & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		for _, p := range Tree(pid) {
			syscall.Kill(p, syscall.SIGKILL)
		}
		cmd.Wait()
	})
	waitFor(t, "two children", func() bool { return len(Tree(pid)) == 3 })
	if err := Quiesce(pid); err != nil {
		t.Fatal(err)
	}
	for _, p := range Tree(pid) {
		if !allStopped(t, p) {
			t.Fatalf("Quiesce returned before process %d stopped", p)
		}
	}
	// A tree that is stopped already stays so.
	if err := Quiesce(pid); err != nil {
		t.Fatalf("quiescing a stopped tree: %v", err)
	}
	for _, p := range Tree(pid) {
		waitFor(t, "process "+itoa(p)+" to stay stopped", func() bool { return allStopped(t, p) })
	}
	if err := Quiesce(999999); err == nil {
		t.Fatal("Quiesce of a missing pid succeeded")
	}
}
