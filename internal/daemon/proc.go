package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"dsmigrate/criu"
	"dsmigrate/internal/api"
	"dsmigrate/internal/journal"
	"dsmigrate/internal/shim"
	"dsmigrate/internal/wire"
	mrt "dsmigrate/runtime"
)

// Proc is a process this daemon owns. Its shim (internal/shim) is its
// parent and reaper and holds its output; the daemon talks to the shim and
// keeps the process's record (ProcRec) so that a restarted daemon finds it.
type Proc struct {
	ID      string
	Name    string
	Argv    []string
	Started time.Time
	Moves   int
	Job     string // the DSM job this process is a rank of, if any
	Rank    int
	Owner   api.Owner // who it runs as, and who (besides root) may see and act on it
	logPath string    // STATE/procs/ID/log; its directory is the shim's

	mu      sync.Mutex
	pid     int
	state   string // starting, running, stopped, migrating, incoming, exited, lost, migrated
	exit    *int
	pipeKey string        // "pipe:[ino]" of the process's stdout/stderr, for --inherit-fd
	gone    chan struct{} // closed when the shim has reported the exit (the log is complete then)
	movedTo string        // the daemon it migrated to
	ownIP   string        // its own address (IP/PREFIX), which moves with it (Request.OwnIP)
	shim    *shim.Client  // nil for a placeholder (incoming) and for a process found dead at start
	shimPID int
	early   *shim.Pending // an incoming placeholder's shim, started ahead of its restore

	hooks   bool     // registered migration hooks (package runtime)
	pending *control // a command waiting for the process to fetch it

	saveMu  sync.Mutex   // serializes the writes of the record
	jdir    *journal.Dir // the record's directory, opened once (guarded by saveMu)
	dropped bool         // the record is deleted: saveProc writes no more (guarded by mu)
}

func (p *Proc) info() ProcInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	return ProcInfo{ID: p.ID, Name: p.Name, PID: workloadOf(p.pid), State: p.state, Command: p.Argv,
		Started: p.Started, Moves: p.Moves, ExitCode: p.exit, Job: p.Job, Rank: p.Rank, UID: p.Owner.UID}
}

// workloadOf is the pid users know a process by: the workload under the init
// at root (its only child; what ps, top and gdb show as the program), or root
// itself for a process without one (started by an older daemon). Inside
// its pid namespace the workload is pid 2 wherever it is.
func workloadOf(root int) int {
	if root <= 0 {
		return root
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", root))
	if name := strings.TrimSpace(string(comm)); err != nil || (name != "tini" && name != "tini-static") {
		return root
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", root, root))
	f := strings.Fields(string(b))
	if err != nil || len(f) != 1 {
		return root
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		return root
	}
	return pid
}

// shimExe is the binary a shim runs: this one, as it is running (even if
// its file was replaced since), under a comm ("exe") that `pkill -x migrated`
// does not match from the first instruction on; the shim renames itself
// "migrated-shim" at once.
const shimExe = "/proc/self/exe"

// launchRun starts the process a run request describes, as owner (who asked
// for it), with the job secret of a DSM rank. The secret goes to the shim in its spec (a pipe) and from
// there to the rank on a pipe of its own; it is never logged, and neither
// the process's record nor anything else on disk holds it.
func (d *Daemon) launchRun(id, name string, req Request, owner api.Owner) (*Proc, error) {
	if err := checkSecret(req); err != nil {
		return nil, err
	}
	// This copy is of no use once the shim has its own (best effort: the
	// request's frame was decrypted into a buffer that is garbage now).
	defer clear(req.Secret)
	return d.launchAs(id, name, owner, req.Argv, req.Env, req.Dir, req.Secret)
}

// checkSecret says why a run request's job secret is refused: a rank of a
// job needs one of runtime.SecretLen bytes (its peers would refuse it
// without), and a process that is no rank has no use for one. The error
// never shows the secret.
func checkSecret(req Request) error {
	switch {
	case req.Job == "" && req.Secret != nil:
		return errors.New("a run request with a job secret but no job: only the ranks of a DSM job get one " +
			"(start DSM programs with dsmrun run)")
	case req.Job != "" && len(req.Secret) != mrt.SecretLen:
		return fmt.Errorf("rank %d of job %s comes with a %d-byte job secret, want %d: start DSM jobs with "+
			"dsmrun run (dsmrun run makes one)", req.Rank, req.Job, len(req.Secret), mrt.SecretLen)
	}
	return nil
}

// launch starts argv as a migratable process under a shim of its own: its
// own session, stdin from /dev/null opened in this mount namespace, stdout and
// stderr into a pipe the shim drains into the log, and no other descriptors.
// The record says "starting" before the shim starts and "running" once it
// reported the process's pid.
func (d *Daemon) launch(id, name string, argv, env []string, dir string) (*Proc, error) {
	return d.launchAs(id, name, api.Owner{}, argv, env, dir, nil)
}

// launchAs is launch for owner, whose uid, gid and groups the process runs
// with (root's: as the daemon), and with a DSM rank's job secret (nil for
// none), which the process inherits on a pipe (runtime.PassSecret): the
// only descriptor it gets besides stdio.
func (d *Daemon) launchAs(id, name string, owner api.Owner, argv, env []string, dir string, secret []byte) (*Proc, error) {
	if len(argv) == 0 {
		return nil, errors.New("no command given: migrated run [--name NAME] -- CMD [ARG...]")
	}
	// In a pid namespace of its own, under tini: its pids then never
	// collide with those of a host it moves to (internal/shim/doc.go).
	initPath, err := shim.FindInit()
	if err != nil {
		return nil, err
	}
	p := newProc(id, name, argv, time.Now())
	p.Owner = owner
	if err := d.prepareProcDir(p); err != nil {
		return nil, err
	}
	p.state = "starting"
	if err := d.saveProc(p); err != nil {
		os.RemoveAll(filepath.Dir(p.logPath))
		return nil, err
	}
	env = append(slices.Clip(env), mrt.EnvID+"="+id, mrt.EnvControl+"="+d.ctlPath)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The shim looks argv[0] up (in PATH, then in dir) and says "cannot
	// run" if it finds nothing.
	c, st, err := shim.Start(ctx, shimExe, shim.Spec{ID: id, Dir: filepath.Dir(p.logPath), Argv: argv, Env: env,
		WorkDir: dir, Init: initPath, Secret: secret, Cred: credOf(owner)})
	if err != nil {
		os.RemoveAll(filepath.Dir(p.logPath))
		return nil, err // the shim's "cannot start ...", or why the shim did not run
	}
	p.mu.Lock()
	p.pid, p.shimPID, p.pipeKey, p.shim, p.state = st.PID, st.ShimPID, st.PipeKey, c, "running"
	p.mu.Unlock()
	if err := d.saveProc(p); err != nil {
		d.log.Error("writing the record of a started process", "id", id, "err", err)
	}
	go d.watch(p)
	return p, nil
}

// credOf is the credential a process of owner's runs with: nil (the shim's,
// root's) for root.
func credOf(o api.Owner) *syscall.Credential {
	if o.IsRoot() {
		return nil
	}
	return &syscall.Credential{Uid: o.UID, Gid: o.GID, Groups: slices.Clone(o.Groups)}
}

func (d *Daemon) prepareProcDir(p *Proc) error {
	dir := d.procDir(p.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	p.logPath = filepath.Join(dir, shim.LogFile)
	return nil
}

// procDir is the directory of process id: its log, record and shim.
func (d *Daemon) procDir(id string) string { return filepath.Join(d.stateDir, "procs", id) }

// flushLog returns once the log holds everything the process wrote so far
// (its tree stopped, as before a dump): its shim's pipe is empty and no chunk
// is half-written. A process whose exit the shim reported has nothing in
// flight: the shim drained the pipe before it reported.
func (p *Proc) flushLog() error {
	p.mu.Lock()
	c := p.shim
	p.mu.Unlock()
	if c == nil {
		return nil
	}
	select {
	case <-p.gone:
		return nil
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Flush(ctx)
}

// watch waits for the process's exit as its shim reports it, and records it.
// A shim gone without a word leaves its exit.json, or the process is lost.
// The end of a process that left this host (migrated) is no exit: its record
// is deleted if it is still this copy's.
func (d *Daemon) watch(p *Proc) {
	p.mu.Lock()
	c := p.shim
	p.mu.Unlock()
	lost := false
	var code int
	for {
		var err error
		if code, err = c.Wait(context.Background()); err == nil {
			break
		}
		if errors.Is(err, shim.ErrGone) {
			code, lost = -1, true
			d.log.Error("the shim of a process died without reporting its exit: the process is lost", "id", p.ID,
				"shim", c.ShimPID(), "err", err)
			break
		}
		d.log.Warn("waiting for a process's shim", "id", p.ID, "err", err)
		time.Sleep(time.Second)
	}
	p.mu.Lock()
	p.exit = &code
	migrated := p.state == "migrated"
	if !migrated {
		p.state = "exited"
		if lost {
			p.state = "lost"
		}
	}
	pid := p.pid
	p.mu.Unlock()
	var err error
	if migrated {
		err = d.dropProc(p, true)
	} else {
		err = d.saveProc(p)
	}
	if err != nil {
		d.log.Error("writing the record of an ended process", "id", p.ID, "err", err)
	}
	close(p.gone)
	d.log.Info("process ended", "id", p.ID, "pid", pid, "code", code, "migrated", migrated)
}

// signalTree sends sig to the process tree rooted at pid (none for pid <= 0:
// kill(0) would signal the daemon's own process group).
func signalTree(pid int, sig syscall.Signal) {
	if pid <= 0 {
		return
	}
	for _, t := range criu.Tree(pid) {
		syscall.Kill(t, sig)
	}
}

// killTree kills a (stopped) tree and waits until its shim reports the root
// gone (at most 10 s). A process that has ended already is left alone: its
// pid may be another process's by now.
func killTree(p *Proc) {
	select {
	case <-p.gone:
		return
	default:
	}
	p.mu.Lock()
	pid, c := p.pid, p.shim
	p.mu.Unlock()
	signalTree(pid, syscall.SIGKILL)
	if c == nil {
		return // no shim, no report to wait for
	}
	select {
	case <-p.gone:
	case <-time.After(10 * time.Second):
	}
}

func newProc(id, name string, argv []string, started time.Time) *Proc {
	return &Proc{ID: id, Name: name, Argv: argv, Started: started, gone: make(chan struct{})}
}

// follow streams the log from off as it grows, until the process has exited
// or left this host, and says which.
func (d *Daemon) follow(c *wire.Conn, p *Proc, off int64) (*Reply, error) {
	w := &msgWriter{c: c, typ: tLogData}
	for {
		p.mu.Lock()
		st, exit, moved := p.state, p.exit, p.movedTo
		p.mu.Unlock()
		done := st == "exited" || st == "lost" || (st == "migrated" && moved != "")
		if st == "incoming" || (st == "migrated" && moved == "") {
			// Still arriving (the source commits a moment before this
			// daemon registers the restored copy), or restored here again
			// after a failed move: follow the copy registered under the ID.
			d.mu.Lock()
			np := d.procs[p.ID]
			d.mu.Unlock()
			if np == nil {
				return nil, fmt.Errorf("process %s is no longer on this host", p.ID)
			}
			if np != p {
				p = np
				continue
			}
			time.Sleep(20 * time.Millisecond)
			continue
		}
		// "exited" is set once the shim has reported the exit, which it
		// does after draining the output: the log is complete.
		n, err := p.copyLog(w, off)
		if err != nil {
			return nil, err
		}
		off += n
		if done {
			r := &Reply{ID: p.ID, State: st, MovedTo: moved}
			if exit != nil {
				r.ExitCode = *exit
			}
			return r, nil
		}
		select {
		case <-p.gone:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// copyLog copies the log from off to w.
func (p *Proc) copyLog(w io.Writer, off int64) (int64, error) {
	f, err := os.Open(p.logPath)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return 0, err
	}
	return io.Copy(w, f)
}

// forgetLater removes the directory of a process this host no longer has,
// after a while: followers may be reading its log still. If the process has
// come back in the meantime (a round trip), the directory is its again.
func (d *Daemon) forgetLater(p *Proc) {
	time.AfterFunc(time.Minute, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if _, back := d.procs[p.ID]; !back {
			os.RemoveAll(filepath.Dir(p.logPath))
		}
	})
}
