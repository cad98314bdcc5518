package dsmshm

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	mrt "dsmigrate/runtime"
)

// TestOutsider runs a job of three ranks over TCP while an outsider, who
// has everything but the job's secret (the ports, the ranks, the protocol),
// attacks every rank port: idle connections beyond the cap, oversized
// length prefixes, random bytes, well-formed hellos with forged proofs, and
// attempts to open a page channel and a control connection as a rank. One
// rank meanwhile goes through migration pauses and comes back. The job's
// counts must be exact, the attack's connections counted as rejected, and
// the ranks' heap must not grow with what the outsider sent.
func TestOutsider(t *testing.T) {
	const size, rounds = 3, 100
	nodes, peers := startTCPWith(t, size, 2*time.Second, time.Minute)
	t.Cleanup(func() { each(nodes, (*Node).Close) })
	segs := allocAll(t, nodes, "out", size*pageSize) // page r homed at rank r
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	stop := make(chan struct{})
	var attackers sync.WaitGroup
	var attempts [size]int
	for r, addr := range peers {
		attackers.Add(1)
		go func() {
			defer attackers.Done()
			attempts[r] = attack(t, addr, r, stop)
		}()
	}
	var pauser sync.WaitGroup
	pauser.Add(1)
	go func() { // rank 2 migrates now and then, in place
		defer pauser.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			h := nodes[2].migrationHooks()
			if err := h.Prepare(); err != nil {
				t.Errorf("prepare: %v", err)
				return
			}
			time.Sleep(5 * time.Millisecond)
			if err := h.Resume(mrt.ResumeInfo{Moved: i%2 == 0, Host: "127.0.0.1"}); err != nil {
				t.Errorf("resume: %v", err)
				return
			}
		}
	}()

	err := each(nodes, func(n *Node) error {
		v := View[int64](segs[n.Rank()])
		for i := range rounds {
			if err := n.Lock(1); err != nil {
				return err
			}
			v[0]++                                // page 0, homed at rank 0
			v[pageSize/8*((n.Rank()+1)%size)+1]++ // the next rank's page
			if err := n.Unlock(1); err != nil {
				return err
			}
			if i%20 == 0 {
				if err := n.Barrier(0); err != nil {
					return err
				}
			}
		}
		return n.Barrier(0)
	})
	close(stop)
	pauser.Wait()
	attackers.Wait()
	if err != nil {
		t.Fatal(err)
	}
	for r, s := range segs {
		v := View[int64](s)
		if v[0] != size*rounds {
			t.Errorf("rank %d sees %d increments of page 0, want %d", r, v[0], size*rounds)
		}
		for p := range size {
			if got := v[pageSize/8*p+1]; got != rounds {
				t.Errorf("rank %d sees %d increments of page %d, want %d", r, got, p, rounds)
			}
		}
	}
	var rejected, badTags uint64
	for r, n := range nodes {
		st := n.Stats()
		rejected += st.Rejected
		badTags += st.BadTags
		if st.Rejected == 0 {
			t.Errorf("rank %d rejected nothing of %d attacks", r, attempts[r])
		}
	}
	if badTags != 0 {
		t.Errorf("%d page messages failed their tag: only the outsider's connections should have failed", badTags)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 32<<20 {
		t.Errorf("the heap grew by %d MiB under the attack", grew>>20)
	}
	t.Logf("%d attacks, %d connections rejected", attempts[0]+attempts[1]+attempts[2], rejected)
}

// attack throws at the rank at addr, until stop, what an outsider without
// the secret can, and reports how many connections it tried. Whatever it
// does, it must never get a byte that depends on the secret: a server
// answers a hello with its own hello (nonce only), never with a proof.
func attack(t *testing.T, addr string, rank int, stop chan struct{}) int {
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	wrong := secParams{secret: secretOf(0xee), job: "mig"}
	n := 0
	for i := 0; ; i++ {
		select {
		case <-stop:
			return n
		default:
		}
		time.Sleep(time.Millisecond) // a steady stream, not a flood that starves the job of CPU
		c, err := net.DialTimeout("tcp4", addr, time.Second)
		if err != nil {
			continue // the rank is paused or the listener's backlog is full
		}
		n++
		c.SetDeadline(time.Now().Add(2 * time.Second))
		switch i % 6 {
		case 0: // idle, held: beyond the cap they are closed
			idle = append(idle, c)
			if len(idle) > 2*maxPreAuth {
				idle[0].Close()
				idle = idle[1:]
			}
			continue
		case 1: // a length prefix asking for 4 GiB
			c.Write([]byte{0xff, 0xff, 0xff, 0xff})
		case 2: // random bytes
			b := make([]byte, 4096)
			rand.Read(b)
			c.Write(b)
		case 3, 4: // a control connection or a page channel, claiming to be a peer, with the wrong secret
			kind := uint8(connControl)
			if i%6 == 4 {
				kind = connPage
			}
			from := (rank + 1) % 3
			if _, err := clientHandshake(c, wrong, kind, from, rank, "10.9.9.9:1", time.Now().Add(2*time.Second)); err == nil {
				t.Errorf("rank %d accepted a handshake with the wrong secret", rank)
			}
		case 5: // a well-formed hello, then a frame as if authenticated
			var hc [helloCLen]byte
			copy(hc[:], secMagic)
			hc[4], hc[5], hc[6] = secVersion, 'C', connControl
			binary.LittleEndian.PutUint32(hc[8:], uint32((rank+1)%3))
			binary.LittleEndian.PutUint32(hc[12:], uint32(rank))
			rand.Read(hc[16:])
			c.Write(hc[:])
			var hs [helloSLen]byte
			if _, err := io.ReadFull(c, hs[:]); err == nil {
				// In place of the announce and proof: a diff batch for
				// the rank's own page, padded to their length.
				f := appendFrame(nil, 1, &message{Type: mDiffBatch, ID: 1,
					Diffs: []diff{{Seg: 0, Page: uint32(rank), Data: []byte{0, 0, 8, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}}}})
				c.Write(append(f, make([]byte, announceLen+secProofLen-len(f))...))
				var st [1 + secProofLen]byte
				if _, err := io.ReadFull(c, st[:]); err == nil || !errors.Is(err, io.EOF) && !isReset(err) {
					t.Errorf("rank %d: after a forged handshake: %v, want the connection closed", rank, err)
				}
			}
		}
		c.Close()
	}
}

func isReset(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && !ne.Timeout() || errors.Is(err, io.ErrUnexpectedEOF)
}
