package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"dsmigrate/criu"
	"dsmigrate/internal/migration"
	"dsmigrate/internal/wire"
)

// Post-copy (migrate --post-copy): the process resumes on the target before
// its memory has arrived. CRIU's lazy pages do the work; the daemons relay
// their page-server protocol over a page connection of the migration's own,
// as pages.go relays a dump's page stream, with the roles turned round:
//
//	source: criu dump --lazy-pages, serving on a socketpair <-> daemon ==tPages/tPagesBack==
//	target: daemon <-> socketpair <-> criu lazy-pages <-> userfaultfd of the restored tree
//
// The target's lazy-pages sends requests (tPagesBack): one page for a fault,
// growing chunks in the background. The source's CRIU answers with pages
// (tPages). When every page is there lazy-pages closes the session; the
// source's CRIU then exits, leaving the tree stopped, and the source sends
// tPagesEnd; the target answers tPagesDone once lazy-pages has exited well.
//
// What the target must never do is let lazy-pages end while the tree still
// misses pages: the kernel would then fill them with zeros, silently. So the
// target's end of the socketpair is never closed while the tree lives (the
// shim holds a copy of it, in case this daemon dies), a broken stream kills
// the tree first, and lazy-pages only after it (docs/postcopy-research.md).

// lazyIdle bounds a page connection on which nothing is asked: the images,
// the restore and the commit come first, and the copy waits stopped.
var lazyIdle = migration.DefaultTimeouts.Restore

// lazyStream is what both ends share: the outcome, and the page bytes.
type lazyStream struct {
	pc    *wire.Conn
	wmu   sync.Mutex // serializes writes on pc
	local *net.UnixConn
	bytes atomic.Int64

	failure atomic.Pointer[error] // the first failure
	once    sync.Once
	done    chan struct{}
	err     error // valid once done is closed
}

func newLazyStream(pc *wire.Conn, local *net.UnixConn) *lazyStream {
	return &lazyStream{pc: pc, local: local, done: make(chan struct{})}
}

// finish settles the stream's outcome, once.
func (l *lazyStream) finish(err error) {
	l.once.Do(func() {
		if err != nil {
			l.failure.CompareAndSwap(nil, &err)
		}
		l.err = err
		close(l.done)
	})
}

func (l *lazyStream) fail(err error) { l.failure.CompareAndSwap(nil, &err) }

func (l *lazyStream) Failed() error {
	if p := l.failure.Load(); p != nil {
		return *p
	}
	return nil
}

func (l *lazyStream) Bytes() int64 { return l.bytes.Load() }

func (l *lazyStream) Complete() bool {
	select {
	case <-l.done:
		return l.err == nil
	default:
		return false
	}
}

func (l *lazyStream) Wait(ctx context.Context) error {
	select {
	case <-l.done:
		return l.err
	case <-ctx.Done():
		return fmt.Errorf("the last page did not arrive in time: %w", context.Cause(ctx))
	}
}

func (l *lazyStream) write(typ byte, p []byte, d time.Duration) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.pc.SetWriteDeadline(time.Now().Add(d))
	return l.pc.WriteMsg(typ, p)
}

// lazySource is the source's end: CRIU serving the stopped tree's memory.
type lazySource struct {
	*lazyStream
	cancel   context.CancelFunc // kills CRIU: the last resort
	dumpDone chan struct{}
	dumpErr  error
	stopOnce sync.Once
}

func (*lazySource) PID() int { return 0 }

func (k checkpointer) DumpLazy(ctx context.Context, c migration.Conn, pid int, dir string, tcp bool) (migration.Lazy, *migration.DumpResult, error) {
	pc, err := wireConn(c)
	if err != nil {
		return nil, nil, err
	}
	w, local, criuEnd, err := k.d.takeDump()
	if err != nil {
		return nil, nil, err
	}
	// CRIU serves for as long as the target needs pages: it is ended by
	// its socket (Stop), not by the step's or the request's context; the
	// migration's deadline still bounds it (without one CRIU's default
	// would, which is shorter than a large move).
	var cctx context.Context
	var cancel context.CancelFunc
	if dl, ok := ctx.Deadline(); ok {
		cctx, cancel = context.WithDeadline(context.WithoutCancel(ctx), dl)
	} else {
		cctx, cancel = context.WithCancel(context.WithoutCancel(ctx))
	}
	s := &lazySource{lazyStream: newLazyStream(pc, local), cancel: cancel, dumpDone: make(chan struct{})}
	ready := make(chan struct{})
	t := time.Now()
	go func() {
		_, err := k.d.criu.Dump(cctx, criu.DumpOpts{Pid: pid, ImagesDir: dir, TCPEstablished: tcp, LeaveStopped: true,
			Lazy: criuEnd, Worker: w, Ready: func() error { close(ready); return nil }})
		criuEnd.Close() // the last copy but CRIU's: the relay sees EOF
		s.dumpErr = err
		close(s.dumpDone)
	}()
	select {
	case <-ready:
	case <-s.dumpDone:
		local.Close()
		cancel()
		return nil, &migration.DumpResult{Died: diedInDump(pid)}, s.dumpErr
	}
	k.d.log.Info("lazy dump ready", "pid", pid, "took", time.Since(t))
	relayed := make(chan struct{})
	go func() { s.toTarget(); close(relayed) }()
	go s.fromTarget()
	go func() {
		<-s.dumpDone
		<-relayed
		if s.dumpErr != nil {
			err := fmt.Errorf("CRIU serving the pages: %w", s.dumpErr)
			s.wmu.Lock()
			s.pc.SetWriteDeadline(time.Now().Add(time.Second))
			s.pc.WriteError(err)
			s.wmu.Unlock()
			s.finish(err)
			return
		}
		if err := s.write(tPagesEnd, nil, stallTimeout); err != nil {
			s.finish(err)
			return
		}
	}()
	return s, &migration.DumpResult{}, nil
}

// toTarget sends CRIU's replies to the target until CRIU has gone. It reads
// CRIU's socket to its end whatever happens to the target, so that CRIU
// never fails a write (it would then count the dump as failed).
func (s *lazySource) toTarget() {
	buf := make([]byte, pageChunk)
	broken := false
	for {
		n, rerr := s.local.Read(buf)
		if n > 0 && !broken {
			if err := s.write(tPages, buf[:n], stallTimeout); err != nil {
				s.fail(fmt.Errorf("sending pages: %v", err))
				broken = true
			} else {
				s.bytes.Add(int64(n))
			}
		}
		if rerr != nil {
			return
		}
	}
}

// fromTarget hands lazy-pages's requests to CRIU until the target reports
// every page there. That word comes once the target has journaled it, which
// is after the commit and the resume (a DSM rank's resume hook included)
// when the last page came before them: the page connection may be quiet
// that long, and longer before the restore.
func (s *lazySource) fromTarget() {
	for {
		s.pc.SetReadDeadline(time.Now().Add(lazyIdle))
		typ, p, err := s.pc.ReadMsg()
		if err != nil {
			s.finish(fmt.Errorf("page connection: %v", err))
			return
		}
		switch typ {
		case tPagesBack:
			// A failed write means CRIU has gone; its result says why.
			s.local.Write(p)
		case tPagesDone:
			s.finish(nil)
			return
		case wire.TypeError:
			s.finish(s.pc.DecodeError(p))
			return
		default:
			s.finish(fmt.Errorf("unexpected message %d on the page connection", typ))
			return
		}
	}
}

// Stop ends CRIU's session: at the end of its socket it stops serving and
// lets go of the tree, which stays stopped (it found it so).
func (s *lazySource) Stop() {
	s.stopOnce.Do(func() {
		s.local.CloseWrite()
		select {
		case <-s.dumpDone:
		case <-time.After(pagesWindDown):
			s.cancel()
			<-s.dumpDone
		}
		s.local.Close()
		s.cancel()
		s.finish(errors.New("the migration was called off"))
	})
}

// lazyTarget is the target's end: lazy-pages feeding the restored tree.
type lazyTarget struct {
	*lazyStream
	lp    *criu.LazyPages
	hold  *os.File    // a copy of local for the shim (Restore), closed once it has it
	asked atomic.Bool // lazy-pages has asked for a page
	stop  sync.Once

	// smu orders the requests to the source as pf recorded them: held
	// from pf's answer through its write. pmu guards pf.
	smu  sync.Mutex
	pmu  sync.Mutex
	pf   *prefetch     // between lazy-pages and the source (prefetch.go)
	wake chan struct{} // replies for lazy-pages may be ready
	// lmu keeps the replies to lazy-pages in pf's order: held from pf.pop
	// through the write.
	lmu sync.Mutex
	log *slog.Logger
}

func (t *lazyTarget) PID() int { return t.lp.PID() }

func (k checkpointer) ServeLazy(ctx context.Context, c migration.Conn, dir string) (migration.Lazy, error) {
	pc, err := wireConn(c)
	if err != nil {
		return nil, err
	}
	local, criuEnd, err := pageSocket()
	if err != nil {
		return nil, err
	}
	hold, err := local.File() // a dup: same socket, for the shim
	if err != nil {
		local.Close()
		criuEnd.Close()
		return nil, fmt.Errorf("page socket: %v", err)
	}
	lp, err := k.d.criu.StartLazyPages(dir, criuEnd)
	criuEnd.Close()
	if err != nil {
		local.Close()
		hold.Close()
		return nil, err
	}
	t := &lazyTarget{lazyStream: newLazyStream(pc, local), lp: lp, hold: hold,
		pf: newPrefetch(), wake: make(chan struct{}, 1), log: k.d.log}
	go t.fromSource()
	go t.toSource()
	go t.toLazyPages()
	go func() {
		// The runs to prefetch; until they are read lazy-pages's requests
		// are only relayed, and if they cannot be, that is all.
		plan, err := criu.LazyRanges(dir)
		if err != nil {
			k.d.log.Warn("post-copy without prefetching", "images", dir, "err", err)
			plan = nil
		}
		t.smu.Lock()
		defer t.smu.Unlock()
		t.pmu.Lock()
		req := t.pf.setPlan(plan)
		t.pmu.Unlock()
		t.ask(req)
	}()
	go func() {
		<-lp.Done()
		if err := lp.Err(); err != nil {
			t.finish(fmt.Errorf("lazy-pages: %w", err))
		}
	}()
	return t, nil
}

// toSource sends lazy-pages's requests that prefetched pages do not answer
// to the source, with prefetches, until lazy-pages has gone; the replies
// that prefetched pages make, it hands over itself (a handoff to
// toLazyPages for each of the ~25000 requests of a GiB cost a goroutine
// wakeup each).
func (t *lazyTarget) toSource() {
	buf := make([]byte, 64<<10)
	for {
		n, rerr := t.local.Read(buf)
		if n > 0 {
			t.asked.Store(true)
			t.smu.Lock()
			t.pmu.Lock()
			req := t.pf.fromLazy(buf[:n])
			t.pmu.Unlock()
			ok := t.ask(req)
			t.smu.Unlock()
			if !ok || !t.handOver() {
				return
			}
		}
		if rerr != nil {
			return
		}
	}
}

// ask sends requests to the source's CRIU.
func (t *lazyTarget) ask(req []byte) bool {
	if len(req) == 0 {
		return true
	}
	if err := t.write(tPagesBack, req, stallTimeout); err != nil {
		t.finish(fmt.Errorf("asking the source for pages: %v", err))
		return false
	}
	return true
}

func (t *lazyTarget) kick() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// toLazyPages hands lazy-pages its replies as the source's pages complete
// them. Never shut or closed here: lazy-pages must not see an end.
func (t *lazyTarget) toLazyPages() {
	for {
		select {
		case <-t.wake:
		case <-t.done:
			return
		}
		if !t.handOver() {
			return
		}
	}
}

// handOver writes the replies lazy-pages is owed that are complete, in the
// order it asked; false if lazy-pages's socket failed.
func (t *lazyTarget) handOver() bool {
	t.lmu.Lock()
	defer t.lmu.Unlock()
	for {
		t.pmu.Lock()
		b := t.pf.pop()
		t.pmu.Unlock()
		if b == nil {
			return true
		}
		if _, err := b.WriteTo(t.local); err != nil {
			t.finish(fmt.Errorf("handing pages to lazy-pages: %v", err))
			return false
		}
	}
}

// fromSource hands the source's pages to lazy-pages. Once lazy-pages asks,
// pages must keep coming: a stream that stalls for stallTimeout fails.
func (t *lazyTarget) fromSource() {
	for {
		idle := lazyIdle
		if t.asked.Load() {
			idle = stallTimeout
		}
		t.pc.SetReadDeadline(time.Now().Add(idle))
		typ, p, err := t.pc.ReadMsg()
		if err != nil {
			t.finish(fmt.Errorf("page connection: %v", err))
			return
		}
		switch typ {
		case tPages:
			t.bytes.Add(int64(len(p)))
			t.smu.Lock()
			t.pmu.Lock()
			req, err := t.pf.fromSource(p)
			t.pmu.Unlock()
			if err != nil {
				t.smu.Unlock()
				t.finish(err)
				return
			}
			t.kick()
			ok := t.ask(req)
			t.smu.Unlock()
			if !ok {
				return
			}
		case tPagesEnd:
			// The source's CRIU has closed the session: lazy-pages had
			// every page and is exiting.
			select {
			case <-t.lp.Done():
			case <-time.After(pagesWindDown):
				t.finish(errors.New("lazy-pages did not finish after the source ended its stream"))
				return
			}
			if err := t.lp.Err(); err != nil {
				t.finish(fmt.Errorf("lazy-pages: %w", err))
				return
			}
			// Every page is here: the engine journals it, then says so
			// (Confirm). lazy-pages has gone: its socket may go too.
			t.local.Close()
			t.pmu.Lock()
			st := t.pf.stats
			t.pmu.Unlock()
			t.log.Info("post-copy pages", "lazy_pages", t.lp.PID(), "answered_from_prefetch", st.Hits,
				"relayed", st.Forwarded, "prefetches", st.Prefetched, "dropped", st.Dropped,
				"faults", st.Faults, "faults_answered_from_prefetch", st.FaultHits)
			t.finish(nil)
			return
		case wire.TypeError:
			t.finish(t.pc.DecodeError(p))
			return
		default:
			t.finish(fmt.Errorf("unexpected message %d on the page connection", typ))
			return
		}
	}
}

// Confirm tells the source that every page is here.
func (t *lazyTarget) Confirm() error { return t.write(tPagesDone, nil, stallTimeout) }

// Confirm is the target's; the source has nothing to confirm.
func (*lazySource) Confirm() error { return nil }

// Stop kills lazy-pages: the tree it served must be gone.
func (t *lazyTarget) Stop() {
	t.stop.Do(func() {
		t.lp.Kill()
		<-t.lp.Done()
		t.local.Close()
		t.hold.Close()
		t.finish(errors.New("stopped"))
	})
}

// holdFile is the copy of the page socket the shim of the restored tree
// keeps (shim.RestoreSpec.Hold); nil without lazy.
func holdFile(lazy migration.Lazy) *os.File {
	if t, ok := lazy.(*lazyTarget); ok {
		return t.hold
	}
	return nil
}

// StopLazy kills a lazy-pages a daemon before a restart started for the
// images in dir, if it runs still (its pid may be another process's by now:
// its command line says).
func (k checkpointer) StopLazy(pid int, dir string) error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil // gone
	}
	// CRIU may run through a loader (scripts/install-deps.sh's wrapper):
	// its arguments are somewhere in the command line.
	args := strings.Split(string(b), "\x00")
	if !slices.Contains(args, "lazy-pages") || !slices.Contains(args, dir) {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
		return fmt.Errorf("stopping lazy-pages %d: %v", pid, err)
	}
	return nil
}
