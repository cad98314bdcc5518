package dsmshm

import (
	"sync/atomic"
	"testing"
)

// A home page nobody else holds stays writable across releases and needs no
// write notice; a fetch makes the home track its writes again.
func TestExclusiveHomePage(t *testing.T) {
	nodes := startMem(t, 2)
	segs := allocAll(t, nodes, "x", 2*pageSize) // page 1 homed at rank 1
	barrier := func() {
		t.Helper()
		if err := each(nodes, func(n *Node) error { return n.Barrier(0) }); err != nil {
			t.Fatal(err)
		}
	}
	x1, x0 := View[int64](segs[1]), View[int64](segs[0])
	const w = pageSize / 8 // first word of page 1
	// Every rank starts with a copy: the first write is tracked.
	x1[w] = 1
	if s := nodes[1].Stats(); s.WriteFaults != 1 {
		t.Fatalf("first home write: %d write faults, want 1", s.WriteFaults)
	}
	barrier() // notice for version 1; rank 0's copy is invalidated
	if st, _ := segs[1].c.pageState(1); st != stateRW {
		t.Fatalf("home page after release: state %d, want RW (exclusive)", st)
	}
	wn := nodes[0].Stats().WriteNotices
	for i := int64(2); i < 5; i++ {
		x1[w] = i // no fault, no notice
		barrier()
	}
	if s := nodes[1].Stats(); s.WriteFaults != 1 {
		t.Fatalf("writes to an exclusive page: %d write faults, want 1", s.WriteFaults)
	}
	if got := x0[w]; got != 4 {
		t.Fatalf("rank 0 reads %d, want 4", got)
	}
	if s := nodes[0].Stats(); s.PagesFetched != 1 || s.WriteNotices != wn {
		t.Fatalf("rank 0: %d fetches, %d notices (was %d); want 1 fetch, no new notice", s.PagesFetched, s.WriteNotices, wn)
	}
	// The fetch left the home's page writable, its copy kept: the home's
	// next write does not fault, and the release finds it by comparison.
	if st, _ := segs[1].c.pageState(1); st != stateRW {
		t.Fatalf("home page after a fetch: state %d, want RW (served while writable)", st)
	}
	x1[w] = 5
	if s := nodes[1].Stats(); s.WriteFaults != 1 {
		t.Fatalf("home write after a fetch: %d write faults, want 1", s.WriteFaults)
	}
	barrier()
	if got := x0[w]; got != 5 {
		t.Fatalf("rank 0 reads %d, want 5", got)
	}
	// A diff from rank 0 to an exclusive page makes it tracked too: rank 0
	// keeps its copy as the new version.
	x1[w] = 6   // tracked (rank 0 fetched it): fault, dirty
	barrier()   // exclusive again; rank 0's copy invalid
	x0[w+1] = 7 // fetch, twin
	barrier()   // diff applied at rank 1; rank 0 keeps its copy
	x1[w] = 8   // must fault: rank 0 holds a copy
	barrier()
	if got := x0[w]; got != 8 {
		t.Fatalf("rank 0 reads %d after its own diff and the home's write, want 8", got)
	}
	if got := x1[w+1]; got != 7 {
		t.Fatalf("home reads %d, want 7", got)
	}
}

// The page server serves an exclusive page while the home keeps writing it,
// with no synchronization in between: every write the copy lacks must reach
// the fetching rank after the next barrier.
func TestServeRacesHomeWrites(t *testing.T) {
	const rounds, words, passes = 40, pageSize / 8, 100
	nodes := startMem(t, 2)
	segs := allocAll(t, nodes, "race", 2*rounds*pageSize) // pages rounds.. homed at rank 1
	x1, x0 := View[uint64](segs[1]), View[uint64](segs[0])
	barrier := func() {
		t.Helper()
		if err := each(nodes, func(n *Node) error { return n.Barrier(0) }); err != nil {
			t.Fatal(err)
		}
	}
	for p := rounds; p < 2*rounds; p++ {
		x1[p*words] = 1 // every page becomes exclusive at the barrier
	}
	barrier()
	for r := range rounds {
		base := (rounds + r) * words
		var started, fetched atomic.Bool
		var last atomic.Uint64
		done := make(chan struct{})
		go func() { // rank 1's writer: before, during and after the fetch
			defer close(done)
			extra := 0
			for v := uint64(1); extra < passes; v++ {
				for i := range words {
					x1[base+i] = v
				}
				last.Store(v)
				started.Store(true)
				if fetched.Load() {
					extra++
				}
			}
		}()
		for !started.Load() {
		}
		v := x0[base] // rank 0 fetches while rank 1 writes
		fetched.Store(true)
		<-done
		if v > last.Load() {
			t.Fatalf("round %d: rank 0 read %d, which rank 1 never wrote", r, v)
		}
		barrier()
		for i := range words {
			if got := x0[base+i]; got != last.Load() {
				t.Fatalf("round %d word %d: rank 0 reads %d, want %d", r, i, got, last.Load())
			}
		}
	}
}

// The page server serves an exclusive page without write-protecting it,
// keeping its copy; the next release compares. A page the home did not
// write since is clean then: the copies stay valid (no notice, no fetch
// again), and the home's next write faults. A page the home wrote is
// flushed with a notice. A page the home wrote and then wrote back before
// the release looks unchanged, so a second copy served in between, which
// holds the intermediate value, must make it dirty then (rank 2 below), or
// rank 2 would keep that value. Both modes (an encrypting server seals the
// reply in place, not the copy it keeps).
func TestServedWhileWritable(t *testing.T) {
	for _, enc := range []bool{false, true} {
		name := "integrity"
		if enc {
			name = "encrypted"
		}
		t.Run(name, func(t *testing.T) { servedWhileWritable(t, enc) })
	}
}

func servedWhileWritable(t *testing.T, enc bool) {
	nodes := startMemEnc(t, 3, enc)
	segs := allocAll(t, nodes, "w", 6*pageSize) // pages 2, 3 homed at rank 1
	x := func(r int) []uint64 { return View[uint64](segs[r]) }
	const w2, w3 = 2 * pageSize / 8, 3 * pageSize / 8
	barrier := func() {
		t.Helper()
		if err := each(nodes, func(n *Node) error { return n.Barrier(0) }); err != nil {
			t.Fatal(err)
		}
	}
	read := func(r, w int, want uint64) {
		t.Helper()
		if got := x(r)[w]; got != want {
			t.Fatalf("rank %d reads %d at page %d, want %d", r, got, w*8/pageSize, want)
		}
	}
	for _, n := range nodes {
		n.SetFetchRun(1)
	}
	x(1)[w2], x(1)[w3] = 1, 1
	barrier() // both exclusive at rank 1; the others' copies invalid
	read(0, w2, 1)
	read(0, w3, 1)
	x(1)[w2] = 7 // served page 2, written: no fault
	if s := nodes[1].Stats(); s.WriteFaults != 2 {
		t.Fatalf("home: %d write faults, want 2 (the first writes only)", s.WriteFaults)
	}
	read(2, w2, 7) // a second copy, of what the home wrote since the first
	x(1)[w2] = 1   // written back: the page equals the first copy again
	fetched := nodes[0].Stats().PagesFetched
	barrier()
	read(0, w2, 1)
	read(2, w2, 1) // its copy held 7: it must have been invalidated
	read(0, w3, 1)
	if got := nodes[0].Stats().PagesFetched - fetched; got != 1 {
		t.Fatalf("rank 0 fetched %d pages after the barrier, want 1 (page 2; page 3 was not written)", got)
	}
	if st, _ := segs[1].c.pageState(3); st != stateRO {
		t.Fatalf("home page 3, served and unchanged at the release: state %d, want RO (clean)", st)
	}
	faults := nodes[1].Stats().WriteFaults
	x(1)[w3] = 2 // clean: tracked by a fault
	if got := nodes[1].Stats().WriteFaults; got != faults+1 {
		t.Fatalf("home write to the clean page: %d write faults, want %d", got, faults+1)
	}
	barrier()
	read(0, w3, 2)
	read(2, w3, 2)
}

// Writes to an exclusive home page before a lock release reach the next
// holder of the lock, even though no notice was sent for them.
func TestExclusivePageUnderLocks(t *testing.T) {
	nodes := startMem(t, 3)
	segs := allocAll(t, nodes, "l", 3*pageSize) // page i homed at rank i
	x := func(r int) []int64 { return View[int64](segs[r]) }
	const w = 2 * pageSize / 8 // page 2, homed at rank 2
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := int64(1); i <= 20; i++ {
		must(nodes[2].Lock(1))
		x(2)[w] = x(2)[w] + 1 // the home
		must(nodes[2].Unlock(1))
		r := int(i % 2)
		must(nodes[r].Lock(1))
		if got := x(r)[w]; got != 2*i-1 {
			t.Fatalf("iteration %d: rank %d reads %d, want %d", i, r, got, 2*i-1)
		}
		x(r)[w]++
		must(nodes[r].Unlock(1))
	}
	must(nodes[2].Lock(1))
	if got := x(2)[w]; got != 40 {
		t.Fatalf("home reads %d, want 40", got)
	}
	must(nodes[2].Unlock(1))
}

// A single rank never faults and does no protection work at barriers.
func TestSingleRankNoFaults(t *testing.T) {
	nodes := startMem(t, 1)
	segs := allocAll(t, nodes, "one", 64*pageSize)
	b := segs[0].Bytes()
	for i := range 10 {
		for p := range 64 {
			b[p*pageSize] = byte(i)
		}
		if err := nodes[0].Barrier(0); err != nil {
			t.Fatal(err)
		}
	}
	if s := nodes[0].Stats(); s.WriteFaults != 0 || s.ReadFaults != 0 || s.WriteNotices != 0 {
		t.Fatalf("one rank: %d write faults, %d read faults, %d notices; want none", s.WriteFaults, s.ReadFaults, s.WriteNotices)
	}
}
