package daemon

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"testing"

	"dsmigrate/criu"
)

// The prefetcher between a model of CRIU's lazy-pages and a model of its page
// server, both written from criu/uffd.c and criu/page-xfer.c: every page
// arrives once and right, the replies come in the order asked, the page
// server is never asked for a page it does not have, and memory stays
// bounded.

const pg = criu.PageSize

// appendPage appends the content of a page: its task and address at its
// start and its end (a page out of place, or cut, shows at either).
func appendPage(b []byte, task, addr uint64) []byte {
	b = binary.LittleEndian.AppendUint64(b, task)
	b = binary.LittleEndian.AppendUint64(b, addr)
	b = append(b, zeroPage[:pg-32]...)
	b = binary.LittleEndian.AppendUint64(b, task)
	return binary.LittleEndian.AppendUint64(b, addr+pg)
}

var zeroPage [pg]byte

func pageOK(p []byte, task, addr uint64) bool {
	le := binary.LittleEndian
	return len(p) == pg && le.Uint64(p) == task && le.Uint64(p[8:]) == addr &&
		le.Uint64(p[pg-16:]) == task && le.Uint64(p[pg-8:]) == addr+pg
}

// fakeServer is CRIU's page server for a lazy dump: each request in turn,
// clamped at the end of its buffer; a request outside every buffer or for an
// unknown task ends it (page_server_get_pages returns -1).
type fakeServer struct {
	t      *testing.T
	bufs   map[uint64][]criu.PageRange // what it holds, which may be split finer than the pagemap
	in     []byte
	out    bytes.Buffer
	closed bool
	asked  int
}

func (s *fakeServer) run() {
	for len(s.in) >= psHdrLen && !s.closed {
		h := readPSIOV(s.in)
		s.in = s.in[psHdrLen:]
		s.asked++
		switch h.cmd {
		case psIOVGet:
		case 0x1024: // PS_IOV_FORCE_CLOSE
			s.out.Write(binary.NativeEndian.AppendUint32(nil, 0))
			s.closed = true
			continue
		default:
			s.t.Fatalf("page server: unknown command %#x", h.cmd)
		}
		var hit *criu.PageRange
		for i, r := range s.bufs[h.task] {
			if h.vaddr >= r.Start && h.vaddr < r.End {
				hit = &s.bufs[h.task][i]
			}
		}
		if hit == nil || h.nr == 0 || h.vaddr%pg != 0 {
			s.t.Fatalf("page server asked for %d pages at %#x of task %d, which it does not have: it would end", h.nr, h.vaddr, h.task)
		}
		n := min(h.nr, (hit.End-h.vaddr)/pg)
		b := psIOV{cmd: psReplyCmd, nr: n, vaddr: h.vaddr, task: h.task}.appendTo(make([]byte, 0, psHdrLen+n*pg))
		for a := h.vaddr; a < h.vaddr+n*pg; a += pg {
			b = appendPage(b, h.task, a)
		}
		s.out.Write(b)
	}
}

// fakeLazy is lazy-pages: the background transfer (the first remaining run,
// 64 KiB more each time up to 4 MiB, one request at a time, back to 64 KiB
// at a fault; here a sixteenth of that) and faults of single pages, reading
// replies in order.
type fakeLazy struct {
	t       *testing.T
	rng     *rand.Rand
	todo    map[uint64][]criu.PageRange // per task, runs not asked for
	tasks   []uint64
	xfer    uint64
	bg      bool  // a background request is out:
	bgReq   psIOV // this one
	pending []psIOV
	got     map[[2]uint64]bool
	total   int
	in      []byte
	closed  bool
	status  bool
	pos     uint64           // a process reading its memory in order is here,
	all     []criu.PageRange // in these runs of the first task
	faults  int
}

func (l *fakeLazy) remaining() bool {
	for _, rs := range l.todo {
		if len(rs) > 0 {
			return true
		}
	}
	return false
}

// take removes [a, a+n pages) of task from todo.
func (l *fakeLazy) take(task, a, n uint64) {
	var out []criu.PageRange
	for _, r := range l.todo[task] {
		if r.End <= a || r.Start >= a+n*pg {
			out = append(out, r)
			continue
		}
		if r.Start < a {
			out = append(out, criu.PageRange{Start: r.Start, End: a})
		}
		if r.End > a+n*pg {
			out = append(out, criu.PageRange{Start: a + n*pg, End: r.End})
		}
	}
	l.todo[task] = out
}

// step returns the requests lazy-pages writes now.
func (l *fakeLazy) step(faults int) []byte {
	var out []byte
	if faults == seqFaults {
		// The process reads on from where it is, a page at a time, as far
		// as the pages have arrived; at one lazy-pages has not asked for
		// it faults, and at one asked for it waits.
		task := l.tasks[0]
	read:
		for k := 0; k < 64; k++ {
			i := slices.IndexFunc(l.all, func(r criu.PageRange) bool { return r.End > l.pos })
			if i < 0 {
				break // read to the end
			}
			l.pos = max(l.pos, l.all[i].Start)
			switch {
			case l.got[[2]uint64{task, l.pos}]:
				l.pos += pg
			case slices.ContainsFunc(l.todo[task], func(r criu.PageRange) bool { return l.pos >= r.Start && l.pos < r.End }):
				l.take(task, l.pos, 1)
				h := psIOV{cmd: psIOVGet, nr: 1, vaddr: l.pos, task: task}
				l.pending = append(l.pending, h)
				out = h.appendTo(out)
				l.xfer = lazyXferMin
				l.faults++
				break read
			default:
				break read
			}
		}
	}
	if faults == randomFaults && l.rng.IntN(4) == 0 {
		// A fault somewhere not asked for yet.
		task := l.tasks[l.rng.IntN(len(l.tasks))]
		if rs := l.todo[task]; len(rs) > 0 {
			r := rs[l.rng.IntN(len(rs))]
			a := r.Start + uint64(l.rng.IntN(int((r.End-r.Start)/pg)))*pg
			l.take(task, a, 1)
			h := psIOV{cmd: psIOVGet, nr: 1, vaddr: a, task: task}
			l.pending = append(l.pending, h)
			out = h.appendTo(out)
			l.xfer = lazyXferMin
			l.faults++
		}
	}
	if !l.bg {
		for _, task := range l.tasks {
			rs := l.todo[task]
			if len(rs) == 0 {
				continue
			}
			n := min(rs[0].End-rs[0].Start, l.xfer) / pg
			h := psIOV{cmd: psIOVGet, nr: n, vaddr: rs[0].Start, task: task}
			l.take(task, h.vaddr, n)
			l.pending = append(l.pending, h)
			out = h.appendTo(out)
			l.bg, l.bgReq = true, h
			l.xfer = min(l.xfer+4<<10, 256<<10)
			break
		}
	}
	if !l.remaining() && len(l.pending) == 0 && !l.closed {
		l.closed = true
		out = psIOV{cmd: 0x1024}.appendTo(out)
	}
	return out
}

// read takes what the relay hands lazy-pages.
func (l *fakeLazy) read(b []byte) {
	l.in = append(l.in, b...)
	for {
		if len(l.pending) == 0 {
			if l.closed && len(l.in) >= 4 {
				if binary.NativeEndian.Uint32(l.in) != 0 || len(l.in) != 4 {
					l.t.Fatalf("lazy-pages: bad final status %x", l.in)
				}
				l.status = true
				l.in = nil
			} else if len(l.in) > 0 && !l.closed {
				l.t.Fatalf("lazy-pages: %d bytes nobody asked for", len(l.in))
			}
			return
		}
		if len(l.in) < psHdrLen {
			return
		}
		h := readPSIOV(l.in)
		want := l.pending[0]
		if h.cmd != psReplyCmd || h.vaddr != want.vaddr || h.task != want.task || h.nr == 0 || h.nr > want.nr {
			l.t.Fatalf("lazy-pages: reply %+v to request %+v", h, want)
		}
		if len(l.in) < psHdrLen+int(h.nr*pg) {
			return
		}
		for i := uint64(0); i < h.nr; i++ {
			a := h.vaddr + i*pg
			p := l.in[psHdrLen+i*pg : psHdrLen+(i+1)*pg]
			if !pageOK(p, h.task, a) {
				l.t.Fatalf("lazy-pages: page %#x of task %d has the wrong content", a, h.task)
			}
			k := [2]uint64{h.task, a}
			if l.got[k] {
				l.t.Fatalf("lazy-pages: page %#x of task %d came twice", a, h.task)
			}
			l.got[k] = true
		}
		if h.nr < want.nr { // the rest is asked again (uffd.c puts it back)
			l.todo[h.task] = append([]criu.PageRange{{Start: h.end(), End: want.end()}}, l.todo[h.task]...)
		}
		l.in = l.in[psHdrLen+h.nr*pg:]
		l.pending = l.pending[1:]
		if l.bg && want == l.bgReq {
			l.bg = false
		}
	}
}

const (
	noFaults = iota
	randomFaults
	seqFaults // the process reads its memory from start to end
)

type pfCase struct {
	plan     map[uint64][]criu.PageRange // the pagemap
	bufs     map[uint64][]criu.PageRange // the page server's buffers (nil: as the pagemap)
	unmapped map[uint64][]criu.PageRange // runs lazy-pages never asks for
	faults   int                         // noFaults, randomFaults or seqFaults
	rate     int                         // bytes from the source per step at most (0: any)
	late     int                         // requests before the plan arrives
}

func runPrefetch(t *testing.T, seed uint64, c pfCase) (pfStats, int) {
	rng := rand.New(rand.NewPCG(seed, 1))
	clone := func(m map[uint64][]criu.PageRange) map[uint64][]criu.PageRange {
		out := map[uint64][]criu.PageRange{}
		for k, v := range m {
			out[k] = append([]criu.PageRange(nil), v...)
		}
		return out
	}
	bufs := c.bufs
	if bufs == nil {
		bufs = c.plan
	}
	srv := &fakeServer{t: t, bufs: clone(bufs)}
	lz := &fakeLazy{t: t, rng: rng, todo: clone(c.plan), xfer: lazyXferMin, got: map[[2]uint64]bool{}}
	for task, rs := range c.plan {
		lz.tasks = append(lz.tasks, task)
		if len(lz.tasks) == 1 {
			// It reads from the middle of its first run on (a buffer
			// in a heap that starts lower).
			lz.all = rs
			lz.pos = (rs[0].Start + (rs[0].End-rs[0].Start)/2) / pg * pg
		}
		for _, r := range rs {
			lz.total += int((r.End - r.Start) / pg)
		}
	}
	for task, rs := range c.unmapped {
		for _, r := range rs {
			lz.take(task, r.Start, (r.End-r.Start)/pg)
			lz.total -= int((r.End - r.Start) / pg)
		}
	}
	pf := newPrefetch()
	// Sizes a sixteenth of the daemon's, and so are the tests' runs: the
	// same shapes with less to copy (the race detector is slow at it).
	pf.chunk, pf.maxInflight, pf.maxHeld = prefetchChunk/16, prefetchInflight/16, prefetchCache/16
	requests := 0
	toServer := func(b []byte) { srv.in = append(srv.in, b...) }
	for step := 0; step < 1_000_000; step++ {
		if w := lz.step(c.faults); len(w) > 0 {
			requests++
			// lazy-pages's writes reach the relay in pieces.
			for len(w) > 0 {
				n := min(len(w), 1+rng.IntN(48))
				toServer(pf.fromLazy(w[:n]))
				w = w[n:]
			}
			if requests == c.late {
				toServer(pf.setPlan(clone(c.plan)))
			}
		}
		srv.run()
		// The source's bytes arrive in frames of any size.
		for sent := 0; srv.out.Len() > 0 && rng.IntN(3) != 0 && (c.rate == 0 || sent < c.rate); {
			n := 1 + rng.IntN(300<<10)
			if c.rate > 0 {
				n = min(n, c.rate-sent)
			}
			sent += n
			req, err := pf.fromSource(srv.out.Next(n))
			if err != nil {
				t.Fatal(err)
			}
			toServer(req)
		}
		for b := pf.pop(); b != nil; b = pf.pop() {
			var all []byte
			for _, x := range b {
				all = append(all, x...)
			}
			lz.read(all)
		}
		if pf.inflight > pf.maxInflight || pf.held > pf.maxHeld {
			t.Fatalf("holding %d bytes, %d in flight", pf.held, pf.inflight)
		}
		if lz.status {
			if len(lz.got) != lz.total {
				t.Fatalf("lazy-pages had %d pages of %d", len(lz.got), lz.total)
			}
			if len(pf.owed) != 0 {
				t.Fatalf("%d replies still owed", len(pf.owed))
			}
			return pf.stats, lz.faults
		}
	}
	t.Fatalf("no end: lazy-pages has %d pages of %d, %d requests pending", len(lz.got), lz.total, len(lz.pending))
	return pfStats{}, 0
}

// mib is n MiB at the daemon's scale: n/16 MiB here, whole pages.
func mib(n float64) uint64 { return uint64(n*(1<<20)/16) / pg * pg }

func TestPrefetchBackground(t *testing.T) {
	plan := map[uint64][]criu.PageRange{
		1: {{Start: 0x10000, End: 0x10000 + mib(9)}, {Start: 0x7f0000000000, End: 0x7f0000000000 + mib(0.3)}, {Start: 0x7f1000000000, End: 0x7f1000000000 + pg}},
		7: {{Start: 0x400000, End: 0x400000 + mib(2.5)}},
	}
	for seed := uint64(0); seed < 6; seed++ {
		st, _ := runPrefetch(t, seed, pfCase{plan: plan, late: 1})
		if st.Hits == 0 || st.Hits < st.Forwarded {
			t.Fatalf("seed %d: %d requests answered from prefetched pages, %d relayed", seed, st.Hits, st.Forwarded)
		}
	}
}

func TestPrefetchFaults(t *testing.T) {
	plan := map[uint64][]criu.PageRange{
		3: {{Start: 0x10000, End: 0x10000 + mib(6)}, {Start: 0x900000, End: 0x900000 + mib(1.2)}},
	}
	for seed := uint64(0); seed < 8; seed++ {
		runPrefetch(t, seed, pfCase{plan: plan, faults: randomFaults, late: 1 + int(seed%5)})
	}
}

// A process that reads its memory in order, from the middle of its heap
// on, outruns the background transfer, which goes from the lowest address
// up: prefetching follows both, so that few of the process's faults and few
// of the background's requests wait for the source. (Following the process
// alone, every background request below it went to the source: in make
// bench, 13450 of 14065 in one 1 GiB move.)
func TestPrefetchFollowsFaults(t *testing.T) {
	plan := map[uint64][]criu.PageRange{
		4: {{Start: 0x10000, End: 0x10000 + mib(200)}, {Start: 0x7f0000000000, End: 0x7f0000000000 + mib(40)}},
	}
	for seed := uint64(0); seed < 2; seed++ {
		st, faults := runPrefetch(t, seed, pfCase{plan: plan, faults: seqFaults, rate: 32 << 10, late: 1})
		relayedFaults := st.Faults - st.FaultHits
		background := st.Hits + st.Forwarded - st.Faults
		relayedBackground := st.Forwarded - relayedFaults
		if faults < 100 || relayedFaults > faults/10 {
			t.Errorf("seed %d: %d of the process's %d faults went to the source (%+v)", seed, relayedFaults, faults, st)
		}
		if background < 100 || relayedBackground > background/10 {
			t.Errorf("seed %d: %d of the background transfer's %d requests went to the source (%+v)", seed, relayedBackground, background, st)
		}
	}
}

// The page server's buffers split a run where the pagemap does not: a
// prefetch comes back short and the requests counting on it are relayed.
func TestPrefetchShortReply(t *testing.T) {
	plan := map[uint64][]criu.PageRange{2: {{Start: 0x10000, End: 0x10000 + mib(5)}}}
	bufs := map[uint64][]criu.PageRange{2: {{Start: 0x10000, End: 0x10000 + mib(0.5) + 3*pg}, {Start: 0x10000 + mib(0.5) + 3*pg, End: 0x10000 + mib(5)}}}
	for seed := uint64(0); seed < 4; seed++ {
		runPrefetch(t, seed, pfCase{plan: plan, bufs: bufs, faults: int(seed % 3), late: 1})
	}
}

// Runs the process unmapped are never asked for: the prefetched pages of
// them are dropped once the background transfer passes them, and the
// transfer does not stall on a full cache.
func TestPrefetchUnmapped(t *testing.T) {
	var rs, gone []criu.PageRange
	for i := uint64(0); i < 40; i++ {
		r := criu.PageRange{Start: 0x100000000 + i*mib(4), End: 0x100000000 + i*mib(4) + mib(3)}
		rs = append(rs, r)
		if i%3 != 2 {
			gone = append(gone, r)
		}
	}
	plan := map[uint64][]criu.PageRange{5: rs}
	st, _ := runPrefetch(t, 1, pfCase{plan: plan, unmapped: map[uint64][]criu.PageRange{5: gone}, late: 1})
	if st.Dropped == 0 {
		t.Fatalf("nothing dropped: %+v", st)
	}
}

// Without a plan (the pagemap could not be read) every request is relayed.
func TestPrefetchNoPlan(t *testing.T) {
	plan := map[uint64][]criu.PageRange{1: {{Start: 0x10000, End: 0x10000 + mib(3)}}}
	st, _ := runPrefetch(t, 1, pfCase{plan: plan, faults: randomFaults, late: -1})
	if st.Prefetched != 0 || st.Hits != 0 {
		t.Fatalf("prefetched without a plan: %+v", st)
	}
}

// lazyXferMin is the model's background request after a fault: 64 KiB in
// uffd.c, a sixteenth here, but two pages, not one: the daemon tells a fault
// (one page) from the background transfer by its size.
const lazyXferMin = 2 * pg
