package daemon

import (
	"net"
	"os"

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
// is over (ahead.go). A dump that finds none (two at once, or the start
// failed) starts its own. An idle CRIU exits when the daemon closes its RPC
// socket, or dies.

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
	if x := d.dumps.take(); x != nil {
		return x.w, x.local, x.criuEnd, nil
	}
	local, criuEnd, err := pageSocket()
	return nil, local, criuEnd, err
}

// openDumps starts the first CRIU ahead (serve).
func (d *Daemon) openDumps() {
	d.dumps.openWith(d.log, "starting CRIU ahead of the next dump", d.startDumpWorker, (*dumpWorker).close)
}

// refillDump starts a CRIU for the next dump in the background (ahead.refill).
func (d *Daemon) refillDump() {
	d.dumps.refill()
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

// closeDumps ends the waiting CRIU, if any, and starts no more.
func (d *Daemon) closeDumps() { d.dumps.close() }
