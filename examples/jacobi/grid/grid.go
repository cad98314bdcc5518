// Package grid is the Jacobi kernel of examples/jacobi, shared with the DSM
// benchmark (bench/dsm) so that both measure the very same loop.
package grid

// SetBoundary holds the top edge at 1 and the other edges at 0.
func SetBoundary(g []float64, n int) {
	for j := range n {
		g[j] = 1
	}
}

// Band returns the interior rows [lo, hi) that rank updates.
func Band(n, rank, size int) (lo, hi int) {
	inner := n - 2
	return 1 + rank*inner/size, 1 + (rank+1)*inner/size
}

// Sweep computes rows [lo, hi) of dst from src: each interior cell becomes
// the mean of its four neighbours.
func Sweep(src, dst []float64, n, lo, hi int) {
	for i := lo; i < hi; i++ {
		for j := 1; j < n-1; j++ {
			dst[i*n+j] = 0.25 * (src[(i-1)*n+j] + src[(i+1)*n+j] + src[i*n+j-1] + src[i*n+j+1])
		}
	}
}
