package wire

import (
	"bufio"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
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
	version  = 2
	nonceLen = 32
	pubLen   = 32 // an X25519 public key
	helloLen = 4 + 1 + 1 + nonceLen + pubLen
	proofLen = sha256.Size
	keyLen   = 32
	// MaxTokens is how many tokens a token file may hold: the one in use
	// and, during a rotation, the next (see LoadToken).
	MaxTokens = 2
	statusOK  = 0
	statusBad = 1
)

var magic = [4]byte{'D', 'S', 'M', 'W'}

// newEphemeral makes a handshake's X25519 key pair, used once and dropped
// with the handshake's stack (a variable so that a test can see the keys).
var newEphemeral = func() (*ecdh.PrivateKey, error) { return ecdh.X25519().GenerateKey(rand.Reader) }

// Client authenticates c's peer as a Server holding token, and proves that
// it holds token too. It replaces c's deadline with HandshakeTimeout and
// clears it on success. On failure the caller closes c. token is what
// LoadToken returns: one token, or two on separate lines during a rotation.
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

// splitTokens returns the tokens in token (one per line), at most
// MaxTokens of them.
func splitTokens(token []byte) ([][]byte, error) {
	toks := tokenLines(token)
	for _, t := range toks {
		if len(t) < MinTokenLen {
			return nil, fmt.Errorf("wire: token shorter than %d bytes", MinTokenLen)
		}
	}
	if len(toks) == 0 || len(toks) > MaxTokens {
		return nil, fmt.Errorf("wire: %d tokens, want 1 to %d", len(toks), MaxTokens)
	}
	return toks, nil
}

func handshake(ctx context.Context, c net.Conn, token []byte, client bool) (conn *Conn, retErr error) {
	toks, err := splitTokens(token)
	if err != nil {
		return nil, err
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
	eph, err := newEphemeral()
	if err != nil {
		return nil, fmt.Errorf("wire: handshake: %w", err)
	}
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
	rand.Read(mine[6 : 6+nonceLen])
	copy(mine[6+nonceLen:], eph.PublicKey().Bytes())

	// Message order: helloC, helloS, proofC, status|proofS. Strictly
	// alternating, so it works over synchronous transports like net.Pipe.
	if client {
		if err := write(c, mine[:]); err != nil {
			return nil, err
		}
	}
	// The first 6 bytes say who the peer is, before more is read: an older
	// daemon's shorter hello gets a clear error, not a timeout.
	if err := read(br, theirs[:6]); err != nil {
		return nil, err
	}
	if !bytes.Equal(theirs[:4], magic[:]) || theirs[4] != version {
		if bytes.Equal(theirs[:4], magic[:]) && theirs[4] < version {
			return nil, fmt.Errorf("wire: handshake: the peer speaks dsmigrate wire v%d, this side v%d: upgrade its migrated "+
				"(v%d adds forward secrecy)", theirs[4], version, version)
		}
		return nil, fmt.Errorf("wire: handshake: peer is not a dsmigrate wire v%d endpoint (hello %x)", version, theirs[:6])
	}
	if theirs[5] != peerRole {
		return nil, fmt.Errorf("%w: peer hello has role %q, want %q (reflected handshake?)", ErrAuth, theirs[5], peerRole)
	}
	if err := read(br, theirs[6:]); err != nil {
		return nil, err
	}
	peerPub, err := ecdh.X25519().NewPublicKey(theirs[6+nonceLen:])
	if err != nil {
		return nil, fmt.Errorf("%w: the peer's key share: %w", ErrAuth, err)
	}
	// An all-zero result (a low-order point) is an error here too.
	shared, err := eph.ECDH(peerPub)
	if err != nil {
		return nil, fmt.Errorf("%w: the peer's key share: %w", ErrAuth, err)
	}
	if !client {
		if err := write(c, mine[:]); err != nil {
			return nil, err
		}
	}

	salt := append(helloC[:], helloS[:]...)
	proof := func(tok []byte, label string) []byte {
		kAuth, err := hkdf.Key(sha256.New, tok, salt, "dsmigrate/wire v2 auth", keyLen)
		if err != nil {
			panic(err) // unreachable: 32 bytes of HKDF-SHA256
		}
		m := hmac.New(sha256.New, kAuth)
		m.Write([]byte(label))
		m.Write(salt)
		return m.Sum(nil)
	}

	// proofC = count (1 byte) | a proof per token the client holds; the
	// server takes the first it can check with one of its own tokens.
	var tok []byte
	var status [1 + proofLen]byte
	if client {
		pc := []byte{byte(len(toks))}
		for _, t := range toks {
			pc = append(pc, proof(t, "client")...)
		}
		if err := write(c, pc); err != nil {
			return nil, err
		}
		if err := read(br, status[:]); err != nil {
			return nil, err
		}
		if status[0] != statusOK {
			return nil, fmt.Errorf("%w: server rejected our proof", ErrAuth)
		}
		for _, t := range toks {
			if hmac.Equal(status[1:], proof(t, "server")) {
				tok = t
				break
			}
		}
		if tok == nil {
			return nil, fmt.Errorf("%w: server's proof is wrong", ErrAuth)
		}
	} else {
		var n [1]byte
		if err := read(br, n[:]); err != nil {
			return nil, err
		}
		if n[0] < 1 || n[0] > MaxTokens {
			return nil, fmt.Errorf("%w: client sent %d proofs", ErrAuth, n[0])
		}
		pcs := make([]byte, int(n[0])*proofLen)
		if err := read(br, pcs); err != nil {
			return nil, err
		}
	match:
		for i := 0; i < len(pcs); i += proofLen {
			for _, t := range toks {
				if hmac.Equal(pcs[i:i+proofLen], proof(t, "client")) {
					tok = t
					break match
				}
			}
		}
		if tok == nil {
			// Tell the client, so that it reports ErrAuth rather than EOF.
			// Nothing in this reply depends on the token.
			status[0] = statusBad
			write(c, status[:])
			return nil, fmt.Errorf("%w: client's proof is wrong", ErrAuth)
		}
		status[0] = statusOK
		copy(status[1:], proof(tok, "server"))
		if err := write(c, status[:]); err != nil {
			return nil, err
		}
	}

	// The traffic keys need the ephemeral X25519 secret as well as the
	// token: traffic recorded now stays unreadable to whoever learns the
	// token later (forward secrecy). The proofs cover both key shares, so a
	// man in the middle without the token cannot put in its own.
	keys, err := hkdf.Key(sha256.New, append(shared, tok...), salt, "dsmigrate/wire v2 keys", 2*keyLen)
	if err != nil {
		return nil, fmt.Errorf("wire: handshake: %w", err)
	}
	kC2S, kS2C := keys[:keyLen], keys[keyLen:]
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
