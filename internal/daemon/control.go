package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"dsmigrate/criu"
	mrt "dsmigrate/runtime"
)

// The control channel to migration-aware processes (package runtime): they
// register once, and when the daemon has a command for one it signals it
// (SIGUSR2), the process connects, takes the command and answers.

const hookTimeout = 60 * time.Second

// control is a command waiting for its process to fetch it.
type control struct {
	cmd  mrt.Command
	done chan error
}

// serveControl accepts the processes' control connections.
func (d *Daemon) serveControl(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		go d.handleControl(c)
	}
}

func (d *Daemon) handleControl(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(hookTimeout))
	dec := json.NewDecoder(c)
	enc := json.NewEncoder(c)
	var h mrt.Hello
	if dec.Decode(&h) != nil {
		return
	}
	d.mu.Lock()
	p, launching := d.procs[h.ID], d.launching[h.ID]
	d.mu.Unlock()
	if p == nil && launching != nil {
		// Started so quickly that its launch is not recorded yet.
		select {
		case <-launching:
		case <-time.After(hookTimeout):
		}
		d.mu.Lock()
		p = d.procs[h.ID]
		d.mu.Unlock()
	}
	if p == nil || !p.owns(peerPid(c)) {
		enc.Encode(mrt.Answer{Err: "unknown process"})
		return
	}
	if h.Register {
		p.mu.Lock()
		p.hooks = true
		p.mu.Unlock()
		// A restarted daemon must know it (ProcRec.Hooks) before the
		// process counts on it.
		if err := d.saveProc(p); err != nil {
			d.log.Error("writing the record of a hook registration", "id", p.ID, "err", err)
		}
		enc.Encode(mrt.Answer{})
		return
	}
	p.mu.Lock()
	pending := p.pending
	p.pending = nil
	p.mu.Unlock()
	if pending == nil {
		// No hook command: a rank's counters asked for by a scrape
		// (metrics.go), or nothing asked, a stray signal.
		d.metrics.serveStats(p.ID, c, dec, enc)
		return
	}
	err := enc.Encode(pending.cmd)
	var a mrt.Answer
	if err == nil {
		err = dec.Decode(&a)
	}
	if err == nil && a.Err != "" {
		err = errors.New(a.Err)
	}
	if err == nil {
		// The process closes its end; wait for that, so nothing connects
		// it to this daemon when CRIU looks.
		var b [1]byte
		c.Read(b[:])
	}
	pending.done <- err
}

// command runs a process's hook through the control channel. A process
// without hooks has nothing to do.
func (d *Daemon) command(p *Proc, cmd mrt.Command) error {
	p.mu.Lock()
	if !p.hooks {
		p.mu.Unlock()
		return nil
	}
	ctl := &control{cmd: cmd, done: make(chan error, 1)}
	p.pending = ctl
	pid := p.pid
	p.mu.Unlock()
	if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
		return fmt.Errorf("signalling process %d: %v", pid, err)
	}
	select {
	case err := <-ctl.done:
		if err != nil {
			return fmt.Errorf("%s hook: %v", cmd.Op, err)
		}
		return nil
	case <-time.After(hookTimeout):
		p.mu.Lock()
		if p.pending == ctl {
			p.pending = nil
		}
		p.mu.Unlock()
		return fmt.Errorf("%s hook: no answer in %v", cmd.Op, hookTimeout)
	}
}

// owns reports whether pid is the process or one of its descendants.
func (p *Proc) owns(pid int) bool {
	p.mu.Lock()
	root := p.pid
	p.mu.Unlock()
	return pid > 0 && slices.Contains(criu.Tree(root), pid)
}

// peerPid is the pid of a unix socket's peer, 0 if unknown.
func peerPid(c net.Conn) int {
	cred, _, err := peerCred(c, false)
	if err != nil {
		return 0
	}
	return int(cred.Pid)
}

// listenControl opens the control socket. Every user's processes may
// connect: handleControl serves a connection only for a process whose
// tree the peer's pid is in (owns).
func listenControl(path string) (net.Listener, error) {
	os.Remove(path)
	old := unix.Umask(0o077)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on %s: %v", path, err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
