package daemon

import (
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSizes(t *testing.T) {
	for in, want := range map[string]int64{"4G": 4 << 30, "512M": 512 << 20, "64k": 64 << 10, "1000": 1000} {
		if got, err := imagesSize(in); err != nil || got != want {
			t.Errorf("imagesSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	total, _ := memTotal()
	if got, err := imagesSize("50%"); err != nil || got != total/2 {
		t.Errorf("imagesSize(50%%) = %d, %v; want %d", got, err, total/2)
	}
	for _, in := range []string{"", "G", "-1G", "0", "101%", "x%", "4X"} {
		if _, err := imagesSize(in); err == nil || !strings.Contains(err.Error(), "--images-size wants") {
			t.Errorf("imagesSize(%q): %v, want a refusal that says what it wants", in, err)
		}
	}
	if v, err := keepFree("0"); err != nil || v != 0 {
		t.Errorf("keepFree(0) = %d, %v", v, err)
	}
	if _, err := keepFree("lots"); err == nil {
		t.Error("keepFree(lots) accepted")
	}
}

// Arrivals are admitted against the memory the others hold: what one holds
// is not there for the next until it is released.
func TestAdmission(t *testing.T) {
	avail, err := memAvailable()
	if err != nil {
		t.Fatal(err)
	}
	a := newAdmission(t.TempDir(), 0)
	half := avail/2 - admitSlackMin
	if err := a.admit("a", half/2, "h9"); err != nil {
		t.Fatalf("a quarter of the available memory refused: %v", err)
	}
	// The machine is shared: what is available moves. Ask for more than
	// could be left beside a.
	err = a.admit("b", avail-half/4, "h9")
	if err == nil || !strings.Contains(err.Error(), "h9 does not have the memory for this process") ||
		!strings.Contains(err.Error(), "held by other arrivals") {
		t.Fatalf("an arrival that does not fit beside another: %v", err)
	}
	a.release("a")
	if len(a.held) != 0 {
		t.Fatalf("held after release: %v", a.held)
	}
	if err := newAdmission(t.TempDir(), avail*2).admit("c", 1, "h9"); err == nil {
		t.Fatal("admitted although the host keeps more than it has")
	}
}

// The images tmpfs is sized, and an arrival whose pages do not fit it is
// refused saying so.
func TestImagesTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	dir := t.TempDir()
	unmount, err := mountImages(dir, 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer unmount()
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil || fs.Type != unix.TMPFS_MAGIC || int64(fs.Blocks)*fs.Bsize != 8<<20 {
		t.Fatalf("statfs: %+v, %v; want an 8 MiB tmpfs", fs, err)
	}
	// A daemon restarted after a crash finds its tmpfs and resizes it.
	if _, err := mountImages(dir, 16<<20); err != nil {
		t.Fatal(err)
	}
	if err := unix.Statfs(dir, &fs); err != nil || int64(fs.Blocks)*fs.Bsize != 16<<20 {
		t.Fatalf("after a resize statfs says %d bytes, want 16 MiB", int64(fs.Blocks)*fs.Bsize)
	}
	a := newAdmission(dir, 0)
	if err := a.admit("d", 1, "h9"); err != nil {
		t.Fatalf("a tiny arrival: %v", err)
	}
	err = a.admit("e", 12<<20, "h9") // 12 MiB and their slack beside d's 4 MiB do not fit 16
	if err == nil || !strings.Contains(err.Error(), "h9 has no room for this process's images") ||
		!strings.Contains(err.Error(), "--images-size") {
		t.Fatalf("12 MiB into a 16 MiB tmpfs with another arrival: %v", err)
	}
}
