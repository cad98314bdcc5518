// Command isort ranks and sorts integer keys on dsmshm shared memory, after
// the IS kernel TreadMarks was measured with. Sharing is deliberately fine
// grained: rank r writes its bucket counts into column r of an interleaved
// table (every page is written by every rank at once), and ranks scatter
// their keys into interleaved slots of the output. Both are false sharing
// that only a multiple-writer protocol handles without ping-pong. Rank 0
// checks the output against a sequential sort and prints
// "result: <checksum> verified".
//
// Run with dsmrun, e.g.: dsmrun run -n 4 -- isort -keys 65536
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"

	"dsmigrate/dsmshm"
)

func main() {
	nkeys := flag.Int("keys", 1<<16, "number of keys")
	maxKey := flag.Int("max", 2048, "keys are in [0, max)")
	iters := flag.Int("iters", 3, "times to rank the keys")
	flag.Parse()
	if err := run(*nkeys, *maxKey, *iters); err != nil {
		fmt.Fprintln(os.Stderr, "isort:", err)
		os.Exit(1)
	}
}

func run(nkeys, maxKey, iters int) (retErr error) {
	if nkeys < 1 || maxKey < 1 || iters < 1 {
		return fmt.Errorf("keys, max and iters must be positive")
	}
	node, err := dsmshm.Start()
	if err != nil {
		return err
	}
	defer func() {
		if err := node.Close(); err != nil && retErr == nil {
			retErr = err
		}
	}()
	rank, size := node.Rank(), node.Size()
	alloc := func(name string, n int) ([]int32, error) {
		seg, err := node.Alloc(name, n*4)
		if err != nil {
			return nil, err
		}
		return dsmshm.View[int32](seg), nil
	}
	keys, err := alloc("keys", nkeys)
	if err != nil {
		return err
	}
	counts, err := alloc("counts", maxKey*size) // counts[b*size+r]: rank r's keys in bucket b
	if err != nil {
		return err
	}
	out, err := alloc("out", nkeys)
	if err != nil {
		return err
	}
	lo, hi := rank*nkeys/size, (rank+1)*nkeys/size
	for it := range iters {
		if rank == 0 {
			r := rand.New(rand.NewPCG(uint64(it), 7))
			for i := range keys {
				keys[i] = int32(r.IntN(maxKey))
			}
		}
		if err := node.Barrier(0); err != nil {
			return err
		}
		local := make([]int32, maxKey)
		for _, k := range keys[lo:hi] {
			local[k]++
		}
		for b, c := range local {
			counts[b*size+rank] = c
		}
		if err := node.Barrier(1); err != nil {
			return err
		}
		// Where this rank's keys of each bucket start in the output.
		next := make([]int32, maxKey)
		var pos int32
		for b := range maxKey {
			for r := range size {
				if r == rank {
					next[b] = pos
				}
				pos += counts[b*size+r]
			}
		}
		for _, k := range keys[lo:hi] {
			out[next[k]] = k
			next[k]++
		}
		if err := node.Barrier(2); err != nil {
			return err
		}
	}
	st := node.Stats()
	fmt.Printf("rank %d: keys %d-%d, %d twins, %d diffs (%d bytes), %d pages fetched\n",
		rank, lo, hi-1, st.Twins, st.Diffs, st.DiffBytes, st.PagesFetched)
	if rank != 0 {
		return nil
	}
	want := slices.Clone(keys)
	slices.Sort(want)
	var sum int64
	for i := range want {
		if out[i] != want[i] {
			return fmt.Errorf("out[%d] = %d, sequential sort says %d", i, out[i], want[i])
		}
		sum += int64(out[i]) * int64(i%1000+1)
	}
	fmt.Printf("result: %d verified\n", sum)
	return nil
}
