package dsmshm

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// hangGuard bounds steps that used to hang for good. It is generous: the
// steps take milliseconds, even on a loaded machine.
const hangGuard = 2 * time.Minute

// Two ranks prepare ranges that cover each other's pages at the same time:
// the documented pattern (after the final barrier every rank prepares the
// segment and writes its result). Prepare used to lock its whole range,
// pages homed at its own rank included, and fetch the others' pages with
// every lock held; each rank's page server then waited for a lock its own
// rank's Prepare held, while that Prepare waited for the other page server.
func TestPrepareCoveringEachOther(t *testing.T) {
	t.Run("socketpair", func(t *testing.T) { prepareCovering(t, startMem(t, 2)) })
	t.Run("tcp", func(t *testing.T) {
		nodes, _ := startTCP(t, 2)
		t.Cleanup(func() { each(nodes, (*Node).Close) })
		prepareCovering(t, nodes)
	})
}

func prepareCovering(t *testing.T, nodes []*Node) {
	const pages, rounds = 256, 10 // pages 0-127 homed at rank 0, 128-255 at rank 1
	segs := allocAll(t, nodes, "prep", pages*pageSize)
	done := make(chan error, 1)
	go func() {
		done <- each(nodes, func(n *Node) error {
			err := prepareRounds(n, segs[n.Rank()], pages, rounds)
			if err != nil {
				for _, o := range nodes {
					o.fail(err) // the other ranks must not wait for this one
				}
			}
			return err
		})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(hangGuard):
		// Not t.Fatal, nor a panic here (the test's cleanups run after
		// either): Close would wait for the Prepare calls stuck in C, and
		// the run would hang silently until the test timeout. A panic on
		// another goroutine ends the process at once, saying why.
		go func() {
			panic(fmt.Sprintf("Prepare on two ranks covering each other's pages made no progress in %v: deadlock", hangGuard))
		}()
		select {}
	}
	for r, s := range segs {
		b := s.Bytes()
		for p := range pages {
			if b[p*pageSize+1] != rounds || b[p*pageSize+2] != rounds {
				t.Fatalf("rank %d: page %d results %d %d, want %d %d", r, p, b[p*pageSize+1], b[p*pageSize+2], rounds, rounds)
			}
		}
	}
}

func prepareRounds(n *Node, s *Segment, pages, rounds int) error {
	b := s.Bytes()
	for round := 1; round <= rounds; round++ {
		// Each rank writes its own pages; after the barrier its copies of
		// the other rank's pages are invalid.
		for p := range pages {
			if s.Home(p*pageSize) == n.Rank() {
				b[p*pageSize] = byte(round)
			}
		}
		if err := n.Barrier(2 * round); err != nil {
			return err
		}
		// Both ranks at once: prepare everything (as for a system call).
		write := round%2 == 0
		if err := s.Prepare(0, s.Len(), write); err != nil {
			return fmt.Errorf("rank %d round %d: %w", n.Rank(), round, err)
		}
		for p := range pages {
			if b[p*pageSize] != byte(round) {
				return fmt.Errorf("rank %d round %d: page %d holds %d after Prepare", n.Rank(), round, p, b[p*pageSize])
			}
			if write { // the result: a byte of every page per rank
				b[p*pageSize+1+n.Rank()] = byte(round)
			}
		}
		if err := n.Barrier(2*round + 1); err != nil {
			return err
		}
	}
	return nil
}

// guarded runs f, failing the test if it has not returned within hangGuard.
func guarded(t *testing.T, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(hangGuard):
		t.Fatalf("%s did not return within %v", what, hangGuard)
		return nil
	}
}

// breakPageChannels breaks the page channels between rank 1 and its peers
// the way a failed request does (the peer resets, or the page I/O timeout
// expires): rank 1 closes the channels it fetches over and its page server
// closes those it serves.
func breakPageChannels(n *Node) {
	n.c.pause()
	n.c.unpause()
}

// A page channel that failed once used to stay closed: every later fetch
// from that home failed (Prepare returned an error, a fault aborted the
// process) once the dial timeout had passed, although the home was alive.
// Now the next use redials it.
func TestBrokenPageChannelIsRedialled(t *testing.T) {
	nodes, _ := startTCPWith(t, 2, 20*time.Second, 0)
	t.Cleanup(func() { each(nodes, (*Node).Close) })
	segs := allocAll(t, nodes, "redial", 2*pageSize) // page r homed at rank r
	publish := func(round int) {
		t.Helper()
		if err := each(nodes, func(n *Node) error {
			segs[n.Rank()].Bytes()[n.Rank()*pageSize] = byte(round)
			return n.Barrier(round) // the other rank's copy is invalid now
		}); err != nil {
			t.Fatal(err)
		}
	}
	other := func(n *Node) int { return (1 - n.Rank()) * pageSize }

	publish(1)
	breakPageChannels(nodes[1])
	err := guarded(t, "Prepare over a broken page channel", func() error {
		return each(nodes, func(n *Node) error {
			s := segs[n.Rank()]
			if err := s.Prepare(other(n), pageSize, false); err != nil {
				return fmt.Errorf("rank %d: %w", n.Rank(), err)
			}
			if got := s.Bytes()[other(n)]; got != 1 {
				return fmt.Errorf("rank %d reads %d, want 1", n.Rank(), got)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}

	// Faults, not only Prepare: a failure here would abort the process.
	publish(2)
	breakPageChannels(nodes[1])
	err = guarded(t, "a fault over a broken page channel", func() error {
		return each(nodes, func(n *Node) error {
			if got := segs[n.Rank()].Bytes()[other(n)]; got != 2 {
				return fmt.Errorf("rank %d reads %d, want 2", n.Rank(), got)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	publish(3)
}

// When a broken page channel cannot be redialled because the home is
// really unreachable, the retry ends after the dial timeout with an error
// that says so, and Prepare returns it.
func TestPageChannelToUnreachableHome(t *testing.T) {
	nodes, _ := startTCPWith(t, 2, 2*time.Second, 0)
	t.Cleanup(func() { each(nodes, (*Node).Close) })
	segs := allocAll(t, nodes, "gone", 2*pageSize)
	if err := each(nodes, func(n *Node) error {
		segs[n.Rank()].Bytes()[n.Rank()*pageSize] = 1
		return n.Barrier(1)
	}); err != nil {
		t.Fatal(err)
	}
	// Rank 0 now finds rank 1 at an address where nothing listens (its
	// control connection stays up), and its page channel to rank 1 breaks.
	ln, err := listenConfig().Listen(t.Context(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	p := nodes[0].tcp.peers[1]
	p.mu.Lock()
	p.addr = dead
	p.mu.Unlock()
	breakPageChannels(nodes[1])
	err = guarded(t, "Prepare with an unreachable home", func() error {
		return segs[0].Prepare(pageSize, pageSize, false)
	})
	if err == nil || !strings.Contains(err.Error(), "page channel to rank 1") || !strings.Contains(err.Error(), dead) {
		t.Fatalf("Prepare with the home unreachable: %v; want an error naming the page channel to rank 1 and %s", err, dead)
	}
	t.Logf("Prepare: %v", err)
}

// Alloc is collective, but each rank checks the mapping budget against its
// own process: near the limit one rank may refuse while the others would
// not. All ranks must then refuse together (they used to wait for the
// refusing rank in the allocation barrier), and nothing of the segment may
// stay registered, so that a retry with the same name succeeds.
func TestAllocRefusedByOneRank(t *testing.T) {
	t.Run("socketpair", func(t *testing.T) { allocRefusedByOne(t, startMem(t, 2)) })
	t.Run("tcp", func(t *testing.T) {
		nodes, _ := startTCP(t, 2)
		t.Cleanup(func() { each(nodes, (*Node).Close) })
		allocRefusedByOne(t, nodes)
	})
}

func allocRefusedByOne(t *testing.T, nodes []*Node) {
	// Rank 1 counts more pages allocated than the kernel allows mappings,
	// so its budget check refuses, as in a process near the limit; rank
	// 0's passes.
	const extra = 1 << 31
	nodes[1].syncMu.Lock()
	nodes[1].allocs += extra
	nodes[1].syncMu.Unlock()
	_, errs := allocGuarded(t, nodes, "near", 16*pageSize)
	for r, err := range errs {
		if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "rank 1") {
			t.Errorf("rank %d: Alloc: %v; want ErrTooLarge naming rank 1", r, err)
		}
	}
	nodes[1].syncMu.Lock()
	nodes[1].allocs -= extra
	nodes[1].syncMu.Unlock()
	for _, n := range nodes {
		n.segMu.RLock()
		got := len(n.segs)
		n.segMu.RUnlock()
		if got != 0 {
			t.Errorf("rank %d keeps %d segments after a refused Alloc, want 0", n.Rank(), got)
		}
	}

	// The program handles the error and retries: same name, now it fits.
	segs, errs := allocGuarded(t, nodes, "near", 16*pageSize)
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("Alloc retried after a refusal: %v", err)
	}
	if err := each(nodes, func(n *Node) error {
		View[int64](segs[n.Rank()])[(1-n.Rank())*8*pageSize/8] = int64(10 + n.Rank()) // a page homed at the other rank
		return n.Barrier(1)
	}); err != nil {
		t.Fatal(err)
	}
	for r, s := range segs {
		v := View[int64](s)
		if v[8*pageSize/8] != 10 || v[0] != 11 {
			t.Errorf("rank %d sees %d %d, want 10 11", r, v[8*pageSize/8], v[0])
		}
	}
}

// A failed Alloc (here: the ranks' calls disagree) leaves nothing
// registered: the same names can be allocated afterwards.
func TestAllocRetryAfterMismatch(t *testing.T) {
	nodes := startMem(t, 2)
	if err := each(nodes, func(n *Node) error {
		_, err := n.Alloc(fmt.Sprint("seg", n.Rank()), pageSize)
		if err == nil || !strings.Contains(err.Error(), "disagree") {
			return fmt.Errorf("rank %d: mismatched Alloc: %v, want a disagreement", n.Rank(), err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"seg0", "seg1"} {
		segs, errs := allocGuarded(t, nodes, name, pageSize)
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("Alloc(%q) after the failed one: %v", name, err)
		}
		if segs[0].id != segs[1].id {
			t.Fatalf("%s: segment ids %d and %d differ", name, segs[0].id, segs[1].id)
		}
	}
}

// allocGuarded calls Alloc on every rank at once and returns what each got.
// Ranks that disagree on the outcome wait in the allocation barrier for the
// one that left it: after hangGuard the nodes are failed, and the test with
// them.
func allocGuarded(t *testing.T, nodes []*Node, name string, size int) ([]*Segment, []error) {
	t.Helper()
	segs := make([]*Segment, len(nodes))
	errs := make([]error, len(nodes))
	done := make(chan struct{})
	go func() {
		each(nodes, func(n *Node) error {
			segs[n.Rank()], errs[n.Rank()] = n.Alloc(name, size)
			return nil
		})
		close(done)
	}()
	select {
	case <-done:
		return segs, errs
	case <-time.After(hangGuard):
		for _, n := range nodes {
			n.fail(errors.New("test: Alloc hung"))
		}
		<-done
		t.Fatalf("Alloc(%q, %d) did not return on every rank within %v: the ranks did not decide together: %v",
			name, size, hangGuard, errs)
		return nil, nil
	}
}
