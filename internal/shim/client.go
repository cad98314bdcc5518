package shim

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"dsmigrate/criu"
)

// Names of the files a shim keeps in its Spec.Dir.
const (
	LogFile    = "log"
	SocketFile = "shim.sock"
	ExitFile   = "exit.json"
	ShimLog    = "shim.log"
)

// Command is the hidden subcommand of the daemon's binary that runs Main.
const Command = "shim"

// criuFlag, after Command, names the CRIU a prestarted shim starts ahead.
const criuFlag = "--criu"

// maxSockPath is the longest path a sockaddr_un holds (108 bytes with the NUL).
const maxSockPath = 107

// ErrGone is wrapped by the errors of a Client whose shim no longer serves its
// directory.
var ErrGone = errors.New("shim gone")

// Spec is what one shim supervises. Dir is the process's state directory
// (STATE/procs/ID): it holds "log" (the output, appended), "shim.sock",
// "exit.json", "shim.log" (the shim's own stderr).
type Spec struct {
	ID  string `json:"id"`
	Dir string `json:"dir"`
	// Run mode: start Argv with Env in WorkDir. Path is the executable;
	// empty, Argv[0] is looked up in the shim's PATH (then in WorkDir).
	Path    string   `json:"path,omitempty"`
	Argv    []string `json:"argv,omitempty"`
	Env     []string `json:"env,omitempty"`
	WorkDir string   `json:"work_dir,omitempty"`
	// Init, if set, is the executable of a minimal init (tini): the shim
	// starts it as pid 1 of a new pid namespace and it runs the workload as
	// its only child, reaps whatever the workload orphans, and passes on
	// the signals it gets. CRIU then dumps and restores the namespace whole,
	// so the pids inside never collide with a target's own (see doc.go).
	Init string `json:"init,omitempty"`
	// Secret, if set, is the DSM job's secret (runtime.SecretLen bytes):
	// the workload (through its init, which passes its descriptors on)
	// inherits the read end of a pipe that holds it, numbered in
	// DSM_SECRET_FD (runtime.PassSecret), and nothing else of the
	// workload's shows it. The shim gets it in the spec on its stdin, never
	// logs or stores it, and forgets it once the workload has started.
	Secret []byte `json:"secret,omitempty"`
	// Cred, if set, is who the workload runs as: uid, gid and
	// supplementary groups, taken on before the workload's directory is
	// entered or its program run, so that both are checked as that user.
	// An Init stays root's (asuser.go says why). nil: as the shim, root.
	Cred *syscall.Credential `json:"cred,omitempty"`
	// Restore mode (when Restore != nil): restore a CRIU image set as the
	// shim's child, stopped.
	Restore *RestoreSpec `json:"restore,omitempty"`
}

// check says what a Spec lacks, if anything (Start and the shim both ask).
func (s Spec) check() error {
	if s.ID == "" || !filepath.IsAbs(s.Dir) {
		return fmt.Errorf("shim: a spec needs an ID and an absolute Dir (got %q, %q)", s.ID, s.Dir)
	}
	if s.Restore == nil && len(s.Argv) == 0 {
		return errors.New("shim: a spec needs Argv or Restore")
	}
	return nil
}

// FindInit returns the path of the init that Spec.Init wants: tini-static
// (it maps no shared library, so a target needs only that one file to match
// the source's), else tini, from PATH or /usr/bin.
func FindInit() (string, error) {
	for _, name := range []string{"tini-static", "tini"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
		if p := filepath.Join("/usr/bin", name); isExecutable(p) {
			return p, nil
		}
	}
	return "", errors.New("tini is not installed: every process runs under tini in a pid namespace of its own " +
		"(install Debian's tini package on every host, or run scripts/install-deps.sh)")
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// RestoreSpec is a restore mode Spec's image set.
type RestoreSpec struct {
	CRIU      string `json:"criu"` // CRIU binary path
	ImagesDir string `json:"images_dir"`
	// PipeKey is the output pipe as named in the images ("pipe:[ino]"): the
	// new pipe's write end is inherited in its place (--inherit-fd).
	PipeKey string `json:"pipe_key"`
	TCP     bool   `json:"tcp,omitempty"` // --tcp-established
	// Dedup frees each page of the images as it is restored (CRIU's
	// --auto-dedup): for images that are never restored again.
	Dedup   bool          `json:"dedup,omitempty"`
	Timeout time.Duration `json:"timeout,omitempty"` // CRIU's deadline (criu.DefaultTimeout if 0)
	// Lazy restores a post-copy dump: the memory comes from the criu
	// lazy-pages running in ImagesDir (criu.RestoreOpts.LazyPages).
	Lazy bool `json:"lazy,omitempty"`
	// Hold, if set, is a file the shim keeps open, untouched, for as long
	// as it lives: with Lazy, the daemon's end of lazy-pages's page socket,
	// so that the daemon's death leaves lazy-pages waiting for pages (and
	// the tree's faults blocked) instead of at the socket's end, where it
	// would exit and let the kernel fill the missing pages with zeros.
	Hold *os.File `json:"-"`
}

// Started is what a shim reports once its workload runs (or, restored, is
// stopped and ready to continue).
type Started struct {
	ShimPID int                `json:"shim_pid"`
	PID     int                `json:"pid"`      // the root of the workload's tree (its init, with Spec.Init), as this host numbers it
	PipeKey string             `json:"pipe_key"` // "pipe:[ino]" of the new output pipe's write end, as CRIU will name it on the next dump
	Restore *criu.RestoreStats `json:"restore,omitempty"`
}

// Status is a shim's answer to a status request.
type Status struct {
	ShimPID int    `json:"shim_pid"`
	PID     int    `json:"pid"`
	PipeKey string `json:"pipe_key"` // as in Started
	Exited  bool   `json:"exited"`
	Code    int    `json:"code"` // valid when Exited
}

// report is the shim's one message on stdout.
type report struct {
	Started *Started    `json:"started,omitempty"`
	Err     string      `json:"err,omitempty"`
	CRIU    *criu.Error `json:"criu,omitempty"` // a failed restore, intact
}

// request and response are the socket protocol.
type request struct {
	Op string `json:"op"` // status, wait, flush
}

type response struct {
	Status *Status `json:"status,omitempty"`
	Err    string  `json:"err,omitempty"`
}

// exitRecord is exit.json.
type exitRecord struct {
	Code int       `json:"code"`
	At   time.Time `json:"at"`
}

// Client talks to one shim. It holds no connection between calls (one per
// request), so it needs no Close, and any number of goroutines may use it.
type Client struct {
	dir     string
	sock    string
	shimPID int
	exited  chan struct{} // closed when the shim process Start started is reaped
}

// Dir is the shim's directory.
func (c *Client) Dir() string { return c.dir }

// ShimPID is the shim's pid.
func (c *Client) ShimPID() int { return c.shimPID }

// Exited is closed when the shim process is reaped. Only a Client from Start
// (the shim is the caller's child) has one; it is nil after Dial.
func (c *Client) Exited() <-chan struct{} { return c.exited }

func sockPath(dir string) (string, error) {
	p := filepath.Join(dir, SocketFile)
	if len(p) > maxSockPath {
		return "", fmt.Errorf("the shim socket %s is %d bytes long, more than the %d a unix socket address holds: use a shorter state directory", p, len(p), maxSockPath)
	}
	return p, nil
}

// Start starts a shim for spec by executing exe (the daemon's binary; the
// daemon passes /proc/self/exe) with the hidden subcommand "shim", hands it the
// spec over its stdin (never on the command line: Env may hold secrets), and waits
// until the shim reports that the workload has started, or that the restore is
// done (the restored tree is left STOPPED: the caller SIGCONTs it), or why not.
// A failed CRIU restore comes back as the *criu.Error the shim got.
//
// The shim runs in its own session and survives the caller's death (no
// parent-death signal); while the caller lives it is the shim's parent and
// reaps it (Client.Exited). If ctx ends before the shim reports, the shim is
// killed.
func Start(ctx context.Context, exe string, spec Spec) (*Client, *Started, error) {
	if err := spec.check(); err != nil {
		return nil, nil, err
	}
	p, err := Prestart(exe, spec.Dir, "")
	if err != nil {
		return nil, nil, err
	}
	return p.Start(ctx, spec)
}

// Pending is a shim started before its Spec is known (Prestart): its exec
// and start-up, and with a CRIU path the start of the CRIU that will
// restore, happen while the caller still waits for what to restore. It
// waits for its spec on its stdin (Start) and exits, leaving nothing, when
// Abort is called or its caller dies first.
type Pending struct {
	dir     string
	ctl     *os.File // our end of the shim's stdin (a unix stream socket)
	repR    *os.File // the shim's stdout: its one report
	cmd     *exec.Cmd
	exited  chan struct{}
	started bool
}

// Prestart starts a shim for directory dir (the Spec's Dir) without its
// spec (or for a spare directory, and Move it). With criuPath, the shim also
// starts the `criu swrk` that a restore spec naming that CRIU will use
// (criu.StartWorker).
func Prestart(exe, dir, criuPath string) (_ *Pending, retErr error) {
	if _, err := sockPath(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("shim: %w", err)
	}
	slog, err := os.OpenFile(filepath.Join(dir, ShimLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("shim: %w", err)
	}
	defer slog.Close()
	// stdin is a socket so that a file (RestoreSpec.Hold) can come with
	// the spec; stdout a pipe for the report.
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("shim: %w", err)
	}
	ctl, specR := os.NewFile(uintptr(fds[0]), "shim-ctl"), os.NewFile(uintptr(fds[1]), "shim-spec")
	defer specR.Close()
	repR, repW, err := os.Pipe()
	if err != nil {
		ctl.Close()
		return nil, fmt.Errorf("shim: %w", err)
	}
	defer repW.Close()
	defer func() {
		if retErr != nil {
			ctl.Close()
			repR.Close()
		}
	}()
	cmd := exec.Command(exe, Command)
	if criuPath != "" {
		cmd.Args = append(cmd.Args, criuFlag, criuPath)
	}
	cmd.Args[0] = "migrated-shim"
	cmd.Dir = "/" // pin no directory
	cmd.Stdin, cmd.Stdout, cmd.Stderr = specR, repW, slog
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("shim: starting %s: %w", exe, err)
	}
	p := &Pending{dir: dir, ctl: ctl, repR: repR, cmd: cmd, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// PID is the shim's pid.
func (p *Pending) PID() int { return p.cmd.Process.Pid }

// Move gives a shim started ahead in a spare directory (a daemon keeps one
// waiting before any migration comes, so that an arrival does not pay its
// start) the directory dir its spec will name: its own log (ShimLog), open
// as it is, moves there, replacing one an earlier stay of the process left.
// The two directories must be on one file system. After a failed Move the
// shim stays in its spare directory.
func (p *Pending) Move(dir string) error {
	if p.started {
		return errors.New("shim: this shim was started (or aborted) already")
	}
	if _, err := sockPath(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("shim: %w", err)
	}
	if err := os.Rename(filepath.Join(p.dir, ShimLog), filepath.Join(dir, ShimLog)); err != nil {
		return fmt.Errorf("shim: moving a shim started ahead: %w", err)
	}
	p.dir = dir
	return nil
}

// Abort ends a shim that has not been given its spec: it exits and is
// reaped before Abort returns. A no-op after Start, and on nil.
func (p *Pending) Abort() {
	if p == nil || p.started {
		return
	}
	p.started = true
	p.ctl.Close()
	p.repR.Close()
	p.reap()
}

// reap waits for a shim that failed or was told to go: a shim that
// failed says so and exits; one that hangs is killed.
func (p *Pending) reap() {
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// Start hands the shim its spec and waits for its report, as the function
// Start does. A Pending starts once; a failed Start leaves no shim.
func (p *Pending) Start(ctx context.Context, spec Spec) (_ *Client, _ *Started, retErr error) {
	if p.started {
		return nil, nil, errors.New("shim: this shim was started (or aborted) already")
	}
	p.started = true
	defer p.repR.Close()
	defer func() {
		if retErr != nil {
			p.reap()
		}
	}()
	if err := spec.check(); err != nil {
		p.ctl.Close()
		return nil, nil, err
	}
	if spec.Dir != p.dir {
		p.ctl.Close()
		return nil, nil, fmt.Errorf("shim: started for %s, given a spec for %s", p.dir, spec.Dir)
	}
	sock, _ := sockPath(spec.Dir)
	c := &Client{dir: spec.Dir, sock: sock, shimPID: p.cmd.Process.Pid, exited: p.exited}
	var hold *os.File
	if spec.Restore != nil {
		hold = spec.Restore.Hold
	}
	// The spec may exceed the socket's buffer: write it while reading the
	// report, which comes only after the shim has read all of it. A
	// failed write shows as the shim's error ("no spec came").
	go func() {
		defer p.ctl.Close()
		if b, err := json.Marshal(&spec); err == nil {
			sendSpec(p.ctl, append(b, '\n'), hold)
		}
	}()
	type result struct {
		rep report
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var r result
		r.err = json.NewDecoder(p.repR).Decode(&r.rep)
		ch <- r
	}()
	var res result
	select {
	case res = <-ch:
	case <-ctx.Done():
		p.cmd.Process.Kill()
		return nil, nil, fmt.Errorf("shim for %s: no report: %w", spec.ID, context.Cause(ctx))
	}
	switch {
	case res.err != nil:
		// Give the shim a moment to finish writing its log.
		select {
		case <-p.exited:
		case <-time.After(time.Second):
		}
		return nil, nil, fmt.Errorf("shim for %s ended without a report (%v); %s says: %s", spec.ID, res.err,
			filepath.Join(spec.Dir, ShimLog), tail(filepath.Join(spec.Dir, ShimLog), 5))
	case res.rep.CRIU != nil:
		return nil, nil, res.rep.CRIU
	case res.rep.Err != "":
		return nil, nil, errors.New(res.rep.Err)
	case res.rep.Started == nil:
		return nil, nil, fmt.Errorf("shim for %s: empty report", spec.ID)
	}
	return c, res.rep.Started, nil
}

// sendSpec writes msg to the shim's stdin socket, with hold's descriptor
// (SCM_RIGHTS) on its first byte when there is one.
func sendSpec(ctl *os.File, msg []byte, hold *os.File) error {
	if hold == nil {
		_, err := ctl.Write(msg)
		return err
	}
	hc, err := hold.SyscallConn() // not Fd(): that would make it blocking
	if err != nil {
		return err
	}
	cc, err := ctl.SyscallConn()
	if err != nil {
		return err
	}
	var n int
	var serr error
	if err := hc.Control(func(hfd uintptr) {
		cerr := cc.Write(func(cfd uintptr) bool {
			n, serr = unix.SendmsgN(int(cfd), msg, unix.UnixRights(int(hfd)), nil, 0)
			return serr != unix.EAGAIN
		})
		if serr == nil {
			serr = cerr
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return serr
	}
	_, err = ctl.Write(msg[n:])
	return err
}

// Dial reattaches to the shim serving dir (after a daemon restart). It fails
// with an error wrapping ErrGone if no shim serves it.
func Dial(dir string) (*Client, error) {
	sock, err := sockPath(dir)
	if err != nil {
		return nil, err
	}
	c := &Client{dir: dir, sock: sock}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		return nil, err
	}
	c.shimPID = st.ShimPID
	return c, nil
}

// Status asks the shim how its workload is.
func (c *Client) Status(ctx context.Context) (Status, error) {
	r, err := c.call(ctx, "status")
	if err != nil {
		return Status{}, err
	}
	if r.Status == nil {
		return Status{}, errors.New("shim: status answer without a status")
	}
	return *r.Status, nil
}

// Wait blocks until the workload has exited and returns its code (128+signal
// if killed by a signal), or an error wrapping ErrGone if the shim died
// without saying: a shim that wrote exit.json but could not answer has said.
func (c *Client) Wait(ctx context.Context) (int, error) {
	r, err := c.call(ctx, "wait")
	if err != nil {
		if errors.Is(err, ErrGone) {
			if code, ok, _ := ReadExit(c.dir); ok {
				return code, nil
			}
		}
		return -1, err
	}
	if r.Status == nil || !r.Status.Exited {
		return -1, errors.New("shim: wait answered before the exit")
	}
	return r.Status.Code, nil
}

// Flush returns once everything the workload has written so far (its tree
// may be stopped) is in the log file: the pipe is empty and no chunk is
// half-written. The shim gives up after a few seconds of a pipe that never
// empties (a workload writing without pause) and says so.
func (c *Client) Flush(ctx context.Context) error {
	_, err := c.call(ctx, "flush")
	return err
}

func (c *Client) call(ctx context.Context, op string) (*response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.sock)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("shim %s: %w: %v", c.dir, ErrGone, err)
		}
		return nil, fmt.Errorf("shim %s: %w", c.dir, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if err := json.NewEncoder(conn).Encode(request{Op: op}); err != nil {
		return nil, c.connErr(ctx, op, err)
	}
	var r response
	if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&r); err != nil {
		return nil, c.connErr(ctx, op, err)
	}
	if r.Err != "" {
		return nil, fmt.Errorf("shim %s: %s: %s", c.dir, op, r.Err)
	}
	return &r, nil
}

func (c *Client) connErr(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("shim %s: %s: %w", c.dir, op, context.Cause(ctx))
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) {
		// A shim answers every request unless it is going away.
		return fmt.Errorf("shim %s: %s: %w: the connection closed without an answer", c.dir, op, ErrGone)
	}
	return fmt.Errorf("shim %s: %s: %w", c.dir, op, err)
}

// ReadExit reads dir/exit.json: the exit code a shim recorded before it ended.
// ok is false, with no error, if there is none.
func ReadExit(dir string) (code int, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, ExitFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	var r exitRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return 0, false, fmt.Errorf("shim: %s is corrupt: %w", filepath.Join(dir, ExitFile), err)
	}
	return r.Code, true, nil
}

// tail returns the last n lines of a file, on one line.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 1 && lines[0] == "" {
		return "(nothing)"
	}
	return strings.Join(lines, " | ")
}
