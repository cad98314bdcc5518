package dsmshm

import (
	"context"
	"errors"
	"fmt"
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
	// pageServeTimeout bounds the blocking send of the handshake's answer
	// on a page channel this rank serves; after it the page server (dsm.c)
	// never blocks, and drops a request that stays partial for as long
	// (SERVE_TIMEOUT_NS).
	pageServeTimeout = 5 * time.Second
	// defaultAwayWait bounds how long peers wait for a rank that announced
	// a migration.
	defaultAwayWait = 5 * time.Minute
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
	dying   chan struct{} // closed when closing is set

	hs sync.WaitGroup // handshakes running

	mu         sync.Mutex    // guards ln, acceptDone, conns, inbound, self; paused and epoch change under it
	ln         net.Listener  // nil while paused (see stopAccepting)
	acceptDone chan struct{} // closed when ln's accept loop has exited
	conns      []net.Conn
	inbound    []*inboundConn // accepted control connections
	self       string         // this rank's address, as announced after a migration

	// Migration: pause (Prepare) bumps epoch, sets paused and parks the
	// writers; resume clears it and has them reconnect, announcing self
	// (see pause.go).
	migMu  sync.Mutex // serializes pause and resume
	paused atomic.Bool
	epoch  atomic.Int64
}

// inboundConn is an accepted control connection; done is closed when its
// reader has exited.
type inboundConn struct {
	conn net.Conn
	done chan struct{}
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
	t := &tcpTransport{
		rank: cfg.rank, size: cfg.size, port: port,
		sec: secParams{secret: append([]byte(nil), cfg.secret...), job: cfg.job, enc: cfg.encrypt}, inbox: newQueue[envelope](),
		ctr: cfg.ctr, setChan: cfg.setChan, serveFD: cfg.serveFD, chanAway: cfg.chanAway, pages: cfg.pages,
		dialWait: cfg.dialWait, awayWait: cfg.awayWait, self: cfg.addrs[cfg.rank], dying: make(chan struct{}),
	}
	if t.awayWait <= 0 {
		t.awayWait = defaultAwayWait
	}
	t.peers = make([]*peer, cfg.size)
	for r := range t.peers {
		t.peers[r] = newPeer(r, cfg.addrs[r])
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
	if err := t.listen(); err != nil {
		return nil, err
	}

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

// track records a control connection so that abort can close it.
// One that comes after abort has closed the others is closed at once:
// abort sets closing before it takes t.mu.
func (t *tcpTransport) track(c net.Conn) {
	t.mu.Lock()
	if t.closing.Load() {
		c.Close()
	}
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

// listen opens the rank's listener, on the wildcard address at its port,
// and starts accepting.
func (t *tcpTransport) listen() error {
	ln, err := listenConfig().Listen(context.Background(), "tcp4", net.JoinHostPort("0.0.0.0", t.port))
	if err != nil {
		return fmt.Errorf("dsmshm: listening for peers on port %s: %w", t.port, err)
	}
	done := make(chan struct{})
	t.mu.Lock()
	t.ln, t.acceptDone = ln, done
	t.mu.Unlock()
	t.wg.Add(1)
	go t.acceptLoop(ln, done)
	return nil
}

// stopAccepting closes the listener and every connection that has not
// authenticated, and returns once no handshake runs: from then on the rank
// holds no socket but its own established connections, which pause closes.
// While a rank is paused for a checkpoint it must not accept anything: CRIU
// refuses to dump a connection it did not ask for, and one that an outsider
// (or a peer) opened at the wrong moment would fail the migration.
func (t *tcpTransport) stopAccepting() {
	t.mu.Lock()
	ln, done := t.ln, t.acceptDone
	t.ln = nil
	t.mu.Unlock()
	if ln == nil {
		return
	}
	ln.Close()
	<-done
	t.preMu.Lock()
	for _, c := range t.pre {
		c.Close() // their handshakes fail at once
	}
	t.preMu.Unlock()
	t.hs.Wait()
}

func (t *tcpTransport) acceptLoop(ln net.Listener, done chan struct{}) {
	defer t.wg.Done()
	defer close(done)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				t.inbox.push(envelope{err: fmt.Errorf("dsmshm: accepting peers: %w", err)})
			}
			return // closed by stopAccepting or abort
		}
		t.admit(conn)
		t.wg.Add(1)
		t.hs.Add(1)
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
	if t.closing.Load() {
		conn.Close() // abort has closed the others already; its handshake fails at once
	}
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
	defer t.hs.Done()
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
		if errors.Is(err, net.ErrClosed) {
			// A pause or an abort closed it after its handshake: as if
			// paused (the dialer dials again), or nothing left to serve.
			err = errPaused
		}
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
		if t.closing.Load() {
			// abort has closed the connections it knows: this one would
			// keep a reader waiting, and abort waiting for it, for ever.
			t.mu.Unlock()
			conn.Close()
			return
		}
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
		in := &inboundConn{conn: conn, done: make(chan struct{})}
		t.conns = append(t.conns, conn)
		t.inbound = append(t.inbound, in)
		epoch := t.epoch.Load()
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
		go t.readLoop(p, in, pa.s, gen, epoch)
	}
}

var (
	errPaused = errors.New("dsmshm: paused for a migration")
	errGone   = errors.New("dsmshm: the dialer closed the connection")
)

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
	if !t.closing.Swap(true) {
		close(t.dying)
	}
	t.mu.Lock()
	if t.ln != nil {
		t.ln.Close()
	}
	t.mu.Unlock()
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
