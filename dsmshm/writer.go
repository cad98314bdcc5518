package dsmshm

import (
	"fmt"
	"net"
	"time"
)

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
