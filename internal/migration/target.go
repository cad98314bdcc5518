package migration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// inMig is a migration this daemon receives, while it runs.
type inMig struct {
	e *Engine
	r *Record
	b *Begin
	c Conn // nil in recovery

	pw   *pageWait // post-copy: where the page connection arrives
	pc   Conn      // post-copy: the page connection, once it has
	lazy Lazy      // post-copy: lazy-pages, from the restore on (nil in recovery)
	lost error     // post-copy: why the process was lost (lose ran)

	logPath string
	pages   int64
	rules   string
	netDur  time.Duration
	t0      time.Time
	pid     int
	done    Done
	hooked  bool // rebind ran the resume hook
}

// In receives the process the source daemon offers with b over c, restores
// it here (stopped), and resumes it once the source has committed. Any
// failure before the restore is reported undoes everything here; once
// reported, only the source's decision settles it (commit message or
// outcome question), however long that takes.
func (e *Engine) In(ctx context.Context, c Conn, b *Begin) error {
	if !ValidID(b.ID) || !ValidID(b.Mig) || b.Name == "" || len(b.Argv) == 0 || len(b.Argv) > 4096 ||
		!strings.HasPrefix(b.PipeKey, "pipe:[") || b.Source == "" {
		err := errors.New("malformed migration request")
		sendError(c, err)
		return err
	}
	r := &Record{Mig: b.Mig, Side: SideTarget, ProcID: b.ID, Peer: b.Source, MoveIP: b.MoveIP, PostCopy: b.PostCopy,
		Begin: b, Start: time.Now()}
	e.mu.Lock()
	_, dup := e.migs[b.Mig]
	e.mu.Unlock()
	if dup {
		err := fmt.Errorf("migration %s is known here already", b.Mig)
		sendError(c, err)
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, e.t.Total)
	defer cancel()
	m := &inMig{e: e, r: r, b: b, c: c}
	if err := e.runSteps(ctx, r, m.steps()); err != nil {
		m.releasePageConn()
		sendError(c, err)
		e.forget(r)
		e.log.Warn("incoming migration failed", "id", b.ID, "from", b.Source, "err", err)
		e.refusedArrival(r) // metrics (arrival.go)
		return err
	}
	m.forward(ctx)
	return nil
}

// steps are the target's steps up to the source's decision.
func (m *inMig) steps() []step {
	s := []step{{name: "accept", do: m.accept, undo: m.unaccept}}
	if !m.r.PostCopy {
		s = append(s, step{name: "pages", do: m.recvPages})
	}
	s = append(s,
		step{name: "images", do: m.recvImages},
		step{name: "await-restore", do: m.awaitRestore},
	)
	if m.r.MoveIP != "" {
		s = append(s, step{name: "net", do: m.net, undo: m.unnet})
	}
	return append(s,
		step{name: "restore", do: m.restore, undo: m.unrestore},
		step{name: "await-commit", do: m.awaitCommit, pivot: true},
	)
}

// forwardSteps follow a committed migration. After a post-copy commit the
// process resumes at once and its memory goes on arriving (pages).
func (m *inMig) forwardSteps() []step {
	if m.r.PostCopy {
		return []step{
			{name: "resume", do: m.resume},
			{name: "rebind", do: m.rebind},
			{name: "pages", do: m.pagesDone},
			{name: "cleanup", do: m.cleanup},
		}
	}
	return []step{
		{name: "resume", do: m.resume},
		{name: "rebind", do: m.rebind},
		{name: "cleanup", do: m.cleanup},
	}
}

// afterRestart are the steps a restarted daemon runs for a committed
// migration, from the step journaled: a post-copy arrival whose pages were
// still coming is lost (the dead daemon relayed them), so it is killed
// rather than resumed; its faults wait for its pages meanwhile (the shim
// holds lazy-pages's socket open).
func (m *inMig) afterRestart() []step {
	if !m.r.PostCopy || m.r.PagesDone {
		return m.forwardSteps()
	}
	return []step{
		{name: "lose", do: func(ctx context.Context) error {
			return m.lose(ctx, "the daemon restarted while its memory was arriving")
		}},
		{name: "cleanup", do: m.cleanup},
	}
}

// lose kills a post-copy arrival whose memory cannot all arrive: the tree
// first, whose faults wait for pages, then lazy-pages (killed first, it
// would leave the missing pages to be read as zeros). It notes the loss
// (m.lost, and for the source's question) and returns an error only if it
// could not do it, so that a step calling it is tried again.
func (m *inMig) lose(ctx context.Context, why string) error {
	if m.lost != nil {
		return nil
	}
	err := m.e.cfg.Procs.Lose(ctx, m.r.ProcID, why)
	if err != nil {
		return err
	}
	if m.lazy != nil {
		m.lazy.Stop()
	} else if m.r.LazyPID > 0 {
		if err := m.e.cfg.CRIU.StopLazy(m.r.LazyPID, m.r.Images); err != nil {
			return err
		}
	}
	m.lost = errors.New("the process was LOST: " + why)
	m.e.notePages(m.r.Mig, PagesLost)
	m.e.log.Error("post-copy: the process was lost", "id", m.r.ProcID, "mig", m.r.Mig, "why", why)
	return nil
}

// pagesDone waits until the last page of a post-copy arrival is here, and
// journals it: a restart after that keeps the process.
func (m *inMig) pagesDone(ctx context.Context) error {
	if m.lazy == nil {
		if m.r.PagesDone {
			m.e.notePages(m.r.Mig, PagesComplete) // for a source that asks
			return nil
		}
		return m.lose(ctx, "the daemon restarted while its memory was arriving")
	}
	if m.lost != nil {
		return nil
	}
	if err := m.lazy.Wait(ctx); err != nil {
		return m.lose(ctx, fmt.Sprintf("its memory could not all arrive from %s: %v", m.r.Peer, err))
	}
	// Journaled before the source hears it: a restart after the word
	// went out must not lose the copy the source has let go of.
	if err := m.e.save(m.r, func(r *Record) { r.PagesDone = true }); err != nil {
		return err
	}
	m.e.notePages(m.r.Mig, PagesComplete)
	if err := m.lazy.Confirm(); err != nil {
		// Every page is here; the source, not hearing it, asks
		// (AskPages) and learns it.
		m.e.log.Warn("post-copy: telling the source the last page arrived", "mig", m.r.Mig, "err", err)
	}
	return nil
}

// releasePageConn lets HandlePeer close the page connection once the
// migration is over with it (taken or not).
func (m *inMig) releasePageConn() {
	if m.pw == nil {
		return
	}
	m.pw.once.Do(func() {
		m.e.mu.Lock()
		delete(m.e.pageConns, m.r.Mig)
		m.e.mu.Unlock()
		close(m.pw.released)
	})
}

// accept reserves the process's ID here (so two migrations of one process
// cannot cross) and a directory for its images.
func (m *inMig) accept(ctx context.Context) error {
	if m.r.MoveIP != "" {
		// An address this host holds already is its own: the undo of a
		// failed move would delete it (the source's loopback or its own
		// address arriving here would take this host's).
		if held, err := m.e.cfg.Net.HasAddr(m.r.MoveIP); err != nil {
			return err
		} else if held {
			return fmt.Errorf("this host holds %s already, so it cannot arrive here: move an address no other "+
				"host holds", m.r.MoveIP)
		}
		iface, err := m.e.cfg.Net.Iface(m.r.MoveIP)
		if err != nil {
			return err
		}
		if err := m.e.save(m.r, func(r *Record) { r.Iface = iface }); err != nil {
			return err
		}
	}
	logPath, err := m.e.cfg.Procs.Reserve(m.b)
	if err != nil {
		return err
	}
	m.logPath = logPath
	dir, err := m.e.cfg.CRIU.ImagesDir(m.b.ID + "-in-" + m.r.Mig)
	if err != nil {
		return err
	}
	if err := m.e.save(m.r, func(r *Record) { r.Images = dir }); err != nil {
		return err
	}
	if m.r.PostCopy {
		m.pw = &pageWait{ch: make(chan Conn, 1), released: make(chan struct{})}
		m.e.mu.Lock()
		m.e.pageConns[m.r.Mig] = m.pw
		m.e.mu.Unlock()
	}
	return send(ctx, m.c, m.e.t.Dial, tAccept, struct{}{})
}

// pageConn waits for the source's page connection (it opens it right after
// the accept; HandlePeer accepts it).
func (m *inMig) pageConn(ctx context.Context) error {
	if m.pc != nil {
		return nil
	}
	t := time.NewTimer(m.e.t.Dial)
	defer t.Stop()
	select {
	case m.pc = <-m.pw.ch:
	case <-t.C:
		return errors.New("the source's page connection never came")
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

func (m *inMig) unaccept(ctx context.Context) error {
	err := m.e.cfg.Procs.Discard(ctx, m.r.ProcID)
	if m.r.Images != "" {
		err = errors.Join(err, m.e.cfg.CRIU.RemoveImages(m.r.Images))
	}
	return err
}

func (m *inMig) recvPages(ctx context.Context) error {
	n, err := m.e.cfg.CRIU.ReceivePages(ctx, m.c, m.r.Images)
	m.pages = n
	return err
}

func (m *inMig) recvImages(ctx context.Context) error {
	return m.e.cfg.CRIU.ReceiveImages(ctx, m.c, m.r.Images, m.logPath, m.pages)
}

func (m *inMig) awaitRestore(ctx context.Context) error {
	var rm RestoreMsg
	if err := recv(ctx, m.c, m.e.t.Stall, tRestore, &rm); err != nil {
		return err
	}
	m.rules = rm.Lock
	m.t0 = time.Now()
	return nil
}

// net takes the address over: CRIU's lock first (the connections must not
// see the address before their sockets exist), then the address, announced
// at once.
func (m *inMig) net(ctx context.Context) error {
	table, err := m.e.cfg.Net.CheckLock(m.rules)
	if err != nil {
		return err
	}
	if err := m.e.save(m.r, func(r *Record) { r.Lock = table }); err != nil {
		return err
	}
	if err := m.e.cfg.Net.ImportLock(m.rules); err != nil {
		return err
	}
	if err := m.e.cfg.Net.AddAddr(m.r.Iface, m.r.MoveIP); err != nil {
		return err
	}
	m.e.cfg.Net.Announce(m.r.Iface, strings.Split(m.r.MoveIP, "/")[0])
	m.netDur = time.Since(m.t0)
	return nil
}

func (m *inMig) unnet(ctx context.Context) error {
	var errs []error
	if m.r.Iface != "" {
		errs = append(errs, m.e.cfg.Net.DelAddr(m.r.Iface, m.r.MoveIP))
	}
	if m.r.Lock != "" {
		errs = append(errs, m.e.cfg.Net.DeleteLock(m.r.Lock))
	}
	return errors.Join(errs...)
}

func (m *inMig) restore(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, m.e.t.Restore)
	defer cancel()
	if m.r.PostCopy {
		if err := m.pageConn(rctx); err != nil {
			return err
		}
		// Started on the migration's context: it serves the process
		// after this step, until its last page is here.
		lazy, err := m.e.cfg.CRIU.ServeLazy(ctx, m.pc, m.r.Images)
		if err != nil {
			return err
		}
		m.lazy = lazy
		if err := m.e.save(m.r, func(r *Record) { r.LazyPID = lazy.PID() }); err != nil {
			return err
		}
	}
	pid, err := m.e.cfg.Procs.Restore(rctx, m.b, m.r.Images, m.lazy)
	if err != nil {
		return err
	}
	m.pid = pid
	return nil
}

// unrestore discards the restored copy. With an address moved here, the
// address goes first (unnet removes it again, harmlessly): while both hosts
// hold it for a moment, a packet that reached this host after the copy died
// would be answered with a reset, ending the connection the source's copy
// resumes with.
func (m *inMig) unrestore(ctx context.Context) error {
	if m.r.Iface != "" {
		if err := m.e.cfg.Net.DelAddr(m.r.Iface, m.r.MoveIP); err != nil {
			return err
		}
	}
	if err := m.e.cfg.Procs.Discard(ctx, m.r.ProcID); err != nil {
		return err
	}
	// lazy-pages after the copy it served (never before: faults would
	// read zeros).
	if m.lazy != nil {
		m.lazy.Stop()
	} else if m.r.LazyPID > 0 {
		return m.e.cfg.CRIU.StopLazy(m.r.LazyPID, m.r.Images)
	}
	return nil
}

// awaitCommit reports the restore and waits for the source's decision. From
// the moment the report may have left, this side cannot decide alone: a
// broken connection says nothing about whether the source committed (even a
// failed write may have delivered the report). So on any failure it asks
// the source, until the source answers.
func (m *inMig) awaitCommit(ctx context.Context) error {
	if m.c != nil {
		err := send(ctx, m.c, m.e.t.Commit, tRestored, &Restored{PID: m.pid, Restore: time.Since(m.t0) - m.netDur, Net: m.netDur})
		if err == nil {
			err = recv(ctx, m.c, m.e.t.Commit+m.e.t.Restore, tCommit, nil)
		}
		if err == nil {
			return nil
		}
		m.e.log.Warn("no commit from the source: asking it how the migration ended", "id", m.r.ProcID,
			"source", m.r.Peer, "err", err)
	}
	switch o := m.e.ask(m.r); o {
	case Committed:
		m.e.log.Info("the source committed: resuming here", "id", m.r.ProcID, "mig", m.r.Mig)
		return nil
	default:
		return fmt.Errorf("the source did not commit (it says: %s)", o)
	}
}

// ask asks the source how r ended until it answers. It does not give up: the
// restored copy here must neither run nor go until the source has said
// whether its own copy went.
func (e *Engine) ask(r *Record) string {
	pause := e.t.AskPause
	for n := 1; ; n++ {
		o, err := e.askOnce(r)
		if err == nil {
			return o
		}
		if n == 1 || n%20 == 0 {
			e.log.Warn("cannot ask the source how a migration ended; still asking", "id", r.ProcID, "mig", r.Mig,
				"source", r.Peer, "tries", n, "err", err)
		}
		e.cfg.Sleep(context.Background(), pause)
		pause = min(2*pause, 30*time.Second)
	}
}

// AskPages asks the target of post-copy migration r whether its copy got
// every page (PagesComplete) or was lost (PagesLost), until it knows or for
// at most twice the stall bound (a target decides within one: its stream
// stalls or ends). Anything else it returns says why it does not know.
func (e *Engine) AskPages(r *Record) string {
	var waited time.Duration // counted, not measured: Sleep may be a model's
	pause := e.t.AskPause
	for {
		o, err := e.askOnceType(r, tPagesQuery, tPagesAnswer)
		switch {
		case err == nil && (o == PagesComplete || o == PagesLost):
			return o
		case err == nil && o == Unknown:
			return "it no longer knows the migration"
		case waited >= 2*e.t.Stall:
			if err != nil {
				return "unreachable: " + err.Error()
			}
			return "still " + o
		}
		e.cfg.Sleep(context.Background(), pause)
		waited += pause
		pause = min(2*pause, 5*time.Second)
	}
}

func (e *Engine) askOnce(r *Record) (string, error) {
	o, err := e.askOnceType(r, tOutcome, tOutcomeReply)
	if err != nil {
		return "", err
	}
	switch o {
	case Committed, Aborted, Unknown:
		return o, nil
	}
	return "", fmt.Errorf("bad outcome answer %q", o)
}

// askOnceType asks r's peer the question typ about r and returns its answer
// (of type ans).
func (e *Engine) askOnceType(r *Record, typ, ans byte) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), e.t.Ask)
	defer cancel()
	c, err := e.cfg.Peers.Dial(ctx, r.Peer)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := send(ctx, c, e.t.Ask, typ, &OutcomeMsg{Mig: r.Mig}); err != nil {
		return "", err
	}
	var a OutcomeMsg
	if err := recv(ctx, c, e.t.Ask, ans, &a); err != nil {
		return "", err
	}
	return a.Outcome, nil
}

// resume continues the restored copy and registers it here; a post-copy
// copy whose page stream is known to have broken is lost instead (it must
// not run on missing memory).
func (m *inMig) resume(ctx context.Context) error {
	if m.lazy != nil && m.lost == nil {
		if err := m.lazy.Failed(); err != nil {
			m.lose(ctx, fmt.Sprintf("its page stream from %s broke before it resumed: %v", m.r.Peer, err))
		}
	}
	if m.lost != nil {
		return nil // the pages step reports it
	}
	return m.e.cfg.Procs.Activate(ctx, m.b)
}

// rebind runs a migration-aware process's resume hook (moved) and tells the
// source the process runs here.
//
// The hook is not idempotent: tried again (the step failed after it), it is
// not run again by this daemon. A daemon that restarts between the hook and
// the next step's journal write runs it once more.
func (m *inMig) rebind(ctx context.Context) error {
	var err error
	if m.b.Hooks && m.b.MoveIP == "" && !m.hooked && m.lost == nil {
		m.hooked = true
		t := time.Now()
		hctx, cancel := context.WithTimeout(ctx, m.e.t.Prepare)
		err = m.e.cfg.Procs.Hook(hctx, m.r.ProcID, "resume", true)
		cancel()
		m.done.Rebind = time.Since(t)
		if err != nil {
			m.done.RebindErr = err.Error()
		}
	}
	if m.c != nil {
		send(ctx, m.c, m.e.t.Commit, tDone, &m.done)
	}
	return err
}

// cleanup removes the lock (normally gone already: the restore removes it)
// and the images.
func (m *inMig) cleanup(ctx context.Context) error { return m.e.cleanup(m.r) }

// forward runs the steps after the commit and forgets the migration once
// they are all done (perhaps later, in the background: forwardSteps).
func (m *inMig) forward(ctx context.Context) {
	// The page connection stays until the steps are done, in the
	// background if they go on there.
	errs := m.e.forwardSteps(ctx, m.r, m.forwardSteps(), "", func() {
		m.releasePageConn()
		m.e.forget(m.r)
	})
	m.e.log.Info("restored", "id", m.r.ProcID, "pid", m.pid, "from", m.r.Peer)
	m.arrived(errs) // metrics (arrival.go)
}
