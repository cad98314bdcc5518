// Package api is the protocol between migrated daemons and their clients
// (the migrated client commands and dsmrun): requests, replies, and how to
// reach a daemon, locally over its unix socket or remotely over TCP with the
// cluster's token.
package api

import (
	"strings"
	"time"
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
	// OwnIP, for run: the process's own address (IP/PREFIX, dsmrun run
	// --rank-ips, added with addip before), which drain and placement move
	// with it.
	OwnIP string `json:"own_ip,omitempty"`
	// PostCopy, for migrate: resume the process on the target before its
	// memory has arrived (migrated migrate --post-copy).
	PostCopy bool `json:"post_copy,omitempty"`
	// Timeout, for migrate: give the migration up (and resume the
	// process on its source) if it has not committed within this long.
	// A client that half-closes its connection (api.Client.Cancel) asks
	// the same at once.
	Timeout time.Duration `json:"timeout,omitempty"`
	Dir     string        `json:"dir,omitempty"`
	Job     string        `json:"job,omitempty"`  // run: the DSM job this process is a rank of
	Rank    int           `json:"rank,omitempty"` // run: its rank in Job
	Offset  int64         `json:"offset,omitempty"`
	// Policy, for migrate without To, place, drain and dsmrun's placement:
	// how to weigh the hosts (internal/placement; "" is balanced).
	Policy string `json:"policy,omitempty"`
	// DryRun, for drain: say where each process would go, move nothing.
	DryRun bool `json:"dry_run,omitempty"`
	// Secret is, for run, the DSM job's secret (runtime.SecretLen bytes,
	// made by dsmrun run for each job), which the rank gets on an inherited
	// pipe. Never logged or stored: it travels only inside wire's
	// encrypted frames or on the local socket (a connection of the
	// caller's own).
	Secret []byte `json:"secret,omitempty"`
	// Host, on the local socket, asks this daemon to pass the request on
	// to the daemon at Host (ADDR:PORT) for its caller, who holds no token:
	// the daemon adds Owner and relays the answer (DialVia).
	Host string `json:"host,omitempty"`
	// Owner is, on a request a daemon passes on for a local caller, the
	// user it acts for; the receiving daemon trusts it because only a
	// daemon (or root) holds the cluster token. A local client cannot set
	// it: its socket's peer credentials say who it is.
	Owner *Owner `json:"owner,omitempty"`
}

// Owner is the user a process runs as, and whose requests may see, read,
// kill and move it: the uid, gid and supplementary groups of the caller
// who started it. Root (uid 0) may do all of it to every process.
type Owner struct {
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
}

// IsRoot reports whether o is root, who may act on every process.
func (o Owner) IsRoot() bool { return o.UID == 0 }

// May reports whether o may see and act on a process that owner owns.
func (o Owner) May(owner Owner) bool { return o.IsRoot() || o.UID == owner.UID }

// Reply answers a Request.
type Reply struct {
	ID      string         `json:"id,omitempty"`
	Procs   []ProcInfo     `json:"procs,omitempty"`
	Records []MigrationRec `json:"records,omitempty"`
	Size    int64          `json:"size,omitempty"` // logs: bytes that follow
	Record  *MigrationRec  `json:"record,omitempty"`
	// follow: how the process left this host.
	State    string `json:"state,omitempty"`     // "exited" or "migrated"
	ExitCode int    `json:"exit_code,omitempty"` // when exited
	MovedTo  string `json:"moved_to,omitempty"`  // when migrated: the daemon it went to
	// Check answers check and identity (migrated check).
	Check *CheckReport `json:"check,omitempty"`
	// Hosts answers hosts and place: the cluster's daemons as this one's
	// --peers name them, for place best first.
	Hosts []HostInfo `json:"hosts,omitempty"`
	// Drain answers drain: what moved and what stayed.
	Drain *DrainReport `json:"drain,omitempty"`
}

// HostInfo is a daemon of the cluster as another daemon found it: what it
// said of itself, or why it did not answer (Error), and for place whether
// and why it was left out (Skip) or how it weighs (Cost: lower is better).
type HostInfo struct {
	Addr   string      `json:"addr"`
	Daemon *DaemonInfo `json:"daemon,omitempty"`
	Error  string      `json:"error,omitempty"`
	Self   bool        `json:"self,omitempty"` // the daemon that answered
	Cost   float64     `json:"cost,omitempty"`
	Skip   string      `json:"skip,omitempty"`
}

// DrainReport is what a drain did (or, DryRun, would do) with each process
// of the host.
type DrainReport struct {
	Host   string      `json:"host"` // the drained daemon
	DryRun bool        `json:"dry_run"`
	Items  []DrainItem `json:"items"`
}

// DrainItem is one process of a drain: where it went (or would go), or why
// it stays.
type DrainItem struct {
	ID     string        `json:"id"`
	Name   string        `json:"name"`
	Job    string        `json:"job,omitempty"`
	Rank   int           `json:"rank"`
	To     string        `json:"to,omitempty"`      // the target chosen
	MoveIP string        `json:"move_ip,omitempty"` // its own address, moved with it
	Moved  bool          `json:"moved"`
	Stayed string        `json:"stayed,omitempty"` // why it stays (not moved), or what went wrong
	Record *MigrationRec `json:"record,omitempty"`
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
	Job      string    `json:"job,omitempty"`
	Rank     int       `json:"rank"`
	UID      uint32    `json:"uid"` // the owner's
}

// Event is a step of a migration, shown by the client as it happens: a
// phase that ended (Phase, Dur, Info), or, with Phase "progress", how far
// the migration has come while a step runs (Info: the step; Bytes sent so
// far, of about Of; Rate: bytes per second lately).
type Event struct {
	Phase string        `json:"phase"`
	Dur   time.Duration `json:"dur"`
	Info  string        `json:"info,omitempty"`
	Bytes int64         `json:"bytes,omitempty"`
	Of    int64         `json:"of,omitempty"`
	Rate  float64       `json:"rate,omitempty"`
}

// Phases of Events that are not a migration's step.
const (
	PhaseProgress = "progress" // how far a step has come
	PhaseDrain    = "drain"    // a drain's news (Info): which process goes where, moved or stays
	PhasePlaced   = "placed"   // placement chose the target (Info), before a migration without one
)

// EventEvery is how often a migration reports its progress.
const EventEvery = 500 * time.Millisecond

// MigrationRec is the record every migration leaves on its source daemon.
type MigrationRec struct {
	ID       string        `json:"id"`
	Name     string        `json:"name"`
	From     string        `json:"from"`
	To       string        `json:"to"`
	MoveIP   string        `json:"move_ip,omitempty"`
	Job      string        `json:"job,omitempty"` // the DSM job, when the process is a rank
	Rank     int           `json:"rank"`
	Start    time.Time     `json:"start"`
	Phases   []Event       `json:"phases"`
	Total    time.Duration `json:"total"`
	Downtime time.Duration `json:"downtime"`
	Bytes    int64         `json:"bytes"`
	Outcome  string        `json:"outcome"` // "ok" or the error
	UID      uint32        `json:"uid"`     // the process's owner's
	// PostCopy: the process resumed on the target before its memory had
	// arrived; LastPage is the time from the freeze until its last page
	// arrived there (0 if it never did).
	PostCopy bool          `json:"post_copy,omitempty"`
	LastPage time.Duration `json:"last_page,omitempty"`
	// Result is what became of the process: ResultOK, ResultWarning,
	// ResultRefused, ResultLost or ResultFailed ("" in records of older
	// daemons: see RecResult).
	Result string `json:"result,omitempty"`
}

// A migration's Result.
const (
	ResultOK      = "ok"      // the process runs on the target
	ResultWarning = "warning" // it runs on the target, but a step after the commit failed (Outcome)
	ResultRefused = "refused" // it did not move and runs on its source as before
	ResultLost    = "lost"    // it is gone (post-copy: its memory could not all reach the target)
	ResultFailed  = "failed"  // it did not move, and resuming it on its source failed too (Outcome)
)

// RecResult is r's Result, also for a record that has none.
func RecResult(r MigrationRec) string {
	switch {
	case r.Result != "":
		return r.Result
	case r.Outcome == "ok":
		return ResultOK
	case strings.Contains(r.Outcome, "LOST"):
		return ResultLost
	case strings.HasSuffix(r.Outcome, "keeps running here") || strings.HasSuffix(r.Outcome, "resumed on the source"):
		return ResultRefused
	}
	return ResultWarning
}
