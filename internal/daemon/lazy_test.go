package daemon

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// StopLazy kills the lazy-pages of an images directory that a daemon before a
// restart started, found by its pid, also when CRIU runs through a loader
// (its arguments are then not first), and leaves alone a process that has
// taken the pid since (its command line says it is not that lazy-pages).
func TestStopLazy(t *testing.T) {
	dir := t.TempDir()
	type proc struct {
		cmd  *exec.Cmd
		done chan struct{}
	}
	start := func(args ...string) proc {
		// sh's own read blocks: no child to leave behind.
		cmd := exec.Command("sh", append([]string{"-c", "read x"}, args...)...)
		if _, err := cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		p := proc{cmd, make(chan struct{})}
		go func() { cmd.Wait(); close(p.done) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-p.done })
		// Until the child has exec'd, its command line is this test's: wait
		// for sh's (a loaded machine showed the gap).
		path := fmt.Sprintf("/proc/%d/cmdline", cmd.Process.Pid)
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if b, _ := os.ReadFile(path); strings.Contains(string(b), "read x") {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("%v did not start", cmd.Args)
			}
		}
		return p
	}
	exited := func(p proc) bool {
		select {
		case <-p.done:
			return true
		case <-time.After(2 * time.Second):
			return false
		}
	}
	var k checkpointer
	lazy := start("--library-path", "/x", "criu", "lazy-pages", "-D", dir, "--page-server")
	if err := k.StopLazy(lazy.cmd.Process.Pid, dir); err != nil {
		t.Fatal(err)
	}
	if !exited(lazy) {
		t.Fatal("StopLazy left the lazy-pages of its directory running")
	}
	other := start("criu", "lazy-pages", "-D", dir+"-other")
	if err := k.StopLazy(other.cmd.Process.Pid, dir); err != nil {
		t.Fatal(err)
	}
	if exited(other) {
		t.Fatal("StopLazy killed a process that is not the lazy-pages of its directory")
	}
	if err := k.StopLazy(1<<22+12345, dir); err != nil {
		t.Fatalf("a pid that is gone: %v", err)
	}
}
