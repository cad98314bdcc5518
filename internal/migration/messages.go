package migration

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"dsmigrate/internal/api"
	"dsmigrate/internal/wire"
)

// Begin opens a migration on the target (api.TBegin).
type Begin struct {
	Mig     string    `json:"mig"` // this migration, for the outcome question
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Argv    []string  `json:"argv"`
	PipeKey string    `json:"pipe_key"`
	MoveIP  string    `json:"move_ip,omitempty"`
	Started time.Time `json:"started"`
	Moves   int       `json:"moves"`
	Source  string    `json:"source"` // the source daemon, as the target calls it back
	// SourceID is the source daemon's identity (Config.SelfID): a target
	// whose own it is refuses a move to the host the process is on.
	SourceID string `json:"source_id,omitempty"`
	Job      string `json:"job,omitempty"`
	Rank     int    `json:"rank,omitempty"`
	Hooks    bool   `json:"hooks,omitempty"`  // migration-aware: run its prepare/resume hooks
	Memory   int64  `json:"memory,omitempty"` // bytes its dump is expected to hold: what the target must have room for
	// Owner is who the process runs as; the target gives it the same
	// rights (its credentials are in the images, restored by CRIU).
	Owner api.Owner `json:"owner"`
	// PostCopy: the process resumes on the target before its memory has
	// arrived (CRIU's lazy pages, over a page connection: PageConnMsg).
	PostCopy bool `json:"post_copy,omitempty"`
}

// PageConnMsg opens the page connection of post-copy migration Mig
// (api.TPageConn); the target answers api.TAccept.
type PageConnMsg struct {
	Mig string `json:"mig"`
}

// RestoreMsg asks the target to restore what it received (api.TRestore).
type RestoreMsg struct {
	Lock string `json:"lock,omitempty"` // CRIU's nftables lock table (with MoveIP)
}

// Restored reports a restore; the tree is still stopped (api.TRestored).
type Restored struct {
	PID     int           `json:"pid"`
	Restore time.Duration `json:"restore"`
	Net     time.Duration `json:"net"`
}

// Done confirms that the process runs on the target (api.TDone).
type Done struct {
	Rebind    time.Duration `json:"rebind,omitempty"` // its resume hook's time
	RebindErr string        `json:"rebind_err,omitempty"`
}

// OutcomeMsg asks a source how a migration ended (api.TOutcome) and is its
// answer (api.TOutcomeReply).
type OutcomeMsg struct {
	Mig     string `json:"mig"`
	Outcome string `json:"outcome,omitempty"`
}

// send writes v as a message of type typ, within d.
func send(ctx context.Context, c Conn, d time.Duration, typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	c.SetDeadline(Deadline(ctx, d))
	return c.WriteMsg(typ, b)
}

// recv reads a message of type typ into v (v may be nil), within d. The
// peer's error frame comes back as a *wire.RemoteError.
func recv(ctx context.Context, c Conn, d time.Duration, typ byte, v any) error {
	c.SetDeadline(Deadline(ctx, d))
	got, p, err := c.ReadMsg()
	if err != nil {
		return err
	}
	switch got {
	case typ:
	case wire.TypeError:
		return &wire.RemoteError{Msg: string(p)}
	default:
		return fmt.Errorf("got message %d, want %d", got, typ)
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(p, v); err != nil {
		return fmt.Errorf("malformed message %d: %v", typ, err)
	}
	return nil
}

// sendError tells the peer why, as an error frame; failures do not matter
// (the connection is about to go).
func sendError(c Conn, err error) {
	msg := err.Error()
	if len(msg) > wire.MaxFrame {
		msg = msg[:wire.MaxFrame]
	}
	c.SetDeadline(time.Now().Add(time.Second))
	c.WriteMsg(wire.TypeError, []byte(msg))
}

// Deadline is now+d, or ctx's deadline if that is sooner: the deadline of
// one network step within a migration.
func Deadline(ctx context.Context, d time.Duration) time.Time {
	t := time.Now().Add(d)
	if cd, ok := ctx.Deadline(); ok && cd.Before(t) {
		return cd
	}
	return t
}

// The message types, from the one table in internal/api.
const (
	tBegin        = api.TBegin
	tAccept       = api.TAccept
	tRestore      = api.TRestore
	tRestored     = api.TRestored
	tCommit       = api.TCommit
	tDone         = api.TDone
	tOutcome      = api.TOutcome
	tOutcomeReply = api.TOutcomeReply
	tPageConn     = api.TPageConn
	tPagesQuery   = api.TPagesQuery
	tPagesAnswer  = api.TPagesAnswer
)
