package dsmshm

import (
	"errors"
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
//
// The ranks decide together: each maps its side of the segment, or finds
// it cannot (the segment would not fit under the kernel's mapping limit,
// see ErrTooLarge), and says so in the allocation barrier. If any rank
// cannot, or the ranks' calls disagree, every rank returns the same error
// (matching ErrTooLarge if that was the reason) and keeps nothing of the
// segment, so the program may go on and may retry, with the same name.
func (n *Node) Alloc(name string, size int) (*Segment, error) {
	fail := func(err error) (*Segment, error) {
		return nil, fmt.Errorf("dsmshm: Alloc(%q, %d): %w", name, size, err)
	}
	if err := n.checkOpen(); err != nil {
		return fail(err)
	}
	// The whole Alloc is one collective call: no other collective of this
	// rank runs between mapping the segment and undoing it, so the segment
	// undone is the last one registered.
	n.barrierMu.Lock()
	defer n.barrierMu.Unlock()
	s, refusal := n.newSegment(name, size)
	if errors.Is(refusal, ErrClosed) {
		return fail(refusal)
	}
	err := n.barrierLocked(allocBarrier, checkOf(name, size), refusal)
	if err == nil && refusal != nil {
		err = refusal // cannot happen: the barrier fails on any refusal
	}
	if err != nil {
		if s != nil {
			n.dropSegment(s)
		}
		return fail(err)
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

// dropSegment undoes newSegment(s) after a failed allocation barrier. No
// rank left that barrier successfully, so no rank uses the segment: no page
// of it is fetched or diffed, and the application never saw it.
func (n *Node) dropSegment(s *Segment) {
	n.syncMu.Lock()
	defer n.syncMu.Unlock()
	n.freeMu.RLock()
	defer n.freeMu.RUnlock()
	if n.freed {
		return // an abort released every segment already
	}
	n.segMu.Lock()
	last := len(n.segs) - 1
	if last < 0 || n.segs[last] != s {
		// Cannot happen (Alloc holds barrierMu throughout); segment ids
		// are indexes into segs, so only the last one can go.
		n.segMu.Unlock()
		return
	}
	n.segs[last] = nil
	n.segs = n.segs[:last]
	n.allocs -= s.npages
	n.segMu.Unlock()
	s.c.free()
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
		select {
		case <-s.node.dead: // the reason a fetch gave up
			return fmt.Errorf("dsmshm: Prepare(%d, %d) of segment %q: fetching a page: %w; the job failed: %w",
				off, n, s.name, err, s.node.failErr)
		default:
		}
		return fmt.Errorf("dsmshm: Prepare(%d, %d) of segment %q: %w", off, n, s.name, err)
	}
	return nil
}

// Home returns the rank that is home for the page holding byte off.
func (s *Segment) Home(off int) int { return int(s.homes[off/pageSize]) }
