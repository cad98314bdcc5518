package dsmshm

import (
	"errors"
	"fmt"
	rdebug "runtime/debug"
	"sync"

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
	return mrt.Hooks{Prepare: n.prepareMigration, Resume: n.resumeMigration}
}

// prepareMigration returns when the rank may be dumped: no connection of it
// is open but its listener, no page fetch is in flight and none will start,
// and nothing of it dials until resumeMigration.
func (n *Node) prepareMigration() error {
	if n.tcp == nil {
		return errors.New("dsmshm: migration needs the TCP transport")
	}
	if err := n.checkOpen(); err != nil {
		return err
	}
	// Two ranks away at once would each wait for the other's news: one
	// rank of a job moves at a time.
	if r := n.tcp.awayPeer(); r >= 0 {
		return fmt.Errorf("dsmshm: rank %d of this job is migrating; move one rank at a time (try again when it is back)", r)
	}
	gcOff()
	return n.tcp.pause()
}

// resumeMigration reconnects the rank after a restore (info.Moved: its
// address becomes info.Host with the same port) or after a migration that
// was called off.
func (n *Node) resumeMigration(info mrt.ResumeInfo) error {
	if n.tcp == nil {
		return errors.New("dsmshm: migration needs the TCP transport")
	}
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
