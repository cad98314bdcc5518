package daemon

import (
	"os"
	"path/filepath"
	"sync"

	"dsmigrate/internal/shim"
)

// The next arrival's shim waits, started ahead in a spare directory.
//
// A migration's target restores under a shim of the process's own, which
// starts the `criu swrk` that restores (shim.Prestart): a Go binary and a
// CRIU, ~30 ms of CPU. Started when the target accepts the migration, that
// start-up overlaps the source's freeze and dump and, on one machine, slowed
// the dump of a 16 MiB move by ~18 ms (59 -> 77 ms, median of 12 moves); started
// only at the restore it made the restore ~25 ms longer. So one shim, with
// its CRIU, waits here before any migration comes: started with the daemon
// and again after each arrival, once it is over (not during it, like the
// dump's CRIU: dumpworker.go). An arrival takes it and moves it to the
// process's directory (shim.Pending.Move); one that finds none (two at once,
// or the start failed) starts its own when it accepts, as before. A waiting
// shim exits when the daemon gives it up or dies (its stdin closes), and
// its CRIU with it; its spare directory, STATE/ahead/shim-*, goes when the
// daemon closes, or at the next start.
type aheadShims struct {
	mu      sync.Mutex
	ready   *shim.Pending
	spare   string // the ready shim's directory
	filling bool
	open    bool // from openShims (serve) to closeShims
	closed  bool
	fill    sync.WaitGroup // the start under way, if any
}

// aheadDir holds the spare directories of shims started ahead. It is on the
// file system of STATE/procs, where a taken shim's log moves.
func (d *Daemon) aheadDir() string { return filepath.Join(d.stateDir, "ahead") }

// takeShim returns the shim waiting, moved to dir, or nil if none waits (or
// it could not be moved: then it is given up, and the caller starts one).
func (d *Daemon) takeShim(dir string) *shim.Pending {
	d.shims.mu.Lock()
	p, spare := d.shims.ready, d.shims.spare
	d.shims.ready, d.shims.spare = nil, ""
	d.shims.mu.Unlock()
	if p == nil {
		return nil
	}
	if err := p.Move(dir); err != nil {
		d.log.Warn("taking the shim started ahead", "err", err)
		p.Abort()
		p = nil
	}
	os.RemoveAll(spare)
	return p
}

// refillShim starts a shim for the next arrival in the background, unless
// one waits or is starting, or the daemon does not serve (openShims). A
// failure is logged: the next arrival starts its own, and its error, if a
// shim cannot start, is the one that matters.
func (d *Daemon) refillShim() {
	d.shims.mu.Lock()
	defer d.shims.mu.Unlock()
	if d.shims.ready != nil || d.shims.filling || !d.shims.open || d.shims.closed {
		return
	}
	d.shims.filling = true
	d.shims.fill.Add(1)
	go func() {
		defer d.shims.fill.Done()
		p, spare, err := d.startAheadShim()
		if err != nil {
			d.log.Warn("starting a shim ahead of the next arrival", "err", err)
		}
		d.shims.mu.Lock()
		defer d.shims.mu.Unlock()
		d.shims.filling = false
		if p != nil && d.shims.closed {
			p.Abort()
			os.RemoveAll(spare)
			return
		}
		d.shims.ready, d.shims.spare = p, spare
	}()
}

// openShims starts the first shim ahead: a daemon that serves keeps one
// waiting from here until closeShims (no other daemon value starts any).
func (d *Daemon) openShims() {
	d.shims.mu.Lock()
	d.shims.open = true
	d.shims.mu.Unlock()
	d.refillShim()
}

func (d *Daemon) startAheadShim() (*shim.Pending, string, error) {
	if err := os.MkdirAll(d.aheadDir(), 0o700); err != nil {
		return nil, "", err
	}
	spare, err := os.MkdirTemp(d.aheadDir(), "shim-")
	if err != nil {
		return nil, "", err
	}
	p, err := shim.Prestart(shimExe, spare, d.criu.Path)
	if err != nil {
		os.RemoveAll(spare)
		return nil, "", err
	}
	return p, spare, nil
}

// closeShims ends the waiting shim, if any, and starts no more; a start
// under way is waited for (and its shim ended), so that none outlives the
// daemon's close.
func (d *Daemon) closeShims() {
	d.shims.mu.Lock()
	d.shims.closed = true
	d.shims.mu.Unlock()
	d.shims.fill.Wait()
	d.shims.mu.Lock()
	p, spare := d.shims.ready, d.shims.spare
	d.shims.ready, d.shims.spare = nil, ""
	d.shims.mu.Unlock()
	if p != nil {
		p.Abort()
		os.RemoveAll(spare)
	}
}

// removeStaleAhead removes the spare directories a daemon that died left
// (their shims have left or are leaving: their stdin closed with it).
func (d *Daemon) removeStaleAhead() {
	if err := os.RemoveAll(d.aheadDir()); err != nil {
		d.log.Warn("removing the spare directories of shims started ahead", "err", err)
	}
}
