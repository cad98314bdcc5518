package criu

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A lazy dump's runs, read from its pagemap, are what its page server
// serves: a request for a run's pages is answered in full, with the
// process's own bytes, in the header layout the daemon's prefetching
// (internal/daemon/prefetch.go) relies on.
func TestLazyRanges(t *testing.T) {
	c := client(t)
	raisePipeMax(t)
	cmd := sleeper(t)
	pid := cmd.Process.Pid
	dir := t.TempDir()
	dropLock(t, dir)
	mine, theirs := socketPair(t, "mine", "criu")
	defer mine.Close()
	ready := make(chan struct{})
	done := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() {
		_, err := c.Dump(ctx, DumpOpts{Pid: pid, ImagesDir: dir, LeaveStopped: true, Lazy: theirs,
			Ready: func() error { close(ready); return nil }})
		theirs.Close()
		done <- err
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("lazy dump: %v", err)
	}

	runs, err := LazyRanges(dir)
	if err != nil {
		t.Fatal(err)
	}
	rs := runs[uint64(pid)] // no pid namespace here: the dump's pid is the real one
	if len(rs) == 0 || len(runs) != 1 {
		t.Fatalf("lazy runs %v, want some for pid %d alone", runs, pid)
	}
	for i, r := range rs {
		if r.Start%PageSize != 0 || r.End%PageSize != 0 || r.End <= r.Start || (i > 0 && r.Start < rs[i-1].End) {
			t.Fatalf("run %d of %v is not whole pages in order", i, rs)
		}
	}

	mem, err := os.Open("/proc/" + strconv.Itoa(pid) + "/mem")
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	ne := binary.NativeEndian
	for _, r := range []PageRange{rs[0], rs[len(rs)-1]} {
		n := min((r.End-r.Start)/PageSize, 1024)
		req := make([]byte, 32)
		ne.PutUint32(req, 7) // PS_IOV_GET
		ne.PutUint64(req[8:], n)
		ne.PutUint64(req[16:], r.Start)
		ne.PutUint64(req[24:], uint64(pid))
		if _, err := mine.Write(req); err != nil {
			t.Fatal(err)
		}
		hdr := make([]byte, 32)
		if _, err := io.ReadFull(mine, hdr); err != nil {
			t.Fatal(err)
		}
		cmd, nr, vaddr, id := ne.Uint32(hdr), ne.Uint64(hdr[8:]), ne.Uint64(hdr[16:]), ne.Uint64(hdr[24:])
		if cmd != 4<<16|6 || nr != n || vaddr != r.Start || id != uint64(pid) {
			t.Fatalf("asked for %d pages at %#x of %d, the page server answered cmd %#x, %d pages at %#x of %d",
				n, r.Start, pid, cmd, nr, vaddr, id)
		}
		got := make([]byte, n*PageSize)
		if _, err := io.ReadFull(mine, got); err != nil {
			t.Fatal(err)
		}
		want := make([]byte, len(got))
		if _, err := mem.ReadAt(want, int64(r.Start)); err != nil {
			t.Fatalf("reading the process's memory at %#x: %v", r.Start, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("the pages served at %#x differ from the process's memory", r.Start)
		}
	}

	// The end, as lazy-pages says it: PS_IOV_FORCE_CLOSE, and a status.
	bye := make([]byte, 32)
	ne.PutUint32(bye, 0x1024)
	if _, err := mine.Write(bye); err != nil {
		t.Fatal(err)
	}
	st := make([]byte, 4)
	if _, err := io.ReadFull(mine, st); err != nil || ne.Uint32(st) != 0 {
		t.Fatalf("final status %x, %v", st, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the lazy dump ended with %v", err)
	}
}

// raisePipeMax makes fs.pipe-max-size at least 4 MiB for the test, as a
// lazy dump's page server needs (the daemon checks it; cluster.sh sets it).
func raisePipeMax(t *testing.T) {
	const f = "/proc/sys/fs/pipe-max-size"
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	old := strings.TrimSpace(string(b))
	if n, _ := strconv.Atoi(old); n >= 4<<20 {
		return
	}
	if err := os.WriteFile(f, []byte(strconv.Itoa(4<<20)), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.WriteFile(f, []byte(old), 0) })
}
