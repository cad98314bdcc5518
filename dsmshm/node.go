package dsmshm

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mrt "dsmigrate/runtime"
)

// Barrier ids below zero are the library's own.
const (
	startBarrier = -1 - iota
	allocBarrier
	closeBarrier
)

// Config describes a rank of a job. Start builds one from the environment
// that dsmrun sets; tests and other launchers may call StartWith directly.
type Config struct {
	Job   string   // job id; peers with another job id are refused
	Rank  int      // this rank, 0 <= Rank < len(Peers)
	Peers []string // host:port of every rank in rank order; rank r listens on 0.0.0.0:<port of Peers[r]>
	// DialTimeout bounds how long Start waits for peers to come up
	// (default 30 s), and how long a rank waits for a peer whose
	// connection broke unannounced to come back.
	DialTimeout time.Duration
	// AwayTimeout bounds how long ranks wait for a rank that announced a
	// migration to come back (default 5 min). See doc.go, "Migration".
	AwayTimeout time.Duration
	// Secret is the job's secret (32 bytes, the same at every rank): every
	// connection between ranks is authenticated with it before any of its
	// payload is read, and every frame and page reply carries a MAC keyed
	// from it (see doc.go, "Security").
	Secret []byte
	// Encrypt encrypts the job's traffic as well (every rank must agree).
	Encrypt bool
	// FetchRun is the most pages a fault fetches in one round trip: the
	// faulting page and the invalid pages after it that share its home
	// (see doc.go, "Fetching runs of pages"). 0 is the most, 8; 1
	// fetches only the faulting page.
	FetchRun int
}

// MaxRanks is the largest job size: each rank holds a control connection
// and a page channel to every peer and from every peer, and its page server
// thread polls one channel per peer.
const MaxRanks = 512

// ErrNotLaunched is returned by Start when the environment does not describe a job.
var ErrNotLaunched = errors.New("not started by dsmrun")

// Start joins the job the process was launched into by dsmrun run, as
// runtime.Self reads it: DSM_JOB, DSM_RANK, DSM_SIZE, DSM_PEERS and
// DSM_ENCRYPT from the environment, and the job's secret from the pipe
// DSM_SECRET_FD names. It is collective: it returns once every rank has
// started. A process without DSM_JOB gets an error wrapping ErrNotLaunched.
//
// When the process was launched by migrated, Start also registers the
// rank's migration hooks with it (see doc.go, "Migration").
func Start() (*Node, error) {
	cfg, err := configFromSelf()
	if err != nil {
		return nil, err
	}
	n, err := StartWith(cfg)
	if err != nil {
		return nil, err
	}
	if err := n.register(); err != nil {
		n.abort()
		return nil, err
	}
	return n, nil
}

// configFromSelf is the rank's Config as runtime.Self reads it: the launch
// environment has that one parser, shared with every other rank program.
func configFromSelf() (Config, error) {
	id, err := mrt.Self()
	if err != nil {
		return Config{}, fmt.Errorf("dsmshm: %w", err)
	}
	if id.Job == "" {
		return Config{}, fmt.Errorf("dsmshm: %w: %s not set; launch with dsmrun run ...", ErrNotLaunched, mrt.EnvJob)
	}
	return Config{Job: id.Job, Rank: id.Rank, Peers: id.Peers, Secret: id.Secret, Encrypt: id.Encrypt}, nil
}

func (c Config) validate() error {
	if len(c.Peers) == 0 || len(c.Peers) > MaxRanks {
		return fmt.Errorf("dsmshm: %d peers: need 1 to %d", len(c.Peers), MaxRanks)
	}
	if c.Rank < 0 || c.Rank >= len(c.Peers) {
		return fmt.Errorf("dsmshm: rank %d out of range for %d ranks", c.Rank, len(c.Peers))
	}
	for i, p := range c.Peers {
		if _, port, err := net.SplitHostPort(p); err != nil || port == "" {
			return fmt.Errorf("dsmshm: peer %d address %q: want host:port", i, p)
		}
	}
	return nil
}

// StartWith joins the job described by cfg. Like Start it is collective.
func StartWith(cfg Config) (_ *Node, retErr error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 30 * time.Second
	}
	if cfg.AwayTimeout <= 0 {
		cfg.AwayTimeout = defaultAwayWait
	}
	n, err := newNode(cfg.Rank, len(cfg.Peers), cfg.Encrypt)
	if err != nil {
		return nil, err
	}
	// A fault on a broken page channel gives up on its own only a while
	// after the redial has (see redialPage): the redial fails the node
	// with the reason first, and the fault reports it.
	n.c.setWaits(cfg.DialTimeout+redialSlack, cfg.AwayTimeout)
	n.SetFetchRun(cfg.FetchRun)
	defer func() {
		if retErr != nil {
			n.c.free()
		}
	}()
	tr, err := newTCPTransport(tcpConfig{
		rank: cfg.Rank, size: len(cfg.Peers), job: cfg.Job, secret: cfg.Secret, encrypt: cfg.Encrypt,
		addrs: cfg.Peers, dialWait: cfg.DialTimeout,
		awayWait: cfg.AwayTimeout, ctr: &n.ctr, setChan: n.c.setChan, serveFD: n.c.serveFD,
		chanAway: n.c.chanAway, pages: n.c,
	})
	if err != nil {
		return nil, err
	}
	n.tr, n.tcp = tr, tr
	n.run()
	if err := n.barrier(startBarrier, 0); err != nil {
		tr.abort()
		<-n.done
		return nil, fmt.Errorf("dsmshm: starting: %w", err)
	}
	return n, nil
}

// Node is one rank's membership in a job. Its methods are safe for
// concurrent use by several goroutines of the rank. The collective calls
// (Alloc, Barrier, Close) are meant to be made by one goroutine per rank;
// concurrent ones are serialized, each counting as a separate collective.
//
// Lock order: barrierMu, syncMu, freeMu, segMu, mu. The dispatcher goroutine takes
// only segMu and mu (never syncMu), so a rank's goroutines waiting for a
// lock grant or barrier never block the messages that would release them.
type Node struct {
	rank, size int
	tr         transport
	tcp        *tcpTransport // nil with the in-memory transport
	c          cnode
	ctr        netCounters

	// barrierMu serializes this rank's collective calls (Barrier, Alloc,
	// Close), which must not overlap: the barrier manager counts one arrival
	// per rank.
	barrierMu sync.Mutex

	// syncMu serializes acquires and releases of this rank.
	syncMu   sync.Mutex
	known    *noticeSet       // newest version of every page this rank has heard of
	lockSent map[int64]uint64 // per lock: known.seq when last released
	barSent  uint64           // known.seq when last entering a barrier
	flushBuf []byte
	allocs   int // pages allocated, for the VMA budget

	segMu sync.RWMutex
	segs  []*Segment

	mu         sync.Mutex // guards the waiters below
	grants     map[int64]chan *message
	acks       map[int64]chan *message
	localLocks map[int64]*localLock
	barrierCh  chan *message
	reqID      int64
	mig        migVote // one rank of the job migrates at a time (migrate.go)

	// Owned by the dispatcher goroutine.
	locks      map[int64]*lockState
	barriers   map[int64]*barrierState
	barNotices *noticeSet
	barSentTo  []uint64

	// freeMu guards the C objects against use after Close: calls into C
	// that may come after Close hold it for reading and check freed.
	freeMu sync.RWMutex
	freed  bool
	final  cstats // C counters at Close

	failOnce sync.Once
	failErr  error
	dead     chan struct{} // closed when the node failed
	done     chan struct{} // closed when the dispatcher exited
	closed   atomic.Bool

	st struct {
		diffs, diffBytes, diffsApplied, lockAcquires, barriers atomic.Uint64
		// At this rank's migrations: resident pages of its own cache freed
		// before the dumps, and dirty pages homed elsewhere the last dump
		// had to keep (each with its twin).
		migDropped, migKept   atomic.Uint64
		lockWait, barrierWait atomic.Int64
	}
}

// localLock excludes the goroutines of one rank from each other for one
// lock id; held says whether this rank holds the lock between ranks.
type localLock struct {
	mu   sync.Mutex
	held atomic.Bool
}

type lockState struct {
	held    bool
	queue   []int
	notices *noticeSet
	sentTo  map[int]uint64
}

type barrierState struct {
	arrived int
	check   uint64
	err     string // why every rank fails the barrier: a disagreement or a refusal
	kind    uint8  // refusedTooLarge if err is such a refusal
}

func newNode(rank, size int, enc bool) (*Node, error) {
	if os.Getpagesize() != pageSize {
		return nil, fmt.Errorf("dsmshm: page size %d not supported (need %d)", os.Getpagesize(), pageSize)
	}
	if err := installHandler(); err != nil {
		return nil, err
	}
	c, err := newCNode(rank, size, enc)
	if err != nil {
		return nil, err
	}
	return &Node{
		rank: rank, size: size, c: c,
		known: newNoticeSet(), lockSent: map[int64]uint64{},
		grants: map[int64]chan *message{}, acks: map[int64]chan *message{},
		localLocks: map[int64]*localLock{}, barrierCh: make(chan *message, 1),
		locks: map[int64]*lockState{}, barriers: map[int64]*barrierState{},
		barNotices: newNoticeSet(), barSentTo: make([]uint64, size),
		dead: make(chan struct{}), done: make(chan struct{}),
	}, nil
}

// Rank returns this rank, 0 <= Rank() < Size().
func (n *Node) Rank() int { return n.rank }

// SetFetchRun sets the most pages a fault fetches in one round trip, as
// Config.FetchRun does (1 fetches only the faulting page; 0, or more than
// the most, 8, is 8). It takes effect for faults from then on.
func (n *Node) SetFetchRun(pages int) {
	if pages <= 0 || pages > fetchRunMax {
		pages = fetchRunMax
	}
	n.c.setFetchRun(pages)
}

// Size returns the number of ranks in the job.
func (n *Node) Size() int { return n.size }

// UpdatePeer tells the node that rank now lives at addr (a rank moved); the
// node reconnects to it. See doc.go for what is not yet guaranteed.
func (n *Node) UpdatePeer(rank int, addr string) error {
	if n.tcp == nil {
		return errors.New("dsmshm: UpdatePeer needs the TCP transport")
	}
	return n.tcp.UpdatePeer(rank, addr)
}

// Close leaves the job: a final barrier (so no rank leaves while another may
// still fetch its pages), then connections, threads and mappings are released.
// Slices over segments must not be used after Close.
func (n *Node) Close() error {
	if !n.closed.CompareAndSwap(false, true) {
		return nil
	}
	err := n.barrier(closeBarrier, 0)
	select {
	case <-n.dead: // peers may be gone: do not wait for their goodbyes
		n.tr.abort()
	default:
		err = errors.Join(err, n.tr.close())
	}
	<-n.done
	n.release()
	return err
}

// release frees the node's C state and segments once its goroutines are
// done, keeping the final statistics.
func (n *Node) release() {
	n.freeMu.Lock()
	defer n.freeMu.Unlock()
	n.final = n.c.stats()
	n.freed = true
	n.c.stop()
	n.segMu.Lock()
	for _, s := range n.segs {
		s.c.free()
	}
	n.segs = nil
	n.segMu.Unlock()
	n.c.free()
}

// ErrClosed is returned by calls on a node after Close.
var ErrClosed = errors.New("dsmshm: node closed")

func (n *Node) checkOpen() error {
	if n.closed.Load() {
		return ErrClosed
	}
	return nil
}

// fail records the first fatal error; every waiter returns it.
func (n *Node) fail(err error) {
	n.failOnce.Do(func() {
		n.failErr = err
		close(n.dead)
		// Faults waiting for a page channel give up now. TryRLock: fail
		// may run while Close holds freeMu.
		if n.freeMu.TryRLock() {
			if !n.freed {
				n.c.setFailed(err.Error())
			}
			n.freeMu.RUnlock()
		}
	})
}

func (n *Node) wait(ch chan *message) (*message, error) {
	select {
	case m := <-ch:
		return m, nil
	case <-n.dead:
		return nil, n.failErr
	}
}

func (n *Node) send(to int, m *message) error {
	if err := n.tr.send(to, m); err != nil {
		err = fmt.Errorf("dsmshm: sending %v to rank %d: %w", m.Type, to, err)
		n.fail(err)
		return err
	}
	return nil
}

// run starts the dispatcher, which handles every incoming message: it plays
// lock manager (lock id mod size), barrier manager (rank 0) and home (diffs),
// and hands grants, barrier exits and acks to the goroutines waiting for them.
func (n *Node) run() {
	go func() {
		defer close(n.done)
		for {
			from, m, err := n.tr.recv()
			if err != nil {
				if !errors.Is(err, errClosed) || !n.closed.Load() {
					n.fail(err)
				}
				if errors.Is(err, errClosed) {
					return
				}
				continue
			}
			if err := n.handle(from, m); err != nil {
				n.fail(fmt.Errorf("dsmshm: handling %v from rank %d: %w", m.Type, from, err))
			}
		}
	}()
}

func (n *Node) handle(from int, m *message) error {
	switch m.Type {
	case mLockReq:
		ls := n.lockState(m.ID)
		if ls.held {
			ls.queue = append(ls.queue, from)
			return nil
		}
		return n.grant(m.ID, ls, from)
	case mUnlock:
		ls := n.lockState(m.ID)
		ls.notices.add(m.Notices)
		ls.held = false
		if len(ls.queue) > 0 {
			next := ls.queue[0]
			ls.queue = ls.queue[1:]
			return n.grant(m.ID, ls, next)
		}
	case mBarrierEnter:
		if n.rank != 0 {
			return errors.New("not the barrier manager")
		}
		bs := n.barriers[m.ID]
		if bs == nil {
			bs = &barrierState{check: m.Check}
			n.barriers[m.ID] = bs
		}
		switch {
		case bs.err != "": // the first problem is the one reported
		case m.Check != bs.check:
			bs.err = fmt.Sprintf("ranks disagree at barrier %d (rank %d differs): collective calls must match", m.ID, from)
		case m.Err != "":
			bs.err, bs.kind = fmt.Sprintf("rank %d refused: %s", from, m.Err), m.Kind
		}
		n.barNotices.add(m.Notices)
		if bs.arrived++; bs.arrived < n.size {
			return nil
		}
		delete(n.barriers, m.ID)
		for r := range n.size {
			ns, seq := n.barNotices.since(n.barSentTo[r])
			n.barSentTo[r] = seq
			if err := n.send(r, &message{Type: mBarrierExit, ID: m.ID, Err: bs.err, Kind: bs.kind, Notices: ns}); err != nil {
				return err
			}
		}
	case mLockGrant:
		n.mu.Lock()
		ch := n.grants[m.ID]
		n.mu.Unlock()
		if ch == nil {
			return errors.New("grant for a lock nobody waits for")
		}
		ch <- m
	case mBarrierExit:
		select {
		case n.barrierCh <- m:
		default:
			return errors.New("barrier exit nobody waits for")
		}
	case mDiffBatch:
		return n.applyDiffs(from, m)
	case mMigIntent, mMigReply, mMigDone:
		return n.handleMig(from, m)
	case mDiffAck:
		n.mu.Lock()
		ch := n.acks[m.ID]
		delete(n.acks, m.ID)
		n.mu.Unlock()
		if ch == nil {
			return errors.New("ack for no request")
		}
		ch <- m
	default:
		return fmt.Errorf("unexpected message")
	}
	return nil
}

func (n *Node) lockState(id int64) *lockState {
	ls := n.locks[id]
	if ls == nil {
		ls = &lockState{notices: newNoticeSet(), sentTo: map[int]uint64{}}
		n.locks[id] = ls
	}
	return ls
}

// grant gives lock id to rank to, with the write notices it has not yet
// received through this lock.
func (n *Node) grant(id int64, ls *lockState, to int) error {
	ls.held = true
	ns, seq := ls.notices.since(ls.sentTo[to])
	ls.sentTo[to] = seq
	return n.send(to, &message{Type: mLockGrant, ID: id, Notices: ns})
}

// applyDiffs applies diffs sent to this rank as home and acknowledges them
// with the versions they produced.
func (n *Node) applyDiffs(from int, m *message) error {
	acks := make([]ack, 0, len(m.Diffs))
	for _, d := range m.Diffs {
		s := n.segment(d.Seg)
		if s == nil {
			return fmt.Errorf("diff for unknown segment %d", d.Seg)
		}
		before, after, err := s.c.applyDiff(d.Page, d.Data)
		if err != nil {
			return fmt.Errorf("applying diff to segment %d page %d: %w", d.Seg, d.Page, err)
		}
		n.st.diffsApplied.Add(1)
		acks = append(acks, ack{Seg: d.Seg, Page: d.Page, Before: before, After: after})
	}
	return n.send(from, &message{Type: mDiffAck, ID: m.ID, Acks: acks})
}

func (n *Node) segment(id uint32) *Segment {
	n.segMu.RLock()
	defer n.segMu.RUnlock()
	if int(id) < len(n.segs) {
		return n.segs[id]
	}
	return nil
}

// Lock acquires lock id for this rank: it waits until no other rank holds
// it, then invalidates the pages that the lock's previous holders (and
// whoever they synchronized with) changed. Goroutines of one rank exclude
// each other too.
func (n *Node) Lock(id int) error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	lid := int64(id)
	n.mu.Lock()
	local := n.localLocks[lid]
	if local == nil {
		local = new(localLock)
		n.localLocks[lid] = local
	}
	ch := n.grants[lid]
	if ch == nil {
		ch = make(chan *message, 1)
		n.grants[lid] = ch
	}
	n.mu.Unlock()
	local.mu.Lock()
	t0 := time.Now()
	if err := n.send(int(uint64(lid)%uint64(n.size)), &message{Type: mLockReq, ID: lid}); err != nil {
		local.mu.Unlock()
		return err
	}
	g, err := n.wait(ch)
	n.st.lockWait.Add(int64(time.Since(t0)))
	if err != nil {
		local.mu.Unlock()
		return err
	}
	local.held.Store(true)
	n.st.lockAcquires.Add(1)
	n.syncMu.Lock()
	defer n.syncMu.Unlock()
	return n.acquireLocked(g.Notices)
}

// Unlock releases lock id: this rank's changes are sent to their homes
// first, so the next holder sees them.
func (n *Node) Unlock(id int) error {
	lid := int64(id)
	n.mu.Lock()
	local := n.localLocks[lid]
	n.mu.Unlock()
	if local == nil || !local.held.CompareAndSwap(true, false) {
		return fmt.Errorf("dsmshm: Unlock(%d): lock not held", id)
	}
	defer local.mu.Unlock()
	n.syncMu.Lock()
	defer n.syncMu.Unlock()
	if err := n.releaseLocked(); err != nil {
		return err
	}
	ns, seq := n.known.since(n.lockSent[lid])
	n.lockSent[lid] = seq
	return n.send(int(uint64(lid)%uint64(n.size)), &message{Type: mUnlock, ID: lid, Notices: ns})
}

// Barrier waits until every rank has called Barrier with the same id; it is
// a release followed by an acquire.
func (n *Node) Barrier(id int) error {
	if id < 0 {
		return fmt.Errorf("dsmshm: Barrier(%d): ids below zero are reserved", id)
	}
	if err := n.checkOpen(); err != nil {
		return err
	}
	return n.barrier(int64(id), 0)
}

func (n *Node) barrier(id int64, check uint64) error {
	n.barrierMu.Lock()
	defer n.barrierMu.Unlock()
	return n.barrierLocked(id, check, nil)
}

// barrierLocked is barrier with barrierMu held. A refusal (not nil) is this
// rank's reason why the collective call must fail: the barrier completes
// as usual, but every rank leaves it with a *barrierError naming the first
// refusal (or disagreement) the manager saw.
func (n *Node) barrierLocked(id int64, check uint64, refusal error) error {
	enter := &message{Type: mBarrierEnter, ID: id, Check: check}
	if refusal != nil {
		enter.Err = refusal.Error()
		if errors.Is(refusal, ErrTooLarge) {
			enter.Kind = refusedTooLarge
		}
	}
	n.syncMu.Lock()
	err := n.releaseLocked()
	enter.Notices, n.barSent = n.known.since(n.barSent)
	n.syncMu.Unlock()
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := n.send(0, enter); err != nil {
		return err
	}
	m, err := n.wait(n.barrierCh)
	n.st.barrierWait.Add(int64(time.Since(t0)))
	if err != nil {
		return err
	}
	n.st.barriers.Add(1)
	n.syncMu.Lock()
	defer n.syncMu.Unlock()
	if err := n.acquireLocked(m.Notices); err != nil {
		return err
	}
	if m.Err != "" {
		return &barrierError{msg: "dsmshm: " + m.Err, tooLarge: m.Kind == refusedTooLarge}
	}
	return nil
}

// refusedTooLarge, as the Kind of a barrier-enter with an Err, says that the
// rank refuses because of ErrTooLarge; as the Kind of a failed barrier-exit,
// that the refusal it reports was of that kind.
const refusedTooLarge = 1

// barrierError is a barrier that every rank left failing: the ranks'
// collective calls disagreed, or a rank refused (see barrierLocked).
type barrierError struct {
	msg      string
	tooLarge bool
}

func (e *barrierError) Error() string { return e.msg }

func (e *barrierError) Unwrap() error {
	if e.tooLarge {
		return ErrTooLarge
	}
	return nil
}

// releaseLocked makes every change of this rank visible at the pages' homes.
func (n *Node) releaseLocked() error {
	n.segMu.RLock()
	segs := n.segs
	n.segMu.RUnlock()
	work := make(map[*Segment][]uint32)
	for _, s := range segs {
		if s.dirtyBuf == nil {
			s.dirtyBuf = make([]uint32, s.npages)
		}
		if dirty := s.c.collectDirty(s.dirtyBuf); len(dirty) > 0 {
			work[s] = dirty
		}
	}
	return n.flushLocked(work)
}

// flushChunk is how many pages one call into C diffs.
const flushChunk = 128

// maxBatch bounds the diff bytes in one message.
const maxBatch = 1 << 20

// flushLocked write-protects the given dirty pages (those homed elsewhere;
// dirty home pages become exclusive, see doc.go), sends their diffs to
// their homes, waits for the acknowledgements, and records the resulting
// versions as write notices of this rank.
func (n *Node) flushLocked(work map[*Segment][]uint32) error {
	if n.flushBuf == nil {
		n.flushBuf = make([]byte, flushChunk*maxDiff)
	}
	var own []notice
	batches := make(map[int]*message) // open batch per home
	var pending []chan *message
	var sendErr error
	sendBatch := func(home int) {
		b := batches[home]
		delete(batches, home)
		ch := make(chan *message, 1)
		n.mu.Lock()
		n.reqID++
		b.ID = n.reqID
		n.acks[b.ID] = ch
		n.mu.Unlock()
		pending = append(pending, ch)
		sendErr = errors.Join(sendErr, n.send(home, b))
	}
	batchBytes := make(map[int]int)
	difflen := make([]int32, flushChunk)
	ver := make([]uint64, flushChunk)
	for s, pages := range work {
		for len(pages) > 0 {
			chunk := pages[:min(len(pages), flushChunk)]
			pages = pages[len(chunk):]
			if err := s.c.flush(chunk, n.flushBuf, difflen, ver); err != nil {
				return fmt.Errorf("dsmshm: write-protecting segment %q: %w", s.name, err)
			}
			for i, p := range chunk {
				switch l := int(difflen[i]); {
				case l < 0: // no longer dirty
				case s.homes[p] == int32(n.rank):
					own = append(own, notice{Seg: s.id, Page: p, Ver: ver[i]})
				case l == 0: // written, but every byte is back to its old value
				default:
					home := int(s.homes[p])
					if batches[home] == nil {
						batches[home] = &message{Type: mDiffBatch}
						batchBytes[home] = 0
					}
					data := append([]byte(nil), n.flushBuf[i*maxDiff:i*maxDiff+l]...)
					batches[home].Diffs = append(batches[home].Diffs, diff{Seg: s.id, Page: p, Data: data})
					n.st.diffs.Add(1)
					n.st.diffBytes.Add(uint64(l))
					if batchBytes[home] += l + 12; batchBytes[home] >= maxBatch {
						sendBatch(home)
					}
				}
			}
		}
	}
	for home := range batches {
		sendBatch(home)
	}
	n.known.add(own)
	if sendErr != nil {
		return sendErr
	}
	for _, ch := range pending {
		m, err := n.wait(ch)
		if err != nil {
			return err
		}
		ns := make([]notice, 0, len(m.Acks))
		for _, a := range m.Acks {
			s := n.segment(a.Seg)
			if s == nil || int(a.Page) >= s.npages {
				return fmt.Errorf("dsmshm: acknowledgement for unknown page %d of segment %d", a.Page, a.Seg)
			}
			s.c.setVersionIf(a.Page, a.Before, a.After)
			ns = append(ns, notice{Seg: a.Seg, Page: a.Page, Ver: a.After})
		}
		n.known.add(ns)
	}
	return nil
}

// acquireLocked applies write notices received at an acquire: every cached
// page older than its notice is invalidated. Notices are checked even if
// this rank knew them already, because its own copy of a page it wrote may
// lack another writer's concurrent changes. A page dirty again since it was
// flushed is flushed and retried, so no local write is ever dropped.
func (n *Node) acquireLocked(ns []notice) error {
	for _, x := range ns {
		if s := n.segment(x.Seg); s == nil || int(x.Page) >= s.npages {
			return fmt.Errorf("dsmshm: write notice for page %d of segment %d, which does not exist", x.Page, x.Seg)
		}
	}
	n.known.add(ns)
	sortNotices(ns)
	for len(ns) > 0 {
		seg := ns[0].Seg
		end := 1
		for end < len(ns) && ns[end].Seg == seg {
			end++
		}
		group := ns[:end]
		ns = ns[end:]
		s := n.segment(seg)
		pages := make([]uint32, 0, len(group))
		req := make([]uint64, 0, len(group))
		for _, x := range group {
			if s.homes[x.Page] != int32(n.rank) {
				pages = append(pages, x.Page)
				req = append(req, x.Ver)
			}
		}
		for len(pages) > 0 {
			dirty, err := s.c.invalidate(pages, req, make([]uint32, len(pages)))
			if err != nil {
				return fmt.Errorf("dsmshm: invalidating pages of segment %q: %w", s.name, err)
			}
			if len(dirty) == 0 {
				break
			}
			if err := n.flushLocked(map[*Segment][]uint32{s: dirty}); err != nil {
				return err
			}
			pages, req = retain(pages, req, dirty)
		}
	}
	return nil
}

// retain keeps the pages (and their required versions) listed in keep;
// both lists are sorted.
func retain(pages []uint32, req []uint64, keep []uint32) ([]uint32, []uint64) {
	var p2 []uint32
	var r2 []uint64
	k := 0
	for i, p := range pages {
		for k < len(keep) && keep[k] < p {
			k++
		}
		if k < len(keep) && keep[k] == p {
			p2 = append(p2, p)
			r2 = append(r2, req[i])
		}
	}
	return p2, r2
}

func checkOf(name string, size int) uint64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s\x00%d", name, size)
	return h.Sum64()
}

// vmaBudget reports whether npages more pages (each of which may end up in
// its own memory mapping after protection changes) fit under vm.max_map_count.
func vmaBudget(totalPages int) error {
	limit := 65530
	if b, err := os.ReadFile("/proc/sys/vm/max_map_count"); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			limit = v
		}
	}
	inUse := 0
	if b, err := os.ReadFile("/proc/self/maps"); err == nil {
		inUse = strings.Count(string(b), "\n")
	}
	const reserve = 4096 // for the Go runtime, libraries and other mappings
	if inUse+totalPages+reserve > limit {
		return fmt.Errorf("%w: shared pages would need up to %d memory mappings, vm.max_map_count is %d with %d in use; "+
			"raise it (sysctl -w vm.max_map_count=%d) or share less memory", ErrTooLarge, totalPages, limit, inUse,
			inUse+totalPages+reserve)
	}
	return nil
}

// ErrTooLarge is returned by Alloc when the segment could exceed the kernel's
// limit on memory mappings (see doc.go, "VMA limit").
var ErrTooLarge = errors.New("segment too large for vm.max_map_count")
