// Command tsp solves a small travelling salesman problem by branch and bound
// on dsmshm shared memory. Rank 0 fills a shared queue of partial tours; all
// ranks take work from it under lock 0 and publish better tours under lock 1,
// pruning with the best length found so far by any rank. Rank 0 checks the
// optimum against a sequential search and prints "result: <length> verified".
//
// Run with dsmrun, e.g.: dsmrun run -n 4 -- tsp -cities 11
package main

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"

	"dsmigrate/dsmshm"
)

const (
	lockQueue = 0
	lockBest  = 1
	depth     = 3 // cities fixed in a queued partial tour, city 0 included
)

// Layout of the shared int64 array.
const (
	idxHead  = 0 // next job to take
	idxJobs  = 1 // number of jobs
	idxBest  = 2 // best tour length so far
	idxTour  = 3 // best tour, maxCities entries
	idxQueue = idxTour + maxCities
)

const maxCities = 16

func main() {
	cities := flag.Int("cities", 11, "number of cities (4-16)")
	seed := flag.Uint64("seed", 1, "seed for city positions")
	flag.Parse()
	if err := run(*cities, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "tsp:", err)
		os.Exit(1)
	}
}

func run(n int, seed uint64) (retErr error) {
	if n < depth+1 || n > maxCities {
		return fmt.Errorf("cities must be in %d..%d", depth+1, maxCities)
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
	dist := distances(n, seed)
	jobs := (n - 1) * (n - 2)
	seg, err := node.Alloc("tsp", (idxQueue+jobs*depth)*8)
	if err != nil {
		return err
	}
	sh := dsmshm.View[int64](seg)
	if node.Rank() == 0 {
		sh[idxBest] = math.MaxInt64
		sh[idxJobs] = int64(jobs)
		q := sh[idxQueue:]
		for a := 1; a < n; a++ {
			for b := 1; b < n; b++ {
				if a != b {
					q[0], q[1], q[2] = 0, int64(a), int64(b)
					q = q[depth:]
				}
			}
		}
	}
	if err := node.Barrier(0); err != nil {
		return err
	}
	taken := 0
	for {
		job, best, err := take(node, sh)
		if err != nil {
			return err
		}
		if job < 0 {
			break
		}
		taken++
		prefix := make([]int, depth)
		for i := range depth {
			prefix[i] = int(sh[idxQueue+job*depth+i])
		}
		s := newSearch(dist, prefix, best)
		s.improved = func(length int64, tour []int) error { return publish(node, sh, length, tour, s) }
		if err := s.run(); err != nil {
			return err
		}
	}
	if err := node.Barrier(1); err != nil {
		return err
	}
	st := node.Stats()
	fmt.Printf("rank %d: %d jobs, %d lock acquires, %d pages fetched, lock wait %v\n",
		node.Rank(), taken, st.LockAcquires, st.PagesFetched, st.LockWait)
	if node.Rank() != 0 {
		return nil
	}
	seq := newSearch(dist, []int{0}, math.MaxInt64)
	if err := seq.run(); err != nil {
		return err
	}
	tour := make([]int, n)
	for i := range n {
		tour[i] = int(sh[idxTour+i])
	}
	if got := sh[idxBest]; got != seq.best || tourLength(dist, tour) != got {
		return fmt.Errorf("parallel optimum %d (tour %v, length %d), sequential optimum %d",
			got, tour, tourLength(dist, tour), seq.best)
	}
	fmt.Printf("result: %d verified\n", sh[idxBest])
	return nil
}

// take pops a job from the shared queue and reads the current bound; job is
// -1 when the queue is empty.
func take(node *dsmshm.Node, sh []int64) (job int, best int64, err error) {
	if err := node.Lock(lockQueue); err != nil {
		return 0, 0, err
	}
	job = -1
	if h := sh[idxHead]; h < sh[idxJobs] {
		job = int(h)
		sh[idxHead] = h + 1
	}
	if err := node.Unlock(lockQueue); err != nil {
		return 0, 0, err
	}
	if err := node.Lock(lockBest); err != nil {
		return 0, 0, err
	}
	best = sh[idxBest]
	return job, best, node.Unlock(lockBest)
}

// publish records tour if it beats the shared best, and tightens the
// search's bound with whatever the shared best is.
func publish(node *dsmshm.Node, sh []int64, length int64, tour []int, s *search) error {
	if err := node.Lock(lockBest); err != nil {
		return err
	}
	if length < sh[idxBest] {
		sh[idxBest] = length
		for i, c := range tour {
			sh[idxTour+i] = int64(c)
		}
	}
	s.best = sh[idxBest]
	return node.Unlock(lockBest)
}

func distances(n int, seed uint64) [][]int64 {
	r := rand.New(rand.NewPCG(seed, 42))
	x, y := make([]float64, n), make([]float64, n)
	for i := range n {
		x[i], y[i] = r.Float64()*1000, r.Float64()*1000
	}
	d := make([][]int64, n)
	for i := range d {
		d[i] = make([]int64, n)
		for j := range d[i] {
			d[i][j] = int64(math.Round(math.Hypot(x[i]-x[j], y[i]-y[j])))
		}
	}
	return d
}

func tourLength(d [][]int64, tour []int) int64 {
	var l int64
	for i := range tour {
		l += d[tour[i]][tour[(i+1)%len(tour)]]
	}
	return l
}

// search is a depth-first branch and bound below a fixed prefix.
type search struct {
	d        [][]int64
	tour     []int
	used     []bool
	best     int64
	minOut   []int64 // cheapest edge out of each city, for the lower bound
	improved func(length int64, tour []int) error
}

func newSearch(d [][]int64, prefix []int, best int64) *search {
	n := len(d)
	s := &search{d: d, used: make([]bool, n), best: best, minOut: make([]int64, n)}
	for i := range n {
		s.minOut[i] = math.MaxInt64
		for j := range n {
			if i != j {
				s.minOut[i] = min(s.minOut[i], d[i][j])
			}
		}
	}
	for _, c := range prefix {
		s.tour = append(s.tour, c)
		s.used[c] = true
	}
	return s
}

func (s *search) run() error {
	var l int64
	for i := 1; i < len(s.tour); i++ {
		l += s.d[s.tour[i-1]][s.tour[i]]
	}
	return s.extend(l)
}

func (s *search) extend(length int64) error {
	n := len(s.d)
	last := s.tour[len(s.tour)-1]
	if len(s.tour) == n {
		total := length + s.d[last][s.tour[0]]
		if total < s.best {
			s.best = total
			if s.improved != nil {
				return s.improved(total, s.tour)
			}
		}
		return nil
	}
	bound := length + s.minOut[last]
	for c := range n {
		if !s.used[c] {
			bound += s.minOut[c]
		}
	}
	if bound >= s.best {
		return nil
	}
	for c := range n {
		if s.used[c] {
			continue
		}
		s.used[c] = true
		s.tour = append(s.tour, c)
		err := s.extend(length + s.d[last][c])
		s.tour = s.tour[:len(s.tour)-1]
		s.used[c] = false
		if err != nil {
			return err
		}
	}
	return nil
}
