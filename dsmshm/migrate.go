package dsmshm

import (
	"errors"
	"fmt"
	"math/rand/v2"
	rdebug "runtime/debug"
	"sync"
	"time"

	mrt "dsmigrate/runtime"
)

// register makes the rank migration-aware when migrated launched it.
func (n *Node) register() error {
	err := mrt.Register(n.migrationHooks())
	if errors.Is(err, mrt.ErrNotManaged) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dsmshm: registering with migrated: %w", err)
	}
	return nil
}

// migrationHooks are the rank's part in a migration (see doc.go,
// "Migration"). Tests call them directly.
func (n *Node) migrationHooks() mrt.Hooks {
	return mrt.Hooks{Prepare: n.prepareMigration, Resume: n.resumeMigration, Stats: n.controlStats}
}

// prepareMigration returns when the rank may be dumped: no connection of it
// is open (its listener closed too), no page fetch is in flight and none will start,
// and nothing of it dials until resumeMigration.
func (n *Node) prepareMigration() error {
	if n.tcp == nil {
		return errors.New("dsmshm: migration needs the TCP transport")
	}
	if err := n.checkOpen(); err != nil {
		return err
	}
	if err := n.askPeers(); err != nil {
		return err
	}
	gcOff()
	if err := n.tcp.pause(); err != nil {
		return err
	}
	return n.dropCached()
}

// dropCached frees, before the dump, what this rank only caches: copies of
// pages homed elsewhere that are not dirty, and twins of pages that are not
// dirty. The image then holds only what only this rank has (its home pages,
// its dirty pages and their twins, its private memory); what it dropped it
// fetches again, from the homes, as it needs it on the target. Paused, it
// fetches nothing meanwhile: a thread that touches a dropped page waits.
func (n *Node) dropCached() error {
	n.segMu.RLock()
	segs := n.segs
	n.segMu.RUnlock()
	var d dropped
	for _, s := range segs {
		if err := s.c.dropCached(&d); err != nil {
			return fmt.Errorf("dsmshm: freeing cached pages before the dump: %w", err)
		}
	}
	n.st.migDropped.Add(d.copies + d.twins)
	n.st.migKept.Store(d.kept)
	return nil
}

// One rank of a job migrates at a time. Peers wait for an away rank's news
// on the connections it reopens; two ranks away at once may each miss the
// other's away notice while pausing, and later take its silence for a
// failure. So before it pauses, a rank asks every peer (mMigIntent) and
// goes on only if all say yes. A rank says no while it asks or migrates
// itself, or while its yes to another rank stands: until that rank's
// migration is over (mMigDone) or, should that never come, for migGrantTTL.
// Two ranks that ask at once hear no from each other; each asks again after
// a random pause, for up to migRetryFor, so one usually gets through. A
// refusal comes before the pause: nothing to undo, and the move can be
// retried.
type migVote struct {
	round   int64          // this rank's last request
	replies chan migAnswer // answers to the request in progress; nil: none
	own     bool           // this rank asks or migrates
	granted bool           // this rank said yes to grant...
	grant   int
	grantAt time.Time // ...then
}

type migAnswer struct {
	from int
	no   bool
}

const (
	migAskTimeout = 10 * time.Second
	// A refused rank asks again for this long (pausing 5-25 ms at random in
	// between): the peer's migration may have just ended (its migrate-done
	// still in flight), or two ranks asked at once and one should go.
	migRetryFor = 300 * time.Millisecond
	migGrantTTL = 10 * time.Minute // beyond any away rank's wait (AwayTimeout's default is 5 min)
)

var errBusy = errors.New("move one rank at a time (try again when it is back)")

func errMigrating(r int) error {
	return fmt.Errorf("dsmshm: rank %d of this job is migrating or about to; %w", r, errBusy)
}

// askPeers asks every peer whether this rank may migrate now, again for a
// short while if one says no.
func (n *Node) askPeers() error {
	end := time.Now().Add(migRetryFor)
	for {
		err := n.askOnce()
		if err == nil || !errors.Is(err, errBusy) || time.Now().After(end) {
			return err
		}
		time.Sleep(time.Duration(5+rand.IntN(20)) * time.Millisecond)
	}
}

func (n *Node) askOnce() error {
	if r := n.tcp.awayPeer(); r >= 0 {
		return errMigrating(r)
	}
	n.mu.Lock()
	if n.mig.own {
		n.mu.Unlock()
		return errors.New("dsmshm: this rank is migrating already")
	}
	if n.mig.granted && time.Since(n.mig.grantAt) < migGrantTTL {
		r := n.mig.grant
		n.mu.Unlock()
		return errMigrating(r)
	}
	n.mig.round++
	round := n.mig.round
	ch := make(chan migAnswer, n.size)
	n.mig.own, n.mig.replies = true, ch
	n.mu.Unlock()
	refuse := func(err error) error {
		n.endMig()
		return err
	}
	for r := range n.size {
		if r != n.rank {
			if err := n.tr.send(r, &message{Type: mMigIntent, ID: round}); err != nil {
				return refuse(err)
			}
		}
	}
	timeout := time.NewTimer(migAskTimeout)
	defer timeout.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for got := 0; got < n.size-1; {
		select {
		case a := <-ch:
			if a.no {
				return refuse(errMigrating(a.from))
			}
			got++
		case <-tick.C:
			// A peer that went away meanwhile will not answer until it is back.
			if r := n.tcp.awayPeer(); r >= 0 {
				return refuse(errMigrating(r))
			}
		case <-timeout.C:
			return refuse(fmt.Errorf("dsmshm: peers did not answer within %v whether this rank may migrate", migAskTimeout))
		case <-n.dead:
			return refuse(n.failErr)
		}
	}
	return nil
}

// endMig ends this rank's migration (or request): peers that said yes may
// say yes to another rank.
func (n *Node) endMig() {
	n.mu.Lock()
	own := n.mig.own
	n.mig.own, n.mig.replies = false, nil
	n.mu.Unlock()
	if !own {
		return
	}
	for r := range n.size {
		if r != n.rank {
			n.tr.send(r, &message{Type: mMigDone}) // a peer that is gone needs no news
		}
	}
}

// handleMig runs on the dispatcher. A reply's ID is the request's round
// times two, plus one for no: a late answer to an earlier request is
// dropped.
func (n *Node) handleMig(from int, m *message) error {
	switch m.Type {
	case mMigIntent:
		n.mu.Lock()
		no := n.mig.own || (n.mig.granted && n.mig.grant != from && time.Since(n.mig.grantAt) < migGrantTTL)
		if !no {
			n.mig.granted, n.mig.grant, n.mig.grantAt = true, from, time.Now()
		}
		n.mu.Unlock()
		id := m.ID * 2
		if no {
			id++
		}
		return n.send(from, &message{Type: mMigReply, ID: id})
	case mMigReply:
		n.mu.Lock()
		if n.mig.replies != nil && m.ID/2 == n.mig.round {
			n.mig.replies <- migAnswer{from: from, no: m.ID%2 == 1} // buffered: one answer per peer
		}
		n.mu.Unlock()
	case mMigDone:
		n.mu.Lock()
		if n.mig.granted && n.mig.grant == from {
			n.mig.granted = false
		}
		n.mu.Unlock()
	}
	return nil
}

// resumeMigration reconnects the rank after a restore (info.Moved: its
// address becomes info.Host with the same port) or after a migration that
// was called off.
func (n *Node) resumeMigration(info mrt.ResumeInfo) error {
	if n.tcp == nil {
		return errors.New("dsmshm: migration needs the TCP transport")
	}
	defer n.endMig() // after the reconnection: the news reaches every peer
	host := ""
	if info.Moved {
		if info.Host == "" {
			return errors.New("dsmshm: resume after a move without the new host")
		}
		host = info.Host
	}
	if !n.tcp.paused.Load() {
		return nil
	}
	err := n.tcp.resume(host)
	gcOn()
	if err != nil {
		n.fail(err)
	}
	return err
}

// While a rank is paused, its faulting threads keep re-faulting until the
// rank resumes; one that faulted inside runtime assembly (copy into shared
// memory) cannot be preempted meanwhile, and a garbage collection would wait
// for it while the goroutine that resumes the rank is stopped. The
// collector is therefore off between Prepare and Resume (nested across the
// nodes of one process).
var gcPause struct {
	sync.Mutex
	depth   int
	percent int
}

func gcOff() {
	gcPause.Lock()
	defer gcPause.Unlock()
	if gcPause.depth++; gcPause.depth == 1 {
		gcPause.percent = rdebug.SetGCPercent(-1)
	}
}

func gcOn() {
	gcPause.Lock()
	defer gcPause.Unlock()
	if gcPause.depth == 0 {
		return
	}
	if gcPause.depth--; gcPause.depth == 0 {
		rdebug.SetGCPercent(gcPause.percent)
	}
}

// abort leaves the job at once, without the collective final barrier: peers
// see this rank fail.
func (n *Node) abort() {
	if !n.closed.CompareAndSwap(false, true) {
		return
	}
	n.tr.abort()
	<-n.done
	n.release()
}
