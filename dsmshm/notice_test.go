package dsmshm

import (
	"fmt"
	"testing"
)

func TestNoticeSet(t *testing.T) {
	s := newNoticeSet()
	fresh := s.add([]notice{{0, 1, 5}, {0, 2, 3}, {1, 0, 1}})
	if len(fresh) != 3 {
		t.Fatalf("fresh = %v", fresh)
	}
	all, seq := s.since(0)
	if fmt.Sprint(all) != "[{0 1 5} {0 2 3} {1 0 1}]" || seq != 3 {
		t.Fatalf("since(0) = %v, %d", all, seq)
	}
	// Older or equal versions are not news; a newer one is.
	fresh = s.add([]notice{{0, 1, 4}, {0, 2, 3}, {0, 2, 9}})
	if fmt.Sprint(fresh) != "[{0 2 9}]" {
		t.Fatalf("fresh = %v", fresh)
	}
	delta, seq2 := s.since(seq)
	if fmt.Sprint(delta) != "[{0 2 9}]" || seq2 != 4 {
		t.Fatalf("since(%d) = %v, %d", seq, delta, seq2)
	}
	if d, _ := s.since(seq2); len(d) != 0 {
		t.Fatalf("nothing changed, since = %v", d)
	}
}

// However many updates a set sees, it holds one entry per page and its log
// stays proportional to that.
func TestNoticeSetStaysBounded(t *testing.T) {
	s := newNoticeSet()
	const pages = 10
	var last uint64
	for v := uint64(1); v <= 10000; v++ {
		s.add([]notice{{Seg: 0, Page: uint32(v % pages), Ver: v}})
		if v%997 == 0 {
			d, seq := s.since(last)
			if len(d) == 0 || len(d) > pages {
				t.Fatalf("delta of %d entries", len(d))
			}
			last = seq
		}
	}
	if s.len() != pages || len(s.log) > 2*pages+64 {
		t.Fatalf("%d entries, log of %d", s.len(), len(s.log))
	}
	all, _ := s.since(0)
	for _, n := range all {
		if n.Ver < 10000-pages {
			t.Fatalf("stale entry %v", n)
		}
	}
}
