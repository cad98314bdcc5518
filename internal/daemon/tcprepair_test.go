package daemon

import (
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"dsmigrate/netmove"
)

// A connection CRIU left in repair mode is dead (a write fails EINVAL);
// repairOff over the tree that holds it brings it back: what is written then
// arrives.
func TestRepairOff(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("repair mode needs CAP_NET_ADMIN")
	}
	cli, srv := loopbackPair(t)
	raw, err := cli.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	write := func() (werr error) {
		raw.Control(func(fd uintptr) { _, werr = unix.Write(int(fd), []byte("x")) })
		return werr
	}
	// The client's end alone: repairOn would take the server's end too.
	clientRepair := func(val int) (err error) {
		raw.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_REPAIR, val) })
		return err
	}
	if err := clientRepair(unix.TCP_REPAIR_ON); err != nil {
		t.Fatal(err)
	}
	if err := write(); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("a write in repair mode: %v, want EINVAL", err)
	}
	if err := repairOff(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if err := write(); err != nil {
		t.Fatalf("a write after repairOff: %v", err)
	}
	srv.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 1)
	if _, err := io.ReadFull(srv, b); err != nil || b[0] != 'x' {
		t.Fatalf("the peer read %q, %v", b, err)
	}
	// Again, on sockets no longer in repair mode (and the listener): no harm.
	if err := repairOff(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	// In repair mode again (as for a discarded copy), the connection's
	// close tells the peer nothing: no FIN, no reset.
	if err := clientRepair(unix.TCP_REPAIR_ON); err != nil {
		t.Fatal(err)
	}
	cli.Close()
	srv.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := srv.Read(b); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after a close in repair mode the peer read %d bytes, %v; want nothing (a timeout)", n, err)
	}
}

// tcpConns lists a tree's connections, both ends of each, as a lock names
// them; a listener is not one.
func TestTCPConns(t *testing.T) {
	cli, srv := loopbackPair(t)
	conns, err := tcpConns(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []net.Conn{cli, srv} {
		want := netmove.Conn{Local: c.LocalAddr().(*net.TCPAddr).AddrPort(), Remote: c.RemoteAddr().(*net.TCPAddr).AddrPort()}
		if !slices.Contains(conns, want) {
			t.Errorf("tcpConns lacks %v: %v", want, conns)
		}
	}
	for _, c := range conns {
		if !c.Remote.IsValid() || c.Remote.Port() == 0 {
			t.Errorf("a connection without a peer: %v", c)
		}
	}
}
