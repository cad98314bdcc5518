package wire

import (
	"bufio"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// ErrAuth is wrapped by handshake errors when the peer did not prove it holds
// the token.
var ErrAuth = errors.New("wire: peer failed authentication (token mismatch?)")

// HandshakeTimeout bounds Client and Server, and the *Context variants when
// the context has no deadline.
const HandshakeTimeout = 10 * time.Second

const (
	version   = 1
	nonceLen  = 32
	helloLen  = 4 + 1 + 1 + nonceLen
	proofLen  = sha256.Size
	keyLen    = 32
	statusOK  = 0
	statusBad = 1
)

var magic = [4]byte{'D', 'S', 'M', 'W'}

// Client authenticates c's peer as a Server holding token, and proves that
// it holds token too. It replaces c's deadline with HandshakeTimeout and
// clears it on success. On failure the caller closes c.
func Client(c net.Conn, token []byte) (*Conn, error) {
	return ClientContext(context.Background(), c, token)
}

// Server is the accepting side of Client.
func Server(c net.Conn, token []byte) (*Conn, error) {
	return ServerContext(context.Background(), c, token)
}

// ClientContext is Client, bounded by ctx's deadline (HandshakeTimeout if it
// has none) instead, and abandoned if ctx is cancelled. net.Conn cannot
// report a deadline the caller set, so pass it here.
func ClientContext(ctx context.Context, c net.Conn, token []byte) (*Conn, error) {
	return handshake(ctx, c, token, true)
}

// ServerContext is Server, bounded like ClientContext.
func ServerContext(ctx context.Context, c net.Conn, token []byte) (*Conn, error) {
	return handshake(ctx, c, token, false)
}

func handshake(ctx context.Context, c net.Conn, token []byte, client bool) (conn *Conn, retErr error) {
	if len(token) < MinTokenLen {
		return nil, fmt.Errorf("wire: token shorter than %d bytes", MinTokenLen)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(HandshakeTimeout)
	}
	if err := c.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("wire: handshake: %w", err)
	}
	// Cancelling ctx interrupts blocked I/O by moving the deadline to the past.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		switch {
		case !stop() && retErr == nil:
			// Cancelled just as we finished: c's deadline is in the past.
			conn, retErr = nil, fmt.Errorf("wire: handshake: %w", context.Cause(ctx))
		case retErr != nil && ctx.Err() != nil:
			retErr = fmt.Errorf("%w (%w)", retErr, context.Cause(ctx))
		}
	}()

	br := bufio.NewReaderSize(c, 64<<10)
	var helloC, helloS [helloLen]byte
	mine, theirs := &helloC, &helloS
	if !client {
		mine, theirs = theirs, mine
	}
	role, peerRole := byte('S'), byte('C')
	if client {
		role, peerRole = peerRole, role
	}
	copy(mine[:], magic[:])
	mine[4], mine[5] = version, role
	rand.Read(mine[6:])

	// Message order: helloC, helloS, proofC, status|proofS. Strictly
	// alternating, so it works over synchronous transports like net.Pipe.
	if client {
		if err := write(c, mine[:]); err != nil {
			return nil, err
		}
	}
	if err := read(br, theirs[:]); err != nil {
		return nil, err
	}
	if !bytes.Equal(theirs[:4], magic[:]) || theirs[4] != version {
		return nil, fmt.Errorf("wire: handshake: peer is not a dsmigrate wire v%d endpoint (hello %x)", version, theirs[:5])
	}
	if theirs[5] != peerRole {
		return nil, fmt.Errorf("%w: peer hello has role %q, want %q (reflected handshake?)", ErrAuth, theirs[5], peerRole)
	}
	if !client {
		if err := write(c, mine[:]); err != nil {
			return nil, err
		}
	}

	salt := append(helloC[:], helloS[:]...)
	keys, err := hkdf.Key(sha256.New, token, salt, "dsmigrate/wire v1 keys", 3*keyLen)
	if err != nil {
		return nil, fmt.Errorf("wire: handshake: %w", err)
	}
	kAuth, kC2S, kS2C := keys[:keyLen], keys[keyLen:2*keyLen], keys[2*keyLen:]
	proof := func(label string) []byte {
		m := hmac.New(sha256.New, kAuth)
		m.Write([]byte(label))
		m.Write(salt)
		return m.Sum(nil)
	}

	var status [1 + proofLen]byte
	if client {
		if err := write(c, proof("client")); err != nil {
			return nil, err
		}
		if err := read(br, status[:]); err != nil {
			return nil, err
		}
		if status[0] != statusOK {
			return nil, fmt.Errorf("%w: server rejected our proof", ErrAuth)
		}
		if !hmac.Equal(status[1:], proof("server")) {
			return nil, fmt.Errorf("%w: server's proof is wrong", ErrAuth)
		}
	} else {
		var pc [proofLen]byte
		if err := read(br, pc[:]); err != nil {
			return nil, err
		}
		if !hmac.Equal(pc[:], proof("client")) {
			// Tell the client, so that it reports ErrAuth rather than EOF.
			// Nothing in this reply depends on the token.
			status[0] = statusBad
			write(c, status[:])
			return nil, fmt.Errorf("%w: client's proof is wrong", ErrAuth)
		}
		status[0] = statusOK
		copy(status[1:], proof("server"))
		if err := write(c, status[:]); err != nil {
			return nil, err
		}
	}

	wk, rk := kC2S, kS2C
	if !client {
		wk, rk = rk, wk
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("wire: handshake: %w", err)
	}
	return &Conn{conn: c, br: br, w: newAEAD(wk), r: newAEAD(rk)}, nil
}

func newAEAD(key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // unreachable: the key is always 32 bytes
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic(err) // unreachable: standard nonce and tag sizes
	}
	return g
}

func write(c net.Conn, p []byte) error {
	if _, err := c.Write(p); err != nil {
		return fmt.Errorf("wire: handshake: %w", err)
	}
	return nil
}

// read fills p, reporting a peer that hangs up part-way, or before sending
// anything, as io.ErrUnexpectedEOF.
func read(r io.Reader, p []byte) error {
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("wire: handshake: %w", err)
	}
	return nil
}
