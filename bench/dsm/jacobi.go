package main

import (
	"fmt"
	"time"

	"dsmigrate/dsmshm"
	"dsmigrate/examples/jacobi/grid"
	mrt "dsmigrate/runtime"
)

// The Jacobi kernel is examples/jacobi's own (package grid): the DSM and the
// plain-slice runs call the very same Sweep.

// initGrid is grid.SetBoundary plus a non-uniform interior for item 4, so that
// every sweep changes every cell it writes from the first iteration on:
// the traffic measured is then that of the steady state, not that of a grid
// whose lower part is still all zeros (where writes produce empty diffs).
func initGrid(g []float64, n int) {
	for i := 1; i < n-1; i++ {
		for j := 1; j < n-1; j++ {
			g[i*n+j] = float64((i*31+j*17)%97) / 97
		}
	}
	grid.SetBoundary(g, n)
}

// jacobi1Rep is one repetition of item 3: Iters sweeps on one rank, DSM and
// plain, from the same initial grid.
type jacobi1Rep struct {
	DSMNs, PlainNs                 int64
	WriteFaults, ReadFaults, Twins uint64
	Barriers                       uint64
}

type jacobi1Result struct {
	N, Iters, Warm int
	Reps           []jacobi1Rep
}

// runJacobi1 is item 3: the example's loop (sweep + barrier per iteration)
// on a one-rank job, next to the same sweeps over plain Go slices, in the
// same process, alternating which goes first.
func runJacobi1(p params) (_ any, retErr error) {
	node, err := dsmshm.Start()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := node.Close(); err != nil && retErr == nil {
			retErr = err
		}
	}()
	n, iters := p.N, p.Iters
	var grids, plain [2][]float64
	for i := range grids {
		seg, err := node.Alloc(fmt.Sprint("grid", i), n*n*8)
		if err != nil {
			return nil, err
		}
		grids[i] = dsmshm.View[float64](seg)
		plain[i] = make([]float64, n*n)
	}
	res := jacobi1Result{N: n, Iters: iters, Warm: p.Warm}
	for rep := range p.Warm + p.Reps {
		for i := range 2 {
			clear(grids[i])
			grid.SetBoundary(grids[i], n)
			clear(plain[i])
			grid.SetBoundary(plain[i], n)
		}
		if err := node.Barrier(0); err != nil {
			return nil, err
		}
		var r jacobi1Rep
		runPlain := func() {
			t0 := time.Now()
			for it := range iters {
				grid.Sweep(plain[it%2], plain[(it+1)%2], n, 1, n-1)
			}
			r.PlainNs = int64(time.Since(t0))
		}
		if rep%2 == 0 {
			runPlain()
		}
		s0 := node.Stats()
		t0 := time.Now()
		for it := range iters {
			grid.Sweep(grids[it%2], grids[(it+1)%2], n, 1, n-1)
			if err := node.Barrier(1); err != nil {
				return nil, err
			}
		}
		r.DSMNs = int64(time.Since(t0))
		s1 := node.Stats()
		if rep%2 == 1 {
			runPlain()
		}
		r.WriteFaults, r.ReadFaults, r.Twins, r.Barriers = s1.WriteFaults-s0.WriteFaults, s1.ReadFaults-s0.ReadFaults, s1.Twins-s0.Twins, s1.Barriers-s0.Barriers
		got, want := grids[iters%2], plain[iters%2]
		for i := range want {
			if got[i] != want[i] {
				return nil, fmt.Errorf("rep %d: DSM and plain grids differ at (%d,%d)", rep, i/n, i%n)
			}
		}
		if rep >= p.Warm {
			res.Reps = append(res.Reps, r)
		}
	}
	return res, nil
}

// jacobi4Window is one measured window of item 4 at one rank.
type jacobi4Window struct {
	Ns                                   int64
	Msgs, Bytes, Fetched, Served, Reqs   uint64 // Reqs: page requests (a request fetches a run of pages)
	Diffs, DiffBytes, WriteFaults, Twins uint64
}

type jacobi4Result struct {
	Rank, Size, N, Iters, Warm int
	Rows                       [2]int
	Windows                    []jacobi4Window
	Verified                   bool
	Encrypt                    bool   // the job's mode, as runtime.Self read it (item 5d)
	BadTags                    uint64 // Stats.BadTags at the end (should be 0)
}

// runJacobi4 is item 4: the example's Jacobi on every rank of the job;
// after Warm iterations, Reps windows of Iters iterations each record the
// rank's Stats deltas. Item 5d runs it again with and without encryption
// (p.Encrypt, put in the ranks' environment by runJob).
func runJacobi4(p params) (_ any, retErr error) {
	node, err := dsmshm.Start()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := node.Close(); err != nil && retErr == nil {
			retErr = err
		}
	}()
	n := p.N
	var grids [2][]float64
	for i := range grids {
		seg, err := node.Alloc(fmt.Sprint("grid", i), n*n*8)
		if err != nil {
			return nil, err
		}
		grids[i] = dsmshm.View[float64](seg)
	}
	rank, size := node.Rank(), node.Size()
	id, err := mrt.Self() // what dsmshm.Start read: the job's mode
	if err != nil {
		return nil, err
	}
	if rank == 0 {
		initGrid(grids[0], n)
		initGrid(grids[1], n)
	}
	if err := node.Barrier(0); err != nil {
		return nil, err
	}
	lo, hi := grid.Band(n, rank, size)
	it := 0
	step := func() error {
		grid.Sweep(grids[it%2], grids[(it+1)%2], n, lo, hi)
		it++
		return node.Barrier(1)
	}
	for range p.Warm {
		if err := step(); err != nil {
			return nil, err
		}
	}
	res := jacobi4Result{Rank: rank, Size: size, N: n, Iters: p.Iters, Warm: p.Warm, Rows: [2]int{lo, hi - 1}, Encrypt: id.Encrypt}
	// Control frames are counted by the goroutine that writes them, after
	// the write: a pause before each snapshot lets the counters settle.
	settle := func() dsmshm.Stats {
		time.Sleep(30 * time.Millisecond)
		return node.Stats()
	}
	s0 := settle()
	for range p.Reps {
		t0 := time.Now()
		for range p.Iters {
			if err := step(); err != nil {
				return nil, err
			}
		}
		d := time.Since(t0)
		s1 := settle()
		res.Windows = append(res.Windows, jacobi4Window{
			Ns: int64(d), Msgs: s1.MessagesSent - s0.MessagesSent, Bytes: s1.BytesSent - s0.BytesSent,
			Fetched: s1.PagesFetched - s0.PagesFetched, Served: s1.PagesServed - s0.PagesServed,
			Reqs:  s1.FetchRequests - s0.FetchRequests,
			Diffs: s1.Diffs - s0.Diffs, DiffBytes: s1.DiffBytes - s0.DiffBytes,
			WriteFaults: s1.WriteFaults - s0.WriteFaults, Twins: s1.Twins - s0.Twins,
		})
		s0 = s1
	}
	if rank == 0 { // the result must match a sequential run
		a, b := make([]float64, n*n), make([]float64, n*n)
		initGrid(a, n)
		initGrid(b, n)
		for range it {
			grid.Sweep(a, b, n, 1, n-1)
			a, b = b, a
		}
		got := grids[it%2]
		for i := range a {
			if got[i] != a[i] {
				return nil, fmt.Errorf("cell (%d,%d) = %v, sequential run says %v", i/n, i%n, got[i], a[i])
			}
		}
		res.Verified = true
	}
	res.BadTags = node.Stats().BadTags
	return res, nil
}
