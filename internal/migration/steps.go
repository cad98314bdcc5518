package migration

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// step is one named step of a migration: what it does, and how to undo it.
//
// An undo must be idempotent and must work from the journal record alone
// (after a crash it runs in a daemon that never ran the step's do, for a step
// that may or may not have had its effect).
type step struct {
	name string
	do   func(ctx context.Context) error
	undo func(ctx context.Context) error // nil: nothing to undo
	// pivot marks the step whose success commits the migration (the
	// source's commit, the target's await-commit): once it has succeeded,
	// nothing is undone, whatever fails after.
	pivot bool
	// once marks a step after the commit that is not tried again when it
	// fails (the source's confirm: the target asks instead).
	once bool
	// later marks housekeeping after the commit that whoever waits for the
	// migration need not wait for (the source's cleanup of its lock and
	// images): it and the steps after it run in the background.
	later bool
}

// runSteps runs steps in order on behalf of r. Before each step it journals
// the step's name as r.Step (so that a restart knows how far it may have
// got) and passes the fault points before and after it. If a step fails, it
// and every step before it are undone in reverse order; the error says what
// failed and, if an undo failed too, that.
func (e *Engine) runSteps(ctx context.Context, r *Record, steps []step) error {
	for i, s := range steps {
		t0 := time.Now()
		err := e.save(r, func(r *Record) { r.Step = s.name })
		if err == nil && r.Side == SideSource && e.decision(r) == Aborted {
			err = fmt.Errorf("the target %s gave up waiting and asked how the migration ended", r.Peer)
		}
		if err == nil {
			err = e.fault(r.Side, "before", s.name)
		}
		if err == nil {
			err = stopped(ctx)
		}
		if err == nil {
			t1 := time.Now()
			err = s.do(ctx)
			e.log.Debug("step", "mig", r.Mig, "side", r.Side, "step", s.name, "journal_ms", ms(t1.Sub(t0)),
				"ms", ms(time.Since(t1)), "err", err)
			if err == nil && s.pivot {
				if ferr := e.fault(r.Side, "after", s.name); ferr != nil {
					e.log.Error("after the commit point", "mig", r.Mig, "step", s.name, "err", ferr)
				}
				continue
			}
		}
		if err == nil {
			err = e.fault(r.Side, "after", s.name)
		}
		if err != nil {
			if r.Side == SideSource {
				// Aborted, durably, before anything is undone: an outcome
				// question must never hear "committed" about a process
				// that resumes here.
				if d, derr := e.decide(r, Aborted); d == Committed {
					e.log.Error("after the commit point", "mig", r.Mig, "step", s.name, "err", err)
					return nil
				} else if derr != nil {
					err = errors.Join(err, derr)
				}
			}
			return e.undoSteps(ctx, r, steps[:i+1], err)
		}
	}
	return nil
}

// forwardSteps runs steps that follow the commit, from the one named from
// ("" for the first), then calls finish: each is journaled and passes its
// fault points like any other, but a failure is never undone. It is tried
// again instead (unless it is a once step): the process must end up running
// exactly where the commit said, whatever failed on the way. A step that
// still fails after forwardTries goes on being tried in the background,
// with the steps after it, and finish is called there once they are done
// (until then the record stays in the journal, for a restart to finish);
// so do the steps from the first later one on.
// It returns the errors seen.
func (e *Engine) forwardSteps(ctx context.Context, r *Record, steps []step, from string, finish func()) []error {
	if i := stepIndex(steps, from); i > 0 {
		steps = steps[i:]
	}
	var errs []error
	for i, s := range steps {
		if s.later {
			// The same tries, on a context the caller's end does not end.
			rest := slices.Clone(steps[i:])
			for j := range rest {
				rest[j].later = false
			}
			bg := context.WithoutCancel(ctx)
			e.cfg.Go(func() { e.forwardSteps(bg, r, rest, "", finish) })
			return errs
		}
		pause := e.t.AskPause
		for try := 1; ; try++ {
			err := e.forwardStep(ctx, r, s)
			if err == nil {
				break
			}
			e.log.Error("after the commit", "mig", r.Mig, "side", r.Side, "step", s.name, "try", try, "err", err)
			if try == 1 {
				errs = append(errs, err)
			}
			if s.once {
				break
			}
			if try == forwardTries {
				rest := steps[i:]
				e.cfg.Go(func() {
					e.forwardLater(r, rest)
					finish()
				})
				return errs
			}
			e.cfg.Sleep(ctx, pause)
			pause = min(2*pause, 30*time.Second)
		}
	}
	finish()
	return errs
}

// forwardTries is how often forwardSteps tries a step before it leaves the
// rest to the background.
const forwardTries = 4

// forwardLater goes on with steps in the background until each has
// succeeded.
func (e *Engine) forwardLater(r *Record, steps []step) {
	ctx := context.Background()
	for _, s := range steps {
		for try := 1; ; try++ {
			err := e.forwardStep(ctx, r, s)
			if err == nil || s.once {
				break
			}
			if try%10 == 1 {
				e.log.Error("after the commit, still failing", "mig", r.Mig, "side", r.Side, "step", s.name,
					"try", try, "err", err)
			}
			e.cfg.Sleep(ctx, 30*time.Second)
		}
	}
}

func (e *Engine) forwardStep(ctx context.Context, r *Record, s step) error {
	t0 := time.Now()
	err := e.save(r, func(r *Record) { r.Step = s.name })
	if err == nil {
		err = e.fault(r.Side, "before", s.name)
	}
	if err == nil {
		t1 := time.Now()
		err = s.do(ctx)
		e.log.Debug("step", "mig", r.Mig, "side", r.Side, "step", s.name, "journal_ms", ms(t1.Sub(t0)),
			"ms", ms(time.Since(t1)), "err", err)
	}
	if err == nil {
		err = e.fault(r.Side, "after", s.name)
	}
	return err
}

// undoSteps undoes steps in reverse order and returns cause, joined with the
// undo errors. Undos run on a context of their own: the migration's may be
// what ended.
func (e *Engine) undoSteps(_ context.Context, r *Record, steps []step, cause error) error {
	ctx, cancel := context.WithTimeout(context.Background(), e.t.Restore+e.t.Prepare)
	defer cancel()
	var errs []error
	for _, s := range slices.Backward(steps) {
		if s.undo != nil {
			if err := s.undo(ctx); err != nil {
				e.log.Error("undo failed", "mig", r.Mig, "side", r.Side, "step", s.name, "err", err)
				errs = append(errs, fmt.Errorf("undoing %s: %w", s.name, err))
			}
		}
		// Journaled as undone while every undo so far went well: a
		// restart then does not undo it again (undos need not survive
		// being run twice over what they restored).
		if len(errs) == 0 {
			if err := e.save(r, func(r *Record) { r.Undone = s.name }); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return &UndoError{Cause: cause, Undo: errors.Join(errs...)}
	}
	return cause
}

// UndoError is a failed migration whose undo failed too: the process may not
// be running as it was.
type UndoError struct {
	Cause error
	Undo  error
}

func (e *UndoError) Error() string {
	return fmt.Sprintf("%v; undoing the migration ALSO failed: %v", e.Cause, e.Undo)
}

func (e *UndoError) Unwrap() error { return e.Cause }

// stepIndex is the position of the step named name in steps, or -1.
func stepIndex(steps []step, name string) int {
	return slices.IndexFunc(steps, func(s step) bool { return s.name == name })
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
