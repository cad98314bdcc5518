package dsmshm

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

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

	// The writer's: pause and resume requests (see ctlMsg), news that
	// addr or awayAt changed (poke), and closed when the writer exits.
	ctl    chan ctlMsg
	wake   chan struct{}
	exited chan struct{}

	redialing atomic.Bool // a redialPage for this peer runs
}

func newPeer(rank int, addr string) *peer {
	return &peer{rank: rank, addr: addr, out: newQueue[*message](),
		ctl: make(chan ctlMsg, 1), wake: make(chan struct{}, 1), exited: make(chan struct{})}
}

// poke tells a writer waiting for p's address or away state to look again.
func (p *peer) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
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

// readLoop delivers frames from p's control connection to the inbox. Once a
// frame's length has arrived its body must follow within frameBodyTimeout.
// A connection that ends without a bye means the peer died, unless it
// announced a migration or reconnects within the dial timeout.
func (t *tcpTransport) readLoop(p *peer, in *inboundConn, s *session, gen, epoch int64) {
	defer t.wg.Done()
	defer close(in.done)
	conn := in.conn
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
	p.poke() // a writer waiting for p's news waits without a timeout now
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
	p.poke()
}

// peerBack records that p lives at addr now (it announced itself after a
// migration, or UpdatePeer said so): its writer redials and resends what p
// has not acknowledged, and the page channel to it is redialled.
func (t *tcpTransport) peerBack(p *peer, addr string) {
	t.repoint(p, addr)
	if t.paused.Load() {
		return // our own resume dials page channels
	}
	// Given up quietly if this rank pauses or p migrates again before the
	// channel is up (p refuses page channels while paused): each
	// resumption dials anew.
	stop := func() bool {
		_, away := p.away()
		return away || t.paused.Load() || t.closing.Load()
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		if err := t.dialPage(p, time.Now().Add(t.dialWait), stop); err != nil && !stop() {
			t.inbox.push(envelope{err: err})
		}
	}()
}
