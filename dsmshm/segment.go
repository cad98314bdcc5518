package dsmshm

import (
	"fmt"
	"unsafe"
)

// Segment is a shared memory segment. Its memory is readable and writable
// through Bytes and View like any Go slice; the library keeps it consistent
// across ranks (see doc.go).
type Segment struct {
	node   *Node
	name   string
	id     uint32
	size   int
	npages int
	homes  []int32 // home rank of each page
	c      cseg

	dirtyBuf []uint32 // scratch for releases; guarded by node.syncMu
}

// Alloc creates the shared segment name of size bytes. It is collective:
// every rank calls it with the same name and size, in the same order
// relative to other Allocs, and gets the same zero-filled memory. Names are
// unique within a job. Pages are
// distributed over the ranks in blocks: rank r is home for the r-th
// 1/Size() of the segment, which suits programs that partition data by rank.
func (n *Node) Alloc(name string, size int) (*Segment, error) {
	s, err := n.newSegment(name, size)
	if err != nil {
		return nil, fmt.Errorf("dsmshm: Alloc(%q, %d): %w", name, size, err)
	}
	if err := n.barrier(allocBarrier, checkOf(name, size)); err != nil {
		return nil, fmt.Errorf("dsmshm: Alloc(%q, %d): %w", name, size, err)
	}
	return s, nil
}

// newSegment maps this rank's side of a new segment.
func (n *Node) newSegment(name string, size int) (*Segment, error) {
	if size <= 0 {
		return nil, fmt.Errorf("size must be positive")
	}
	npages := (size + pageSize - 1) / pageSize
	if npages > 1<<31 {
		return nil, ErrTooLarge
	}
	n.syncMu.Lock()
	defer n.syncMu.Unlock()
	n.freeMu.RLock()
	defer n.freeMu.RUnlock()
	if n.freed || n.closed.Load() {
		return nil, ErrClosed
	}
	if err := vmaBudget(n.allocs + npages); err != nil {
		return nil, err
	}
	homes := make([]int32, npages)
	for p := range homes {
		homes[p] = int32(p * n.size / npages)
	}
	n.segMu.Lock()
	defer n.segMu.Unlock()
	for _, s := range n.segs {
		if s.name == name {
			return nil, fmt.Errorf("a segment of that name exists already")
		}
	}
	id := uint32(len(n.segs))
	c, err := newCSeg(n.c, id, homes)
	if err != nil {
		return nil, fmt.Errorf("mapping memory: %w", err)
	}
	s := &Segment{node: n, name: name, id: id, size: size, npages: npages, homes: homes, c: c}
	n.segs = append(n.segs, s)
	n.allocs += npages
	return s, nil
}

// Name returns the segment's name.
func (s *Segment) Name() string { return s.name }

// Len returns the segment's size in bytes.
func (s *Segment) Len() int { return s.size }

// Bytes returns the segment's memory. The slice is valid until the node is
// closed.
func (s *Segment) Bytes() []byte {
	return unsafe.Slice((*byte)(s.c.base()), s.size)
}

// Number is the element types View accepts: numbers of a fixed size on the
// platform, whose every bit pattern is a valid value, and which hold no Go
// pointers (the garbage collector does not scan shared memory). All ranks
// run on one architecture, so int and uint mean the same everywhere.
type Number interface {
	~int | ~int8 | ~int16 | ~int32 | ~int64 | ~uint | ~uint8 | ~uint16 | ~uint32 | ~uint64 | ~uintptr |
		~float32 | ~float64 | ~complex64 | ~complex128
}

// View returns the segment's memory as a slice of T, len(seg)/sizeof(T)
// elements long. The segment is page aligned, so any T is aligned.
func View[T Number](s *Segment) []T {
	var zero T
	return unsafe.Slice((*T)(s.c.base()), s.size/int(unsafe.Sizeof(zero)))
}

// Prepare makes bytes [off, off+n) of the segment up to date and, if write,
// writable, without taking faults. Call it before a system call reads from
// (write=false) or writes into (write=true) shared memory: the kernel does not
// raise a fault for such accesses, it fails them with EFAULT (see doc.go).
// The range stays prepared until this rank's next acquire (Lock or Barrier).
func (s *Segment) Prepare(off, n int, write bool) error {
	if off < 0 || n < 0 || off+n > s.size {
		return fmt.Errorf("dsmshm: Prepare(%d, %d) outside segment %q of %d bytes", off, n, s.name, s.size)
	}
	if n == 0 {
		return nil
	}
	s.node.freeMu.RLock()
	defer s.node.freeMu.RUnlock()
	if s.node.freed {
		return ErrClosed
	}
	first, last := off/pageSize, (off+n-1)/pageSize
	if err := s.c.prepare(first, last-first+1, write); err != nil {
		return fmt.Errorf("dsmshm: Prepare(%d, %d) of segment %q: %w", off, n, s.name, err)
	}
	return nil
}

// Home returns the rank that is home for the page holding byte off.
func (s *Segment) Home(off int) int { return int(s.homes[off/pageSize]) }
