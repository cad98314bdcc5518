package migration

import (
	"context"
	"time"

	"dsmigrate/internal/api"
)

// Recover settles every migration the journal holds unfinished: those a
// crash or a restart of this daemon interrupted. Call it once at start,
// after the process table knows the shims again and before peers are
// served, so that an outcome question is answered from settled state.
//
//   - Source, committed: the steps after the commit are finished (the
//     source copy killed if it is still there, lock and images removed).
//   - Source, undecided or aborted: it is aborted, durably, and every step
//     that may have begun is undone, from the journaled step back: the
//     process resumes here.
//   - Target, before it reported the restore: the source cannot have
//     committed, so everything here is undone (a copy the shim restored
//     meanwhile is killed).
//   - Target, in doubt (the report may have left): it asks the source, in
//     the background and until the source answers, then resumes its copy or
//     drops it.
//   - Target, committed: the steps after the commit are finished.
//
// Settled source records are kept until Keep has passed, for questions.
func (e *Engine) Recover(ctx context.Context) error {
	recs, err := e.cfg.Journal.Load()
	if err != nil {
		return err
	}
	e.mu.Lock()
	for _, r := range recs {
		e.migs[r.Mig] = r
	}
	e.mu.Unlock()
	for _, r := range recs {
		switch {
		case !r.Settled.IsZero():
			if time.Since(r.Settled) > e.t.Keep {
				e.forget(r)
			}
		case r.Side == SideSource:
			e.recoverSource(ctx, r)
		case r.Side == SideTarget && r.Begin != nil:
			e.recoverTarget(ctx, r)
		default:
			e.log.Error("a malformed migration record in the journal: dropped", "mig", r.Mig, "side", r.Side)
			e.forget(r)
		}
	}
	return nil
}

func (e *Engine) recoverSource(ctx context.Context, r *Record) {
	m := &outMig{e: e, r: r, dumpAt: r.Frozen,
		hist: &api.MigrationRec{ID: r.ProcID, From: e.cfg.Self, To: r.Peer, MoveIP: r.MoveIP, Start: r.Start, UID: r.UID}}
	if m.dumpAt.IsZero() && stepIndex(m.steps(), r.Step) >= stepIndex(m.steps(), "freeze") {
		// Stopped before the freeze time reached the journal: the start
		// bounds it (the downtime is then overstated by the steps before
		// the freeze, milliseconds, not hidden).
		m.dumpAt = r.Start
	}
	if e.decision(r) == Committed {
		e.log.Warn("settling a migration the restart interrupted: it had committed, finishing it", "mig", r.Mig,
			"id", r.ProcID, "to", r.Peer, "step", r.Step)
		m.forward(ctx, m.forwardSteps())
		return
	}
	d, err := e.decide(r, Aborted)
	if d == Committed { // cannot happen: nobody else decides at start
		m.forward(ctx, m.forwardSteps())
		return
	}
	if err != nil {
		e.log.Error("journaling the abort of an interrupted migration", "mig", r.Mig, "err", err)
	}
	steps := m.steps()
	e.log.Warn("settling a migration the restart interrupted: aborted, undoing it so the process runs here",
		"mig", r.Mig, "id", r.ProcID, "to", r.Peer, "step", r.Step, "undone", r.Undone)
	m.failed(steps, e.undoSteps(ctx, r, toUndo(steps, r), errCrashRecovered))
}

func (e *Engine) recoverTarget(ctx context.Context, r *Record) {
	m := &inMig{e: e, r: r, b: r.Begin}
	if r.PostCopy && r.PagesDone {
		e.notePages(r.Mig, PagesComplete) // for a source that asks
	}
	steps, fwd := m.steps(), m.afterRestart()
	switch {
	case stepIndex(m.forwardSteps(), r.Step) >= 0 || stepIndex(fwd, r.Step) >= 0:
		e.log.Warn("settling an incoming migration the restart interrupted: it had committed, finishing it",
			"mig", r.Mig, "id", r.ProcID, "step", r.Step)
		e.forwardSteps(ctx, r, fwd, r.Step, func() { e.forget(r) })
	case r.Step == "await-commit":
		e.log.Warn("an incoming migration the restart interrupted is in doubt: asking its source", "mig", r.Mig,
			"id", r.ProcID, "source", r.Peer)
		e.cfg.Go(func() {
			o := e.ask(r)
			if o == Committed {
				e.log.Warn("the source committed: resuming the process here", "mig", r.Mig, "id", r.ProcID)
				e.forwardSteps(context.Background(), r, fwd, "", func() { e.forget(r) })
				return
			}
			e.log.Warn("the source did not commit: dropping the copy here", "mig", r.Mig, "id", r.ProcID,
				"outcome", o)
			e.undoSteps(context.Background(), r, toUndo(steps, r), errCrashRecovered)
			e.forget(r)
		})
	default:
		e.log.Warn("settling an incoming migration the restart interrupted: dropping what arrived", "mig", r.Mig,
			"id", r.ProcID, "step", r.Step, "undone", r.Undone)
		e.undoSteps(ctx, r, toUndo(steps, r), errCrashRecovered)
		e.forget(r)
	}
}

// toUndo is what is left to undo of steps after a restart: every step up to
// the one journaled as begun, less those whose undo was journaled as done.
func toUndo(steps []step, r *Record) []step {
	i := stepIndex(steps, r.Step)
	if i < 0 {
		i = len(steps) - 1
	}
	if u := stepIndex(steps, r.Undone); u >= 0 && u <= i {
		i = u - 1
	}
	return steps[:i+1]
}
