package runtime

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// A registered process answers its daemon's "stats" command with what
// Hooks.Stats returns, on a connection it opens when signalled and closes
// after its answer; one without Hooks.Stats answers with an error. The
// daemon is played by the test: a control socket it serves.
func TestStatsCommand(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t.Setenv(EnvID, "proc1")
	t.Setenv(EnvControl, path)
	t.Cleanup(func() {
		mu.Lock()
		hooks = nil
		mu.Unlock()
	})
	want := Stats{ReadFaults: 3, WriteFaults: 4, PagesFetched: 5, Diffs: 6, BarrierWaitNS: 7}
	accept := func() (net.Conn, Hello) {
		t.Helper()
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		var h Hello
		if err := json.NewDecoder(c).Decode(&h); err != nil {
			t.Fatal(err)
		}
		return c, h
	}
	registered := make(chan error, 1)
	go func() { registered <- Register(Hooks{Stats: func() Stats { return want }}) }()
	c, h := accept()
	if !h.Register || h.ID != "proc1" {
		t.Fatalf("registration: %+v", h)
	}
	json.NewEncoder(c).Encode(Answer{})
	c.Close()
	if err := <-registered; err != nil {
		t.Fatal(err)
	}

	ask := func() Answer {
		t.Helper()
		syscall.Kill(os.Getpid(), syscall.SIGUSR2)
		c, h := accept()
		defer c.Close()
		if h.Register || h.ID != "proc1" {
			t.Fatalf("hello: %+v", h)
		}
		dec := json.NewDecoder(c)
		if err := json.NewEncoder(c).Encode(Command{Op: "stats"}); err != nil {
			t.Fatal(err)
		}
		var a Answer
		if err := dec.Decode(&a); err != nil {
			t.Fatal(err)
		}
		// The process closes its end after its answer.
		var b [1]byte
		if n, err := c.Read(b[:]); n != 0 || err == nil {
			t.Fatalf("the connection stays open after the answer: %d, %v", n, err)
		}
		return a
	}
	if a := ask(); a.Err != "" || a.Stats == nil || *a.Stats != want {
		t.Fatalf("stats answer %+v, want %+v", a, want)
	}
	mu.Lock()
	hooks.Stats = nil
	mu.Unlock()
	if a := ask(); a.Err == "" || a.Stats != nil {
		t.Fatalf("without Hooks.Stats: %+v, want an error", a)
	}
}
