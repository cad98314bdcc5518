package dsmshm

import (
	"time"

	mrt "dsmigrate/runtime"
)

// Stats are counters of one rank since Start, in the spirit of TreadMarks'
// Tmk_stat.
type Stats struct {
	ReadFaults    uint64 // faults on invalid pages by reads (and spurious faults)
	WriteFaults   uint64 // faults by writes to read-only or invalid pages
	Twins         uint64 // pages copied before a first write
	Diffs         uint64 // diffs this rank made and sent to homes
	DiffBytes     uint64 // encoded size of those diffs
	DiffsApplied  uint64 // diffs this rank applied as a home
	PagesFetched  uint64 // pages fetched from their homes
	FetchRequests uint64 // page requests (round trips) that fetched them: a fault fetches a run of pages
	PagesServed   uint64 // pages this rank sent as a home
	Invalidations uint64 // cached pages invalidated by write notices
	WriteNotices  int    // pages this rank currently knows versions of
	MessagesSent  uint64 // control messages (page requests are FetchRequests)
	BytesSent     uint64 // bytes of control messages
	LockAcquires  uint64
	Barriers      uint64 // barriers passed, including Start, Alloc and Close
	LockWait      time.Duration
	BarrierWait   time.Duration
	FetchTime     time.Duration // time spent fetching pages, summed over threads
	// ServeTime is the time this rank's page server spent answering page
	// requests, from a request read whole to its reply handed to the
	// socket (the tag checked, the pages copied, the reply sealed and
	// sent): the home's share of other ranks' FetchTime.
	ServeTime time.Duration
	// Rejected counts connections to this rank that were dropped before
	// they carried anything: failed authentication (an outsider, another
	// job), or beyond the cap on unauthenticated connections.
	Rejected uint64
	// BadTags counts page requests and replies whose tag did not match
	// (forged or damaged on the way); each dropped its channel.
	BadTags uint64
	// MigDropped counts the pages (copies of pages homed elsewhere, and
	// twins) this rank freed before its migrations' dumps: what only it
	// cached, fetched again from the homes as it needs them. MigKept is
	// what the last dump had to keep of it: dirty pages homed elsewhere,
	// each with its twin (writes not yet released).
	MigDropped, MigKept uint64
	WaitTime            time.Duration // LockWait + BarrierWait + FetchTime
}

// Stats returns this rank's counters.
func (n *Node) Stats() Stats {
	n.freeMu.RLock()
	c := n.final
	if !n.freed {
		c = n.c.stats()
	}
	n.freeMu.RUnlock()
	n.syncMu.Lock()
	wn := n.known.len()
	n.syncMu.Unlock()
	s := Stats{
		ReadFaults: c.readFaults, WriteFaults: c.writeFaults, Twins: c.twins,
		Diffs: n.st.diffs.Load(), DiffBytes: n.st.diffBytes.Load(), DiffsApplied: n.st.diffsApplied.Load(),
		PagesFetched: c.fetches, FetchRequests: c.fetchReqs, PagesServed: c.served, Invalidations: c.invalidations, WriteNotices: wn,
		MessagesSent: n.ctr.msgs.Load(), BytesSent: n.ctr.bytes.Load(),
		LockAcquires: n.st.lockAcquires.Load(), Barriers: n.st.barriers.Load(),
		LockWait:    time.Duration(n.st.lockWait.Load()),
		BarrierWait: time.Duration(n.st.barrierWait.Load()),
		FetchTime:   time.Duration(c.fetchNS),
		ServeTime:   time.Duration(c.serveNS),
		BadTags:     c.badTags,
		MigDropped:  n.st.migDropped.Load(),
		MigKept:     n.st.migKept.Load(),
	}
	if n.tcp != nil {
		s.Rejected = n.tcp.rejected.Load()
	}
	s.WaitTime = s.LockWait + s.BarrierWait + s.FetchTime
	return s
}

// controlStats are the rank's counters for its daemon's metrics (runtime's
// Hooks.Stats, asked for when `migrated serve --metrics` is scraped): atomic
// reads only. Unlike Stats it takes no lock a synchronization holds
// (syncMu), so it answers at once whatever the rank's threads are doing;
// freeMu is only ever held exclusively by Close, briefly.
func (n *Node) controlStats() mrt.Stats {
	n.freeMu.RLock()
	c := n.final
	if !n.freed {
		c = n.c.stats()
	}
	n.freeMu.RUnlock()
	return mrt.Stats{
		ReadFaults: c.readFaults, WriteFaults: c.writeFaults, PagesFetched: c.fetches, FetchRequests: c.fetchReqs,
		PagesServed: c.served, Diffs: n.st.diffs.Load(), DiffsApplied: n.st.diffsApplied.Load(),
		Barriers: n.st.barriers.Load(), LockAcquires: n.st.lockAcquires.Load(),
		BarrierWaitNS: n.st.barrierWait.Load(), LockWaitNS: n.st.lockWait.Load(), FetchTimeNS: int64(c.fetchNS),
		ServeTimeNS: int64(c.serveNS),
	}
}
