package daemon

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math"
	"net"
	"slices"
	"sort"

	"dsmigrate/criu"
)

// Prefetching a post-copy's pages at the target (lazyTarget).
//
// CRIU's lazy-pages asks for pages one request at a time in the background:
// 64 KiB first, 64 KiB more with each request up to 4 MiB, and back to 64
// KiB whenever the process faults. Every request waits a round trip through
// both daemons and the source's CRIU, during which nothing else moves: a
// GiB took ~5 s, twice a whole pre-copy migration. So the target's daemon
// asks the source's CRIU itself, ahead of lazy-pages, for the pages the dump
// left behind (criu.LazyRanges reads them from the pagemap images), a few
// MiB in flight at a time, and answers lazy-pages's requests from what has
// arrived. The source's end is unchanged: CRIU's page server answers
// requests in the order they come, from whoever.
//
// The page-server protocol (criu/page-xfer.c): a request and a reply's
// header are both struct page_server_iov { u32 cmd; u64 nr_pages; u64 vaddr;
// u64 dst_id; }, 32 bytes in host order (4 of padding after cmd). lazy-pages
// asks with PS_IOV_GET for pages of one pagemap entry, by their address at
// dump time and the task's id; the page server answers each request in turn
// with PS_IOV_ADD_F|PE_PRESENT, the number of pages it sends (at most those
// asked), the same address and id, then the pages. At its end lazy-pages
// sends PS_IOV_FORCE_CLOSE and reads a 4-byte status.
//
// What keeps it safe:
//   - the daemon asks only for pages inside a lazy pagemap entry of a task
//     lazy-pages has asked for by that id (anything else ends the page
//     server, and with it the process);
//   - lazy-pages reads its replies in the order it asked, so they are handed
//     over in that order, each from what arrived for it or from prefetched
//     pages; a background request whose first pages are prefetched gets
//     those, as far as they go without a gap (lazy-pages takes a reply
//     shorter than its request and asks for the rest again), and one whose
//     first page is not goes to the source as it came, exactly as without
//     prefetching;
//   - a reply is never longer than its request, and holds the pages of the
//     addresses it names: the source's memory is stopped, so any copy of a
//     page is the page;
//   - once lazy-pages says anything but PS_IOV_GET, everything after is
//     relayed as it is, behind the replies it is owed.
//
// Memory: at most prefetchInflight bytes asked and not arrived, and at most
// prefetchCache bytes held in all. Pages are dropped once handed over, and a
// prefetched run that the background transfer has passed without asking
// for it (the process unmapped it, or faulted it in page by page) is dropped
// when room is needed.

const (
	psHdrLen         = 32
	psIOVAddF        = 6
	psIOVGet         = 7
	pePresentFlag    = 4
	psReplyCmd       = pePresentFlag<<16 | psIOVAddF
	prefetchChunk    = 1 << 20
	prefetchInflight = 8 << 20
	prefetchCache    = 64 << 20
)

// psIOV is a page-server request or reply header.
type psIOV struct {
	cmd             uint32
	nr, vaddr, task uint64
}

func (h psIOV) appendTo(b []byte) []byte {
	b = binary.NativeEndian.AppendUint32(b, h.cmd)
	b = append(b, 0, 0, 0, 0)
	b = binary.NativeEndian.AppendUint64(b, h.nr)
	b = binary.NativeEndian.AppendUint64(b, h.vaddr)
	return binary.NativeEndian.AppendUint64(b, h.task)
}

func readPSIOV(b []byte) psIOV {
	return psIOV{
		cmd:   binary.NativeEndian.Uint32(b),
		nr:    binary.NativeEndian.Uint64(b[8:]),
		vaddr: binary.NativeEndian.Uint64(b[16:]),
		task:  binary.NativeEndian.Uint64(b[24:]),
	}
}

func (h psIOV) end() uint64 { return h.vaddr + h.nr*criu.PageSize }

// pfChunk is a run of pages asked of the source ahead of lazy-pages.
type pfChunk struct {
	task, start, end uint64
	data             []byte // the pages, as they arrive
	arrived          bool   // data is complete
	left             uint64 // pages not handed over yet
	refs             int    // replies waiting for it
}

// pfSeg is the part of a chunk a reply hands over.
type pfSeg struct {
	c      *pfChunk
	off, n uint64 // bytes
}

// pfReply is what lazy-pages is owed for one request, in the order asked.
type pfReply struct {
	req  psIOV
	nr   uint64  // pages in the reply: those asked, or fewer from segs
	segs []pfSeg // from prefetched chunks; else:
	data []byte  // the source's reply as it came (header and pages), or raw bytes
	done bool    // data is complete
}

func (r *pfReply) ready() bool {
	if r.segs == nil {
		return r.done
	}
	for _, s := range r.segs {
		if !s.c.arrived {
			return false
		}
	}
	return true
}

// pfAsked is a request the source will answer, in the order sent.
type pfAsked struct {
	chunk *pfChunk // a prefetch, or
	reply *pfReply // lazy-pages's own request, or neither: raw from here on
}

// prefetch is the state between lazy-pages and the source. It does no I/O:
// its caller (lazyTarget) passes on what it returns. Not safe for
// concurrent use.
type prefetch struct {
	plan     map[uint64][]criu.PageRange // per task: lazy runs not asked for yet
	planned  bool
	early    []psIOV           // what lazy-pages asked of the source before the plan
	tasks    []uint64          // tasks lazy-pages asked for, in that order
	progress map[uint64]uint64 // per task: where the background transfer is
	cursor   map[uint64]uint64 // per task: where the process last faulted
	chunks   map[uint64][]*pfChunk
	inflight int
	held     int // bytes of chunks asked or arrived, not handed over
	asked    []*pfAsked
	owed     []*pfReply
	raw      bool

	in  []byte // lazy-pages's bytes not parsed yet
	hdr []byte // the source's current reply header, as it arrives
	fil int    // bytes of the current reply's pages still to come

	chunk, maxInflight, maxHeld int // bytes: prefetchChunk, prefetchInflight, prefetchCache

	stats pfStats
}

type pfStats struct {
	Hits, Forwarded, Prefetched, Dropped int
	Faults, FaultHits                    int // one-page requests, and those answered from prefetched pages
}

func newPrefetch() *prefetch {
	return &prefetch{progress: map[uint64]uint64{}, cursor: map[uint64]uint64{}, chunks: map[uint64][]*pfChunk{},
		chunk: prefetchChunk, maxInflight: prefetchInflight, maxHeld: prefetchCache}
}

// setPlan gives the runs the source's CRIU serves (criu.LazyRanges); until
// then requests are only relayed. It returns requests for the source.
func (p *prefetch) setPlan(plan map[uint64][]criu.PageRange) []byte {
	if plan == nil {
		plan = map[uint64][]criu.PageRange{} // nothing to prefetch
	}
	p.plan = plan
	p.planned = true
	for _, h := range p.early { // asked for already: not again
		p.trim(h.task, h.vaddr, h.end())
	}
	p.early = nil
	return p.fill(nil)
}

// fromLazy takes bytes lazy-pages wrote and returns the bytes for the
// source: its requests that prefetched pages do not answer, and prefetches.
func (p *prefetch) fromLazy(b []byte) []byte {
	if p.raw {
		return b
	}
	p.in = append(p.in, b...)
	var out []byte
	for len(p.in) >= psHdrLen && !p.raw {
		h := readPSIOV(p.in)
		if h.cmd != psIOVGet {
			// The end (PS_IOV_FORCE_CLOSE), or something this does not
			// know: relay it and everything after as it is.
			p.raw = true
			p.asked = append(p.asked, &pfAsked{})
			out = append(out, p.in...)
			p.in = nil
			return out
		}
		out = p.ask(h, out)
		p.in = p.in[psHdrLen:]
	}
	if len(p.in) == 0 {
		p.in = p.in[:0:0] // let the buffer go
	}
	return p.fill(out)
}

// ask takes one PS_IOV_GET.
func (p *prefetch) ask(h psIOV, out []byte) []byte {
	if !slices.Contains(p.tasks, h.task) {
		p.tasks = append(p.tasks, h.task)
	}
	if h.nr > 1 && h.vaddr > p.progress[h.task] {
		p.progress[h.task] = h.vaddr // a background request
	}
	r := &pfReply{req: h, nr: h.nr}
	if h.nr == 1 {
		p.stats.Faults++
		// A fault: the process is here, and likely to go on.
		p.cursor[h.task] = h.end()
	}
	if segs, n := p.cover(h); segs != nil {
		// All of it, or the part the prefetched runs hold from its start
		// (a reply may be shorter than its request: uffd.c asks for the
		// rest again).
		r.segs, r.nr = segs, n
		for _, s := range segs {
			s.c.refs++
		}
		p.stats.Hits++
		if h.nr == 1 {
			p.stats.FaultHits++
		}
	} else {
		if p.planned {
			p.trim(h.task, h.vaddr, h.end())
		} else {
			p.early = append(p.early, h)
		}
		p.asked = append(p.asked, &pfAsked{reply: r})
		out = h.appendTo(out)
		p.stats.Forwarded++
	}
	p.owed = append(p.owed, r)
	return out
}

// cover returns the chunks that hold the pages h asks for from its start
// on, as far as they go without a gap, and how many pages that is; nil if
// no chunk holds its first page.
func (p *prefetch) cover(h psIOV) ([]pfSeg, uint64) {
	cs := p.chunks[h.task]
	var segs []pfSeg
	addr, end := h.vaddr, h.end()
	i := sort.Search(len(cs), func(i int) bool { return cs[i].end > addr })
	for ; addr < end && i < len(cs) && cs[i].start <= addr; i++ {
		c := cs[i]
		n := min(end, c.end) - addr
		segs = append(segs, pfSeg{c: c, off: addr - c.start, n: n})
		addr += n
	}
	return segs, (addr - h.vaddr) / criu.PageSize
}

// trim takes [start, end) of task out of the plan: lazy-pages asked for it.
func (p *prefetch) trim(task, start, end uint64) {
	rs := p.plan[task]
	i := sort.Search(len(rs), func(i int) bool { return rs[i].End > start })
	j := i
	for j < len(rs) && rs[j].Start < end {
		j++
	}
	if i == j {
		return
	}
	var keep []criu.PageRange
	if rs[i].Start < start {
		keep = append(keep, criu.PageRange{Start: rs[i].Start, End: start})
	}
	if rs[j-1].End > end {
		keep = append(keep, criu.PageRange{Start: end, End: rs[j-1].End})
	}
	p.plan[task] = slices.Replace(rs, i, j, keep...)
}

// fill asks for the next pages while there is room, appending the requests
// to out, for the tasks lazy-pages has asked for, in that order (next says
// where in each).
func (p *prefetch) fill(out []byte) []byte {
	if !p.planned || p.raw {
		return out
	}
	for p.inflight+p.chunk <= p.maxInflight {
		if p.held+p.chunk > p.maxHeld && !p.dropPassed() {
			break
		}
		task, start, end, ok := p.next()
		if !ok {
			break
		}
		p.trim(task, start, end)
		c := &pfChunk{task: task, start: start, end: end, left: (end - start) / criu.PageSize}
		cs := p.chunks[task]
		i, _ := slices.BinarySearchFunc(cs, start, func(c *pfChunk, a uint64) int { return cmp.Compare(c.start, a) })
		p.chunks[task] = slices.Insert(cs, i, c)
		n := int(end - start)
		p.inflight += n
		p.held += n
		p.asked = append(p.asked, &pfAsked{chunk: c})
		out = psIOV{cmd: psIOVGet, nr: c.left, vaddr: start, task: task}.appendTo(out)
		p.stats.Prefetched++
	}
	return out
}

// next is the next run to prefetch: [start, end) of task. A task's pages
// are wanted next at two places: where its process last faulted (a process
// reading its memory in order runs ahead of the transfer, and each of its
// faults would otherwise wait its round trip) and where lazy-pages's
// background transfer is (it goes from the lowest address up, wherever the
// process is). The pages not asked for yet that come first after the one
// of them with fewer prefetched ahead of it go first; past the last run,
// from the start.
func (p *prefetch) next() (task, start, end uint64, ok bool) {
	for _, t := range p.tasks {
		rs := p.plan[t]
		if len(rs) == 0 {
			continue
		}
		i, start, ahead := 0, rs[0].Start, uint64(math.MaxUint64)
		for _, m := range [...]map[uint64]uint64{p.cursor, p.progress} {
			pos, set := m[t]
			if !set {
				continue
			}
			j := sort.Search(len(rs), func(j int) bool { return rs[j].End > pos })
			if j == len(rs) {
				continue
			}
			if s := max(rs[j].Start, pos); s-pos < ahead {
				i, start, ahead = j, s, s-pos
			}
		}
		return t, start, min(rs[i].End, start+uint64(p.chunk)), true
	}
	return 0, 0, 0, false
}

// dropPassed drops one arrived chunk that nothing waits for and that lies
// behind its task's background transfer: lazy-pages will not ask for it.
func (p *prefetch) dropPassed() bool {
	for t, cs := range p.chunks {
		for _, c := range cs {
			if c.end > p.progress[t] {
				break
			}
			if c.arrived && c.refs == 0 {
				p.drop(c)
				p.stats.Dropped++
				return true
			}
		}
	}
	return false
}

func (p *prefetch) drop(c *pfChunk) {
	cs := p.chunks[c.task]
	if i := slices.Index(cs, c); i >= 0 {
		p.chunks[c.task] = slices.Delete(cs, i, i+1)
		p.held -= int(c.end - c.start)
	}
}

// fromSource takes bytes of the source's CRIU and returns requests for the
// source (prefetches, now that there is room). An error means the stream
// cannot be trusted: the copy it feeds must die.
func (p *prefetch) fromSource(b []byte) ([]byte, error) {
	var out []byte
	for len(b) > 0 {
		if len(p.asked) == 0 {
			return nil, fmt.Errorf("the source's CRIU sent %d bytes nobody asked for", len(b))
		}
		a := p.asked[0]
		if a.chunk == nil && a.reply == nil {
			// Raw from here on: what lazy-pages's last words are owed.
			p.owed = append(p.owed, &pfReply{data: slices.Clone(b), done: true})
			return out, nil
		}
		if len(p.hdr) < psHdrLen {
			n := min(psHdrLen-len(p.hdr), len(b))
			p.hdr = append(p.hdr, b[:n]...)
			b = b[n:]
			if len(p.hdr) < psHdrLen {
				break
			}
			var err error
			if out, err = p.header(a, out); err != nil {
				return nil, err
			}
		}
		n := min(p.fil, len(b))
		if a.chunk != nil {
			a.chunk.data = append(a.chunk.data, b[:n]...)
		} else {
			a.reply.data = append(a.reply.data, b[:n]...)
		}
		p.fil -= n
		b = b[n:]
		if p.fil == 0 {
			out = p.complete(a, out)
		}
	}
	return out, nil
}

// header checks a reply's header against what was asked.
func (p *prefetch) header(a *pfAsked, out []byte) ([]byte, error) {
	h := readPSIOV(p.hdr)
	var want psIOV
	if a.chunk != nil {
		want = psIOV{nr: (a.chunk.end - a.chunk.start) / criu.PageSize, vaddr: a.chunk.start, task: a.chunk.task}
	} else {
		want = a.reply.req
	}
	if h.cmd != psReplyCmd || h.vaddr != want.vaddr || h.task != want.task || h.nr == 0 || h.nr > want.nr {
		return nil, fmt.Errorf("the source's CRIU answered %#x %d pages at %#x of task %d to a request for %d at %#x of %d",
			h.cmd, h.nr, h.vaddr, h.task, want.nr, want.vaddr, want.task)
	}
	p.fil = int(h.nr * criu.PageSize)
	if a.chunk != nil {
		a.chunk.data = make([]byte, 0, p.fil)
		if h.nr < want.nr {
			out = p.shorten(a.chunk, h.vaddr+h.nr*criu.PageSize, out)
		}
	} else {
		a.reply.data = make([]byte, 0, psHdrLen+p.fil)
		a.reply.data = append(a.reply.data, p.hdr...)
	}
	return out, nil
}

// shorten makes c end at end, the page server having fewer pages than
// planned: replies counting on the rest go to the source as they were
// asked. (It cannot happen with the runs LazyRanges reads; were it to, this
// keeps lazy-pages right.)
func (p *prefetch) shorten(c *pfChunk, end uint64, out []byte) []byte {
	p.inflight -= int(c.end - end)
	p.held -= int(c.end - end)
	c.end = end
	c.left = (end - c.start) / criu.PageSize
	for _, r := range p.owed {
		if r.segs == nil || !slices.ContainsFunc(r.segs, func(s pfSeg) bool { return s.c == c && s.off+s.n > end-c.start }) {
			continue
		}
		for _, s := range r.segs {
			s.c.refs--
		}
		r.segs = nil
		p.asked = append(p.asked, &pfAsked{reply: r})
		out = r.req.appendTo(out)
		p.stats.Hits--
		p.stats.Forwarded++
	}
	return out
}

// complete ends the reply to the oldest request.
func (p *prefetch) complete(a *pfAsked, out []byte) []byte {
	p.asked = p.asked[1:]
	p.hdr = p.hdr[:0]
	if a.chunk != nil {
		a.chunk.arrived = true
		p.inflight -= int(a.chunk.end - a.chunk.start)
		return p.fill(out)
	}
	a.reply.done = true
	return out
}

// pop returns the next reply lazy-pages is owed, if it is complete.
func (p *prefetch) pop() net.Buffers {
	if len(p.owed) == 0 || !p.owed[0].ready() {
		return nil
	}
	r := p.owed[0]
	p.owed[0] = nil
	p.owed = p.owed[1:]
	if r.segs == nil {
		return net.Buffers{r.data}
	}
	h := psIOV{cmd: psReplyCmd, nr: r.nr, vaddr: r.req.vaddr, task: r.req.task}
	bufs := net.Buffers{h.appendTo(make([]byte, 0, psHdrLen))}
	for _, s := range r.segs {
		bufs = append(bufs, s.c.data[s.off:s.off+s.n])
		s.c.refs--
		s.c.left -= s.n / criu.PageSize
		if s.c.left == 0 {
			p.drop(s.c)
		}
	}
	return bufs
}
