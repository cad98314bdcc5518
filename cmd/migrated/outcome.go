package main

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"time"

	"dsmigrate/internal/wire"
)

// The commit of a migration, and how a lost commit message is recovered.
//
// The source decides: once the target has restored the process (stopped),
// the source records the migration as committed, kills its own copy and
// sends tCommit; the target then continues its copy. Should the connection
// break between the kill and the target reading tCommit, the target does not
// kill its copy blindly (the process would then run nowhere): it asks the
// source daemon, over a new connection, how the migration ended. The answer
// is final: a migration the source has not committed yet is aborted by the
// question, so the source can no longer commit it and resumes its own copy.
// Either way the process runs exactly once.

const (
	outcomeCommitted = "committed"
	outcomeAborted   = "aborted"
	outcomeUnknown   = "unknown" // the source has no such migration (any more)

	outcomeKeep     = 10 * time.Minute // how long a source remembers an outcome
	outcomeAskFor   = 30 * time.Second // how long a target keeps asking
	outcomeAskPause = 500 * time.Millisecond
)

type outcome struct {
	state string // "" (undecided), outcomeCommitted or outcomeAborted
	at    time.Time
}

// outcomeMsg asks a source daemon how a migration ended (tOutcome), and is
// its answer (tOutcomeReply).
type outcomeMsg struct {
	Mig     string `json:"mig"`
	Outcome string `json:"outcome,omitempty"`
}

// beginOutcome registers an undecided migration on the source.
func (d *Daemon) beginOutcome(mig string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.outcomes == nil {
		d.outcomes = map[string]*outcome{}
	}
	for k, o := range d.outcomes {
		if time.Since(o.at) > outcomeKeep {
			delete(d.outcomes, k)
		}
	}
	d.outcomes[mig] = &outcome{at: time.Now()}
}

// decide settles migration mig as state unless it is settled already, and
// returns how it ended.
func (d *Daemon) decide(mig, state string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	o, ok := d.outcomes[mig]
	if !ok {
		return outcomeUnknown
	}
	if o.state == "" {
		o.state, o.at = state, time.Now()
	}
	return o.state
}

// askOutcome asks the source daemon at src how migration mig ended, for up
// to outcomeAskFor while it cannot be reached.
func (d *Daemon) askOutcome(src, mig string) (string, error) {
	var err error
	for end := time.Now().Add(outcomeAskFor); time.Now().Before(end); time.Sleep(outcomeAskPause) {
		var got string
		if got, err = d.askOutcomeOnce(src, mig); err == nil {
			return got, nil
		}
	}
	return "", err
}

func (d *Daemon) askOutcomeOnce(src, mig string) (string, error) {
	raw, err := net.DialTimeout("tcp", src, dialTimeout)
	if err != nil {
		return "", err
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(2 * dialTimeout))
	c, err := wire.Client(raw, d.token)
	if err != nil {
		return "", err
	}
	if err := c.WriteJSON(tOutcome, &outcomeMsg{Mig: mig}); err != nil {
		return "", err
	}
	var r outcomeMsg
	if err := c.ReadJSON(tOutcomeReply, &r); err != nil {
		return "", err
	}
	switch r.Outcome {
	case outcomeCommitted, outcomeAborted, outcomeUnknown:
		return r.Outcome, nil
	}
	return "", errors.New("bad outcome answer")
}

// answerOutcome serves a target's question (see above): an undecided
// migration is aborted by it.
func (d *Daemon) answerOutcome(c *wire.Conn, q outcomeMsg) {
	if !idRE.MatchString(q.Mig) {
		c.WriteError(errors.New("malformed outcome question"))
		return
	}
	c.WriteJSON(tOutcomeReply, &outcomeMsg{Mig: q.Mig, Outcome: d.decide(q.Mig, outcomeAborted)})
}

// fault reports whether the fault point name is armed, and disarms it: the
// file STATE/faults/NAME makes the next pass through that point fail (as
// CRIU_FAULT does for CRIU). The integration tests use it to break a
// migration where no outside action could.
func (d *Daemon) fault(name string) bool {
	return os.Remove(filepath.Join(d.stateDir, "faults", name)) == nil
}
