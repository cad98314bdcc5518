package wire

import (
	"bufio"
	"crypto/cipher"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// MaxFrame is the largest payload of a frame.
const MaxFrame = 1 << 20

// Frame types reserved for this package.
const (
	TypeData  byte = 0xfd // a chunk of a stream (SendStream)
	TypeEnd   byte = 0xfe // end of a stream: uint64 BE total length
	TypeError byte = 0xff // an error message from the peer (WriteError)
)

const (
	hdrLen = 4 + 1 // length, type
	tagLen = 16    // GCM tag
)

// Conn is an authenticated, encrypted, framed connection, made by Client or
// Server. WriteMsg and the methods built on it may be called concurrently;
// ReadMsg and the methods built on it from one goroutine at a time.
type Conn struct {
	conn net.Conn

	// Read side, owned by the single reader.
	br    *bufio.Reader
	r     cipher.AEAD
	rseq  uint64
	rbuf  []byte // holds the last frame read; ReadMsg returns a slice of it
	rerr  error  // sticky: the read side is unusable after any error
	rhdr  [hdrLen]byte
	rnonc [12]byte

	mu    sync.Mutex // guards the write side
	w     cipher.AEAD
	wseq  uint64
	wbuf  []byte // header and ciphertext of the frame being written
	werr  error  // sticky, like rerr
	wnonc [12]byte

	written atomic.Int64 // payload bytes sent (Written)
}

// RemoteError is an error reported by the peer with WriteError. Its
// message is the peer's own words: the caller says whose (a user reads
// "target h2 refused the process: no room for it", not the transport).
type RemoteError struct{ Msg string }

func (e *RemoteError) Error() string { return e.Msg }

// WriteMsg sends one frame. payload may be reused as soon as it returns.
func (c *Conn) WriteMsg(typ byte, payload []byte) error {
	if len(payload) > MaxFrame {
		return fmt.Errorf("wire: writing frame: payload of %d bytes exceeds MaxFrame", len(payload))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	tag := tagLen
	if c.w == nil {
		tag = 0
	}
	n := hdrLen + len(payload) + tag
	if cap(c.wbuf) < n {
		c.wbuf = make([]byte, n)
	}
	b := c.wbuf[:n]
	binary.BigEndian.PutUint32(b, uint32(len(payload)+tag))
	b[4] = typ
	if c.w == nil {
		copy(b[hdrLen:], payload)
	} else {
		binary.BigEndian.PutUint64(c.wnonc[4:], c.wseq)
		c.wseq++
		// Encrypt straight from the caller's payload into the frame: the only
		// pass over the data besides the kernel's copy.
		c.w.Seal(b[hdrLen:hdrLen], c.wnonc[:], payload, b[:hdrLen])
	}
	if _, err := c.conn.Write(b); err != nil {
		// A partial frame may have gone out: the stream is broken.
		c.werr = fmt.Errorf("wire: writing frame: %w", err)
		return c.werr
	}
	c.written.Add(int64(len(payload)))
	return nil
}

// Written is how many payload bytes c has sent so far; it may be read at
// any time, from any goroutine (a migration's progress).
func (c *Conn) Written() int64 { return c.written.Load() }

// CloseWrite shuts the sending side down (the peer reads io.EOF after the
// last frame) where the connection can (TCP, unix sockets), and closes it
// where it cannot.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.conn.Close()
}

// ReadMsg reads one frame. payload is valid until the next ReadMsg. A clean
// close by the peer between frames is io.EOF; one inside a frame is
// io.ErrUnexpectedEOF.
func (c *Conn) ReadMsg() (typ byte, payload []byte, err error) {
	if c.rerr != nil {
		return 0, nil, c.rerr
	}
	typ, payload, err = c.readMsg()
	if err != nil {
		if err != io.EOF {
			err = fmt.Errorf("wire: reading frame: %w", err)
		}
		c.rerr = err
	}
	return typ, payload, err
}

func (c *Conn) readMsg() (byte, []byte, error) {
	if _, err := io.ReadFull(c.br, c.rhdr[:]); err != nil {
		return 0, nil, err // io.EOF only if nothing of the frame arrived
	}
	n := binary.BigEndian.Uint32(c.rhdr[:])
	tag := uint32(tagLen)
	if c.r == nil {
		tag = 0
	}
	if n < tag || n > MaxFrame+tag {
		return 0, nil, fmt.Errorf("invalid frame length %d", n)
	}
	if cap(c.rbuf) < int(n) {
		c.rbuf = make([]byte, n)
	}
	b := c.rbuf[:n]
	if _, err := io.ReadFull(c.br, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	if c.r == nil {
		return c.rhdr[4], b, nil
	}
	binary.BigEndian.PutUint64(c.rnonc[4:], c.rseq)
	c.rseq++
	p, err := c.r.Open(b[:0], c.rnonc[:], b, c.rhdr[:])
	if err != nil {
		return 0, nil, errors.New("frame failed authentication (modified, replayed, reordered or dropped)")
	}
	return c.rhdr[4], p, nil
}

// WriteJSON sends v, encoded as JSON, in a frame of type typ.
func (c *Conn) WriteJSON(typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("wire: encoding message %#x: %w", typ, err)
	}
	return c.WriteMsg(typ, b)
}

// ReadJSON reads a frame of type wantTyp and decodes it into v. A TypeError
// frame is returned as a *RemoteError; any other type is an error.
func (c *Conn) ReadJSON(wantTyp byte, v any) error {
	typ, p, err := c.ReadMsg()
	if err != nil {
		return err
	}
	switch typ {
	case wantTyp:
	case TypeError:
		return &RemoteError{Msg: string(p)}
	default:
		return fmt.Errorf("wire: got message type %#x, want %#x", typ, wantTyp)
	}
	if err := json.Unmarshal(p, v); err != nil {
		return fmt.Errorf("wire: decoding message %#x: %w", typ, err)
	}
	return nil
}

// WriteError sends err's message to the peer, where ReadJSON and RecvStream
// return it as a *RemoteError.
func (c *Conn) WriteError(err error) error {
	msg := err.Error()
	if len(msg) > MaxFrame {
		msg = msg[:MaxFrame]
	}
	return c.WriteMsg(TypeError, []byte(msg))
}

// SetDeadline sets the read and write deadlines of the underlying conn. An
// expired deadline makes the Conn unusable, like any other I/O error.
func (c *Conn) SetDeadline(t time.Time) error { return c.conn.SetDeadline(t) }

// SetReadDeadline is SetDeadline for reads only.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.conn.SetReadDeadline(t) }

// SetWriteDeadline is SetDeadline for writes only.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }

// Close closes the underlying conn.
func (c *Conn) Close() error { return c.conn.Close() }

// RemoteAddr returns the peer's network address.
func (c *Conn) RemoteAddr() net.Addr { return c.conn.RemoteAddr() }

// Plain frames c without authentication or encryption, for a transport that
// is already private and authenticated: the daemon's unix socket, whose
// peer credentials say who the client is.
func Plain(c net.Conn) *Conn {
	return &Conn{conn: c, br: bufio.NewReaderSize(c, 64<<10)}
}

// DecodeError turns the payload of a TypeError frame into a *RemoteError.
func (c *Conn) DecodeError(payload []byte) error { return &RemoteError{Msg: string(payload)} }
