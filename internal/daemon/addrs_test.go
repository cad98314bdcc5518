package daemon

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAdvertised(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		listen, advertise string
		want              string       // "" refused
		own               []netip.Addr // when accepted
		why               string       // when refused
	}{
		{"10.77.0.1:7077", "", "10.77.0.1:7077", addrs("10.77.0.1"), ""},
		{"127.0.0.1:7077", "", "127.0.0.1:7077", addrs("127.0.0.1"), ""}, // a single-host setup
		{"[::1]:7077", "", "[::1]:7077", addrs("::1"), ""},
		{":7077", "", "", nil, "add --advertise"},
		{"0.0.0.0:7077", "", "", nil, "add --advertise"},
		{"[::]:7077", "", "", nil, "add --advertise"},
		{"169.254.3.4:7077", "", "", nil, "not an address other hosts can call"},
		{"10.77.0.1:0", "", "", nil, "picks a port at random"},
		{"10.77.0.1", "", "", nil, "want ADDR:PORT"},
		{"10.77.0.1:http", "", "", nil, "want ADDR:PORT"},
		{"10.77.0.1:70000", "", "", nil, "want ADDR:PORT"},
		{":7077", "10.77.0.1:7077", "10.77.0.1:7077", addrs("10.77.0.1"), ""},
		{"0.0.0.0:7077", "10.77.0.1:7078", "10.77.0.1:7078", addrs("10.77.0.1"), ""}, // a forwarded port
		{"10.77.0.1:7077", "192.0.2.7:7077", "192.0.2.7:7077", addrs("10.77.0.1", "192.0.2.7"), ""},
		{":7077", "0.0.0.0:7077", "", nil, "not an address other hosts can call"},
		{":7077", ":7077", "", nil, "--advertise \":7077\": want ADDR:PORT"},
		{":7077", "10.77.0.1:0", "", nil, "want ADDR:PORT"},
		{":7077", "[fe80::1]:7077", "", nil, "not an address other hosts can call"},
		{":7077", "224.0.0.1:7077", "", nil, "not an address other hosts can call"},
	} {
		got, own, err := advertised(ctx, c.listen, c.advertise)
		if c.want != "" {
			if err != nil || got != c.want || !slices.Equal(own, c.own) {
				t.Errorf("advertised(%q, %q) = %q, %v, %v; want %q, %v", c.listen, c.advertise, got, own, err, c.want, c.own)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.why) {
			t.Errorf("advertised(%q, %q) = %q, %v; want an error saying %q", c.listen, c.advertise, got, err, c.why)
		}
	}
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

// A daemon advertising loopback sends nowhere but to loopback: a target
// elsewhere could not call it back.
func TestCheckOutLoopbackAdvertised(t *testing.T) {
	d := &Daemon{advertise: "127.0.0.1:7077"}
	if err := d.checkOut(context.Background(), "10.77.0.2:7077", ""); err == nil ||
		!strings.Contains(err.Error(), "restart it with --advertise") {
		t.Errorf("checkOut to another host = %v; want a refusal naming --advertise", err)
	}
	if err := d.checkOut(context.Background(), "127.0.0.1:7078", ""); err != nil {
		t.Errorf("checkOut to loopback = %v; want nil", err)
	}
	d.advertise = "10.77.0.1:7077"
	if err := d.checkOut(context.Background(), "10.77.0.2:7077", ""); err != nil {
		t.Errorf("checkOut from a routable daemon = %v; want nil", err)
	}
	if err := d.checkOut(context.Background(), "10.77.0.2", ""); err == nil {
		t.Errorf("checkOut to a target without a port: no error")
	}
	// The move check itself is netmove's (its tests); loopback is refused
	// whatever the host holds.
	if err := d.checkOut(context.Background(), "10.77.0.2:7077", "127.0.0.1/8"); err == nil ||
		!strings.Contains(err.Error(), "--move-ip refused, nothing was touched: 127.0.0.1/8 is a loopback address") {
		t.Errorf("checkOut --move-ip 127.0.0.1/8 = %v; want a loopback refusal", err)
	}
}

func TestLogLimiter(t *testing.T) {
	l := logLimiter{every: 10 * time.Second}
	t0 := time.Unix(1000, 0)
	for _, c := range []struct {
		at   time.Duration
		ok   bool
		held int
	}{
		{0, true, 0}, {time.Second, false, 0}, {2 * time.Second, false, 0}, {9 * time.Second, false, 0},
		{10 * time.Second, true, 3}, {11 * time.Second, false, 0}, {30 * time.Second, true, 1}, {41 * time.Second, true, 0},
	} {
		ok, held := l.allow(t0.Add(c.at))
		if ok != c.ok || held != c.held {
			t.Errorf("allow(+%v) = %v, %d; want %v, %d", c.at, ok, held, c.ok, c.held)
		}
	}
}

// syncBuffer is a log sink the accept loop's goroutines write to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// At most maxPreAuth connections wait for their handshake; the next ones
// are closed at once, with one log line for the lot; a finished handshake
// frees its place.
func TestPreAuthCap(t *testing.T) {
	var logb syncBuffer
	d := &Daemon{log: slog.New(slog.NewTextHandler(&logb, nil)), capLog: logLimiter{every: time.Hour}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var mu sync.Mutex
	var authFns []func()
	started := make(chan struct{}, 2*maxPreAuth)
	release := make(chan struct{})
	go d.acceptPeers(l, func(c net.Conn, authed func()) {
		defer c.Close()
		mu.Lock()
		authFns = append(authFns, authed)
		mu.Unlock()
		started <- struct{}{}
		<-release // a handshake that never ends (until the test is over)
	})
	defer close(release)
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	for range maxPreAuth {
		dial()
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatal("a connection within the cap was not handled")
		}
	}
	closedAtOnce := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return err == io.EOF || err != nil && !isTimeout(err)
	}
	for i := range 5 {
		if c := dial(); !closedAtOnce(c) {
			t.Fatalf("connection %d beyond the cap was not closed", i+1)
		}
	}
	if n := strings.Count(logb.String(), "too many connections"); n != 1 {
		t.Errorf("%d log lines for 5 refused connections, want 1:\n%s", n, logb.String())
	}
	// One handshake ends: its place goes to the next connection.
	mu.Lock()
	authFns[0]()
	authFns[0]() // twice is once
	mu.Unlock()
	dial()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("a place freed by a finished handshake was not given to the next connection")
	}
	if c := dial(); !closedAtOnce(c) {
		t.Fatal("the cap did not hold after a place was reused")
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
