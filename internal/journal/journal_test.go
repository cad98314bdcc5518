package journal

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type rec struct {
	A string
	N int
}

func TestPutGetListDelete(t *testing.T) {
	d, err := Open(filepath.Join(t.TempDir(), "j"))
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := d.Get("x", &rec{}); ok || err != nil {
		t.Fatalf("Get of a missing record: %v %v", ok, err)
	}
	for i, n := range []string{"b", "a", "c"} {
		if err := d.Put(n, rec{A: n, N: i}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Put("a", rec{A: "a2", N: 9}); err != nil {
		t.Fatal(err)
	}
	var r rec
	if ok, err := d.Get("a", &r); !ok || err != nil || r != (rec{"a2", 9}) {
		t.Fatalf("Get(a) = %v %v %+v", ok, err, r)
	}
	// Unsynced, a record replaces the old one whole all the same.
	if err := d.PutUnsynced("a", rec{A: "a3", N: 10}); err != nil {
		t.Fatal(err)
	}
	if ok, err := d.Get("a", &r); !ok || err != nil || r != (rec{"a3", 10}) {
		t.Fatalf("Get(a) after PutUnsynced = %v %v %+v", ok, err, r)
	}
	names, _ := d.List()
	if strings.Join(names, ",") != "a,b,c" {
		t.Fatalf("List = %v", names)
	}
	if err := d.Delete("b"); err != nil {
		t.Fatal(err)
	}
	if err := d.Delete("b"); err != nil {
		t.Fatalf("deleting a missing record: %v", err)
	}
	names, _ = d.List()
	if strings.Join(names, ",") != "a,c" {
		t.Fatalf("List after Delete = %v", names)
	}
	for _, bad := range []string{"", "../x", ".hidden", "a/b"} {
		if err := d.Put(bad, r); err == nil {
			t.Errorf("Put(%q) accepted", bad)
		}
	}
}

// A temporary file left by a crash mid-Put is neither listed nor kept.
func TestCrashLeftovers(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "j")
	d, _ := Open(dir)
	d.Put("a", rec{A: "a"})
	os.WriteFile(filepath.Join(dir, tmpPrefix+"a.json-123"), []byte("{torn"), 0o600)
	names, _ := d.List()
	if len(names) != 1 {
		t.Fatalf("List = %v, want only a", names)
	}
	// A young one may be another writer's Put in progress: kept.
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, tmpPrefix+"a.json-123")); err != nil {
		t.Fatal("Open removed a temporary file younger than a minute")
	}
	old := time.Now().Add(-2 * staleTmp)
	os.Chtimes(filepath.Join(dir, tmpPrefix+"a.json-123"), old, old)
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, tmpPrefix+"a.json-123")); !os.IsNotExist(err) {
		t.Fatal("Open left a stale temporary file")
	}
	// What a machine's crash may leave of an unsynced record.
	for _, torn := range []string{"{torn", ""} {
		os.WriteFile(filepath.Join(dir, "bad.json"), []byte(torn), 0o600)
		if _, err := d.Get("bad", &rec{}); !errors.Is(err, ErrDamaged) {
			t.Fatalf("Get of a record holding %q: %v, want ErrDamaged", torn, err)
		}
	}
}

// A second holder is refused, also from another process, and the error
// names the holder; after release the lock is free.
func TestLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	release, err := Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	// flock locks are per open file description: a second Lock in this
	// process conflicts too, as another process's would.
	if _, err := Lock(path); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "pid") {
		t.Fatalf("second Lock: %v", err)
	}
	if out, err := exec.Command("flock", "-n", path, "true").CombinedOutput(); err == nil {
		t.Fatalf("flock(1) got the lock while it was held: %s", out)
	}
	release()
	r2, err := Lock(path)
	if err != nil {
		t.Fatalf("Lock after release: %v", err)
	}
	r2()
}

// BenchmarkPut measures one durable record write (write, fsync, rename, fsync
// of the directory) in JOURNAL_BENCH_DIR, or a temporary directory: the cost
// a migration pays for its decision (README, Figures).
func BenchmarkPut(b *testing.B) { benchPut(b, (*Dir).Put) }

// BenchmarkPutUnsynced is BenchmarkPut without the fsyncs: the cost of each
// journaled step.
func BenchmarkPutUnsynced(b *testing.B) { benchPut(b, (*Dir).PutUnsynced) }

func benchPut(b *testing.B, put func(d *Dir, name string, v any) error) {
	dir := os.Getenv("JOURNAL_BENCH_DIR")
	if dir == "" {
		dir = b.TempDir()
	}
	d, err := Open(filepath.Join(dir, "bench"))
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(d.Path())
	r := rec{A: "a migration record of a typical size, with its step and paths", N: 1}
	for b.Loop() {
		if err := put(d, "r", r); err != nil {
			b.Fatal(err)
		}
	}
}
