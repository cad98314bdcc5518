package shim

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"dsmigrate/criu"
	"dsmigrate/internal/journal"
	mrt "dsmigrate/runtime"
)

// Bounds of the end of a workload.
const (
	drainMax   = 2 * time.Second        // at most this long for the pipe to empty after the root exits
	drainQuiet = 100 * time.Millisecond // the pipe counts as drained once empty this long
	flushMax   = 5 * time.Second        // a flush gives up on a pipe that never empties
	reapMax    = time.Second            // how long an ending shim reaps what is left of the tree
)

// Main is the shim process (`migrated shim`): it reads the Spec from stdin,
// starts the workload, reports on stdout, then serves until the workload and
// every writer of its output are gone. It returns nil then, an error if the
// workload could not start (reported on stdout too).
func Main() error {
	setName()
	// Descriptors inherited from whoever started us must not reach the
	// workload (CRIU cannot dump one from another mount namespace).
	unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix(fmt.Sprintf("shim[%d] ", os.Getpid()))
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return reportErr(fmt.Errorf("shim: becoming a subreaper: %w", err))
	}
	// A daemon restart must not end the shim, nor a reader that went away.
	// Caught rather than ignored: an ignored signal would stay ignored in the
	// workload, a caught one is reset to the default by exec.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGPIPE, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		for s := range sigs {
			if s != syscall.SIGPIPE {
				log.Printf("ignoring %v", s)
			}
		}
	}()

	// A prestarted shim (Prestart) starts its CRIU while it waits for
	// the spec.
	var pre *early
	if path := criuArg(os.Args); path != "" {
		var err error
		if pre, err = prepare(path); err != nil {
			log.Printf("starting CRIU ahead: %v (it starts with the restore)", err)
		}
	}
	spec, hold, err := readSpec(os.Stdin)
	if err != nil {
		pre.close()
		if errors.Is(err, io.EOF) {
			err = errors.New("shim: no spec came (the daemon gave up on this shim, or died)")
		}
		return reportErr(fmt.Errorf("shim: reading the spec: %w", err))
	}
	// The held file stays open, untouched, as long as this shim lives
	// (RestoreSpec.Hold): it is a bare descriptor, with no finalizer.
	_ = hold
	log.SetPrefix(fmt.Sprintf("shim[%d] %s ", os.Getpid(), spec.ID))
	s, started, err := start(spec, pre)
	if err != nil {
		log.Print(err)
		return reportErr(err)
	}
	log.Printf("started pid %d (%s)", started.PID, started.PipeKey)
	if err := json.NewEncoder(os.Stdout).Encode(report{Started: started}); err != nil {
		// The daemon died meanwhile: the workload runs anyway, and the
		// daemon's record finds this shim when it is back.
		log.Printf("reporting the start: %v", err)
	}
	// stdin and stdout become /dev/null: nothing reads or writes them now.
	if null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0); err == nil {
		unix.Dup3(int(null.Fd()), 0, 0)
		unix.Dup3(int(null.Fd()), 1, 0)
		null.Close()
	}
	s.serve()
	log.Printf("done")
	return nil
}

// reportErr reports a failed start on stdout and returns err.
func reportErr(err error) error {
	r := report{Err: err.Error()}
	if ce, ok := errors.AsType[*criu.Error](err); ok {
		r.CRIU = ce
	}
	json.NewEncoder(os.Stdout).Encode(r)
	return err
}

// server is one running shim.
type server struct {
	spec    Spec
	sock    string
	sockIno uint64
	ln      *net.UnixListener
	logf    *os.File
	r       *os.File // the pipe's read end
	rc      syscall.RawConn

	// mu is held while a chunk is read from the pipe and written to the
	// log: with it held, an empty pipe means the log has everything.
	mu       sync.Mutex
	lastData atomic.Int64  // unix nanoseconds of the last chunk
	eof      chan struct{} // closed when the pipe has no writer left

	pid      int
	pipeKey  string
	stMu     sync.Mutex
	exited   bool
	code     int
	done     chan struct{} // closed when exit.json is written
	reaped   chan struct{} // closed when no child is left
	handlers sync.WaitGroup
}

// start sets up the log, the pipe (pre's, if prestarted) and the socket, and
// starts or restores the workload.
func start(spec Spec, pre *early) (_ *server, _ *Started, retErr error) {
	if err := spec.check(); err != nil {
		pre.close()
		return nil, nil, err
	}
	s := &server{spec: spec, eof: make(chan struct{}), done: make(chan struct{}), reaped: make(chan struct{})}
	// The shim's copy of the job secret is of no use once the workload has
	// its own (or has failed to start), and a shim lives as long as its
	// workload: forget it. Best effort: the spec's JSON, read from stdin,
	// is in a buffer that is garbage now but not zeroed.
	defer func() {
		clear(s.spec.Secret)
		s.spec.Secret = nil
	}()
	var err error
	if s.sock, err = sockPath(spec.Dir); err != nil {
		pre.close()
		return nil, nil, err
	}
	var undo []func()
	if pre != nil {
		// What was made ahead goes on any failure (a CRIU that did
		// restore is gone already; the pipe's ends close twice harmlessly).
		undo = append(undo, pre.close)
	}
	defer func() {
		if retErr != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	// An exit record left by an earlier stay of this process here is not
	// this workload's.
	if err := os.Remove(filepath.Join(spec.Dir, ExitFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		pre.close()
		return nil, nil, fmt.Errorf("shim: %w", err)
	}
	if s.logf, err = os.OpenFile(filepath.Join(spec.Dir, LogFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
		return nil, nil, fmt.Errorf("shim: opening the log: %w", err)
	}
	undo = append(undo, func() { s.logf.Close() })
	var r, w *os.File
	var worker *criu.Worker
	if pre != nil {
		r, w, worker = pre.r, pre.w, pre.forRestore(spec.Restore)
	} else if r, w, err = os.Pipe(); err != nil {
		return nil, nil, fmt.Errorf("shim: %w", err)
	}
	s.r = r
	undo = append(undo, func() { r.Close() })
	defer w.Close() // the workload has its copy; the shim must not be a writer
	if s.rc, err = r.SyscallConn(); err != nil {
		return nil, nil, fmt.Errorf("shim: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(w.Fd()), &st); err != nil { // Fd makes w blocking, as the workload wants it
		return nil, nil, fmt.Errorf("shim: %w", err)
	}
	key := fmt.Sprintf("pipe:[%d]", st.Ino)

	// The socket before the workload: a path that cannot be bound fails the
	// start, not the serving.
	os.Remove(s.sock)
	old := unix.Umask(0o077)
	s.ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: s.sock, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, nil, fmt.Errorf("shim: listening on %s: %w", s.sock, err)
	}
	// Close must not unlink the path: a shim restored here after this one
	// may own it by then (removeSock checks).
	s.ln.SetUnlinkOnClose(false)
	var sst unix.Stat_t
	if err := unix.Stat(s.sock, &sst); err != nil {
		s.ln.Close()
		return nil, nil, fmt.Errorf("shim: %w", err)
	}
	s.sockIno = sst.Ino
	undo = append(undo, func() { s.ln.Close(); s.removeSock() })
	os.Chmod(s.sock, 0o600)

	go s.copy()
	undo = append(undo, func() {
		w.Close()
		select { // a failed restore's leftovers may hold a copy a moment
		case <-s.eof:
		case <-time.After(drainMax):
		}
	})

	started := &Started{ShimPID: os.Getpid(), PipeKey: key}
	if spec.Restore == nil {
		started.PID, err = s.run(w)
	} else {
		started.PID, started.Restore, err = s.restore(w, worker)
	}
	if err != nil {
		return nil, nil, err
	}
	s.pid, s.pipeKey = started.PID, key
	go s.reap()
	return s, started, nil
}

// run starts the workload: its own session, stdin /dev/null opened here (in
// the host's mount namespace), stdout and stderr the pipe, no other
// descriptor but the job secret's pipe if there is a secret, exactly
// spec.Env (plus DSM_SECRET_FD then).
func (s *server) run(w *os.File) (int, error) {
	spec := s.spec
	path := spec.Path
	if path == "" {
		var err error
		path, err = exec.LookPath(spec.Argv[0])
		if err != nil && !filepath.IsAbs(spec.Argv[0]) && spec.WorkDir != "" {
			path, err = exec.LookPath(filepath.Join(spec.WorkDir, spec.Argv[0]))
		}
		if err != nil {
			return 0, fmt.Errorf("cannot run %q: %v", spec.Argv[0], err)
		}
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, fmt.Errorf("shim: %w", err)
	}
	defer devnull.Close()
	env := spec.Env
	if env == nil {
		env = []string{} // nil would mean the shim's own environment
	}
	cmd := &exec.Cmd{Path: path, Args: spec.Argv, Env: env, Dir: spec.WorkDir,
		Stdin: devnull, Stdout: w, Stderr: w, SysProcAttr: &syscall.SysProcAttr{Setsid: true}}
	if spec.Init != "" {
		// The init leads the session inside the namespace: CRIU refuses a
		// namespace whose session leader is outside it.
		cmd.Path = spec.Init
		cmd.Args = append([]string{spec.Init, "--", path}, spec.Argv[1:]...)
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID
	}
	switch {
	case spec.Cred != nil && spec.Init != "":
		// The init stays root's; the workload becomes the owner's before
		// it enters its directory (asuser.go).
		self, err := os.Executable()
		if err != nil {
			return 0, fmt.Errorf("shim: %w", err)
		}
		cmd.Args = append([]string{spec.Init, "--"}, asUserArgs(self, spec.Cred, cmp.Or(spec.WorkDir, "/"), path, spec.Argv)...)
		cmd.Dir = "/"
	case spec.Cred != nil:
		// Go's fork sets the credential after the clone and before the
		// chdir and the exec.
		cmd.SysProcAttr.Credential = spec.Cred
	}
	if spec.Secret != nil {
		// tini passes the descriptor on to the workload (it closes none)
		// and keeps its own copy: an empty pipe once the workload has read
		// the secret.
		sr, err := mrt.PassSecret(cmd, spec.Secret)
		if err != nil {
			return 0, fmt.Errorf("shim: %w", err)
		}
		defer sr.Close() // the workload has its copy
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("cannot start %q: %v", spec.Argv[0], err)
	}
	pid := cmd.Process.Pid
	// The reaper collects it by pid (wait4), with the orphans of its tree.
	cmd.Process.Release()
	return pid, nil
}

// restore restores the image set as this process's child (CRIU's
// restore-sibling), stopped, with w in place of the old output pipe.
// worker, if not nil, is the CRIU started ahead with w (prepare).
func (s *server) restore(w *os.File, worker *criu.Worker) (int, *criu.RestoreStats, error) {
	rs := s.spec.Restore
	if rs.CRIU == "" || rs.ImagesDir == "" || rs.PipeKey == "" {
		return 0, nil, errors.New("shim: a restore needs CRIU, ImagesDir and PipeKey")
	}
	timeout := rs.Timeout
	if timeout <= 0 {
		timeout = criu.DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	pid, st, err := criu.New(rs.CRIU).Restore(ctx, criu.RestoreOpts{ImagesDir: rs.ImagesDir, TCPEstablished: rs.TCP,
		LeaveStopped: true, InheritFds: map[string]*os.File{rs.PipeKey: w}, AutoDedup: rs.Dedup, LazyPages: rs.Lazy,
		Worker: worker})
	if err != nil {
		return 0, nil, err
	}
	// Only a child can be reaped: a root CRIU put elsewhere would leave
	// this shim waiting forever.
	if ppid := criu.ParentOf(pid); ppid != os.Getpid() {
		for _, p := range criu.Tree(pid) {
			unix.Kill(p, unix.SIGKILL)
		}
		return 0, nil, fmt.Errorf("shim: the restored process %d is a child of %d, not of the shim %d", pid, ppid, os.Getpid())
	}
	return pid, st, nil
}

// copy appends what the pipe yields to the log until no writer is left. A
// chunk is read and written with mu held (the flush barrier); a failed log
// write is reported and the output dropped, never left in the pipe (a full
// pipe would block the workload).
func (s *server) copy() {
	defer close(s.eof)
	buf := make([]byte, 64<<10)
	logErr := false
	for {
		var n int
		var rerr error
		err := s.rc.Read(func(fd uintptr) bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			n, rerr = unix.Read(int(fd), buf)
			if rerr == unix.EAGAIN {
				return false
			}
			if n > 0 {
				s.lastData.Store(time.Now().UnixNano())
				if _, err := s.logf.Write(buf[:n]); err != nil && !logErr {
					log.Printf("writing the log: %v (output is dropped until a write succeeds)", err)
					logErr = true
				} else if err == nil {
					logErr = false
				}
			}
			return true
		})
		if err == nil && rerr == unix.EINTR {
			continue
		}
		if err == nil {
			err = rerr
		}
		if err != nil {
			log.Printf("reading the output pipe: %v", err)
			return
		}
		if n == 0 {
			return // EOF: every writer is gone
		}
	}
}

// pendingLocked is how many bytes wait in the pipe (FIONREAD, which is
// TIOCINQ on Linux). With mu held, 0 means the log has everything written so
// far.
func (s *server) pendingLocked() (int, error) {
	var n int
	var ierr error
	if err := s.rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.TIOCINQ) }); err != nil {
		return 0, err
	}
	return n, ierr
}

func (s *server) flush() error {
	deadline := time.Now().Add(flushMax)
	for {
		s.mu.Lock()
		n, err := s.pendingLocked()
		s.mu.Unlock()
		if err != nil {
			return fmt.Errorf("reading the pipe's fill: %v", err)
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d bytes still in the output pipe after %v", n, flushMax)
		}
		time.Sleep(time.Millisecond)
	}
}

// reap waits for the root and for whatever of its tree is re-parented here.
func (s *server) reap() {
	defer close(s.reaped)
	rootDone := false
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if !rootDone {
				// Impossible for a child; say so rather than hang.
				log.Printf("waiting for the workload %d: %v", s.pid, err)
				go s.finish(-1)
			}
			return // ECHILD: nothing of the tree is left
		}
		if pid != s.pid || rootDone {
			continue
		}
		rootDone = true
		code := ws.ExitStatus()
		if ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		go s.finish(code)
	}
}

// finish records the root's exit once its output is in the log, answers the
// waiters, and ends the shim when no writer is left.
func (s *server) finish(code int) {
	s.drain()
	b, _ := json.Marshal(exitRecord{Code: code, At: time.Now()})
	if err := journal.WriteFile(filepath.Join(s.spec.Dir, ExitFile), append(b, '\n'), 0o600); err != nil {
		log.Printf("writing %s: %v", ExitFile, err)
	}
	s.stMu.Lock()
	s.exited, s.code = true, code
	s.stMu.Unlock()
	close(s.done)
	log.Printf("workload %d exited: %d", s.pid, code)
	<-s.eof
	// Reap what is left of the tree for a moment, so that its pids are free
	// when the shim is gone (a restore here may want them).
	select {
	case <-s.reaped:
	case <-time.After(reapMax):
	}
	s.ln.Close()
}

// drain waits until the pipe has no writer, or has been empty for
// drainQuiet, for at most drainMax.
func (s *server) drain() {
	deadline := time.Now().Add(drainMax)
	for {
		select {
		case <-s.eof:
			return
		default:
		}
		s.mu.Lock()
		n, err := s.pendingLocked()
		s.mu.Unlock()
		quiet := time.Since(time.Unix(0, s.lastData.Load())) >= drainQuiet
		if err != nil || (n == 0 && quiet) || time.Now().After(deadline) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *server) status() Status {
	s.stMu.Lock()
	defer s.stMu.Unlock()
	return Status{ShimPID: os.Getpid(), PID: s.pid, PipeKey: s.pipeKey, Exited: s.exited, Code: s.code}
}

// serve answers requests until finish closes the listener, then lets the
// requests in progress end and cleans up.
func (s *server) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.Printf("accept: %v", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			break
		}
		s.handlers.Add(1)
		go s.handle(c)
	}
	s.removeSock()
	waited := make(chan struct{})
	go func() {
		s.handlers.Wait()
		close(waited)
	}()
	select {
	case <-waited:
	case <-time.After(2 * time.Second):
	}
	s.logf.Close()
}

func (s *server) handle(c net.Conn) {
	defer s.handlers.Done()
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var req request
	if err := json.NewDecoder(c).Decode(&req); err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	var resp response
	switch req.Op {
	case "status":
		st := s.status()
		resp.Status = &st
	case "wait":
		// Until the exit, or until the client hangs up.
		gone := make(chan struct{})
		go func() {
			var b [1]byte
			c.Read(b[:])
			close(gone)
		}()
		select {
		case <-s.done:
		case <-gone:
			return
		}
		st := s.status()
		resp.Status = &st
	case "flush":
		if err := s.flush(); err != nil {
			resp.Err = err.Error()
		}
	default:
		resp.Err = fmt.Sprintf("unknown request %q", req.Op)
	}
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	json.NewEncoder(c).Encode(&resp)
}

// removeSock removes the socket if it is still this shim's: another shim may
// serve the directory by now.
func (s *server) removeSock() {
	var st unix.Stat_t
	if unix.Stat(s.sock, &st) == nil && st.Ino == s.sockIno {
		os.Remove(s.sock)
	}
}
