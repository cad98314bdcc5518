package migration

import (
	"strings"
	"time"

	"dsmigrate/internal/api"
)

// The target's word on how a migration it received ended (Config.OnArrival:
// the daemon's metrics count it). Only migrations that ran to their end in
// In are told; one a restart settled (Recover) is not.

// arrived tells how an incoming migration that was committed ended here,
// with errs the forward steps' failures (its resume hook's among them):
// lost if its memory could not all arrive (post-copy), warning if a step
// after the commit failed (the process runs here all the same), ok
// otherwise.
func (m *inMig) arrived(errs []error) {
	res, outcome := api.ResultOK, "ok"
	var notes []string
	for _, err := range errs {
		notes = append(notes, err.Error())
	}
	if len(notes) > 0 {
		res, outcome = api.ResultWarning, strings.Join(notes, "; ")
	}
	if m.lost != nil {
		res, outcome = api.ResultLost, m.lost.Error()
	}
	m.e.arrival(m.r, res, outcome)
}

// refusedArrival tells that incoming migration r did not arrive: its steps
// here were undone, and the process runs on its source.
func (e *Engine) refusedArrival(r *Record) {
	e.arrival(r, api.ResultRefused, "did not arrive: the process runs on its source")
}

func (e *Engine) arrival(r *Record, result, outcome string) {
	if e.cfg.OnArrival == nil || r.Begin == nil {
		return
	}
	b := r.Begin
	e.cfg.OnArrival(api.MigrationRec{ID: b.ID, Name: b.Name, From: r.Peer, To: e.cfg.Self, MoveIP: r.MoveIP,
		Job: b.Job, Rank: b.Rank, Start: r.Start, Total: time.Since(r.Start), Outcome: outcome, UID: b.Owner.UID,
		PostCopy: r.PostCopy, Result: result})
}
