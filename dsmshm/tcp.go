package dsmshm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
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
)

// tcpTransport connects the ranks of a job. Every rank dials every other
// rank twice: a control connection carrying this rank's frames to the peer
// (inbound control connections carry the peer's frames to us), and a page
// channel over which this rank fetches pages the peer is home for. Page
// channels are handed to C as blocking file descriptors: the fault handler
// uses them directly (see doc.go).
type tcpTransport struct {
	rank, size int
	job        string
	ln         net.Listener
	inbox      *queue[envelope]
	peers      []*peer
	ctr        *netCounters
	setChan    func(rank, fd int)
	serveFD    func(fd int) error
	dialWait   time.Duration

	wg      sync.WaitGroup // accept loop, readers, writers
	writers sync.WaitGroup // one per peer: done when its writer sent everything
	byes    sync.WaitGroup // one per peer: done when its bye arrived
	closing atomic.Bool
	mu      sync.Mutex // guards conns
	conns   []net.Conn
}

// peer is this rank's view of another rank: where it lives, the outgoing
// queue, and sequence numbers in both directions.
type peer struct {
	rank int
	out  *queue[*message]

	mu   sync.Mutex // guards addr, gen, conn
	addr string
	gen  int      // bumped by UpdatePeer; a writer seeing a new gen redials
	conn net.Conn // current outgoing control connection

	sendSeq uint64        // owned by the writer goroutine
	recvSeq atomic.Uint64 // highest seq delivered from this peer
	inGen   atomic.Int64  // bumped for every control connection accepted from this peer
	byeOnce sync.Once
}

func (p *peer) setConn(c net.Conn) {
	p.mu.Lock()
	p.conn = c
	p.mu.Unlock()
}

func (p *peer) target() (string, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addr, p.gen
}

type tcpConfig struct {
	rank, size int
	job        string
	addrs      []string
	dialWait   time.Duration
	ctr        *netCounters
	setChan    func(rank, fd int)
	serveFD    func(fd int) error
}

func listenConfig() *net.ListenConfig {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false) // CRIU refuses MPTCP sockets
	return &lc
}

func dialer() *net.Dialer {
	d := &net.Dialer{Timeout: 5 * time.Second}
	d.SetMultipathTCP(false)
	return d
}

// newTCPTransport listens on the wildcard address at this rank's port and
// connects to every peer, retrying for cfg.dialWait while peers start.
func newTCPTransport(cfg tcpConfig) (_ *tcpTransport, retErr error) {
	_, port, err := net.SplitHostPort(cfg.addrs[cfg.rank])
	if err != nil {
		return nil, fmt.Errorf("dsmshm: address of rank %d: %w", cfg.rank, err)
	}
	ln, err := listenConfig().Listen(context.Background(), "tcp4", net.JoinHostPort("0.0.0.0", port))
	if err != nil {
		return nil, fmt.Errorf("dsmshm: listening for peers: %w", err)
	}
	t := &tcpTransport{
		rank: cfg.rank, size: cfg.size, job: cfg.job, ln: ln, inbox: newQueue[envelope](),
		ctr: cfg.ctr, setChan: cfg.setChan, serveFD: cfg.serveFD, dialWait: cfg.dialWait,
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
	t.wg.Add(1)
	go t.acceptLoop()

	errs := make(chan error, 2*cfg.size)
	for r := range cfg.size {
		if r == cfg.rank {
			continue
		}
		go func() {
			conn, err := t.dial(t.peers[r], connControl, time.Now().Add(t.dialWait))
			if err == nil {
				t.wg.Add(1)
				t.writers.Add(1)
				go t.writeLoop(t.peers[r], conn)
			}
			errs <- err
		}()
		go func() { errs <- t.dialPage(t.peers[r], time.Now().Add(t.dialWait)) }()
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

// dial connects to p and says hello, retrying until deadline.
func (t *tcpTransport) dial(p *peer, kind uint8, deadline time.Time) (net.Conn, error) {
	for {
		addr, _ := p.target()
		conn, err := dialer().Dial("tcp4", addr)
		if err == nil {
			hello := appendFrame(nil, 0, &message{Type: mHello, Rank: int32(t.rank), Kind: kind, Job: t.job})
			conn.SetWriteDeadline(time.Now().Add(handshakeTimeout))
			if _, err = conn.Write(hello); err == nil {
				conn.SetWriteDeadline(time.Time{})
				return conn, nil
			}
			conn.Close()
		}
		if time.Now().After(deadline) || t.closing.Load() {
			return nil, fmt.Errorf("dsmshm: connecting to rank %d at %s: %w", p.rank, addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dialPage opens the page channel to p and hands it to C.
func (t *tcpTransport) dialPage(p *peer, deadline time.Time) error {
	conn, err := t.dial(p, connPage, deadline)
	if err != nil {
		return err
	}
	fd, err := detachFD(conn, pageIOTimeout)
	if err != nil {
		return fmt.Errorf("dsmshm: page channel to rank %d: %w", p.rank, err)
	}
	t.setChan(p.rank, fd)
	return nil
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
		t.wg.Add(1)
		go t.handshake(conn)
	}
}

// handshake reads the hello of an accepted connection and starts serving it.
// A connection that does not introduce itself properly is dropped.
func (t *tcpTransport) handshake(conn net.Conn) {
	defer t.wg.Done()
	conn.SetReadDeadline(time.Now().Add(handshakeTimeout))
	buf, err := readFrame(conn, nil, nil)
	var m *message
	if err == nil {
		_, m, err = decodeFrame(buf)
	}
	if err == nil && (m.Type != mHello || m.Job != t.job || m.Rank < 0 || int(m.Rank) >= t.size || int(m.Rank) == t.rank) {
		err = fmt.Errorf("unexpected hello %+v", m)
	}
	if err != nil {
		conn.Close()
		return
	}
	conn.SetReadDeadline(time.Time{})
	switch m.Kind {
	case connPage:
		fd, err := detachFD(conn, pageServeTimeout)
		if err == nil {
			err = t.serveFD(fd)
			if err != nil {
				unix.Close(fd)
			}
		}
		if err != nil {
			t.inbox.push(envelope{err: fmt.Errorf("dsmshm: page channel from rank %d: %w", m.Rank, err)})
		}
	case connControl:
		t.track(conn)
		t.wg.Add(1)
		p := t.peers[m.Rank]
		go t.readLoop(p, conn, p.inGen.Add(1))
	default:
		conn.Close()
	}
}

// readLoop delivers frames from p's control connection to the inbox. Once a
// frame's length has arrived its body must follow within frameBodyTimeout.
// A connection that ends without a bye means the peer died, unless it
// reconnects within the dial timeout (it moved: see UpdatePeer).
func (t *tcpTransport) readLoop(p *peer, conn net.Conn, gen int64) {
	defer t.wg.Done()
	defer t.untrack(conn)
	var buf []byte
	for {
		frame, err := readFrame(conn, buf, func() { conn.SetReadDeadline(time.Now().Add(frameBodyTimeout)) })
		if err != nil {
			switch {
			case t.closing.Load() || p.inGen.Load() != gen:
			case errors.Is(err, io.EOF):
				time.AfterFunc(t.dialWait, func() {
					if p.inGen.Load() == gen && !t.closing.Load() {
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
		buf = frame
		seq, m, err := decodeFrame(frame)
		if err != nil {
			t.inbox.push(envelope{err: fmt.Errorf("dsmshm: from rank %d: %w", p.rank, err)})
			conn.Close()
			return
		}
		if seq <= p.recvSeq.Load() {
			continue // already delivered over an earlier connection
		}
		p.recvSeq.Store(seq)
		if m.Type == mBye {
			p.byeOnce.Do(t.byes.Done)
			return // the peer sends nothing more; its EOF is expected
		}
		t.inbox.push(envelope{from: p.rank, m: m})
	}
}

// writeLoop sends p's queued messages in order. If the peer has moved
// (UpdatePeer), it redials the new address and resends the message that
// failed; the receiver drops duplicates by sequence number.
func (t *tcpTransport) writeLoop(p *peer, conn net.Conn) {
	defer t.wg.Done()
	defer t.writers.Done()
	_, gen := p.target()
	t.track(conn)
	p.setConn(conn)
	// Closing after the last write still delivers what was written: the
	// peer never sends on this connection, so close sends FIN, not RST.
	defer func() { t.untrack(conn) }()
	var buf []byte
	for {
		m, ok := p.out.pop()
		if !ok {
			return
		}
		p.sendSeq++
		buf = appendFrame(buf[:0], p.sendSeq, m)
		for {
			_, err := conn.Write(buf)
			if err == nil {
				t.ctr.count(len(buf))
				break
			}
			if _, g := p.target(); g != gen && !t.closing.Load() {
				t.untrack(conn)
				var derr error
				if conn, derr = t.dial(p, connControl, time.Now().Add(t.dialWait)); derr == nil {
					_, gen = p.target()
					t.track(conn)
					p.setConn(conn)
					continue
				}
				err = derr
			}
			if !t.closing.Load() {
				t.inbox.push(envelope{err: fmt.Errorf("dsmshm: sending to rank %d: %w", p.rank, err)})
			}
			return
		}
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
// re-established by its writer and the page channel is redialled now. This is
// the seam for rank migration; it does not yet retransmit frames that were
// written to the old connection but never read (see doc.go, "Unfinished").
func (t *tcpTransport) UpdatePeer(rank int, addr string) error {
	if rank < 0 || rank >= t.size || rank == t.rank {
		return fmt.Errorf("dsmshm: UpdatePeer: bad rank %d", rank)
	}
	p := t.peers[rank]
	p.mu.Lock()
	p.addr = addr
	p.gen++
	conn := p.conn
	p.mu.Unlock()
	if conn != nil {
		conn.Close() // the writer notices and redials
	}
	return t.dialPage(p, time.Now().Add(t.dialWait))
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
	t.wg.Wait()
	t.inbox.close()
}
