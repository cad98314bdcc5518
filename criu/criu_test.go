package criu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"dsmigrate/netmove"
)

const testCRIU = "/usr/local/sbin/migrate-criu"

// dropLock deletes, when the test ends, the network lock table that a dump
// into dir leaving its tree stopped may have left behind (one of TCP
// connections; a test's failure): in this host's own namespace, tables left
// by every run would pile up.
func dropLock(t *testing.T, dir string) {
	t.Cleanup(func() {
		if table, err := netmove.LockName(dir); err == nil {
			netmove.DeleteLock(table)
		}
	})
}

// lockTables are the names of CRIU's network lock tables in this namespace.
func lockTables(t *testing.T) []string {
	out, err := exec.Command("nft", "list", "tables", "inet").Output()
	if err != nil {
		t.Logf("nft list tables: %v", err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 3 && strings.HasPrefix(f[2], "CRIU-") {
			names = append(names, f[2])
		}
	}
	return names
}

func client(t *testing.T) *Client {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := os.Stat(testCRIU); err != nil {
		t.Skip("CRIU not installed (scripts/install-deps.sh)")
	}
	return New(testCRIU)
}

// sleeper starts a process CRIU can dump: its own session, stdio /dev/null.
func sleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "300")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func TestCheck(t *testing.T) {
	c := client(t)
	v, err := c.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if v.Less(MinVersion) {
		t.Fatalf("version %s < %s", v, MinVersion)
	}
	if _, err := New("/nonexistent/criu").Check(context.Background()); err == nil ||
		!strings.Contains(err.Error(), "install-deps.sh") {
		t.Fatalf("missing CRIU: %v, want an error naming the fix", err)
	}
}

// A dump leaves the tree stopped with its stats; a restore brings it back as
// our child under the same pid.
func TestDumpRestore(t *testing.T) {
	c := client(t)
	cmd := sleeper(t)
	pid := cmd.Process.Pid
	dir := t.TempDir()
	dropLock(t, dir)
	st, err := c.Dump(context.Background(), DumpOpts{Pid: pid, ImagesDir: dir, LeaveStopped: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.PagesWritten == 0 || st.Frozen == 0 {
		t.Errorf("dump stats look empty: %+v", st)
	}
	// Without TCP connections there is nothing to lock (networkLock).
	if table, err := netmove.LockName(dir); !errors.Is(err, netmove.ErrNoLock) {
		t.Errorf("a dump without TCP connections left a network lock (%q, %v)", table, err)
	}
	// CRIU stops it with a SIGSTOP queued as it detaches, taken when the
	// task is next scheduled: R may show until then.
	for deadline := time.Now().Add(10 * time.Second); procState(pid) != "T"; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after a leave-stopped dump the process is %q, want T (stopped)", procState(pid))
		}
	}
	rpid, rst := restoreInstead(t, c, cmd, dir)
	if rpid != pid {
		t.Fatalf("restored as pid %d, want %d", rpid, pid)
	}
	if rst.Restore == 0 {
		t.Errorf("restore stats look empty: %+v", rst)
	}
	if s := procState(rpid); s != "S" && s != "R" {
		t.Fatalf("restored process state %q, want it running (S or R)", s)
	}
}

// A dump runs in the CRIU started ahead for it, its pages going through the
// page socket that CRIU was started with to a page server into the same
// directory; the process restores from it intact. An idle worker exits once
// our end of its RPC socket closes, as when its daemon dies.
func TestDumpWorker(t *testing.T) {
	c := client(t)
	cmd := sleeper(t)
	dir := t.TempDir()
	dropLock(t, dir)
	dumpEnd, psEnd := socketPair(t, "dump", "ps")
	defer dumpEnd.Close()
	w, err := c.StartDumpWorker([]*os.File{dumpEnd})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ps := make(chan error, 1)
	go func() { ps <- c.PageServer(context.Background(), dir, psEnd); psEnd.Close() }()
	var ran []int
	nfy := func(script string, pid int) error {
		if script == "pre-dump" {
			ran = swrks()
		}
		return nil
	}
	if _, err := c.Dump(context.Background(), DumpOpts{Pid: cmd.Process.Pid, ImagesDir: dir, LeaveStopped: true,
		PageServer: dumpEnd, Worker: w, Notify: nfy}); err != nil {
		t.Fatal(err)
	}
	if err := <-ps; err != nil {
		t.Fatalf("page server: %v", err)
	}
	if len(ran) != 1 || ran[0] != w.cmd.Process.Pid {
		t.Fatalf("during the dump our CRIU workers were %v, want only the one started ahead (%d)", ran,
			w.cmd.Process.Pid)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "pages-*.img")); len(m) == 0 {
		t.Fatal("the page server wrote no pages")
	}
	restoreInstead(t, c, cmd, dir)

	idle, err := c.StartDumpWorker(nil)
	if err != nil {
		t.Fatal(err)
	}
	idle.cln.Close()
	exited := make(chan error, 1)
	go func() { exited <- idle.cmd.Wait() }()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		idle.cmd.Process.Kill()
		t.Fatal("an idle dump worker did not exit when its RPC socket closed")
	}
}

// socketPair is a connected pair of blocking unix stream sockets, close-on-
// exec (a dump or page server gets one end through ExtraFiles).
func socketPair(t *testing.T, a, b string) (*os.File, *os.File) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fds[0]), a), os.NewFile(uintptr(fds[1]), b)
}

// swrks are our children serving a request of ours (`criu swrk`, which
// calls itself "criu: dump --rpc ..." then), not a page server.
func swrks() []int {
	var out []int
	for _, p := range swrkChildren() {
		if b, _ := os.ReadFile(filepath.Join("/proc", itoa(p), "cmdline")); strings.Contains(string(b), "--rpc") {
			out = append(out, p)
		}
	}
	return out
}

// A failure carries errno-ish detail and CRIU's log lines.
func TestDumpFailureExplains(t *testing.T) {
	c := client(t)
	_, err := c.Dump(context.Background(), DumpOpts{Pid: 999999, ImagesDir: t.TempDir()})
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("dump of a missing pid: %v, want *criu.Error", err)
	}
	if len(ce.Log) == 0 {
		t.Fatalf("no log lines in %v", err)
	}
}

// A context that ends while CRIU waits for the answer to a notification
// kills that CRIU at once: before it touches the tree (pre-dump), with the
// tree seized (query-ext-files), and with the tree seized and dumped
// (post-dump). The call says why, no CRIU is left, and the process runs on.
func TestDeadlineKills(t *testing.T) {
	c := client(t)
	for _, script := range []string{"pre-dump", "query-ext-files", "post-dump"} {
		t.Run(script, func(t *testing.T) {
			cmd := sleeper(t)
			pid := cmd.Process.Pid
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var (
				criuPid   int    // the swrk CRIU that sent the notification
				criuStart string // its start time, to tell a reused pid
				tracer    int    // who traced the process meanwhile
				canceled  time.Time
			)
			nfy := func(s string, _ int) error {
				if s != script {
					return nil
				}
				if ps := swrkChildren(); len(ps) == 1 {
					criuPid, criuStart = ps[0], startTime(ps[0])
				}
				tracer = tracerOf(pid)
				canceled = time.Now()
				cancel()
				return nil
			}
			// A CRIU killed after it locked the network and before it
			// wrote its inventory leaves a table no image names: the
			// tables new since the start go.
			before := lockTables(t)
			t.Cleanup(func() {
				for _, tb := range lockTables(t) {
					if !slices.Contains(before, tb) {
						netmove.DeleteLock(tb)
					}
				}
			})
			_, err := c.Dump(ctx, DumpOpts{Pid: pid, ImagesDir: t.TempDir(), LeaveRunning: true, Notify: nfy})
			took := time.Since(canceled)
			if canceled.IsZero() {
				t.Fatalf("CRIU sent no %s notification (dump: %v)", script, err)
			}
			if criuPid == 0 {
				t.Fatalf("no single CRIU among our children during %s", script)
			}
			if script != "pre-dump" && tracer != criuPid {
				t.Errorf("during %s the process was traced by %d, want CRIU (%d): not mid-dump", script, tracer, criuPid)
			}
			var ce *Error
			if !errors.Is(err, context.Canceled) || !errors.As(err, &ce) || ce.Errno != int(syscall.ETIMEDOUT) {
				t.Fatalf("dump whose context ended in %s: %v, want a *criu.Error (ETIMEDOUT) wrapping context.Canceled", script, err)
			}
			if took > 5*time.Second {
				t.Errorf("took %v after the cancel to give up", took)
			}
			if startTime(criuPid) == criuStart {
				t.Errorf("CRIU (pid %d) is still there after the call returned", criuPid)
			}
			if ps := swrkChildren(); len(ps) > 0 {
				t.Errorf("CRIU processes left: %v", ps)
			}
			// The tracer's exit lets the process go; it runs on.
			waitFor(t, "the process to be let go", func() bool {
				s := procState(pid)
				return tracerOf(pid) == 0 && (s == "S" || s == "R")
			})
			time.Sleep(50 * time.Millisecond)
			if s := procState(pid); s != "S" && s != "R" {
				t.Fatalf("the process is %q after a killed dump, want it running (S or R)", s)
			}
		})
	}
	// A context ended already never starts CRIU.
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	if _, err := c.Dump(ctx, DumpOpts{Pid: os.Getpid(), ImagesDir: t.TempDir()}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dump with an expired deadline: %v, want context.DeadlineExceeded", err)
	}
}

// swrkChildren are our children running CRIU (the wrapper execs ld.so and
// CRIU retitles itself "criu: dump ...": the command line tells them).
func swrkChildren() []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ParentOf(p) != os.Getpid() {
			continue
		}
		if b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); strings.Contains(string(b), "criu") {
			out = append(out, p)
		}
	}
	return out
}

// startTime is field 22 of /proc/PID/stat, "" if pid is gone.
func startTime(pid int) string {
	f, err := statFields(filepath.Join("/proc", itoa(pid), "stat"))
	if err != nil || len(f) < 20 {
		return ""
	}
	return f[19]
}

// tracerOf is pid's TracerPid (0: untraced or gone).
func tracerOf(pid int) int {
	b, _ := os.ReadFile(filepath.Join("/proc", itoa(pid), "status"))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "TracerPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

func TestLogErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	os.WriteFile(path, []byte("(0.1) one\n(0.2) Error (criu/x.c:1): bad thing\n(0.3) rlimit: Can't setup RLIMIT_NOFILE for self\n(0.4) two\n"), 0o600)
	got := logErrors(path)
	if len(got) != 1 || !strings.Contains(got[0], "bad thing") {
		t.Fatalf("logErrors = %q", got)
	}
	e := &Error{Op: "dump", Errno: int(syscall.EPERM), Msg: "m", Log: got}
	if s := e.Error(); !strings.Contains(s, "operation not permitted") || !strings.Contains(s, "bad thing") {
		t.Fatalf("Error() = %q", s)
	}
}

// restoreInstead kills cmd, whose dump is in dir, and restores it as our
// child; the restored process is killed and reaped when the test ends.
func restoreInstead(t *testing.T, c *Client, cmd *exec.Cmd, dir string) (int, *RestoreStats) {
	t.Helper()
	cmd.Process.Kill()
	cmd.Wait()
	rpid, rst, err := c.Restore(context.Background(), RestoreOpts{ImagesDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(rpid, syscall.SIGKILL)
		var ws syscall.WaitStatus
		syscall.Wait4(rpid, &ws, 0, nil)
	})
	return rpid, rst
}

func procState(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", itoa(pid), "stat"))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return strings.Fields(s[i+1:])[0]
}

func itoa(n int) string { return strconv.Itoa(n) }
