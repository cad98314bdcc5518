package dsmshm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	mrt "dsmigrate/runtime"
)

const (
	handshakeTimeout  = 10 * time.Second
	frameBodyTimeout  = 30 * time.Second
	closeDrainTimeout = 10 * time.Second
	// pageIOTimeout bounds a page request on a page channel; a home that
	// does not answer within it is treated as dead (the faulting rank aborts
	// with a message, see die in dsm.c).
	pageIOTimeout = 60 * time.Second
	// pageServeTimeout bounds how long a page server waits for the rest of
	// a started request before dropping the channel.
	pageServeTimeout = 5 * time.Second
	// defaultAwayWait bounds how long peers wait for a rank that announced
	// a migration.
	defaultAwayWait = 5 * time.Minute
	// pausePoll is how often a parked writer looks for resume.
	pausePoll = 5 * time.Millisecond
	// redialSlack is how much longer than the dial timeout a fault waits
	// for a broken page channel to be replaced: more than a redial's last
	// attempt (the dialer's 5 s timeout) takes.
	redialSlack = 10 * time.Second
)

// tcpTransport connects the ranks of a job. Every rank dials every other
// rank twice: a control connection carrying this rank's frames to the peer
// (inbound control connections carry the peer's frames to us), and a page
// channel over which this rank fetches pages the peer is home for. Page
// channels are handed to C as blocking file descriptors: the fault handler
// uses them directly (see doc.go).
//
// Frames are numbered per peer and kept until the peer acknowledges them
// (mAck, on the peer's own control connection), so that a connection that
// breaks (a rank migrates, see pause and resume) loses nothing: the writer
// resends what is unacknowledged on its next connection and the receiver
// drops what it has already delivered.
type tcpTransport struct {
	rank, size int
	sec        secParams
	port       string
	ln         net.Listener
	inbox      *queue[envelope]
	peers      []*peer
	ctr        *netCounters
	setChan    func(rank, fd int, s *session)
	serveFD    func(fd, rank int, s *session) error
	chanAway   func(rank int)
	pages      pager
	dialWait   time.Duration
	awayWait   time.Duration
	rejected   atomic.Uint64 // connections dropped before they authenticated

	preMu sync.Mutex
	pre   []net.Conn // accepted, not authenticated yet; oldest first

	redialEv *os.File // signalled by C when a page channel breaks (see redialLoop)

	wg      sync.WaitGroup // accept loop, readers, writers, redialling
	writers sync.WaitGroup // one per peer: done when its writer sent everything
	byes    sync.WaitGroup // one per peer: done when its bye arrived
	closing atomic.Bool
	readers atomic.Int64 // live readLoops

	mu      sync.Mutex // guards conns, inbound, self; paused changes under it
	conns   []net.Conn
	inbound []net.Conn // accepted control connections
	self    string     // this rank's address, as announced after a migration

	// Migration: pause (Prepare) bumps epoch and sets paused; resume
	// clears it. Writers park when they see a new epoch and reconnect,
	// announcing self, when paused is cleared.
	migMu  sync.Mutex // serializes pause and resume
	paused atomic.Bool
	epoch  atomic.Int64
}

// pager is the C side's part in a pause (see cnode.pause) and in replacing
// a broken page channel (see redialLoop).
type pager interface {
	pause()
	unpause()
	setRedialFD(fd int)
	chanRedial(rank int) bool
	replaceChan(rank, fd int, s *session) bool
}

// peer is this rank's view of another rank: where it lives, the outgoing
// queue, and sequence numbers in both directions.
type peer struct {
	rank int
	out  *queue[*message]

	mu      sync.Mutex // guards addr, conn, awayAt, unacked, acked
	addr    string
	gen     atomic.Int64 // bumped when the peer announces a new address; a writer seeing it redials
	conn    net.Conn     // current outgoing control connection
	awayAt  time.Time    // when it announced a migration; zero when present
	unacked []sentFrame  // frames sent but not acknowledged, in order
	acked   uint64

	sendSeq atomic.Uint64 // written by the writer goroutine only

	recvMu    sync.Mutex // orders delivery across an old and a new connection
	recvSeq   uint64     // highest seq delivered from this peer
	ackQueued atomic.Bool
	inGen     atomic.Int64 // bumped for every control connection accepted from this peer
	byeOnce   sync.Once

	// Writer state seen by pause and resume.
	parked    atomic.Int64 // last pause epoch the writer parked for
	resumed   atomic.Int64 // last pause epoch the writer reconnected after
	resumeErr atomic.Pointer[error]
	done      atomic.Bool // the writer exited

	redialing atomic.Bool // a redialPage for this peer runs
}

type sentFrame struct {
	seq uint64
	b   []byte
}

func (p *peer) setConn(c net.Conn) {
	p.mu.Lock()
	p.conn = c
	p.mu.Unlock()
}

func (p *peer) target() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addr
}

func (p *peer) away() (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.awayAt, !p.awayAt.IsZero()
}

// keep records a frame until the peer acknowledges it.
func (p *peer) keep(seq uint64, frame []byte) {
	p.mu.Lock()
	p.unacked = append(p.unacked, sentFrame{seq, append([]byte(nil), frame...)})
	p.mu.Unlock()
}

// ack drops the frames the peer acknowledged.
func (p *peer) ack(seq uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if seq <= p.acked {
		return
	}
	p.acked = seq
	i := 0
	for i < len(p.unacked) && p.unacked[i].seq <= seq {
		p.unacked[i] = sentFrame{}
		i++
	}
	p.unacked = p.unacked[i:]
	if len(p.unacked) == 0 {
		p.unacked = nil // let the backing array go
	}
}

// pending returns the unacknowledged frames.
func (p *peer) pending() []sentFrame {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]sentFrame(nil), p.unacked...)
}

type tcpConfig struct {
	rank, size int
	job        string
	secret     []byte
	encrypt    bool
	addrs      []string
	dialWait   time.Duration
	awayWait   time.Duration
	ctr        *netCounters
	setChan    func(rank, fd int, s *session)
	serveFD    func(fd, rank int, s *session) error
	chanAway   func(rank int)
	pages      pager
}

func listenConfig() *net.ListenConfig {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false) // CRIU refuses MPTCP sockets
	return &lc
}

func dialer() *net.Dialer {
	d := &net.Dialer{Timeout: 5 * time.Second}
	d.SetMultipathTCP(false)
	if ip := net.ParseIP(os.Getenv(mrt.EnvBind)); ip != nil {
		// The rank has an address of its own (dsmrun run --rank-ips): its
		// connections use it at both ends, so they can move with it.
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	return d
}

// newTCPTransport listens on the wildcard address at this rank's port and
// connects to every peer, retrying for cfg.dialWait while peers start.
func newTCPTransport(cfg tcpConfig) (_ *tcpTransport, retErr error) {
	if len(cfg.secret) != SecretLen {
		return nil, fmt.Errorf("dsmshm: the job's secret is %d bytes, want %d: launch ranks with dsmrun run", len(cfg.secret), SecretLen)
	}
	_, port, err := net.SplitHostPort(cfg.addrs[cfg.rank])
	if err != nil {
		return nil, fmt.Errorf("dsmshm: address of rank %d: %w", cfg.rank, err)
	}
	ln, err := listenConfig().Listen(context.Background(), "tcp4", net.JoinHostPort("0.0.0.0", port))
	if err != nil {
		return nil, fmt.Errorf("dsmshm: listening for peers: %w", err)
	}
	t := &tcpTransport{
		rank: cfg.rank, size: cfg.size, port: port,
		sec: secParams{secret: append([]byte(nil), cfg.secret...), job: cfg.job, enc: cfg.encrypt}, ln: ln, inbox: newQueue[envelope](),
		ctr: cfg.ctr, setChan: cfg.setChan, serveFD: cfg.serveFD, chanAway: cfg.chanAway, pages: cfg.pages,
		dialWait: cfg.dialWait, awayWait: cfg.awayWait, self: cfg.addrs[cfg.rank],
	}
	if t.awayWait <= 0 {
		t.awayWait = defaultAwayWait
	}
	t.peers = make([]*peer, cfg.size)
	for r := range t.peers {
		t.peers[r] = &peer{rank: r, addr: cfg.addrs[r], out: newQueue[*message]()}
		if r != cfg.rank {
			t.byes.Add(1)
		}
	}
	defer func() {
		if retErr != nil {
			t.abort()
		}
	}()
	if err := t.startRedial(); err != nil {
		return nil, err
	}
	t.wg.Add(1)
	go t.acceptLoop()

	errs := make(chan error, 2*cfg.size)
	for r := range cfg.size {
		if r == cfg.rank {
			continue
		}
		go func() {
			conn, s, err := t.dial(t.peers[r], connControl, "", time.Now().Add(t.dialWait), nil)
			if err == nil {
				t.wg.Add(1)
				t.writers.Add(1)
				go t.writeLoop(t.peers[r], conn, s)
			}
			errs <- err
		}()
		go func() { errs <- t.dialPage(t.peers[r], time.Now().Add(t.dialWait), nil) }()
	}
	var all []error
	for range 2 * (cfg.size - 1) {
		all = append(all, <-errs)
	}
	if err := errors.Join(all...); err != nil {
		return nil, err
	}
	return t, nil
}

// dial connects to p and authenticates (see secure.go), retrying until
// deadline or until stop (if not nil) says to give up. A non-empty announce
// tells p that this rank is back from a migration and lives at announce now.
// A page channel is established only once p's page server serves it: p
// answers the handshake with statusNotNow while it is paused for a
// migration, and this dials again, so a fetch never waits on a connection
// that p's kernel accepted but p will drop.
func (t *tcpTransport) dial(p *peer, kind uint8, announce string, deadline time.Time, stop func() bool) (net.Conn, *session, error) {
	for {
		addr := p.target()
		conn, err := dialer().Dial("tcp4", addr)
		if err == nil {
			var s *session
			s, err = clientHandshake(conn, t.sec, kind, t.rank, p.rank, announce, time.Now().Add(handshakeTimeout))
			if err == nil {
				return conn, s, nil
			}
			conn.Close()
		}
		if time.Now().After(deadline) || t.closing.Load() || (stop != nil && stop()) {
			if err == nil {
				err = errors.New("given up")
			}
			return nil, nil, fmt.Errorf("dsmshm: connecting to rank %d at %s: %w", p.rank, addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dialPage opens the page channel to p and hands it to C.
func (t *tcpTransport) dialPage(p *peer, deadline time.Time, stop func() bool) error {
	conn, s, err := t.dial(p, connPage, "", deadline, stop)
	if err != nil {
		return err
	}
	fd, err := detachFD(conn, pageIOTimeout)
	if err != nil {
		return fmt.Errorf("dsmshm: page channel to rank %d: %w", p.rank, err)
	}
	// Under t.mu: a pause either closes this channel or happens first and
	// this one is dropped (resume dials anew).
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.paused.Load() {
		unix.Close(fd)
		return nil
	}
	t.setChan(p.rank, fd, s)
	return nil
}

// startRedial sets up the eventfd through which C asks for a new page
// channel when one breaks, and the goroutine that answers.
func (t *tcpTransport) startRedial() error {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("dsmshm: creating an eventfd for page channel repairs: %w", err)
	}
	cfd, err := unix.FcntlInt(uintptr(efd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		unix.Close(efd)
		return fmt.Errorf("dsmshm: creating an eventfd for page channel repairs: %w", err)
	}
	t.pages.setRedialFD(cfd) // C signals its copy; closing ours (abort) ends redialLoop
	t.redialEv = os.NewFile(uintptr(efd), "dsmshm-redial")
	t.wg.Add(1)
	go t.redialLoop()
	return nil
}

// redialLoop replaces page channels that broke. A fetch that fails on a
// channel (a reset, the page I/O timeout) closes it and signals the eventfd;
// faults on the home's pages then re-fault until a new channel is in place.
// Without this, a channel that failed once stayed closed until the home
// migrated, and every later fault on its pages aborted the process after
// the dial timeout although the home was alive.
func (t *tcpTransport) redialLoop() {
	defer t.wg.Done()
	var b [8]byte
	for {
		if _, err := t.redialEv.Read(b[:]); err != nil {
			return // closed by abort
		}
		for _, p := range t.peers {
			if p.rank != t.rank && t.pages.chanRedial(p.rank) && p.redialing.CompareAndSwap(false, true) {
				t.wg.Add(1)
				go t.redialPage(p)
			}
		}
	}
}

// redialPage dials a new page channel to p, retrying for the dial timeout,
// and installs it if the old one is still broken. It gives up quietly when
// this rank pauses or p announces a migration (their resumption dials anew);
// a p that cannot be reached within the dial timeout fails the node with an
// error saying so. If the new channel breaks too before this returns, it
// dials again.
func (t *tcpTransport) redialPage(p *peer) {
	defer t.wg.Done()
	stop := func() bool {
		_, away := p.away()
		return away || t.paused.Load() || t.closing.Load()
	}
	for {
		installed, err := t.redialOnce(p, stop)
		// No error if the channel was replaced meanwhile (p came back
		// from a migration, for one).
		if err != nil && !stop() && t.pages.chanRedial(p.rank) {
			t.inbox.push(envelope{err: fmt.Errorf("dsmshm: the page channel to rank %d broke and could not be "+
				"re-established within %v: %w", p.rank, t.dialWait, err)})
		}
		p.redialing.Store(false)
		// A channel that broke again while this ran signalled a redialLoop
		// that saw this one still running: look again.
		if !installed || !t.pages.chanRedial(p.rank) || !p.redialing.CompareAndSwap(false, true) {
			return
		}
	}
}

func (t *tcpTransport) redialOnce(p *peer, stop func() bool) (bool, error) {
	conn, s, err := t.dial(p, connPage, "", time.Now().Add(t.dialWait), stop)
	if err != nil {
		return false, err
	}
	fd, err := detachFD(conn, pageIOTimeout)
	if err != nil {
		return false, fmt.Errorf("page channel to rank %d: %w", p.rank, err)
	}
	// Under t.mu, as in dialPage: a pause either closes this channel or
	// happens first and this one is dropped.
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.paused.Load() || !t.pages.replaceChan(p.rank, fd, s) {
		unix.Close(fd)
		return false, nil
	}
	return true, nil
}

// detachFD turns conn into a blocking file descriptor owned by the caller
// (C code), with I/O timeouts so a dead peer cannot block a thread forever.
func detachFD(conn net.Conn, timeout time.Duration) (int, error) {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return -1, fmt.Errorf("not a TCP connection: %T", conn)
	}
	tc.SetNoDelay(true)
	raw, err := tc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	cerr := raw.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	conn.Close()
	if err = errors.Join(cerr, err); err != nil {
		return -1, err
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	err = errors.Join(
		unix.SetNonblock(fd, false),
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv),
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv))
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// track records a control connection so that abort can close it.
func (t *tcpTransport) track(c net.Conn) {
	t.mu.Lock()
	t.conns = append(t.conns, c)
	t.mu.Unlock()
}

// untrack closes c and forgets it.
func (t *tcpTransport) untrack(c net.Conn) {
	c.Close()
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, x := range t.conns {
		if x == c {
			t.conns = append(t.conns[:i], t.conns[i+1:]...)
			return
		}
	}
}

func (t *tcpTransport) acceptLoop() {
	defer t.wg.Done()
	for {
		conn, err := t.ln.Accept()
		if err != nil {
			if !t.closing.Load() {
				t.inbox.push(envelope{err: fmt.Errorf("dsmshm: accepting peers: %w", err)})
			}
			return
		}
		t.admit(conn)
		t.wg.Add(1)
		go t.handshake(conn)
	}
}

// admit records conn as waiting to authenticate. A peer's handshake takes a
// round trip, so the connections that wait long are an outsider's: when
// maxPreAuth wait (or maxPreAuthPerIP from conn's address), the oldest is
// closed to make room. An outsider must then open connections faster than
// a peer completes a handshake to keep one out, and cannot make a rank hold
// more than maxPreAuth of them.
func (t *tcpTransport) admit(conn net.Conn) {
	ip := remoteIP(conn)
	t.preMu.Lock()
	defer t.preMu.Unlock()
	victim, same := -1, 0
	for i, c := range t.pre {
		if remoteIP(c) == ip {
			if same++; victim < 0 {
				victim = i
			}
		}
	}
	if same < maxPreAuthPerIP {
		victim = -1
		if len(t.pre) >= maxPreAuth {
			victim = 0
		}
	}
	if victim >= 0 {
		t.pre[victim].Close() // its handshake fails and settles
		t.pre = append(t.pre[:victim], t.pre[victim+1:]...)
	}
	t.pre = append(t.pre, conn)
}

// settle forgets conn as waiting to authenticate.
func (t *tcpTransport) settle(conn net.Conn) {
	t.preMu.Lock()
	defer t.preMu.Unlock()
	for i, c := range t.pre {
		if c == conn {
			t.pre = append(t.pre[:i], t.pre[i+1:]...)
			return
		}
	}
}

func remoteIP(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return c.RemoteAddr().String()
}

// handshake authenticates an accepted connection (see secure.go) and starts
// serving it. A connection that fails is closed and counted, nothing more:
// whoever can reach the port cannot disturb the job. While this rank is
// paused for a migration, page channels are refused (statusNotNow) and
// control connections closed right after the handshake, as before a pause
// they would be: the dialer's writer then waits for this rank to announce
// where it lives.
func (t *tcpTransport) handshake(conn net.Conn) {
	defer t.wg.Done()
	pa, err := serverHandshake(conn, t.sec, t.rank, t.size, time.Now().Add(handshakeTimeout))
	t.settle(conn)
	if err != nil {
		t.rejected.Add(1)
		conn.Close()
		return
	}
	p := t.peers[pa.from]
	switch pa.kind {
	case connPage:
		fd, err := detachFD(conn, pageServeTimeout)
		if err == nil {
			// Under t.mu, so that a pause either sees this fd among
			// those it drops or this handshake sees the pause. The
			// answer goes first: once the page server thread polls the
			// fd, only it touches the channel.
			t.mu.Lock()
			if t.paused.Load() {
				unix.Sendto(fd, pa.final(statusNotNow), unix.MSG_NOSIGNAL, nil)
				err = errPaused
			} else if unix.Sendto(fd, pa.final(statusTaken), unix.MSG_NOSIGNAL, nil) != nil {
				err = errGone // the dialer gave up waiting: it dials again
			} else {
				err = t.serveFD(fd, pa.from, pa.s)
			}
			t.mu.Unlock()
			if err != nil {
				unix.Close(fd)
			}
		}
		if err != nil && err != errPaused && err != errGone {
			t.inbox.push(envelope{err: fmt.Errorf("dsmshm: page channel from rank %d: %w", pa.from, err)})
		}
	case connControl:
		conn.SetWriteDeadline(time.Now().Add(handshakeTimeout))
		if _, err := conn.Write(pa.final(statusTaken)); err != nil {
			conn.Close()
			return
		}
		conn.SetWriteDeadline(time.Time{})
		t.mu.Lock()
		if t.paused.Load() {
			t.mu.Unlock()
			conn.Close()
			if pa.announce != "" {
				// Keep the news: our writer reconnects to the new
				// address when we resume; so does the peer's.
				p.mu.Lock()
				p.inGen.Add(1)
				p.mu.Unlock()
				t.peerBack(p, pa.announce)
			}
			return
		}
		t.conns = append(t.conns, conn)
		t.inbound = append(t.inbound, conn)
		t.readers.Add(1)
		t.mu.Unlock()
		// A new generation before peerBack: an away frame still unread on
		// an older connection is stale from now on (see peerAway).
		p.mu.Lock()
		gen := p.inGen.Add(1)
		p.mu.Unlock()
		if pa.announce != "" {
			t.peerBack(p, pa.announce)
		}
		t.wg.Add(1)
		go t.readLoop(p, conn, pa.s, gen, t.epoch.Load())
	}
}

var (
	errPaused = errors.New("dsmshm: paused for a migration")
	errGone   = errors.New("dsmshm: the dialer closed the connection")
)

// readLoop delivers frames from p's control connection to the inbox. Once a
// frame's length has arrived its body must follow within frameBodyTimeout.
// A connection that ends without a bye means the peer died, unless it
// announced a migration or reconnects within the dial timeout.
func (t *tcpTransport) readLoop(p *peer, conn net.Conn, s *session, gen, epoch int64) {
	defer t.wg.Done()
	defer t.readers.Add(-1)
	defer t.untrack(conn)
	for {
		frame, err := s.readSealed(conn, func() { conn.SetReadDeadline(time.Now().Add(frameBodyTimeout)) })
		if err != nil {
			_, away := p.away()
			switch {
			case t.closing.Load() || p.inGen.Load() != gen || t.epoch.Load() != epoch:
				// replaced, closing, or closed by our own pause
			case away:
				// it comes back (a new connection) or the away timer fails the node
			case errors.Is(err, io.EOF) || errors.Is(err, errAuth):
				// A frame that fails to open was forged or tampered with
				// on the way: the connection is dropped like a broken one.
				time.AfterFunc(t.dialWait, func() {
					if _, away := p.away(); p.inGen.Load() == gen && !t.closing.Load() && !away {
						t.inbox.push(envelope{err: fmt.Errorf("dsmshm: rank %d closed its connection without goodbye "+
							"and did not reconnect within %v", p.rank, t.dialWait)})
					}
				})
			default:
				t.inbox.push(envelope{err: fmt.Errorf("dsmshm: rank %d: %w", p.rank, err)})
			}
			return
		}
		conn.SetReadDeadline(time.Time{})
		seq, m, err := decodeFrame(frame)
		if err != nil {
			t.inbox.push(envelope{err: fmt.Errorf("dsmshm: from rank %d: %w", p.rank, err)})
			conn.Close()
			return
		}
		if seq == 0 {
			switch m.Type {
			case mAck:
				p.ack(uint64(m.ID))
			case mAway:
				t.peerAway(p, gen)
			default:
				t.inbox.push(envelope{err: fmt.Errorf("dsmshm: from rank %d: unnumbered %v", p.rank, m.Type)})
				conn.Close()
				return
			}
			continue
		}
		p.recvMu.Lock()
		if seq <= p.recvSeq {
			p.recvMu.Unlock()
			continue // already delivered over an earlier connection
		}
		if seq != p.recvSeq+1 {
			p.recvMu.Unlock()
			t.inbox.push(envelope{err: fmt.Errorf("dsmshm: from rank %d: frame %d after %d: frames lost", p.rank, seq, p.recvSeq)})
			conn.Close()
			return
		}
		p.recvSeq = seq
		if m.Type != mBye {
			t.inbox.push(envelope{from: p.rank, m: m})
		}
		p.recvMu.Unlock()
		if !p.ackQueued.Swap(true) {
			p.out.push(&message{Type: mAck})
		}
		if m.Type == mBye {
			p.byeOnce.Do(t.byes.Done)
			return // the peer sends nothing more; its EOF is expected
		}
	}
}

// peerAway records that p announced a migration: its connections close, and
// messages to it wait (up to awayWait) until it announces where it is.
// An away read late from an old connection (gen), after the peer has
// already come back on a newer one, is ignored.
func (t *tcpTransport) peerAway(p *peer, gen int64) {
	at := time.Now()
	p.mu.Lock()
	if p.inGen.Load() != gen {
		p.mu.Unlock()
		return
	}
	p.awayAt = at
	t.chanAway(p.rank) // under p.mu: ordered before a new channel from peerBack
	p.mu.Unlock()
	time.AfterFunc(t.awayWait, func() {
		if a, away := p.away(); away && a.Equal(at) && !t.closing.Load() {
			t.inbox.push(envelope{err: fmt.Errorf("dsmshm: rank %d announced a migration and did not come back within %v",
				p.rank, t.awayWait)})
		}
	})
}

// repoint makes p's address addr and has its writer redial there and resend
// what p has not acknowledged.
func (t *tcpTransport) repoint(p *peer, addr string) {
	p.mu.Lock()
	p.addr = addr
	p.awayAt = time.Time{}
	conn := p.conn
	p.gen.Add(1)
	p.mu.Unlock()
	if conn != nil {
		conn.Close() // the writer notices and redials
	}
	p.out.kick()
}

// peerBack records that p lives at addr now (it announced itself after a
// migration, or UpdatePeer said so): its writer redials and resends what p
// has not acknowledged, and the page channel to it is redialled.
func (t *tcpTransport) peerBack(p *peer, addr string) {
	t.repoint(p, addr)
	if t.paused.Load() {
		return // our own resume dials page channels
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		if err := t.dialPage(p, time.Now().Add(t.dialWait), t.paused.Load); err != nil && !t.closing.Load() && !t.paused.Load() {
			t.inbox.push(envelope{err: err})
		}
	}()
}

// writeLoop sends p's queued messages in order, numbered, keeping each frame
// until p acknowledges it. When the connection breaks or p moves, it waits
// for p to be reachable, reconnects and resends what is unacknowledged; the
// receiver drops duplicates by sequence number. When this rank pauses for a
// migration, it tells p (mAway), closes the connection and waits for resume.
func (t *tcpTransport) writeLoop(p *peer, conn net.Conn, s *session) {
	defer t.wg.Done()
	defer t.writers.Done()
	defer p.done.Store(true)
	w := writer{t: t, p: p, s: s, gen: p.gen.Load(), epoch: t.epoch.Load()}
	p.parked.Store(w.epoch)
	p.resumed.Store(w.epoch)
	t.track(conn)
	p.setConn(conn)
	// Closing after the last write still delivers what was written: the
	// peer never sends on this connection, so close sends FIN, not RST.
	defer func() {
		if conn != nil {
			t.untrack(conn)
		}
	}()
	var buf []byte
	for {
		if conn == nil {
			if conn = w.reconnect(); conn == nil {
				return
			}
		}
		m, ok, stopped := p.out.popUnless(func() bool {
			return t.epoch.Load() != w.epoch || p.gen.Load() != w.gen
		})
		if stopped {
			if t.epoch.Load() != w.epoch {
				// Pausing: the last frame on this connection says so.
				buf = appendFrame(buf[:0], 0, &message{Type: mAway})
				conn.SetWriteDeadline(time.Now().Add(handshakeTimeout))
				conn.Write(w.seal(buf))
			}
			w.drop(conn)
			conn = nil
			continue
		}
		if !ok {
			return
		}
		if m.Type == mAck {
			p.ackQueued.Store(false)
			p.recvMu.Lock()
			buf = appendFrame(buf[:0], 0, &message{Type: mAck, ID: int64(p.recvSeq)})
			p.recvMu.Unlock()
		} else {
			seq := p.sendSeq.Add(1)
			buf = appendFrame(buf[:0], seq, m)
			p.keep(seq, buf)
		}
		sealed := w.seal(buf)
		if _, err := conn.Write(sealed); err != nil {
			w.drop(conn) // the frame is resent after reconnecting
			conn = nil
			continue
		}
		if m.Type != mAck {
			t.ctr.count(len(sealed))
		}
	}
}

type writer struct {
	t      *tcpTransport
	p      *peer
	s      *session  // the current connection's
	out    []byte    // seal's buffer
	gen    int64     // p.gen of the current connection
	epoch  int64     // last pause this writer parked for
	lostAt time.Time // when the connection broke (zero: closed on purpose)
}

// seal protects a frame for the current connection.
func (w *writer) seal(frame []byte) []byte {
	w.out = w.s.seal(w.out, frame)
	return w.out
}

func (w *writer) drop(conn net.Conn) {
	w.t.untrack(conn)
	w.p.setConn(nil)
	if w.p.gen.Load() == w.gen && w.t.epoch.Load() == w.epoch {
		w.lostAt = time.Now()
	}
}

// reconnect waits until p can be dialled, dials it and resends what p has
// not acknowledged. It returns nil when the writer should exit.
func (w *writer) reconnect() net.Conn {
	t, p := w.t, w.p
	for {
		if t.closing.Load() {
			return nil
		}
		if e := t.epoch.Load(); e != w.epoch {
			w.epoch = e // parked: nothing of this rank dials until resume
			p.parked.Store(e)
			continue
		}
		if t.paused.Load() {
			time.Sleep(pausePoll)
			continue
		}
		announce := ""
		if p.resumed.Load() != w.epoch {
			t.mu.Lock()
			announce = t.self
			t.mu.Unlock()
		} else if p.gen.Load() == w.gen {
			// The connection broke and p has not announced a new address.
			if _, away := p.away(); !away && time.Since(w.lostAt) > t.dialWait {
				t.inbox.push(envelope{err: fmt.Errorf("dsmshm: sending to rank %d: connection lost and not re-established within %v",
					p.rank, t.dialWait)})
				return nil
			}
			time.Sleep(pausePoll)
			continue
		}
		gen := p.gen.Load()
		conn, s, err := t.dial(p, connControl, announce, time.Now().Add(t.dialWait), t.paused.Load)
		if err == nil {
			w.s = s
			t.track(conn)
			for _, f := range p.pending() {
				if _, err = conn.Write(w.seal(f.b)); err != nil {
					break
				}
			}
			if err != nil {
				t.untrack(conn)
			}
		}
		if t.paused.Load() {
			if err == nil {
				t.untrack(conn)
			}
			continue // paused again meanwhile; resume dials anew
		}
		if announce != "" {
			if err != nil {
				p.resumeErr.Store(&err)
			}
			p.resumed.Store(w.epoch)
		}
		if err != nil {
			if !t.closing.Load() {
				t.inbox.push(envelope{err: fmt.Errorf("dsmshm: reconnecting to rank %d: %w", p.rank, err)})
			}
			return nil
		}
		w.gen, w.lostAt = gen, time.Time{}
		p.setConn(conn)
		return conn
	}
}

func (t *tcpTransport) send(to int, m *message) error {
	if to == t.rank {
		if !t.inbox.push(envelope{from: to, m: m}) {
			return errClosed
		}
		return nil
	}
	if !t.peers[to].out.push(m) {
		return errClosed
	}
	return nil
}

func (t *tcpTransport) recv() (int, *message, error) {
	e, ok := t.inbox.pop()
	if !ok {
		return 0, nil, errClosed
	}
	return e.from, e.m, e.err
}

// UpdatePeer records that rank now lives at addr: the control connection is
// re-established by its writer (resending what the rank has not
// acknowledged) and the page channel is redialled now. A migrated rank
// announces itself (see resume), so peers need not call this.
func (t *tcpTransport) UpdatePeer(rank int, addr string) error {
	if rank < 0 || rank >= t.size || rank == t.rank {
		return fmt.Errorf("dsmshm: UpdatePeer: bad rank %d", rank)
	}
	p := t.peers[rank]
	t.repoint(p, addr)
	return t.dialPage(p, time.Now().Add(t.dialWait), nil)
}

// awayPeer returns a peer that announced a migration and is not back yet,
// or -1.
func (t *tcpTransport) awayPeer() int {
	for _, p := range t.peers {
		if _, away := p.away(); away && p.rank != t.rank {
			return p.rank
		}
	}
	return -1
}

// pause prepares this rank for a checkpoint: it returns when no connection
// of the rank is open but its listener and nothing will dial until resume.
// Writers tell their peers (mAway) and park; messages queue meanwhile.
// Inbound control connections are closed (what was not read is resent by the
// peers, who keep it until acknowledged); page fetches in flight finish, new
// ones wait, and every page channel is closed.
func (t *tcpTransport) pause() error {
	t.migMu.Lock()
	defer t.migMu.Unlock()
	if t.paused.Load() {
		return nil
	}
	t.mu.Lock()
	t.paused.Store(true)
	e := t.epoch.Add(1)
	t.mu.Unlock()
	var errs []error
	deadline := time.Now().Add(handshakeTimeout + time.Second)
	for _, p := range t.peers {
		if p.rank == t.rank {
			continue
		}
		p.out.kick()
		for p.parked.Load() != e && !p.done.Load() {
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("dsmshm: pausing: the writer to rank %d did not stop", p.rank))
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	t.mu.Lock()
	for _, c := range t.inbound {
		c.Close()
	}
	t.inbound = nil
	t.pages.pause() // under t.mu: no page channel is accepted meanwhile
	t.mu.Unlock()
	for t.readers.Load() != 0 {
		if time.Now().After(deadline) {
			errs = append(errs, errors.New("dsmshm: pausing: connections from peers did not close"))
			break
		}
		time.Sleep(time.Millisecond)
	}
	return errors.Join(errs...)
}

// resume reconnects after pause. host, if not empty, is this rank's new
// host: its address becomes host:port (the listener is restored on the same
// port). Writers dial every peer announcing the address and resend what is
// unacknowledged; peers then redial this rank and resend theirs. Page
// channels to every peer are dialled anew before fetches may proceed.
func (t *tcpTransport) resume(host string) error {
	t.migMu.Lock()
	defer t.migMu.Unlock()
	if !t.paused.Load() {
		return nil
	}
	t.mu.Lock()
	if host != "" {
		t.self = net.JoinHostPort(host, t.port)
	}
	for _, p := range t.peers {
		p.resumeErr.Store(nil)
	}
	t.paused.Store(false)
	e := t.epoch.Load()
	t.mu.Unlock()
	deadline := time.Now().Add(t.dialWait)
	errs := make(chan error, t.size)
	for _, p := range t.peers {
		if p.rank == t.rank {
			continue
		}
		p.out.kick()
		go func() { errs <- t.dialPage(p, deadline, nil) }()
	}
	var all []error
	for range t.size - 1 {
		all = append(all, <-errs)
	}
	for _, p := range t.peers {
		if p.rank == t.rank {
			continue
		}
		for p.resumed.Load() != e && !p.done.Load() {
			if time.Now().After(deadline.Add(time.Second)) {
				all = append(all, fmt.Errorf("dsmshm: resuming: rank %d not reconnected", p.rank))
				break
			}
			time.Sleep(time.Millisecond)
		}
		if err := p.resumeErr.Load(); err != nil {
			all = append(all, *err)
		}
	}
	t.pages.unpause()
	return errors.Join(all...)
}

// close says goodbye to every peer after its queue drains, waits (bounded)
// until the goodbyes are sent and every peer's goodbye has arrived, and
// releases everything.
func (t *tcpTransport) close() error {
	for _, p := range t.peers {
		if p.rank != t.rank {
			p.out.push(&message{Type: mBye})
		}
		p.out.close()
	}
	done := make(chan struct{})
	go func() { t.writers.Wait(); t.byes.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-time.After(closeDrainTimeout):
		err = errors.New("dsmshm: closing: some peers did not say goodbye")
	}
	t.abort()
	return err
}

// abort drops every connection and waits for the goroutines.
func (t *tcpTransport) abort() {
	t.closing.Store(true)
	t.ln.Close()
	for _, p := range t.peers {
		p.out.close()
		if p.rank != t.rank {
			p.byeOnce.Do(t.byes.Done) // nobody waits for goodbyes any more
		}
	}
	t.mu.Lock()
	for _, c := range t.conns {
		c.Close()
	}
	t.mu.Unlock()
	t.preMu.Lock()
	for _, c := range t.pre {
		c.Close() // their handshakes fail at once
	}
	t.preMu.Unlock()
	if t.redialEv != nil {
		t.redialEv.Close()
	}
	t.wg.Wait()
	t.inbox.close()
}
