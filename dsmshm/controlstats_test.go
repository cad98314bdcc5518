package dsmshm

import (
	"testing"
	"time"
)

// The counters a rank gives its daemon (runtime's Hooks.Stats: migrated
// serve --metrics) are its Stats, read without the locks a synchronization
// holds: they come at once while a release holds syncMu, and after Close
// they are the final ones.
func TestControlStats(t *testing.T) {
	nodes, _ := startTCP(t, 2)
	segs := allocAll(t, nodes, "stats", 4*pageSize)
	err := each(nodes, func(n *Node) error {
		v := View[int64](segs[n.Rank()])
		for i := range 4 {
			v[pageSize/8*i+n.Rank()]++ // writes to pages homed at both ranks
		}
		return n.Barrier(1)
	})
	if err != nil {
		t.Fatal(err)
	}
	n := nodes[1]
	got, want := n.migrationHooks().Stats(), n.Stats()
	if got.ReadFaults != want.ReadFaults || got.WriteFaults != want.WriteFaults || got.PagesFetched != want.PagesFetched ||
		got.FetchRequests != want.FetchRequests || got.Diffs != want.Diffs || got.DiffsApplied != want.DiffsApplied ||
		got.Barriers != want.Barriers || got.BarrierWaitNS != int64(want.BarrierWait) ||
		got.LockWaitNS != int64(want.LockWait) || got.FetchTimeNS != int64(want.FetchTime) || got.ServeTimeNS != int64(want.ServeTime) ||
		got.PagesServed != want.PagesServed || got.LockAcquires != want.LockAcquires {
		t.Fatalf("control stats %+v, Stats %+v", got, want)
	}
	if got.WriteFaults == 0 || got.Diffs == 0 || got.Barriers == 0 {
		t.Fatalf("no faults, diffs or barriers counted: %+v", got)
	}

	n.syncMu.Lock() // as a release in progress holds it
	done := make(chan struct{})
	go func() { n.controlStats(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the control stats wait for syncMu")
	}
	n.syncMu.Unlock()

	if err := each(nodes, (*Node).Close); err != nil {
		t.Fatal(err)
	}
	if after := n.controlStats(); after.WriteFaults < got.WriteFaults || after.Barriers <= got.Barriers {
		t.Fatalf("after Close: %+v, before: %+v", after, got)
	}
}
