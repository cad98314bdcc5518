package main

import "time"

// Message types on daemon connections (the control socket and peer TCP).
// Values below 0x80 are the project's; internal/wire reserves the rest.
const (
	tRequest   byte = 1 // client -> daemon: Request
	tReply     byte = 2 // daemon -> client: the final answer to a Request
	tEvent     byte = 3 // daemon -> client: progress of a migration
	tLogData   byte = 4 // daemon -> client: a chunk of a log
	tBegin     byte = 10
	tAccept    byte = 11
	tFile      byte = 12
	tFilesDone byte = 13
	tRestore   byte = 14
	tRestored  byte = 15
	tCommit    byte = 16
	tDone      byte = 17
)

// Request is what a client asks of a daemon.
type Request struct {
	Op     string   `json:"op"` // run, ps, logs, migrate, kill, history
	ID     string   `json:"id,omitempty"`
	Name   string   `json:"name,omitempty"`
	Argv   []string `json:"argv,omitempty"`
	Env    []string `json:"env,omitempty"`
	To     string   `json:"to,omitempty"`
	MoveIP string   `json:"move_ip,omitempty"`
	Dir    string   `json:"dir,omitempty"`
}

// Reply answers a Request.
type Reply struct {
	ID      string         `json:"id,omitempty"`
	Procs   []ProcInfo     `json:"procs,omitempty"`
	Records []MigrationRec `json:"records,omitempty"`
	Size    int64          `json:"size,omitempty"` // logs: bytes that follow
	Record  *MigrationRec  `json:"record,omitempty"`
}

// ProcInfo is a process as `migrated ps` shows it.
type ProcInfo struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	PID      int       `json:"pid"`
	State    string    `json:"state"`
	Command  []string  `json:"command"`
	Started  time.Time `json:"started"`
	Moves    int       `json:"moves"`
	ExitCode *int      `json:"exit_code,omitempty"`
}

// Event is a step of a migration, shown by the client as it happens.
type Event struct {
	Phase string        `json:"phase"`
	Dur   time.Duration `json:"dur"`
	Info  string        `json:"info,omitempty"`
}

// MigrationRec is the record every migration leaves on its source daemon.
type MigrationRec struct {
	ID       string        `json:"id"`
	Name     string        `json:"name"`
	From     string        `json:"from"`
	To       string        `json:"to"`
	MoveIP   string        `json:"move_ip,omitempty"`
	Start    time.Time     `json:"start"`
	Phases   []Event       `json:"phases"`
	Total    time.Duration `json:"total"`
	Downtime time.Duration `json:"downtime"`
	Bytes    int64         `json:"bytes"`
	Outcome  string        `json:"outcome"` // "ok" or the error
}

// beginMsg opens a migration on the target.
type beginMsg struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Argv     []string  `json:"argv"`
	PipeKey  string    `json:"pipe_key"`
	MoveIP   string    `json:"move_ip,omitempty"`
	Started  time.Time `json:"started"`
	Moves    int       `json:"moves"`
	Source   string    `json:"source"`
	ImageMax int64     `json:"image_max"`
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
