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
	"dsmigrate/internal/journal"
	"dsmigrate/internal/shim"
)

// The process table on disk: each process's record is STATE/procs/ID/proc.json
// (package journal: atomic and durable), beside its log and its shim's socket.
// A restarted daemon reads the records back and finds the shims (reattach).

// procRecord is the record's name in the process's directory.
const procRecord = "proc"

// ProcRec is a process's durable record.
type ProcRec struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Argv    []string  `json:"argv"`
	Started time.Time `json:"started"`
	Moves   int       `json:"moves,omitempty"`
	Job     string    `json:"job,omitempty"`
	Rank    int       `json:"rank,omitempty"`
	PID     int       `json:"pid,omitempty"`
	ShimPID int       `json:"shim_pid,omitempty"`
	PipeKey string    `json:"pipe_key,omitempty"`
	Hooks   bool      `json:"hooks,omitempty"` // registered migration hooks (package runtime)
	State   string    `json:"state"`
	Exit    *int      `json:"exit,omitempty"`
	MovedTo string    `json:"moved_to,omitempty"`
	OwnIP   string    `json:"own_ip,omitempty"` // its own address, which moves with it
	Owner   api.Owner `json:"owner"`            // a record without one is root's (older daemons ran everything as root)
}

func (p *Proc) recordLocked() ProcRec {
	return ProcRec{ID: p.ID, Name: p.Name, Argv: p.Argv, Started: p.Started, Moves: p.Moves, Job: p.Job, Rank: p.Rank,
		PID: p.pid, ShimPID: p.shimPID, PipeKey: p.pipeKey, Hooks: p.hooks, State: p.state, Exit: p.exit,
		MovedTo: p.movedTo, Owner: p.Owner, OwnIP: p.ownIP}
}

// dir is the process's directory (its log's).
func (d *Daemon) dirOf(p *Proc) string {
	if p.logPath != "" {
		return filepath.Dir(p.logPath)
	}
	return d.procDir(p.ID)
}

// saveProc writes p's record as p is now, durably. Call it BEFORE acting on
// a change a restarted daemon must know of, and after any change of what
// the record holds that the daemon would otherwise lose:
//
//   - a launch: "starting" before the shim starts, "running" with the pids
//     (launch does both);
//   - a process's exit (the watcher does it);
//   - a hook registration (handleControl does it);
//   - every state a migration gives a process ("migrating" when claimed,
//     "running" when it resumes here, "incoming" once restored on a target,
//     "running" when activated there, "migrated" when it is gone; a copy
//     restoreCopy restored is saved by it).
//
// Once the record is deleted (dropProc: the process was killed, or it left
// this host and ended), saveProc writes nothing more and returns nil.
func (d *Daemon) saveProc(p *Proc) error {
	p.saveMu.Lock()
	defer p.saveMu.Unlock()
	p.mu.Lock()
	if p.dropped {
		p.mu.Unlock()
		return nil
	}
	rec := p.recordLocked()
	p.mu.Unlock()
	j, err := d.journalOfLocked(p)
	if err != nil {
		return err
	}
	return j.Put(procRecord, rec)
}

// journalOfLocked returns p's record directory, opened once (Open makes the
// directory and looks through it). p.saveMu is held.
func (d *Daemon) journalOfLocked(p *Proc) (*journal.Dir, error) {
	if p.jdir == nil {
		j, err := journal.Open(d.dirOf(p))
		if err != nil {
			return nil, err
		}
		p.jdir = j
	}
	return p.jdir, nil
}

// dropProc deletes p's record for good (the directory goes later, with
// forgetLater). With onlyOurs, a record that another copy of the process
// wrote since (another shim's) is left alone.
func (d *Daemon) dropProc(p *Proc, onlyOurs bool) error {
	p.saveMu.Lock()
	defer p.saveMu.Unlock()
	p.mu.Lock()
	p.dropped = true
	shimPID := p.shimPID
	p.mu.Unlock()
	j, err := d.journalOfLocked(p)
	if err != nil {
		return err
	}
	if onlyOurs {
		var rec ProcRec
		if ok, err := j.Get(procRecord, &rec); err != nil || !ok || rec.ShimPID != shimPID {
			return err
		}
	}
	return j.Delete(procRecord)
}

// loadProcRecords reads every process record in STATE/procs, by ID. A
// directory without a record (a process that left, waiting for forgetLater;
// one arriving) is skipped; an unreadable record is logged and skipped.
func (d *Daemon) loadProcRecords() (map[string]ProcRec, error) {
	entries, err := os.ReadDir(filepath.Join(d.stateDir, "procs"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return map[string]ProcRec{}, nil
		}
		return nil, err
	}
	recs := map[string]ProcRec{}
	for _, e := range entries {
		if !e.IsDir() || !idRE().MatchString(e.Name()) {
			continue
		}
		j, err := journal.Open(d.procDir(e.Name()))
		if err != nil {
			return nil, err
		}
		var rec ProcRec
		ok, err := j.Get(procRecord, &rec)
		if err != nil || (ok && rec.ID != e.Name()) {
			d.log.Error("an unreadable process record: left alone", "dir", j.Path(), "err", err, "id", rec.ID)
			continue
		}
		if ok {
			recs[rec.ID] = rec
		}
	}
	return recs, nil
}

// procFromRecord makes the Proc a record describes, with no shim.
func (d *Daemon) procFromRecord(rec ProcRec) *Proc {
	p := newProc(rec.ID, rec.Name, rec.Argv, rec.Started)
	p.Moves, p.Job, p.Rank, p.Owner, p.logPath = rec.Moves, rec.Job, rec.Rank, rec.Owner, filepath.Join(d.procDir(rec.ID), shim.LogFile)
	p.pid, p.shimPID, p.pipeKey, p.hooks, p.state, p.exit, p.movedTo = rec.PID, rec.ShimPID, rec.PipeKey, rec.Hooks,
		rec.State, rec.Exit, rec.MovedTo
	p.ownIP = rec.OwnIP
	return p
}

// attach connects p to its shim, if one serves p's directory, and starts its
// watcher. It reports false if there is no shim.
func (d *Daemon) attach(p *Proc) (bool, error) {
	c, err := shim.Dial(d.dirOf(p))
	if err != nil {
		if errors.Is(err, shim.ErrGone) {
			return false, nil
		}
		return false, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		return false, err
	}
	p.mu.Lock()
	p.shim, p.shimPID = c, st.ShimPID
	if st.PID > 0 {
		p.pid, p.pipeKey = st.PID, st.PipeKey
	}
	p.mu.Unlock()
	go d.watch(p)
	return true, nil
}

// reattach registers the processes of the records in STATE/procs, as a
// restarted daemon finds them (call it before anything serves the table,
// and before the migration engine's recovery, which needs the processes):
//
//   - a shim answers: the process is registered in its recorded state
//     ("starting" becomes "running") and watched; a "migrating" one is the
//     engine recovery's to settle;
//   - no shim: the process ended while no daemon watched, and is registered
//     as exited with the code its shim left in exit.json, or as lost; one
//     still "starting" never started, and one "migrated" is no longer here:
//     their records and directories are removed;
//   - an "incoming" record (a copy restored here, its migration in doubt)
//     with a live shim is registered as incoming: the engine's recovery
//     resumes or drops it; one without a shim, and a "migrating" one with no
//     shim, are left alone for the recovery (adopt gives it such a process).
func (d *Daemon) reattach() error {
	recs, err := d.loadProcRecords()
	if err != nil {
		return fmt.Errorf("reading the process records: %v", err)
	}
	d.removeUnrecorded(recs)
	ids := make([]string, 0, len(recs))
	for id := range recs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		rec := recs[id]
		p := d.procFromRecord(rec)
		if rec.State == "incoming" {
			// A copy restored here whose migration the restart
			// interrupted: listed as incoming while the migration's
			// recovery settles it (resumes it or drops it).
			if ok, err := d.attach(p); err != nil || !ok {
				d.log.Info("reattach: left for the migration recovery", "id", id, "state", rec.State, "err", err)
				continue
			}
			d.register(p)
			d.log.Info("reattached an incoming copy: its migration's recovery decides", "id", id, "pid", p.pid)
			continue
		}
		ok, err := d.attach(p)
		if err != nil {
			// Not known to be gone: leave the record as it is for the next
			// start, and show the process as lost meanwhile.
			d.log.Error("reattach: cannot reach the shim of a process", "id", id, "state", rec.State, "err", err)
			p.state = "lost"
			close(p.gone)
			d.register(p)
			continue
		}
		if ok {
			p.mu.Lock()
			if p.state == "starting" {
				p.state = "running"
			}
			p.mu.Unlock()
			if rec.State == "starting" {
				if err := d.saveProc(p); err != nil {
					d.log.Error("reattach: writing a process record", "id", id, "err", err)
				}
			}
			d.register(p)
			d.log.Info("reattached", "id", id, "name", p.Name, "pid", p.pid, "shim", p.shimPID, "state", p.state)
			continue
		}
		switch rec.State {
		case "starting", "migrated":
			d.log.Info("reattach: removing a process that is not here", "id", id, "state", rec.State)
			if err := os.RemoveAll(d.procDir(id)); err != nil {
				d.log.Error("reattach: removing a process directory", "id", id, "err", err)
			}
			continue
		case "migrating":
			d.log.Warn("reattach: a migrating process whose shim is gone: left for the migration recovery", "id", id)
			continue
		case "exited", "lost":
		default:
			code, ok, err := shim.ReadExit(d.procDir(id))
			if err != nil {
				d.log.Error("reattach: reading an exit record", "id", id, "err", err)
			}
			p.exit, p.state = &code, "exited"
			if !ok {
				code = -1
				p.state = "lost"
			}
			if err := d.saveProc(p); err != nil {
				d.log.Error("reattach: writing a process record", "id", id, "err", err)
			}
		}
		close(p.gone)
		d.register(p)
		d.log.Info("reattached", "id", id, "name", p.Name, "state", p.state, "exit", derefOr(p.exit, -1))
	}
	return nil
}

// removeUnrecorded removes the process directories that have no record and
// no shim: processes that left this host (forgetLater's timer died with the
// last daemon) and incoming ones that never got as far as a restore. One with
// a shim (a restore the last daemon did not see the end of) is left to the
// migration recovery (adopt).
func (d *Daemon) removeUnrecorded(recs map[string]ProcRec) {
	entries, _ := os.ReadDir(filepath.Join(d.stateDir, "procs"))
	for _, e := range entries {
		id := e.Name()
		if _, ok := recs[id]; ok || !e.IsDir() || !idRE().MatchString(id) {
			continue
		}
		if _, err := shim.Dial(d.procDir(id)); !errors.Is(err, shim.ErrGone) {
			d.log.Warn("reattach: a process directory with no record: left for the migration recovery", "id", id,
				"err", err)
			continue
		}
		d.log.Info("reattach: removing the directory of a process that is not here", "id", id)
		if err := os.RemoveAll(d.procDir(id)); err != nil {
			d.log.Error("reattach: removing a process directory", "id", id, "err", err)
		}
	}
}

// adopt returns the process of record id if its shim is alive (a copy
// restored here, or a process the restart left to the migration recovery),
// watched but registered nowhere; nil if no shim serves its directory. With no
// record, the process has only its ID, pids and pipe key (state "incoming").
func (d *Daemon) adopt(id string) *Proc {
	if !idRE().MatchString(id) {
		return nil
	}
	j, err := journal.Open(d.procDir(id))
	if err != nil {
		return nil
	}
	var rec ProcRec
	if ok, err := j.Get(procRecord, &rec); err != nil || !ok || rec.ID != id {
		// No record: a copy restored while the daemon died, before the
		// record was written, may be held by its shim still.
		rec = ProcRec{ID: id, Name: id, State: "incoming"}
	}
	p := d.procFromRecord(rec)
	ok, err := d.attach(p)
	if err != nil {
		d.log.Error("adopting a process: cannot reach its shim", "id", id, "err", err)
	}
	if !ok {
		return nil
	}
	d.log.Info("adopted", "id", id, "pid", p.pid, "shim", p.shimPID, "state", p.state)
	return p
}

// register puts p in the process table.
func (d *Daemon) register(p *Proc) {
	d.mu.Lock()
	d.procs[p.ID] = p
	d.mu.Unlock()
}

func derefOr(v *int, def int) int {
	if v == nil {
		return def
	}
	return *v
}
