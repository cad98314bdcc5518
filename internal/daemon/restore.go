package daemon

import (
	"context"
	"errors"
	"path/filepath"
	"time"

	"dsmigrate/criu"
	"dsmigrate/internal/migration"
	"dsmigrate/internal/shim"
)

// shimMargin is how much sooner than its context's deadline a restore's CRIU
// must give up: CRIU's own error then reports a restore that overruns,
// rather than a shim killed before it could say anything.
const shimMargin = 10 * time.Second

// restoreCopy restores the images in dir as a new copy of from (its ID, name,
// command, moves, job, rank, hooks and log), under a shim of its own which is
// the restored tree's parent and appends its output (a fresh pipe, inherited
// in place of the one named key) to the log. The tree is left STOPPED: the
// caller continues it (signalTree SIGCONT). The copy is registered in from's
// place in the given state and its record saved; its watcher runs. ctx bounds
// the whole restore. A failed CRIU restore is a *criu.Error, or a
// *criu.ConflictError when this host holds what the process needs.
func (d *Daemon) restoreCopy(ctx context.Context, from *Proc, key, dir string, tcp bool, state string, lazy migration.Lazy) (*Proc, error) {
	timeout := criu.DefaultTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl)-shimMargin, time.Second)
	} else {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout+shimMargin)
		defer cancel()
	}
	t0 := time.Now()
	from.mu.Lock()
	pre := from.early
	from.early = nil
	from.mu.Unlock()
	start := func(ctx context.Context, exe string, spec shim.Spec) (*shim.Client, *shim.Started, error) {
		if pre != nil {
			return pre.Start(ctx, spec)
		}
		return shim.Start(ctx, exe, spec)
	}
	c, st, err := start(ctx, shimExe, shim.Spec{ID: from.ID, Dir: filepath.Dir(from.logPath), Restore: &shim.RestoreSpec{
		CRIU: d.criu.Path, ImagesDir: dir, PipeKey: key, TCP: tcp, Timeout: timeout,
		// An arrival's images are restored once: its pages leave the
		// tmpfs as they enter the process (admit.go counts on it).
		Dedup: state == "incoming",
		// Post-copy: the memory comes from lazy-pages, whose socket the
		// shim holds open (shim.RestoreSpec.Hold).
		Lazy: lazy != nil, Hold: holdFile(lazy)}})
	if h := holdFile(lazy); h != nil {
		h.Close() // the shim has its own copy now (or, failed, needs none)
	}
	if err != nil {
		// A conflict with this host is told in one sentence; CRIU's own
		// report stays in this daemon's log.
		if ce, ok := errors.AsType[*criu.ConflictError](criu.Explain(err, dir)); ok {
			d.log.Warn("restore refused", "id", from.ID, "why", ce.Msg, "criu", ce.Cause)
			return nil, ce
		}
		return nil, err
	}
	if rs := st.Restore; rs != nil {
		d.log.Info("criu restore", "id", from.ID, "took", time.Since(t0), "criu_restore", rs.Restore, "forking", rs.Forking,
			"pages", rs.PagesRestored, "shim", st.ShimPID, "started_ahead", pre != nil)
	}
	from.mu.Lock()
	p := newProc(from.ID, from.Name, from.Argv, from.Started)
	p.Moves, p.Job, p.Rank, p.Owner, p.hooks, p.logPath = from.Moves, from.Job, from.Rank, from.Owner, from.hooks, from.logPath
	from.mu.Unlock()
	p.pid, p.shimPID, p.state, p.pipeKey, p.shim = st.PID, st.ShimPID, state, st.PipeKey, c
	go d.watch(p)
	d.register(p)
	return p, d.saveProc(p)
}
