package dsmshm

import (
	"bytes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// Rank-to-rank security: every connection between two ranks of a job opens
// with a mutual challenge-response keyed by the job's secret (Config.Secret),
// modelled on the daemons' (internal/wire), over fixed-size messages, so that
// nothing is allocated or parsed from a length an unauthenticated peer chose:
//
//	C -> S  helloC = "DSMR" | version | 'C' | kind | flags | from u32 | to u32 | nonceC (32 random bytes) | X25519 share (32)
//	S -> C  helloS = "DSMR" | version | 'S' | nonceS (32 random bytes) | X25519 share (32)
//	C -> S  announce (64 bytes, NUL-padded) | proofC = HMAC-SHA256(kAuth, "client" | helloC | helloS | announce)
//	S -> C  status u8 | proofS = HMAC-SHA256(kAuth, "server" | helloC | helloS | announce)
//
// kAuth is HKDF-SHA256(secret, salt = helloC | helloS, info = "dsmshm v2
// auth " + job); the two traffic keys are HKDF-SHA256(secret | shared, the
// same salt, "dsmshm v2 keys " + job), where shared is the X25519 result of
// the two one-time shares: traffic recorded now stays unreadable to whoever
// learns the job's secret later (forward secrecy), and the proofs cover the
// shares, so no one without the secret can put in their own. The server
// answers only a helloC that
// names it (to), a peer rank (from), a known kind and the job's mode (flags:
// encryption on or off), and emits nothing that depends on the secret before
// the client has proved it knows it. Fresh nonces at both ends make a
// recorded handshake useless when replayed; the role bytes and labels make a
// reflected proof fail. announce (the address a rank that migrated lives at
// now, or empty) is covered by the proofs, so an outsider cannot repoint a
// rank. status is 0 when the server takes the connection, 1 when it cannot
// now (a page channel while the server pauses for a migration): the dialer
// retries.
//
// After the handshake every control frame is sealed with ChaCha20-Poly1305
// under the key of its direction and a nonce counting the frames in that
// direction (see seal): a frame that is forged, modified, replayed, reordered
// or dropped fails to open, and the connection is closed. By default only
// the tag is added (the frame travels in clear and is authenticated whole);
// with Config.Encrypt the frame body is encrypted too. Page channels use the
// same keys and construction in C (aead.c): a request is 8 bytes and a tag,
// a reply its 16-byte header in clear, the page (encrypted or not) and a tag.

const (
	secMagic     = "DSMR"
	secVersion   = 2
	secNonceLen  = 32
	secShareLen  = 32 // an X25519 public key
	helloCLen    = 4 + 1 + 1 + 1 + 1 + 4 + 4 + secNonceLen + secShareLen
	helloSLen    = 4 + 1 + 1 + secNonceLen + secShareLen
	announceLen  = 64
	secProofLen  = sha256.Size
	secKeyLen    = chacha20poly1305.KeySize
	secTagLen    = chacha20poly1305.Overhead
	flagEncrypt  = 1
	statusTaken  = 0
	statusNotNow = 1
	// SecretLen is the length of a job's secret.
	SecretLen = 32
	// maxPreAuth bounds the connections a rank holds that have not
	// authenticated yet, and maxPreAuthPerIP those from one address (see
	// admit).
	maxPreAuth      = 64
	maxPreAuthPerIP = 16
)

// errAuth is a connection that failed authentication: dropped, never fatal.
var errAuth = errors.New("dsmshm: authentication failed")

// hello is what a verified helloC and announce say.
type hello struct {
	kind     uint8
	from, to int
	announce string
}

// session is one authenticated connection's keys and frame counters. tx is
// used by one writer at a time and rx by one reader.
type session struct {
	enc          bool
	txKey, rxKey [secKeyLen]byte
	tx, rx       cipher.AEAD
	txCtr, rxCtr uint64
	rbuf         []byte // readSealed's buffer
}

type secParams struct {
	secret []byte
	job    string
	enc    bool
}

func (sp secParams) flags() byte {
	if sp.enc {
		return flagEncrypt
	}
	return 0
}

// keys derives kAuth, from the secret, and the client-to-server and
// server-to-client keys, from the secret and the key exchange: mine is this
// side's one-time X25519 key, theirs the peer's share from its hello.
func (sp secParams) keys(helloC, helloS []byte, mine *ecdh.PrivateKey, theirs []byte) (kAuth, c2s, s2c []byte, err error) {
	pub, err := ecdh.X25519().NewPublicKey(theirs)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: the peer's key share: %w", errAuth, err)
	}
	shared, err := mine.ECDH(pub) // an all-zero result (a low-order share) is an error
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: the peer's key share: %w", errAuth, err)
	}
	salt := append(append([]byte(nil), helloC...), helloS...)
	if kAuth, err = hkdf.Key(sha256.New, sp.secret, salt, "dsmshm v2 auth "+sp.job, secKeyLen); err != nil {
		return nil, nil, nil, err
	}
	k, err := hkdf.Key(sha256.New, append(append([]byte(nil), sp.secret...), shared...), salt, "dsmshm v2 keys "+sp.job, 2*secKeyLen)
	if err != nil {
		return nil, nil, nil, err
	}
	return kAuth, k[:secKeyLen], k[secKeyLen:], nil
}

// fillHelloTail ends a hello (either side's) with a fresh nonce and the
// share of a new one-time X25519 key, which it returns.
func fillHelloTail(h []byte) (*ecdh.PrivateKey, error) {
	tail := h[len(h)-secNonceLen-secShareLen:]
	rand.Read(tail[:secNonceLen])
	eph, err := newShare()
	if err != nil {
		return nil, err
	}
	copy(tail[secNonceLen:], eph.PublicKey().Bytes())
	return eph, nil
}

// share is the X25519 share at the end of a hello.
func share(h []byte) []byte { return h[len(h)-secShareLen:] }

// newShare makes a handshake's one-time X25519 key (a variable so that a
// test can see the keys).
var newShare = func() (*ecdh.PrivateKey, error) { return ecdh.X25519().GenerateKey(rand.Reader) }

func proof(kAuth []byte, label string, helloC, helloS, announce []byte) []byte {
	m := hmac.New(sha256.New, kAuth)
	m.Write([]byte(label))
	m.Write(helloC)
	m.Write(helloS)
	m.Write(announce)
	return m.Sum(nil)
}

func newSession(enc bool, txKey, rxKey []byte) *session {
	s := &session{enc: enc}
	copy(s.txKey[:], txKey)
	copy(s.rxKey[:], rxKey)
	var err error
	if s.tx, err = chacha20poly1305.New(txKey); err == nil {
		s.rx, err = chacha20poly1305.New(rxKey)
	}
	if err != nil {
		panic(err) // unreachable: the keys have the right length
	}
	return s
}

func encodeAnnounce(addr string) ([announceLen]byte, error) {
	var a [announceLen]byte
	if len(addr) > announceLen || bytes.IndexByte([]byte(addr), 0) >= 0 {
		return a, fmt.Errorf("dsmshm: address %q does not fit a handshake", addr)
	}
	copy(a[:], addr)
	return a, nil
}

// clientHandshake authenticates conn to rank to as rank from, announcing
// announce. It returns errNotNow when the server is paused.
func clientHandshake(conn net.Conn, sp secParams, kind uint8, from, to int, announce string, deadline time.Time) (*session, error) {
	ann, err := encodeAnnounce(announce)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(deadline)
	defer conn.SetDeadline(time.Time{})
	var hc [helloCLen]byte
	copy(hc[:], secMagic)
	hc[4], hc[5], hc[6], hc[7] = secVersion, 'C', kind, sp.flags()
	binary.LittleEndian.PutUint32(hc[8:], uint32(from))
	binary.LittleEndian.PutUint32(hc[12:], uint32(to))
	eph, err := fillHelloTail(hc[:])
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(hc[:]); err != nil {
		return nil, err
	}
	var hs [helloSLen]byte
	if _, err := io.ReadFull(conn, hs[:]); err != nil {
		return nil, fmt.Errorf("%w: no answer to our hello (%w): a different job, or another mode (--encrypt)?", errAuth, err)
	}
	if string(hs[:4]) != secMagic || hs[4] != secVersion || hs[5] != 'S' {
		return nil, fmt.Errorf("%w: the peer's hello %x is not a dsmshm v%d server's", errAuth, hs[:6], secVersion)
	}
	kAuth, c2s, s2c, err := sp.keys(hc[:], hs[:], eph, share(hs[:]))
	if err != nil {
		return nil, err
	}
	msg := append(ann[:], proof(kAuth, "client", hc[:], hs[:], ann[:])...)
	if _, err := conn.Write(msg); err != nil {
		return nil, err
	}
	var st [1 + secProofLen]byte
	if _, err := io.ReadFull(conn, st[:]); err != nil {
		return nil, fmt.Errorf("%w: the peer did not accept our proof (%w): a different job secret?", errAuth, err)
	}
	if !hmac.Equal(st[1:], proof(kAuth, "server", hc[:], hs[:], ann[:])) {
		return nil, fmt.Errorf("%w: the peer's proof is wrong", errAuth)
	}
	switch st[0] {
	case statusTaken:
	case statusNotNow:
		return nil, errNotNow
	default:
		return nil, fmt.Errorf("%w: unknown status %d", errAuth, st[0])
	}
	return newSession(sp.enc, c2s, s2c), nil
}

// errNotNow: the server cannot take the connection now (paused); dial again.
var errNotNow = errors.New("dsmshm: the peer is paused for a migration")

// serverHandshake reads and checks a client's hello and proof on conn for
// rank self of a job of size ranks. It does not answer the proof: the caller
// decides the status and calls accept, so that taking a page channel and
// saying so happen under the caller's lock.
func serverHandshake(conn net.Conn, sp secParams, self, size int, deadline time.Time) (*pendingAccept, error) {
	conn.SetDeadline(deadline)
	var hc [helloCLen]byte
	if _, err := io.ReadFull(conn, hc[:]); err != nil {
		return nil, err
	}
	h := hello{kind: hc[6], from: int(binary.LittleEndian.Uint32(hc[8:])), to: int(binary.LittleEndian.Uint32(hc[12:]))}
	if string(hc[:4]) != secMagic || hc[4] != secVersion || hc[5] != 'C' || hc[7] != sp.flags() ||
		(h.kind != connControl && h.kind != connPage) || h.to != self || h.from < 0 || h.from >= size || h.from == self {
		return nil, fmt.Errorf("%w: unexpected hello %x", errAuth, hc[:16])
	}
	var hs [helloSLen]byte
	copy(hs[:], secMagic)
	hs[4], hs[5] = secVersion, 'S'
	eph, err := fillHelloTail(hs[:])
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(hs[:]); err != nil {
		return nil, err
	}
	var pc [announceLen + secProofLen]byte
	if _, err := io.ReadFull(conn, pc[:]); err != nil {
		return nil, err
	}
	kAuth, c2s, s2c, err := sp.keys(hc[:], hs[:], eph, share(hc[:]))
	if err != nil {
		return nil, err
	}
	ann := pc[:announceLen]
	if !hmac.Equal(pc[announceLen:], proof(kAuth, "client", hc[:], hs[:], ann)) {
		return nil, fmt.Errorf("%w: wrong proof from a client claiming rank %d", errAuth, h.from)
	}
	if i := bytes.IndexByte(ann, 0); i >= 0 {
		ann = ann[:i]
	}
	h.announce = string(ann)
	conn.SetDeadline(time.Time{})
	return &pendingAccept{hello: h, s: newSession(sp.enc, s2c, c2s),
		proofS: proof(kAuth, "server", hc[:], hs[:], pc[:announceLen])}, nil
}

// pendingAccept is an authenticated client waiting for the server's status.
type pendingAccept struct {
	hello
	s      *session
	proofS []byte
}

// final is the server's last handshake message with status st.
func (pa *pendingAccept) final(st byte) []byte {
	return append([]byte{st}, pa.proofS...)
}

func nonce(ctr uint64) []byte {
	var n [chacha20poly1305.NonceSize]byte
	binary.LittleEndian.PutUint64(n[4:], ctr)
	return n[:]
}

// seal turns a frame made by appendFrame (length u32 | body) into its
// protected form in out: length u32 (= len(body)+16) | body | tag, the body
// encrypted when the session encrypts, the tag over everything before it
// otherwise (over the length, as additional data, and the ciphertext when
// encrypting).
func (s *session) seal(out, frame []byte) []byte {
	body := frame[4:]
	var lb [4]byte
	binary.LittleEndian.PutUint32(lb[:], uint32(len(body)+secTagLen))
	out = append(out[:0], lb[:]...)
	n := nonce(s.txCtr)
	s.txCtr++
	if s.enc {
		return s.tx.Seal(out, n, body, lb[:]) // frame and out are distinct buffers
	}
	out = append(out, body...)
	var tag [secTagLen]byte
	s.tx.Seal(tag[:0], n, nil, out)
	return append(out, tag[:]...)
}

// readSealed reads one protected frame from r and returns its body (what
// decodeFrame takes), valid until the next call. A frame that fails to open
// is errAuth.
func (s *session) readSealed(r io.Reader, bodyStarted func()) ([]byte, error) {
	var lb [4]byte
	if _, err := io.ReadFull(r, lb[:]); err != nil {
		return nil, err
	}
	n := binary.LittleEndian.Uint32(lb[:])
	if n < frameHeader-4+secTagLen || n > maxFrame+secTagLen {
		return nil, fmt.Errorf("%w: frame length %d out of range", errMalformed, n)
	}
	if bodyStarted != nil {
		bodyStarted()
	}
	if cap(s.rbuf) < int(n)+4 {
		s.rbuf = make([]byte, 4+n)
	}
	buf := s.rbuf[:4+n]
	copy(buf, lb[:])
	if _, err := io.ReadFull(r, buf[4:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("reading %d-byte frame: %w", n, err)
	}
	nc := nonce(s.rxCtr)
	if s.enc {
		body, err := s.rx.Open(buf[4:4], nc, buf[4:], buf[:4])
		if err != nil {
			return nil, fmt.Errorf("%w: frame %d does not open", errAuth, s.rxCtr)
		}
		s.rxCtr++
		return body, nil
	}
	end := len(buf) - secTagLen
	if _, err := s.rx.Open(nil, nc, buf[end:], buf[:end]); err != nil {
		return nil, fmt.Errorf("%w: frame %d has a bad tag", errAuth, s.rxCtr)
	}
	s.rxCtr++
	return buf[4:end], nil
}
