package migration

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"time"

	"dsmigrate/internal/api"
)

// Conn is the connection between the two daemons of a migration,
// authenticated and framed (internal/wire's *Conn is one). Any error makes
// it unusable.
type Conn interface {
	WriteMsg(typ byte, payload []byte) error
	ReadMsg() (typ byte, payload []byte, err error)
	SetDeadline(t time.Time) error
	Close() error
}

// Proc is what the engine needs to know of a process of this host.
type Proc struct {
	ID      string
	Name    string
	Argv    []string
	Started time.Time
	Moves   int
	Job     string
	Rank    int
	PID     int
	PipeKey string // "pipe:[ino]" of its output pipe, as CRIU names it
	Hooks   bool   // migration-aware: it registered prepare/resume hooks
	LogPath string
	Memory  int64     // bytes its dump is expected to hold (the target admits it by this)
	Owner   api.Owner // who it runs as: CRIU restores its credentials, the target its rights
}

// Procs is this host's process table and the shims that hold the processes.
type Procs interface {
	// Source side.

	// Claim marks process id as migrating (refused unless it is running) and
	// returns it.
	Claim(id string) (Proc, error)
	// Unclaim puts a process back to running after a migration that did
	// not take it away. A process that is not there is not an error.
	Unclaim(id string) error
	// Hook runs the process's prepare hook, or its resume hook ("resume",
	// with moved saying whether it now runs elsewhere).
	Hook(ctx context.Context, id, op string, moved bool) error
	// Continue sends SIGCONT to the process's tree.
	Continue(id string) error
	// FlushLog returns once everything the (stopped) process wrote is in
	// its log.
	FlushLog(ctx context.Context, id string) error
	// RepairOff takes the TCP sockets of the process's tree out of repair
	// mode, as CRIU does when a dump lets the process run on: the undo of a
	// dump with TCPEstablished, which leaves them in it (a tree continued
	// with them in repair mode would have dead connections). Idempotent,
	// and harmless to a tree that runs.
	RepairOff(ctx context.Context, id string) error
	// ConnLocks names the network lock tables of this host that block a
	// TCP connection of the process's tree. NetMover.LockName finds a
	// dump's table through the inventory the dump wrote, last: a CRIU
	// killed while it dumped memory (the dump's deadline, or its daemon's
	// death) left its table and no inventory.
	ConnLocks(ctx context.Context, id string) ([]string, error)
	// Gone kills the process's stopped tree and forgets it: it runs on the
	// target now (to). Reaping and removing its directory may happen later.
	Gone(ctx context.Context, id, to string) error

	// Target side.

	// Reserve holds a place for an incoming process (refused if the ID is
	// known here, or if this host lacks room for b.Memory) and returns the
	// path its log must be received at.
	Reserve(b *Begin) (logPath string, err error)
	// Restore restores the images in dir as process b.ID, stopped, held by
	// a shim of its own, and returns its pid. With lazy (post-copy), its
	// memory comes from lazy (Checkpointer.ServeLazy).
	Restore(ctx context.Context, b *Begin, dir string, lazy Lazy) (int, error)
	// Lose kills a post-copy arrival whose memory cannot all arrive (it
	// must not run on with pages missing) and notes why in its log. A
	// process that is gone already is not an error.
	Lose(ctx context.Context, id, why string) error
	// Discard kills a restored copy (if any) and drops the reservation and
	// the process's directory. Idempotent.
	Discard(ctx context.Context, id string) error
	// Activate continues the restored copy and registers it as running.
	Activate(ctx context.Context, b *Begin) error
}

// Checkpointer dumps a process and carries its images (CRIU, and the
// relay of its page stream over the daemons' connection).
type Checkpointer interface {
	// Dump checkpoints the stopped tree at pid into dir and leaves it
	// stopped; its pages stream to the target over c meanwhile.
	Dump(ctx context.Context, c Conn, pid int, dir string, tcp bool) (*DumpResult, error)
	// ReceivePages is the target's end of Dump's page stream, into dir.
	ReceivePages(ctx context.Context, c Conn, dir string) (int64, error)
	// SendImages sends the rest of the images in dir and the log.
	SendImages(ctx context.Context, c Conn, dir, logPath string) (bytes int64, files int, err error)
	// ReceiveImages receives what SendImages sent; pages bytes count
	// against the size budget already.
	ReceiveImages(ctx context.Context, c Conn, dir, logPath string, pages int64) error
	// DumpLazy checkpoints the stopped tree at pid into dir for post-copy:
	// its private anonymous memory stays in the tree, which CRIU keeps
	// stopped and serves to the target on demand over pc, the page
	// connection. It returns once the images in dir are complete.
	DumpLazy(ctx context.Context, pc Conn, pid int, dir string, tcp bool) (Lazy, *DumpResult, error)
	// ServeLazy starts the target's end of a post-copy page stream for the
	// images in dir (a restore with it may begin once it returns).
	ServeLazy(ctx context.Context, pc Conn, dir string) (Lazy, error)
	// StopLazy ends the target's end of a post-copy page stream that a
	// daemon before a restart started (Lazy.PID): only once the tree it
	// served has gone.
	StopLazy(pid int, dir string) error
	// ImagesDir makes a fresh directory for a migration's images; Remove
	// removes one (a missing one is not an error).
	ImagesDir(name string) (string, error)
	RemoveImages(dir string) error
}

// Lazy is one end of a post-copy page stream: on the source CRIU serving the
// stopped tree's memory, on the target CRIU's lazy-pages handing it to the
// restored tree as it touches it and fetching the rest in the background.
type Lazy interface {
	// Wait returns nil once every page has reached the target and the
	// stream is over, or why not.
	Wait(ctx context.Context) error
	// Failed is the stream's failure so far, without waiting (nil while
	// it is healthy or once it is done).
	Failed() error
	// Complete reports, without waiting, whether every page has reached
	// the target.
	Complete() bool
	// Confirm, on the target once Wait has returned nil and that has been
	// journaled, tells the source every page is here (it waits for that
	// word before it lets go of the tree). A no-op on the source.
	Confirm() error
	// Stop ends the stream and returns once it has ended. On the source
	// CRIU then lets go of the tree, stopped; on the target lazy-pages is
	// killed, so the tree it served must be gone first.
	Stop()
	// Bytes is the page bytes that went through so far.
	Bytes() int64
	// PID is the target's lazy-pages (0 on the source).
	PID() int
}

// DumpResult is what a dump reports.
type DumpResult struct {
	Freezing time.Duration // CRIU's time to freeze (a stopped tree: short)
	Pages    uint64
	Sent     int64 // page-stream bytes to the target
	Back     int64 // and back
	Died     bool  // the process died during a failed dump
}

// NetMover moves an address between hosts, with CRIU's network lock.
type NetMover interface {
	Iface(cidr string) (string, error)
	HasAddr(cidr string) (bool, error)
	AddAddr(iface, cidr string) error // an address already there is not an error
	DelAddr(iface, cidr string) error // an address not there is not an error
	// SaveAddr describes address cidr of iface as it is (scope, flags,
	// label, broadcast...), for RestoreAddr; an error if iface does not
	// hold it.
	SaveAddr(iface, cidr string) (string, error)
	// RestoreAddr puts back an address SaveAddr described, exactly as it
	// was; one already there is not an error.
	RestoreAddr(saved string) error
	Announce(iface, ip string) error
	LockName(imagesDir string) (string, error)
	ExportLock(table string) (string, error)
	CheckLock(rules string) (string, error)
	ImportLock(rules string) error
	DeleteLock(table string) error // a missing table is not an error
}

// Quiescer stops a tree with no fault queued in any thread (criu.Quiesce).
type Quiescer interface {
	Quiesce(pid int) error
}

// Peers reaches other daemons.
type Peers interface {
	// Dial connects and authenticates to the daemon at addr.
	Dial(ctx context.Context, addr string) (Conn, error)
}

// Journal keeps migration records.
//
// Put returns once the record survives this daemon's death (it is in the
// kernel's hands), which is what the steps' records need: a crash of the
// host that loses one takes the process copies, addresses and locks it
// speaks of with it. PutDurable returns once the record survives the
// host's crash too: a source's decision, which the other daemon acts on
// (the target resumes its copy once the source committed; a source that
// answered a question with abort must never commit), and every later write
// of that record.
type Journal interface {
	Put(r *Record) error
	PutDurable(r *Record) error
	Delete(mig string) error
	Load() ([]*Record, error)
}

// Faults are the fault points of the migration steps (Point says which).
// Check returns an error to make the step fail there, or nil; it may also
// never return (a daemon told to crash at that point kills itself).
type Faults interface {
	Check(point string) error
}

// Config is what an Engine works with.
type Config struct {
	Self     string // this daemon's ADDR:PORT, as peers reach it
	SelfID   string // this daemon's identity, whatever address it is reached at
	Procs    Procs
	CRIU     Checkpointer
	Net      NetMover
	Quiescer Quiescer
	Peers    Peers
	Journal  Journal
	Faults   Faults       // nil: none
	Log      *slog.Logger // nil: discard
	Timeouts Timeouts     // zero fields: defaults
	// OnRecord is given the record of every migration this daemon sent,
	// when it ends (the daemon's history).
	OnRecord func(api.MigrationRec)
	// OnArrival is given, when a migration this daemon received is over
	// here, a record of it as this side knows it (arrival.go): its Result
	// is ok or warning (the process runs here), refused (it did not arrive
	// and runs on its source) or lost (post-copy). nil: none.
	OnArrival func(api.MigrationRec)
	// Go starts a goroutine (nil: the go statement). A model check runs
	// the engine under its own scheduler and passes its own.
	Go func(f func())
	// Sleep waits for d or until ctx ends (nil: a timer).
	Sleep func(ctx context.Context, d time.Duration) error
}

// Timeouts bound the steps of a migration. Every network step has a deadline
// of its own; a stalled peer fails the step, and the migration is undone.
type Timeouts struct {
	Dial     time.Duration // connect, authenticate, begin and accept
	Prepare  time.Duration // the process's prepare hook
	Dump     time.Duration // CRIU's dump, pages streaming
	Stall    time.Duration // a transfer that makes no progress for this long fails
	Restore  time.Duration // the target's restore
	Commit   time.Duration // after the restore: the commit message, and the target's answer to it
	Ask      time.Duration // one outcome question
	AskPause time.Duration // between outcome questions (doubling up to 30 s)
	Total    time.Duration // one migration, start to end (a post-copy one until its last page arrived)
	Keep     time.Duration // how long a source keeps a settled migration's outcome
	Progress time.Duration // between a migration's progress events
}

// DefaultTimeouts are used for zero fields.
var DefaultTimeouts = Timeouts{
	Dial:     5 * time.Second,
	Prepare:  60 * time.Second,
	Dump:     5 * time.Minute,
	Stall:    30 * time.Second,
	Restore:  5 * time.Minute,
	Commit:   30 * time.Second,
	Ask:      10 * time.Second,
	AskPause: 500 * time.Millisecond,
	Total:    15 * time.Minute,
	Keep:     24 * time.Hour,
	Progress: api.EventEvery,
}

func (t Timeouts) withDefaults() Timeouts {
	d := DefaultTimeouts
	for _, f := range []struct{ v, def *time.Duration }{
		{&t.Dial, &d.Dial}, {&t.Prepare, &d.Prepare}, {&t.Dump, &d.Dump}, {&t.Stall, &d.Stall},
		{&t.Restore, &d.Restore}, {&t.Commit, &d.Commit}, {&t.Ask, &d.Ask}, {&t.AskPause, &d.AskPause},
		{&t.Total, &d.Total}, {&t.Keep, &d.Keep}, {&t.Progress, &d.Progress},
	} {
		if *f.v == 0 {
			*f.v = *f.def
		}
	}
	return t
}

// Engine runs the migrations of one daemon: those it sends (Out), those it
// receives (In), the outcome questions it answers (Answer), and the
// settling of what a crash left unfinished (Recover).
type Engine struct {
	cfg Config
	t   Timeouts
	log *slog.Logger

	mu   sync.Mutex         // guards migs, pageConns and pages
	migs map[string]*Record // every migration in the journal, by Mig
	// pageConns are the incoming post-copy migrations that take a page
	// connection, by Mig, until they are over with it.
	pageConns map[string]*pageWait
	// pages says how recent incoming post-copy migrations ended for their
	// memory (PagesComplete or PagesLost), by Mig, for sources whose page
	// stream broke before they heard (AskPages).
	pages map[string]pagesEnd
}

// pageWait is where an incoming post-copy migration gets its page
// connection (HandlePeer hands it over on ch, and keeps the connection
// open until released is closed).
type pageWait struct {
	ch       chan Conn
	released chan struct{}
	once     sync.Once
}

// How an incoming post-copy migration's memory ended (PagesAnswer).
const (
	PagesComplete = "complete" // the copy got every page
	PagesLost     = "lost"     // it did not, and was killed
	PagesPending  = "pending"  // not yet known: the migration is under way
)

type pagesEnd struct {
	outcome string
	at      time.Time
}

// notePages records how migration mig's memory ended, for AskPages;
// entries older than an hour go.
func (e *Engine) notePages(mig, outcome string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for k, v := range e.pages {
		if time.Since(v.at) > time.Hour {
			delete(e.pages, k)
		}
	}
	e.pages[mig] = pagesEnd{outcome, time.Now()}
}

// pagesAnswer says how migration mig's memory ended here.
func (e *Engine) pagesAnswer(mig string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if p, ok := e.pages[mig]; ok {
		return p.outcome
	}
	if _, ok := e.migs[mig]; ok {
		return PagesPending
	}
	return Unknown
}

// New returns an engine; call Recover before serving peers.
func New(cfg Config) *Engine {
	e := &Engine{cfg: cfg, t: cfg.Timeouts.withDefaults(), log: cfg.Log, migs: map[string]*Record{},
		pageConns: map[string]*pageWait{}, pages: map[string]pagesEnd{}}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.cfg.Go == nil {
		e.cfg.Go = func(f func()) { go f() }
	}
	if e.cfg.Sleep == nil {
		e.cfg.Sleep = func(ctx context.Context, d time.Duration) error {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return e
}

// Outcomes of a migration, as the source decides them.
const (
	Committed = "committed"
	Aborted   = "aborted"
	Unknown   = "unknown" // the source has no such migration (any more)
)

// Sides of a migration.
const (
	SideSource = "source"
	SideTarget = "target"
)

// Record is a migration as the journal keeps it, on either side. It is
// written before each step begins, so that after a crash the daemon knows
// which steps may have had effects and must be undone (or, past the commit,
// finished).
type Record struct {
	Mig       string    `json:"mig"`
	Side      string    `json:"side"`
	ProcID    string    `json:"proc_id"`
	Peer      string    `json:"peer"` // the other daemon: target (source side) or source (target side)
	MoveIP    string    `json:"move_ip,omitempty"`
	Iface     string    `json:"iface,omitempty"`
	Step      string    `json:"step"`               // the last step begun
	Undone    string    `json:"undone,omitempty"`   // after a failure: the earliest step whose undo is done (and all after it)
	Decision  string    `json:"decision,omitempty"` // source: "", Committed or Aborted
	Images    string    `json:"images,omitempty"`   // the images directory
	Lock      string    `json:"lock,omitempty"`     // CRIU's network lock table
	PID       int       `json:"pid,omitempty"`      // source: the process's pid when it was claimed
	Hooks     bool      `json:"hooks,omitempty"`    // source: its hooks run (prepare, then resume)
	UID       uint32    `json:"uid,omitempty"`      // source: the process's owner, for its history record
	Begin     *Begin    `json:"begin,omitempty"`    // target: what the source sent
	Start     time.Time `json:"start"`
	Frozen    time.Time `json:"frozen,omitzero"`      // source: when the process stopped for the dump (its downtime began)
	Settled   time.Time `json:"settled,omitzero"`     // when its outcome was reached; kept until Keep has passed
	Saved     string    `json:"saved_addr,omitempty"` // source: MoveIP as it was (NetMover.SaveAddr), for the undo
	PostCopy  bool      `json:"post_copy,omitempty"`  // the process resumes on the target before its memory arrives
	LazyPID   int       `json:"lazy_pid,omitempty"`   // target, post-copy: its lazy-pages
	PagesDone bool      `json:"pages_done,omitempty"` // target, post-copy: every page arrived
}

var idRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9a-f]{12}$`) })

// ValidID reports whether s is a process or migration ID as daemons make them.
func ValidID(s string) bool { return idRE().MatchString(s) }

// save applies mutate (may be nil) to r and journals it, under the engine's
// lock: r's fields change only here, so an outcome question (Answer) never
// sees a record half-changed. A source's record that holds its decision is
// written durably from then on: a rewrite that a crash of the host could
// tear would take the decision with it, and the target may still ask.
func (e *Engine) save(r *Record, mutate func(*Record)) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if mutate != nil {
		mutate(r)
	}
	if err := e.putLocked(r); err != nil {
		return err
	}
	e.migs[r.Mig] = r
	return nil
}

// putLocked journals r, durably if it is a source's record that holds its
// decision (save). The caller holds e.mu.
func (e *Engine) putLocked(r *Record) error {
	put := e.cfg.Journal.Put
	if r.Side == SideSource && r.Decision != "" {
		put = e.cfg.Journal.PutDurable
	}
	if err := put(r); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	return nil
}

// decision is r's outcome so far ("" while undecided).
func (e *Engine) decision(r *Record) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return r.Decision
}

// forget drops a settled migration from the journal.
func (e *Engine) forget(r *Record) {
	e.mu.Lock()
	delete(e.migs, r.Mig)
	e.mu.Unlock()
	if err := e.cfg.Journal.Delete(r.Mig); err != nil {
		e.log.Error("removing a settled migration from the journal", "mig", r.Mig, "err", err)
	}
}

// Active reports the unsettled migrations in the journal, for ps and tests.
func (e *Engine) Active() []Record {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Record
	for _, r := range e.migs {
		if r.Settled.IsZero() {
			out = append(out, *r)
		}
	}
	return out
}

// Point names a fault point: "SIDE-WHEN-STEP", e.g. "source-before-dump"
// or "target-after-restore". The daemon arms one with the file
// STATE/faults/POINT (see internal/daemon/engine.go).
func Point(side, when, step string) string { return side + "-" + when + "-" + step }

func (e *Engine) fault(side, when, step string) error {
	if e.cfg.Faults == nil {
		return nil
	}
	p := Point(side, when, step)
	if err := e.cfg.Faults.Check(p); err != nil {
		return fmt.Errorf("fault point %s: %w", p, err)
	}
	return nil
}

// HandlePeer serves the first message of a connection another daemon
// opened: a Begin (the process comes here: In) or an outcome question
// (Answer). It reports false for any other type, which the caller serves.
func (e *Engine) HandlePeer(ctx context.Context, c Conn, typ byte, payload []byte) (bool, error) {
	switch typ {
	case tBegin:
		var b Begin
		if err := json.Unmarshal(payload, &b); err != nil {
			err = fmt.Errorf("bad begin message: %v", err)
			sendError(c, err)
			return true, err
		}
		return true, e.In(ctx, c, &b)
	case tPageConn:
		mig, err := migOf(c, payload, "page connection")
		if err != nil {
			return true, err
		}
		e.mu.Lock()
		w := e.pageConns[mig]
		e.mu.Unlock()
		if w == nil {
			err := fmt.Errorf("no post-copy migration %s waits for its page connection here", mig)
			sendError(c, err)
			return true, err
		}
		// Accepted before it is handed over: the migration uses it only
		// from its restore on, and the source waits for this.
		if err := send(ctx, c, e.t.Dial, tAccept, struct{}{}); err != nil {
			return true, err
		}
		c.SetDeadline(time.Time{})
		select {
		case w.ch <- c:
		default:
			return true, fmt.Errorf("migration %s has its page connection already", mig)
		}
		// The migration reads and writes it from here on (or never, if it
		// ends first); the caller closes it when this returns.
		<-w.released
		return true, nil
	case tPagesQuery:
		mig, err := migOf(c, payload, "pages question")
		if err != nil {
			return true, err
		}
		return true, send(ctx, c, e.t.Ask, tPagesAnswer, &OutcomeMsg{Mig: mig, Outcome: e.pagesAnswer(mig)})
	case tOutcome:
		mig, err := migOf(c, payload, "outcome question")
		if err != nil {
			return true, err
		}
		o, err := e.Answer(mig)
		if err != nil {
			sendError(c, err)
			return true, err
		}
		return true, send(ctx, c, e.t.Ask, tOutcomeReply, &OutcomeMsg{Mig: mig, Outcome: o})
	}
	return false, nil
}

// migOf is the migration a peer's question or page connection names
// (OutcomeMsg and PageConnMsg both carry it as "mig"); a malformed one is
// answered with an error.
func migOf(c Conn, payload []byte, what string) (string, error) {
	var q OutcomeMsg
	if err := json.Unmarshal(payload, &q); err != nil || !ValidID(q.Mig) {
		err = fmt.Errorf("malformed %s", what)
		sendError(c, err)
		return "", err
	}
	return q.Mig, nil
}
