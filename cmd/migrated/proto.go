package main

import (
	"time"

	"dsmigrate/internal/api"
)

// Client-protocol names used here.
const (
	tRequest = api.TRequest
	tReply   = api.TReply
	tEvent   = api.TEvent
	tLogData = api.TLogData
)

type (
	Request      = api.Request
	Reply        = api.Reply
	ProcInfo     = api.ProcInfo
	Event        = api.Event
	MigrationRec = api.MigrationRec
)

// Message types on daemon connections (the control socket and peer TCP).
const (
	tBegin        byte = 10
	tAccept       byte = 11
	tFile         byte = 12
	tFilesDone    byte = 13
	tRestore      byte = 14
	tRestored     byte = 15
	tCommit       byte = 16
	tDone         byte = 17
	tPages        byte = 18 // source -> target: a chunk of CRIU's page-server stream
	tPagesBack    byte = 19 // target -> source: a chunk of the page server's replies
	tPagesEnd     byte = 20 // source -> target: CRIU's dump has exited, the stream is over
	tPagesDone    byte = 21 // target -> source: the page server has written every page
	tOutcome      byte = 22 // target -> source, on a new connection: how did this migration end? (outcome.go)
	tOutcomeReply byte = 23
)

// beginMsg opens a migration on the target.
type beginMsg struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Argv    []string  `json:"argv"`
	PipeKey string    `json:"pipe_key"`
	MoveIP  string    `json:"move_ip,omitempty"`
	Started time.Time `json:"started"`
	Moves   int       `json:"moves"`
	Source  string    `json:"source"`
	Job     string    `json:"job,omitempty"`
	Rank    int       `json:"rank,omitempty"`
	Hooks   bool      `json:"hooks,omitempty"` // migration-aware: run its prepare/resume hooks
	Mig     string    `json:"mig,omitempty"`   // this migration, for an outcome question (outcome.go)
}

// fileMsg announces one file of the image set; its content follows as a stream.
type fileMsg struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// restoreMsg asks the target to restore what it received.
type restoreMsg struct {
	Lock string `json:"lock,omitempty"` // CRIU's nftables lock table (with --move-ip)
}

// restoredMsg reports a restore; the tree is still stopped.
type restoredMsg struct {
	PID     int           `json:"pid"`
	Restore time.Duration `json:"restore"`
	Net     time.Duration `json:"net"`
}

// doneMsg confirms that the process runs on the target.
type doneMsg struct {
	Rebind    time.Duration `json:"rebind,omitempty"` // its resume hook's time
	RebindErr string        `json:"rebind_err,omitempty"`
}
