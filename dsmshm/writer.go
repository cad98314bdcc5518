package dsmshm

import (
	"fmt"
	"net"
	"time"
)

// ctlMsg is a request from pause or resume to a peer's writer. The writer
// answers on done: nil once it has parked (a pause), or the result of
// reconnecting (a resume).
type ctlMsg struct {
	resume   bool
	announce string // resume: this rank's address, told to the peer
	done     chan error
}

// writeLoop sends p's queued messages in order, numbered, keeping each frame
// until p acknowledges it. When the connection breaks or p moves, it waits
// for p to be reachable, reconnects and resends what is unacknowledged; the
// receiver drops duplicates by sequence number. When this rank pauses for a
// migration (a ctlMsg on p.ctl), it tells p (mAway), closes the connection,
// says so, and waits for the resume message.
func (t *tcpTransport) writeLoop(p *peer, conn net.Conn, s *session) {
	defer t.wg.Done()
	defer t.writers.Done()
	defer close(p.exited)
	w := writer{t: t, p: p, s: s, gen: p.gen.Load()}
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
			return len(p.ctl) > 0 || p.gen.Load() != w.gen
		})
		if stopped {
			select {
			case m := <-p.ctl:
				if m.resume {
					m.done <- nil // connected already (its pause came too late)
					continue
				}
				// The last frame on this connection says why it ends.
				buf = appendFrame(buf[:0], 0, &message{Type: mAway})
				conn.SetWriteDeadline(time.Now().Add(handshakeTimeout))
				conn.Write(w.seal(buf))
				w.drop(conn, false)
				if conn = w.obey(m); conn == nil {
					return
				}
			default: // p moved
				w.drop(conn, false)
				conn = nil
			}
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
			w.drop(conn, true) // the frame is resent after reconnecting
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
	lostAt time.Time // when the connection broke (zero: closed on purpose)
}

// seal protects a frame for the current connection.
func (w *writer) seal(frame []byte) []byte {
	w.out = w.s.seal(w.out, frame)
	return w.out
}

// drop closes the writer's connection; broken says it failed (rather than
// being closed for a pause or because p moved).
func (w *writer) drop(conn net.Conn, broken bool) {
	w.t.untrack(conn)
	w.p.setConn(nil)
	if broken && w.p.gen.Load() == w.gen {
		w.lostAt = time.Now()
	}
}

// obey carries out m, a request from pause or resume, for a writer with no
// connection. A pause: it says it has parked and waits for the resume. A
// resume: it reconnects announcing this rank's address and reports how that
// went. It returns the new connection, or nil when the writer should exit.
func (w *writer) obey(m ctlMsg) net.Conn {
	t, p := w.t, w.p
	for !m.resume {
		m.done <- nil
		select {
		case <-t.dying:
			return nil
		case m = <-p.ctl:
		}
	}
	conn, err := w.connect(m.announce, nil)
	m.done <- err
	if err != nil {
		if !t.closing.Load() {
			t.inbox.push(envelope{err: fmt.Errorf("dsmshm: reconnecting to rank %d: %w", p.rank, err)})
		}
		return nil
	}
	return conn
}

// reconnect waits until p can be dialled (it announced a new address, or
// the connection broke: p has the dial timeout to say where it is), dials
// it and resends what p has not acknowledged. A pause meanwhile parks the
// writer (see obey). It returns nil when the writer should exit.
func (w *writer) reconnect() net.Conn {
	t, p := w.t, w.p
	for {
		if t.closing.Load() {
			return nil
		}
		if p.gen.Load() == w.gen {
			// The connection broke and p has not announced a new address.
			var timeout <-chan time.Time
			if _, away := p.away(); !away {
				left := t.dialWait - time.Since(w.lostAt)
				if left <= 0 {
					t.inbox.push(envelope{err: fmt.Errorf("dsmshm: sending to rank %d: connection lost and not re-established within %v",
						p.rank, t.dialWait)})
					return nil
				}
				timeout = time.After(left)
			}
			select {
			case <-p.wake: // p's address or away state changed
			case <-timeout:
			case m := <-p.ctl:
				return w.obey(m)
			case <-t.dying:
				return nil
			}
			continue
		}
		conn, err := w.connect("", func() bool { return len(p.ctl) > 0 })
		if err == nil {
			return conn
		}
		select {
		case m := <-p.ctl:
			return w.obey(m) // the dial gave up for it
		default:
		}
		if !t.closing.Load() {
			t.inbox.push(envelope{err: fmt.Errorf("dsmshm: reconnecting to rank %d: %w", p.rank, err)})
		}
		return nil
	}
}

// connect dials p (announcing announce, if not empty) and resends what p
// has not acknowledged; stop, if not nil, makes the dial give up.
func (w *writer) connect(announce string, stop func() bool) (net.Conn, error) {
	t, p := w.t, w.p
	gen := p.gen.Load()
	conn, s, err := t.dial(p, connControl, announce, time.Now().Add(t.dialWait), stop)
	if err != nil {
		return nil, err
	}
	w.s = s
	t.track(conn)
	for _, f := range p.pending() {
		if _, err := conn.Write(w.seal(f.b)); err != nil {
			t.untrack(conn)
			return nil, err
		}
	}
	w.gen, w.lostAt = gen, time.Time{}
	p.setConn(conn)
	return conn, nil
}
