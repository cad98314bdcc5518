package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"dsmigrate/criu"
	"dsmigrate/netmove"
)

// repairOff takes every TCP socket of root's tree out of repair mode, as
// CRIU does itself when a dump lets the tree run on. A dump with
// --tcp-established that leaves the tree stopped leaves its established
// sockets in repair mode (frozen: nothing is sent, acknowledged or
// delivered); the tree cannot simply be continued after a failed migration.
// The sockets are reached with pidfd_getfd; switching repair off makes the
// kernel send a window probe, and the connection goes on where it stopped.
// Listening sockets cannot be in repair mode (the kernel refuses them:
// EPERM) and are skipped; so are sockets that are not TCP.
func repairOff(root int) error { return setRepair(root, unix.TCP_REPAIR_OFF) }

// repairOn puts every TCP connection of root's tree in repair mode, as CRIU
// does before it kills a dumped tree: closed in repair mode, a connection
// ends without a FIN or a reset to its peer. A restored copy that a failed
// migration discards must go this way, or its death would end the
// connection that the copy resumed on the source still holds.
func repairOn(root int) error { return setRepair(root, unix.TCP_REPAIR_ON) }

func setRepair(root, val int) error {
	return eachTCP(root, func(fd int) error {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR, val); err != nil &&
			!errors.Is(err, unix.EPERM) { // a listener
			return err
		}
		return nil
	})
}

// tcpConns returns the TCP connections of root's tree: each socket's own
// address and its peer's (listeners have no peer and are left out).
func tcpConns(root int) ([]netmove.Conn, error) {
	var conns []netmove.Conn
	err := eachTCP(root, func(fd int) error {
		la, err1 := unix.Getsockname(fd)
		ra, err2 := unix.Getpeername(fd)
		if err1 != nil || err2 != nil {
			return nil // a listener, or not connected
		}
		l, r := addrPort(la), addrPort(ra)
		if l.IsValid() && r.IsValid() {
			conns = append(conns, netmove.Conn{Local: l, Remote: r})
		}
		return nil
	})
	return conns, err
}

func addrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// eachTCP calls f with a copy of each TCP socket of root's tree (pidfd_getfd),
// once per socket however many descriptors or processes share it.
func eachTCP(root int, f func(fd int) error) error {
	seen := map[string]bool{}
	var errs []error
	for _, pid := range criu.Tree(root) {
		dir := fmt.Sprintf("/proc/%d/fd", pid)
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue // gone meanwhile: its sockets with it
		}
		pidfd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			if errors.Is(err, unix.ESRCH) {
				continue
			}
			errs = append(errs, fmt.Errorf("opening process %d: %v", pid, err))
			continue
		}
		for _, e := range fds {
			link, err := os.Readlink(dir + "/" + e.Name())
			if err != nil || !strings.HasPrefix(link, "socket:[") || seen[link] {
				continue
			}
			seen[link] = true
			n, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if err := onTCP(pidfd, n, f); err != nil {
				errs = append(errs, fmt.Errorf("process %d fd %d (%s): %v", pid, n, link, err))
			}
		}
		unix.Close(pidfd)
	}
	return errors.Join(errs...)
}

func onTCP(pidfd, n int, f func(fd int) error) error {
	fd, err := unix.PidfdGetfd(pidfd, n, 0)
	if err != nil {
		if errors.Is(err, unix.EBADF) {
			return nil // closed meanwhile
		}
		return err
	}
	defer unix.Close(fd)
	if p, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil || p != unix.IPPROTO_TCP {
		return nil
	}
	return f(fd)
}
