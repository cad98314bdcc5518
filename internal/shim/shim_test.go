package shim_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"dsmigrate/criu"
	"dsmigrate/internal/shim"
	"dsmigrate/internal/shim/shimtest"
	"dsmigrate/netmove"
	mrt "dsmigrate/runtime"
)

const testCRIU = "/usr/local/sbin/migrate-criu"

// The test binary is also the shim (argument "shim", as Start runs it), a
// starter that starts a shim and then waits to be killed ("starter"), and a
// rank that reads its job secret ("secret-reader").
func TestMain(m *testing.M) {
	shimtest.Main(m, map[string]func() int{"starter": starter, "secret-reader": secretReader})
}

// secretReader reads the job secret as a rank does (runtime.Self), prints
// the descriptor it came on and its SHA-256 (not the secret: the log is a
// file in the shim's directory), and waits until the file $STOP exists.
func secretReader() int {
	fd := os.Getenv(mrt.EnvSecretFD)
	id, err := mrt.Self()
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Printf("fd=%s sha256=%x\n", fd, sha256.Sum256(id.Secret))
	for {
		if _, err := os.Stat(os.Getenv("STOP")); err == nil {
			return 0
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// starter reads a Spec on stdin, starts its shim, prints Started and waits.
func starter() int {
	var spec shim.Spec
	if err := json.NewDecoder(os.Stdin).Decode(&spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	exe, _ := os.Executable()
	_, st, err := shim.Start(context.Background(), exe, spec)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	json.NewEncoder(os.Stdout).Encode(st)
	select {}
}

func exe(t *testing.T) string {
	t.Helper()
	p, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// counter counts until the file stop exists, then prints "last N" and exits 7.
func counterSpec(dir, stop string) shim.Spec {
	return shim.Spec{
		ID:  "c",
		Dir: dir,
		Argv: []string{"sh", "-c", `i=0; while [ ! -e "$STOP" ]; do i=$((i+1)); echo "count $i"; sleep 0.01; done; ` +
			`echo "last $i"; exit 7`},
		Env:     []string{"PATH=/usr/bin:/bin", "STOP=" + stop},
		WorkDir: "/",
	}
}

// startShim starts a shim whose workload and shim are killed and reaped when
// the test ends.
func startShim(t *testing.T, spec shim.Spec) (*shim.Client, *shim.Started) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, st, err := shim.Start(ctx, exe(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	endShim(t, c, st)
	return c, st
}

// endShim kills the workload and its shim, and reaps them, when the test
// ends.
func endShim(t *testing.T, c *shim.Client, st *shim.Started) {
	t.Cleanup(func() {
		killWorkload(st.PID, c.ShimPID())
		select {
		case <-c.Exited():
		case <-time.After(10 * time.Second):
			t.Errorf("shim %d still there 10 s after its workload was killed: killing it", c.ShimPID())
			unix.Kill(c.ShimPID(), unix.SIGKILL)
			<-c.Exited()
		}
	})
}

// prestartShim is startShim with the shim started ahead of its spec, as a
// migration's target starts it: it waits with its CRIU started, as its
// child, until the spec comes.
func prestartShim(t *testing.T, spec shim.Spec, moved bool) (*shim.Client, *shim.Started) {
	t.Helper()
	dir := spec.Dir
	if moved {
		dir = t.TempDir()
	}
	p, err := shim.Prestart(exe(t), dir, spec.Restore.CRIU)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Abort) // a no-op once started
	if w := waitSwrk(t, p.PID()); w == 0 {
		t.Fatalf("the prestarted shim %d has no CRIU waiting", p.PID())
	}
	if moved {
		if err := p.Move(spec.Dir); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dir, shim.ShimLog)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the shim's log is still in its spare directory (%v)", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, st, err := p.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	endShim(t, c, st)
	return c, st
}

// waitSwrk waits up to 10 s for a child of pid that is a `criu swrk` and
// returns its pid, 0 if none came. (CRIU may run under a wrapper that
// execs ld.so: its command line, not its name, says what it is.)
func waitSwrk(t *testing.T, pid int) int {
	t.Helper()
	for range 200 {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			c, err := strconv.Atoi(e.Name())
			if err != nil || criu.ParentOf(c) != pid {
				continue
			}
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", c)); strings.Contains(string(b), "criu\x00swrk\x00") {
				return c
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return 0
}

// holdsFile reports whether process pid has a descriptor open on key
// ("pipe:[ino]").
func holdsFile(pid int, key string) bool {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, e := range ents {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); l == key {
			return true
		}
	}
	return false
}

// A shim started ahead and never given its spec leaves when told to (Abort),
// with the CRIU it started, and when the daemon that started it dies (its
// stdin closes: the same to the shim).
func TestPrestartAbort(t *testing.T) {
	needCRIU(t)
	dir := t.TempDir()
	p, err := shim.Prestart(exe(t), dir, testCRIU)
	if err != nil {
		t.Fatal(err)
	}
	w := waitSwrk(t, p.PID())
	if w == 0 {
		p.Abort()
		t.Fatalf("the prestarted shim %d has no CRIU waiting", p.PID())
	}
	pid := p.PID()
	p.Abort()
	if err := unix.Kill(pid, 0); err != unix.ESRCH {
		t.Errorf("the shim %d is there after Abort (%v)", pid, err)
	}
	for range 100 { // CRIU dies of its parent's death, reaped by the subreaper
		if unix.Kill(w, 0) == unix.ESRCH || criu.ParentOf(w) != pid {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if criu.ParentOf(w) == pid {
		t.Errorf("CRIU %d still waits under the aborted shim", w)
	}
	if log, _ := os.ReadFile(filepath.Join(dir, shim.ShimLog)); !strings.Contains(string(log), "no spec came") {
		t.Errorf("the shim's log does not say why it left:\n%s", log)
	}
	if _, _, err := p.Start(context.Background(), shim.Spec{ID: "x", Dir: dir, Argv: []string{"true"}}); err == nil {
		t.Error("an aborted shim started")
	}
}

// killWorkload kills the tree of pid if it is still the child of shimPID
// (not a recycled pid).
func killWorkload(pid, shimPID int) {
	if criu.ParentOf(pid) != shimPID {
		return
	}
	for _, p := range criu.Tree(pid) {
		unix.Kill(p, unix.SIGKILL)
	}
}

// reapOrphan kills the workload and waits for the shim shimPID, an orphan
// that is this process's child now, to end; then reaps it.
func reapOrphan(t *testing.T, shimPID, pid int) {
	killWorkload(pid, shimPID)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(shimPID, &ws, unix.WNOHANG, nil)
		if got == shimPID || errors.Is(err, unix.ECHILD) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("orphaned shim %d did not end: killing it", shimPID)
			unix.Kill(shimPID, unix.SIGKILL)
			unix.Wait4(shimPID, &ws, 0, nil)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readLog(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, shim.LogFile))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var countRE = regexp.MustCompile(`(?m)^count (\d+)$`)

// counts returns the counts in a log, checking that they go 1, 2, 3... with
// no gap and no repeat.
func counts(t *testing.T, log string) int {
	t.Helper()
	n := 0
	for _, m := range countRE.FindAllStringSubmatch(log, -1) {
		v, _ := strconv.Atoi(m[1])
		if v != n+1 {
			t.Fatalf("count %d after %d:\n%s", v, n, tailOf(log, 10))
		}
		n = v
	}
	return n
}

// waitCount waits until the log in dir holds count >= n, and returns it.
func waitCount(t *testing.T, dir string, n int) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := counts(t, readLog(t, dir))
		if got >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("the log reached count %d, want %d:\n%s", got, n, tailOf(readLog(t, dir), 10))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func tailOf(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func touch(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

func wait(t *testing.T, c *shim.Client) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code, err := c.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

func statFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
}

// waitStopped waits until pid is in state T; what names it in the failure.
func waitStopped(t *testing.T, pid int, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for state(pid) != "T" {
		if time.Now().After(deadline) {
			t.Fatalf("%s never stopped (%q)", what, state(pid))
		}
		time.Sleep(time.Millisecond)
	}
}

func state(pid int) string {
	if f := statFields(pid); len(f) > 0 {
		return f[0]
	}
	return ""
}

// A counter's output lands in the log; Status shows it running; Wait returns
// its code once the log is complete; exit.json says the same; the shim then
// leaves, taking its socket with it.
func TestRun(t *testing.T) {
	dir := t.TempDir()
	stop := filepath.Join(t.TempDir(), "stop")
	c, st := startShim(t, counterSpec(dir, stop))
	if st.PID <= 0 || st.ShimPID != c.ShimPID() || !strings.HasPrefix(st.PipeKey, "pipe:[") {
		t.Fatalf("Started = %+v", st)
	}
	waitCount(t, dir, 20)
	s, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.PID != st.PID || s.ShimPID != st.ShimPID || s.Exited {
		t.Fatalf("Status = %+v, want pid %d running under %d", s, st.PID, st.ShimPID)
	}
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c.ShimPID())); strings.TrimSpace(string(comm)) != "migrated-shim" {
		t.Errorf("the shim's comm is %q, want migrated-shim", comm)
	}
	if p := criu.ParentOf(st.PID); p != c.ShimPID() {
		t.Errorf("the workload's parent is %d, want the shim %d", p, c.ShimPID())
	}
	touch(t, stop)
	if code := wait(t, c); code != 7 {
		t.Fatalf("Wait = %d, want 7", code)
	}
	log := readLog(t, dir)
	n := counts(t, log)
	if !strings.HasSuffix(log, fmt.Sprintf("last %d\n", n)) {
		t.Fatalf("the log does not end with the last line:\n%s", tailOf(log, 5))
	}
	if code, ok, err := shim.ReadExit(dir); err != nil || !ok || code != 7 {
		t.Fatalf("ReadExit = %d, %v, %v; want 7", code, ok, err)
	}
	s, err = c.Status(context.Background())
	if err == nil && (!s.Exited || s.Code != 7) {
		t.Fatalf("Status after the exit = %+v", s)
	}
	select {
	case <-c.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("the shim did not leave after its workload")
	}
	if _, err := os.Stat(filepath.Join(dir, shim.SocketFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the socket is still there: %v", err)
	}
	if _, err := shim.Dial(dir); !errors.Is(err, shim.ErrGone) {
		t.Errorf("Dial after the shim left: %v, want ErrGone", err)
	}
}

// Exit codes: the status, or 128+signal; a burst written just before the exit
// is all in the log when Wait returns.
func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		name, script string
		code         int
	}{
		{"zero", "seq 1 200000; exit 0", 0},
		{"status", "seq 1 200000; exit 3", 3},
		{"signal", "seq 1 200000; kill -TERM $$", 128 + int(syscall.SIGTERM)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c, _ := startShim(t, shim.Spec{ID: "x", Dir: dir, Argv: []string{"sh", "-c", tc.script},
				Env: []string{"PATH=/usr/bin:/bin"}})
			if code := wait(t, c); code != tc.code {
				t.Fatalf("Wait = %d, want %d", code, tc.code)
			}
			if log := readLog(t, dir); !strings.HasSuffix(log, "\n199999\n200000\n") {
				t.Fatalf("the log is incomplete at the exit (%d bytes): ...%q", len(log), tailOf(log, 2))
			}
		})
	}
}

func TestStartFails(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	_, _, err := shim.Start(ctx, exe(t), shim.Spec{ID: "x", Dir: dir, Argv: []string{"/nonexistent/prog"}})
	if err == nil || !strings.Contains(err.Error(), `cannot run "/nonexistent/prog"`) {
		t.Fatalf("Start of a missing program: %v", err)
	}
	long := filepath.Join(dir, strings.Repeat("d", 100))
	_, _, err = shim.Start(ctx, exe(t), shim.Spec{ID: "x", Dir: long, Argv: []string{"true"}})
	if err == nil || !strings.Contains(err.Error(), "unix socket") {
		t.Fatalf("Start with a too long socket path: %v", err)
	}
	_, _, err = shim.Start(ctx, exe(t), shim.Spec{ID: "x", Dir: "relative", Argv: []string{"true"}})
	if err == nil {
		t.Fatal("Start with a relative Dir succeeded")
	}
}

// The workload has stdin /dev/null, stdout and stderr the pipe, and nothing
// else; exactly the spec's environment; its own session.
func TestWorkloadDescriptors(t *testing.T) {
	dir := t.TempDir()
	env := []string{"PATH=/usr/bin:/bin", "ONLY=this"}
	_, st := startShim(t, shim.Spec{ID: "x", Dir: dir, Argv: []string{"sleep", "300"}, Env: env, WorkDir: dir})
	want := map[string]string{"0": "/dev/null", "1": st.PipeKey, "2": st.PipeKey}
	// While the program's loader runs it has its libraries open too (seen on
	// a loaded machine): what counts is what it holds once started.
	var got map[string]string
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", st.PID))
		if err != nil {
			t.Fatal(err)
		}
		got = map[string]string{}
		for _, fd := range fds {
			got[fd.Name()], _ = os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", st.PID, fd.Name()))
		}
		if maps.Equal(got, want) || time.Now().After(end) {
			break
		}
	}
	if !maps.Equal(got, want) {
		t.Errorf("descriptors %v; want only %v", got, want)
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", st.PID))
	if got := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"); !slices.Equal(got, env) {
		t.Errorf("environment %q, want %q", got, env)
	}
	if f := statFields(st.PID); len(f) < 4 || f[3] != strconv.Itoa(st.PID) {
		t.Errorf("session %v, want its own (%d)", f, st.PID)
	}
	if cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", st.PID)); cwd != dir {
		t.Errorf("cwd %s, want %s", cwd, dir)
	}
}

// The shim outlives the process that started it: the starter is SIGKILLed,
// the workload keeps writing (no SIGPIPE), a new Client finds the shim through
// the directory, the output written meanwhile is in the log, and Wait works.
func TestOutlivesStarter(t *testing.T) {
	dir := t.TempDir()
	stop := filepath.Join(t.TempDir(), "stop")
	spec := counterSpec(dir, stop)
	cmd := exec.Command(exe(t), "starter")
	b, _ := json.Marshal(spec)
	cmd.Stdin = strings.NewReader(string(b))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var st shim.Started
	if err := json.NewDecoder(bufio.NewReader(out)).Decode(&st); err != nil {
		t.Fatalf("no report from the starter: %v", err)
	}
	t.Cleanup(func() { reapOrphan(t, st.ShimPID, st.PID) })
	if p := criu.ParentOf(st.ShimPID); p != cmd.Process.Pid {
		t.Fatalf("the shim's parent is %d, want the starter %d", p, cmd.Process.Pid)
	}
	waitCount(t, dir, 10)

	cmd.Process.Kill()
	cmd.Wait()
	killed := counts(t, readLog(t, dir))
	time.Sleep(300 * time.Millisecond)
	if p := criu.ParentOf(st.ShimPID); p != os.Getpid() {
		t.Fatalf("the orphaned shim's parent is %d, want this subreaper %d", p, os.Getpid())
	}
	c, err := shim.Dial(dir)
	if err != nil {
		t.Fatal(err)
	}
	if c.ShimPID() != st.ShimPID || c.Exited() != nil {
		t.Fatalf("Dial: shim %d, want %d", c.ShimPID(), st.ShimPID)
	}
	s, err := c.Status(context.Background())
	if err != nil || s.PID != st.PID || s.Exited {
		t.Fatalf("Status after redial = %+v, %v", s, err)
	}
	waitCount(t, dir, killed+30)
	touch(t, stop)
	if code := wait(t, c); code != 7 {
		t.Fatalf("Wait after redial = %d, want 7 (a SIGPIPE would be 141)", code)
	}
	log := readLog(t, dir)
	if n := counts(t, log); !strings.HasSuffix(log, fmt.Sprintf("last %d\n", n)) {
		t.Fatalf("the log does not end with the last line:\n%s", tailOf(log, 5))
	}
}

// Flush: everything a stopped workload wrote before it stopped is in the
// log once Flush returns.
func TestFlush(t *testing.T) {
	dir := t.TempDir()
	c, st := startShim(t, shim.Spec{ID: "x", Dir: dir, Argv: []string{"sh", "-c", "seq 1 300000; kill -STOP $$; echo after"},
		Env: []string{"PATH=/usr/bin:/bin"}})
	waitStopped(t, st.PID, "the workload")
	if err := c.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if log := readLog(t, dir); !strings.HasSuffix(log, "\n299999\n300000\n") {
		t.Fatalf("after Flush the log ends with %q, want ...300000", tailOf(log, 2))
	}
	unix.Kill(st.PID, unix.SIGCONT)
	if code := wait(t, c); code != 0 {
		t.Fatalf("Wait = %d", code)
	}
	if log := readLog(t, dir); !strings.HasSuffix(log, "300000\nafter\n") {
		t.Fatalf("the log ends with %q", tailOf(log, 2))
	}
}

// dumpStopped dumps a shim's workload, leaving it stopped, and returns the
// images once the shim's log holds all it wrote.
func dumpStopped(t *testing.T, c *shim.Client, st *shim.Started) string {
	t.Helper()
	images := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := criu.New(testCRIU).Dump(ctx, criu.DumpOpts{Pid: st.PID, ImagesDir: images, LeaveStopped: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if table, err := netmove.LockName(images); err == nil {
			netmove.DeleteLock(table)
		}
	})
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	return images
}

func needCRIU(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CRIU)")
	}
	if _, err := os.Stat(testCRIU); err != nil {
		t.Skip("CRIU not installed at " + testCRIU + " (scripts/install-deps.sh)")
	}
}

// Restore mode: a counter under one shim is dumped and killed, and restored
// under a second shim with the first one's pipe key; it counts on into the
// second shim's log with no gap and no repeat, as the second shim's child.
// The second shim starts when the restore is asked for, or ahead of it
// (Prestart, as a migration's target does), its CRIU waiting for the
// request as its child and a held file (RestoreSpec.Hold) coming with the
// spec.
func TestRestore(t *testing.T) {
	needCRIU(t)
	t.Run("fresh", func(t *testing.T) { testRestore(t, "") })
	t.Run("ahead", func(t *testing.T) { testRestore(t, "ahead") })
	// Started ahead in a spare directory and moved to the process's, as a
	// daemon's shim that waits before any migration comes.
	t.Run("moved", func(t *testing.T) { testRestore(t, "moved") })
}

func testRestore(t *testing.T, how string) {
	ahead := how != ""
	dir1, dir2 := t.TempDir(), t.TempDir()
	stop := filepath.Join(t.TempDir(), "stop")
	c1, st1 := startShim(t, counterSpec(dir1, stop))
	waitCount(t, dir1, 20)

	images := dumpStopped(t, c1, st1)
	before := counts(t, readLog(t, dir1))
	killWorkload(st1.PID, c1.ShimPID())
	if code := wait(t, c1); code != 128+int(syscall.SIGKILL) {
		t.Fatalf("the killed original: Wait = %d, want 137", code)
	}
	select {
	case <-c1.Exited(): // it has reaped the whole tree: the pids are free
	case <-time.After(10 * time.Second):
		t.Fatal("the first shim did not leave")
	}
	log1 := readLog(t, dir1)
	if n := counts(t, log1); n != before {
		t.Fatalf("the stopped counter wrote on: %d after the dump, %d at the kill", before, n)
	}
	if err := os.WriteFile(filepath.Join(dir2, shim.LogFile), []byte(log1), 0o600); err != nil {
		t.Fatal(err)
	}

	spec2 := shim.Spec{ID: "c", Dir: dir2, Restore: &shim.RestoreSpec{CRIU: testCRIU, ImagesDir: images,
		PipeKey: st1.PipeKey, Timeout: time.Minute}}
	var c2 *shim.Client
	var st2 *shim.Started
	holdKey := ""
	if ahead {
		hr, hw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer hr.Close()
		defer hw.Close()
		var hst unix.Stat_t
		unix.Fstat(int(hr.Fd()), &hst)
		holdKey = fmt.Sprintf("pipe:[%d]", hst.Ino)
		spec2.Restore.Hold = hw
		c2, st2 = prestartShim(t, spec2, how == "moved")
	} else {
		c2, st2 = startShim(t, spec2)
	}
	if ahead && !holdsFile(c2.ShimPID(), holdKey) {
		t.Errorf("the shim %d does not hold the file sent with its spec (%s)", c2.ShimPID(), holdKey)
	}
	if b, _ := os.ReadFile(filepath.Join(dir2, shim.ShimLog)); !strings.Contains(string(b), "started pid") {
		t.Errorf("the shim's own log in %s does not tell the start:\n%s", dir2, b)
	}
	if st2.PID != st1.PID || st2.Restore == nil || st2.PipeKey == st1.PipeKey {
		t.Fatalf("restored: %+v, want pid %d, stats and a new pipe", st2, st1.PID)
	}
	if p := criu.ParentOf(st2.PID); p != c2.ShimPID() {
		t.Fatalf("the restored root's parent is %d, want the shim %d", p, c2.ShimPID())
	}
	// CRIU leaves it stopped by a SIGSTOP it queues as it detaches: the
	// state reads R until the task is next scheduled and takes it (it runs
	// no code of its own before that).
	waitStopped(t, st2.PID, "the restored root")
	if fd1, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/1", st2.PID)); fd1 != st2.PipeKey {
		t.Errorf("the restored stdout is %s, want the new pipe %s", fd1, st2.PipeKey)
	}
	for _, p := range criu.Tree(st2.PID) {
		unix.Kill(p, unix.SIGCONT)
	}
	waitCount(t, dir2, before+20)
	touch(t, stop)
	if code := wait(t, c2); code != 7 {
		t.Fatalf("Wait = %d, want 7", code)
	}
	log := readLog(t, dir2)
	if n := counts(t, log); !strings.HasSuffix(log, fmt.Sprintf("last %d\n", n)) {
		t.Fatalf("the log does not end with the last line:\n%s", tailOf(log, 5))
	}
}

// A failed restore comes back as the *criu.Error the shim got.
func TestRestoreFails(t *testing.T) {
	needCRIU(t)
	_, _, err := shim.Start(context.Background(), exe(t), shim.Spec{ID: "x", Dir: t.TempDir(),
		Restore: &shim.RestoreSpec{CRIU: testCRIU, ImagesDir: t.TempDir(), PipeKey: "pipe:[1]", Timeout: time.Minute}})
	ce, ok := errors.AsType[*criu.Error](err)
	if !ok {
		t.Fatalf("restore of an empty image set: %v (%T), want *criu.Error", err, err)
	}
	if ce.Op != "restore" || (ce.Msg == "" && len(ce.Log) == 0) {
		t.Fatalf("criu.Error %+v says nothing", ce)
	}
}

// nsPids returns the pids of pid's tree as their own pid namespace numbers
// them (the last NSpid field of each), in the order criu.Tree gives. A
// process that ended since the tree was listed (the counter's short-lived
// sleep) is left out.
func nsPids(t *testing.T, pid int) []string {
	t.Helper()
	var out []string
	for _, p := range criu.Tree(pid) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == "NSpid:" {
				out = append(out, f[len(f)-1])
			}
		}
	}
	return out
}

func needInit(t *testing.T) string {
	t.Helper()
	p, err := shim.FindInit()
	if err != nil {
		t.Skip(err)
	}
	return p
}

// With an init the workload lives in a pid namespace of its own: it is pid 2
// there under the init, and a restore needs none of the host's pids. The
// original is still there, stopped, holding every pid it had, when its copy
// is restored under a second shim: the copy gets other pids on the host and
// the same ones inside, and counts on.
func TestRestorePidNamespace(t *testing.T) {
	needCRIU(t)
	stop := filepath.Join(t.TempDir(), "stop")
	spec := counterSpec(t.TempDir(), stop)
	spec.Init = needInit(t)
	c1, st1 := startShim(t, spec)
	waitCount(t, spec.Dir, 20)
	inside := nsPids(t, st1.PID)
	if len(inside) < 2 || inside[0] != "1" || inside[1] != "2" {
		t.Fatalf("the tree's pids inside its namespace are %v, want the init 1 and the workload 2", inside)
	}

	images := dumpStopped(t, c1, st1)
	before := counts(t, readLog(t, spec.Dir))

	spec2 := shim.Spec{ID: "c", Dir: t.TempDir(), Restore: &shim.RestoreSpec{CRIU: testCRIU, ImagesDir: images,
		PipeKey: st1.PipeKey, Timeout: time.Minute, Dedup: true}}
	if allocated(t, images, "pages-*.img") == 0 {
		t.Fatal("the dump wrote no pages")
	}
	if err := os.WriteFile(filepath.Join(spec2.Dir, shim.LogFile), []byte(readLog(t, spec.Dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	c2, st2 := startShim(t, spec2)
	if st2.PID == st1.PID {
		t.Fatalf("restored as pid %d, the pid the stopped original still holds", st2.PID)
	}
	if p := criu.ParentOf(st2.PID); p != c2.ShimPID() {
		t.Fatalf("the restored init's parent is %d, want the shim %d", p, c2.ShimPID())
	}
	waitStopped(t, st2.PID, "the restored init")
	// Dedup: the pages left the images as they were restored.
	if n := allocated(t, images, "pages-*.img"); n != 0 {
		t.Errorf("the restored pages still take %d bytes in the images", n)
	}
	// (The counter's sleep comes and goes: the init and the shell stay.)
	if got := nsPids(t, st2.PID); len(got) < 2 || !slices.Equal(got[:2], inside[:2]) {
		t.Fatalf("inside its namespace the copy's pids are %v, want the original's %v", got, inside[:2])
	}
	killWorkload(st1.PID, c1.ShimPID())
	if code := wait(t, c1); code != 128+int(syscall.SIGKILL) {
		t.Fatalf("the killed original: Wait = %d, want 137", code)
	}
	for _, p := range criu.Tree(st2.PID) {
		unix.Kill(p, unix.SIGCONT)
	}
	waitCount(t, spec2.Dir, before+20)
	touch(t, stop)
	if code := wait(t, c2); code != 7 {
		t.Fatalf("Wait = %d, want 7 (the workload's status, through its init)", code)
	}
}

// allocated is the space the files matching glob in dir take (holes do not
// count).
func allocated(t *testing.T, dir, glob string) int64 {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, glob))
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, f := range files {
		var st unix.Stat_t
		if err := unix.Stat(f, &st); err != nil {
			t.Fatal(err)
		}
		n += st.Blocks * 512
	}
	return n
}

// A workload started with a Secret, straight or under its init, reads
// exactly those bytes from DSM_SECRET_FD, and closes the descriptor; the
// secret is in no process's environment or command line, and in no file
// of the shim's directory; a descriptor left to the init is an empty pipe
// (nothing of the secret for CRIU to dump).
func TestSecret(t *testing.T) {
	for _, withInit := range []bool{false, true} {
		t.Run(map[bool]string{false: "no init", true: "init"}[withInit], func(t *testing.T) {
			secret := make([]byte, mrt.SecretLen)
			rand.Read(secret)
			// Every form the secret could take on the way (the spec is
			// JSON: base64).
			forms := [][]byte{secret, []byte(hex.EncodeToString(secret)),
				[]byte(base64.StdEncoding.EncodeToString(secret)), []byte(base64.RawStdEncoding.EncodeToString(secret))}
			leaks := func(b []byte) bool {
				return slices.ContainsFunc(forms, func(f []byte) bool { return bytes.Contains(b, f) })
			}

			dir := t.TempDir()
			stop := filepath.Join(t.TempDir(), "stop")
			spec := shim.Spec{ID: "s", Dir: dir, Path: exe(t), Argv: []string{"rank", "secret-reader"},
				Env: []string{"PATH=/usr/bin:/bin", "STOP=" + stop, "GORACE=atexit_sleep_ms=0", mrt.EnvJob + "=j",
					mrt.EnvRank + "=0", mrt.EnvSize + "=1", mrt.EnvPeers + "=127.0.0.1:1"},
				WorkDir: "/", Secret: bytes.Clone(secret)}
			if withInit {
				spec.Init = needInit(t)
			}
			c, st := startShim(t, spec)

			want := fmt.Sprintf("fd=3 sha256=%x\n", sha256.Sum256(secret))
			deadline := time.Now().Add(20 * time.Second)
			for log := readLog(t, dir); log != want; log = readLog(t, dir) {
				if strings.Contains(log, "\n") || time.Now().After(deadline) {
					t.Fatalf("the workload says %q, want %q", log, want)
				}
				time.Sleep(10 * time.Millisecond)
			}

			tree := criu.Tree(st.PID)
			workload := tree[len(tree)-1] // the init's only child, or the root itself
			if withInit && (len(tree) != 2 || workload == st.PID) {
				t.Fatalf("the tree under the init is %v, want the init and the workload", tree)
			}
			for _, pid := range append(tree, c.ShimPID()) {
				for _, f := range []string{"environ", "cmdline"} {
					b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, f))
					if err != nil {
						t.Fatal(err)
					}
					if leaks(b) {
						t.Errorf("the secret is in /proc/%d/%s", pid, f)
					}
				}
			}
			// The workload read and closed it: no pipe is left to it but
			// its output (Go's runtime has descriptors of its own).
			fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", workload))
			if err != nil {
				t.Fatal(err)
			}
			for _, fd := range fds {
				target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", workload, fd.Name()))
				if strings.HasPrefix(target, "pipe:") && target != st.PipeKey {
					t.Errorf("the workload still has descriptor %s -> %s after reading the secret", fd.Name(), target)
				}
			}
			if withInit {
				// tini closes nothing it passes on: its descriptor 3 stays,
				// a pipe the workload has emptied.
				if f, err := os.OpenFile(fmt.Sprintf("/proc/%d/fd/3", st.PID), os.O_RDONLY|unix.O_NONBLOCK, 0); err == nil {
					n, err := unix.IoctlGetInt(int(f.Fd()), unix.TIOCINQ) // FIONREAD
					f.Close()
					if err != nil || n != 0 {
						t.Errorf("the init's copy of the secret's pipe holds %d bytes (%v), want 0", n, err)
					}
					t.Logf("the init keeps descriptor 3, the secret's pipe, empty")
				}
			}
			touch(t, stop)
			if code := wait(t, c); code != 0 {
				t.Fatalf("Wait = %d, want 0:\n%s", code, readLog(t, dir))
			}
			<-c.Exited()
			err = filepath.WalkDir(dir, func(path string, e os.DirEntry, err error) error {
				if err != nil || !e.Type().IsRegular() {
					return err
				}
				b, err := os.ReadFile(path)
				if err != nil {
					return err
				}
				if leaks(b) {
					t.Errorf("the secret is in %s", path)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A secret of the wrong length fails the start, and does not show in the
// error.
func TestSecretWrongLength(t *testing.T) {
	bad := []byte("0123456789abcdef0123456789abcdef0")
	_, _, err := shim.Start(context.Background(), exe(t), shim.Spec{ID: "x", Dir: t.TempDir(), Argv: []string{"true"},
		Env: []string{"PATH=/usr/bin:/bin"}, Secret: bad})
	if err == nil || !strings.Contains(err.Error(), "32 bytes") {
		t.Fatalf("Start with a %d-byte secret: %v", len(bad), err)
	}
	if strings.Contains(err.Error(), string(bad)) {
		t.Fatalf("the error shows the secret: %v", err)
	}
}

// A rank under its init that has read its secret is dumped and restored
// like any other process: the init's leftover descriptor is an empty pipe,
// which CRIU carries, and the images' pipe data hold nothing of the secret.
func TestSecretRestore(t *testing.T) {
	needCRIU(t)
	secret := make([]byte, mrt.SecretLen)
	rand.Read(secret)
	stop := filepath.Join(t.TempDir(), "stop")
	spec := shim.Spec{ID: "s", Dir: t.TempDir(), Path: exe(t), Argv: []string{"rank", "secret-reader"},
		Env: []string{"PATH=/usr/bin:/bin", "STOP=" + stop, "GORACE=atexit_sleep_ms=0", mrt.EnvJob + "=j",
			mrt.EnvRank + "=0", mrt.EnvSize + "=1", mrt.EnvPeers + "=127.0.0.1:1"},
		WorkDir: "/", Init: needInit(t), Secret: bytes.Clone(secret)}
	c1, st1 := startShim(t, spec)
	want := fmt.Sprintf("fd=3 sha256=%x\n", sha256.Sum256(secret))
	deadline := time.Now().Add(20 * time.Second)
	for log := readLog(t, spec.Dir); log != want; log = readLog(t, spec.Dir) {
		if strings.Contains(log, "\n") || time.Now().After(deadline) {
			t.Fatalf("the workload says %q, want %q", log, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	images := dumpStopped(t, c1, st1)
	pipes, _ := filepath.Glob(filepath.Join(images, "pipes-data*.img"))
	for _, p := range pipes {
		if b, _ := os.ReadFile(p); bytes.Contains(b, secret) {
			t.Errorf("the secret is in the dumped pipe data %s", p)
		}
	}
	c2, st2 := startShim(t, shim.Spec{ID: "s", Dir: t.TempDir(), Restore: &shim.RestoreSpec{CRIU: testCRIU,
		ImagesDir: images, PipeKey: st1.PipeKey, Timeout: time.Minute}})
	waitStopped(t, st2.PID, "the restored init")
	killWorkload(st1.PID, c1.ShimPID())
	wait(t, c1)
	for _, p := range criu.Tree(st2.PID) {
		unix.Kill(p, unix.SIGCONT)
	}
	touch(t, stop)
	if code := wait(t, c2); code != 0 {
		t.Fatalf("the restored rank: Wait = %d, want 0", code)
	}
}

// A workload with a Cred runs as that user (uid, gid and groups, real,
// effective and saved; no capabilities) under an init that stays root's,
// enters its directory as that user, and cannot enter one only root may.
func TestRunAsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	const nobody = 65534
	cred := &syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{nobody}}
	work := t.TempDir()
	for _, d := range []string{filepath.Dir(work), work} { // TempDir's parent is 0700
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	spec := shim.Spec{ID: "u", Dir: t.TempDir(), Argv: []string{"sh", "-c",
		`grep -E '^(Uid|Gid|Groups|CapEff|CapPrm):' /proc/self/status; pwd; echo done; exec sleep 300`},
		Env: []string{"PATH=/usr/bin:/bin"}, WorkDir: work, Init: needInit(t), Cred: cred}
	_, st := startShim(t, spec)
	log := waitLogLine(t, spec.Dir, "done")
	for _, want := range []string{"Uid:\t65534\t65534\t65534\t65534", "Gid:\t65534\t65534\t65534\t65534",
		"Groups:\t65534", "CapEff:\t0000000000000000", "CapPrm:\t0000000000000000", work} {
		if !strings.Contains(log, want) {
			t.Errorf("the workload says:\n%s\nwant a line with %q", log, want)
		}
	}
	if uid := statusField(t, st.PID, "Uid:"); uid != "0" {
		t.Errorf("the init runs as uid %s, want root's (0)", uid)
	}

	// A program with no arguments.
	spec3 := shim.Spec{ID: "u3", Dir: t.TempDir(), Argv: []string{"true"}, Env: []string{"PATH=/usr/bin:/bin"},
		WorkDir: work, Init: needInit(t), Cred: cred}
	c3, _ := startShim(t, spec3)
	if code := wait(t, c3); code != 0 {
		t.Errorf("a workload without arguments run as its owner: exit %d (%q), want 0", code, readLog(t, spec3.Dir))
	}

	// A directory only root may enter is refused, as the owner.
	private := t.TempDir()
	if err := os.Chmod(private, 0o700); err != nil {
		t.Fatal(err)
	}
	spec2 := shim.Spec{ID: "u2", Dir: t.TempDir(), Argv: []string{"sh", "-c", "echo entered"},
		Env: []string{"PATH=/usr/bin:/bin"}, WorkDir: private, Init: needInit(t), Cred: cred}
	c2, _ := startShim(t, spec2)
	if code := wait(t, c2); code != 127 {
		t.Errorf("a workload whose directory its owner cannot enter: exit %d, want 127", code)
	}
	if log := readLog(t, spec2.Dir); strings.Contains(log, "entered") || !strings.Contains(log, "cannot enter "+private) {
		t.Errorf("the log says %q, want the refusal to enter %s", log, private)
	}
}

// waitLogLine waits for a line in the log of the shim in dir (20 s) and
// returns the log.
func waitLogLine(t *testing.T, dir, line string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		log := readLog(t, dir)
		if slices.Contains(strings.Split(log, "\n"), line) {
			return log
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line %q in the log after 20 s:\n%s", line, log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// statusField is the first value of a field of /proc/PID/status.
func statusField(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == field {
			return f[1]
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return ""
}
