package dsmshm

/*
#cgo CFLAGS: -O2 -Wall -Wextra -Wno-unused-parameter
#include <stdlib.h>
#include "dsm.h"
*/
import "C"

import (
	"fmt"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// This file is the only one that calls into C. Pointers passed to C point to
// Go memory without Go pointers inside (slices of integers and bytes) and
// are not retained by C after the call returns, as cgo's rules require.

var installOnce struct {
	sync.Once
	err error
}

// installHandler installs the SIGSEGV handler once per process, after the Go
// runtime installed its own (which the handler chains to).
func installHandler() error {
	installOnce.Do(func() {
		if rc := C.dsm_install_handler(); rc != 0 {
			installOnce.err = fmt.Errorf("dsmshm: installing SIGSEGV handler: %w", syscall.Errno(-rc))
		}
	})
	return installOnce.err
}

func errno(rc C.int) error {
	if rc == 0 {
		return nil
	}
	return syscall.Errno(-rc)
}

// cnode owns a C dsm_node: the page channels and the page server thread.
type cnode struct{ p *C.dsm_node }

func newCNode(rank, size int, enc bool) (cnode, error) {
	e := 0
	if enc {
		e = 1
	}
	p := C.dsm_node_new(C.int(rank), C.int(size), C.int(e))
	if p == nil {
		return cnode{}, fmt.Errorf("dsmshm: allocating node: out of memory")
	}
	if err := errno(C.dsm_node_start(p)); err != nil {
		C.dsm_node_free(p)
		return cnode{}, fmt.Errorf("dsmshm: starting page server thread: %w", err)
	}
	return cnode{p}, nil
}

// keyPtr passes a key to C, which copies it.
func keyPtr(k *[secKeyLen]byte) *C.uint8_t { return (*C.uint8_t)(unsafe.Pointer(&k[0])) }

// setChan makes fd, authenticated as s, the page channel to rank.
func (c cnode) setChan(rank, fd int, s *session) {
	C.dsm_node_set_chan(c.p, C.int(rank), C.int(fd), keyPtr(&s.txKey), keyPtr(&s.rxKey))
}

// serveFD has the page server serve fd, a page channel from rank
// authenticated as s, in place of rank's previous one.
func (c cnode) serveFD(fd, rank int, s *session) error {
	return errno(C.dsm_node_serve_fd(c.p, C.int(fd), C.int(rank), keyPtr(&s.txKey), keyPtr(&s.rxKey)))
}

// setRedialFD hands C an eventfd (which C owns from then on) that it
// signals when a page channel breaks and wants a new one (see chanRedial).
func (c cnode) setRedialFD(fd int) { C.dsm_node_set_redial_fd(c.p, C.int(fd)) }

// chanRedial reports whether the page channel to rank broke (a fetch failed
// on it) and waits for a new one.
func (c cnode) chanRedial(rank int) bool { return C.dsm_node_chan_redial(c.p, C.int(rank)) != 0 }

// replaceChan installs fd as the page channel to rank if that channel is
// still broken and waiting (not replaced meanwhile, its home not away). It
// reports whether it did; if not, fd is still the caller's.
func (c cnode) replaceChan(rank, fd int, s *session) bool {
	return C.dsm_node_replace_chan(c.p, C.int(rank), C.int(fd), keyPtr(&s.txKey), keyPtr(&s.rxKey)) != 0
}

// chanAway closes the page channel to rank, which announced a migration:
// faults on its pages wait up to the away timeout for a new channel.
func (c cnode) chanAway(rank int) { C.dsm_node_chan_away(c.p, C.int(rank)) }

// setWaits sets how long a fault waits for a broken page channel to be
// replaced: down for a home that vanished, away for one that announced a
// migration.
func (c cnode) setWaits(down, away time.Duration) {
	C.dsm_node_set_waits(c.p, C.uint64_t(down.Nanoseconds()), C.uint64_t(away.Nanoseconds()))
}

// setFailed makes faults waiting for a page channel give up; a fault that
// must abort the process says why.
func (c cnode) setFailed(why string) {
	cs := C.CString(why)
	defer C.free(unsafe.Pointer(cs))
	C.dsm_node_set_failed(c.p, cs)
}

// pause blocks new page fetches, waits for those in flight, and closes every
// page channel, this rank's and those its page server serves.
func (c cnode) pause() { C.dsm_node_pause(c.p) }

// unpause lets fetches proceed again.
func (c cnode) unpause() { C.dsm_node_unpause(c.p) }

// stop ends the page server thread, so no request touches a segment.
func (c cnode) stop() { C.dsm_node_stop(c.p) }

func (c cnode) free() { C.dsm_node_free(c.p) }

type cstats struct {
	readFaults, writeFaults, twins, fetches, fetchNS, served, invalidations, badTags, fetchReqs, serveNS uint64
}

func (c cnode) stats() cstats {
	var s C.dsm_cstats
	C.dsm_node_stats(c.p, &s)
	return cstats{uint64(s.read_faults), uint64(s.write_faults), uint64(s.twins), uint64(s.fetches),
		uint64(s.fetch_ns), uint64(s.served), uint64(s.invalidations), uint64(s.bad_tags), uint64(s.fetch_reqs),
		uint64(s.serve_ns)}
}

// setFetchRun sets the most pages one fetch asks for (1..fetchRunMax).
func (c cnode) setFetchRun(pages int) { C.dsm_node_set_fetch_run(c.p, C.int(pages)) }

// fetchRunMax is the most pages one fetch asks for (DSM_FETCH_RUN_MAX).
const fetchRunMax = C.DSM_FETCH_RUN_MAX

// cseg owns a C dsm_seg: the two mappings of the segment's memory, the twin
// area and the page table.
type cseg struct{ p *C.dsm_seg }

func newCSeg(n cnode, id uint32, homes []int32) (cseg, error) {
	var rc C.int
	p := C.dsm_seg_new(n.p, C.uint32_t(id), C.size_t(len(homes)), (*C.int32_t)(unsafe.Pointer(&homes[0])), &rc)
	if p == nil {
		return cseg{}, errno(rc)
	}
	return cseg{p}, nil
}

// base returns the application view. It is memory mapped outside the Go
// heap and lives until free, so slices over it are sound until then.
func (s cseg) base() unsafe.Pointer { return unsafe.Pointer(C.dsm_seg_app(s.p)) }

func (s cseg) free() { C.dsm_seg_free(s.p) }

func (s cseg) prepare(first, n int, write bool) error {
	w := C.int(0)
	if write {
		w = 1
	}
	return errno(C.dsm_prepare(s.p, C.size_t(first), C.size_t(n), w))
}

// collectDirty appends the pages currently writable (dirty) to out[:0].
func (s cseg) collectDirty(out []uint32) []uint32 {
	n := C.dsm_collect_dirty(s.p, (*C.uint32_t)(unsafe.Pointer(&out[:1][0])))
	return out[:n]
}

// flush write-protects pages and encodes their diffs into buf, which must
// hold maxDiff bytes per page. See dsm_flush_pages.
func (s cseg) flush(pages []uint32, buf []byte, difflen []int32, ver []uint64) error {
	return errno(C.dsm_flush_pages(s.p, (*C.uint32_t)(unsafe.Pointer(&pages[0])), C.size_t(len(pages)),
		(*C.uint8_t)(unsafe.Pointer(&buf[0])), (*C.int32_t)(unsafe.Pointer(&difflen[0])),
		(*C.uint64_t)(unsafe.Pointer(&ver[0]))))
}

func (s cseg) applyDiff(page uint32, d []byte) (before, after uint64, err error) {
	var b, a C.uint64_t
	var p *C.uint8_t
	if len(d) > 0 {
		p = (*C.uint8_t)(unsafe.Pointer(&d[0]))
	}
	err = errno(C.dsm_apply_diff(s.p, C.uint32_t(page), p, C.size_t(len(d)), &b, &a))
	return uint64(b), uint64(a), err
}

func (s cseg) setVersionIf(page uint32, before, after uint64) {
	C.dsm_set_version_if(s.p, C.uint32_t(page), C.uint64_t(before), C.uint64_t(after))
}

// dropped is what dropCached freed and kept.
type dropped struct{ copies, twins, kept uint64 }

// dropCached frees the clean copies of pages homed elsewhere and the twins
// of pages that are not dirty, adding to d (dsm_seg_drop_cached).
func (s cseg) dropCached(d *dropped) error {
	var cd C.dsm_drop
	err := errno(C.dsm_seg_drop_cached(s.p, &cd))
	d.copies += uint64(cd.copies)
	d.twins += uint64(cd.twins)
	d.kept += uint64(cd.kept)
	return err
}

// invalidate drops the copies of pages older than req; it returns the pages
// it could not drop because they are dirty. dirty needs room for len(pages).
func (s cseg) invalidate(pages []uint32, req []uint64, dirty []uint32) ([]uint32, error) {
	rc := C.dsm_invalidate(s.p, (*C.uint32_t)(unsafe.Pointer(&pages[0])), (*C.uint64_t)(unsafe.Pointer(&req[0])),
		C.size_t(len(pages)), (*C.uint32_t)(unsafe.Pointer(&dirty[0])))
	if rc < 0 {
		return nil, syscall.Errno(-rc)
	}
	return dirty[:rc], nil
}

// Page states, as in dsm.h.
const (
	stateInvalid = C.DSM_INVALID
	stateRO      = C.DSM_RO
	stateRW      = C.DSM_RW
)

func (s cseg) pageState(page uint32) (state int, ver uint64) {
	var v C.uint64_t
	st := C.dsm_page_state(s.p, C.uint32_t(page), &v)
	return int(st), uint64(v)
}

func init() {
	if C.DSM_PAGE != pageSize || C.DSM_MAX_DIFF != maxDiff {
		panic("dsmshm: dsm.h and wire.go disagree on page or diff size")
	}
}
