package migration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"dsmigrate/internal/api"
)

// Request is a migration to send.
type Request struct {
	ID     string // the process
	To     string // the target daemon, ADDR:PORT
	MoveIP string // an address (CIDR) to move with the process, or ""
	// PostCopy resumes the process on the target before its memory has
	// arrived: the downtime no longer grows with memory, but should the
	// source or the link fail before the last page arrived, the process
	// is lost (it cannot run on with pages missing, nor go back).
	PostCopy bool
}

// NewID returns a fresh random ID (12 hex digits), as processes and
// migrations have.
func NewID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// outMig is a migration this daemon sends, while it runs.
type outMig struct {
	e     *Engine
	r     *Record
	p     Proc
	c     Conn // nil in recovery
	hist  *api.MigrationRec
	event func(api.Event)

	pc   Conn // post-copy: the page connection (nil in recovery)
	lazy Lazy // post-copy: CRIU serving pages over pc, from the dump on

	rules     string    // the network lock, exported for the target
	dumpAt    time.Time // the process stopped (freeze began)
	resumeAt  time.Time
	runningAt time.Time // the target said the process runs there
	thawedAt  time.Time // after a failure: the process runs here again
	lastPage  time.Time // post-copy: the last page reached the target
	pagesErr  error     // post-copy: why the last page did not (surely) arrive
	done      Done

	meter meter      // what the progress reports say
	evMu  sync.Mutex // one event at a time
}

func (m *outMig) phase(name string, d time.Duration, info string) {
	ev := api.Event{Phase: name, Dur: d, Info: info}
	if m.hist != nil {
		m.hist.Phases = append(m.hist.Phases, ev)
	}
	m.emit(ev)
}

// emit passes ev to the client's event function, one event at a time (the
// steps and the progress reports both send).
func (m *outMig) emit(ev api.Event) {
	if m.event == nil {
		return
	}
	m.evMu.Lock()
	defer m.evMu.Unlock()
	m.event(ev)
}

// Out moves process req.ID to the daemon at req.To and returns the record
// of the migration. The steps (outMig.steps) run in order, each journaled
// before it begins; any failure before the commit undoes them, so that the
// process runs here as before, and the error says so. Once committed the
// process runs on the target, whatever happens after: later failures only
// show in the record's Outcome.
func (e *Engine) Out(ctx context.Context, req Request, event func(api.Event)) (*api.MigrationRec, error) {
	if req.To == "" {
		return nil, errors.New("no target: migrate ID --to ADDR:PORT")
	}
	if _, _, err := net.SplitHostPort(req.To); err != nil {
		return nil, fmt.Errorf("bad target %q: want ADDR:PORT", req.To)
	}
	r := &Record{Mig: NewID(), Side: SideSource, ProcID: req.ID, Peer: req.To, MoveIP: req.MoveIP, PostCopy: req.PostCopy,
		Start: time.Now()}
	if req.MoveIP != "" {
		iface, err := e.cfg.Net.Iface(req.MoveIP)
		if err != nil {
			return nil, err
		}
		// What the undo puts back, exactly (scope, flags, label...): the
		// CIDR alone would come back with scope global and a computed
		// broadcast. Saved here, before any step, the first journal write
		// keeps it.
		saved, err := e.cfg.Net.SaveAddr(iface, req.MoveIP)
		if err != nil {
			return nil, fmt.Errorf("--move-ip %s: %w", req.MoveIP, err)
		}
		r.Iface, r.Saved = iface, saved
	}
	// The steps run on a context the caller cannot cancel; its cancel is
	// heeded between them, up to the commit (stopped).
	caller := ctx
	ctx, cancel := context.WithTimeoutCause(withStop(context.WithoutCancel(ctx), caller), e.t.Total,
		fmt.Errorf("the migration took longer than %v", e.t.Total))
	defer cancel()
	m := &outMig{e: e, r: r, event: event,
		hist: &api.MigrationRec{From: e.cfg.Self, To: req.To, MoveIP: req.MoveIP, PostCopy: req.PostCopy, Start: r.Start}}
	if event != nil {
		defer report(&m.meter, e.t.Progress, m.emit)()
	}
	steps := m.steps()
	err := e.runSteps(ctx, r, metered(&m.meter, steps))
	if m.c != nil {
		defer m.c.Close()
	}
	if err != nil {
		if m.pc != nil {
			m.pc.Close()
		}
		return nil, m.failed(steps, err)
	}
	// The page connection and CRIU's session go with the steps that use
	// them (pages, kill), which may go on in the background.
	m.forward(ctx, metered(&m.meter, m.forwardSteps()))
	return m.hist, nil
}

// steps are the source's steps up to and including the commit. Which of
// them there are depends only on the record, so that a restarted daemon
// builds the same list from its journal.
func (m *outMig) steps() []step {
	s := []step{
		{name: "claim", do: m.claim, undo: m.unclaim},
		{name: "connect", do: m.connect, undo: m.disconnect},
		{name: "prepare", do: m.prepare, undo: m.unprepare},
		{name: "freeze", do: m.freeze, undo: m.thaw},
		{name: "dump", do: m.dumpStep, undo: m.undump},
		{name: "transfer", do: m.transfer},
	}
	if m.r.MoveIP != "" {
		s = append(s, step{name: "move-ip", do: m.moveIP, undo: m.unmoveIP})
	}
	return append(s,
		step{name: "restore", do: m.restore},
		step{name: "commit", do: m.commit, pivot: true},
	)
}

// forwardSteps follow the commit: no undo, and a restarted daemon finishes
// them. After a post-copy commit the target resumes first and the source's
// stopped tree goes only once it has served the last page.
func (m *outMig) forwardSteps() []step {
	if m.r.PostCopy {
		return []step{
			{name: "confirm", do: m.confirm, once: true},
			{name: "pages", do: m.pagesDone},
			{name: "kill", do: m.killServed},
			{name: "cleanup", do: m.cleanup, later: true},
		}
	}
	return []step{
		{name: "kill", do: m.kill},
		{name: "confirm", do: m.confirm, once: true},
		{name: "cleanup", do: m.cleanup, later: true},
	}
}

func (m *outMig) claim(ctx context.Context) error {
	p, err := m.e.cfg.Procs.Claim(m.r.ProcID)
	if err != nil {
		return err
	}
	m.p = p
	m.meter.expect(p.Memory)
	m.hist.ID, m.hist.Name, m.hist.Job, m.hist.Rank, m.hist.UID = p.ID, p.Name, p.Job, p.Rank, p.Owner.UID
	return m.e.save(m.r, func(r *Record) { r.PID, r.Hooks, r.UID = p.PID, p.Hooks && r.MoveIP == "", p.Owner.UID })
}

func (m *outMig) unclaim(ctx context.Context) error { return m.e.cfg.Procs.Unclaim(m.r.ProcID) }

// connect reaches and authenticates the target and has it reserve the
// process, before anything touches the process.
func (m *outMig) connect(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, m.e.t.Dial)
	defer cancel()
	c, err := m.e.cfg.Peers.Dial(dctx, m.r.Peer)
	if err != nil {
		return fmt.Errorf("target %s unreachable: %w", m.r.Peer, err)
	}
	m.c = c
	m.meter.add(c)
	p := m.p
	b := &Begin{Mig: m.r.Mig, ID: p.ID, Name: p.Name, Argv: p.Argv, PipeKey: p.PipeKey, MoveIP: m.r.MoveIP,
		Started: p.Started, Moves: p.Moves + 1, Source: m.e.cfg.Self, SourceID: m.e.cfg.SelfID, Job: p.Job, Rank: p.Rank, Hooks: p.Hooks,
		Memory: p.Memory, Owner: p.Owner, PostCopy: m.r.PostCopy}
	if err := send(ctx, c, m.e.t.Dial, tBegin, b); err != nil {
		return fmt.Errorf("target %s: %w", m.r.Peer, err)
	}
	if err := recv(ctx, c, m.e.t.Dial, tAccept, nil); err != nil {
		return fmt.Errorf("target %s refused the process: %w", m.r.Peer, err)
	}
	if !m.r.PostCopy {
		return nil
	}
	pc, err := m.e.cfg.Peers.Dial(dctx, m.r.Peer)
	if err != nil {
		return fmt.Errorf("target %s: opening the page connection: %w", m.r.Peer, err)
	}
	m.pc = pc
	m.meter.add(pc)
	if err := send(ctx, pc, m.e.t.Dial, tPageConn, &PageConnMsg{Mig: m.r.Mig}); err != nil {
		return fmt.Errorf("target %s: page connection: %w", m.r.Peer, err)
	}
	if err := recv(ctx, pc, m.e.t.Dial, tAccept, nil); err != nil {
		return fmt.Errorf("target %s refused the page connection: %w", m.r.Peer, err)
	}
	return nil
}

// disconnect tells the target the migration is off (it would learn anyway,
// from the closed connection or an outcome question) and closes.
func (m *outMig) disconnect(ctx context.Context) error {
	if m.c != nil {
		sendError(m.c, errors.New("the source called the migration off"))
		m.c.Close()
	}
	if m.pc != nil {
		m.pc.Close()
	}
	return nil
}

// prepare runs a migration-aware process's prepare hook: it closes what must
// not be dumped (a DSM rank its connections to peers that stay behind).
// With MoveIP its connections move with it (TCP repair): no hooks.
func (m *outMig) prepare(ctx context.Context) error {
	if !m.r.Hooks {
		return nil
	}
	t := time.Now()
	hctx, cancel := context.WithTimeout(ctx, m.e.t.Prepare)
	defer cancel()
	if err := m.e.cfg.Procs.Hook(hctx, m.r.ProcID, "prepare", false); err != nil {
		return fmt.Errorf("the process could not prepare: %w", err)
	}
	m.phase("prepare", time.Since(t), "")
	return nil
}

func (m *outMig) unprepare(ctx context.Context) error {
	if !m.r.Hooks {
		return nil
	}
	return m.e.cfg.Procs.Hook(ctx, m.r.ProcID, "resume", false)
}

// freeze stops the tree with no fault queued in any thread (a dump of a
// thread caught between a fault and its delivery fails and kills the
// process: criu/quiesce.go). From here the tree stays stopped until the
// commit, so that it can be resumed here.
func (m *outMig) freeze(ctx context.Context) error {
	m.dumpAt = time.Now()
	if err := m.e.cfg.Quiescer.Quiesce(m.r.PID); err != nil {
		return fmt.Errorf("could not stop the process for the dump: %w", err)
	}
	return nil
}

func (m *outMig) thaw(ctx context.Context) error {
	if err := m.e.cfg.Procs.Continue(m.r.ProcID); err != nil {
		return err
	}
	m.thawedAt = time.Now()
	return nil
}

// dumpStep dumps the stopped tree, pages streaming to the target.
func (m *outMig) dumpStep(ctx context.Context) error {
	dir, err := m.e.cfg.CRIU.ImagesDir(m.r.ProcID + "-out-" + m.r.Mig)
	if err != nil {
		return err
	}
	// The freeze time rides on this write (none of its own during the
	// downtime): a restart that undoes the migration then knows how long
	// the process was stopped.
	if err := m.e.save(m.r, func(r *Record) { r.Images, r.Frozen = dir, m.dumpAt }); err != nil {
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, m.e.t.Dump)
	defer cancel()
	t := time.Now()
	var res *DumpResult
	if m.r.PostCopy {
		// CRIU goes on serving pages after this step, for as long as the
		// migration lasts: not on the dump's deadline.
		m.lazy, res, err = m.e.cfg.CRIU.DumpLazy(ctx, m.pc, m.r.PID, dir, m.r.MoveIP != "")
	} else {
		res, err = m.e.cfg.CRIU.Dump(dctx, m.c, m.r.PID, dir, m.r.MoveIP != "")
	}
	if res != nil {
		m.hist.Bytes += res.Sent + res.Back
	}
	if err != nil {
		if res != nil && res.Died {
			return api.WithKind(api.KindLost, fmt.Errorf("dump failed and the process DIED during it: %w", err))
		}
		return fmt.Errorf("dump failed: %w", err)
	}
	// CRIU leaves its network lock table here after a dump of TCP
	// connections that leaves the tree stopped; a dump without them takes
	// no lock (criu.networkLock).
	if m.r.MoveIP != "" {
		if table, err := m.e.cfg.Net.LockName(dir); err == nil {
			if err := m.e.save(m.r, func(r *Record) { r.Lock = table }); err != nil {
				return err
			}
		}
	}
	m.phase("freeze", t.Sub(m.dumpAt)+res.Freezing, "")
	if m.r.PostCopy {
		m.phase("dump", time.Since(t), "all but the private memory, which follows on demand")
		return nil
	}
	m.phase("dump", time.Since(t)-res.Freezing, fmt.Sprintf("%d pages, %.1f MiB streamed to the target", res.Pages,
		float64(res.Sent)/(1<<20)))
	return nil
}

// undump undoes a dump: the TCP sockets CRIU left in repair mode are taken
// out of it (thaw then continues the tree, its connections alive), and the
// lock goes. Whether CRIU's dump succeeded is told by its lock table, not by
// the record: a dump whose page stream broke while winding down fails after
// CRIU succeeded, and a crash may come before the lock is journaled. Both
// steps may run again after a crash, harmlessly.
func (m *outMig) undump(ctx context.Context) error {
	if m.r.Images == "" {
		return nil
	}
	if m.lazy != nil {
		// CRIU serves pages still: the end of its page socket ends it,
		// and it lets go of the tree, stopped. (After a restart, the dead
		// daemon's end of it did the same.)
		m.lazy.Stop()
	}
	table := m.r.Lock
	if table == "" {
		if t, err := m.e.cfg.Net.LockName(m.r.Images); err == nil {
			if err := m.e.save(m.r, func(r *Record) { r.Lock = t }); err != nil {
				return err
			}
			table = t
		}
	}
	var tables []string
	switch {
	case table != "":
		tables = []string{table}
	case m.r.MoveIP != "":
		// No inventory names a table: CRIU failed and put the tree back
		// as it was, or it was killed (the dump's deadline, or its
		// daemon's death) after it had locked the connections and put
		// their sockets in repair mode and before it wrote the
		// inventory. Its table then holds the connections.
		var err error
		if tables, err = m.e.cfg.Procs.ConnLocks(ctx, m.r.ProcID); err != nil {
			return fmt.Errorf("looking for a lock on the process's connections: %w", err)
		}
		if len(tables) > 0 {
			m.e.log.Warn("a dump left a lock on the process's connections and no inventory: removing it",
				"mig", m.r.Mig, "tables", tables)
		}
	}
	if len(tables) == 0 {
		return nil // CRIU failed, and put the tree back as it was
	}
	if m.r.MoveIP != "" {
		// The pages went to the target: nothing here to restore from.
		// The stopped tree is intact but for its sockets' repair mode.
		if err := m.e.cfg.Procs.RepairOff(ctx, m.r.ProcID); err != nil {
			return fmt.Errorf("taking the process's connections out of repair mode: %w", err)
		}
	}
	var errs []error
	for _, t := range tables {
		errs = append(errs, m.e.cfg.Net.DeleteLock(t))
	}
	return errors.Join(errs...)
}

// transfer sends the rest of the images and the log.
func (m *outMig) transfer(ctx context.Context) error {
	t := time.Now()
	if err := m.e.cfg.Procs.FlushLog(ctx, m.r.ProcID); err != nil {
		return fmt.Errorf("collecting the log: %w", err)
	}
	n, files, err := m.e.cfg.CRIU.SendImages(ctx, m.c, m.r.Images, m.p.LogPath)
	m.hist.Bytes += n
	if err != nil {
		return fmt.Errorf("transfer to %s failed: %w", m.r.Peer, err)
	}
	m.phase("transfer", time.Since(t), fmt.Sprintf("%.1f MiB in %d files (log and images but pages)", float64(n)/(1<<20), files))
	return nil
}

// moveIP hands the address over: the lock goes with it (the target must hold
// it before it owns the address), and the address leaves this host.
func (m *outMig) moveIP(ctx context.Context) error {
	if m.r.Lock == "" {
		return errors.New("CRIU left no network lock table for the dump")
	}
	rules, err := m.e.cfg.Net.ExportLock(m.r.Lock)
	if err != nil {
		return err
	}
	m.rules = rules
	return m.e.cfg.Net.DelAddr(m.r.Iface, m.r.MoveIP)
}

func (m *outMig) unmoveIP(ctx context.Context) error {
	put := func() error { return m.e.cfg.Net.AddAddr(m.r.Iface, m.r.MoveIP) }
	if m.r.Saved != "" { // a record an older daemon journaled has none
		put = func() error { return m.e.cfg.Net.RestoreAddr(m.r.Saved) }
	}
	if err := put(); err != nil {
		return err
	}
	return m.e.cfg.Net.Announce(m.r.Iface, strings.Split(m.r.MoveIP, "/")[0])
}

// restore has the target restore the process, stopped.
func (m *outMig) restore(ctx context.Context) error {
	t := time.Now()
	if err := send(ctx, m.c, m.e.t.Stall, tRestore, &RestoreMsg{Lock: m.rules}); err != nil {
		return fmt.Errorf("target %s: %w", m.r.Peer, err)
	}
	var rd Restored
	if err := recv(ctx, m.c, m.e.t.Restore, tRestored, &rd); err != nil {
		return fmt.Errorf("restore on %s failed: %w", m.r.Peer, err)
	}
	if m.r.MoveIP != "" {
		m.phase("network", rd.Net, m.r.MoveIP+" moved")
	}
	m.phase("restore", time.Since(t)-rd.Net, "")
	return nil
}

// commit is the commit point: the decision is journaled before anything
// acts on it. A target that gave up waiting and asked how the migration
// ended has aborted it already (Answer): then the process stays here.
func (m *outMig) commit(ctx context.Context) error {
	if m.lazy != nil {
		if err := m.lazy.Failed(); err != nil {
			return fmt.Errorf("the page stream to %s broke before the commit: %w", m.r.Peer, err)
		}
	}
	if d, err := m.e.decide(m.r, Committed); err != nil {
		return err
	} else if d != Committed {
		return fmt.Errorf("the target %s gave up waiting for the commit", m.r.Peer)
	}
	m.resumeAt = time.Now()
	return nil
}

// killServed is kill after a post-copy commit: only once CRIU no longer
// serves the tree's memory (pages waits for that; should it not have run,
// this does).
func (m *outMig) killServed(ctx context.Context) error {
	if m.lazy != nil {
		m.lazy.Wait(ctx)
		m.lazy.Stop()
	}
	return m.kill(ctx)
}

// kill ends the source copy (SIGKILL ends a stopped task without it running
// again, so the target may resume at once) and forgets it here.
func (m *outMig) kill(ctx context.Context) error {
	return m.e.cfg.Procs.Gone(ctx, m.r.ProcID, m.r.Peer)
}

// confirm tells the target to resume and waits for its word that the
// process runs there. Should this fail, the target asks (Answer) and learns
// that the migration committed.
func (m *outMig) confirm(ctx context.Context) error {
	if m.c == nil {
		return nil
	}
	err := send(ctx, m.c, m.e.t.Commit, tCommit, nil)
	if err == nil {
		err = recv(ctx, m.c, m.e.t.Commit+m.e.t.Prepare, tDone, &m.done)
	}
	if err != nil {
		return fmt.Errorf("commit not confirmed: %w", err)
	}
	m.runningAt = time.Now()
	m.resumed()
	return nil
}

// resumed notes the resume (and rebind) phases and the downtime, once: when
// the target says the process runs there, or at the end if it never did.
func (m *outMig) resumed() {
	if m.hist == nil || m.hist.Downtime != 0 {
		return
	}
	resume := time.Duration(0)
	if !m.resumeAt.IsZero() {
		end := m.runningAt
		if end.IsZero() {
			end = time.Now()
		}
		resume = end.Sub(m.resumeAt) - m.done.Rebind
	}
	m.phase("resume", resume, "")
	if m.r.Hooks {
		m.phase("rebind", m.done.Rebind, m.done.RebindErr)
	}
	m.hist.Downtime = m.resumeAt.Add(resume + m.done.Rebind).Sub(m.dumpAt)
}

// pagesDone waits, after a post-copy commit, until the target has every page
// of the process; the source's stopped tree, whose memory they are, goes only
// then. A stream that breaks first loses the process: the target kills its
// copy, which cannot run with pages missing, and the copy here cannot resume
// either (the target's has run).
//
// A stream that ends without the target's word is no news of the process:
// the target may have had every page (the word got lost), or it lost the
// process. The source asks it (AskPages). Either way the outcome is noted
// (pagesErr), not returned: an error here means only that the step did not
// get to wait, and it is tried again.
func (m *outMig) pagesDone(ctx context.Context) error {
	if m.pagesErr != nil || !m.lastPage.IsZero() {
		return nil
	}
	if m.lazy == nil {
		// A restart: the dead daemon's end of CRIU's page socket ended
		// the stream, perhaps before its end. The target is not asked:
		// this runs before the daemon answers its peers, and a target in
		// doubt about the commit waits for that answer first.
		m.pagesErr = errors.New("the daemon restarted while the target was receiving the process's memory: " +
			"if its last page had not arrived, the target killed the process (its log says)")
		return nil
	}
	t := time.Now()
	err := m.lazy.Wait(ctx)
	m.hist.Bytes += m.lazy.Bytes()
	// On success CRIU has ended already; after a failure it must let go of
	// the tree before the kill step.
	m.lazy.Stop()
	if err != nil {
		switch o := m.e.AskPages(m.r); o {
		case PagesComplete:
			m.e.log.Warn("post-copy: the page stream broke, but the target had every page", "mig", m.r.Mig,
				"err", err)
		case PagesLost:
			m.pagesErr = fmt.Errorf("the process was LOST: its memory could not all reach %s after it resumed "+
				"there (%v), and the target killed it", m.r.Peer, err)
			return nil
		default:
			m.pagesErr = fmt.Errorf("the process is probably LOST: its page stream to %s broke after it resumed "+
				"there (%v), and the target cannot say whether every page had arrived (%s)", m.r.Peer, err, o)
			return nil
		}
	}
	m.lastPage = time.Now()
	m.phase("pages", m.lastPage.Sub(t), fmt.Sprintf("%.1f MiB on demand and in the background after the resume",
		float64(m.lazy.Bytes())/(1<<20)))
	return nil
}

// cleanup removes the network lock and the images; the record stays in the
// journal, settled, to answer an outcome question.
func (m *outMig) cleanup(ctx context.Context) error { return m.e.cleanup(m.r) }

// cleanup removes what a migration left on this host once it is over: its
// network lock and its images.
func (e *Engine) cleanup(r *Record) error {
	var errs []error
	if r.Lock != "" {
		errs = append(errs, e.cfg.Net.DeleteLock(r.Lock))
	}
	if r.Images != "" {
		errs = append(errs, e.cfg.CRIU.RemoveImages(r.Images))
	}
	return errors.Join(errs...)
}

// forward runs the steps after the commit; a failure is noted, not undone.
// The record is settled once they are all done (perhaps later, in the
// background: forwardSteps).
func (m *outMig) forward(ctx context.Context, steps []step) {
	var notes []string
	finish := func() {
		if m.pc != nil {
			m.pc.Close()
		}
		m.settle()
	}
	for _, err := range m.e.forwardSteps(ctx, m.r, steps, "", finish) {
		notes = append(notes, err.Error())
	}
	if m.pagesErr != nil {
		notes = append(notes, m.pagesErr.Error())
	}
	if m.hist == nil {
		return
	}
	m.resumed()
	m.hist.Total = time.Since(m.hist.Start)
	if !m.lastPage.IsZero() {
		m.hist.LastPage = m.lastPage.Sub(m.dumpAt)
	}
	m.hist.Outcome, m.hist.Result = "ok", api.ResultOK
	if len(notes) > 0 {
		m.hist.Outcome, m.hist.Result = strings.Join(notes, "; "), api.ResultWarning
	} else if m.done.RebindErr != "" {
		m.hist.Outcome = "running on the target, but its resume hook failed: " + m.done.RebindErr
		m.hist.Result = api.ResultWarning
	}
	if m.pagesErr != nil {
		m.hist.Result = api.ResultLost
	}
	m.e.record(*m.hist)
	m.e.log.Info("migrated", "id", m.r.ProcID, "to", m.r.Peer, "total", m.hist.Total, "downtime", m.hist.Downtime)
}

// failed settles a migration that did not commit: it is journaled as
// aborted before its steps are undone (runSteps), so an outcome question
// gets that answer; here its images go, the record is kept, and the error
// is worded for the user.
func (m *outMig) failed(steps []step, err error) error {
	var ue0 *UndoError
	if !errors.As(err, &ue0) {
		if cerr := m.e.cleanup(m.r); cerr != nil {
			m.e.log.Error("removing the images of a failed migration", "mig", m.r.Mig, "err", cerr)
		}
	}
	m.settle()
	where := "the process keeps running here"
	if i := stepIndex(steps, m.r.Step); i > stepIndex(steps, "freeze") {
		where = "the process resumed on the source"
	}
	var ue *UndoError
	if errors.As(err, &ue) {
		where = "resuming it on the source ALSO failed: " + ue.Undo.Error()
		err = ue.Cause
	}
	if errors.Is(err, errCrashRecovered) && where != "the process keeps running here" {
		where = "the process resumed on the source"
	}
	err = fmt.Errorf("%w; %s", err, where)
	if ue == nil {
		// The process runs on the source as before (unless the dump
		// killed it: then the error is of the lost kind already).
		err = api.WithKind(api.KindRefused, err)
	}
	if m.hist != nil {
		m.hist.Outcome, m.hist.Result = err.Error(), api.ResultRefused
		switch {
		case api.KindOf(err) == api.KindLost:
			m.hist.Result = api.ResultLost
		case ue != nil:
			m.hist.Result = api.ResultFailed
		}
		m.hist.Total = time.Since(m.hist.Start)
		m.hist.Downtime = m.failedDowntime()
		m.e.record(*m.hist)
	}
	m.e.log.Warn("migration failed", "id", m.r.ProcID, "to", m.r.Peer, "err", err)
	return err
}

// failedDowntime is how long a migration that did not commit kept its
// process stopped here: from the freeze until the undo continued it (until
// now if the undo could not), 0 if it never froze.
func (m *outMig) failedDowntime() time.Duration {
	if m.dumpAt.IsZero() {
		return 0
	}
	end := m.thawedAt
	if end.IsZero() {
		end = time.Now()
	}
	return end.Sub(m.dumpAt)
}

// settle marks the record settled; a source keeps it for outcome questions
// until Keep has passed.
func (m *outMig) settle() {
	if err := m.e.save(m.r, func(r *Record) { r.Settled = time.Now() }); err != nil {
		m.e.log.Error("journaling a settled migration", "mig", m.r.Mig, "err", err)
	}
}

func (e *Engine) record(r api.MigrationRec) {
	if e.cfg.OnRecord != nil {
		e.cfg.OnRecord(r)
	}
}

// errCrashRecovered marks a migration settled by Recover.
var errCrashRecovered = errors.New("the daemon restarted in the middle of the migration")

// decide settles r's outcome as d unless it is settled already, durably, and
// returns the outcome.
func (e *Engine) decide(r *Record, d string) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if r.Decision != "" {
		return r.Decision, nil
	}
	r.Decision = d
	if err := e.putLocked(r); err != nil { // durable: it holds the decision
		r.Decision = ""
		return "", err
	}
	e.migs[r.Mig] = r
	return d, nil
}

// Answer answers a target's question how migration mig ended. The answer is
// final: an undecided migration is aborted by the question (journaled
// before the answer goes out), so that the source can no longer commit it.
func (e *Engine) Answer(mig string) (string, error) {
	e.mu.Lock()
	r := e.migs[mig]
	e.mu.Unlock()
	if r == nil || r.Side != SideSource {
		return Unknown, nil
	}
	return e.decide(r, Aborted)
}
