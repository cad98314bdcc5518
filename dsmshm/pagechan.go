package dsmshm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// dialPage opens the page channel to p and hands it to C.
func (t *tcpTransport) dialPage(p *peer, deadline time.Time, stop func() bool) error {
	conn, s, err := t.dial(p, connPage, "", deadline, stop)
	if err != nil {
		return err
	}
	fd, err := detachFD(conn, pageIOTimeout)
	if err != nil {
		return fmt.Errorf("dsmshm: page channel to rank %d: %w", p.rank, err)
	}
	// Under t.mu: a pause either closes this channel or happens first and
	// this one is dropped (resume dials anew).
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.paused.Load() {
		unix.Close(fd)
		return nil
	}
	t.setChan(p.rank, fd, s)
	return nil
}

// startRedial sets up the eventfd through which C asks for a new page
// channel when one breaks, and the goroutine that answers.
func (t *tcpTransport) startRedial() error {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("dsmshm: creating an eventfd for page channel repairs: %w", err)
	}
	cfd, err := unix.FcntlInt(uintptr(efd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		unix.Close(efd)
		return fmt.Errorf("dsmshm: creating an eventfd for page channel repairs: %w", err)
	}
	t.pages.setRedialFD(cfd) // C signals its copy; closing ours (abort) ends redialLoop
	t.redialEv = os.NewFile(uintptr(efd), "dsmshm-redial")
	t.wg.Add(1)
	go t.redialLoop()
	return nil
}

// redialLoop replaces page channels that broke. A fetch that fails on a
// channel (a reset, the page I/O timeout) closes it and signals the eventfd;
// faults on the home's pages then re-fault until a new channel is in place.
// Without this, a channel that failed once stayed closed until the home
// migrated, and every later fault on its pages aborted the process after
// the dial timeout although the home was alive.
func (t *tcpTransport) redialLoop() {
	defer t.wg.Done()
	var b [8]byte
	for {
		if _, err := t.redialEv.Read(b[:]); err != nil {
			return // closed by abort
		}
		for _, p := range t.peers {
			if p.rank != t.rank && t.pages.chanRedial(p.rank) && p.redialing.CompareAndSwap(false, true) {
				t.wg.Add(1)
				go t.redialPage(p)
			}
		}
	}
}

// redialPage dials a new page channel to p, retrying for the dial timeout,
// and installs it if the old one is still broken. It gives up quietly when
// this rank pauses or p announces a migration (their resumption dials anew);
// a p that cannot be reached within the dial timeout fails the node with an
// error saying so. If the new channel breaks too before this returns, it
// dials again.
func (t *tcpTransport) redialPage(p *peer) {
	defer t.wg.Done()
	stop := func() bool {
		_, away := p.away()
		return away || t.paused.Load() || t.closing.Load()
	}
	for {
		installed, err := t.redialOnce(p, stop)
		// No error if the channel was replaced meanwhile (p came back
		// from a migration, for one).
		if err != nil && !stop() && t.pages.chanRedial(p.rank) {
			t.inbox.push(envelope{err: fmt.Errorf("dsmshm: the page channel to rank %d broke and could not be "+
				"re-established within %v: %w", p.rank, t.dialWait, err)})
		}
		p.redialing.Store(false)
		// A channel that broke again while this ran signalled a redialLoop
		// that saw this one still running: look again.
		if !installed || !t.pages.chanRedial(p.rank) || !p.redialing.CompareAndSwap(false, true) {
			return
		}
	}
}

func (t *tcpTransport) redialOnce(p *peer, stop func() bool) (bool, error) {
	conn, s, err := t.dial(p, connPage, "", time.Now().Add(t.dialWait), stop)
	if err != nil {
		return false, err
	}
	fd, err := detachFD(conn, pageIOTimeout)
	if err != nil {
		return false, fmt.Errorf("page channel to rank %d: %w", p.rank, err)
	}
	// Under t.mu, as in dialPage: a pause either closes this channel or
	// happens first and this one is dropped.
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.paused.Load() || !t.pages.replaceChan(p.rank, fd, s) {
		unix.Close(fd)
		return false, nil
	}
	return true, nil
}

// detachFD turns conn into a blocking file descriptor owned by the caller
// (C code), with I/O timeouts so a dead peer cannot block a thread forever.
func detachFD(conn net.Conn, timeout time.Duration) (int, error) {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return -1, fmt.Errorf("not a TCP connection: %T", conn)
	}
	tc.SetNoDelay(true)
	raw, err := tc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	cerr := raw.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	conn.Close()
	if err = errors.Join(cerr, err); err != nil {
		return -1, err
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	err = errors.Join(
		unix.SetNonblock(fd, false),
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv),
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv))
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}
