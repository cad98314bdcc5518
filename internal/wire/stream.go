package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// streamChunk is the payload size of the TypeData frames SendStream writes.
const streamChunk = 256 << 10

// chunks are SendStream's buffers, reused: a migration sends some forty
// image files, and a fresh 256 KiB buffer for each is memory the kernel must
// fault in again (slow on a VM that returns freed memory to its host).
var chunks = sync.Pool{New: func() any { return new([streamChunk]byte) }}

// SendStream sends everything r yields as TypeData frames followed by a
// TypeEnd frame carrying the total. If reading r fails, the peer gets the
// error as a TypeError frame instead of TypeEnd. Nothing else may be written
// to the Conn until SendStream returns: RecvStream rejects foreign frames.
func (c *Conn) SendStream(r io.Reader) (n int64, err error) {
	chunk := chunks.Get().(*[streamChunk]byte)
	defer chunks.Put(chunk)
	buf := chunk[:]
	for {
		k, rerr := io.ReadFull(r, buf)
		if k > 0 {
			if err := c.WriteMsg(TypeData, buf[:k]); err != nil {
				return n, err
			}
			n += int64(k)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			rerr = fmt.Errorf("wire: reading stream source after %d bytes: %w", n, rerr)
			return n, errors.Join(rerr, c.WriteError(rerr))
		}
	}
	var end [8]byte
	binary.BigEndian.PutUint64(end[:], uint64(n))
	return n, c.WriteMsg(TypeEnd, end[:])
}

// RecvStream copies a stream sent by SendStream to w and returns its length.
// It fails if more than max bytes arrive, if the end frame's total disagrees
// with what arrived, or if any other frame type arrives (a TypeError as a
// *RemoteError). After an error the rest of the stream may still be in flight:
// close the Conn.
func (c *Conn) RecvStream(w io.Writer, max int64) (n int64, err error) {
	for {
		typ, p, err := c.ReadMsg()
		if err == io.EOF {
			err = fmt.Errorf("wire: stream ended without end frame: %w", io.ErrUnexpectedEOF)
		}
		if err != nil {
			return n, err
		}
		switch typ {
		case TypeData:
			if int64(len(p)) > max-n {
				return n, fmt.Errorf("wire: stream exceeds limit of %d bytes", max)
			}
			k, err := w.Write(p)
			n += int64(k)
			if err != nil {
				return n, fmt.Errorf("wire: writing stream: %w", err)
			}
		case TypeEnd:
			if len(p) != 8 {
				return n, fmt.Errorf("wire: malformed end frame of %d bytes", len(p))
			}
			if total := binary.BigEndian.Uint64(p); total != uint64(n) {
				return n, fmt.Errorf("wire: stream length mismatch: received %d bytes, sender sent %d", n, total)
			}
			return n, nil
		case TypeError:
			return n, &RemoteError{Msg: string(p)}
		default:
			return n, fmt.Errorf("wire: unexpected message type %#x in stream", typ)
		}
	}
}
