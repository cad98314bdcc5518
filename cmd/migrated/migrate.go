package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"dsmigrate/criu"
	"dsmigrate/internal/wire"
	"dsmigrate/netmove"
	mrt "dsmigrate/runtime"
)

// Timeouts of a migration's steps. A step that overruns fails the migration,
// which then resumes the process on its source.
const (
	dialTimeout    = 5 * time.Second
	dumpTimeout    = 5 * time.Minute
	restoreTimeout = 5 * time.Minute
	commitTimeout  = 30 * time.Second
	maxImageBytes  = 64 << 30
	logName        = "@log" // the process's output log, shipped with the images
)

var fileRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// migrateOut moves process req.ID to the daemon at req.To. The process is
// frozen and dumped (left stopped), its images and log stream to the target,
// which restores it stopped; only when the target confirms is the source copy
// killed and the target copy resumed. Any failure before that point resumes
// the process here.
func (d *Daemon) migrateOut(req Request, event func(Event)) (*MigrationRec, error) {
	p, err := d.get(req.ID)
	if err != nil {
		return nil, err
	}
	if req.To == "" {
		return nil, errors.New("no target: migrate ID --to ADDR:PORT")
	}
	if _, _, err := net.SplitHostPort(req.To); err != nil {
		return nil, fmt.Errorf("bad target %q: want ADDR:PORT", req.To)
	}
	if d.token == nil {
		return nil, errors.New("this daemon has no --token-file, so it cannot authenticate to a target")
	}
	var iface string
	if req.MoveIP != "" {
		if iface, err = netmove.Iface(req.MoveIP); err != nil {
			return nil, err
		}
		if ok, err := netmove.HasAddr(req.MoveIP); err != nil || !ok {
			return nil, fmt.Errorf("--move-ip %s: this host does not hold that address", req.MoveIP)
		}
	}
	p.mu.Lock()
	if p.state != "running" {
		st := p.state
		p.mu.Unlock()
		return nil, fmt.Errorf("process %s is %s, not running", p.ID, st)
	}
	p.state = "migrating"
	pid := p.pid
	p.mu.Unlock()

	rec := &MigrationRec{ID: p.ID, Name: p.Name, From: d.listen, To: req.To, MoveIP: req.MoveIP, Start: time.Now(),
		Job: p.Job, Rank: p.Rank}
	phase := func(name string, dur time.Duration, info string) {
		e := Event{Phase: name, Dur: dur, Info: info}
		rec.Phases = append(rec.Phases, e)
		event(e)
	}
	fail := func(err error) (*MigrationRec, error) {
		rec.Outcome = err.Error()
		rec.Total = time.Since(rec.Start)
		d.addRecord(*rec)
		d.log.Warn("migration failed", "id", p.ID, "to", req.To, "err", err)
		return nil, err
	}
	resumed := func() {
		p.mu.Lock()
		if p.state == "migrating" {
			p.state = "running"
		}
		p.mu.Unlock()
	}

	// Connect and authenticate before touching the process.
	raw, err := net.DialTimeout("tcp", req.To, dialTimeout)
	if err != nil {
		resumed()
		return fail(fmt.Errorf("target %s unreachable: %v; the process keeps running here", req.To, err))
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(dialTimeout * 2))
	c, err := wire.Client(raw, d.token)
	if err != nil {
		resumed()
		return fail(fmt.Errorf("target %s: %v; the process keeps running here", req.To, err))
	}
	mig := newID()
	d.beginOutcome(mig)
	// Whatever way this returns without committing, it has aborted.
	defer d.decide(mig, outcomeAborted)
	p.mu.Lock()
	begin := beginMsg{ID: p.ID, Name: p.Name, Argv: p.Argv, PipeKey: p.pipeKey, MoveIP: req.MoveIP,
		Started: p.Started, Moves: p.Moves + 1, Source: d.listen, Job: p.Job, Rank: p.Rank, Hooks: p.hooks, Mig: mig}
	p.mu.Unlock()
	if err := c.WriteJSON(tBegin, &begin); err != nil {
		resumed()
		return fail(fmt.Errorf("target %s: %v", req.To, err))
	}
	if err := c.ReadJSON(tAccept, &struct{}{}); err != nil {
		resumed()
		return fail(fmt.Errorf("target %s refused the process: %v; it keeps running here", req.To, err))
	}
	raw.SetDeadline(time.Time{})

	// A migration-aware process (package runtime) first closes what must not
	// be dumped, e.g. a DSM rank its connections to peers that stay behind.
	// Whatever goes wrong after this, it is told to resume.
	prepared := false
	unprepare := func() {
		if prepared {
			if err := d.rebind(p.ID, false); err != nil {
				d.log.Error("resume hook after a called-off migration", "id", p.ID, "err", err)
			}
		}
	}
	// With --move-ip its connections move with it (TCP repair): nothing to
	// close, nothing to rebind.
	hooks := begin.Hooks && req.MoveIP == ""
	if hooks {
		tp := time.Now()
		err := d.command(p, mrt.Command{Op: "prepare"})
		prepared = true
		if err != nil {
			unprepare()
			resumed()
			return fail(fmt.Errorf("the process could not prepare: %v; it keeps running here", err))
		}
		phase("prepare", time.Since(tp), "")
	}

	// Freeze: stop the tree with no fault queued in any thread (a dump of a
	// thread caught between a fault and its delivery fails and kills the
	// process; criu.Quiesce). From here on the tree stays stopped until the
	// target confirms, so it can be resumed here; until the dump succeeds,
	// that only takes continuing it.
	thaw := func() {
		signalTree(pid, syscall.SIGCONT)
		resumed()
		unprepare()
	}
	tq := time.Now()
	if err := d.quiescer.quiesce(pid); err != nil {
		thaw()
		return fail(fmt.Errorf("could not stop the process for the dump: %v; it keeps running here", err))
	}
	quiesceDur := time.Since(tq)
	dir := filepath.Join(d.imagesDir, p.ID+"-out-"+newID())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		thaw()
		return fail(err)
	}
	defer os.RemoveAll(dir)
	tcp := req.MoveIP != ""
	// The pages stream to the target's page server while CRIU dumps
	// (pages.go); the rest of the images follow after the dump.
	local, criuEnd, err := pageSocket()
	if err != nil {
		thaw()
		return fail(err)
	}
	// The wire deadline ends the stream before CRIU's own deadline kills
	// CRIU: a stalled target makes the dump fail cleanly, not die.
	raw.SetDeadline(time.Now().Add(dumpTimeout - pagesWindDown))
	pages := startPageSender(c, local)
	ctx, cancel := context.WithTimeout(context.Background(), dumpTimeout)
	t0 := time.Now()
	st, err := d.criu.Dump(ctx, criu.DumpOpts{Pid: pid, ImagesDir: dir, TCPEstablished: tcp, LeaveStopped: true,
		PageServer: criuEnd})
	cancel()
	criuEnd.Close()
	early, relayErr := pages.wait(raw, err != nil)
	rec.Bytes = pages.sent.Load() + pages.back.Load()
	if err != nil {
		// CRIU puts the tree back as it found it, stopped: continue it.
		if table, err := netmove.LockName(dir); err == nil {
			netmove.DeleteLock(table)
		}
		thaw()
		// Say so if the failed dump cost the process its life.
		outcome := "the process keeps running here"
		select {
		case <-p.gone:
			outcome = "the process DIED during the failed dump"
		case <-time.After(100 * time.Millisecond):
		}
		if relayErr != nil && early {
			return fail(fmt.Errorf("dump failed, %s: streaming pages to %s: %v; %w", outcome, req.To, relayErr, err))
		}
		return fail(fmt.Errorf("dump failed, %s: %w", outcome, err))
	}
	dumpDur := time.Since(t0)
	phase("freeze", quiesceDur+st.Freezing, "")
	phase("dump", dumpDur-st.Freezing, fmt.Sprintf("%d pages, %.1f MiB streamed to the target", st.PagesWritten,
		float64(pages.sent.Load())/(1<<20)))

	// CRIU leaves its network lock table on this host after a dump that
	// leaves the tree stopped (an empty one without TCP connections).
	lockTable, _ := netmove.LockName(dir)
	ipRemoved := false
	rollback := func(cause error) (*MigrationRec, error) {
		if err := d.resumeHere(p, dir, tcp, ipRemoved, iface, req.MoveIP, lockTable); err != nil {
			return fail(fmt.Errorf("%v; resuming on the source ALSO failed: %v", cause, err))
		}
		unprepare()
		return fail(fmt.Errorf("%v; the process resumed on the source", cause))
	}
	if relayErr != nil {
		return rollback(fmt.Errorf("streaming pages to %s failed: %v", req.To, relayErr))
	}

	t1 := time.Now()
	p.flushLog()
	n, nfiles, err := sendImages(c, dir, p.logPath)
	rec.Bytes += n
	if err != nil {
		return rollback(fmt.Errorf("transfer to %s failed: %v", req.To, err))
	}
	phase("transfer", time.Since(t1), fmt.Sprintf("%.1f MiB in %d files (log and images but pages)", float64(n)/(1<<20), nfiles))

	var rm restoreMsg
	if tcp {
		if lockTable == "" {
			return rollback(errors.New("CRIU left no network lock table for the dump"))
		}
		if rm.Lock, err = netmove.ExportLock(lockTable); err != nil {
			return rollback(err)
		}
		if err := netmove.DelAddr(iface, req.MoveIP); err != nil {
			return rollback(err)
		}
		ipRemoved = true
	}
	t2 := time.Now()
	if err := c.WriteJSON(tRestore, &rm); err != nil {
		return rollback(fmt.Errorf("target %s: %v", req.To, err))
	}
	raw.SetDeadline(time.Now().Add(restoreTimeout))
	var rd restoredMsg
	if err := c.ReadJSON(tRestored, &rd); err != nil {
		return rollback(fmt.Errorf("restore on %s failed: %v", req.To, err))
	}
	if tcp {
		phase("network", rd.Net, req.MoveIP+" moved")
	}
	phase("restore", time.Since(t2)-rd.Net, "")

	// The commit point: the source copy goes, then the target copy runs.
	// The target may have given up waiting and asked how this ended
	// (outcome.go): then it has aborted, and the process stays here.
	if d.decide(mig, outcomeCommitted) != outcomeCommitted {
		return rollback(fmt.Errorf("the target %s gave up waiting for the commit", req.To))
	}
	t3 := time.Now()
	p.mu.Lock()
	p.state, p.movedTo = "migrated", req.To
	p.mu.Unlock()
	// SIGKILL ends a stopped task without it running again, so the target
	// may resume at once; reaping and cleaning up happen after.
	signalTree(pid, syscall.SIGKILL)
	if d.fault("commit-lost") {
		raw.Close() // the target must learn the outcome by asking
	}
	raw.SetDeadline(time.Now().Add(commitTimeout))
	var done doneMsg
	if err = c.WriteMsg(tCommit, nil); err == nil {
		err = c.ReadJSON(tDone, &done)
	}
	resumeDur := time.Since(t3) - done.Rebind
	go func() {
		killTree(p) // reap the source copy
		if lockTable != "" {
			netmove.DeleteLock(lockTable)
		}
	}()
	if err != nil {
		d.log.Error("commit not confirmed: the target will ask how the migration ended", "id", p.ID, "target", req.To, "err", err)
	}
	d.mu.Lock()
	delete(d.procs, p.ID)
	d.mu.Unlock()
	phase("resume", resumeDur, "")
	if hooks {
		phase("rebind", done.Rebind, done.RebindErr)
	}
	// Keep the log a while for followers that are reading it still.
	d.forgetLater(p)
	rec.Total = time.Since(rec.Start)
	rec.Downtime = t3.Add(resumeDur + done.Rebind).Sub(t0)
	rec.Outcome = "ok"
	if err != nil {
		rec.Outcome = "commit not confirmed: " + err.Error()
	} else if done.RebindErr != "" {
		rec.Outcome = "running on the target, but its resume hook failed: " + done.RebindErr
	}
	d.addRecord(*rec)
	d.log.Info("migrated", "id", p.ID, "to", req.To, "total", rec.Total, "downtime", rec.Downtime)
	return rec, nil
}

// resumeHere undoes a migration after the dump: the address comes back and
// the stopped tree continues. A tree whose TCP sockets CRIU left in repair mode
// cannot simply continue; it is killed and restored here from its images.
func (d *Daemon) resumeHere(p *Proc, dir string, tcp, ipRemoved bool, iface, cidr, lockTable string) error {
	if ipRemoved {
		if err := netmove.AddAddr(iface, cidr); err != nil {
			return err
		}
		netmove.Announce(iface, strings.Split(cidr, "/")[0])
	}
	p.mu.Lock()
	pid := p.pid
	p.mu.Unlock()
	if !tcp {
		if lockTable != "" {
			netmove.DeleteLock(lockTable)
		}
		signalTree(pid, syscall.SIGCONT)
		p.mu.Lock()
		p.state = "running"
		p.mu.Unlock()
		return nil
	}
	p.mu.Lock()
	p.state = "migrated" // the reaper must not report the kill as an exit
	p.mu.Unlock()
	killTree(p)
	p.mu.Lock()
	key := p.pipeKey
	p.mu.Unlock()
	np, err := d.restoreProc(p.ID, p.Name, p.Argv, p.Started, p.Moves, key, dir, p.logPath, true)
	if lockTable != "" {
		netmove.DeleteLock(lockTable)
	}
	if err != nil {
		return err
	}
	signalTree(np.pid, syscall.SIGCONT)
	np.state, np.Job, np.Rank = "running", p.Job, p.Rank
	d.mu.Lock()
	d.procs[p.ID] = np
	d.mu.Unlock()
	return nil
}

// restoreProc restores the images in dir as a stopped child of this daemon,
// its output going into a fresh pipe that is appended to logPath.
func (d *Daemon) restoreProc(id, name string, argv []string, started time.Time, moves int, key, dir, logPath string, tcp bool) (*Proc, error) {
	r, w, newKey, err := outputPipe()
	if err != nil {
		return nil, err
	}
	defer w.Close()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		r.Close()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), restoreTimeout)
	defer cancel()
	t0 := time.Now()
	pid, st, err := d.criu.Restore(ctx, criu.RestoreOpts{ImagesDir: dir, TCPEstablished: tcp, LeaveStopped: true,
		InheritFds: map[string]*os.File{key: w}})
	if err != nil {
		r.Close()
		logf.Close()
		return nil, err
	}
	d.log.Info("criu restore", "id", id, "took", time.Since(t0), "criu_restore", st.Restore, "forking", st.Forking,
		"pages", st.PagesRestored)
	proc, err := os.FindProcess(pid)
	if err != nil {
		r.Close()
		logf.Close()
		syscall.Kill(pid, syscall.SIGKILL)
		return nil, err
	}
	p := newProc(id, name, argv, started)
	p.Moves, p.logPath, p.pid, p.state, p.pipeKey, p.out = moves, logPath, pid, "stopped", newKey, r
	go p.capture(r, logf)
	go d.reap(p, proc)
	return p, nil
}

// sendImages streams the log and every image file in dir, and says how many
// bytes and files it sent.
func sendImages(c *wire.Conn, dir, logPath string) (int64, int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, err
	}
	files := [][2]string{{logName, logPath}}
	for _, e := range entries {
		if e.Type().IsRegular() && e.Name() != criu.LogName {
			files = append(files, [2]string{e.Name(), filepath.Join(dir, e.Name())})
		}
	}
	var total int64
	for _, f := range files {
		n, err := sendFile(c, f[0], f[1])
		total += n
		if err != nil {
			return total, len(files), err
		}
	}
	return total, len(files), c.WriteMsg(tFilesDone, nil)
}

func sendFile(c *wire.Conn, name, path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if err := c.WriteJSON(tFile, &fileMsg{Name: name, Size: fi.Size()}); err != nil {
		return 0, err
	}
	return c.SendStream(f)
}

// migrateIn receives a process from the daemon at src and restores it here.
func (d *Daemon) migrateIn(c *wire.Conn, b beginMsg, src string) {
	err := d.receive(c, b)
	if err != nil {
		d.log.Warn("incoming migration failed", "id", b.ID, "from", src, "err", err)
		c.WriteError(err)
	}
}

func (d *Daemon) receive(c *wire.Conn, b beginMsg) (err error) {
	if !idRE.MatchString(b.ID) || !nameRE.MatchString(b.Name) || len(b.Argv) == 0 || len(b.Argv) > 4096 ||
		!strings.HasPrefix(b.PipeKey, "pipe:[") {
		return errors.New("malformed migration request")
	}
	var iface string
	if b.MoveIP != "" {
		if iface, err = netmove.Iface(b.MoveIP); err != nil {
			return err
		}
	}
	// Reserve the ID so that two migrations of one process cannot cross.
	d.mu.Lock()
	if _, ok := d.procs[b.ID]; ok {
		d.mu.Unlock()
		return fmt.Errorf("process %s already exists on %s", b.ID, d.listen)
	}
	placeholder := newProc(b.ID, b.Name, b.Argv, b.Started)
	placeholder.state = "incoming"
	d.procs[b.ID] = placeholder
	d.mu.Unlock()
	var p *Proc
	defer func() {
		if p == nil || err != nil {
			d.mu.Lock()
			if d.procs[b.ID] == placeholder {
				delete(d.procs, b.ID)
			}
			d.mu.Unlock()
		}
	}()

	dir := filepath.Join(d.imagesDir, b.ID+"-in-"+newID())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := d.prepareProcDir(placeholder); err != nil {
		return err
	}
	logPath := placeholder.logPath
	os.Remove(logPath) // left from an earlier stay of this process here
	if err := c.WriteJSON(tAccept, struct{}{}); err != nil {
		return err
	}
	pageBytes, err := d.recvPages(c, dir)
	if err != nil {
		os.RemoveAll(filepath.Dir(logPath))
		return err
	}
	if err := recvImages(c, dir, logPath, pageBytes); err != nil {
		os.RemoveAll(filepath.Dir(logPath))
		return err
	}
	var rm restoreMsg
	if err := c.ReadJSON(tRestore, &rm); err != nil {
		os.RemoveAll(filepath.Dir(logPath))
		return err
	}

	t0 := time.Now()
	var lockTable string
	if b.MoveIP != "" {
		if lockTable, err = netmove.CheckLock(rm.Lock); err != nil {
			return err
		}
		if err := netmove.ImportLock(rm.Lock); err != nil {
			return err
		}
		if err := netmove.AddAddr(iface, b.MoveIP); err != nil {
			netmove.DeleteLock(lockTable)
			return err
		}
		netmove.Announce(iface, strings.Split(b.MoveIP, "/")[0])
	}
	netDur := time.Since(t0)
	undoNet := func() {
		if b.MoveIP != "" {
			netmove.DelAddr(iface, b.MoveIP)
			netmove.DeleteLock(lockTable)
		}
	}
	np, err := d.restoreProc(b.ID, b.Name, b.Argv, b.Started, b.Moves, b.PipeKey, dir, logPath, b.MoveIP != "")
	if err != nil {
		undoNet()
		os.RemoveAll(filepath.Dir(logPath))
		return err
	}
	if d.fault("ask-before-restored") {
		d.askOutcome(b.Source, b.Mig) // as a target that gave up would: this aborts the migration
	}
	// Report the restore and wait for the source to give up its copy. A
	// broken connection says nothing about whether it did (even a failed
	// write may have delivered the report): ask it (outcome.go).
	var typ byte
	err = c.WriteJSON(tRestored, &restoredMsg{PID: np.pid, Restore: time.Since(t0), Net: netDur})
	if err == nil {
		c.SetDeadline(time.Now().Add(commitTimeout + restoreTimeout))
		typ, _, err = c.ReadMsg()
	}
	if err != nil && idRE.MatchString(b.Mig) {
		d.log.Warn("connection lost before the commit: asking the source how the migration ended", "id", b.ID,
			"source", b.Source, "err", err)
		switch o, qerr := d.askOutcome(b.Source, b.Mig); {
		case qerr != nil:
			err = fmt.Errorf("%v, and the source cannot say how the migration ended: %v", err, qerr)
		case o == outcomeCommitted:
			d.log.Warn("the source committed: resuming here", "id", b.ID)
			err, typ = nil, tCommit
		default:
			err = fmt.Errorf("%v; the source says: %s", err, o)
		}
	}
	if err != nil || typ != tCommit {
		np.mu.Lock()
		np.state = "migrated"
		np.mu.Unlock()
		killTree(np)
		undoNet()
		if err == nil {
			err = fmt.Errorf("unexpected message %d instead of commit", typ)
		}
		return fmt.Errorf("source did not commit: %v", err)
	}
	np.mu.Lock()
	np.state = "running"
	np.mu.Unlock()
	signalTree(np.pid, syscall.SIGCONT)
	// Registered before tDone: once the source's migrate returns, ps here
	// shows the process running, not the placeholder.
	np.Job, np.Rank = b.Job, b.Rank
	p = np
	d.mu.Lock()
	d.procs[b.ID] = np
	d.mu.Unlock()
	var done doneMsg
	np.mu.Lock()
	np.hooks = b.Hooks
	np.mu.Unlock()
	if b.Hooks && b.MoveIP == "" {
		t := time.Now()
		if err := d.rebind(b.ID, true); err != nil {
			done.RebindErr = err.Error()
		}
		done.Rebind = time.Since(t)
	}
	c.WriteJSON(tDone, &done)
	if b.MoveIP != "" {
		netmove.DeleteLock(lockTable) // normally gone already: the restore removes its lock
	}
	d.log.Info("restored", "id", b.ID, "pid", np.pid, "from", b.Source)
	return nil
}

// recvImages receives the files sendImages sent. Names and sizes come from
// the network: names are checked against a strict pattern (no paths), sizes
// against a total budget of which total bytes (the pages) are spent already.
// A name the page server wrote already is refused (O_EXCL).
func recvImages(c *wire.Conn, dir, logPath string, total int64) error {
	for {
		typ, payload, err := c.ReadMsg()
		if err != nil {
			return err
		}
		switch typ {
		case tFilesDone:
			return nil
		case tFile:
		default:
			return fmt.Errorf("unexpected message %d during transfer", typ)
		}
		var fm fileMsg
		if err := jsonUnmarshal(payload, &fm); err != nil {
			return err
		}
		path := logPath
		if fm.Name != logName {
			if !fileRE.MatchString(fm.Name) {
				return fmt.Errorf("refusing image file name %q", fm.Name)
			}
			path = filepath.Join(dir, fm.Name)
		}
		if fm.Size < 0 || total+fm.Size > maxImageBytes {
			return fmt.Errorf("image too large (%d bytes)", total+fm.Size)
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		n, err := c.RecvStream(f, fm.Size)
		f.Close()
		if err == nil && n != fm.Size {
			err = fmt.Errorf("file %s: got %d of %d bytes", fm.Name, n, fm.Size)
		}
		if err != nil {
			return err
		}
		total += n
	}
}

// rebind runs the resume hook of process id: after a restore here (moved),
// or after a migration called off once it had prepared.
func (d *Daemon) rebind(id string, moved bool) error {
	p, err := d.get(id)
	if err != nil {
		return err
	}
	host, _, _ := net.SplitHostPort(d.listen)
	return d.command(p, mrt.Command{Op: "resume", Resume: mrt.ResumeInfo{Moved: moved, Host: host}})
}
