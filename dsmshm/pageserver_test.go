package dsmshm

import (
	"crypto/rand"
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/sys/unix"
)

// pageClient is a test's own page channel to a rank's page server, speaking
// the protocol with Go's ChaCha20-Poly1305 (an implementation independent
// of aead.c) over one end of a socketpair.
type pageClient struct {
	fd       int
	enc      bool
	tx, rx   [secKeyLen]byte
	ntx, nrx uint64
}

// attachClient hands the server end of a new socketpair to n's page server
// as the channel from rank from, and returns the client end.
func attachClient(t testing.TB, n *Node, from int, enc bool) *pageClient {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	c := &pageClient{fd: fds[0], enc: enc}
	rand.Read(c.tx[:])
	rand.Read(c.rx[:])
	tv := unix.NsecToTimeval((10 * time.Second).Nanoseconds())
	unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := n.c.serveFD(fds[1], from, newSession(enc, c.rx[:], c.tx[:])); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(c.fd) })
	return c
}

// request returns a sealed request for page p of segment seg.
func (c *pageClient) request(seg, p uint32) []byte { return c.requestRun(seg, p, 1) }

// requestRun returns a sealed request for n pages from page p of segment
// seg. Go's AEAD cannot make the tag of a payload left in clear (RFC 8439's
// construction over it as if it were ciphertext), so with enc off this uses
// aead.c, which TestAEAD* check against Go's.
func (c *pageClient) requestRun(seg, p, n uint32) []byte {
	req := binary.LittleEndian.AppendUint32(nil, seg)
	req = binary.LittleEndian.AppendUint32(req, p)
	req = binary.LittleEndian.AppendUint32(req, n)
	nc := nonce(c.ntx)
	c.ntx++
	if c.enc {
		a, _ := chacha20poly1305.New(c.tx[:])
		return a.Seal(nil, nc, req, nil)
	}
	tag := aeadSeal(&c.tx, c.ntx-1, nil, req, false)
	return append(req, tag[:]...)
}

// reply reads the reply to a one-page request and checks its tag: status,
// version, page (nil unless status is 0).
func (c *pageClient) reply(t testing.TB) (status, ver uint64, page []byte) {
	t.Helper()
	status, vers, pages := c.replyRun(t)
	if len(vers) > 1 {
		t.Fatalf("%d pages in the reply to a request for one", len(vers))
	}
	if status == 0 {
		ver = vers[0]
	}
	return status, ver, pages
}

// replyRun reads one reply and checks its tag: status, and when it is 0
// the versions of the pages served and the pages, one after the other.
func (c *pageClient) replyRun(t testing.TB) (status uint64, vers []uint64, pages []byte) {
	t.Helper()
	hdr := c.read(t, 16)
	status, n := binary.LittleEndian.Uint64(hdr), binary.LittleEndian.Uint64(hdr[8:])
	switch {
	case status == 0 && (n == 0 || n > fetchRunMax):
		t.Fatalf("a reply with %d pages", n)
	case status != 0 && n != 0:
		t.Fatalf("a reply with status %d and %d pages", status, n)
	}
	aad := append(hdr, c.read(t, 8*int(n))...)
	for i := range int(n) {
		vers = append(vers, binary.LittleEndian.Uint64(aad[16+8*i:]))
	}
	plen := int(n) * pageSize
	rest := c.read(t, plen+secTagLen)
	a, _ := chacha20poly1305.New(c.rx[:])
	nc := nonce(c.nrx)
	c.nrx++
	var err error
	if c.enc {
		pages, err = a.Open(nil, nc, rest, aad)
	} else {
		// The tag covers the header and the pages as RFC 8439 covers
		// additional data and ciphertext.
		pages = rest[:plen]
		err = macCheck(a, nc, aad, pages, rest[plen:])
	}
	if err != nil {
		t.Fatalf("reply %d: %v", c.nrx-1, err)
	}
	if status != 0 {
		pages = nil
	}
	return status, vers, pages
}

// macCheck checks a tag made with enc off over aad and p: the same as
// opening p as if it were ciphertext, without keeping the "plaintext".
func macCheck(a interface {
	Open(dst, nonce, ct, aad []byte) ([]byte, error)
}, n, aad, p, tag []byte) error {
	_, err := a.Open(nil, n, append(append([]byte(nil), p...), tag...), aad)
	return err
}

func (c *pageClient) read(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	for got := 0; got < n; {
		r, err := unix.Read(c.fd, b[got:])
		if err == unix.EINTR {
			continue
		}
		if err != nil || r == 0 {
			t.Fatalf("reading a reply: %d bytes of %d, %v", got, n, err)
		}
		got += r
	}
	return b
}

// closedByServer reports whether the server closed the channel (the next
// read sees EOF), waiting for it up to the socket's receive timeout.
func (c *pageClient) closedByServer() bool {
	var b [1]byte
	for {
		n, err := unix.Read(c.fd, b[:])
		if err == unix.EINTR {
			continue
		}
		// A close with our bytes unread resets the connection.
		return err == nil && n == 0 || err == unix.ECONNRESET
	}
}

// stillOpen reports whether the channel is open with nothing to read.
func (c *pageClient) stillOpen() bool {
	var b [1]byte
	_, _, err := unix.Recvfrom(c.fd, b[:], unix.MSG_DONTWAIT)
	return err == unix.EAGAIN
}

// TestPageServerSlowClient: a client that sends part of a request and
// stalls does not hold up the page server: another rank's fetches proceed
// meanwhile, and the stalled request is answered once it is complete. (A
// page server reading requests whole used to wait 5 s on such a client
// before it served anyone else, then drop it.) A request with a wrong tag
// drops its channel and serves nothing.
func TestPageServerSlowClient(t *testing.T) {
	for _, enc := range []bool{false, true} {
		nodes := startMemEnc(t, 3, enc)
		const pages = 96 // 0-31 homed at rank 0
		segs := allocAll(t, nodes, "slow", pages*pageSize)
		v0 := View[int64](segs[0])
		for p := range 32 {
			v0[p*pageSize/8] = int64(p + 100)
		}
		if err := each(nodes, func(n *Node) error { return n.Barrier(0) }); err != nil {
			t.Fatal(err)
		}
		// The test's client claims rank 2, which fetches nothing here.
		slow := attachClient(t, nodes[0], 2, enc)
		req := slow.request(segs[0].id, 5)
		if _, err := unix.Write(slow.fd, req[:5]); err != nil {
			t.Fatal(err)
		}
		v1 := View[int64](segs[1])
		for p := range 32 {
			if got := v1[p*pageSize/8]; got != int64(p+100) {
				t.Fatalf("enc=%v: rank 1 read %d from page %d, want %d", enc, got, p, p+100)
			}
		}
		if got := nodes[1].Stats().PagesFetched; got < 32 {
			t.Fatalf("enc=%v: rank 1 fetched %d pages, want 32", enc, got)
		}
		if !slow.stillOpen() {
			t.Fatalf("enc=%v: the stalled channel was dropped while rank 1 fetched: the server waited on it", enc)
		}
		if _, err := unix.Write(slow.fd, req[5:]); err != nil {
			t.Fatal(err)
		}
		st, _, page := slow.reply(t)
		if st != 0 || binary.LittleEndian.Uint64(page) != 105 {
			t.Fatalf("enc=%v: the completed request got status %d, page starting %d", enc, st, binary.LittleEndian.Uint64(page))
		}
		// A forged request: the right length, a wrong tag.
		served, bad := nodes[0].Stats().PagesServed, nodes[0].Stats().BadTags
		forged := slow.request(segs[0].id, 6)
		forged[len(forged)-1] ^= 1
		unix.Write(slow.fd, forged)
		if !slow.closedByServer() {
			t.Fatalf("enc=%v: a request with a wrong tag did not drop its channel", enc)
		}
		if s := nodes[0].Stats(); s.PagesServed != served || s.BadTags != bad+1 {
			t.Errorf("enc=%v: after a forged request: %d pages served (was %d), %d bad tags (was %d)",
				enc, s.PagesServed, served, s.BadTags, bad)
		}
		each(nodes, (*Node).Close)
	}
}

// FuzzPageServer drives the C page server's request parser through a real
// channel. An input whose first byte is even is written raw, as an outsider
// or a damaged connection would: it must serve nothing and end with the
// channel dropped. Otherwise the rest is cut into 12-byte requests
// (segment, page, pages: any values), each sealed with the channel's key
// and written in pieces of fuzzer-chosen sizes: each must get a reply with a
// valid tag, and the pages homed there from the first one asked for (as
// many as asked, up to 8) with their contents, or status 1 and none when
// the first is not homed there or the count is out of 1..8.
func FuzzPageServer(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0})
	f.Add([]byte{3, 0, 0, 0, 0, 28, 0, 0, 0, 8, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
	f.Add([]byte{2, 0xff, 0xff, 0xff, 0xff})
	nodes := startMem(&testing.T{}, 2)
	defer each(nodes, (*Node).Close)
	var segs []*Segment
	if err := each(nodes, func(n *Node) error {
		s, err := n.Alloc("fuzz", 64*pageSize) // pages 0-31 homed at rank 0
		if n.Rank() == 0 {
			segs = append(segs, s)
		}
		return err
	}); err != nil {
		f.Fatal(err)
	}
	seg := segs[0]
	v := View[int64](seg)
	for p := range 32 {
		v[p*pageSize/8] = int64(p) + 1000
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		c := attachClient(t, nodes[0], 1, false)
		if in[0]%2 == 0 {
			served := nodes[0].Stats().PagesServed
			unix.Write(c.fd, in[1:])
			unix.Shutdown(c.fd, unix.SHUT_WR)
			if !c.closedByServer() {
				t.Fatal("the server kept a channel that sent garbage and closed")
			}
			if got := nodes[0].Stats().PagesServed; got != served {
				t.Fatalf("garbage got %d pages served", got-served)
			}
			return
		}
		body := in[1:]
		for len(body) >= 12 {
			sid, p, n := binary.LittleEndian.Uint32(body), binary.LittleEndian.Uint32(body[4:]), binary.LittleEndian.Uint32(body[8:])
			if body[0]%4 == 0 {
				sid = seg.id // name the real segment often
				p %= 40
				n %= 10
			}
			req := c.requestRun(sid, p, n)
			cut := int(body[1]) % len(req)
			unix.Write(c.fd, req[:cut])
			unix.Write(c.fd, req[cut:])
			st, vers, pages := c.replyRun(t)
			want := 0 // pages homed there from p on, as many as asked
			if sid == seg.id && n >= 1 && n <= fetchRunMax {
				for q := uint64(p); q < 32 && q < uint64(p)+uint64(n); q++ {
					want++
				}
			}
			switch {
			case want > 0 && (st != 0 || len(vers) != want):
				t.Fatalf("%d pages from %d of segment %d, %d homed there: status %d, %d served", n, p, sid, want, st, len(vers))
			case want == 0 && st == 0:
				t.Fatalf("%d pages from %d of segment %d, none homed there, were served", n, p, sid)
			}
			for i := range len(vers) {
				if got := binary.LittleEndian.Uint64(pages[i*pageSize:]); got != uint64(p)+uint64(i)+1000 {
					t.Fatalf("page %d: contents %d", int(p)+i, got)
				}
			}
			body = body[12:]
		}
	})
}
