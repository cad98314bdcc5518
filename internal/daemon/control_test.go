package daemon

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	mrt "dsmigrate/runtime"
)

// unixPair returns the two ends of a connected unix socket pair.
func unixPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var cs [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		cs[i] = c.(*net.UnixConn)
		t.Cleanup(func() { cs[i].Close() })
	}
	return cs[0], cs[1]
}

// loopbackPair returns the two ends of a TCP connection on 127.0.0.1,
// closed when the test ends.
func loopbackPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// A process may register its hooks before the daemon has recorded its
// launch (the shim reported, the record is being written): its daemon
// waits for the launch instead of answering "unknown process". Seen in
// make bench: the first rank of a job failed to start that way.
func TestRegisterWhileLaunching(t *testing.T) {
	needRoot(t)
	d := testDaemon(t, t.TempDir())
	const id = "launching"
	launched := make(chan struct{})
	d.launching[id] = launched
	srv, cli := unixPair(t)
	go d.handleControl(srv)
	if err := json.NewEncoder(cli).Encode(mrt.Hello{ID: id, Register: true}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the launch takes a while to be recorded
	p := newProc(id, "x", []string{"x"}, time.Now())
	if err := d.prepareProcDir(p); err != nil {
		t.Fatal(err)
	}
	p.pid = os.Getpid() // the socket's peer is this test: the process itself
	d.mu.Lock()
	d.procs[id] = p
	delete(d.launching, id)
	d.mu.Unlock()
	close(launched)
	var a mrt.Answer
	cli.SetDeadline(time.Now().Add(10 * time.Second))
	if err := json.NewDecoder(cli).Decode(&a); err != nil || a.Err != "" {
		t.Fatalf("registration during the launch: %+v, %v", a, err)
	}
	if !p.hooks {
		t.Error("the hooks were not recorded")
	}

	// An ID nobody launches is still refused at once.
	srv2, cli2 := unixPair(t)
	go d.handleControl(srv2)
	json.NewEncoder(cli2).Encode(mrt.Hello{ID: "nobody", Register: true})
	cli2.SetDeadline(time.Now().Add(time.Second))
	if err := json.NewDecoder(cli2).Decode(&a); err != nil || a.Err != "unknown process" {
		t.Fatalf("an unknown ID: %+v, %v", a, err)
	}
}

// A token rotation needs no restart: SIGHUP reloads the token file, a file
// that cannot be loaded leaves the token in use, and the handshake then
// takes the tokens the file holds.
func TestReloadTokenOnHangup(t *testing.T) {
	d := testDaemon(t, t.TempDir())
	file := filepath.Join(t.TempDir(), "token")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old, next := "old-token-0123456789abcdef", "next-token-0123456789abcdef"
	write(old + "\n")
	if err := d.reloadToken(file); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d.reloadOnHangup(ctx, file)
	hangup := func(want string) {
		t.Helper()
		unix.Kill(os.Getpid(), unix.SIGHUP)
		for end := time.Now().Add(10 * time.Second); string(d.tokenNow()) != want; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("after SIGHUP the token is %q, want %q", d.tokenNow(), want)
			}
		}
	}
	write(old + "\n" + next + "\n")
	hangup(old + "\n" + next)
	write("short\n")
	unix.Kill(os.Getpid(), unix.SIGHUP)
	time.Sleep(200 * time.Millisecond)
	if got := string(d.tokenNow()); got != old+"\n"+next {
		t.Fatalf("a bad token file replaced the token: %q", got)
	}
	write(next + "\n")
	hangup(next)
}
