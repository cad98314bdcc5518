package migration

// A fake world of hosts for the engine's tests: per host a process table
// with the copies of the process, addresses, CRIU's network lock tables,
// images directories, a journal that survives the daemon (it is the disk),
// and the daemon itself (an Engine, up, down or recovering); connections
// between daemons as message queues that can break; and a scheduler that
// runs every goroutine of the engine one at a time, choosing at every call
// into a fake what happens next (which goroutine proceeds, a connection
// breaks, a daemon crashes or restarts). The unit tests (engine_test.go,
// postcopy_test.go) drive it with a fixed choice; the model check
// (model_test.go) explores every choice.
//
// Post-copy (the section "Post-copy" below): the source's CRIU session that
// holds the stopped tree and serves its memory after a lazy dump, the
// target's lazy-pages (both processes of their own, outliving their
// daemon), and on each daemon a relay goroutine that carries the page
// stream over the page connection, as internal/daemon/lazy.go does. The
// page connection's HandlePeer, which blocks on a channel until the
// migration releases it, leaves the scheduler there (SetDeadline).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"dsmigrate/internal/api"
	"dsmigrate/internal/wire"
)

// ---------------------------------------------------------------------------
// The scheduler.

// crashPanic unwinds a goroutine of a daemon that crashed, or of a run that
// ended: engine code defers only closes, cancels and unlocks, which a real
// crash also "does" (the kernel closes the fds; the memory goes).
type crashPanic struct{}

// gor is one goroutine of the engine (or of a fake daemon's peer handler).
type gor struct {
	name     string
	h        *host // its daemon's host
	wake     chan bool
	label    string      // the call it is parked at
	cond     func() bool // nil: ready; else ready when cond() (a read, a sleep)
	timedOut bool        // its read times out, its sleep ends
	crashed  bool
	done     bool
	hist     uint64 // its history: calls (with call stacks) and their results
	spawned  int
	dirty    bool // it changed a host or a connection since its last decision point
	// timer: whether time passes for it where it waits (cond not nil):
	// timerNormal, timerSlow (only when it can for no other goroutine: the
	// page stream's relays, whose timeouts are longer than the engine's)
	// or timerNone (never: a Lazy.Wait, which its relay ends). nextTimer is
	// the timer of its next yield point.
	timer, nextTimer int
	// detached: a peer handler that HandlePeer keeps blocked on a channel
	// (a page connection handed over, until the migration releases it):
	// done for the scheduler, it runs on outside it and touches nothing.
	detached bool
}

type choiceKind int

const (
	timerNormal = iota
	timerSlow
	timerNone
)

const (
	cRun     choiceKind = iota // a goroutine proceeds
	cTime                      // time passes: a blocked read times out, a sleep ends
	cRestart                   // a crashed daemon restarts (Recover, then serves peers)
	cCrash                     // a daemon crashes
	cBreak                     // a connection breaks (a lost frame: both ends fail)
	cCont                      // at a journal write: go on
)

type choice struct {
	kind choiceKind
	g    *gor
	h    *host
	c    *conn
}

func (c choice) String() string {
	switch c.kind {
	case cRun:
		return fmt.Sprintf("run %s @ %s", c.g.name, c.g.label)
	case cTime:
		return fmt.Sprintf("time passes for %s @ %s", c.g.name, c.g.label)
	case cRestart:
		return "RESTART " + c.h.name
	case cCrash:
		return "CRASH " + c.h.name
	case cBreak:
		return "BREAK conn " + c.c.id
	case cCont:
		return "journal write"
	}
	return "?"
}

// strategy makes the scheduler's choices; -1 ends the run.
type strategy interface {
	choose(s *sched, opts []choice, atPut bool) int
}

type sched struct {
	w         *world
	gs        []*gor // by name
	cur       *gor   // the holder of the baton
	finished  chan struct{}
	over      bool // the run is over: what is left unwinds
	strat     strategy
	steps     int
	maxSteps  int
	maxCrash  int // per daemon
	maxBreak  int // per run
	maxFaults int // crashes and breaks per run (0: no limit but the above)
	breaks    int
	stopped   bool // the strategy ended the run
	terminal  bool // every goroutine done, every daemon up
	panicMsg  string
	tracing   bool
	events    []string
}

func (s *sched) trace(format string, args ...any) {
	if s.tracing {
		s.events = append(s.events, s.w.canon(fmt.Sprintf(format, args...)))
	}
}

// The goroutines pass a baton: the one that holds it runs; at a yield
// point it makes the scheduler's choices itself (s.next) and hands the
// baton to the goroutine chosen (or keeps it, if chosen again), then waits
// for it to come back. A goroutine that ends hands it on too; the last one
// to end hands it back to run's caller.

// spawn starts f as a goroutine of h's daemon, parked until chosen.
func (s *sched) spawn(h *host, name string, f func()) *gor {
	g := &gor{name: name, h: h, wake: make(chan bool), label: "start"}
	i, _ := slices.BinarySearchFunc(s.gs, name, func(g *gor, n string) int { return strings.Compare(g.name, n) })
	s.gs = slices.Insert(s.gs, i, g)
	go func() {
		defer func() {
			if g.detached {
				return
			}
			if r := recover(); r != nil {
				if _, ok := r.(crashPanic); !ok && s.panicMsg == "" {
					s.panicMsg = fmt.Sprintf("goroutine %s panicked: %v\n%s", g.name, r, debug.Stack())
				}
			}
			g.done = true
			s.handoff(g)
		}()
		if <-g.wake {
			panic(crashPanic{})
		}
		f()
	}()
	return g
}

// yield parks the calling goroutine before a call into a fake until the
// scheduler lets it proceed (it is ready when cond is nil or true).
func (s *sched) yield(label string, cond func() bool) *gor {
	g := s.cur
	if g == nil {
		panic("a fake was called outside a scheduled goroutine: " + label)
	}
	if g.crashed {
		panic(crashPanic{}) // unwinding: a dead daemon does nothing more
	}
	g.label, g.cond = label, cond
	g.timer, g.nextTimer = g.nextTimer, timerNormal
	if s.handoff(g) || g.crashed {
		panic(crashPanic{})
	}
	// Where it is: the call sites up to the engine's step function.
	var pcs [5]uintptr
	n := runtime.Callers(3, pcs[:])
	h := g.hist
	for _, pc := range pcs[:n] {
		h = mix(h, uint64(pc))
	}
	g.hist = mixs(h, s.w.canon(label))
	// What it is about to do changes the world, but for a read (what a
	// daemon read before it crashed makes no difference: its connections
	// close) and a fault point.
	g.dirty = cond == nil && !strings.HasPrefix(label, "fault point")
	s.trace("%s: %s", g.name, label)
	return g
}

// handoff is called by the holder of the baton, self, parked at a yield
// point or done: it chooses what happens next until a goroutine is to run,
// passes the baton to it and waits for it to come back. It reports whether
// self must unwind.
func (s *sched) handoff(self *gor) bool {
	t, unwind := s.next()
	if t == nil {
		s.cur = nil
		s.finished <- struct{}{}
		return false
	}
	s.cur = t
	if t == self {
		return unwind
	}
	t.wake <- unwind
	if self == nil || self.done {
		return false
	}
	return <-self.wake
}

// next makes the scheduler's choices until a goroutine is to run (or to
// unwind: those of a crashed daemon first); nil when every goroutine is
// done and the run is over.
func (s *sched) next() (*gor, bool) {
	for {
		for _, g := range s.gs {
			if g.crashed && !g.done {
				return g, true
			}
		}
		if s.over {
			return nil, false
		}
		s.w.pollPageConns()
		s.w.checkSafety()
		opts := s.options()
		if s.over {
			continue
		}
		if len(opts) == 0 {
			s.terminal, s.over = true, true
			continue
		}
		if s.steps++; s.steps > s.maxSteps {
			s.w.violate("livelock", fmt.Sprintf("more than %d steps", s.maxSteps))
			s.stop()
			continue
		}
		i := s.strat.choose(s, opts, false)
		if i < 0 {
			s.stop()
			continue
		}
		switch c := opts[i]; c.kind {
		case cRun:
			return c.g, false
		case cTime:
			s.trace("time passes for %s @ %s", c.g.name, c.g.label)
			c.g.timedOut = true
			return c.g, false
		case cCrash:
			s.trace("CRASH %s", c.h.name)
			s.crashHost(c.h)
		case cRestart:
			s.trace("RESTART %s", c.h.name)
			s.restartHost(c.h)
		case cBreak:
			s.trace("BREAK conn %s", c.c.id)
			c.c.broken = true
			s.breaks++
		}
	}
}

// stop ends the run early: every goroutine unwinds.
func (s *sched) stop() {
	s.stopped, s.over = true, true
	for _, g := range s.gs {
		if !g.done {
			g.crashed = true
		}
	}
}

// run schedules until every goroutine is done and every daemon up (or the
// strategy ends the run, and what is left unwinds).
func (s *sched) run() {
	s.finished = make(chan struct{}, 1)
	// A goroutine that blocks outside the scheduler (on a channel or a
	// real timer of the engine's, which no fake sees) stalls every run:
	// fail loudly rather than hang.
	stuck := time.AfterFunc(5*time.Minute, func() {
		panic("the scheduler is stuck: a goroutine of the engine blocks outside it (a channel or a real timer " +
			"no fake sees: HandlePeer's page connection, inMig.pageConn?)")
	})
	s.handoff(nil)
	<-s.finished
	stuck.Stop()
	s.w.releasePageConns()
}

// note adds a call's result to the history of the calling goroutine.
func (s *sched) note(res string) {
	if g := s.cur; g != nil {
		g.hist = mixs(g.hist, s.w.canon(res))
	}
}

func (s *sched) noteErr(err error) error {
	if err != nil {
		s.note("err")
		s.trace("    -> %v", err)
	} else {
		s.note("ok")
	}
	return err
}

// putPoint is a journal write: a choice between going on and crashing the
// writer's daemon right before the write, never a switch to another
// goroutine (the writer holds Engine.mu; a write commutes with everything
// but a Load, which only a restart does). A crash right after the write is
// a crash at the writer's next yield point.
//
// A crash before a write that follows the writer's last decision point
// with no change to the world in between is the crash at that decision
// point: not offered again.
func (s *sched) putPoint(h *host, what string) {
	g := s.cur
	if g == nil || g.crashed {
		return
	}
	g.hist = mixs(g.hist, "put "+what)
	dirty := g.dirty
	g.dirty = true
	if !s.canCrash(h) || !dirty {
		return
	}
	g.label, g.cond = "journal "+what, nil
	i := s.strat.choose(s, []choice{{kind: cCont}, {kind: cCrash, h: h}}, true)
	if i < 0 {
		s.stop()
		panic(crashPanic{})
	}
	if i == 1 {
		s.trace("CRASH %s before the journal write %s (in %s)", h.name, what, g.name)
		s.crashHost(h)
		panic(crashPanic{})
	}
}

// alive are the goroutines not done, by name (s.gs is kept sorted).
// others reports whether a goroutine other than the current one is alive
// (a goroutine of the other daemon may dial h and act on h's records).
func (s *sched) others() bool {
	for _, g := range s.gs {
		if g != s.cur && !g.done && !g.crashed {
			return true
		}
	}
	return false
}

func (s *sched) faults() int {
	n := s.breaks
	for _, h := range s.w.hosts {
		n += h.crashes
	}
	return n
}

func (s *sched) canCrash(h *host) bool {
	return h.crashes < s.maxCrash && (s.maxFaults == 0 || s.faults() < s.maxFaults) &&
		(s.w.cfg.crashOnly == "" || s.w.cfg.crashOnly == h.name)
}

func (s *sched) canBreak() bool {
	return s.breaks < s.maxBreak && (s.maxFaults == 0 || s.faults() < s.maxFaults)
}

func (s *sched) alive() []*gor {
	var out []*gor
	for _, g := range s.gs {
		if !g.done {
			out = append(out, g)
		}
	}
	return out
}

func (s *sched) options() []choice {
	var ready, timed, slow []choice
	alive := s.alive()
	for _, g := range alive {
		switch {
		case g.cond == nil || g.cond():
			ready = append(ready, choice{kind: cRun, g: g})
		case g.timer == timerNormal:
			timed = append(timed, choice{kind: cTime, g: g})
		case g.timer == timerSlow:
			slow = append(slow, choice{kind: cTime, g: g})
		}
	}
	if len(timed) == 0 {
		timed = slow
	}
	down := false
	for _, h := range s.w.hosts {
		if h.status == hostDown {
			down = true
		}
	}
	if len(alive) == 0 && !down {
		return nil
	}
	if len(ready) == 0 && len(timed) == 0 && !down {
		var names []string
		for _, g := range alive {
			names = append(names, g.name+" @ "+g.label)
		}
		s.w.violate("deadlock", fmt.Sprintf("every goroutine waits for ever: %v", names))
		s.stop()
		return nil
	}
	opts := ready
	if len(ready) == 0 && !down {
		// Time passes only when nothing else can happen, and never while
		// a daemon is down: it restarts first (a daemon down forever is
		// outside the bound).
		opts = append(opts, timed...)
	}
	for _, h := range s.w.hosts {
		if h.status == hostDown {
			opts = append(opts, choice{kind: cRestart, h: h})
		}
	}
	if len(alive) > 0 {
		for _, h := range s.w.hosts {
			if h.status != hostDown && s.canCrash(h) {
				opts = append(opts, choice{kind: cCrash, h: h})
			}
		}
		if s.canBreak() {
			for _, c := range s.w.conns {
				if !c.broken && !c.closed[0] && !c.closed[1] && (c.page || !s.w.cfg.breakPage) {
					opts = append(opts, choice{kind: cBreak, c: c})
				}
			}
		}
	}
	return opts
}

// crashHost kills h's daemon: its goroutines unwind at their next yield
// point, its connections close (the kernel closes a dead process's
// sockets: the peer reads what was sent, then EOF), its engine goes. Its
// journal and its host (process table, addresses, locks, images) stay.
func (s *sched) crashHost(h *host) {
	h.status = hostDown
	h.crashes++
	h.eng = nil
	for _, g := range s.gs {
		if g.h == h && !g.done {
			g.crashed = true
		}
	}
	for _, c := range s.w.conns {
		for i := range 2 {
			if c.host[i] == h {
				c.closed[i] = true
				c.q[i] = nil
			}
		}
	}
	// Post-copy: the daemon's end of the source CRIU's page socket closes,
	// which ends its session (it lets go of the tree, stopped, lock and
	// repair mode as the dump left them). The target's lazy-pages sees the
	// end of its socket too, unless a shim holds a copy of it (a restored
	// tree): then it waits, and so do the tree's faults.
	for _, x := range h.sessions {
		x.serving = false
	}
	for _, lp := range h.lazyPages {
		if lp.state == "running" && !lp.held {
			lp.state = "eof"
			s.w.lazyEnded(h, lp)
		}
	}
}

func (s *sched) restartHost(h *host) {
	h.inc++
	h.status = hostRecovering
	e := h.newEngine()
	h.eng = e
	s.spawn(h, fmt.Sprintf("%s%d.recover", h.name, h.inc), func() {
		if err := e.Recover(context.Background()); err != nil {
			s.w.violate("Recover failed", err.Error())
		}
		h.status = hostUp
	})
}

// ---------------------------------------------------------------------------
// Hashing of global states.

func mix(h, v uint64) uint64 {
	h ^= v + 0x9e3779b97f4a7c15 + (h << 6) + (h >> 2)
	return h * 0x100000001b3
}

func mixs(h uint64, s string) uint64 {
	f := fnv.New64a()
	f.Write([]byte(s))
	return mix(h, f.Sum64())
}

// hash is the global state: every host (process table, addresses, locks,
// images, journal, hooks run, its daemon's state), every connection (its
// queued messages), every live goroutine (where it is parked and its
// history), and the bound's budgets. An engine's memory is not in it: its
// records mirror its journal (every change is journaled at once, under its
// lock), and everything else a goroutine holds is a function of its
// history (the calls it made, with their call stacks, and their results).
func (s *sched) hash() uint64 {
	w := s.w
	var b strings.Builder
	for _, h := range w.hosts {
		fmt.Fprintf(&b, "H%s %d %d %d|", h.name, h.status, h.inc, h.crashes)
		for _, id := range sortedKeys(h.procs) {
			p := h.procs[id]
			fmt.Fprintf(&b, "p%s %s %s", id, p.state, p.logPath)
			if c := p.copy; c != nil {
				fmt.Fprintf(&b, " c%d %s %d %v %v", c.pid, c.state, c.ver, c.repair, c.zeros)
			}
			b.WriteByte(';')
		}
		for _, a := range sortedKeys(h.addrs) {
			b.WriteString("a" + a + ";")
		}
		for _, l := range sortedKeys(h.locks) {
			b.WriteString("l" + l + "=" + h.locks[l] + ";")
		}
		for _, d := range sortedKeys(h.dirs) {
			fmt.Fprintf(&b, "d%s %+v;", d, *h.dirs[d])
		}
		for _, m := range sortedKeys(h.jcanon) {
			b.WriteString("j" + h.jcanon[m] + ";")
		}
		fmt.Fprintf(&b, "k%v %d %d;", h.hooks, h.pidSeq, h.runSeq)
		for _, x := range h.sessions {
			fmt.Fprintf(&b, "s%s %v %v;", x.run, x.serving, x.complete)
		}
		for _, lp := range h.lazyPages {
			fmt.Fprintf(&b, "z%d %s %d %v;", lp.pid, lp.state, lp.got, lp.held)
		}
		fmt.Fprintf(&b, "x%v;", h.lost)
	}
	for _, l := range w.lazies {
		fmt.Fprintf(&b, "Z%s %v %v %v %d %v %v %d %v %v;", l.side, l.finished, l.err != nil, l.failure != nil, l.bytes,
			l.endSent, l.finSent, l.asked, l.stopped, l.checkedOK)
	}
	for _, c := range w.conns {
		fmt.Fprintf(&b, "C%s %v %v %v %v %v", c.id, c.broken, c.closed, c.host[0].name, c.host[1].name, c.page)
		for i := range 2 {
			for _, m := range c.q[i] {
				b.WriteString(" " + m.canon)
			}
			b.WriteByte('/')
		}
	}
	for _, g := range s.alive() {
		fmt.Fprintf(&b, "G%s %s %x %v %v;", g.name, g.label, g.hist, g.crashed, g.cond != nil && !g.cond())
	}
	fmt.Fprintf(&b, "L%d B%d O%v %v", w.latest, s.breaks, w.outDone, w.outErr != nil)
	f := fnv.New64a()
	f.Write([]byte(w.canon(b.String())))
	return f.Sum64()
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ---------------------------------------------------------------------------
// The world.

const (
	testProcID = "0123456789ab"
	testCIDR   = "10.9.9.9/24"
)

var testStarted = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// bigTimeouts: nothing expires during a run (a stalled peer is a choice of
// the scheduler: a broken connection or a timed-out read).
var bigTimeouts = Timeouts{Dial: time.Hour, Prepare: time.Hour, Dump: time.Hour, Stall: time.Hour,
	Restore: time.Hour, Commit: time.Hour, Ask: time.Hour, AskPause: time.Millisecond, Total: 10 * time.Hour,
	Keep: 1000 * time.Hour}

type worldCfg struct {
	moveIP    bool
	hooks     bool
	maxCrash  int
	maxBreak  int
	maxFaults int
	maxSteps  int
	faults    map[string]string // point -> "fail" or "crash"
	// postCopy migrates with Request.PostCopy; pages is how many pages the
	// target's lazy-pages fetches then, one request at a time (default 1).
	postCopy bool
	pages    int
	// crashOnly, if set, is the one host whose daemon may crash;
	// breakPage: only the page connection may break (smaller bounds for
	// the model check).
	crashOnly string
	breakPage bool
}

type world struct {
	s      *sched
	cfg    worldCfg
	hosts  []*host // A (the source), B (the target)
	conns  []*conn
	mig    string
	latest int // the newest version of the process's memory that ever existed

	outDone bool
	outRec  *api.MigrationRec
	outErr  error
	// cancelOut calls Out's caller's context off (fault mode "cancel":
	// a client's Ctrl-C at that point).
	cancelOut context.CancelCauseFunc

	faultsSeen []string
	viol       []string // "kind: detail"
	dupAddr    bool     // the address was on two hosts at some point

	// Post-copy: every Lazy the fakes made, in order; the target's page
	// events, in order ("resume", "page", "lose", "stop"...), for the tests.
	lazies  []*fakeLazy
	pcEvent []string

	// Unit tests' hooks (nil in the model).
	afterWrite func(e *end, typ byte)
	afterRead  func(e *end, typ byte)
	beforePut  func(h *host, r *Record) bool // true: h's daemon crashes right before the write
	// afterOp is called after a fake's operation on h took effect (op is
	// its label: "Procs.Activate", "Procs.Restore", "CRIU.DumpLazy",
	// "CRIU.ServeLazy", "page" when a page reached the target...).
	afterOp func(h *host, op string)
	// pagesWait: while it says so, the target's lazy-pages asks for no
	// page (a slow page stream).
	pagesWait func() bool
}

const (
	hostUp = iota
	hostDown
	hostRecovering
)

type host struct {
	w      *world
	name   string
	addr   string
	status int
	inc    int
	eng    *Engine
	// crashes counts the crashes of its daemon.
	crashes int

	procs   map[string]*reg
	addrs   map[string]bool
	locks   map[string]string
	lockOf  map[string]string // table: the process whose dump made it
	dirs    map[string]*imgDir
	journal map[string][]byte
	jcanon  map[string]string
	// writes are the journal's writes in order (not in the state).
	writes  []journalWrite
	hooks   []string
	records []api.MigrationRec
	// restored are the addresses RestoreAddr put back (not in the state:
	// the address is).
	restored []string
	pidSeq   int
	runSeq   int

	// Post-copy: the source's CRIU sessions serving a stopped tree's
	// memory, the target's lazy-pages processes; lost: Procs.Lose killed
	// the process here.
	sessions  []*criuSession
	lazyPages []*lazyProc
	lost      bool
}

// reg is a process registered in a host's table, with its copy there.
type reg struct {
	state   string // running, migrating, incoming
	copy    *pcopy // nil: a reservation (or a copy that died)
	logPath string
}

type pcopy struct {
	pid    int
	state  string // running or stopped (a dead copy is nil)
	ver    int    // the version of its memory; running makes a new one
	repair bool   // its TCP sockets are in repair mode (after a TCP dump)
	// Post-copy: lazy is the lazy-pages its memory comes from (nil: it has
	// all of it); zeros: lazy-pages ended while pages were missing, which
	// the kernel then fills with zeros; dead: killed.
	lazy  *lazyProc
	zeros bool
	dead  bool
}

type imgDir struct {
	Dumped bool // a complete dump's images (source)
	Pages  bool // received pages (target)
	Images bool // received images (target)
	Run    string
	Ver    int
	TCP    bool
	Lazy   bool // a lazy dump's images: the private memory is not in them
}

func newWorld(cfg worldCfg, strat strategy) *world {
	if cfg.maxSteps == 0 {
		cfg.maxSteps = 5000
	}
	if cfg.postCopy && cfg.pages == 0 {
		cfg.pages = 1
	}
	w := &world{cfg: cfg, latest: 1}
	w.s = &sched{w: w, strat: strat, maxSteps: cfg.maxSteps, maxCrash: cfg.maxCrash,
		maxBreak: cfg.maxBreak, maxFaults: cfg.maxFaults}
	for i, name := range []string{"A", "B"} {
		h := &host{w: w, name: name, addr: fmt.Sprintf("10.0.0.%d:7000", i+1), procs: map[string]*reg{},
			addrs: map[string]bool{}, locks: map[string]string{}, lockOf: map[string]string{}, dirs: map[string]*imgDir{},
			journal: map[string][]byte{}, jcanon: map[string]string{}, pidSeq: 100 * (i + 1)}
		h.eng = h.newEngine()
		w.hosts = append(w.hosts, h)
	}
	a := w.hosts[0]
	a.pidSeq++
	a.procs[testProcID] = &reg{state: "running", logPath: "/procs/" + testProcID + "/log",
		copy: &pcopy{pid: a.pidSeq, state: "running", ver: 1}}
	if cfg.moveIP {
		a.addrs[testCIDR] = true
	}
	return w
}

func (w *world) A() *host { return w.hosts[0] }
func (w *world) B() *host { return w.hosts[1] }

func (w *world) byAddr(addr string) *host {
	for _, h := range w.hosts {
		if h.addr == addr {
			return h
		}
	}
	return nil
}

// canon replaces the migration's random ID, so that runs compare.
func (w *world) canon(s string) string {
	if w.mig == "" {
		return s
	}
	return strings.ReplaceAll(s, w.mig, "MIG")
}

func (w *world) violate(kind, detail string) {
	v := kind + ": " + w.canon(detail)
	if !slices.Contains(w.viol, v) {
		w.viol = append(w.viol, v)
	}
}

// startOut starts the migration of the process from A to B, as a client's
// request to A does.
func (w *world) startOut() {
	a, b := w.A(), w.B()
	req := Request{ID: testProcID, To: b.addr, PostCopy: w.cfg.postCopy}
	if w.cfg.moveIP {
		req.MoveIP = testCIDR
	}
	e := a.eng
	ctx, cancel := context.WithCancelCause(context.Background())
	w.cancelOut = cancel
	w.s.spawn(a, "A0.out", func() {
		rec, err := e.Out(ctx, req, nil)
		w.outDone, w.outRec, w.outErr = true, rec, err
	})
}

// runMigration runs one migration to its end under strat.
func runMigration(cfg worldCfg, strat strategy) *world {
	w := newWorld(cfg, strat)
	w.startOut()
	w.s.run()
	return w
}

func (h *host) newEngine() *Engine {
	cfg := Config{Self: h.addr, Procs: h, CRIU: h, Net: h, Quiescer: h, Peers: h, Journal: h, Timeouts: bigTimeouts, Faults: h,
		OnRecord: func(r api.MigrationRec) { h.records = append(h.records, r) },
		Go: func(f func()) {
			p := h.w.s.cur
			p.spawned++
			h.w.s.spawn(h, fmt.Sprintf("%s/go%d", p.name, p.spawned), f)
		},
		Sleep: func(ctx context.Context, d time.Duration) error {
			h.w.s.yield("sleep", func() bool { return false })
			h.w.s.cur.timedOut = false
			return nil
		},
	}
	return New(cfg)
}

// op is a call into h's world: a yield point.
func (h *host) op(label string) {
	g := h.w.s.yield(label, nil)
	if g.h != h {
		panic(fmt.Sprintf("%s of host %s called host %s", g.name, g.h.name, h.name))
	}
}

func (h *host) ret(err error) error { return h.w.s.noteErr(err) }

// ---------------------------------------------------------------------------
// Process copies: running makes a new version of the memory; a copy that
// starts running from an older version than the newest that existed
// replays what already ran (the process would run twice).

func (w *world) runCopy(h *host, c *pcopy) {
	if c.state == "running" {
		return
	}
	if c.repair {
		w.violate("broken", fmt.Sprintf("a copy of the process continues on %s with its TCP sockets in repair mode", h.name))
	}
	if c.ver != w.latest {
		w.violate("rollback", fmt.Sprintf("a copy on %s resumes from version %d of the process's memory, but version %d ran already", h.name, c.ver, w.latest))
	}
	if c.zeros {
		w.violate("zeros", fmt.Sprintf("a copy on %s continues although its lazy-pages ended with pages missing: it reads zeros", h.name))
	}
	c.state = "running"
	c.ver = max(c.ver, w.latest) + 1
	w.latest = c.ver
	w.checkSafety()
}

func (h *host) newCopy(ver int) *pcopy {
	h.pidSeq++
	return &pcopy{pid: h.pidSeq, state: "stopped", ver: ver}
}

// checkSafety holds at every moment: at most one copy runs, the address
// is on at most one host (the latter is only noted: a source resuming the
// process re-adds it while a target in doubt still holds it, until it
// learns the outcome).
func (w *world) checkSafety() {
	var running []string
	addr := 0
	for _, h := range w.hosts {
		for id, p := range h.procs {
			if p.copy != nil && p.copy.state == "running" {
				running = append(running, h.name+"/"+id)
			}
		}
		if h.addrs[testCIDR] {
			addr++
		}
	}
	if len(running) > 1 {
		w.violate("twice", fmt.Sprintf("two copies run at once: %v", running))
	}
	if addr > 1 {
		w.dupAddr = true
	}
}

// ---------------------------------------------------------------------------
// Procs.

func (w *world) procInfo(p *reg) Proc {
	return Proc{ID: testProcID, Name: "app", Argv: []string{"app", "--serve"}, Started: testStarted, PID: p.copy.pid,
		PipeKey: "pipe:[4242]", Hooks: w.cfg.hooks, LogPath: p.logPath}
}

func (h *host) Claim(id string) (Proc, error) {
	h.op("Procs.Claim")
	p := h.procs[id]
	if p == nil || p.copy == nil {
		return Proc{}, h.ret(fmt.Errorf("no process %s", id))
	}
	if p.state != "running" {
		return Proc{}, h.ret(fmt.Errorf("process %s is %s, not running", id, p.state))
	}
	p.state = "migrating"
	h.ret(nil)
	return h.w.procInfo(p), nil
}

func (h *host) Unclaim(id string) error {
	h.op("Procs.Unclaim")
	if p := h.procs[id]; p != nil && p.state == "migrating" {
		p.state = "running"
	}
	return h.ret(nil)
}

func (h *host) Hook(ctx context.Context, id, op string, moved bool) error {
	h.op("Procs.Hook " + op)
	p := h.procs[id]
	if p == nil || p.copy == nil || p.copy.state != "running" {
		// A stopped (or absent) process cannot run its hook: it times out.
		return h.ret(fmt.Errorf("%s hook: the process does not run here", op))
	}
	if op == "resume" {
		op = fmt.Sprintf("resume moved=%v", moved)
	}
	h.hooks = append(h.hooks, op)
	return h.ret(nil)
}

func (h *host) Continue(id string) error {
	h.op("Procs.Continue")
	p := h.procs[id]
	if p == nil || p.copy == nil {
		return h.ret(fmt.Errorf("no process %s here to continue", id))
	}
	if h == h.w.A() && h.w.decision() == Committed {
		h.w.violate("thawed after the commit", "the source's copy continues after the commit")
	}
	if x := h.session(p.copy); x != nil && x.serving {
		h.w.violate("thawed while served", "the source's copy continues while CRIU still holds it and serves its memory")
	}
	h.w.runCopy(h, p.copy)
	return h.ret(nil)
}

func (h *host) FlushLog(ctx context.Context, id string) error {
	if h.procs[id] == nil {
		return fmt.Errorf("no process %s here", id)
	}
	return nil
}

func (h *host) RepairOff(ctx context.Context, id string) error {
	h.op("Procs.RepairOff")
	p := h.procs[id]
	if p == nil || p.copy == nil {
		return h.ret(fmt.Errorf("no process %s here", id))
	}
	// As the daemon does: every TCP socket of the tree leaves repair
	// mode, whether the tree is stopped or runs.
	p.copy.repair = false
	return h.ret(nil)
}

// ConnLocks: the tables that block the connections of the process's tree
// (a dump with TCP made them).
func (h *host) ConnLocks(ctx context.Context, id string) ([]string, error) {
	h.op("Procs.ConnLocks")
	var out []string
	for t, rules := range h.locks {
		if h.lockOf[t] == id && strings.Contains(rules, "tcp-conns") {
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return out, h.ret(nil)
}

func (h *host) Gone(ctx context.Context, id, to string) error {
	h.op("Procs.Gone")
	if p := h.procs[id]; p != nil && p.copy != nil && p.copy.state == "running" {
		h.w.violate("killed", fmt.Sprintf("Gone on %s kills a running copy", h.name))
	}
	if p := h.procs[id]; p != nil && p.copy != nil {
		if x := h.session(p.copy); x != nil && x.serving {
			if h.w.targetNeedsPages() {
				h.w.violate("early kill", fmt.Sprintf("Gone on %s kills the tree while CRIU still serves its memory, "+
					"before the target's copy (alive, not lost) has every page", h.name))
			}
			x.serving = false // its memory has gone: CRIU can serve no more
		}
		p.copy.dead = true
	}
	delete(h.procs, id)
	return h.ret(nil)
}

func (h *host) Reserve(b *Begin) (string, error) {
	h.op("Procs.Reserve")
	if h.procs[b.ID] != nil {
		return "", h.ret(fmt.Errorf("process %s already exists on %s", b.ID, h.name))
	}
	p := &reg{state: "incoming", logPath: "/procs/" + b.ID + "/log"}
	h.procs[b.ID] = p
	h.ret(nil)
	return p.logPath, nil
}

func (h *host) Restore(ctx context.Context, b *Begin, dir string, lazy Lazy) (int, error) {
	h.op("Procs.Restore")
	p := h.procs[b.ID]
	if p == nil {
		return 0, h.ret(fmt.Errorf("process %s is not reserved here", b.ID))
	}
	d := h.dirs[dir]
	var lp *lazyProc
	switch {
	case d == nil || !d.Images:
		return 0, h.ret(fmt.Errorf("criu restore from %s: incomplete images", dir))
	case d.Lazy && lazy == nil:
		return 0, h.ret(fmt.Errorf("criu restore from %s: a lazy dump's images, but no lazy-pages", dir))
	case d.Lazy:
		fl, _ := lazy.(*fakeLazy)
		if fl == nil || fl.lp == nil || fl.lp.dir != dir {
			return 0, h.ret(fmt.Errorf("criu restore from %s: not its lazy-pages", dir))
		}
		if lp = fl.lp; lp.state != "running" {
			return 0, h.ret(fmt.Errorf("criu restore from %s: lazy-pages has gone (%s)", dir, lp.state))
		}
	case !d.Pages:
		return 0, h.ret(fmt.Errorf("criu restore from %s: incomplete images", dir))
	}
	if d.TCP && !h.addrs[b.MoveIP] {
		return 0, h.ret(fmt.Errorf("criu restore: cannot bind the connections: %s is not here", b.MoveIP))
	}
	p.copy = h.newCopy(d.Ver)
	p.state = "incoming"
	if lp != nil {
		// The shim holds a copy of lazy-pages's socket from here on: the
		// daemon's death leaves its faults waiting.
		p.copy.lazy, lp.cp, lp.held = lp, p.copy, true
	}
	delete(h.locks, "CRIU-"+d.Run) // CRIU's restore deletes the target's copy of the lock
	h.ret(nil)
	h.w.event(h, "Procs.Restore")
	return p.copy.pid, nil
}

func (h *host) Discard(ctx context.Context, id string) error {
	h.op("Procs.Discard")
	if p := h.procs[id]; p != nil && p.state == "incoming" {
		if p.copy != nil {
			p.copy.dead = true
		}
		delete(h.procs, id)
	}
	return h.ret(nil)
}

func (h *host) Activate(ctx context.Context, b *Begin) error {
	h.op("Procs.Activate")
	p := h.procs[b.ID]
	if p == nil || p.copy == nil {
		return h.ret(fmt.Errorf("the restored copy of %s is gone", b.ID))
	}
	p.state = "running"
	if c := p.copy; c.lazy != nil && c.lazy.got < c.lazy.need && c.lazy.fl != nil && c.lazy.fl.failure != nil &&
		!c.lazy.fl.checkedOK {
		h.w.s.trace("    the page stream had failed: %v", c.lazy.fl.failure)
		h.w.violate("resumed on a dead stream", fmt.Sprintf("the copy on %s resumes with pages missing although "+
			"its page stream had failed already", h.name))
	}
	if p.copy.lazy != nil {
		h.w.pcEvent = append(h.w.pcEvent, "resume")
	}
	h.w.runCopy(h, p.copy)
	h.w.event(h, "Procs.Activate")
	return h.ret(nil)
}

// ---------------------------------------------------------------------------
// Quiescer.

func (h *host) Quiesce(pid int) error {
	h.op("Quiesce")
	for _, p := range h.procs {
		if p.copy != nil && p.copy.pid == pid {
			p.copy.state = "stopped"
			return h.ret(nil)
		}
	}
	return h.ret(fmt.Errorf("no process %d", pid))
}

// ---------------------------------------------------------------------------
// Checkpointer: the images are records in h.dirs; the page stream and the
// images travel as frames on the connection.

func (h *host) ImagesDir(name string) (string, error) {
	h.op("CRIU.ImagesDir")
	dir := "/img/" + name
	if h.dirs[dir] == nil {
		h.dirs[dir] = &imgDir{}
	}
	return dir, h.ret(nil)
}

func (h *host) RemoveImages(dir string) error {
	h.op("CRIU.RemoveImages")
	delete(h.dirs, dir)
	return h.ret(nil)
}

type imgMsg struct {
	Run  string `json:"run"`
	Ver  int    `json:"ver"`
	TCP  bool   `json:"tcp"`
	Lazy bool   `json:"lazy,omitempty"`
}

// Dump: CRIU locks the TCP connections, if any (its lock table appears), and
// puts their sockets in repair mode, streams the pages (a frame) and waits for the
// target's page server to confirm them (its reply, relayed back), exits;
// then the stream winds down (pages-end, and the target's pages-done), as
// internal/daemon's relay does. A CRIU that fails while dumping (its stream
// broke, its daemon died) unlocks and takes the sockets out of repair mode;
// once it has exited, what it left stays, whatever happens to the stream.
func (h *host) Dump(ctx context.Context, c Conn, pid int, dir string, tcp bool) (*DumpResult, error) {
	h.op("CRIU.Dump")
	var cp *pcopy
	var id string
	for k, p := range h.procs {
		if p.copy != nil && p.copy.pid == pid {
			cp, id = p.copy, k
		}
	}
	if cp == nil || cp.state != "stopped" {
		return nil, h.ret(fmt.Errorf("criu dump: no stopped tree %d", pid))
	}
	d := h.dirs[dir]
	if d == nil {
		return nil, h.ret(fmt.Errorf("criu dump: no directory %s", dir))
	}
	h.ret(nil)
	h.runSeq++
	run := fmt.Sprintf("%s%d", h.name, h.runSeq)
	table := "CRIU-" + run
	if tcp { // a dump without TCP connections takes no lock (criu.networkLock)
		h.locks[table] = lockRules(table)
		h.lockOf[table] = id
	}
	cp.repair = tcp
	exited := false
	defer func() {
		if !exited {
			delete(h.locks, table)
			cp.repair = false
		}
	}()
	res := &DumpResult{Pages: 1}
	m, _ := json.Marshal(imgMsg{Run: run, Ver: cp.ver, TCP: tcp})
	if err := c.WriteMsg(api.TPages, m); err != nil {
		return res, fmt.Errorf("criu dump: page stream: %w", err)
	}
	if _, err := recvFrame(c, api.TPagesBack); err != nil {
		return res, fmt.Errorf("criu dump: page server: %w", err)
	}
	exited = true
	*d = imgDir{Dumped: true, Run: run, Ver: cp.ver, TCP: tcp}
	if err := c.WriteMsg(api.TPagesEnd, nil); err != nil {
		return res, fmt.Errorf("streaming pages to the target failed: %w", err)
	}
	if _, err := recvFrame(c, api.TPagesDone); err != nil {
		return res, fmt.Errorf("streaming pages to the target failed: %w", err)
	}
	return res, nil
}

func lockRules(table string) string {
	return "table inet " + table + " {\n\tchain input { tcp-conns drop }\n}"
}

func recvFrame(c Conn, want byte) ([]byte, error) {
	typ, p, err := c.ReadMsg()
	if err != nil {
		return nil, err
	}
	if typ == wire.TypeError {
		return nil, &wire.RemoteError{Msg: string(p)}
	}
	if typ != want {
		return nil, fmt.Errorf("got message %d, want %d", typ, want)
	}
	return p, nil
}

// ---------------------------------------------------------------------------
// Post-copy, as internal/daemon/lazy.go relays it over the page connection:
// the target's lazy-pages asks (TPagesBack) once the tree is restored, one
// page at a time, the source's CRIU answers (TPages); with every page there
// lazy-pages closes the session (a last TPagesBack, fin) and exits, the
// source's CRIU exits, leaving the tree stopped, the source sends TPagesEnd
// and the target answers TPagesDone. Each side's relay is a goroutine of its
// daemon (it dies with it); CRIU and lazy-pages are processes of their own.

const pageBytes = 4096

type pageReq struct {
	Page int  `json:"page,omitempty"`
	Fin  bool `json:"fin,omitempty"`
}

type pageMsg struct {
	Page int `json:"page"`
	Ver  int `json:"ver"`
}

// criuSession is the source's CRIU after a lazy dump: it holds the stopped
// tree and serves its memory until lazy-pages closes the session, its page
// socket ends (Lazy.Stop, or the daemon's death) or the tree dies. Then it
// exits, leaving the tree stopped and the lock table and repair mode as the
// dump left them (the end of its socket is a normal end to CRIU).
type criuSession struct {
	run      string
	cp       *pcopy
	serving  bool
	complete bool // lazy-pages closed it: every page reached the target
}

// lazyProc is the target's lazy-pages: it survives its daemon.
type lazyProc struct {
	pid       int
	dir       string
	ver       int    // the memory's version, as the images say
	need, got int    // pages
	state     string // running; done (it had every page and exited); killed; eof (its socket ended)
	held      bool   // a shim holds its socket (the tree is restored)
	cp        *pcopy // the tree it serves, once restored
	fl        *fakeLazy
}

// fakeLazy is one end of the page stream, a Lazy of the daemon that made it.
type fakeLazy struct {
	h    *host
	side string
	pc   *end
	sess *criuSession // source
	lp   *lazyProc    // target

	finished     bool
	err, failure error
	bytes        int64
	stopped      bool
	endSent      bool // source: TPagesEnd
	finSent      bool // target: lazy-pages closed the session
	asked        int  // target: pages asked for
	// checkedOK: the engine's last Failed() found the stream healthy. A
	// stream that fails after that check and before the resume it guards
	// takes effect is a race no check can close (the copy then waits at its
	// first missing page, and the pages step loses it); one the check
	// could have seen is a bug.
	checkedOK bool
}

func (l *fakeLazy) finish(err error) {
	if l.finished {
		return
	}
	l.finished, l.err = true, err
	if err != nil && l.failure == nil {
		l.failure = err
	}
}

func (l *fakeLazy) fail(err error) {
	if l.failure == nil {
		l.failure = err
	}
}

func (l *fakeLazy) Wait(ctx context.Context) error {
	s := l.h.w.s
	s.cur.nextTimer = timerNone // its relay ends it (the relay's reads time out)
	g := s.yield("Lazy.Wait", func() bool { return l.finished })
	if g.h != l.h {
		panic("Wait on another daemon's Lazy")
	}
	if g.timedOut {
		g.timedOut = false
		return s.noteErr(errors.New("the last page did not arrive in time"))
	}
	return s.noteErr(l.err)
}

func (l *fakeLazy) Failed() error {
	l.h.w.s.note(fmt.Sprintf("failed %v", l.failure != nil))
	l.checkedOK = l.failure == nil
	return l.failure
}

func (l *fakeLazy) Complete() bool {
	ok := l.finished && l.err == nil
	l.h.w.s.note(fmt.Sprintf("complete %v", ok))
	return ok
}

func (l *fakeLazy) Bytes() int64 { return l.bytes }

func (l *fakeLazy) PID() int {
	if l.lp != nil {
		return l.lp.pid
	}
	return 0
}

// Stop ends the source's CRIU session (it lets go of the tree, stopped), or
// kills the target's lazy-pages.
// Confirm: the target's word that every page is here, on the page
// connection.
func (l *fakeLazy) Confirm() error {
	h := l.h
	h.op("Lazy.Confirm")
	if l.side == SideSource {
		return h.ret(nil)
	}
	return h.ret(l.pc.writeNow(api.TPagesDone, nil))
}

func (l *fakeLazy) Stop() {
	if l.stopped {
		return
	}
	h, w := l.h, l.h.w
	h.op("Lazy.Stop")
	l.stopped = true
	if l.side == SideSource {
		if l.sess.serving {
			w.checkSourceStop(l)
			l.sess.serving = false
		}
	} else {
		w.pcEvent = append(w.pcEvent, "stop")
		h.killLazy(l.lp)
	}
	l.finish(errors.New("the migration was called off"))
	h.ret(nil)
}

// DumpLazy: CRIU dumps the stopped tree but its private memory, locks the
// TCP connections, if any (its lock table appears), puts their sockets in
// repair mode,
// and goes on serving the memory (a relay goroutine of this daemon).
func (h *host) DumpLazy(ctx context.Context, pc Conn, pid int, dir string, tcp bool) (Lazy, *DumpResult, error) {
	h.op("CRIU.DumpLazy")
	var cp *pcopy
	for _, p := range h.procs {
		if p.copy != nil && p.copy.pid == pid {
			cp = p.copy
		}
	}
	if cp == nil || cp.state != "stopped" {
		return nil, nil, h.ret(fmt.Errorf("criu dump: no stopped tree %d", pid))
	}
	d := h.dirs[dir]
	if d == nil {
		return nil, nil, h.ret(fmt.Errorf("criu dump: no directory %s", dir))
	}
	h.runSeq++
	run := fmt.Sprintf("%s%d", h.name, h.runSeq)
	if tcp {
		table := "CRIU-" + run
		h.locks[table] = lockRules(table)
	}
	cp.repair = tcp
	*d = imgDir{Dumped: true, Run: run, Ver: cp.ver, TCP: tcp, Lazy: true}
	x := &criuSession{run: run, cp: cp, serving: true}
	h.sessions = append(h.sessions, x)
	l := &fakeLazy{h: h, side: SideSource, pc: pc.(*end), sess: x}
	h.w.lazies = append(h.w.lazies, l)
	s := h.w.s
	s.spawn(h, s.cur.name+"/lazy", l.sourceRelay)
	h.ret(nil)
	h.w.event(h, "CRIU.DumpLazy")
	return l, &DumpResult{}, nil
}

// session is the CRIU session that holds copy c, if any.
func (h *host) session(c *pcopy) *criuSession {
	for _, x := range h.sessions {
		if x.cp == c {
			return x
		}
	}
	return nil
}

func (l *fakeLazy) sourceRelay() {
	h, x, e := l.h, l.sess, l.pc
	s := h.w.s
	for {
		s.cur.nextTimer = timerSlow
		g := s.yield("lazy relay (source)", func() bool { return e.readable() || !x.serving && !l.endSent })
		if g.timedOut {
			g.timedOut = false
			s.note("timeout")
			l.finish(errors.New("page connection: i/o timeout"))
			return
		}
		if !x.serving && !l.endSent {
			// CRIU has exited (whatever ended its session: the end of
			// its socket is a normal end to it): the stream is over.
			l.endSent = true
			if err := e.writeNow(api.TPagesEnd, nil); err != nil {
				l.finish(err)
				return
			}
			continue
		}
		typ, p, err := e.readNow()
		if err != nil {
			l.finish(fmt.Errorf("page connection: %v", err))
			return
		}
		switch typ {
		case api.TPagesBack:
			var rq pageReq
			json.Unmarshal(p, &rq)
			switch {
			case !x.serving: // CRIU has gone: the request is dropped
			case rq.Fin:
				// CRIU exits: the stream is over.
				x.serving, x.complete = false, true
				l.endSent = true
				if err := e.writeNow(api.TPagesEnd, nil); err != nil {
					l.finish(err)
					return
				}
			default:
				m, _ := json.Marshal(pageMsg{Page: rq.Page, Ver: x.cp.ver})
				if err := e.writeNow(api.TPages, m); err != nil {
					l.fail(fmt.Errorf("sending pages: %v", err))
				} else {
					l.bytes += pageBytes
				}
			}
		case api.TPagesDone:
			l.finish(nil)
			return
		case wire.TypeError:
			l.finish(&wire.RemoteError{Msg: string(p)})
			return
		default:
			l.finish(fmt.Errorf("unexpected message %d on the page connection", typ))
			return
		}
	}
}

// ServeLazy starts lazy-pages (a process of its own) for the images in dir,
// and its relay (a goroutine of this daemon).
func (h *host) ServeLazy(ctx context.Context, pc Conn, dir string) (Lazy, error) {
	h.op("CRIU.ServeLazy")
	d := h.dirs[dir]
	if d == nil || !d.Images || !d.Lazy {
		return nil, h.ret(fmt.Errorf("lazy-pages: no lazy dump's images in %s", dir))
	}
	h.pidSeq++
	lp := &lazyProc{pid: h.pidSeq, dir: dir, ver: d.Ver, need: h.w.cfg.pages, state: "running"}
	h.lazyPages = append(h.lazyPages, lp)
	l := &fakeLazy{h: h, side: SideTarget, pc: pc.(*end), lp: lp}
	lp.fl = l
	h.w.lazies = append(h.w.lazies, l)
	s := h.w.s
	s.spawn(h, s.cur.name+"/lazy", l.targetRelay)
	h.ret(nil)
	h.w.event(h, "CRIU.ServeLazy")
	return l, nil
}

func (l *fakeLazy) targetRelay() {
	h, lp, e := l.h, l.lp, l.pc
	w := h.w
	s := w.s
	canAsk := func() bool {
		return lp.state == "running" && lp.cp != nil && !lp.cp.dead && l.asked == lp.got && lp.got < lp.need &&
			(w.pagesWait == nil || !w.pagesWait())
	}
	for {
		s.cur.nextTimer = timerSlow
		g := s.yield("lazy relay (target)", func() bool {
			return lp.state == "killed" || lp.state == "eof" || e.readable() || canAsk()
		})
		if g.timedOut {
			g.timedOut = false
			s.note("timeout")
			l.finish(errors.New("page connection: i/o timeout"))
			return
		}
		if lp.state == "killed" || lp.state == "eof" {
			l.finish(errors.New("lazy-pages has gone"))
			return
		}
		if canAsk() {
			l.asked++
			m, _ := json.Marshal(pageReq{Page: lp.got})
			if err := e.writeNow(api.TPagesBack, m); err != nil {
				l.finish(fmt.Errorf("asking the source for pages: %v", err))
				return
			}
			continue
		}
		typ, p, err := e.readNow()
		if err != nil {
			l.finish(fmt.Errorf("page connection: %v", err))
			return
		}
		switch typ {
		case api.TPages:
			if lp.state != "running" {
				l.finish(errors.New("handing pages to lazy-pages: it has gone"))
				return
			}
			var m pageMsg
			json.Unmarshal(p, &m)
			if m.Ver != lp.ver {
				w.violate("memory", fmt.Sprintf("the target's copy gets a page of version %d of the memory, its images are of version %d", m.Ver, lp.ver))
			}
			lp.got++
			l.bytes += pageBytes
			w.pcEvent = append(w.pcEvent, "page")
			w.event(h, "page")
			if lp.got == lp.need && !l.finSent {
				// Every page is here: lazy-pages closes the session and
				// exits.
				l.finSent, lp.state = true, "done"
				m, _ := json.Marshal(pageReq{Fin: true})
				if err := e.writeNow(api.TPagesBack, m); err != nil {
					l.finish(fmt.Errorf("asking the source for pages: %v", err))
					return
				}
			}
		case api.TPagesEnd:
			if lp.state != "done" {
				l.finish(errors.New("lazy-pages did not finish after the source ended its stream"))
				return
			}
			l.finish(nil) // the engine journals it, then says so (Confirm)
			return
		case wire.TypeError:
			l.finish(&wire.RemoteError{Msg: string(p)})
			return
		default:
			l.finish(fmt.Errorf("unexpected message %d on the page connection", typ))
			return
		}
	}
}

// killLazy kills lazy-pages; a tree it served that lives on with pages
// missing reads zeros for them from then on.
func (h *host) killLazy(lp *lazyProc) {
	if lp.state != "running" {
		return
	}
	lp.state = "killed"
	h.w.lazyEnded(h, lp)
}

func (w *world) lazyEnded(h *host, lp *lazyProc) {
	if c := lp.cp; c != nil && !c.dead && lp.got < lp.need {
		c.zeros = true
		if c.state == "running" {
			w.violate("zeros", fmt.Sprintf("lazy-pages on %s ends while its copy runs with pages missing: they read as zeros", h.name))
		}
	}
}

func (h *host) StopLazy(pid int, dir string) error {
	h.op("CRIU.StopLazy")
	h.w.pcEvent = append(h.w.pcEvent, "stop")
	for _, lp := range h.lazyPages {
		if lp.pid == pid && lp.dir == dir {
			h.killLazy(lp)
		}
	}
	return h.ret(nil)
}

func (h *host) Lose(ctx context.Context, id, why string) error {
	h.op("Procs.Lose")
	h.w.pcEvent = append(h.w.pcEvent, "lose")
	if p := h.procs[id]; p != nil {
		if p.copy != nil {
			p.copy.dead = true
			h.lost = true
		}
		delete(h.procs, id)
	}
	return h.ret(nil)
}

// event tells a unit test's afterOp hook.
func (w *world) event(h *host, op string) {
	if w.afterOp != nil {
		w.afterOp(h, op)
	}
}

// pageConn is the migration's page connection, or nil.
func (w *world) pageConn() *conn {
	for _, c := range w.conns {
		if c.page {
			return c
		}
	}
	return nil
}

// targetLazy is the target's lazy-pages (the last one started), or nil.
func (w *world) targetLazy() *lazyProc {
	if lps := w.B().lazyPages; len(lps) > 0 {
		return lps[len(lps)-1]
	}
	return nil
}

// targetNeedsPages: the target's copy lives, not lost, and misses pages.
func (w *world) targetNeedsPages() bool {
	lp := w.targetLazy()
	return lp != nil && lp.cp != nil && !lp.cp.dead && lp.got < lp.need
}

// checkSourceStop: after the commit, the source must not end a page stream
// that could still bring the target's copy its pages.
func (w *world) checkSourceStop(l *fakeLazy) {
	lp := w.targetLazy()
	c := l.pc.c
	if w.decision() != Committed || !w.targetNeedsPages() || lp.state != "running" || lp.fl == nil ||
		lp.fl.finished || l.finished || c.broken || c.closed[0] || c.closed[1] {
		return
	}
	w.violate("early stop", "the source ends a healthy page stream after the commit, before the target's copy has every page")
}

func (h *host) ReceivePages(ctx context.Context, c Conn, dir string) (int64, error) {
	p, err := recvFrame(c, api.TPages)
	if err != nil {
		return 0, err
	}
	var m imgMsg
	json.Unmarshal(p, &m)
	d := h.dirs[dir]
	if d == nil {
		return 0, fmt.Errorf("page server: no directory %s", dir)
	}
	d.Pages, d.Run, d.Ver, d.TCP = true, m.Run, m.Ver, m.TCP
	if err := c.WriteMsg(api.TPagesBack, nil); err != nil {
		return 0, err
	}
	if _, err := recvFrame(c, api.TPagesEnd); err != nil {
		return 0, err
	}
	if err := c.WriteMsg(api.TPagesDone, nil); err != nil {
		return 0, err
	}
	return int64(len(p)), nil
}

func (h *host) SendImages(ctx context.Context, c Conn, dir, logPath string) (int64, int, error) {
	d := h.dirs[dir]
	if d == nil || !d.Dumped {
		return 0, 0, fmt.Errorf("no images in %s", dir)
	}
	m, _ := json.Marshal(imgMsg{Run: d.Run, Ver: d.Ver, TCP: d.TCP, Lazy: d.Lazy})
	if err := c.WriteMsg(api.TFile, m); err != nil {
		return 0, 0, err
	}
	if err := c.WriteMsg(api.TFilesDone, nil); err != nil {
		return int64(len(m)), 1, err
	}
	return int64(len(m)), 1, nil
}

func (h *host) ReceiveImages(ctx context.Context, c Conn, dir, logPath string, pages int64) error {
	p, err := recvFrame(c, api.TFile)
	if err != nil {
		return err
	}
	if _, err := recvFrame(c, api.TFilesDone); err != nil {
		return err
	}
	var m imgMsg
	json.Unmarshal(p, &m)
	d := h.dirs[dir]
	if d == nil {
		return fmt.Errorf("no directory %s", dir)
	}
	if m.Lazy {
		// Post-copy: no pages came first; the memory follows on demand.
		if d.Pages {
			return errors.New("a lazy dump's images after a page stream")
		}
		d.Run, d.Ver, d.TCP, d.Lazy = m.Run, m.Ver, m.TCP, true
	} else if !d.Pages || d.Run != m.Run {
		return errors.New("images of another dump than the pages")
	}
	d.Images = true
	return nil
}

// ---------------------------------------------------------------------------
// NetMover. Reads are not yield points: nothing else on a host changes its
// addresses or locks while a migration reads them (one migration per run).

func (h *host) Iface(cidr string) (string, error) { return "eth0", nil }
func (h *host) HasAddr(cidr string) (bool, error) { return h.addrs[cidr], nil }
func (h *host) Announce(iface, ip string) error   { return nil }

func (h *host) AddAddr(iface, cidr string) error {
	h.op("Net.AddAddr")
	h.addrs[cidr] = true
	h.w.checkSafety()
	return h.ret(nil)
}

// SaveAddr's description is the CIDR: the fake's addresses have no other
// attributes to lose.
func (h *host) SaveAddr(iface, cidr string) (string, error) {
	if !h.addrs[cidr] {
		return "", fmt.Errorf("no address %s", cidr)
	}
	return cidr, nil
}

func (h *host) RestoreAddr(saved string) error {
	h.op("Net.RestoreAddr")
	h.restored = append(h.restored, saved)
	h.addrs[saved] = true
	h.w.checkSafety()
	return h.ret(nil)
}

func (h *host) DelAddr(iface, cidr string) error {
	h.op("Net.DelAddr")
	delete(h.addrs, cidr)
	return h.ret(nil)
}

func (h *host) LockName(dir string) (string, error) {
	d := h.dirs[dir]
	if d == nil || d.Run == "" {
		return "", fmt.Errorf("no inventory in %s", dir)
	}
	t := "CRIU-" + d.Run
	if _, ok := h.locks[t]; !ok {
		return "", fmt.Errorf("dump in %s: no CRIU network lock table", dir)
	}
	return t, nil
}

func (h *host) ExportLock(table string) (string, error) { return h.locks[table], nil }

func (h *host) CheckLock(rules string) (string, error) {
	first, _, _ := strings.Cut(rules, "\n")
	name, ok := strings.CutPrefix(first, "table inet ")
	name, ok2 := strings.CutSuffix(name, " {")
	if !ok || !ok2 || !strings.HasPrefix(name, "CRIU-") {
		return "", fmt.Errorf("lock rules: want %q first, got %.60q", "table inet CRIU-... {", first)
	}
	return name, nil
}

func (h *host) ImportLock(rules string) error {
	h.op("Net.ImportLock")
	t, err := h.CheckLock(rules)
	if err == nil {
		h.locks[t] = rules
	}
	return h.ret(err)
}

func (h *host) DeleteLock(table string) error {
	h.op("Net.DeleteLock")
	delete(h.locks, table)
	return h.ret(nil)
}

// ---------------------------------------------------------------------------
// Journal: the disk. Put copies the record (JSON), so later changes of the
// engine's record do not reach the disk.

func (h *host) Put(r *Record) error { return h.put(r, false) }

// PutDurable is Put, noted: the model's hosts never crash, only their
// daemons, so both survive the same.
func (h *host) PutDurable(r *Record) error { return h.put(r, true) }

// journalWrite is one journal write: of which record, synced or not.
type journalWrite struct {
	durable              bool
	side, step, decision string
}

func (h *host) put(r *Record, durable bool) error {
	h.writes = append(h.writes, journalWrite{durable, r.Side, r.Step, r.Decision})
	if h.w.beforePut != nil && h.w.beforePut(h, r) {
		h.w.s.trace("CRASH %s before the journal write %s %s", h.name, r.Side, r.Step)
		h.w.s.crashHost(h)
		panic(crashPanic{})
	}
	h.w.s.putPoint(h, r.Side+" "+r.Step)
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if h.w.mig == "" {
		h.w.mig = r.Mig
	}
	h.journal[r.Mig] = b
	h.jcanon[r.Mig] = canonRecord(b)
	h.w.s.trace("    %s journal: %s", h.name, h.jcanon[r.Mig])
	return nil
}

// canonRecord is a journaled record without its times (settled or frozen
// or not is kept); the migration's ID is replaced when the state is hashed.
func canonRecord(b []byte) string {
	s := string(b)
	s, _ = cutField(s, `"start":"`)
	s, frozen := cutField(s, `,"frozen":"`)
	if frozen {
		s += " frozen"
	}
	s, settled := cutField(s, `,"settled":"`)
	if settled {
		s += " settled"
	}
	return s
}

// cutField removes the JSON string field that starts with prefix.
func cutField(s, prefix string) (string, bool) {
	i := strings.Index(s, prefix)
	if i < 0 {
		return s, false
	}
	j := strings.IndexByte(s[i+len(prefix):], '"')
	if j < 0 {
		return s, false
	}
	return s[:i] + s[i+len(prefix)+j+1:], true
}

func (h *host) Delete(mig string) error {
	h.op("Journal.Delete")
	delete(h.journal, mig)
	delete(h.jcanon, mig)
	return h.ret(nil)
}

func (h *host) Load() ([]*Record, error) {
	var out []*Record
	for _, k := range sortedKeys(h.journal) {
		r := &Record{}
		if err := json.Unmarshal(h.journal[k], r); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// records are h's journal, decoded.
func (h *host) recs() []*Record {
	rs, _ := h.Load()
	return rs
}

// ---------------------------------------------------------------------------
// Faults: the unit tests arm a point to fail ("fail", or "fail*N" for N
// times) or to crash the daemon there ("crash"), once.

// Every point before a step of the source is also a yield point, while
// another goroutine is alive: the only one between its steps,
// where another goroutine of the same engine (an outcome question) may act
// on the migration's record, e.g. between the source's reading of Restored
// and its commit decision. (On the target no other goroutine acts on a
// migration's record while In runs.)
func (h *host) Check(point string) error {
	w := h.w
	w.faultsSeen = append(w.faultsSeen, point)
	if strings.HasPrefix(point, "source-before-") && w.s.others() {
		h.op("fault point " + point)
	}
	if point == Point(SideTarget, "before", "restore") && w.cfg.postCopy {
		// The restore waits for the page connection on a channel (with a
		// real timer): it must be there already, as the source dialed it
		// before it asked for the restore.
		if g := w.s.cur; g == nil || g.crashed {
			panic(crashPanic{})
		}
		h.eng.mu.Lock()
		pw := h.eng.pageConns[w.mig]
		h.eng.mu.Unlock()
		if pw == nil || len(pw.ch) == 0 {
			w.violate("model", "the target's restore would wait for a page connection that is not there")
			return errors.New("the source's page connection never came")
		}
	}
	switch f := w.cfg.faults[point]; {
	case f == "fail":
		delete(w.cfg.faults, point)
		return errors.New("injected failure")
	case strings.HasPrefix(f, "fail*"): // fail N times
		n, _ := strconv.Atoi(f[len("fail*"):])
		if n <= 1 {
			delete(w.cfg.faults, point)
		} else {
			w.cfg.faults[point] = fmt.Sprintf("fail*%d", n-1)
		}
		return errors.New("injected failure")
	case f == "cancel":
		delete(w.cfg.faults, point)
		w.s.trace("CANCEL the client's context at %s", point)
		w.cancelOut(errClientCancel)
		return nil
	case f == "crash":
		delete(w.cfg.faults, point)
		w.s.trace("CRASH %s at %s", h.name, point)
		w.s.crashHost(h)
		panic(crashPanic{})
	}
	return nil
}

// ---------------------------------------------------------------------------
// Peers and connections.

type msg struct {
	typ   byte
	p     []byte
	canon string
}

// conn is a connection between two daemons: a queue each way. Broken (a
// lost frame, a reset), both ends fail from then on; closed by one end (or
// its daemon's death), the other reads what was sent, then EOF.
type conn struct {
	w      *world
	id     string
	q      [2][]msg
	closed [2]bool
	broken bool
	host   [2]*host

	// A post-copy page connection (its first message was TPageConn):
	// the channel HandlePeer hands it over on, and once it has, the
	// channel whose close releases it (HandlePeer then returns and the
	// server end closes) and the incarnation of the target's daemon.
	page   bool
	pw     *pageWait
	pcDone chan struct{}
	pcInc  int
}

type end struct {
	c *conn
	i int
}

// canonMsg is a message without its measured durations.
func (w *world) canonMsg(typ byte, p []byte) string {
	switch typ {
	case api.TRestored:
		var r Restored
		json.Unmarshal(p, &r)
		r.Restore, r.Net = 0, 0
		p, _ = json.Marshal(r)
	case api.TDone:
		var d Done
		json.Unmarshal(p, &d)
		d.Rebind = 0
		p, _ = json.Marshal(d)
	}
	return strconv.Itoa(int(typ)) + ":" + string(p)
}

func (e *end) WriteMsg(typ byte, payload []byte) error {
	c := e.c
	g := c.w.s.yield("write "+msgName(typ)+" on "+c.id, nil)
	if g.h != c.host[e.i] {
		panic("wrong end")
	}
	return e.writeNow(typ, payload)
}

// writeNow writes without a yield point of its own: the relays answer what
// they read at once (a crash or a break between the two is one before the
// read, to the other side).
func (e *end) writeNow(typ byte, payload []byte) error {
	c := e.c
	c.w.s.trace("    %s: write %s on %s", c.host[e.i].name, msgName(typ), c.id)
	if c.broken {
		return c.w.s.noteErr(errors.New("connection reset by peer"))
	}
	if c.closed[e.i] {
		return c.w.s.noteErr(net.ErrClosed)
	}
	if !c.closed[1-e.i] { // else: gone with the peer
		m := msg{typ: typ, p: slices.Clone(payload), canon: c.w.canonMsg(typ, payload)}
		c.q[1-e.i] = append(c.q[1-e.i], m)
	}
	c.w.s.noteErr(nil)
	if c.w.afterWrite != nil {
		c.w.afterWrite(e, typ)
	}
	return nil
}

func (e *end) readable() bool {
	c := e.c
	return c.broken || c.closed[e.i] || c.closed[1-e.i] || len(c.q[e.i]) > 0
}

func (e *end) ReadMsg() (byte, []byte, error) {
	c := e.c
	g := c.w.s.yield("read on "+c.id, e.readable)
	if g.timedOut {
		g.timedOut = false
		return 0, nil, c.w.s.noteErr(errors.New("i/o timeout"))
	}
	return e.readNow()
}

// readNow reads what is readable (a yield point came before).
func (e *end) readNow() (byte, []byte, error) {
	c := e.c
	switch {
	case c.broken:
		return 0, nil, c.w.s.noteErr(errors.New("connection reset by peer"))
	case c.closed[e.i]:
		return 0, nil, c.w.s.noteErr(net.ErrClosed)
	case len(c.q[e.i]) > 0:
		m := c.q[e.i][0]
		c.q[e.i] = c.q[e.i][1:]
		c.w.s.note(m.canon)
		c.w.s.trace("    -> %s %s", msgName(m.typ), m.canon)
		if c.w.afterRead != nil {
			c.w.afterRead(e, m.typ)
		}
		return m.typ, m.p, nil
	default:
		return 0, nil, c.w.s.noteErr(io.EOF)
	}
}

// SetDeadline: HandlePeer clears the deadline of a page connection right
// before it hands it over and blocks until the migration releases it (a
// channel, not a call into a fake). Its goroutine detaches there: a helper
// waits until the connection is in the migration's channel, then passes the
// scheduler's baton on for it; the scheduler closes the server end once the
// migration has released it (pollPageConns).
func (e *end) SetDeadline(t time.Time) error {
	c := e.c
	if !t.IsZero() || !c.page || e.i != 1 || c.pw == nil || len(c.pw.ch) > 0 {
		return nil
	}
	s := c.w.s
	g := s.cur
	g.detached = true
	pw := c.pw
	go func() {
		pc := <-pw.ch // HandlePeer's hand-over
		pw.ch <- pc   // for the migration
		c.pcDone, c.pcInc = pw.released, c.host[1].inc
		s.trace("%s: page connection %s handed over", g.name, c.id)
		g.done = true
		s.handoff(g)
	}()
	return nil
}

// pollPageConns closes the server end of every page connection its
// migration has released, as HandlePeer's caller does once it returns.
func (w *world) pollPageConns() {
	for _, c := range w.conns {
		if c.pcDone == nil || c.closed[1] {
			continue
		}
		select {
		case <-c.pcDone:
			w.s.trace("%s: close %s (released)", c.host[1].name, c.id)
			c.closed[1] = true
			c.q[1] = nil
		default:
		}
	}
}

// releasePageConns ends a run: a page connection that the incarnation of
// the target's daemon that accepted it (alive at the end of a run that
// ended) never released keeps HandlePeer blocked for ever: the connection
// and its goroutine leak. Every one is released here, so the goroutines end.
func (w *world) releasePageConns() {
	for _, c := range w.conns {
		if c.pcDone == nil {
			continue
		}
		select {
		case <-c.pcDone:
			continue
		default:
		}
		t := c.host[1]
		if w.s.terminal && t.inc == c.pcInc && t.status == hostUp {
			w.s.trace("page connection %s left", c.id)
			w.violate("page connection left", fmt.Sprintf("a page connection is never released: HandlePeer "+
				"on %s blocks for ever, holding it open", t.name))
		}
		select {
		case <-c.pw.ch: // never received by the migration
		default:
		}
		c.pw.once.Do(func() { close(c.pw.released) })
	}
}

// Close is not a yield point: the peer learns of it at its next read,
// whenever that is, as it would a moment later.
func (e *end) Close() error {
	c := e.c
	c.w.s.trace("%s: close %s", c.host[e.i].name, c.id)
	c.closed[e.i] = true
	c.q[e.i] = nil // never read
	return nil
}

func msgName(t byte) string {
	switch t {
	case api.TBegin:
		return "Begin"
	case api.TAccept:
		return "Accept"
	case api.TFile:
		return "File"
	case api.TFilesDone:
		return "FilesDone"
	case api.TRestore:
		return "Restore"
	case api.TRestored:
		return "Restored"
	case api.TCommit:
		return "Commit"
	case api.TDone:
		return "Done"
	case api.TPages:
		return "Pages"
	case api.TPagesEnd:
		return "PagesEnd"
	case api.TPagesBack:
		return "PagesBack"
	case api.TPagesDone:
		return "PagesDone"
	case api.TOutcome:
		return "Outcome"
	case api.TOutcomeReply:
		return "OutcomeReply"
	case api.TPageConn:
		return "PageConn"
	case wire.TypeError:
		return "Error"
	}
	return fmt.Sprint(t)
}

// Dial connects to the daemon serving addr and has it serve the connection
// as internal/daemon's handlePeer does (the first message, to HandlePeer).
func (h *host) Dial(ctx context.Context, addr string) (Conn, error) {
	s := h.w.s
	h.op("Dial " + addr)
	t := h.w.byAddr(addr)
	if t == nil || t.status != hostUp {
		return nil, s.noteErr(fmt.Errorf("dial %s: connection refused", addr))
	}
	g := s.cur
	c := &conn{w: h.w, id: fmt.Sprintf("%s-%s%x", h.name, t.name, mixs(g.hist, g.name)&0xffff), host: [2]*host{h, t}}
	h.w.conns = append(h.w.conns, c)
	sort.Slice(h.w.conns, func(i, j int) bool { return h.w.conns[i].id < h.w.conns[j].id })
	e := t.eng
	srv := &end{c: c, i: 1}
	s.spawn(t, fmt.Sprintf("%s%d.serve-%s", t.name, t.inc, c.id), func() {
		g := s.cur
		defer func() {
			if !g.detached {
				srv.Close()
			}
		}()
		typ, p, err := srv.ReadMsg()
		if err != nil {
			return
		}
		if typ == api.TPageConn {
			c.page = true
			var q PageConnMsg
			json.Unmarshal(p, &q)
			e.mu.Lock()
			c.pw = e.pageConns[q.Mig]
			e.mu.Unlock()
		}
		ok, _ := e.HandlePeer(context.Background(), srv, typ, p)
		if g.detached {
			return // outside the scheduler: touch nothing
		}
		if !ok {
			sendError(srv, fmt.Errorf("unexpected message type %d", typ))
		}
	})
	s.trace("    -> conn %s", c.id)
	s.note(c.id)
	return &end{c: c, i: 0}, nil
}

// ---------------------------------------------------------------------------
// The end state.

// where is the host whose copy runs, "" if none does (or more than one).
func (w *world) where() *host {
	var at *host
	n := 0
	for _, h := range w.hosts {
		if p := h.procs[testProcID]; p != nil && p.copy != nil && p.copy.state == "running" {
			at = h
			n++
		}
	}
	if n != 1 {
		return nil
	}
	return at
}

// lostOnBoth: a post-copy migration committed, and the process is gone from
// both hosts, the target's copy killed by Procs.Lose.
func (w *world) lostOnBoth() bool {
	return w.cfg.postCopy && w.B().lost && w.decision() == Committed && w.A().procs[testProcID] == nil &&
		w.B().procs[testProcID] == nil
}

// problems checks the end of a run: the process runs exactly once, on
// want if want is not nil, nothing is left behind, the journals are
// settled, the caller of Out was told the truth. Each problem is
// "kind: detail". Post-copy, after the commit (want B or nil), the process
// may be lost on both hosts instead; running on the target, it must have
// every page.
func (w *world) problems(want *host) []string {
	var out []string
	add := func(kind, format string, args ...any) {
		out = append(out, kind+": "+w.canon(fmt.Sprintf(format, args...)))
	}
	out = append(out, w.viol...)
	if w.s.panicMsg != "" {
		add("panic", "%s", w.s.panicMsg)
	}
	lost := w.lostOnBoth()
	at := w.where()
	if at == nil {
		n := 0
		for _, h := range w.hosts {
			if p := h.procs[testProcID]; p != nil && p.copy != nil && p.copy.state == "running" {
				n++
			}
		}
		switch {
		case n == 0 && lost && want != w.A():
			// Post-copy's failure after the commit.
		case n == 0 && lost:
			add("lost", "the process was lost on both hosts, before the commit should have decided it")
		case n == 0:
			add("not running", "no copy of the process runs (%s)", w.describe())
		default:
			add("twice", "%d copies of the process run (%s)", n, w.describe())
		}
	} else if want != nil && at != want {
		add("wrong host", "the process runs on %s, want %s", at.name, want.name)
	}
	for _, h := range w.hosts {
		p := h.procs[testProcID]
		switch {
		case p == nil:
		case p.copy != nil && p.copy.state == "stopped":
			add("stopped copy left", "a stopped copy of the process is left on %s (%s)", h.name, p.state)
		case p.copy == nil:
			add("registration left", "the process is registered on %s (%s) without a copy", h.name, p.state)
		case p.state != "running":
			add("registration", "the process runs on %s but is registered %s", h.name, p.state)
		}
		if len(h.locks) > 0 {
			add("lock left", "lock tables left on %s: %v", h.name, sortedKeys(h.locks))
		}
		for _, d := range sortedKeys(h.dirs) {
			if *h.dirs[d] == (imgDir{}) {
				add("empty images directory left", "an empty images directory is left on %s: %s", h.name, d)
			} else {
				add("images left", "images are left on %s: %s", h.name, d)
			}
		}
		for _, r := range h.recs() {
			switch {
			case r.Side == SideTarget:
				add("journal", "a target record left on %s (step %s)", h.name, r.Step)
			case r.Settled.IsZero():
				add("journal", "an unsettled source record on %s (step %s, decision %q)", h.name, r.Step, r.Decision)
			case at != nil && (r.Decision == Committed) != (at != h):
				add("journal", "the source's record on %s says %q but the process runs on %s", h.name, r.Decision, at.name)
			}
		}
	}
	if w.cfg.moveIP {
		var holders []string
		for _, h := range w.hosts {
			if h.addrs[testCIDR] {
				holders = append(holders, h.name)
			}
		}
		switch {
		case lost && (len(holders) == 0 || slices.Equal(holders, []string{"B"})):
			// Where the process was lost, or nowhere.
		case len(holders) != 1 || at == nil || holders[0] != at.name:
			add("address", "%s is on %v", testCIDR, holders)
		}
	}
	if w.cfg.postCopy {
		for _, h := range w.hosts {
			for _, x := range h.sessions {
				if x.serving {
					add("criu left", "CRIU still serves the memory of a tree on %s", h.name)
				}
			}
			for _, lp := range h.lazyPages {
				if lp.state == "running" {
					add("lazy-pages left", "lazy-pages %d still runs on %s (%d of %d pages)", lp.pid, h.name, lp.got, lp.need)
				}
			}
		}
		if at != nil {
			if c := at.procs[testProcID].copy; c.lazy != nil && c.lazy.got < c.lazy.need {
				add("missing pages", "the process runs on %s with %d of %d pages", at.name, c.lazy.got, c.lazy.need)
			}
		}
		if lost && w.outDone && w.outErr != nil {
			add("out", "Out failed (%v) after the commit", w.outErr)
		}
		if lost && w.outRec != nil && w.outRec.Outcome == "ok" {
			add("lost but ok", "the process was lost on both hosts, but Out's outcome is ok")
		}
		if at == w.B() && w.outRec != nil && strings.Contains(w.outRec.Outcome, "LOST") {
			add("out lost", "Out's outcome says the process was LOST, but it runs on B")
		}
	}
	if w.cfg.hooks && at != nil {
		a, b := w.A(), w.B()
		if at == b {
			if !slices.Equal(a.hooks, []string{"prepare"}) || len(b.hooks) == 0 || b.hooks[len(b.hooks)-1] != "resume moved=true" {
				add("hooks", "the process moved, hooks run: on A %v, on B %v", a.hooks, b.hooks)
			}
		} else if len(b.hooks) > 0 || slices.Contains(a.hooks, "prepare") && a.hooks[len(a.hooks)-1] != "resume moved=false" {
			add("hooks", "the process stayed, hooks run: on A %v, on B %v", a.hooks, b.hooks)
		}
	}
	if w.outDone && at != nil {
		switch {
		case w.outErr == nil && at == w.A():
			add("out", "Out reported success but the process runs on the source")
		case w.outErr != nil && at == w.B():
			add("out", "Out failed (%v) but the process runs on the target", w.outErr)
		case w.outErr != nil && !strings.Contains(w.outErr.Error(), "keeps running here") &&
			!strings.Contains(w.outErr.Error(), "resumed on the source"):
			add("out", "Out's error does not say where the process is: %v", w.outErr)
		}
	}
	for _, h := range w.hosts {
		if h.eng != nil && len(h.eng.Active()) > 0 {
			add("journal", "the engine on %s still has unsettled migrations: %+v", h.name, h.eng.Active())
		}
	}
	return out
}

// decision is the source's decision in A's journal ("" if none).
func (w *world) decision() string {
	for _, r := range w.A().recs() {
		return r.Decision
	}
	return ""
}

func (w *world) describe() string {
	var parts []string
	for _, h := range w.hosts {
		s := h.name + ":"
		if p := h.procs[testProcID]; p != nil {
			s += p.state
			if p.copy != nil {
				s += "/" + p.copy.state
			} else {
				s += "/nocopy"
			}
		} else {
			s += "-"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}
