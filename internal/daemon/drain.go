package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"dsmigrate/internal/api"
	"dsmigrate/internal/placement"
)

// Draining a host (migrated drain): the daemon takes no new process and no
// arriving migration from then on, until migrated undrain, and the other
// daemons' placement leaves it out; and it moves every process it runs to
// the host placement picks for it, one at a time (so one rank of a DSM job
// at a time), each with its own address if it has one. A process that
// cannot move stays, running here as before, and the report says why.
// The drained mark is a file in the state directory: a restarted daemon is
// still drained.

// drainedFile marks a drained daemon, in its state directory.
const drainedFile = "drained"

// loadDrained reads the mark a drain left.
func (d *Daemon) loadDrained() {
	_, err := os.Stat(filepath.Join(d.stateDir, drainedFile))
	d.drained.Store(err == nil)
}

// setDrained marks this daemon drained or not, durably.
func (d *Daemon) setDrained(on bool) error {
	path := filepath.Join(d.stateDir, drainedFile)
	var err error
	if on {
		err = os.WriteFile(path, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600)
	} else if err = os.Remove(path); errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("marking the daemon drained: %v", err)
	}
	d.drained.Store(on)
	if on {
		d.log.Info("drained: taking no new processes or migrations until migrated undrain")
	} else {
		d.log.Info("undrained: taking processes and migrations again")
	}
	return nil
}

// refuseDrained is the error of what a drained daemon does not take.
func (d *Daemon) refuseDrained(what string) error {
	if !d.drained.Load() {
		return nil
	}
	return api.Errorf(api.KindRefused, "%s is drained and takes no %s: `migrated undrain` (there) lets it take "+
		"them again; or choose another host", d.advertise, what)
}

// drain serves "drain": marks this daemon drained (not for a dry run) and
// moves every process off it, reporting each move as an event.
func (d *Daemon) drain(ctx context.Context, req Request, caller api.Owner, event func(Event)) (*Reply, error) {
	if err := rootOnly(caller, "draining a host", "ask root to drain it"); err != nil {
		return nil, err
	}
	pol, err := placement.ParsePolicy(req.Policy)
	if err != nil {
		return nil, err
	}
	rep := &api.DrainReport{Host: d.advertise, DryRun: req.DryRun, Items: []api.DrainItem{}}
	procs := d.drainOrder()
	if req.DryRun {
		return d.drainPlan(ctx, rep, procs, pol)
	}
	if err := d.setDrained(true); err != nil {
		return nil, err
	}
	for _, p := range procs {
		it := drainItem(p)
		switch st := p.stateNow(); {
		case ctx.Err() != nil:
			it.Stayed = "the drain was cancelled before its turn"
		case st != "running":
			it.Stayed = fmt.Sprintf("it is %s, not running", st)
		default:
			d.drainOne(ctx, p, pol, caller, &it, event)
		}
		if !it.Moved {
			event(Event{Phase: api.PhaseDrain, Info: fmt.Sprintf("%s stays: %s", describeProc(it), it.Stayed)})
		}
		rep.Items = append(rep.Items, it)
	}
	return &Reply{Drain: rep}, nil
}

// drainOne moves p to the host placement picks, filling it in.
func (d *Daemon) drainOne(ctx context.Context, p *Proc, pol placement.Policy, caller api.Owner, it *api.DrainItem,
	event func(Event)) {
	to, cost, err := d.target(ctx, p, pol, false, it.MoveIP)
	if err != nil {
		it.Stayed = err.Error()
		return
	}
	it.To = to
	event(Event{Phase: api.PhaseDrain, Info: fmt.Sprintf("moving %s to %s", describeProc(*it), describeHost(to, cost, pol))})
	rec, err := d.migrateOut(ctx, Request{ID: p.ID, To: to, MoveIP: it.MoveIP}, caller, event)
	if rec != nil {
		it.Record = rec
	}
	if err != nil {
		it.Stayed = err.Error()
		return
	}
	it.Moved = true
	event(Event{Phase: api.PhaseDrain, Info: fmt.Sprintf("moved %s to %s in %.0f ms (downtime %.0f ms)", describeProc(*it), to,
		api.Millis(rec.Total), api.Millis(rec.Downtime))})
}

// drainPlan fills rep with where each of procs would go, each placement
// counting against its host before the next, and moves nothing.
func (d *Daemon) drainPlan(ctx context.Context, rep *api.DrainReport, procs []*Proc, pol placement.Policy) (*Reply, error) {
	hosts, err := d.survey(ctx)
	if err != nil {
		return nil, err
	}
	for _, p := range procs {
		it := drainItem(p)
		if st := p.stateNow(); st != "running" {
			it.Stayed = fmt.Sprintf("it is %s, not running", st)
			rep.Items = append(rep.Items, it)
			continue
		}
		need, err := d.needOf(p, false, it.MoveIP)
		if err != nil {
			return nil, err
		}
		cs, skips := placement.Rank(hosts, need, pol)
		if len(cs) == 0 {
			it.Stayed = placement.NoHost(skips, "it").Error()
		} else {
			it.To = cs[0].Addr
			placement.Count(hosts, cs[0].Addr, need)
		}
		rep.Items = append(rep.Items, it)
	}
	return &Reply{Drain: rep}, nil
}

// drainOrder is the processes a drain moves, in its order: those of no job
// first, then each job's ranks in rank order, each by start time; exited
// ones are left out (there is nothing to move).
func (d *Daemon) drainOrder() []*Proc {
	d.mu.Lock()
	var ps []*Proc
	for _, p := range d.procs {
		ps = append(ps, p)
	}
	d.mu.Unlock()
	// What the order needs, read under each process's lock (an arrival
	// sets its job and rank as it activates).
	type key struct {
		p       *Proc
		job     string
		rank    int
		started time.Time
	}
	var ks []key
	for _, p := range ps {
		p.mu.Lock()
		k, st := key{p, p.Job, p.Rank, p.Started}, p.state
		p.mu.Unlock()
		if st != "exited" && st != "migrated" && st != "lost" {
			ks = append(ks, k)
		}
	}
	sort.Slice(ks, func(a, b int) bool {
		ka, kb := ks[a], ks[b]
		if ka.job != kb.job {
			return ka.job < kb.job // "" first
		}
		if ka.rank != kb.rank {
			return ka.rank < kb.rank
		}
		return ka.started.Before(kb.started)
	})
	out := make([]*Proc, len(ks))
	for i, k := range ks {
		out[i] = k.p
	}
	return out
}

// drainItem is p's line of a drain report, before it moves.
func drainItem(p *Proc) api.DrainItem {
	p.mu.Lock()
	defer p.mu.Unlock()
	return api.DrainItem{ID: p.ID, Name: p.Name, Job: p.Job, Rank: p.Rank, MoveIP: p.ownIP}
}

// describeProc names a drain's process for its events.
func describeProc(it api.DrainItem) string {
	if it.Job != "" {
		return fmt.Sprintf("%s (%s, job %s rank %d)", it.ID, it.Name, it.Job, it.Rank)
	}
	return fmt.Sprintf("%s (%s)", it.ID, it.Name)
}

// stateNow is p's state.
func (p *Proc) stateNow() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}
