package criu

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
)

// PageSize is the size of the pages CRIU's page server counts in.
const PageSize = 4096

// Pagemap entry flags (CRIU's criu/include/pagemap.h).
const (
	peParent  = 1 << 0
	peLazy    = 1 << 1
	pePresent = 1 << 2
)

// PageRange is a run of pages by their addresses at dump time: [Start, End).
type PageRange struct{ Start, End uint64 }

var pagemapName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^pagemap-(\d+)\.img$`) })

// LazyRanges reads what a lazy dump (DumpOpts.Lazy) left for the page
// server to serve: for each dumped task, by the id the page server knows it
// by (its pid in the dump, which names its pagemap-ID.img), the runs of pages
// that were not written to the images, in ascending order. Each run is one
// pagemap entry, which is one buffer of the page server's: a request for
// pages inside a run is answered in full, and one outside every run makes
// the page server fail (it answers "no pages" by ending the session).
func LazyRanges(dir string) (map[uint64][]PageRange, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := make(map[uint64][]PageRange)
	for _, e := range ents {
		m := pagemapName().FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		id, err := strconv.ParseUint(m[1], 10, 64)
		if err != nil {
			continue
		}
		rs, err := lazyRanges(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		if len(rs) > 0 {
			out[id] = rs
		}
	}
	return out, nil
}

func lazyRanges(path string) ([]PageRange, error) {
	es, err := pagemapEntries(path)
	if err != nil {
		return nil, fmt.Errorf("criu: reading %s: %v", filepath.Base(path), err)
	}
	var rs []PageRange
	for _, pe := range es {
		// A lazy dump marks the pages it left with the page server lazy
		// and not present (in the images).
		if pe.flags&(peParent|peLazy|pePresent) != peLazy || pe.inParent || pe.nrPages == 0 {
			continue // pages in the images or a parent's
		}
		r := PageRange{pe.vaddr, pe.vaddr + pe.nrPages*PageSize}
		if len(rs) > 0 && r.Start < rs[len(rs)-1].End {
			return nil, fmt.Errorf("criu: %s: pagemap entries out of order at %#x", filepath.Base(path), r.Start)
		}
		rs = append(rs, r)
	}
	return rs, nil
}
