package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"dsmigrate/criu"
	"dsmigrate/internal/journal"
	"dsmigrate/internal/migration"
	"dsmigrate/internal/shim"
	"dsmigrate/internal/wire"
	"dsmigrate/netmove"
	mrt "dsmigrate/runtime"
)

// The daemon's side of the migration engine (internal/migration): the
// engine decides what happens and in which order; these adapters do it on
// this host, with CRIU, netlink and nftables, the shims and the process table.

// newEngine makes the daemon's migration engine.
func (d *Daemon) newEngine() (*migration.Engine, error) {
	j, err := journal.Open(filepath.Join(d.stateDir, "journal", "migrations"))
	if err != nil {
		return nil, err
	}
	id, err := daemonID(d.stateDir)
	if err != nil {
		return nil, err
	}
	// With the boot: a state directory cloned to another machine (a VM
	// image) does not make its daemon this one.
	d.id = id + "@" + readTrim("/proc/sys/kernel/random/boot_id")
	return migration.New(migration.Config{
		Self:     d.advertise, // what peers call back, never a wildcard
		SelfID:   d.id,
		Procs:    engineProcs{d},
		CRIU:     checkpointer{d},
		Net:      netMover{},
		Quiescer: &d.quiescer,
		Peers:    peers{d},
		Journal:  migJournal{j, d.log},
		Faults:   faults{d},
		Log:      d.log,
		OnRecord: d.addRecord,
		// Metrics (metrics.go): the target's count.
		OnArrival: d.addArrival,
	}), nil
}

// migJournal keeps migration records in STATE/journal/migrations.
type migJournal struct {
	dir *journal.Dir
	log *slog.Logger
}

func (j migJournal) Put(r *migration.Record) error        { return j.dir.PutUnsynced(r.Mig, r) }
func (j migJournal) PutDurable(r *migration.Record) error { return j.dir.Put(r.Mig, r) }
func (j migJournal) Delete(mig string) error              { return j.dir.Delete(mig) }

// Load reads every record. A damaged one is what a crash of this host left
// of a record written unsynced: a target's, or a source's before its
// decision (from the decision on, a source's record is synced). The process
// copies it speaks of went with the crash. It is logged and dropped.
func (j migJournal) Load() ([]*migration.Record, error) {
	names, err := j.dir.List()
	if err != nil {
		return nil, err
	}
	var out []*migration.Record
	for _, n := range names {
		r := &migration.Record{}
		ok, err := j.dir.Get(n, r)
		if errors.Is(err, journal.ErrDamaged) {
			j.log.Error("a migration record this host's crash left damaged: dropped", "mig", n, "err", err)
			if err := j.dir.Delete(n); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil || !ok {
			return nil, fmt.Errorf("reading migration record %s: %v", n, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// faults are the engine's fault points: the file STATE/faults/POINT arms
// POINT (migration.Point names them, e.g. source-before-dump) for its next
// pass, as CRIU_FAULT does for CRIU. One is inside a step:
// source-during-dump, once CRIU streams the memory (checkpointer.Dump). A
// file that says "crash" makes the daemon kill itself there with SIGKILL (a
// kill -9 at an exact step); anything else makes the step fail.
type faults struct{ d *Daemon }

func (f faults) Check(point string) error {
	path := filepath.Join(f.d.stateDir, "faults", point)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	os.Remove(path)
	if strings.HasPrefix(strings.TrimSpace(string(b)), "wait") {
		// The step waits here until POINT.reached, which says so, is
		// removed (for at most two minutes): a test acts at a known step
		// (a client's cancel, a timeout) without racing it.
		reached := path + ".reached"
		if err := os.WriteFile(reached, nil, 0o600); err != nil {
			return err
		}
		f.d.log.Warn("fault point: waiting", "point", point, "until_removed", reached)
		for end := time.Now().Add(2 * time.Minute); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if _, err := os.Stat(reached); os.IsNotExist(err) {
				return nil
			}
		}
		os.Remove(reached)
		return nil
	}
	if strings.HasPrefix(strings.TrimSpace(string(b)), "crash") {
		f.d.log.Warn("fault point: crashing", "point", point)
		syscall.Sync()
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL cannot be caught: never reached
	}
	return errors.New("injected failure")
}

// peers dials other daemons with the cluster's token.
type peers struct{ d *Daemon }

func (p peers) Dial(ctx context.Context, addr string) (migration.Conn, error) {
	c, err := p.d.dialPeer(ctx, addr)
	if err != nil {
		return nil, err // not a nil *wire.Conn in an interface
	}
	return c, nil
}

// netMover is package netmove.
type netMover struct{}

func (netMover) Iface(cidr string) (string, error)       { return netmove.Iface(cidr) }
func (netMover) HasAddr(cidr string) (bool, error)       { return netmove.HasAddr(cidr) }
func (netMover) AddAddr(iface, cidr string) error        { return netmove.AddAddr(iface, cidr) }
func (netMover) DelAddr(iface, cidr string) error        { return netmove.DelAddr(iface, cidr) }
func (netMover) Announce(iface, ip string) error         { return netmove.Announce(iface, ip) }
func (netMover) LockName(dir string) (string, error)     { return netmove.LockName(dir) }
func (netMover) ExportLock(table string) (string, error) { return netmove.ExportLock(table) }
func (netMover) CheckLock(rules string) (string, error)  { return netmove.CheckLock(rules) }
func (netMover) ImportLock(rules string) error           { return netmove.ImportLock(rules) }
func (netMover) DeleteLock(table string) error           { return netmove.DeleteLock(table) }

func (netMover) SaveAddr(iface, cidr string) (string, error) { return netmove.SaveAddr(iface, cidr) }
func (netMover) RestoreAddr(saved string) error              { return netmove.RestoreAddr(saved) }

// Quiesce stops pid's tree for a dump (migration.Quiescer).
func (q *quiescer) Quiesce(pid int) error { return q.quiesce(pid) }

// checkpointer is CRIU, with the page stream relayed over the daemons'
// connection (pages.go) and the images in a tmpfs.
type checkpointer struct{ d *Daemon }

func wireConn(c migration.Conn) (*wire.Conn, error) {
	wc, ok := c.(*wire.Conn)
	if !ok || wc == nil {
		return nil, errors.New("no connection to the other daemon")
	}
	return wc, nil
}

func (k checkpointer) ImagesDir(name string) (string, error) {
	dir := filepath.Join(k.d.imagesDir, name)
	return dir, os.MkdirAll(dir, 0o700)
}

func (k checkpointer) RemoveImages(dir string) error {
	if dir == "" || filepath.Dir(dir) != k.d.imagesDir {
		return fmt.Errorf("refusing to remove %q: not an images directory", dir)
	}
	return os.RemoveAll(dir)
}

func (k checkpointer) Dump(ctx context.Context, c migration.Conn, pid int, dir string, tcp bool) (*migration.DumpResult, error) {
	wc, err := wireConn(c)
	if err != nil {
		return nil, err
	}
	w, local, criuEnd, err := k.d.takeDump()
	if err != nil {
		return nil, err
	}
	// The wire deadline ends the stream before CRIU's own deadline kills
	// CRIU: a stalled target makes the dump fail cleanly, not die.
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(migration.DefaultTimeouts.Dump)
	}
	wc.SetDeadline(dl.Add(-pagesWindDown))
	// The fault point inside the dump, once CRIU streams memory (it has
	// locked the tree's connections and put their sockets in repair mode,
	// and not yet written the inventory that names its lock): a failure
	// there breaks the page stream, as a target or a link lost mid-dump
	// does (or the wire deadline); a crash kills the daemon. Either way
	// CRIU's next write fails, and it undoes its lock and repair mode and
	// puts the tree back, stopped.
	pages := startPageSender(wc, local, func() error {
		p := migration.Point("source", "during", "dump")
		if err := (faults{k.d}).Check(p); err != nil {
			return fmt.Errorf("fault point %s: %w", p, err)
		}
		return nil
	})
	st, err := k.d.criu.Dump(ctx, criu.DumpOpts{Pid: pid, ImagesDir: dir, TCPEstablished: tcp, LeaveStopped: true,
		PageServer: criuEnd, Worker: w})
	criuEnd.Close()
	early, relayErr := pages.wait(wc, err != nil)
	res := &migration.DumpResult{Sent: pages.sent.Load(), Back: pages.back.Load()}
	if err != nil {
		res.Died = diedInDump(pid)
		if relayErr != nil && early {
			return res, fmt.Errorf("streaming pages: %v; %w", relayErr, err)
		}
		return res, err
	}
	res.Freezing, res.Pages = st.Freezing, st.PagesWritten
	if relayErr != nil {
		return res, fmt.Errorf("streaming pages to the target failed: %v", relayErr)
	}
	return res, nil
}

// diedInDump reports whether the process at pid is gone after a failed
// dump: CRIU puts the tree back as it found it, stopped, unless the dump
// cost the process its life, which the error must then say.
func diedInDump(pid int) bool {
	time.Sleep(50 * time.Millisecond)
	return syscall.Kill(pid, 0) == syscall.ESRCH
}

func (k checkpointer) ReceivePages(ctx context.Context, c migration.Conn, dir string) (int64, error) {
	wc, err := wireConn(c)
	if err != nil {
		return 0, err
	}
	return k.d.recvPages(ctx, wc, dir)
}

func (k checkpointer) SendImages(ctx context.Context, c migration.Conn, dir, logPath string) (int64, int, error) {
	wc, err := wireConn(c)
	if err != nil {
		return 0, 0, err
	}
	return sendImages(ctx, wc, dir, logPath)
}

func (k checkpointer) ReceiveImages(ctx context.Context, c migration.Conn, dir, logPath string, pages int64) error {
	wc, err := wireConn(c)
	if err != nil {
		return err
	}
	return recvImages(ctx, wc, dir, logPath, pages)
}

// engineProcs is the process table as the engine sees it.
type engineProcs struct{ d *Daemon }

func view(p *Proc) migration.Proc {
	p.mu.Lock()
	defer p.mu.Unlock()
	return migration.Proc{ID: p.ID, Name: p.Name, Argv: p.Argv, Started: p.Started, Moves: p.Moves, Job: p.Job,
		Rank: p.Rank, PID: p.pid, PipeKey: p.pipeKey, Hooks: p.hooks, LogPath: p.logPath, Owner: p.Owner}
}

func (e engineProcs) Claim(id string) (migration.Proc, error) {
	p, err := e.d.get(id)
	if err != nil {
		return migration.Proc{}, err
	}
	p.mu.Lock()
	if p.state != "running" {
		st := p.state
		p.mu.Unlock()
		return migration.Proc{}, fmt.Errorf("process %s is %s, not running", p.ID, st)
	}
	p.state = "migrating"
	p.mu.Unlock()
	// A scrape's request for a rank's counters, if one is under way, ends
	// first: nothing may connect the process to this daemon when it freezes
	// (metrics.go).
	e.d.metrics.statsQuiet(p.ID)
	if err := e.d.saveProc(p); err != nil {
		e.Unclaim(p.ID)
		return migration.Proc{}, err
	}
	v := view(p)
	v.Memory = treeMemory(v.PID)
	return v, nil
}

func (e engineProcs) Unclaim(id string) error {
	p := e.d.lookup(id)
	if p == nil {
		return nil
	}
	p.mu.Lock()
	if p.state == "migrating" {
		p.state = "running"
	}
	p.mu.Unlock()
	return e.d.saveProc(p)
}

func (e engineProcs) Hook(ctx context.Context, id, op string, moved bool) error {
	if op == "resume" {
		return e.d.rebind(id, moved)
	}
	p, err := e.d.get(id)
	if err != nil {
		return err
	}
	return e.d.command(p, mrt.Command{Op: op})
}

func (e engineProcs) Continue(id string) error {
	pid, err := e.untraced(id)
	if err != nil {
		return err
	}
	signalTree(pid, syscall.SIGCONT)
	return nil
}

// untraced returns the root pid of process id once no task of its tree is
// traced: a dump the last daemon started may still be running (CRIU goes on
// when the daemon dies), and touching a tree CRIU holds would break it.
func (e engineProcs) untraced(id string) (int, error) {
	p := e.d.lookup(id)
	if p == nil {
		return 0, fmt.Errorf("no process %s here", id)
	}
	p.mu.Lock()
	pid := p.pid
	p.mu.Unlock()
	waitUntraced(pid, 30*time.Second)
	return pid, nil
}

func (e engineProcs) FlushLog(ctx context.Context, id string) error {
	p := e.d.lookup(id)
	if p == nil {
		return fmt.Errorf("no process %s here", id)
	}
	return p.flushLog()
}

func (e engineProcs) RepairOff(ctx context.Context, id string) error {
	pid, err := e.untraced(id)
	if err != nil {
		return err
	}
	return repairOff(pid)
}

func (e engineProcs) ConnLocks(ctx context.Context, id string) ([]string, error) {
	pid, err := e.untraced(id)
	if err != nil {
		return nil, err
	}
	conns, err := tcpConns(pid)
	if err != nil {
		return nil, err
	}
	return netmove.LocksHolding(conns)
}

func (e engineProcs) Gone(ctx context.Context, id, to string) error {
	p := e.d.lookup(id)
	if p == nil {
		// Gone already; or, a restart finishing the commit, known only by
		// a record whose shim ended with the copy: the record goes too.
		j, err := journal.Open(e.d.procDir(id))
		if err != nil {
			return err
		}
		return j.Delete(procRecord)
	}
	p.mu.Lock()
	p.state, p.movedTo = "migrated", to
	pid := p.pid
	p.mu.Unlock()
	// Journaled before the kill: a restart must not find a record that
	// says migrating for a copy that is gone.
	err := e.d.saveProc(p)
	signalTree(pid, syscall.SIGKILL)
	e.d.mu.Lock()
	if e.d.procs[id] == p {
		delete(e.d.procs, id)
	}
	e.d.mu.Unlock()
	go killTree(p) // reap
	// Keep the log a while for followers that are reading it still.
	e.d.forgetLater(p)
	return err
}

func (e engineProcs) Reserve(b *migration.Begin) (string, error) {
	logPath, err := e.reserve(b)
	if err != nil {
		return "", err
	}
	// The shim that will restore it, and its CRIU: the one waiting here
	// (shimahead.go), else one started now, while the pages are on their
	// way (a 16 MiB move's restore step took 102-196 ms when they started
	// in it, 71-81 ms started here). Without one, the restore starts its own.
	pre := e.d.takeShim(filepath.Dir(logPath))
	if pre == nil {
		var err error
		if pre, err = shim.Prestart(shimExe, filepath.Dir(logPath), e.d.criu.Path); err != nil {
			e.d.log.Warn("starting the restore's shim ahead", "id", b.ID, "err", err)
			return logPath, nil
		}
	}
	if p := e.d.lookup(b.ID); p != nil {
		p.mu.Lock()
		if p.state == "incoming" && p.early == nil {
			p.early, pre = pre, nil
		}
		p.mu.Unlock()
	}
	pre.Abort() // not taken: the reservation went meanwhile
	return logPath, nil
}

func (e engineProcs) reserve(b *migration.Begin) (string, error) {
	if b.SourceID != "" && b.SourceID == e.d.id {
		return "", fmt.Errorf("%s is the host the process runs on: a process cannot migrate to its own host; "+
			"give another host's daemon with --to", e.d.advertise)
	}
	e.d.mu.Lock()
	defer e.d.mu.Unlock()
	if _, ok := e.d.procs[b.ID]; ok {
		return "", fmt.Errorf("process %s already exists on %s", b.ID, e.d.advertise)
	}
	if err := e.d.refuseDrained("arriving migrations"); err != nil {
		return "", err
	}
	// Held until it runs here (Activate) or is discarded.
	if err := e.d.admit.admit(b.ID, b.Memory, e.d.advertise); err != nil {
		return "", err
	}
	p := newProc(b.ID, b.Name, b.Argv, b.Started)
	p.state, p.Job, p.Rank, p.Moves, p.hooks, p.Owner = "incoming", b.Job, b.Rank, b.Moves, b.Hooks, b.Owner
	p.ownIP = b.MoveIP // an own address left behind is the process's no more
	if err := e.d.prepareProcDir(p); err != nil {
		e.d.admit.release(b.ID)
		return "", err
	}
	os.Remove(p.logPath) // left from an earlier stay of this process here
	e.d.procs[b.ID] = p
	return p.logPath, nil
}

func (e engineProcs) Restore(ctx context.Context, b *migration.Begin, dir string, lazy migration.Lazy) (int, error) {
	holder := e.d.lookup(b.ID)
	if holder == nil {
		return 0, fmt.Errorf("process %s is not reserved here", b.ID)
	}
	np, err := e.d.restoreCopy(ctx, holder, b.PipeKey, dir, b.MoveIP != "", "incoming", lazy)
	if np == nil {
		return 0, err
	}
	return np.pid, err
}

func (e engineProcs) Discard(ctx context.Context, id string) error {
	defer e.d.admit.release(id)
	e.d.mu.Lock()
	p := e.d.procs[id]
	var pre *shim.Pending
	if p != nil {
		p.mu.Lock()
		st := p.state
		if st == "incoming" {
			pre, p.early = p.early, nil
		}
		p.mu.Unlock()
		if st != "incoming" {
			e.d.mu.Unlock()
			return nil // not ours to discard: a process that lives here
		}
		delete(e.d.procs, id)
	}
	e.d.mu.Unlock()
	pre.Abort() // the shim started ahead, if it never restored: before its directory goes
	if p == nil {
		// After a restart: the shim of a copy restored while the daemon
		// was down may be there still.
		p = e.d.adopt(id)
	}
	if p != nil && p.pid > 0 {
		p.mu.Lock()
		p.state = "migrated"
		p.mu.Unlock()
		// Its connections are the source's too: they must end here
		// silently, not with a reset to their peers.
		if err := repairOn(p.pid); err != nil {
			e.d.log.Warn("putting a discarded copy's connections in repair mode", "id", id, "err", err)
		}
		killTree(p)
	}
	return os.RemoveAll(filepath.Join(e.d.stateDir, "procs", id))
}

func (e engineProcs) Activate(ctx context.Context, b *migration.Begin) error {
	defer e.d.admit.release(b.ID) // its pages have left the images for its memory
	p := e.d.lookup(b.ID)
	if p == nil {
		p = e.d.adopt(b.ID)
	}
	if p == nil {
		return fmt.Errorf("the restored copy of %s is gone", b.ID)
	}
	p.mu.Lock()
	p.state, p.Job, p.Rank, p.hooks = "running", b.Job, b.Rank, b.Hooks
	pid := p.pid
	p.mu.Unlock()
	e.d.mu.Lock()
	e.d.procs[b.ID] = p
	e.d.mu.Unlock()
	// Journaled before it runs: a restart must find it running here.
	err := e.d.saveProc(p)
	signalTree(pid, syscall.SIGCONT)
	return err
}

// Lose kills a post-copy arrival whose memory cannot all arrive, and says
// why at the end of its log. Its faults wait for pages until then (the shim
// holds lazy-pages's socket open), so it never runs on zeros.
func (e engineProcs) Lose(ctx context.Context, id, why string) error {
	p := e.d.lookup(id)
	if p == nil {
		p = e.d.adopt(id)
	}
	if p == nil {
		return nil
	}
	defer e.d.admit.release(id) // held for it since Reserve, unless Activate ran
	if f, err := os.OpenFile(p.logPath, os.O_WRONLY|os.O_APPEND, 0); err == nil {
		fmt.Fprintf(f, "\n[dsmigrate] the process was killed: %s (post-copy: it cannot run with pages missing)\n", why)
		f.Close()
	}
	killTree(p)
	return nil
}

// lookup returns the process registered under exactly id, or nil.
func (d *Daemon) lookup(id string) *Proc {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.procs[id]
}

// waitUntraced waits until no task of pid's tree is traced (CRIU or the
// quiesce helper let go), for at most max.
func waitUntraced(pid int, max time.Duration) {
	for end := time.Now().Add(max); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		traced := false
		for _, t := range criu.Tree(pid) {
			if tracerPid(t) > 0 {
				traced = true
				break
			}
		}
		if !traced {
			return
		}
	}
}

func tracerPid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "TracerPid:"); ok {
			var n int
			fmt.Sscan(strings.TrimSpace(v), &n)
			return n
		}
	}
	return 0
}
