package daemon

import (
	"net"
	"os"
	"sync"

	"dsmigrate/criu"
)

// The next dump's CRIU is started ahead, idle, with its page socket.
//
// A dump starts a `criu swrk`: the wrapper's shell, the dynamic loader and
// CRIU's libraries (gnutls, nftables, protobuf-c, ...) take 15-25 ms on a
// loaded host before CRIU reads its request, all of it while the process is
// frozen. A CRIU started ahead (criu.StartDumpWorker) holds nothing but its
// end of a page socket, and learns everything else from the request: it can
// wait any time. One waits here at all times but while a dump uses it:
// started when the daemon is, and again after each migration out, once it
// is over (not during it, where its start-up would compete for the CPU with
// the dump, the restore and, on one machine, the other host's steps). A
// dump that finds none (two at once, or the start failed) starts its own.
// An idle CRIU exits when the daemon closes its RPC socket, or dies.
type dumpWorkers struct {
	mu      sync.Mutex
	ready   *dumpWorker
	filling bool
	closed  bool
	fill    sync.WaitGroup // the start under way, if any
}

// dumpWorker is a CRIU waiting for a dump request, with the page socket it
// holds as its fd 4 (criuEnd) and the daemon's end of it (local).
type dumpWorker struct {
	w       *criu.Worker
	local   *net.UnixConn
	criuEnd *os.File
}

func (x *dumpWorker) close() {
	x.w.Close()
	x.local.Close()
	x.criuEnd.Close()
}

// takeDump returns the page socket for a dump and, if one is waiting, the
// CRIU started ahead to run it (nil otherwise: criu.Dump starts one).
func (d *Daemon) takeDump() (*criu.Worker, *net.UnixConn, *os.File, error) {
	d.dumps.mu.Lock()
	x := d.dumps.ready
	d.dumps.ready = nil
	d.dumps.mu.Unlock()
	if x != nil {
		return x.w, x.local, x.criuEnd, nil
	}
	local, criuEnd, err := pageSocket()
	return nil, local, criuEnd, err
}

// refillDump starts a CRIU for the next dump in the background, unless one
// waits or is starting. A failure is logged: the next dump starts its own,
// and its error, if CRIU cannot start, is the one that matters.
func (d *Daemon) refillDump() {
	d.dumps.mu.Lock()
	defer d.dumps.mu.Unlock()
	if d.dumps.ready != nil || d.dumps.filling || d.dumps.closed {
		return
	}
	d.dumps.filling = true
	d.dumps.fill.Add(1)
	go func() {
		defer d.dumps.fill.Done()
		x, err := d.startDumpWorker()
		if err != nil {
			d.log.Warn("starting CRIU ahead of the next dump", "err", err)
		}
		d.dumps.mu.Lock()
		defer d.dumps.mu.Unlock()
		d.dumps.filling = false
		if x != nil && d.dumps.closed {
			x.close()
			return
		}
		d.dumps.ready = x
	}()
}

func (d *Daemon) startDumpWorker() (*dumpWorker, error) {
	local, criuEnd, err := pageSocket()
	if err != nil {
		return nil, err
	}
	w, err := d.criu.StartDumpWorker([]*os.File{criuEnd})
	if err != nil {
		local.Close()
		criuEnd.Close()
		return nil, err
	}
	return &dumpWorker{w: w, local: local, criuEnd: criuEnd}, nil
}

// closeDumps ends the waiting CRIU, if any, and starts no more; a start
// under way is waited for (and its CRIU ended).
func (d *Daemon) closeDumps() {
	d.dumps.mu.Lock()
	d.dumps.closed = true
	d.dumps.mu.Unlock()
	d.dumps.fill.Wait()
	d.dumps.mu.Lock()
	x := d.dumps.ready
	d.dumps.ready = nil
	d.dumps.mu.Unlock()
	if x != nil {
		x.close()
	}
}
