package dsmshm

import (
	"encoding/binary"
	"testing"
)

// A read fault fetches the run of invalid pages that follow the faulting
// one, share its home and were used here before, up to fetchRunMax pages,
// in one round trip: the run ends at a page already valid, at another
// home, at a page this rank never needed, and at the most pages; the pages
// after the faulting one are then read without a fault. With a fetch run
// of 1 every page is a round trip of its own. Either way every page holds
// what its home wrote.
func TestFetchRun(t *testing.T) {
	for _, run := range []int{fetchRunMax, 1} {
		nodes := startMem(t, 2)
		nodes[1].SetFetchRun(run)
		segs := allocAll(t, nodes, "runs", 40*pageSize) // pages 0-19 homed at rank 0, 20-39 at rank 1
		if segs[0].Home(19*pageSize) != 0 || segs[0].Home(20*pageSize) != 1 {
			t.Fatal("pages 0-19 are not rank 0's, 20-39 not rank 1's")
		}
		home, reader := segs[0].Bytes(), segs[1].Bytes()
		write := func(v uint64) {
			for p := range 20 {
				binary.LittleEndian.PutUint64(home[p*pageSize:], uint64(p)+v)
			}
			if err := each(nodes, func(n *Node) error { return n.Barrier(0) }); err != nil {
				t.Fatal(err)
			}
		}
		// reads reads the first word of pages in order and checks it,
		// and says how many read faults, requests and pages fetched that
		// took.
		reads := func(v uint64, pages ...int) (faults, reqs, fetched uint64) {
			s0 := nodes[1].Stats()
			for _, p := range pages {
				if got := binary.LittleEndian.Uint64(reader[p*pageSize:]); got != uint64(p)+v {
					t.Errorf("run %d: page %d reads %d, want %d", run, p, got, uint64(p)+v)
				}
			}
			s1 := nodes[1].Stats()
			return s1.ReadFaults - s0.ReadFaults, s1.FetchRequests - s0.FetchRequests, s1.PagesFetched - s0.PagesFetched
		}
		// Nothing used yet: a page at a time. Page 12 is never read.
		write(100)
		var first []int
		for p := range 20 {
			if p != 12 {
				first = append(first, p)
			}
		}
		if f, q, n := reads(100, first...); f != 19 || q != 19 || n != 19 {
			t.Errorf("run %d, first reads: %d faults, %d requests, %d pages; want 19 of each", run, f, q, n)
		}
		// 18-19 (20 is rank 1's own), 0-7 (the most), 8-11 (12 was never
		// used), 16-17 (18 is valid), and 12, demanded, with 13-15.
		// With a run of 1, those five pages, then the fifteen others.
		write(200)
		want, pages, rest := uint64(5), uint64(20), uint64(0)
		if run == 1 {
			pages, rest = 5, 15
		}
		if f, q, n := reads(200, 18, 0, 8, 16, 12); f != want || q != want || n != pages {
			t.Errorf("run %d, runs: %d faults, %d requests, %d pages; want %d, %d, %d", run, f, q, n, want, want, pages)
		}
		if f, q, _ := reads(200, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19); f != rest || q != rest {
			t.Errorf("run %d: reading all the pages then took %d faults, %d requests; want %d", run, f, q, rest)
		}
		if err := each(nodes, (*Node).Close); err != nil {
			t.Fatal(err)
		}
	}
}
