package dsmshm

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// pause prepares this rank for a checkpoint: it returns when no connection
// of the rank is open but its listener and nothing will dial until resume.
// Writers tell their peers (mAway) and park; messages queue meanwhile.
// Inbound control connections are closed (what was not read is resent by the
// peers, who keep it until acknowledged); page fetches in flight finish, new
// ones wait, and every page channel is closed.
func (t *tcpTransport) pause() error {
	t.migMu.Lock()
	defer t.migMu.Unlock()
	if t.paused.Load() {
		return nil
	}
	t.mu.Lock()
	t.paused.Store(true)
	e := t.epoch.Add(1)
	t.mu.Unlock()
	var errs []error
	deadline := time.Now().Add(handshakeTimeout + time.Second)
	for _, p := range t.peers {
		if p.rank == t.rank {
			continue
		}
		p.out.kick()
		for p.parked.Load() != e && !p.done.Load() {
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("dsmshm: pausing: the writer to rank %d did not stop", p.rank))
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	t.mu.Lock()
	for _, c := range t.inbound {
		c.Close()
	}
	t.inbound = nil
	t.pages.pause() // under t.mu: no page channel is accepted meanwhile
	t.mu.Unlock()
	for t.readers.Load() != 0 {
		if time.Now().After(deadline) {
			errs = append(errs, errors.New("dsmshm: pausing: connections from peers did not close"))
			break
		}
		time.Sleep(time.Millisecond)
	}
	return errors.Join(errs...)
}

// resume reconnects after pause. host, if not empty, is this rank's new
// host: its address becomes host:port (the listener is restored on the same
// port). Writers dial every peer announcing the address and resend what is
// unacknowledged; peers then redial this rank and resend theirs. Page
// channels to every peer are dialled anew before fetches may proceed.
func (t *tcpTransport) resume(host string) error {
	t.migMu.Lock()
	defer t.migMu.Unlock()
	if !t.paused.Load() {
		return nil
	}
	t.mu.Lock()
	if host != "" {
		t.self = net.JoinHostPort(host, t.port)
	}
	for _, p := range t.peers {
		p.resumeErr.Store(nil)
	}
	t.paused.Store(false)
	e := t.epoch.Load()
	t.mu.Unlock()
	deadline := time.Now().Add(t.dialWait)
	errs := make(chan error, t.size)
	for _, p := range t.peers {
		if p.rank == t.rank {
			continue
		}
		p.out.kick()
		go func() { errs <- t.dialPage(p, deadline, nil) }()
	}
	var all []error
	for range t.size - 1 {
		all = append(all, <-errs)
	}
	for _, p := range t.peers {
		if p.rank == t.rank {
			continue
		}
		for p.resumed.Load() != e && !p.done.Load() {
			if time.Now().After(deadline.Add(time.Second)) {
				all = append(all, fmt.Errorf("dsmshm: resuming: rank %d not reconnected", p.rank))
				break
			}
			time.Sleep(time.Millisecond)
		}
		if err := p.resumeErr.Load(); err != nil {
			all = append(all, *err)
		}
	}
	t.pages.unpause()
	return errors.Join(all...)
}
