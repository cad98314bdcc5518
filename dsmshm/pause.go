package dsmshm

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"net"
	"time"
)

// pause prepares this rank for a checkpoint: it returns when no socket of
// the rank is open, its listener included (see stopAccepting; resume opens
// a new one on the same port), and nothing will dial until resume. Writers tell their peers (mAway), park and say so; messages queue
// meanwhile. Inbound control connections are closed (what was not read is
// resent by the peers, who keep it until acknowledged) and their readers
// waited for; page fetches in flight finish, new ones wait, and every page
// channel is closed.
func (t *tcpTransport) pause() error {
	t.migMu.Lock()
	defer t.migMu.Unlock()
	if t.paused.Load() {
		return nil
	}
	t.mu.Lock()
	t.paused.Store(true)
	t.epoch.Add(1)
	t.mu.Unlock()
	t.stopAccepting() // peers dialling meanwhile are refused and retry
	deadline := time.Now().Add(handshakeTimeout + time.Second)
	var errs []error
	for p, err := range t.tellWriters(ctlMsg{}, deadline) {
		errs = append(errs, fmt.Errorf("dsmshm: pausing: the writer to rank %d did not stop: %w", p.rank, err))
	}
	t.mu.Lock()
	inbound := t.inbound
	t.inbound = nil
	for _, in := range inbound {
		in.conn.Close()
	}
	t.pages.pause() // under t.mu: no page channel is accepted meanwhile
	t.mu.Unlock()
	timeout := time.After(time.Until(deadline))
	for _, in := range inbound {
		select {
		case <-in.done:
		case <-timeout:
			return errors.Join(append(errs, errors.New("dsmshm: pausing: connections from peers did not close"))...)
		}
	}
	return errors.Join(errs...)
}

// errNotAnswered is a writer that did not answer a pause or resume in time.
var errNotAnswered = errors.New("no answer in time")

// tellWriters sends m (each with a done channel of its own) to every peer's
// writer and waits for their answers until deadline. It yields the peers
// whose writer answered an error or nothing in time; a writer that has
// exited answers nothing and is not waited for.
func (t *tcpTransport) tellWriters(m ctlMsg, deadline time.Time) iter.Seq2[*peer, error] {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	dones := make([]chan error, len(t.peers))
	for _, p := range t.peers {
		if p.rank == t.rank {
			continue
		}
		m.done = make(chan error, 1)
		select {
		case p.ctl <- m:
			dones[p.rank] = m.done
			p.out.kick() // a writer waiting for messages looks at p.ctl
		case <-p.exited:
		case <-ctx.Done(): // an earlier request is still not taken
			dones[p.rank] = make(chan error, 1)
			dones[p.rank] <- errNotAnswered
		}
	}
	return func(yield func(*peer, error) bool) {
		defer cancel()
		for _, p := range t.peers {
			if dones[p.rank] == nil {
				continue
			}
			var err error
			select {
			case err = <-dones[p.rank]:
			case <-p.exited:
			case <-ctx.Done():
				err = errNotAnswered
			}
			if err != nil && !yield(p, err) {
				return
			}
		}
	}
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
	self := t.self
	t.paused.Store(false)
	t.mu.Unlock()
	var all []error
	if err := t.listen(); err != nil {
		all = append(all, err) // peers cannot reach this rank: the node fails
	}
	deadline := time.Now().Add(t.dialWait)
	answers := t.tellWriters(ctlMsg{resume: true, announce: self}, deadline.Add(time.Second))
	errs := make(chan error, t.size)
	for _, p := range t.peers {
		if p.rank != t.rank {
			go func() { errs <- t.dialPage(p, deadline, nil) }()
		}
	}
	for range t.size - 1 {
		all = append(all, <-errs)
	}
	for p, err := range answers {
		all = append(all, fmt.Errorf("dsmshm: resuming: rank %d not reconnected: %w", p.rank, err))
	}
	t.pages.unpause()
	return errors.Join(all...)
}
