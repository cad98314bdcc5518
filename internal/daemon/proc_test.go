package daemon

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"dsmigrate/criu"
	"dsmigrate/internal/api"
	"dsmigrate/internal/journal"
	"dsmigrate/internal/shim"
	"dsmigrate/internal/shim/shimtest"
	"dsmigrate/netmove"
)

const testCRIU = "/usr/local/sbin/migrate-criu"

// The test binary is also the shim (launch runs /proc/self/exe shim), and
// the run fails if a test leaves a process behind.
func TestMain(m *testing.M) { shimtest.Main(m, map[string]func() int{"dial": dialCommand}) }

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (the daemon's process table lives in a root-only state directory)")
	}
}

func testDaemon(t *testing.T, stateDir string) *Daemon {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(stateDir, "procs"), 0o700); err != nil {
		t.Fatal(err)
	}
	return &Daemon{stateDir: stateDir, imagesDir: filepath.Join(stateDir, "images"), procs: map[string]*Proc{},
		launching: map[string]chan struct{}{}, naming: map[string]nameOf{},
		criu: criu.New(testCRIU), log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
}

// counterArgv counts until the file stop exists, then says "last N" and exits 7.
func counterArgv() []string {
	return []string{"sh", "-c", `i=0; while [ ! -e "$STOP" ]; do i=$((i+1)); echo "count $i"; sleep 0.01; done; ` +
		`echo "last $i"; exit 7`}
}

// cleanupProc kills p's tree when the test ends and waits for its shim.
func cleanupProc(t *testing.T, p *Proc) {
	t.Cleanup(func() {
		p.mu.Lock()
		pid, c := p.pid, p.shim
		p.mu.Unlock()
		if c == nil {
			return
		}
		if criu.ParentOf(pid) == c.ShimPID() {
			signalTree(pid, syscall.SIGKILL)
		}
		if ch := c.Exited(); ch != nil {
			select {
			case <-ch:
			case <-time.After(10 * time.Second):
				t.Errorf("shim %d did not end", c.ShimPID())
				syscall.Kill(c.ShimPID(), syscall.SIGKILL)
			}
		}
	})
}

func readRec(t *testing.T, d *Daemon, id string) (ProcRec, bool) {
	t.Helper()
	j, err := journal.Open(d.procDir(id))
	if err != nil {
		t.Fatal(err)
	}
	var rec ProcRec
	ok, err := j.Get(procRecord, &rec)
	if err != nil {
		t.Fatal(err)
	}
	return rec, ok
}

func logOf(t *testing.T, p *Proc) string {
	t.Helper()
	var b bytes.Buffer
	if _, err := p.copyLog(&b, 0); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func countIn(log string) int {
	n := 0
	for _, l := range strings.Split(log, "\n") {
		var v int
		if _, err := fmt.Sscanf(l, "count %d", &v); err == nil {
			if v != n+1 {
				return -1 // a gap or a repeat
			}
			n = v
		}
	}
	return n
}

// A process outlives its daemon: a second daemon on the same state directory
// finds it through its record and its shim, with its output written
// meanwhile; it sees it exit, and a third daemon finds the exit recorded.
func TestReattach(t *testing.T) {
	needRoot(t)
	state := t.TempDir()
	stop := filepath.Join(t.TempDir(), "stop")
	d1 := testDaemon(t, state)
	id := newID()
	p1, err := d1.launch(id, "counter", counterArgv(), []string{"PATH=/usr/bin:/bin", "STOP=" + stop}, "/")
	if err != nil {
		t.Fatal(err)
	}
	cleanupProc(t, p1)
	d1.register(p1)
	rec, ok := readRec(t, d1, id)
	if !ok || rec.State != "running" || rec.PID != p1.pid || rec.ShimPID == 0 || rec.ShimPID == p1.pid ||
		!strings.HasPrefix(rec.PipeKey, "pipe:[") {
		t.Fatalf("record after launch: %+v", rec)
	}
	waitFor(t, "output", func() bool { return countIn(logOf(t, p1)) >= 10 })

	d2 := testDaemon(t, state)
	if err := d2.reattach(); err != nil {
		t.Fatal(err)
	}
	p2 := d2.lookup(id)
	if p2 == nil {
		t.Fatal("the restarted daemon does not know the process")
	}
	if i := p2.info(); i.State != "running" || i.PID != p1.info().PID || i.Name != "counter" {
		t.Fatalf("after reattach: %+v", i)
	}
	n := countIn(logOf(t, p2))
	waitFor(t, "more output", func() bool { return countIn(logOf(t, p2)) >= n+20 })
	if err := p2.flushLog(); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(stop, nil, 0o600)
	select {
	case <-p2.gone:
	case <-time.After(20 * time.Second):
		t.Fatal("the restarted daemon did not see the exit")
	}
	if i := p2.info(); i.State != "exited" || i.ExitCode == nil || *i.ExitCode != 7 {
		t.Fatalf("after the exit: %+v", i)
	}
	log := logOf(t, p2)
	if c := countIn(log); c < 0 || !strings.HasSuffix(log, fmt.Sprintf("last %d\n", c)) {
		t.Fatalf("the log is not whole:\n%s", log[max(0, len(log)-200):])
	}
	// The first daemon, alive still in this test, sees the exit too.
	select {
	case <-p1.gone:
	case <-time.After(20 * time.Second):
		t.Fatal("the first daemon's watcher did not end")
	}
	waitFor(t, "the record of the exit", func() bool {
		rec, _ := readRec(t, d2, id)
		return rec.State == "exited" && rec.Exit != nil && *rec.Exit == 7
	})

	d3 := testDaemon(t, state)
	if err := d3.reattach(); err != nil {
		t.Fatal(err)
	}
	p3 := d3.lookup(id)
	if p3 == nil {
		t.Fatal("the third daemon does not know the exited process")
	}
	if i := p3.info(); i.State != "exited" || i.ExitCode == nil || *i.ExitCode != 7 {
		t.Fatalf("exited process after a restart: %+v", i)
	}
	if _, err := d3.do(nil, Request{Op: "kill", ID: id}, api.Owner{}); err != nil {
		t.Fatal(err)
	}
	if _, ok := readRec(t, d3, id); ok {
		t.Fatal("kill left the record")
	}
}

// What reattach does with records whose shim is gone.
func TestReattachWithoutShims(t *testing.T) {
	needRoot(t)
	state := t.TempDir()
	d := testDaemon(t, state)
	mk := func(state string, exit int) string {
		id := newID()
		p := newProc(id, "x", []string{"x"}, time.Now())
		if err := d.prepareProcDir(p); err != nil {
			t.Fatal(err)
		}
		p.state, p.pid, p.shimPID = state, 999999, 999998
		if err := d.saveProc(p); err != nil {
			t.Fatal(err)
		}
		if exit >= 0 {
			journal.WriteFile(filepath.Join(d.procDir(id), shim.ExitFile), fmt.Appendf(nil, `{"code":%d}`, exit), 0o600)
		}
		return id
	}
	starting, exited, lost, incoming, migrated := mk("starting", -1), mk("running", 3), mk("running", -1),
		mk("incoming", -1), mk("migrated", 0)
	// A process that left (its record dropped, the directory left for
	// followers) while no timer outlived the daemon.
	left := newID()
	os.MkdirAll(d.procDir(left), 0o700)
	os.WriteFile(filepath.Join(d.procDir(left), shim.LogFile), []byte("bye\n"), 0o600)
	if err := d.reattach(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{starting, migrated, left} {
		if _, err := os.Stat(d.procDir(id)); !os.IsNotExist(err) {
			t.Errorf("the directory of a process that is not here is still there (%v)", err)
		}
	}
	if p := d.lookup(exited); p == nil || p.info().State != "exited" || *p.info().ExitCode != 3 {
		t.Errorf("a process whose shim recorded exit 3: %+v", p)
	}
	if p := d.lookup(lost); p == nil || p.info().State != "lost" || *p.info().ExitCode != -1 {
		t.Errorf("a process with no shim and no exit record: %+v", p)
	}
	if rec, ok := readRec(t, d, lost); !ok || rec.State != "lost" {
		t.Errorf("record of the lost process: %+v", rec)
	}
	if d.lookup(incoming) != nil {
		t.Error("an incoming record was registered")
	}
	if rec, ok := readRec(t, d, incoming); !ok || rec.State != "incoming" {
		t.Errorf("the incoming record was touched: %+v %v", rec, ok)
	}
	if d.adopt(incoming) != nil {
		t.Error("adopt found a shim that is not there")
	}
}

// restoreCopy in the directory of a copy that has just ended (a process back
// where it lived a moment ago): the stopped tree is killed and restored from
// its images under a new shim in the same directory; it goes on counting into
// the same log, and the old copy's end deletes no record of the new one.
func TestRestoreProcSameDir(t *testing.T) {
	needRoot(t)
	if _, err := os.Stat(testCRIU); err != nil {
		t.Skip("CRIU not installed at " + testCRIU)
	}
	state := t.TempDir()
	stop := filepath.Join(t.TempDir(), "stop")
	d := testDaemon(t, state)
	id := newID()
	p, err := d.launch(id, "counter", counterArgv(), []string{"PATH=/usr/bin:/bin", "STOP=" + stop}, "/")
	if err != nil {
		t.Fatal(err)
	}
	cleanupProc(t, p)
	d.register(p)
	waitFor(t, "output", func() bool { return countIn(logOf(t, p)) >= 20 })
	p.mu.Lock()
	p.state = "migrating"
	p.mu.Unlock()
	d.saveProc(p)

	images := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := d.criu.Dump(ctx, criu.DumpOpts{Pid: p.pid, ImagesDir: images, LeaveStopped: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if table, err := netmove.LockName(images); err == nil {
			netmove.DeleteLock(table)
		}
	})
	if err := p.flushLog(); err != nil {
		t.Fatal(err)
	}
	before := countIn(logOf(t, p))
	p.mu.Lock()
	p.state = "migrated"
	p.mu.Unlock()
	killTree(p)
	select {
	case <-p.shim.Exited(): // the tree is reaped: its pids are free
	case <-time.After(10 * time.Second):
		t.Fatal("the old shim did not end")
	}
	if _, ok := readRec(t, d, id); ok {
		t.Fatal("the killed copy's record is still there")
	}
	np, err := d.restoreCopy(context.Background(), p, p.pipeKey, images, false, "stopped", nil)
	if err != nil {
		t.Fatal(err)
	}
	cleanupProc(t, np)
	// (Its init's pid is this host's choice: the namespace keeps the pids
	// inside.)
	if np.info().State != "stopped" || np.pipeKey == p.pipeKey || criu.ParentOf(np.pid) != np.shimPID {
		t.Fatalf("restored: pid %d (was %d), state %s, key %s (was %s), parent %d (shim %d)", np.pid, p.pid,
			np.info().State, np.pipeKey, p.pipeKey, criu.ParentOf(np.pid), np.shimPID)
	}
	np.mu.Lock()
	np.state = "running"
	np.mu.Unlock()
	if err := d.saveProc(np); err != nil {
		t.Fatal(err)
	}
	d.register(np)
	signalTree(np.pid, syscall.SIGCONT)
	waitFor(t, "output after the restore", func() bool { return countIn(logOf(t, np)) >= before+20 })
	os.WriteFile(stop, nil, 0o600)
	select {
	case <-np.gone:
	case <-time.After(20 * time.Second):
		t.Fatal("no exit")
	}
	log := logOf(t, np)
	if c := countIn(log); c < 0 || !strings.HasSuffix(log, fmt.Sprintf("last %d\n", c)) {
		t.Fatalf("the log is not whole (count %d):\n%s", c, log[max(0, len(log)-300):])
	}
	if rec, ok := readRec(t, d, id); !ok || rec.State != "exited" || rec.ShimPID != np.shimPID {
		t.Fatalf("record after the restored copy's exit: %+v %v", rec, ok)
	}
}

// A restart that finishes a commit finds the source copy gone with its shim
// and knows it only by its record, which says migrating: Gone deletes it, so
// that no later start finds a process that is not here.
func TestGoneRecordOnly(t *testing.T) {
	d := testDaemon(t, t.TempDir())
	p := newProc("0123456789ab", "x", []string{"x"}, time.Now())
	if err := d.prepareProcDir(p); err != nil {
		t.Fatal(err)
	}
	p.state = "migrating"
	if err := d.saveProc(p); err != nil {
		t.Fatal(err)
	}
	if err := (engineProcs{d}).Gone(context.Background(), p.ID, "10.0.0.2:7077"); err != nil {
		t.Fatal(err)
	}
	if rec, ok := readRec(t, d, p.ID); ok {
		t.Fatalf("the record of a process that is gone is still there: %+v", rec)
	}
}
