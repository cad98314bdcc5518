// Package criu is a thin, typed layer over CRIU's swrk RPC mode, built on
// go-criu's protocol types.
//
// It runs its own swrk child instead of go-criu's Criu object for three reasons
// the daemon needs: every call has a deadline after which the CRIU process is
// killed (a hung dump must not hold a frozen process forever), file descriptors
// can be handed to CRIU for --inherit-fd, and a failure carries CRIU's errno and
// the relevant lines of its log rather than only "operation failed".
package criu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"github.com/checkpoint-restore/go-criu/v8/stats"
	"golang.org/x/sys/unix"
)

// MinVersion is the oldest CRIU this project works with: 4.1 cannot dump TCP
// sockets on kernels >= 6.16 (SO_PASSCRED), fixed in 4.2.
var MinVersion = Version{4, 2, 0}

// DefaultTimeout bounds a CRIU call when the context has no deadline.
const DefaultTimeout = 5 * time.Minute

// Version is a CRIU release number.
type Version struct{ Major, Minor, Sub int }

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Sub) }

// Less reports whether v is older than w.
func (v Version) Less(w Version) bool {
	if v.Major != w.Major {
		return v.Major < w.Major
	}
	if v.Minor != w.Minor {
		return v.Minor < w.Minor
	}
	return v.Sub < w.Sub
}

// Error is a failed CRIU call.
type Error struct {
	Op    string   // "dump", "restore", ...
	Errno int      // CRIU's cr_errno (an errno value, 0 if unknown)
	Msg   string   // CRIU's cr_errmsg or the transport failure
	Log   []string // the lines of CRIU's log that explain the failure
	// Err is why the context ended when CRIU was killed for it
	// (context.Canceled, context.DeadlineExceeded or the context's cause;
	// Errno is then ETIMEDOUT), else nil. It does not survive JSON.
	Err error `json:"-"`
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "criu %s failed", e.Op)
	if e.Errno != 0 {
		fmt.Fprintf(&b, " (errno %d: %s)", e.Errno, syscall.Errno(e.Errno))
	}
	if e.Msg != "" {
		fmt.Fprintf(&b, ": %s", e.Msg)
	}
	for _, l := range e.Log {
		fmt.Fprintf(&b, "\n  %s", l)
	}
	return b.String()
}

// Unwrap returns Err: errors.Is(err, context.DeadlineExceeded) holds for a
// CRIU killed by its deadline.
func (e *Error) Unwrap() error { return e.Err }

// Client runs CRIU at Path.
type Client struct {
	Path string
}

// New returns a client for the CRIU binary at path ("criu" searches PATH).
func New(path string) *Client { return &Client{Path: path} }

// Version asks CRIU for its version.
func (c *Client) Version(ctx context.Context) (Version, error) {
	resp, err := c.call(ctx, "version", &rpc.CriuReq{Type: rpc.CriuReqType_VERSION.Enum()}, nil, nil, "")
	if err != nil {
		return Version{}, err
	}
	v := resp.GetVersion()
	return Version{int(v.GetMajorNumber()), int(v.GetMinorNumber()), int(v.GetSublevel())}, nil
}

// Check verifies that CRIU is usable here: its version is at least MinVersion
// and `criu check` passes. The error names the fix.
func (c *Client) Check(ctx context.Context) (Version, error) {
	if _, err := exec.LookPath(c.Path); err != nil {
		return Version{}, fmt.Errorf("CRIU not found at %q: run scripts/install-deps.sh (installs CRIU >= %s) or pass --criu PATH", c.Path, MinVersion)
	}
	v, err := c.Version(ctx)
	if err != nil {
		return v, fmt.Errorf("CRIU at %q does not answer its RPC: %w; run scripts/install-deps.sh or pass --criu PATH", c.Path, err)
	}
	if v.Less(MinVersion) {
		return v, fmt.Errorf("CRIU %s at %q is too old (need >= %s): run scripts/install-deps.sh or pass --criu PATH", v, c.Path, MinVersion)
	}
	cctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	out, err := exec.CommandContext(cctx, c.Path, "check").CombinedOutput()
	if err != nil {
		return v, fmt.Errorf("`%s check` failed (%v): %s; this kernel lacks what CRIU needs", c.Path, err, strings.TrimSpace(lastLines(string(out), 8)))
	}
	return v, nil
}

// Notify is called for CRIU's notification scripts ("pre-dump",
// "post-dump", "network-lock", "post-restore", ...); an error aborts the
// operation. CRIU waits for the answer meanwhile. If the call's context has
// ended by the time Notify returns, CRIU is killed without an answer.
type Notify func(script string, pid int) error

// DumpOpts describes a dump.
type DumpOpts struct {
	Pid            int
	ImagesDir      string   // must exist; the log and stats are written here too
	TCPEstablished bool     // dump established TCP connections (--tcp-established)
	LeaveStopped   bool     // leave the tree stopped instead of killing it
	LeaveRunning   bool     // leave the tree running (mutually exclusive with LeaveStopped)
	External       []string // --external resources
	FileLocks      bool
	Notify         Notify
	// PageServer, if set, is a connected stream socket that CRIU sends the
	// pages and pagemaps to, speaking the page-server protocol (criu_opts.ps
	// with its fd), instead of writing them into ImagesDir. The caller keeps
	// its own copy of the file and closes it after Dump returns.
	PageServer *os.File
	// Lazy, if set, makes the dump a post-copy one (--lazy-pages): the
	// tree's private anonymous memory is not dumped but served, on demand,
	// to a `criu lazy-pages` (LazyPages) over this connected stream socket,
	// and the rest of the images go into ImagesDir. Dump returns only when
	// that session is over: the target's lazy-pages has every page and
	// closed it (success), or the socket reached its end. Either way the
	// tree is left stopped with LeaveStopped (CRIU puts a tree it found
	// stopped back to stopped). Lazy and PageServer exclude each other.
	Lazy *os.File
	// Ready is called, with Lazy, once the images in ImagesDir are complete
	// and CRIU is about to serve pages; an error makes the dump fail.
	Ready func() error
	// Worker, if set, is a CRIU started ahead (StartDumpWorker) that runs
	// the dump; PageServer or Lazy must be among its files. Dump uses it up
	// or, failing before, closes it.
	Worker *Worker
}

// DumpStats are CRIU's own figures for a dump.
type DumpStats struct {
	Freezing     time.Duration // time to freeze the tree
	Frozen       time.Duration // time the tree stayed frozen
	MemDump      time.Duration
	MemWrite     time.Duration
	PagesScanned uint64
	PagesWritten uint64
}

// LogName is the file CRIU logs to, inside the images directory.
const LogName = "criu.log"

// Dump checkpoints the tree rooted at o.Pid into o.ImagesDir.
func (c *Client) Dump(ctx context.Context, o DumpOpts) (*DumpStats, error) {
	opts := baseOpts(o.ImagesDir)
	opts.Pid = ptr(int32(o.Pid))
	opts.TcpEstablished = ptr(o.TCPEstablished)
	opts.NetworkLock = networkLock(o.TCPEstablished)
	// A connection that a listener of the tree has in its queue, not yet
	// accepted, would fail the dump ("In-flight connection"): anyone who
	// can reach a listening port could block a migration by connecting at
	// the right moment. CRIU drops it instead; its client sees the
	// connection reset, as if the server had left a moment earlier.
	opts.TcpSkipInFlight = ptr(true)
	opts.LeaveStopped = ptr(o.LeaveStopped)
	opts.LeaveRunning = ptr(o.LeaveRunning)
	opts.External = o.External
	opts.FileLocks = ptr(o.FileLocks)
	opts.NotifyScripts = ptr(o.Notify != nil)
	defer o.Worker.Close() // a no-op once it has served
	var files []*os.File
	// sock is the descriptor CRIU has f as: ExtraFiles[0] becomes fd 4 in
	// CRIU (fd 3 is the RPC socket), unless a worker holds f already.
	sock := func(f *os.File) (int32, error) {
		if o.Worker == nil {
			files = append(files, f)
			return int32(3 + len(files)), nil
		}
		if fd := o.Worker.fd(f); fd >= 0 {
			return fd, nil
		}
		return 0, errors.New("criu: the dump's socket is not among its worker's files")
	}
	nfy := o.Notify
	switch {
	case o.PageServer != nil && o.Lazy != nil:
		return nil, errors.New("criu: a dump has a page server or lazy pages, not both")
	case o.PageServer != nil:
		fd, err := sock(o.PageServer)
		if err != nil {
			return nil, err
		}
		opts.Ps = &rpc.CriuPageServerInfo{Fd: ptr(fd)}
	case o.Lazy != nil:
		fd, err := sock(o.Lazy)
		if err != nil {
			return nil, err
		}
		conf, err := lazyConfig(fd)
		if err != nil {
			return nil, err
		}
		defer os.Remove(conf)
		opts.LazyPages = ptr(true)
		opts.ConfigFile = ptr(conf)
		opts.NotifyScripts = ptr(true)
		nfy = lazyNotify(o.ImagesDir, fd, o.Notify, o.Ready)
	}
	req := &rpc.CriuReq{Type: rpc.CriuReqType_DUMP.Enum(), Opts: opts}
	if _, err := c.callOn(ctx, o.Worker, "dump", req, files, nfy, o.ImagesDir); err != nil {
		return nil, err
	}
	if o.Lazy != nil {
		// A lazy dump's stats are reset when it starts serving pages:
		// its counters say nothing about this dump (docs/postcopy-research.md).
		return &DumpStats{}, nil
	}
	st := &DumpStats{}
	if d, err := openDir(o.ImagesDir); err == nil {
		defer d.Close()
		if s, err := stats.CriuGetDumpStats(d); err == nil {
			st.Freezing = us(s.GetFreezingTime())
			st.Frozen = us(s.GetFrozenTime())
			st.MemDump = us(s.GetMemdumpTime())
			st.MemWrite = us(s.GetMemwriteTime())
			st.PagesScanned = s.GetPagesScanned()
			st.PagesWritten = s.GetPagesWritten()
		}
	}
	return st, nil
}

// lazyConfig writes the configuration file that has a lazy dump serve its
// pages on CRIU's descriptor fd. The RPC drops the page-server fd of a lazy
// dump and would listen on every address instead; a configuration file's
// ps-socket is read after the request (CRIU's cr-service.c).
func lazyConfig(fd int32) (string, error) {
	f, err := os.CreateTemp("", "dsmigrate-lazy-*.conf")
	if err != nil {
		return "", fmt.Errorf("criu: %v", err)
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "ps-socket %d\n", fd); err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("criu: %v", err)
	}
	return f.Name(), nil
}

// lazyPSLine is what CRIU logs when it serves lazy pages on the socket fd
// (page-xfer.c:cr_page_server); without it, it has opened a TCP port.
func lazyPSLine(fd int32) string { return fmt.Sprintf("Reusing ps socket %d", fd) }

// lazyNotify passes the notifications of a lazy dump on to nfy and calls
// ready at status-ready, once it has made sure CRIU serves on our socket fd.
func lazyNotify(dir string, fd int32, nfy Notify, ready func() error) Notify {
	return func(script string, pid int) error {
		if nfy != nil {
			if err := nfy(script, pid); err != nil {
				return err
			}
		}
		if script != "status-ready" {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(dir, LogName))
		if line := lazyPSLine(fd); err != nil || !strings.Contains(string(b), line) {
			return errors.New("CRIU did not take the page socket from its configuration file (no \"" + line +
				"\" in its log): it would serve pages on a TCP port; refusing")
		}
		if ready != nil {
			return ready()
		}
		return nil
	}
}

// LazyPagesLog is the file lazy-pages logs to, inside its images directory.
const LazyPagesLog = "lazy-pages.log"

// LazyPages is a running `criu lazy-pages`: the target's end of a post-copy
// migration, which hands the restored tree its pages as it touches them
// (userfaultfd) and fetches the rest in the background.
type LazyPages struct {
	cmd  *exec.Cmd
	dir  string
	done chan struct{}
	err  error
}

// StartLazyPages starts `criu lazy-pages` for the images in dir, fetching
// pages from the dump's page server over the connected stream socket sock,
// and returns once it listens for the restore (dir/lazy-pages.socket), so
// that a restore with RestoreOpts.LazyPages may begin. The caller keeps its
// copy of sock.
//
// It is not killed with its caller: should the caller die, the restored
// tree's faults must wait (killably) for someone to decide, rather than
// lazy-pages exit and the kernel fill the missing pages with zeros. Stop it
// with Kill, and only after the tree it serves has gone.
func (c *Client) StartLazyPages(dir string, sock *os.File) (*LazyPages, error) {
	sr, sw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("criu: %v", err)
	}
	defer sr.Close()
	cmd := exec.Command(c.Path, "lazy-pages", "-D", dir, "--page-server", "--ps-socket", "3", "--status-fd", "4",
		"-o", LazyPagesLog, "-v3")
	cmd.Dir = dir // lazy-pages.socket is bound in the working directory
	cmd.ExtraFiles = []*os.File{sock, sw}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		sw.Close()
		return nil, fmt.Errorf("criu: starting lazy-pages: %v", err)
	}
	sw.Close()
	// Once the restore is done lazy-pages polls without sleeping until the
	// last page is in (uffd.c: a poll timeout of 0): at the lowest
	// priority its spinning yields the CPU to whatever carries the pages
	// and to the process it serves.
	unix.Setpriority(unix.PRIO_PROCESS, cmd.Process.Pid, 19)
	l := &LazyPages{cmd: cmd, dir: dir, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		if err != nil {
			e := &Error{Op: "lazy-pages", Msg: err.Error(), Log: logErrors(filepath.Join(dir, LazyPagesLog))}
			l.err = e
		}
		close(l.done)
	}()
	// status_ready() writes one byte and closes: EOF without it is a
	// lazy-pages that failed before listening.
	sr.SetReadDeadline(time.Now().Add(DefaultTimeout))
	b := make([]byte, 1)
	if n, _ := sr.Read(b); n != 1 {
		l.Kill()
		<-l.done
		if l.err != nil {
			return nil, l.err
		}
		return nil, &Error{Op: "lazy-pages", Msg: "it never became ready", Log: logErrors(filepath.Join(dir, LazyPagesLog))}
	}
	return l, nil
}

// PID is lazy-pages's pid.
func (l *LazyPages) PID() int { return l.cmd.Process.Pid }

// Done is closed once lazy-pages has exited; Err then says how.
func (l *LazyPages) Done() <-chan struct{} { return l.done }

// Err is nil if lazy-pages exited successfully (every page delivered), or
// why not. Valid once Done is closed.
func (l *LazyPages) Err() error { return l.err }

// Kill kills lazy-pages (a tree still waiting for its pages then reads
// zeros: kill the tree first).
func (l *LazyPages) Kill() { l.cmd.Process.Kill() }

// PageServerLog is the file a page server logs to, inside its images directory.
const PageServerLog = "page-server.log"

// PageServer runs `criu page-server` on the connected stream socket sock
// (--ps-socket): it writes the pages and pagemaps a dump with
// DumpOpts.PageServer sends into dir, and returns when the dump has flushed
// and the session is over. The peer's bytes are as trusted as image files
// (CRIU parses them); sock carries nothing else. CRIU is killed when ctx
// ends. The caller keeps its copy of sock and closes it when it likes.
func (c *Client) PageServer(ctx context.Context, dir string, sock *os.File) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Path, "page-server", "--ps-socket", "3", "-D", dir,
		"-o", PageServerLog, "-v3")
	cmd.ExtraFiles = []*os.File{sock}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	e := &Error{Op: "page-server", Msg: err.Error()}
	if ctx.Err() != nil {
		e.Errno, e.Msg, e.Err = int(syscall.ETIMEDOUT), fmt.Sprintf("CRIU killed: %v", context.Cause(ctx)), context.Cause(ctx)
	}
	if e.Log = logErrors(filepath.Join(dir, PageServerLog)); len(e.Log) == 0 && len(out) > 0 {
		e.Log = strings.Split(lastLines(string(out), 6), "\n")
	}
	return e
}

// RestoreOpts describes a restore.
type RestoreOpts struct {
	ImagesDir      string
	TCPEstablished bool
	LeaveStopped   bool
	FileLocks      bool
	// InheritFds hands files to the restored tree in place of the resources
	// named by the keys (e.g. "pipe:[1234]"), as --inherit-fd does.
	InheritFds map[string]*os.File
	External   []string
	Notify     Notify
	// AutoDedup punches each page out of the images as it is restored
	// (--auto-dedup): images in a tmpfs then never hold a page twice over
	// with the restored process. The images cannot be restored again.
	AutoDedup bool
	// LazyPages restores a post-copy dump: its private anonymous memory
	// comes from the lazy-pages running in ImagesDir (StartLazyPages).
	LazyPages bool
	// Worker, if set, is a CRIU started ahead (StartWorker) with every
	// file of InheritFds; nil starts one now. Restore uses it up.
	Worker *Worker
}

// RestoreStats are CRIU's own figures for a restore.
type RestoreStats struct {
	Forking        time.Duration
	Restore        time.Duration
	PagesRestored  uint64
	PagesCompared  uint64
	PagesSkippedCo uint64
}

// Restore restores the tree in o.ImagesDir as a child of the calling process
// (restore-sibling), so that the caller reaps it. It returns the root's pid.
func (c *Client) Restore(ctx context.Context, o RestoreOpts) (int, *RestoreStats, error) {
	opts := baseOpts(o.ImagesDir)
	opts.RstSibling = ptr(true)
	opts.TcpEstablished = ptr(o.TCPEstablished)
	opts.NetworkLock = networkLock(o.TCPEstablished)
	opts.LeaveStopped = ptr(o.LeaveStopped)
	opts.FileLocks = ptr(o.FileLocks)
	opts.AutoDedup = ptr(o.AutoDedup)
	opts.LazyPages = ptr(o.LazyPages)
	opts.External = o.External
	opts.NotifyScripts = ptr(o.Notify != nil)
	var files []*os.File
	for key, f := range o.InheritFds {
		// ExtraFiles[i] becomes fd 3+i in CRIU; fd 3 is the RPC socket.
		fd := int32(4 + len(files))
		if o.Worker != nil {
			if fd = o.Worker.fd(f); fd < 0 {
				o.Worker.Close()
				return 0, nil, &Error{Op: "restore", Msg: fmt.Sprintf("criu: the worker was started without the file for %s", key)}
			}
		} else {
			files = append(files, f)
		}
		opts.InheritFd = append(opts.InheritFd, &rpc.InheritFd{Key: ptr(key), Fd: ptr(fd)})
	}
	req := &rpc.CriuReq{Type: rpc.CriuReqType_RESTORE.Enum(), Opts: opts}
	resp, err := c.callOn(ctx, o.Worker, "restore", req, files, o.Notify, o.ImagesDir)
	if err != nil {
		return 0, nil, err
	}
	st := &RestoreStats{}
	if d, err := openDir(o.ImagesDir); err == nil {
		defer d.Close()
		if s, err := stats.CriuGetRestoreStats(d); err == nil {
			st.Forking = us(s.GetForkingTime())
			st.Restore = us(s.GetRestoreTime())
			st.PagesRestored = s.GetPagesRestored()
			st.PagesCompared = s.GetPagesCompared()
			st.PagesSkippedCo = s.GetPagesSkippedCow()
		}
	}
	return int(resp.GetRestore().GetPid()), st, nil
}

func baseOpts(dir string) *rpc.CriuOpts {
	return &rpc.CriuOpts{
		ImagesDirFd: ptr(int32(-1)),
		ImagesDir:   ptr(dir),
		LogFile:     ptr(LogName),
		LogLevel:    ptr(int32(3)),
		// CRIU's RPC default is iptables; nftables keeps the whole lock in one
		// table that can be copied to another host (ENVIRONMENT.md).
		NetworkLock: rpc.CriuNetworkLockMethod_NFTABLES.Enum(),
		ShellJob:    ptr(false),
	}
}

// networkLock is the network lock of a dump or restore. CRIU's lock (a
// process sharing its host's network namespace, as ours do) blocks the
// established TCP connections it dumps, and only those: a dump without
// --tcp-established has none (CRIU refuses a tree that holds one), so its
// lock would be an empty nftables table, made at ~10 ms (eleven nft
// commands), left behind by a dump that leaves the tree stopped and removed
// by another nft run; its restore would try to delete it again. Such a
// dump and its restore skip the lock.
func networkLock(tcp bool) *rpc.CriuNetworkLockMethod {
	if tcp {
		return rpc.CriuNetworkLockMethod_NFTABLES.Enum()
	}
	return rpc.CriuNetworkLockMethod_SKIP.Enum()
}

// Worker is a `criu swrk` started before its request is known. Starting CRIU
// (its exec, its libraries, its kernel probe) costs 10-20 ms on a loaded
// host; a caller that knows early which files CRIU will need starts it then,
// off its critical path, and hands it to Restore or Dump later
// (RestoreOpts.Worker, DumpOpts.Worker). A Worker serves one request. A
// restore's dies with the thread that started it (parent-death signal);
// any dies when Close is called before it served.
type Worker struct {
	cmd   *exec.Cmd
	cln   *os.File   // our end of the RPC socket (fd 3 in CRIU)
	files []*os.File // files[i] is fd 4+i in CRIU
	used  bool
}

// StartWorker starts a `criu swrk` that holds files (files[i] becomes its
// fd 4+i) and waits for a restore request. The caller keeps its copies of
// the files.
func (c *Client) StartWorker(files []*os.File) (*Worker, error) {
	w, err := c.start("restore", files)
	if err != nil {
		return nil, &Error{Op: "restore", Msg: err.Error()}
	}
	return w, nil
}

// StartDumpWorker is StartWorker for a dump (DumpOpts.Worker). Its CRIU has
// no parent-death signal, as no dump's has (see start); an idle one exits
// when our end of its RPC socket closes, at Close or with its caller.
func (c *Client) StartDumpWorker(files []*os.File) (*Worker, error) {
	w, err := c.start("dump", files)
	if err != nil {
		return nil, &Error{Op: "dump", Msg: err.Error()}
	}
	return w, nil
}

// Close kills and reaps a Worker that has not served a request. It is a
// no-op on one that has.
func (w *Worker) Close() {
	if w == nil || w.used {
		return
	}
	w.used = true
	w.cmd.Process.Kill()
	w.cln.Close()
	w.cmd.Wait()
}

// fd is the descriptor CRIU knows f by, or -1.
func (w *Worker) fd(f *os.File) int32 {
	for i, g := range w.files {
		if g == f {
			return int32(4 + i)
		}
	}
	return -1
}

// start starts `criu swrk` with the RPC socket as fd 3 and files after it.
func (c *Client) start(op string, files []*os.File) (*Worker, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	cln := os.NewFile(uintptr(fds[0]), "criu-rpc")
	srv := os.NewFile(uintptr(fds[1]), "criu-rpc-srv")
	defer srv.Close()
	cmd := exec.Command(c.Path, "swrk", "3")
	cmd.ExtraFiles = append([]*os.File{srv}, files...)
	cmd.Stderr = nil // CRIU logs to LogFile; swrk's stderr carries nothing useful
	if op != "dump" {
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	// A dump outlives its caller: CRIU killed while its parasite runs in
	// the tree leaves the tree to die of the parasite's trap. Left alone,
	// it fails on its own once the caller's end of its sockets closes (the
	// RPC socket, a page-server socket) and puts the tree back as it was.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		cln.Close()
		return nil, fmt.Errorf("cannot start %s: %v", c.Path, err)
	}
	return &Worker{cmd: cmd, cln: cln, files: files}, nil
}

// call runs one request in a fresh `criu swrk`, answering notifications, and
// kills CRIU when ctx ends.
func (c *Client) call(ctx context.Context, op string, req *rpc.CriuReq, files []*os.File, nfy Notify, logDir string) (*rpc.CriuResp, error) {
	return c.callOn(ctx, nil, op, req, files, nfy, logDir)
}

// callOn is call in w, a CRIU started ahead with its files, if w is not nil.
func (c *Client) callOn(ctx context.Context, w *Worker, op string, req *rpc.CriuReq, files []*os.File, nfy Notify, logDir string) (*rpc.CriuResp, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	fail := func(errno int, msg string) *Error {
		e := &Error{Op: op, Errno: errno, Msg: msg}
		if logDir != "" {
			e.Log = logErrors(filepath.Join(logDir, LogName))
		}
		return e
	}
	// killed is the failure once ctx has ended: CRIU is killed, and the
	// deferred Wait reaps it before call returns.
	killed := func() *Error {
		e := fail(int(syscall.ETIMEDOUT), fmt.Sprintf("CRIU killed: %v", context.Cause(ctx)))
		e.Err = context.Cause(ctx)
		return e
	}
	if ctx.Err() != nil {
		w.Close()
		e := fail(int(syscall.ETIMEDOUT), fmt.Sprintf("CRIU not started: %v", context.Cause(ctx)))
		e.Err = context.Cause(ctx)
		return nil, e
	}
	if w == nil {
		var err error
		if w, err = c.start(op, files); err != nil {
			return nil, fail(0, err.Error())
		}
	} else if w.used {
		return nil, fail(0, "criu: a worker serves one request")
	}
	w.used = true
	cln, cmd := w.cln, w.cmd
	defer func() {
		cln.Close()
		_ = cmd.Wait()
	}()
	// A read blocked on the socket returns when CRIU dies; make sure it does
	// when the context ends even if CRIU ignores the kill for a moment.
	stop := context.AfterFunc(ctx, func() {
		cmd.Process.Kill()
		cln.SetDeadline(time.Now())
	})
	defer stop()

	buf := make([]byte, 1<<16)
	var hookErr error
	for {
		b, err := req.MarshalVT()
		if err != nil {
			return nil, fail(0, err.Error())
		}
		if _, err := cln.Write(b); err != nil {
			return nil, fail(0, "writing to CRIU: "+err.Error())
		}
		n, err := cln.Read(buf)
		if err == nil && n == 0 {
			err = errors.New("CRIU exited")
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, killed()
			}
			if hookErr != nil {
				return nil, fail(0, hookErr.Error())
			}
			return nil, fail(0, "reading from CRIU: "+err.Error())
		}
		resp := &rpc.CriuResp{}
		if err := resp.UnmarshalVT(buf[:n]); err != nil {
			return nil, fail(0, "bad CRIU response: "+err.Error())
		}
		if !resp.GetSuccess() {
			if hookErr != nil {
				return nil, fail(int(resp.GetCrErrno()), hookErr.Error())
			}
			return nil, fail(int(resp.GetCrErrno()), resp.GetCrErrmsg())
		}
		if resp.GetType() != rpc.CriuReqType_NOTIFY {
			return resp, nil
		}
		ok := true
		if nfy != nil {
			if err := nfy(resp.GetNotify().GetScript(), int(resp.GetNotify().GetPid())); err != nil {
				// Answering "not successful" makes CRIU abort and undo; its
				// failure response then carries this error.
				hookErr = fmt.Errorf("%s hook: %w", resp.GetNotify().GetScript(), err)
				ok = false
			}
		}
		if ctx.Err() != nil {
			// Answering now would let CRIU go on (a dump could even
			// succeed) while it is being killed.
			return nil, killed()
		}
		req = &rpc.CriuReq{Type: rpc.CriuReqType_NOTIFY.Enum(), NotifySuccess: ptr(ok)}
	}
}

// logErrors returns the lines of a CRIU log that explain a failure: its error
// and warning lines (at most the last 12), else its last lines.
func logErrors(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var errs, tail []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.Contains(l, "rlimit: Can't setup RLIMIT_NOFILE") {
			continue // logged on every run here, harmless (ENVIRONMENT.md)
		}
		if strings.Contains(l, "Error") || strings.Contains(l, "Warn") {
			errs = append(errs, l)
		}
		tail = append(tail, l)
		if len(tail) > 6 {
			tail = tail[1:]
		}
	}
	if len(errs) == 0 {
		return tail
	}
	if len(errs) > 12 {
		errs = errs[len(errs)-12:]
	}
	return errs
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}

func openDir(dir string) (*os.File, error) { return os.Open(dir) }

func us(v uint32) time.Duration { return time.Duration(v) * time.Microsecond }

func ptr[T any](v T) *T { return &v }
