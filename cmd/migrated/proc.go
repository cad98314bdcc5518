package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"dsmigrate/criu"
	"dsmigrate/internal/wire"
	mrt "dsmigrate/runtime"
)

// Proc is a process this daemon owns.
type Proc struct {
	ID      string
	Name    string
	Argv    []string
	Started time.Time
	Moves   int
	Job     string // the DSM job this process is a rank of, if any
	Rank    int
	logPath string

	mu      sync.Mutex
	pid     int
	state   string // running, migrating, exited, migrated
	exit    *int
	pipeKey string        // "pipe:[ino]" of the process's stdout/stderr, for --inherit-fd
	gone    chan struct{} // closed when the process is reaped
	movedTo string        // the daemon it migrated to

	captured chan struct{} // closed when its output pipe has no writer left

	hooks   bool     // registered migration hooks (package runtime)
	pending *control // a command waiting for the process to fetch it

	logMu sync.Mutex // held while a chunk of output is appended to the log
	out   *os.File   // read end of the output pipe
}

func (p *Proc) info() ProcInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	return ProcInfo{ID: p.ID, Name: p.Name, PID: p.pid, State: p.state, Command: p.Argv,
		Started: p.Started, Moves: p.Moves, ExitCode: p.exit, Job: p.Job, Rank: p.Rank}
}

// outputPipe makes the pipe a process writes its stdout and stderr to, and
// returns its key as CRIU names it.
func outputPipe() (r, w *os.File, key string, err error) {
	r, w, err = os.Pipe()
	if err != nil {
		return nil, nil, "", err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(w.Fd()), &st); err != nil {
		r.Close()
		w.Close()
		return nil, nil, "", err
	}
	return r, w, fmt.Sprintf("pipe:[%d]", st.Ino), nil
}

// launch starts argv as a migratable process: its own session, stdin from
// /dev/null opened in this mount namespace, stdout and stderr into a pipe the
// daemon drains into the log, and no other descriptors.
func (d *Daemon) launch(id, name string, argv, env []string, dir string) (*Proc, error) {
	if len(argv) == 0 {
		return nil, errors.New("no command given: migrated run [--name NAME] -- CMD [ARG...]")
	}
	path, err := exec.LookPath(argv[0])
	if err != nil && !filepath.IsAbs(argv[0]) && dir != "" {
		path, err = exec.LookPath(filepath.Join(dir, argv[0]))
	}
	if err != nil {
		return nil, fmt.Errorf("cannot run %q: %v", argv[0], err)
	}
	p := newProc(id, name, argv, time.Now())
	if err := d.prepareProcDir(p); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	r, w, key, err := outputPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		logf.Close()
		r.Close()
		w.Close()
		return nil, err
	}
	cmd := exec.Command(path, argv[1:]...)
	cmd.Args = argv
	cmd.Env = append(env, mrt.EnvID+"="+id, mrt.EnvControl+"="+d.ctlPath)
	cmd.Dir = dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	devnull.Close()
	w.Close()
	if err != nil {
		logf.Close()
		r.Close()
		return nil, fmt.Errorf("cannot start %q: %v", argv[0], err)
	}
	p.pid, p.state, p.pipeKey, p.out = cmd.Process.Pid, "running", key, r
	go p.capture(r, logf)
	go d.reap(p, cmd.Process)
	return p, nil
}

func (d *Daemon) prepareProcDir(p *Proc) error {
	dir := filepath.Join(d.stateDir, "procs", p.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	p.logPath = filepath.Join(dir, "log")
	return nil
}

// capture appends the process's output to its log until every writer is gone.
func (p *Proc) capture(r, logf *os.File) {
	defer close(p.captured)
	defer logf.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			p.logMu.Lock()
			logf.Write(buf[:n])
			p.logMu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// flushLog waits until the output pipe is empty and no chunk is being
// written, so the log file holds everything a stopped process wrote.
func (p *Proc) flushLog() {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		var n int
		rc, err := p.out.SyscallConn()
		if err != nil {
			break
		}
		rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.TIOCINQ) })
		if n == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	p.logMu.Lock()
	p.logMu.Unlock() //nolint:staticcheck // a barrier: the chunk in progress is written
}

// reap waits for the process (a child of this daemon, launched or restored)
// and records how it ended.
func (d *Daemon) reap(p *Proc, proc *os.Process) {
	st, err := proc.Wait()
	code := -1
	if err == nil {
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		} else {
			code = st.ExitCode()
		}
	}
	p.mu.Lock()
	p.exit = &code
	if p.state != "migrated" {
		p.state = "exited"
	}
	close(p.gone)
	p.mu.Unlock()
	d.log.Info("process ended", "id", p.ID, "pid", p.pid, "code", code)
}

// signalTree sends sig to the process tree rooted at pid.
func signalTree(pid int, sig syscall.Signal) {
	for _, t := range criu.Tree(pid) {
		syscall.Kill(t, sig)
	}
}

// killTree kills a (stopped) tree and waits until its root is reaped.
func killTree(p *Proc) {
	p.mu.Lock()
	pid := p.pid
	p.mu.Unlock()
	signalTree(pid, syscall.SIGKILL)
	select {
	case <-p.gone:
	case <-time.After(10 * time.Second):
	}
}

func newProc(id, name string, argv []string, started time.Time) *Proc {
	return &Proc{ID: id, Name: name, Argv: argv, Started: started, gone: make(chan struct{}), captured: make(chan struct{})}
}

// follow streams the log from off as it grows, until the process has exited
// or left this host, and says which.
func (d *Daemon) follow(c *wire.Conn, p *Proc, off int64) (*Reply, error) {
	w := &msgWriter{c: c, typ: tLogData}
	for {
		p.mu.Lock()
		st, exit, moved := p.state, p.exit, p.movedTo
		p.mu.Unlock()
		done := st == "exited" || (st == "migrated" && moved != "")
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
		if st == "exited" {
			select {
			case <-p.captured:
			case <-time.After(2 * time.Second):
			}
		}
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
