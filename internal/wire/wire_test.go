package wire

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	testToken  = []byte("0123456789abcdef-test-token")
	otherToken = []byte("fedcba9876543210-other-token")
)

// transports are the ways tests connect two endpoints.
var transports = map[string]func(t testing.TB) (net.Conn, net.Conn){
	"pipe": func(t testing.TB) (net.Conn, net.Conn) {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		return a, b
	},
	"tcp": tcpPair,
}

func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// runHandshake runs Client on a and Server on b concurrently.
func runHandshake(a, b net.Conn, tokC, tokS []byte) (cc, sc *Conn, cerr, serr error) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc, serr = Server(b, tokS)
		if serr != nil {
			b.Close() // as a caller would
		}
	}()
	cc, cerr = Client(a, tokC)
	if cerr != nil {
		a.Close()
	}
	<-done
	return
}

func mustPair(t testing.TB, a, b net.Conn) (*Conn, *Conn) {
	t.Helper()
	cc, sc, cerr, serr := runHandshake(a, b, testToken, testToken)
	if cerr != nil || serr != nil {
		t.Fatalf("handshake: client %v, server %v", cerr, serr)
	}
	return cc, sc
}

type hello struct{ Name string }

func TestHandshake(t *testing.T) {
	for name, pair := range transports {
		t.Run(name, func(t *testing.T) {
			a, b := pair(t)
			cc, sc := mustPair(t, a, b)
			// Both directions, concurrently: over net.Pipe a write blocks
			// until the peer reads.
			go cc.WriteJSON(1, hello{"client"})
			var h hello
			if err := sc.ReadJSON(1, &h); err != nil || h.Name != "client" {
				t.Fatalf("server read %+v, %v", h, err)
			}
			go sc.WriteMsg(2, []byte("from server"))
			typ, p, err := cc.ReadMsg()
			if err != nil || typ != 2 || string(p) != "from server" {
				t.Fatalf("client read %d %q %v", typ, p, err)
			}
			go sc.WriteMsg(3, nil)
			if typ, p, err := cc.ReadMsg(); err != nil || typ != 3 || len(p) != 0 {
				t.Fatalf("empty frame: %d %q %v", typ, p, err)
			}
		})
	}
}

func TestWrongToken(t *testing.T) {
	for name, pair := range transports {
		t.Run(name, func(t *testing.T) {
			a, b := pair(t)
			_, _, cerr, serr := runHandshake(a, b, testToken, otherToken)
			if !errors.Is(cerr, ErrAuth) || !errors.Is(serr, ErrAuth) {
				t.Fatalf("want ErrAuth on both sides, got client %v, server %v", cerr, serr)
			}
		})
	}
}

// recorder keeps a copy of everything written to the conn.
type recorder struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.writes = append(r.writes, bytes.Clone(p))
	r.mu.Unlock()
	return r.Conn.Write(p)
}

func TestReplayedHandshake(t *testing.T) {
	a, b := net.Pipe()
	ra, rb := &recorder{Conn: a}, &recorder{Conn: b}
	mustPair(t, ra, rb)
	a.Close()
	b.Close()

	t.Run("to server", func(t *testing.T) {
		atk, srv := net.Pipe()
		defer atk.Close()
		errc := make(chan error, 1)
		go func() { _, err := Server(srv, testToken); srv.Close(); errc <- err }()
		atk.Write(ra.writes[0]) // recorded helloC
		io.ReadFull(atk, make([]byte, helloLen))
		atk.Write(ra.writes[1]) // recorded proofC
		status := make([]byte, 1+proofLen)
		io.ReadFull(atk, status)
		if err := <-errc; !errors.Is(err, ErrAuth) {
			t.Fatalf("server accepted replayed handshake: %v", err)
		}
		if status[0] != statusBad || !bytes.Equal(status[1:], make([]byte, proofLen)) {
			t.Fatalf("server leaked %x to a client that failed its proof", status)
		}
	})
	t.Run("to client", func(t *testing.T) {
		atk, cli := net.Pipe()
		defer atk.Close()
		errc := make(chan error, 1)
		go func() { _, err := Client(cli, testToken); cli.Close(); errc <- err }()
		io.ReadFull(atk, make([]byte, helloLen))
		atk.Write(rb.writes[0]) // recorded helloS
		io.ReadFull(atk, make([]byte, 1+proofLen))
		atk.Write(rb.writes[1]) // recorded status|proofS
		if err := <-errc; !errors.Is(err, ErrAuth) {
			t.Fatalf("client accepted replayed handshake: %v", err)
		}
	})
}

// TestReflectedHandshake echoes the client's own messages back to it.
func TestReflectedHandshake(t *testing.T) {
	for _, fixRole := range []bool{false, true} {
		atk, cli := net.Pipe()
		errc := make(chan error, 1)
		go func() { _, err := Client(cli, testToken); cli.Close(); errc <- err }()
		h := make([]byte, helloLen)
		io.ReadFull(atk, h)
		if fixRole {
			h[5] = 'S'
		}
		atk.Write(h)
		if fixRole {
			pc := make([]byte, 1+proofLen) // count, proof
			io.ReadFull(atk, pc)
			atk.Write(append([]byte{statusOK}, pc[1:]...))
		}
		if err := <-errc; !errors.Is(err, ErrAuth) {
			t.Fatalf("fixRole=%v: client accepted its own reflected handshake: %v", fixRole, err)
		}
		atk.Close()
	}
}

func TestHandshakeDeadline(t *testing.T) {
	a, b := tcpPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := ServerContext(ctx, b, testToken) // a never speaks
	if !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Fatalf("got %v after %v, want deadline exceeded after 100ms", err, time.Since(start))
	}

	// Cancellation interrupts, too.
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := ClientContext(ctx, a, testToken); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestHandshakeTruncated(t *testing.T) {
	a, b := tcpPair(t)
	go func() { a.Write([]byte("DSMW\x02C0123")); a.Close() }()
	if _, err := Server(b, testToken); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v, want io.ErrUnexpectedEOF", err)
	}
}

// relay connects a client end and a server end through a goroutine that
// passes each write from client to server through tamper, which returns the
// chunks to forward instead. Over net.Pipe each read returns exactly one
// write: chunks 0 and 1 are helloC and proofC, then one frame per chunk.
// A nil chunk makes the relay hang up.
func relay(t *testing.T, tamper func(i int, p []byte) [][]byte) (cli, srv net.Conn) {
	cli, r1 := net.Pipe()
	r2, srv := net.Pipe()
	t.Cleanup(func() { cli.Close(); r1.Close(); r2.Close(); srv.Close() })
	go func() { io.Copy(r1, r2); r1.Close() }()
	go func() {
		defer r2.Close()
		buf := make([]byte, 2*MaxFrame)
		for i := 0; ; i++ {
			n, err := r1.Read(buf)
			if err != nil {
				return
			}
			for _, p := range tamper(i, bytes.Clone(buf[:n])) {
				if p == nil {
					return // hang up
				}
				if _, err := r2.Write(p); err != nil {
					return
				}
			}
		}
	}()
	return cli, srv
}

func TestTamperedFrames(t *testing.T) {
	var held []byte
	tests := map[string]func(i int, p []byte) [][]byte{
		"flip payload": func(i int, p []byte) [][]byte {
			if i == 2 {
				p[hdrLen+1] ^= 1
			}
			return [][]byte{p}
		},
		"flip tag": func(i int, p []byte) [][]byte {
			if i == 2 {
				p[len(p)-1] ^= 0x80
			}
			return [][]byte{p}
		},
		"flip type": func(i int, p []byte) [][]byte {
			if i == 2 {
				p[4] ^= 1
			}
			return [][]byte{p}
		},
		"drop": func(i int, p []byte) [][]byte {
			if i == 2 {
				return nil
			}
			return [][]byte{p}
		},
		"replay": func(i int, p []byte) [][]byte {
			if i == 2 {
				return [][]byte{p, p}
			}
			return [][]byte{p}
		},
		"reorder": func(i int, p []byte) [][]byte {
			switch i {
			case 2:
				held = p
				return nil
			case 3:
				return [][]byte{p, held}
			}
			return [][]byte{p}
		},
	}
	for name, tamper := range tests {
		t.Run(name, func(t *testing.T) {
			a, b := relay(t, tamper)
			cc, sc := mustPair(t, a, b)
			go func() {
				cc.WriteMsg(1, []byte("first message"))
				cc.WriteMsg(1, []byte("second message"))
			}()
			var err error
			for i := 0; i < 2 && err == nil; i++ {
				var p []byte
				_, p, err = sc.ReadMsg()
				if err == nil && name != "drop" && i == 0 && string(p) != "first message" {
					t.Fatalf("read tampered frame %q", p)
				}
			}
			if err == nil {
				t.Fatal("tampering not detected")
			}
			if _, _, err2 := sc.ReadMsg(); err2 != err {
				t.Fatalf("error not sticky: %v then %v", err, err2)
			}
		})
	}
}

// testConn returns a Conn over rw that needs no handshake: it reads and writes
// with one fixed key, so what it writes it can read back.
func testConn(rw io.ReadWriter) *Conn {
	key := bytes.Repeat([]byte{7}, keyLen)
	fc := fakeConn{rw: rw}
	return &Conn{conn: fc, br: bufio.NewReader(fc), r: newAEAD(key), w: newAEAD(key)}
}

type fakeConn struct {
	net.Conn
	rw io.ReadWriter
}

func (f fakeConn) Read(p []byte) (int, error)  { return f.rw.Read(p) }
func (f fakeConn) Write(p []byte) (int, error) { return f.rw.Write(p) }

func TestOversizeLength(t *testing.T) {
	for _, hdr := range []string{"\xff\xff\xff\xff\x01", "\x00\x10\x00\x11\x01", "\x00\x00\x00\x0f\x01"} {
		c := testConn(bytes.NewBufferString(hdr + "rest of a frame"))
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, _, err := c.ReadMsg()
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Fatalf("header %x accepted", hdr)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 64<<10 { // slack for the runtime; a frame buffer is 1 MiB
			t.Errorf("header %x: allocated %d bytes before rejecting", hdr, n)
		}
	}
	// The largest legal frame is accepted.
	var buf bytes.Buffer
	c := testConn(&buf)
	if err := c.WriteMsg(1, make([]byte, MaxFrame)); err != nil {
		t.Fatal(err)
	}
	if _, p, err := c.ReadMsg(); err != nil || len(p) != MaxFrame {
		t.Fatalf("max frame: %d bytes, %v", len(p), err)
	}
	if err := c.WriteMsg(1, make([]byte, MaxFrame+1)); err == nil {
		t.Fatal("oversize write accepted")
	}
}

func TestStreamRoundTrip(t *testing.T) {
	data := make([]byte, 5<<20+12345)
	rand.Read(data)
	for name, pair := range transports {
		t.Run(name, func(t *testing.T) {
			a, b := pair(t)
			cc, sc := mustPair(t, a, b)
			sent := make(chan error, 1)
			go func() {
				n, err := cc.SendStream(bytes.NewReader(data))
				if err == nil && n != int64(len(data)) {
					err = errors.New("short send")
				}
				sent <- err
			}()
			var got bytes.Buffer
			n, err := sc.RecvStream(&got, int64(len(data)))
			if err != nil || n != int64(len(data)) || !bytes.Equal(got.Bytes(), data) {
				t.Fatalf("received %d bytes (equal %v), %v", n, bytes.Equal(got.Bytes(), data), err)
			}
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			// The Conn is still usable after a stream, and empty streams work.
			go cc.SendStream(bytes.NewReader(nil))
			if n, err := sc.RecvStream(io.Discard, 0); n != 0 || err != nil {
				t.Fatalf("empty stream: %d, %v", n, err)
			}
		})
	}
}

func TestStreamErrors(t *testing.T) {
	t.Run("over max", func(t *testing.T) {
		a, b := tcpPair(t)
		cc, sc := mustPair(t, a, b)
		go cc.SendStream(bytes.NewReader(make([]byte, 1<<20)))
		if _, err := sc.RecvStream(io.Discard, 1<<20-1); err == nil {
			t.Fatal("stream over max accepted")
		}
	})
	t.Run("wrong total", func(t *testing.T) {
		a, b := tcpPair(t)
		cc, sc := mustPair(t, a, b)
		go func() {
			cc.WriteMsg(TypeData, []byte("abc"))
			cc.WriteMsg(TypeEnd, []byte{0, 0, 0, 0, 0, 0, 0, 4})
		}()
		if _, err := sc.RecvStream(io.Discard, 100); err == nil {
			t.Fatal("wrong total accepted")
		}
	})
	t.Run("truncated", func(t *testing.T) {
		// Forward the handshake and two frames, then half of the third,
		// then hang up.
		cli, srv := relay(t, func(i int, p []byte) [][]byte {
			switch {
			case i < 4:
				return [][]byte{p}
			case i == 4:
				return [][]byte{p[:len(p)/2], nil}
			}
			return nil
		})
		cc, sc := mustPair(t, cli, srv)
		go cc.SendStream(bytes.NewReader(make([]byte, 4*streamChunk)))
		if _, err := sc.RecvStream(io.Discard, 1<<30); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("got %v, want io.ErrUnexpectedEOF", err)
		}
	})
	t.Run("truncated at frame boundary", func(t *testing.T) {
		a, b := tcpPair(t)
		cc, sc := mustPair(t, a, b)
		go func() { cc.WriteMsg(TypeData, []byte("abc")); cc.Close() }()
		if _, err := sc.RecvStream(io.Discard, 100); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("got %v, want io.ErrUnexpectedEOF", err)
		}
	})
}

type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, errors.New("disk on fire")
	}
	k := min(len(p), r.n)
	r.n -= k
	return k, nil
}

func TestRemoteError(t *testing.T) {
	a, b := tcpPair(t)
	cc, sc := mustPair(t, a, b)
	go sc.WriteError(errors.New("no such pid 42"))
	var h hello
	var re *RemoteError
	if err := cc.ReadJSON(1, &h); !errors.As(err, &re) || re.Msg != "no such pid 42" {
		t.Fatalf("got %v, want RemoteError", err)
	}

	go cc.SendStream(&failingReader{n: 3*streamChunk + 5})
	n, err := sc.RecvStream(io.Discard, 1<<30)
	if !errors.As(err, &re) || !bytes.Contains([]byte(re.Msg), []byte("disk on fire")) {
		t.Fatalf("got %d, %v, want RemoteError", n, err)
	}

	go cc.WriteJSON(2, hello{})
	if err := sc.ReadJSON(1, &h); err == nil {
		t.Fatal("wrong message type accepted")
	}
}

func TestConcurrentWrites(t *testing.T) {
	a, b := tcpPair(t)
	cc, sc := mustPair(t, a, b)
	const writers, each = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for range each {
				if err := cc.WriteMsg(byte(w), bytes.Repeat([]byte{byte(w)}, 1000+w)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for range writers * each {
		typ, p, err := sc.ReadMsg()
		if err != nil {
			t.Fatal(err)
		}
		if len(p) != 1000+int(typ) || p[0] != typ || p[len(p)-1] != typ {
			t.Fatalf("frame of type %d mangled", typ)
		}
	}
	wg.Wait()
}

// BenchmarkStream measures a stream over TCP loopback, sender and receiver in
// this process. Run with -cpu 1 for the single-core figure.
func BenchmarkStream(b *testing.B) {
	const size = 64 << 20
	data := make([]byte, size)
	rand.Read(data)
	a, c := tcpPair(b)
	cc, sc := mustPair(b, a, c)
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		errc := make(chan error, 1)
		go func() {
			_, err := cc.SendStream(bytes.NewReader(data))
			errc <- err
		}()
		if _, err := sc.RecvStream(io.Discard, size); err != nil {
			b.Fatal(err)
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	}
}

// TestForwardSecrecy records a whole session, as someone on the network
// could, and then, knowing the token (stolen later), tries to read it: the
// keys derived from the token and the recorded handshake alone (as wire v1
// derived them, or v2's without the key exchange) open nothing. With the
// handshake's ephemeral X25519 secret, which a daemon never keeps, the same
// recording opens: the test reads it right.
func TestForwardSecrecy(t *testing.T) {
	var mu sync.Mutex
	var ephs []*ecdh.PrivateKey
	real := newEphemeral
	newEphemeral = func() (*ecdh.PrivateKey, error) {
		k, err := real()
		mu.Lock()
		ephs = append(ephs, k)
		mu.Unlock()
		return k, err
	}
	defer func() { newEphemeral = real }()

	a, b := tcpPair(t)
	ra, rb := &recorder{Conn: a}, &recorder{Conn: b}
	cc, sc, cerr, serr := runHandshake(ra, rb, testToken, testToken)
	if cerr != nil || serr != nil {
		t.Fatal(cerr, serr)
	}
	secret := []byte("the pages of a process's memory")
	go cc.WriteMsg(5, secret)
	if _, p, err := sc.ReadMsg(); err != nil || !bytes.Equal(p, secret) {
		t.Fatalf("server read %q, %v", p, err)
	}
	helloC, helloS, frame := ra.writes[0], rb.writes[0], ra.writes[2]
	salt := append(bytes.Clone(helloC), helloS...)
	var nonce [12]byte // the first frame: sequence number 0
	open := func(key []byte) error {
		_, err := newAEAD(key).Open(nil, nonce[:], frame[hdrLen:], frame[:hdrLen])
		return err
	}
	v1, _ := hkdf.Key(sha256.New, testToken, salt, "dsmigrate/wire v1 keys", 3*keyLen)
	noDH, _ := hkdf.Key(sha256.New, testToken, salt, "dsmigrate/wire v2 keys", 2*keyLen)
	for name, k := range map[string][]byte{"v1 keys": v1[keyLen : 2*keyLen], "v2 keys without the exchange": noDH[:keyLen]} {
		if open(k) == nil {
			t.Errorf("the recording opens with the token alone (%s)", name)
		}
	}
	// The control: the client's ephemeral secret and the server's share.
	var clientEph *ecdh.PrivateKey
	for _, k := range ephs {
		if bytes.Equal(k.PublicKey().Bytes(), helloC[6+nonceLen:]) {
			clientEph = k
		}
	}
	serverPub, err := ecdh.X25519().NewPublicKey(helloS[6+nonceLen:])
	if clientEph == nil || err != nil {
		t.Fatalf("the client's key share is not in its hello (%v)", err)
	}
	shared, _ := clientEph.ECDH(serverPub)
	keys, _ := hkdf.Key(sha256.New, append(shared, testToken...), salt, "dsmigrate/wire v2 keys", 2*keyLen)
	if err := open(keys[:keyLen]); err != nil {
		t.Fatalf("the control failed: the recording does not open even with the exchange's secret: %v", err)
	}
}

// TestTokenRotation: a token file holds the token in use and, during a
// rotation, the next one; hosts holding either or both talk to each other,
// and a host with neither is refused.
func TestTokenRotation(t *testing.T) {
	old, next, other := string(testToken), "9876543210fedcba-next-token", string(otherToken)
	both := old + "\n" + next
	for _, c := range []struct {
		client, server string
		ok             bool
	}{
		{old, both, true}, {next, both, true}, {both, old, true}, {both, next, true}, {both, both, true},
		{next + "\n" + old, both, true}, {other, both, false}, {both, other, false}, {other + "\n" + next, old, false},
	} {
		a, b := tcpPair(t)
		cc, sc, cerr, serr := runHandshake(a, b, []byte(c.client), []byte(c.server))
		if c.ok != (cerr == nil && serr == nil) {
			t.Errorf("client %q, server %q: client %v, server %v; want ok=%v", c.client, c.server, cerr, serr, c.ok)
			continue
		}
		if c.ok {
			go cc.WriteMsg(1, []byte("x"))
			if _, p, err := sc.ReadMsg(); err != nil || string(p) != "x" {
				t.Errorf("client %q, server %q: the keys differ: %q %v", c.client, c.server, p, err)
			}
		}
	}
	if _, err := splitTokens([]byte(old + "\n" + next + "\n" + other)); err == nil {
		t.Error("three tokens accepted")
	}
}

// TestOlderPeer: a wire v1 daemon's hello gets a clear error at once.
func TestOlderPeer(t *testing.T) {
	a, b := tcpPair(t)
	errc := make(chan error, 1)
	go func() { _, err := Server(b, testToken); errc <- err }()
	a.Write(append([]byte("DSMW\x01C"), make([]byte, 32)...))
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "speaks dsmigrate wire v1") {
		t.Fatalf("a v1 hello: %v", err)
	}
}
