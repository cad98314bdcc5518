package dsmshm

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// testSecret is the job secret of the in-process test jobs.
var testSecret = func() []byte {
	b := make([]byte, SecretLen)
	rand.Read(b)
	return b
}()

func secretOf(b byte) []byte { return bytes.Repeat([]byte{b}, SecretLen) }

// handshakePair runs a client and a server handshake over a TCP pair
// (client as rank 0, server as rank 1 of 2) and returns both ends' results.
func handshakePair(t *testing.T, cs, ss secParams, announce string) (*session, *pendingAccept, error, error) {
	t.Helper()
	a, b := tcpPair(t)
	var (
		wg         sync.WaitGroup
		pa         *pendingAccept
		cerr, serr error
		cl         *session
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		pa, serr = serverHandshake(b, ss, 1, 2, time.Now().Add(5*time.Second))
		if serr == nil {
			b.Write(pa.final(statusTaken))
		} else {
			b.Close()
		}
	}()
	cl, cerr = clientHandshake(a, cs, connControl, 0, 1, announce, time.Now().Add(5*time.Second))
	wg.Wait()
	return cl, pa, cerr, serr
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestHandshake(t *testing.T) {
	sp := secParams{secret: secretOf(1), job: "j"}
	cl, pa, cerr, serr := handshakePair(t, sp, sp, "10.0.0.9:7")
	if cerr != nil || serr != nil {
		t.Fatalf("handshake: client %v, server %v", cerr, serr)
	}
	if pa.from != 0 || pa.to != 1 || pa.kind != connControl || pa.announce != "10.0.0.9:7" {
		t.Errorf("server saw %+v", pa.hello)
	}
	if cl.txKey != pa.s.rxKey || cl.rxKey != pa.s.txKey || cl.txKey == cl.rxKey {
		t.Error("the two ends' keys do not pair up")
	}

	for _, c := range []struct {
		name   string
		client secParams
	}{
		{"wrong secret", secParams{secret: secretOf(2), job: "j"}},
		{"wrong job", secParams{secret: secretOf(1), job: "k"}},
		{"other mode", secParams{secret: secretOf(1), job: "j", enc: true}},
	} {
		_, _, cerr, serr := handshakePair(t, c.client, sp, "")
		if cerr == nil || !errors.Is(serr, errAuth) {
			t.Errorf("%s: client %v, server %v: want both to fail", c.name, cerr, serr)
		}
	}
}

// TestHandshakeReplay records a genuine client's bytes and replays them to
// a server, as an outsider on the path could: the server's fresh nonce makes
// the recorded proof worthless.
func TestHandshakeReplay(t *testing.T) {
	sp := secParams{secret: secretOf(1), job: "j"}
	a, b := tcpPair(t)
	rec := &recorder{Conn: a}
	go func() {
		if pa, err := serverHandshake(b, sp, 1, 2, time.Now().Add(5*time.Second)); err == nil {
			b.Write(pa.final(statusTaken))
		}
	}()
	if _, err := clientHandshake(rec, sp, connPage, 0, 1, "", time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	a2, b2 := tcpPair(t)
	errc := make(chan error, 1)
	go func() {
		_, err := serverHandshake(b2, sp, 1, 2, time.Now().Add(5*time.Second))
		errc <- err
	}()
	a2.Write(rec.buf.Bytes())
	if err := <-errc; !errors.Is(err, errAuth) {
		t.Fatalf("replayed handshake: %v, want errAuth", err)
	}
}

// recorder is a connection that keeps what is written to it.
type recorder struct {
	net.Conn
	buf bytes.Buffer
}

func (r *recorder) Write(p []byte) (int, error) {
	r.buf.Write(p)
	return r.Conn.Write(p)
}

// TestHandshakeHostileHello: the server rejects, without answering anything
// secret-dependent, a hello that names another rank, itself, an unknown
// kind, or is not one at all, and allocates nothing from what it reads.
func TestHandshakeHostileHello(t *testing.T) {
	sp := secParams{secret: secretOf(1), job: "j"}
	good := func() []byte {
		a, b := tcpPair(t)
		rec := &recorder{Conn: a}
		go serverHandshake(b, sp, 1, 2, time.Now().Add(time.Second))
		clientHandshake(rec, sp, connControl, 0, 1, "", time.Now().Add(200*time.Millisecond))
		return rec.buf.Bytes()[:helloCLen]
	}()
	for name, mut := range map[string]func(h []byte){
		"to another rank": func(h []byte) { h[12] = 0 },
		"from itself":     func(h []byte) { h[8] = 1 },
		"from rank 7":     func(h []byte) { h[8] = 7 },
		"unknown kind":    func(h []byte) { h[6] = 9 },
		"server role":     func(h []byte) { h[5] = 'S' },
		"bad magic":       func(h []byte) { h[0] = 'X' },
		"huge length":     func(h []byte) { copy(h, []byte{0xff, 0xff, 0xff, 0xff}) },
	} {
		h := append([]byte(nil), good...)
		mut(h)
		a, b := tcpPair(t)
		errc := make(chan error, 1)
		go func() {
			_, err := serverHandshake(b, sp, 1, 2, time.Now().Add(5*time.Second))
			b.Close()
			errc <- err
		}()
		a.Write(h)
		if err := <-errc; !errors.Is(err, errAuth) {
			t.Errorf("%s: %v, want errAuth", name, err)
		}
		if n, _ := io.ReadAll(a); len(n) != 0 {
			t.Errorf("%s: the server answered %d bytes", name, len(n))
		}
	}
}

// TestSealedFrames: frames round-trip in both modes; a flipped bit, a
// replayed or reordered frame fails to open; encryption hides the body.
func TestSealedFrames(t *testing.T) {
	for _, enc := range []bool{false, true} {
		sp := secParams{secret: secretOf(3), job: "j", enc: enc}
		cl, pa, cerr, serr := handshakePair(t, sp, sp, "")
		if cerr != nil || serr != nil {
			t.Fatal(cerr, serr)
		}
		srv := pa.s
		m := &message{Type: mBarrierEnter, ID: 42, Err: "secret words"}
		var wires [][]byte
		for i := range 3 {
			f := appendFrame(nil, uint64(i+1), m)
			wires = append(wires, append([]byte(nil), cl.seal(nil, f)...))
		}
		if bytes.Contains(wires[0], []byte("secret words")) == enc {
			t.Errorf("enc=%v: body visible on the wire: %v", enc, !enc)
		}
		for i, w := range wires[:2] {
			body, err := srv.readSealed(bytes.NewReader(w), nil)
			if err != nil {
				t.Fatalf("enc=%v frame %d: %v", enc, i, err)
			}
			seq, got, err := decodeFrame(body)
			if err != nil || seq != uint64(i+1) || got.ID != 42 || got.Err != "secret words" {
				t.Fatalf("enc=%v frame %d: %d %+v %v", enc, i, seq, got, err)
			}
		}
		// Replay of frame 1 where frame 3 is due.
		if _, err := srv.readSealed(bytes.NewReader(wires[0]), nil); !errors.Is(err, errAuth) {
			t.Errorf("enc=%v replay: %v, want errAuth", enc, err)
		}
		for i := 4; i < len(wires[2]); i += 7 {
			w := append([]byte(nil), wires[2]...)
			w[i] ^= 1
			if _, err := srv.readSealed(bytes.NewReader(w), nil); !errors.Is(err, errAuth) {
				t.Errorf("enc=%v: bit flipped at %d: %v, want errAuth", enc, i, err)
			}
		}
		if _, err := srv.readSealed(bytes.NewReader(wires[2]), nil); err != nil {
			t.Errorf("enc=%v: the genuine third frame after failures: %v", enc, err)
		}
	}
}

// FuzzServerHandshake feeds arbitrary bytes to a rank's side of the
// handshake, as anyone who can reach a rank port can: it never panics and
// never accepts without the secret.
func FuzzServerHandshake(f *testing.F) {
	sp := secParams{secret: secretOf(1), job: "j"}
	var hc [helloCLen]byte
	copy(hc[:], secMagic)
	hc[4], hc[5], hc[6] = secVersion, 'C', connPage
	hc[12] = 1
	f.Add(hc[:])
	f.Add(append(hc[:], make([]byte, announceLen+secProofLen)...))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		a, b := net.Pipe()
		defer b.Close()
		go func() {
			a.Write(in)
			a.Close()
		}()
		go io.Copy(io.Discard, a)
		if pa, err := serverHandshake(b, sp, 1, 2, time.Now().Add(time.Second)); err == nil {
			t.Fatalf("accepted %+v without the secret", pa.hello)
		}
	})
}

// TestRankForwardSecrecy: a recorded connection between ranks, its frames
// included, does not open with the job's secret and the recording alone
// (stolen later); it does with the handshake's one-time X25519 secret,
// which no rank keeps (the control).
func TestRankForwardSecrecy(t *testing.T) {
	var mu sync.Mutex
	var shares []*ecdh.PrivateKey
	real := newShare
	newShare = func() (*ecdh.PrivateKey, error) {
		k, err := real()
		mu.Lock()
		shares = append(shares, k)
		mu.Unlock()
		return k, err
	}
	defer func() { newShare = real }()
	sp := secParams{secret: secretOf(4), job: "j"}
	a, b := tcpPair(t)
	ra, rb := &recorder{Conn: a}, &recorder{Conn: b}
	go func() {
		if pa, err := serverHandshake(rb, sp, 1, 2, time.Now().Add(5*time.Second)); err == nil {
			rb.Write(pa.final(statusTaken))
		}
	}()
	cl, err := clientHandshake(ra, sp, connControl, 0, 1, "", time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	frame := cl.seal(nil, appendFrame(nil, 1, &message{Type: mBarrierEnter, ID: 1, Err: "x"}))
	helloC, helloS := ra.buf.Bytes()[:helloCLen], rb.buf.Bytes()[:helloSLen]
	salt := append(append([]byte(nil), helloC...), helloS...)
	opens := func(key []byte) bool {
		s := newSession(false, key, key)
		_, err := s.readSealed(bytes.NewReader(frame), nil)
		return err == nil
	}
	noDH, _ := hkdf.Key(sha256.New, sp.secret, salt, "dsmshm v2 keys "+sp.job, 2*secKeyLen)
	v1, _ := hkdf.Key(sha256.New, sp.secret, salt, "dsmshm v1 "+sp.job, 3*secKeyLen)
	if opens(noDH[:secKeyLen]) || opens(v1[secKeyLen:2*secKeyLen]) {
		t.Fatal("the recording opens with the job's secret alone")
	}
	var mine *ecdh.PrivateKey
	for _, k := range shares {
		if bytes.Equal(k.PublicKey().Bytes(), helloC[16+secNonceLen:]) {
			mine = k
		}
	}
	if mine == nil {
		t.Fatal("the client's share is not in its hello")
	}
	_, c2s, _, err := sp.keys(helloC, helloS, mine, helloS[6+secNonceLen:])
	if err != nil || !opens(c2s) {
		t.Fatalf("the control failed: the recording does not open with the exchange's secret (%v)", err)
	}
}
