package dsmshm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Faults by the kernel on behalf of a system call do not raise SIGSEGV:
// the call fails with EFAULT, and Prepare is the remedy.
func TestSyscallsOnSharedPages(t *testing.T) {
	pages := 4
	nodes := startMem(t, 2)
	segs := allocAll(t, nodes, "s", pages*pageSize) // pages 0,1 homed at 0; 2,3 at 1
	want := make([]byte, pages*pageSize)
	for i := range want {
		want[i] = byte(i * 13)
	}
	if err := each(nodes, func(n *Node) error {
		if n.Rank() == 0 {
			copy(segs[0].Bytes(), want)
		}
		return n.Barrier(0)
	}); err != nil {
		t.Fatal(err)
	}
	seg := segs[1]
	if st, _ := seg.c.pageState(0); st != stateInvalid {
		t.Fatalf("page 0 at rank 1 state %d, want invalid", st)
	}
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(seg.Bytes()); !errors.Is(err, syscall.EFAULT) {
		t.Fatalf("write(2) from an invalid page: %v, want EFAULT", err)
	}
	if err := seg.Prepare(0, seg.Len(), false); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(seg.Bytes(), 0); err != nil {
		t.Fatalf("write(2) after Prepare: %v", err)
	}
	got, _ := os.ReadFile(f.Name())
	if !bytes.Equal(got, want) {
		t.Fatal("file written from the segment differs")
	}

	// read(2) into read-only pages fails; Prepare(write) makes it work and
	// the data reaches the homes at the next release.
	in := bytes.Repeat([]byte{0xAB}, 2*pageSize)
	src := filepath.Join(dir, "in")
	if err := os.WriteFile(src, in, 0o600); err != nil {
		t.Fatal(err)
	}
	rf, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	dst := seg.Bytes()[pageSize : 3*pageSize]
	if _, err := rf.ReadAt(dst, 0); !errors.Is(err, syscall.EFAULT) {
		t.Fatalf("read(2) into a read-only page: %v, want EFAULT", err)
	}
	if err := seg.Prepare(pageSize, 2*pageSize, true); err != nil {
		t.Fatal(err)
	}
	if _, err := rf.ReadAt(dst, 0); err != nil {
		t.Fatalf("read(2) after Prepare(write): %v", err)
	}
	if err := each(nodes, func(n *Node) error { return n.Barrier(1) }); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(segs[0].Bytes()[pageSize:3*pageSize], in) {
		t.Fatal("data read(2) into rank 1's segment did not reach rank 0")
	}
}

func TestOtherFaultsStillPanic(t *testing.T) {
	_ = startMem(t, 1) // the handler is installed
	var p *int
	err := func() (err error) {
		defer func() {
			r := recover()
			err, _ = r.(error)
		}()
		return errors.New(string(rune(*p)))
	}()
	if err == nil || !strings.Contains(err.Error(), "nil pointer dereference") {
		t.Fatalf("nil dereference: recovered %v, want a nil pointer runtime error", err)
	}
}

// Faults from many goroutines at once, both invalid-page fetches and write
// faults on shared pages, while another goroutine forces collections. No
// goroutine ever resolves a fault, so this works with GOMAXPROCS=1 too.
func TestFaultsFromManyGoroutinesUnderGC(t *testing.T) {
	for _, procs := range []int{1, max(2, runtime.NumCPU())} {
		t.Run(fmt.Sprint("GOMAXPROCS=", procs), func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
			faultsUnderGC(t)
		})
	}
}

func faultsUnderGC(t *testing.T) {
	const pages, workers, rounds = 64, 8, 25
	nodes := startMem(t, 2)
	segs := allocAll(t, nodes, "gc", pages*pageSize) // pages 0-31 homed at rank 0
	stop := make(chan struct{})
	var gcs sync.WaitGroup
	gcs.Add(1)
	go func() {
		defer gcs.Done()
		for {
			select {
			case <-stop:
				return
			default:
				runtime.GC()
			}
		}
	}()
	defer func() { close(stop); gcs.Wait() }()
	for round := 1; round <= rounds; round++ {
		// Every rank's workers each write their own 8-byte slot in every
		// page: all ranks write all pages concurrently.
		if err := each(nodes, func(n *Node) error {
			v := View[uint64](segs[n.Rank()])
			var wg sync.WaitGroup
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for p := range pages {
						i := p*pageSize/8 + n.Rank()*workers + w
						v[i] = uint64(round<<16 | p<<8 | n.Rank()<<4 | w)
					}
				}()
			}
			wg.Wait()
			return n.Barrier(round)
		}); err != nil {
			t.Fatal(err)
		}
		for r, s := range segs {
			v := View[uint64](s)
			for p := range pages {
				for rk := range 2 {
					for w := range workers {
						i := p*pageSize/8 + rk*workers + w
						if want := uint64(round<<16 | p<<8 | rk<<4 | w); v[i] != want {
							t.Fatalf("round %d: rank %d sees %#x at page %d slot %d, want %#x", round, r, v[i], p, rk*workers+w, want)
						}
					}
				}
			}
		}
	}
	t.Logf("rank 1: %+v", nodes[1].Stats())
}

// TestFaultCosts measures what one fault of each kind costs here, with
// page channels over socketpairs (in-memory transport) and over TCP.
func TestFaultCosts(t *testing.T) {
	t.Run("socketpair", func(t *testing.T) { faultCosts(t, startMem(t, 2)) })
	t.Run("tcp", func(t *testing.T) {
		nodes, _ := startTCP(t, 2)
		t.Cleanup(func() { each(nodes, (*Node).Close) })
		faultCosts(t, nodes)
	})
}

func faultCosts(t *testing.T, nodes []*Node) {
	const pages = 2000
	segs := allocAll(t, nodes, "cost", 2*pages*pageSize) // first half homed at 0
	b0, b1 := segs[0].Bytes(), segs[1].Bytes()
	measure := func(what string, f func(p int)) {
		start := time.Now()
		for p := range pages {
			f(p)
		}
		t.Logf("%-40s %6.1f us", what, float64(time.Since(start).Microseconds())/pages)
	}
	measure("write fault, page homed here (no twin)", func(p int) { b0[p*pageSize] = 1 })
	measure("write fault, page homed elsewhere (twin)", func(p int) { b1[p*pageSize] = 1 })
	if err := each(nodes, func(n *Node) error { return n.Barrier(0) }); err != nil {
		t.Fatal(err)
	}
	var sink byte
	measure("read fault, invalid page (fetch)", func(p int) { sink += b1[p*pageSize+1] })
	_ = sink
}

// Alternate pages written by a non-home rank split the application view
// into one mapping per page, the worst case the VMA budget allows for.
func TestWorstCaseMappings(t *testing.T) {
	if testing.Short() {
		t.Skip("maps 300 MiB; skipped with -short")
	}
	const pages = 37500 // ~146 MiB per rank, 2 ranks in this process
	nodes := startMem(t, 2)
	segs := allocAll(t, nodes, "big", pages*pageSize)
	countMaps := func() int {
		b, _ := os.ReadFile("/proc/self/maps")
		return bytes.Count(b, []byte("\n"))
	}
	before := countMaps()
	b := segs[1].Bytes()
	for p := 0; p < pages/2; p += 2 { // pages homed at rank 0
		b[p*pageSize] = byte(p)
	}
	split := countMaps()
	if split < before+pages/4 {
		t.Fatalf("mappings %d -> %d: expected one per written page", before, split)
	}
	if err := each(nodes, func(n *Node) error { return n.Barrier(0) }); err != nil {
		t.Fatal(err)
	}
	merged := countMaps()
	t.Logf("mappings: %d before, %d with alternate pages writable, %d after release", before, split, merged)
	if merged > before+4 {
		t.Errorf("mappings not merged after release: %d -> %d", before, merged)
	}
	for p := 0; p < pages/2; p += 2 {
		if got := segs[0].Bytes()[p*pageSize]; got != byte(p) {
			t.Fatalf("page %d: %d, want %d", p, got, byte(p))
		}
	}
	if err := each(nodes, func(n *Node) error { // collective: every rank refuses
		if _, err := n.Alloc("more", 30000*pageSize); !errors.Is(err, ErrTooLarge) {
			return fmt.Errorf("rank %d: Alloc beyond the mapping budget: %v, want ErrTooLarge", n.Rank(), err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// Goroutines of each rank take different locks that guard counters on one
// shared page, so acquires keep invalidating a page other goroutines of the
// same rank have dirty: the flush-and-retry path. GC runs throughout.
func TestLocksFromManyGoroutines(t *testing.T) {
	const ranks, workers, iters = 3, 4, 60
	nodes := startMem(t, ranks)
	segs := allocAll(t, nodes, "ctr", pageSize)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
				runtime.GC()
			}
		}
	}()
	if err := each(nodes, func(n *Node) error {
		v := View[int64](segs[n.Rank()])
		errs := make(chan error, workers)
		for w := range workers {
			go func() {
				for range iters {
					if err := n.Lock(w); err != nil {
						errs <- err
						return
					}
					v[w*3]++ // counters 24 bytes apart: one page, one lock each
					if err := n.Unlock(w); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
		}
		var all []error
		for range workers {
			all = append(all, <-errs)
		}
		if err := errors.Join(all...); err != nil {
			return err
		}
		return n.Barrier(0)
	}); err != nil {
		t.Fatal(err)
	}
	for r, s := range segs {
		v := View[int64](s)
		for w := range workers {
			if v[w*3] != ranks*iters {
				t.Errorf("rank %d: counter %d = %d, want %d", r, w, v[w*3], ranks*iters)
			}
		}
	}
}
