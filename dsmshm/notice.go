package dsmshm

import (
	"cmp"
	"slices"
)

// pageKey identifies a page of the job: segment id in the high half, page
// index in the low half.
type pageKey uint64

func keyOf(seg, page uint32) pageKey { return pageKey(seg)<<32 | pageKey(page) }

// noticeSet is what a holder knows about the versions pages must have:
// for each page the newest version it has heard of. Because a newer notice
// subsumes every older one for the same page, the set never holds more than
// one entry per page: this is how write notices are garbage-collected, and
// why the protocol's memory stays bounded however long a program runs.
//
// Entries carry the local sequence number at which they last grew, so a
// holder can send only what changed since it last talked to someone (since).
// log lists updates in sequence order, so since costs what it returns rather
// than the size of the set; it is compacted when stale updates dominate.
type noticeSet struct {
	v   map[pageKey]stamped
	log []logEntry
	seq uint64
}

type logEntry struct {
	key pageKey
	seq uint64
}

type stamped struct {
	ver, seq uint64
}

func newNoticeSet() *noticeSet { return &noticeSet{v: make(map[pageKey]stamped)} }

// add records ns and returns the notices that were news.
func (s *noticeSet) add(ns []notice) []notice {
	var fresh []notice
	for _, n := range ns {
		k := keyOf(n.Seg, n.Page)
		if old, ok := s.v[k]; ok && old.ver >= n.Ver {
			continue
		}
		s.seq++
		s.v[k] = stamped{ver: n.Ver, seq: s.seq}
		s.log = append(s.log, logEntry{key: k, seq: s.seq})
		fresh = append(fresh, n)
	}
	if len(s.log) > 2*len(s.v)+64 {
		s.compact()
	}
	return fresh
}

// compact drops log entries superseded by a later update of the same page.
func (s *noticeSet) compact() {
	live := s.log[:0]
	for _, e := range s.log {
		if s.v[e.key].seq == e.seq {
			live = append(live, e)
		}
	}
	s.log = live
}

// since returns the entries that grew after sequence number seq, sorted by
// page, together with the current sequence number.
func (s *noticeSet) since(seq uint64) ([]notice, uint64) {
	i, _ := slices.BinarySearchFunc(s.log, seq+1, func(e logEntry, t uint64) int { return cmp.Compare(e.seq, t) })
	var ns []notice
	for _, e := range s.log[i:] {
		if cur := s.v[e.key]; cur.seq == e.seq {
			ns = append(ns, notice{Seg: uint32(e.key >> 32), Page: uint32(e.key), Ver: cur.ver})
		}
	}
	sortNotices(ns)
	return ns, s.seq
}

func (s *noticeSet) len() int { return len(s.v) }

func sortNotices(ns []notice) {
	slices.SortFunc(ns, func(a, b notice) int {
		return cmp.Compare(keyOf(a.Seg, a.Page), keyOf(b.Seg, b.Page))
	})
}
