package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"dsmigrate/internal/migration"
	"dsmigrate/internal/wire"
)

// The page data of a dump streams while CRIU dumps: CRIU's page-server
// protocol runs over a socketpair on each host, and the daemons relay it
// through their authenticated connection (tPages one way, tPagesBack the
// other). No page-server port is ever opened on the network.
//
//	source: criu dump --ps-socket <-> socketpair <-> daemon  ==tPages/tPagesBack==
//	target: daemon <-> socketpair <-> criu page-server --ps-socket -> images dir
//
// The source ends its stream with tPagesEnd once CRIU has exited; the target
// answers tPagesDone once its page server has written everything, or an
// error frame. Meanwhile each side's connection has a single reader: the
// source's relay goroutine, the target's receiving loop.

// pageChunk is the largest tPages payload.
const pageChunk = wire.MaxFrame

// pagesWindDown bounds the end of the page stream after CRIU has exited.
const pagesWindDown = 30 * time.Second

// psSocketBuf is the socket buffer asked for on each end of a socketpair.
const psSocketBuf = 4 << 20

// pageSocket returns a connected pair: ours (pollable, for the relay) and
// CRIU's (blocking, for --ps-socket). Both are close-on-exec; CRIU gets its
// end through ExtraFiles.
func pageSocket() (*net.UnixConn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("page socket: %v", err)
	}
	for _, fd := range fds {
		// Fewer, larger wakeups; FORCE works for root beyond wmem_max.
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, psSocketBuf) != nil {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, psSocketBuf)
		}
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, psSocketBuf) != nil {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, psSocketBuf)
		}
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, nil, fmt.Errorf("page socket: %v", err)
	}
	f := os.NewFile(uintptr(fds[0]), "page-socket")
	c, err := net.FileConn(f) // dups the fd
	f.Close()
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, fmt.Errorf("page socket: %v", err)
	}
	return c.(*net.UnixConn), os.NewFile(uintptr(fds[1]), "criu-page-socket"), nil
}

// pageSender relays a dump's page-server stream from CRIU to the target.
type pageSender struct {
	c     *wire.Conn
	local *net.UnixConn
	sent  atomic.Int64 // page-server bytes sent to the target
	back  atomic.Int64 // bytes of replies from the target's page server
	out   chan error   // the local -> wire goroutine's result
	in    chan error   // the wire -> local goroutine's result
	over  atomic.Bool  // the dump has returned
	early atomic.Bool  // the relay failed before that
	// midway, if set, is called once the stream has carried midwayBytes:
	// CRIU is dumping memory then, past the tree's files and connections.
	// An error from it fails the relay there.
	midway func() error
}

// midwayBytes is more than CRIU's page-server handshake and fewer than a
// process's pages.
const midwayBytes = 1 << 20

// startPageSender starts relaying between local and c. From here until wait
// returns, it is c's only reader.
func startPageSender(c *wire.Conn, local *net.UnixConn, midway func() error) *pageSender {
	s := &pageSender{c: c, local: local, out: make(chan error, 1), in: make(chan error, 1), midway: midway}
	go func() { s.out <- s.toTarget() }()
	go func() { s.in <- s.fromTarget() }()
	return s
}

// toTarget sends what CRIU writes until CRIU has gone (EOF), then tPagesEnd.
// If the target cannot be written to, it closes the page socket: CRIU's next
// write or read fails, the dump fails and CRIU resumes the tree.
func (s *pageSender) toTarget() error {
	buf := make([]byte, pageChunk)
	for {
		n, rerr := s.local.Read(buf)
		if n > 0 {
			// A target that stops reading fails the dump within
			// stallTimeout: the process must not stay frozen for it.
			s.c.SetWriteDeadline(time.Now().Add(stallTimeout))
			if err := s.c.WriteMsg(tPages, buf[:n]); err != nil {
				return s.failed(err)
			}
			if sent := s.sent.Add(int64(n)); s.midway != nil && sent >= midwayBytes {
				f := s.midway
				s.midway = nil
				if err := f(); err != nil {
					return s.failed(err)
				}
			}
		}
		if rerr == io.EOF {
			return s.c.WriteMsg(tPagesEnd, nil)
		}
		if rerr != nil {
			return s.failed(fmt.Errorf("reading CRIU's page stream: %v", rerr))
		}
	}
}

// fromTarget hands the target page server's replies to CRIU until the target
// reports the page server done. On any failure it closes the page socket so
// that a dump still running fails at once instead of waiting for replies.
func (s *pageSender) fromTarget() error {
	for {
		typ, p, err := s.c.ReadMsg()
		if err != nil {
			return s.failed(err)
		}
		switch typ {
		case tPagesBack:
			s.back.Add(int64(len(p)))
			// A failed write means CRIU has gone; its result says why.
			s.local.Write(p)
		case tPagesDone:
			return nil
		case wire.TypeError:
			return s.failed(s.c.DecodeError(p))
		default:
			return s.failed(fmt.Errorf("unexpected message %d while streaming pages", typ))
		}
	}
}

// wait collects both goroutines once the dump is over (CRIU exited, its copy
// of the socket closed); it sets c's deadline and, on success, clears it. After a successful dump the stream winds down
// (tPagesEnd, tPagesDone) within pagesWindDown. After a failed dump nothing
// is waited for: the connection is useless and goes. early reports whether
// the relay failed while CRIU was still dumping, so that its error (the
// target's, typically) is the cause of the dump's failure, not an echo of it.
func (s *pageSender) wait(raw *wire.Conn, dumpFailed bool) (early bool, err error) {
	s.over.Store(true)
	if dumpFailed {
		raw.SetDeadline(time.Now())
		s.local.Close()
	} else {
		raw.SetDeadline(time.Now().Add(pagesWindDown))
		// CRIU has gone, so a write of replies cannot block for long; the
		// deadline makes sure of it.
		s.local.SetDeadline(time.Now().Add(pagesWindDown))
	}
	outErr := <-s.out
	inErr := <-s.in
	s.local.Close()
	if inErr == nil && outErr == nil {
		raw.SetDeadline(time.Time{})
		return false, nil
	}
	if inErr != nil {
		// The target's reason comes first: a local write error is its echo.
		return s.early.Load(), inErr
	}
	return s.early.Load(), outErr
}

// failed records a relay failure while CRIU may still be dumping.
func (s *pageSender) failed(err error) error {
	if !s.over.Load() {
		s.early.Store(true)
	}
	s.local.Close()
	return err
}

// recvPages runs a page server into dir for the dump the source is streaming
// and relays its stream. It returns the number of bytes received (counted
// against maxImageBytes). The source is authenticated but its bytes are not
// trusted any more than image files: CRIU's page server parses them, names
// its files itself (pagemap-<n>.img, pages-<n>.img) and the total is capped.
func (d *Daemon) recvPages(ctx context.Context, c *wire.Conn, dir string) (total int64, err error) {
	local, criuEnd, err := pageSocket()
	if err != nil {
		return 0, err
	}
	defer local.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ps := make(chan error, 1)
	go func() {
		err := d.criu.PageServer(ctx, dir, criuEnd)
		criuEnd.Close() // the last copy: our reader below sees EOF
		ps <- err
	}()
	back := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, rerr := local.Read(buf)
			if n > 0 {
				if err := c.WriteMsg(tPagesBack, buf[:n]); err != nil {
					back <- err
					return
				}
			}
			if rerr != nil {
				back <- nil // the page server has gone
				return
			}
		}
	}()
	// The page server's own error explains a relay failure best.
	psErr := func(relay error) error {
		local.Close()
		select {
		case err := <-ps:
			if err != nil {
				return fmt.Errorf("page server: %w", err)
			}
		case <-time.After(5 * time.Second):
			cancel()
			<-ps
		}
		return relay
	}
	defer func() {
		cancel()
		c.SetDeadline(time.Time{})
	}()
	for {
		// The source streams while CRIU dumps: a stream that stalls for
		// stallTimeout fails, however long the whole dump may take.
		c.SetDeadline(migration.Deadline(ctx, stallTimeout))
		typ, p, err := c.ReadMsg()
		if err != nil {
			return total, psErr(fmt.Errorf("receiving pages: %v", err))
		}
		switch typ {
		case tPages:
		case tPagesEnd:
			// CRIU's dump has exited on the source: the page server has
			// its flush or, after a failed dump, gets EOF and stops.
			local.CloseWrite()
			c.SetDeadline(migration.Deadline(ctx, pagesWindDown))
			var err error
			select {
			case err = <-ps:
			case <-ctx.Done():
				err = fmt.Errorf("timed out: %v", ctx.Err())
			}
			if err != nil {
				return total, fmt.Errorf("page server: %w", err)
			}
			if err := <-back; err != nil {
				return total, err
			}
			return total, c.WriteMsg(tPagesDone, nil)
		case wire.TypeError:
			return total, psErr(c.DecodeError(p))
		default:
			return total, psErr(fmt.Errorf("unexpected message %d while receiving pages", typ))
		}
		if int64(len(p)) > maxImageBytes-total {
			return total, psErr(fmt.Errorf("image too large (over %d bytes)", int64(maxImageBytes)))
		}
		total += int64(len(p))
		if _, err := local.Write(p); err != nil {
			return total, psErr(fmt.Errorf("writing to the page server: %v", err))
		}
	}
}
