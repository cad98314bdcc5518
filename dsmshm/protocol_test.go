package dsmshm

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
)

func TestTwinAndDiffReachHome(t *testing.T) {
	nodes := startMem(t, 2)
	segs := allocAll(t, nodes, "a", 2*pageSize) // page 0 homed at 0, page 1 at 1
	if segs[0].Home(0) != 0 || segs[0].Home(pageSize) != 1 {
		t.Fatalf("homes = %d, %d; want 0, 1", segs[0].Home(0), segs[0].Home(pageSize))
	}
	segs[1].Bytes()[10] = 42 // write fault, twin, on a page homed at rank 0
	if st, _ := segs[1].c.pageState(0); st != stateRW {
		t.Fatalf("page state after write = %d, want RW", st)
	}
	s1 := nodes[1].Stats()
	if s1.WriteFaults != 1 || s1.Twins != 1 {
		t.Fatalf("rank 1: write faults %d twins %d, want 1 1", s1.WriteFaults, s1.Twins)
	}
	if err := each(nodes, func(n *Node) error { return n.Barrier(0) }); err != nil {
		t.Fatal(err)
	}
	if got := segs[0].Bytes()[10]; got != 42 {
		t.Fatalf("home sees %d, want 42", got)
	}
	s1, s0 := nodes[1].Stats(), nodes[0].Stats()
	if s1.Diffs != 1 || s1.DiffBytes != 5 || s0.DiffsApplied != 1 {
		t.Fatalf("diffs %d (%d bytes), applied %d; want 1 (5 bytes: one run of one byte), 1",
			s1.Diffs, s1.DiffBytes, s0.DiffsApplied)
	}
	if st, _ := segs[1].c.pageState(0); st != stateRO {
		t.Fatalf("writer's page state after release = %d, want RO", st)
	}
}

func TestHomeWritesNeedNoTwin(t *testing.T) {
	nodes := startMem(t, 2)
	segs := allocAll(t, nodes, "a", 2*pageSize)
	_ = segs[1].Bytes()[pageSize+5] // rank 1 caches nothing new: page 1 is its own
	segs[1].Bytes()[pageSize+5] = 7
	if s := nodes[1].Stats(); s.Twins != 0 || s.WriteFaults != 1 {
		t.Fatalf("home write: twins %d write faults %d, want 0 1", s.Twins, s.WriteFaults)
	}
	_ = segs[0].Bytes()[pageSize+5] // rank 0 has a read-only copy (version 0)
	if err := each(nodes, func(n *Node) error { return n.Barrier(0) }); err != nil {
		t.Fatal(err)
	}
	if st, _ := segs[0].c.pageState(1); st != stateInvalid {
		t.Fatalf("stale copy state = %d, want invalid after the write notice", st)
	}
	if got := segs[0].Bytes()[pageSize+5]; got != 7 {
		t.Fatalf("rank 0 reads %d, want 7", got)
	}
	if s := nodes[0].Stats(); s.PagesFetched != 1 || s.ReadFaults != 1 || s.Invalidations != 1 {
		t.Fatalf("rank 0: fetched %d, read faults %d, invalidations %d; want 1 1 1",
			s.PagesFetched, s.ReadFaults, s.Invalidations)
	}
}

// Ranks writing different bytes of one page must not lose each other's
// updates and must not ping-pong the page: each makes one twin and one diff.
func TestMultipleWritersOnePage(t *testing.T) {
	const size = 4
	nodes := startMem(t, size)
	segs := allocAll(t, nodes, "shared", pageSize) // one page, homed at rank 0
	for round := 1; round <= 5; round++ {
		if err := each(nodes, func(n *Node) error {
			b := segs[n.Rank()].Bytes()
			for i := n.Rank(); i < pageSize; i += size {
				b[i] = byte(round*10 + n.Rank())
			}
			return n.Barrier(round)
		}); err != nil {
			t.Fatal(err)
		}
		for r, s := range segs {
			b := s.Bytes()
			for i := range pageSize {
				if want := byte(round*10 + i%size); b[i] != want {
					t.Fatalf("round %d rank %d byte %d = %d, want %d", round, r, i, b[i], want)
				}
			}
		}
	}
	for r, n := range nodes {
		st := n.Stats()
		if r != 0 && (st.Twins != 5 || st.Diffs != 5) {
			t.Errorf("rank %d: twins %d diffs %d, want 5 5", r, st.Twins, st.Diffs)
		}
		if st.PagesFetched > 10 {
			t.Errorf("rank %d fetched %d pages in 5 rounds: ping-pong", r, st.PagesFetched)
		}
	}
}

// Updates made under a lock are seen by the next holder, transitively:
// A's write before releasing L1 is visible to C, which synchronized with A
// only through B (L1 then L2).
func TestLockTransitivity(t *testing.T) {
	nodes := startMem(t, 3)
	segs := allocAll(t, nodes, "x", 3*pageSize)
	a, b, c := nodes[0], nodes[1], nodes[2]
	x := View[int64](segs[0])
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.Lock(1))
	x[pageSize/8*2] = 100 // page 2, homed at rank 2
	must(a.Unlock(1))

	xb := View[int64](segs[1])
	must(b.Lock(1))
	if xb[pageSize/8*2] != 100 {
		t.Fatalf("B sees %d, want 100", xb[pageSize/8*2])
	}
	must(b.Lock(2))
	xb[1] = 200 // page 0, homed at rank 0
	must(b.Unlock(2))
	must(b.Unlock(1))

	xc := View[int64](segs[2])
	must(c.Lock(2))
	if xc[1] != 200 || xc[pageSize/8*2] != 100 {
		t.Fatalf("C sees %d, %d; want 200, 100", xc[1], xc[pageSize/8*2])
	}
	must(c.Unlock(2))
}

func TestLockCounter(t *testing.T) {
	const size, iters = 4, 50
	nodes := startMem(t, size)
	segs := allocAll(t, nodes, "counter", 8)
	if err := each(nodes, func(n *Node) error {
		v := View[int64](segs[n.Rank()])
		for range iters {
			if err := n.Lock(7); err != nil {
				return err
			}
			v[0]++
			if err := n.Unlock(7); err != nil {
				return err
			}
		}
		return n.Barrier(0)
	}); err != nil {
		t.Fatal(err)
	}
	for r, s := range segs {
		if got := View[int64](s)[0]; got != size*iters {
			t.Errorf("rank %d: counter %d, want %d", r, got, size*iters)
		}
	}
}

// A page written locally and not yet released must survive an acquire whose
// notices invalidate it (another rank wrote other bytes of the same page).
func TestDirtyPageSurvivesAcquire(t *testing.T) {
	nodes := startMem(t, 3)
	segs := allocAll(t, nodes, "p", pageSize) // homed at rank 0
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(nodes[1].Lock(0))
	segs[1].Bytes()[0] = 1
	must(nodes[1].Unlock(0))

	segs[2].Bytes()[100] = 2 // dirty, unreleased
	must(nodes[2].Lock(0))   // learns rank 1's notice for the same page
	if b := segs[2].Bytes(); b[0] != 1 || b[100] != 2 {
		t.Fatalf("rank 2 sees %d, %d; want 1, 2", b[0], b[100])
	}
	must(nodes[2].Unlock(0))
	must(each(nodes, func(n *Node) error { return n.Barrier(0) }))
	if b := segs[0].Bytes(); b[0] != 1 || b[100] != 2 {
		t.Fatalf("home sees %d, %d; want 1, 2", b[0], b[100])
	}
}

// Write notices are kept per page, not per interval: however many
// synchronizations a run makes, a rank's and a lock manager's notice sets
// hold at most one entry per page.
func TestNoticesAreCollected(t *testing.T) {
	const pages = 8
	nodes := startMem(t, 2)
	segs := allocAll(t, nodes, "gc", pages*pageSize)
	if err := each(nodes, func(n *Node) error {
		b := segs[n.Rank()].Bytes()
		for i := range 300 {
			if err := n.Lock(3); err != nil {
				return err
			}
			b[(i%pages)*pageSize+n.Rank()]++
			if err := n.Unlock(3); err != nil {
				return err
			}
		}
		return n.Barrier(1)
	}); err != nil {
		t.Fatal(err)
	}
	for r, n := range nodes {
		if got := n.Stats().WriteNotices; got > pages {
			t.Errorf("rank %d holds %d notices for %d pages", r, got, pages)
		}
	}
	mgr := nodes[1].locks[3] // lock 3 is managed by rank 3 mod 2
	if got := mgr.notices.len(); got > pages {
		t.Errorf("lock manager holds %d notices for %d pages", got, pages)
	}
	for p := range pages {
		b := segs[0].Bytes()
		if b[p*pageSize] == 0 || b[p*pageSize+1] == 0 {
			t.Fatalf("page %d lost updates: %v", p, b[p*pageSize:p*pageSize+2])
		}
	}
	var sum int
	for p := range pages {
		sum += int(segs[1].Bytes()[p*pageSize]) + int(segs[1].Bytes()[p*pageSize+1])
	}
	if sum != 600 {
		t.Fatalf("sum of increments = %d, want 600", sum)
	}
}

func TestAllocMismatch(t *testing.T) {
	nodes := startMem(t, 2)
	var fails atomic.Int32
	each(nodes, func(n *Node) error {
		_, err := n.Alloc(fmt.Sprint("seg", n.Rank()), pageSize)
		if err != nil && strings.Contains(err.Error(), "disagree") {
			fails.Add(1)
		}
		return nil
	})
	if fails.Load() != 2 {
		t.Fatalf("%d ranks reported the mismatch, want 2", fails.Load())
	}
}

func TestAllocTooLarge(t *testing.T) {
	nodes := startMem(t, 1)
	_, err := nodes[0].Alloc("huge", 1<<40)
	if err == nil || !strings.Contains(err.Error(), "vm.max_map_count") {
		t.Fatalf("Alloc of 1 TiB: %v, want an error naming vm.max_map_count", err)
	}
}

func TestRetain(t *testing.T) {
	p, r := retain([]uint32{1, 2, 5, 9}, []uint64{10, 20, 50, 90}, []uint32{2, 9})
	if fmt.Sprint(p, r) != "[2 9] [20 90]" {
		t.Fatalf("retain = %v %v", p, r)
	}
}

func TestUnlockNotHeld(t *testing.T) {
	nodes := startMem(t, 1)
	if err := nodes[0].Unlock(5); err == nil {
		t.Fatal("Unlock of a lock never taken succeeded")
	}
	if err := nodes[0].Lock(5); err != nil {
		t.Fatal(err)
	}
	if err := nodes[0].Unlock(5); err != nil {
		t.Fatal(err)
	}
	if err := nodes[0].Unlock(5); err == nil {
		t.Fatal("second Unlock succeeded")
	}
}

func TestCallsAfterClose(t *testing.T) {
	nodes := startMem(t, 1)
	n := nodes[0]
	seg, err := n.Alloc("a", pageSize)
	if err != nil {
		t.Fatal(err)
	}
	seg.Bytes()[0] = 1
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Alloc("b", pageSize); !errors.Is(err, ErrClosed) {
		t.Errorf("Alloc after Close: %v", err)
	}
	if err := n.Lock(1); !errors.Is(err, ErrClosed) {
		t.Errorf("Lock after Close: %v", err)
	}
	if err := n.Barrier(1); !errors.Is(err, ErrClosed) {
		t.Errorf("Barrier after Close: %v", err)
	}
	if err := seg.Prepare(0, 1, true); !errors.Is(err, ErrClosed) {
		t.Errorf("Prepare after Close: %v", err)
	}
	// A single rank's pages are always writable: the write above took no
	// fault. Stats after Close report the counters as of Close.
	if st := n.Stats(); st.WriteFaults != 0 || st.Barriers != 3 {
		t.Errorf("Stats after Close: %+v", st)
	}
}

// A message naming pages that do not exist is an error, not a crash.
func TestBadNoticeIsAnError(t *testing.T) {
	nodes := startMem(t, 1)
	if _, err := nodes[0].Alloc("a", pageSize); err != nil {
		t.Fatal(err)
	}
	n := nodes[0]
	n.syncMu.Lock()
	defer n.syncMu.Unlock()
	for _, ns := range [][]notice{
		{{Seg: 0, Page: 1, Ver: 1}},
		{{Seg: 5, Page: 0, Ver: 1}},
	} {
		if err := n.acquireLocked(ns); err == nil {
			t.Errorf("notices %v accepted", ns)
		}
	}
}

func TestAllocDuplicateName(t *testing.T) {
	nodes := startMem(t, 2)
	allocAll(t, nodes, "same", pageSize)
	if err := each(nodes, func(n *Node) error {
		_, err := n.Alloc("same", pageSize)
		return err
	}); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("second Alloc of one name: %v", err)
	}
}
