package daemon

import (
	"os"
	"path/filepath"

	"dsmigrate/internal/shim"
)

// The next arrival's shim waits, started ahead in a spare directory.
//
// A migration's target restores under a shim of the process's own, which
// starts the `criu swrk` that restores (shim.Prestart): a Go binary and a
// CRIU, ~30 ms of CPU. Started when the target accepts the migration, that
// start-up overlaps the source's freeze and dump and, on one machine, slowed
// the dump of a 16 MiB move by ~15 ms (median of 18 moves); started only at
// the restore it made the restore ~25 ms longer. So one shim, with its CRIU,
// waits here before any migration comes (ahead.go). An arrival takes it and
// moves it to the process's directory (shim.Pending.Move); one that finds
// none (two at once, or the start failed) starts its own when it accepts. A
// waiting shim exits when the daemon gives it up or dies (its stdin closes),
// and its CRIU with it; its spare directory, STATE/ahead/shim-*, goes when
// the daemon closes, or at the next start.
type aheadShim struct {
	p     *shim.Pending
	spare string // its directory until taken
}

func (x *aheadShim) end() {
	x.p.Abort()
	os.RemoveAll(x.spare)
}

// aheadDir holds the spare directories of shims started ahead. It is on the
// file system of STATE/procs, where a taken shim's log moves.
func (d *Daemon) aheadDir() string { return filepath.Join(d.stateDir, "ahead") }

// takeShim returns the shim waiting, moved to dir, or nil if none waits (or
// it could not be moved: then it is given up, and the caller starts one).
func (d *Daemon) takeShim(dir string) *shim.Pending {
	x := d.shims.take()
	if x == nil {
		return nil
	}
	if err := x.p.Move(dir); err != nil {
		d.log.Warn("taking the shim started ahead", "err", err)
		x.end()
		return nil
	}
	os.RemoveAll(x.spare)
	return x.p
}

// openShims starts the first shim ahead (serve).
func (d *Daemon) openShims() {
	d.shims.openWith(d.log, "starting a shim ahead of the next arrival", d.startAheadShim, (*aheadShim).end)
}

// refillShim starts a shim for the next arrival in the background
// (ahead.refill).
func (d *Daemon) refillShim() {
	d.shims.refill()
}

// closeShims ends the waiting shim, if any, and starts no more.
func (d *Daemon) closeShims() { d.shims.close() }

func (d *Daemon) startAheadShim() (*aheadShim, error) {
	if err := os.MkdirAll(d.aheadDir(), 0o700); err != nil {
		return nil, err
	}
	spare, err := os.MkdirTemp(d.aheadDir(), "shim-")
	if err != nil {
		return nil, err
	}
	p, err := shim.Prestart(shimExe, spare, d.criu.Path)
	if err != nil {
		os.RemoveAll(spare)
		return nil, err
	}
	return &aheadShim{p: p, spare: spare}, nil
}

// removeStaleAhead removes the spare directories a daemon that died left
// (their shims have left or are leaving: their stdin closed with it).
func (d *Daemon) removeStaleAhead() {
	if err := os.RemoveAll(d.aheadDir()); err != nil {
		d.log.Warn("removing the spare directories of shims started ahead", "err", err)
	}
}
