// Command matmul multiplies two square matrices on dsmshm shared memory.
// Rank 0 fills A and B; every rank computes a band of rows of C. Rank 0
// checks C against a sequential product and prints "result: <sum> verified".
//
// Run with dsmrun, e.g.: dsmrun run -n 4 -- matmul -n 192
package main

import (
	"flag"
	"fmt"
	"os"

	"dsmigrate/dsmshm"
)

func main() {
	n := flag.Int("n", 192, "matrix size")
	flag.Parse()
	if err := run(*n); err != nil {
		fmt.Fprintln(os.Stderr, "matmul:", err)
		os.Exit(1)
	}
}

func run(n int) (retErr error) {
	if n < 1 {
		return fmt.Errorf("need n >= 1")
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
	var m [3][]int64
	for i, name := range []string{"A", "B", "C"} {
		seg, err := node.Alloc(name, n*n*8)
		if err != nil {
			return err
		}
		m[i] = dsmshm.View[int64](seg)
	}
	a, b, c := m[0], m[1], m[2]
	rank, size := node.Rank(), node.Size()
	if rank == 0 {
		fill(a, b, n)
	}
	if err := node.Barrier(0); err != nil {
		return err
	}
	lo, hi := rank*n/size, (rank+1)*n/size
	multiply(a, b, c, n, lo, hi)
	if err := node.Barrier(1); err != nil {
		return err
	}
	st := node.Stats()
	fmt.Printf("rank %d: rows %d-%d, %d pages fetched, %d write faults, %d diffs\n",
		rank, lo, hi-1, st.PagesFetched, st.WriteFaults, st.Diffs)
	if rank != 0 {
		return nil
	}
	sa, sb, sc := make([]int64, n*n), make([]int64, n*n), make([]int64, n*n)
	fill(sa, sb, n)
	multiply(sa, sb, sc, n, 0, n)
	var sum int64
	for i := range sc {
		if c[i] != sc[i] {
			return fmt.Errorf("C[%d][%d] = %d, sequential product says %d", i/n, i%n, c[i], sc[i])
		}
		sum += c[i]
	}
	fmt.Printf("result: %d verified\n", sum)
	return nil
}

func fill(a, b []int64, n int) {
	for i := range n * n {
		a[i] = int64(i%7 - 3)
		b[i] = int64((i*5)%11 - 5)
	}
}

// multiply computes rows [lo, hi) of c = a*b.
func multiply(a, b, c []int64, n, lo, hi int) {
	for i := lo; i < hi; i++ {
		row := make([]int64, n)
		for k := range n {
			aik := a[i*n+k]
			for j := range n {
				row[j] += aik * b[k*n+j]
			}
		}
		copy(c[i*n:(i+1)*n], row)
	}
}
