package daemon

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"dsmigrate/criu"
	"dsmigrate/internal/api"
	"dsmigrate/internal/placement"
)

// Admission of incoming migrations. A process's pages arrive in the images
// tmpfs and are then restored into the process's own memory; CRIU's
// auto-dedup punches each page out of the images as it restores it, so a
// move needs about the process's memory once, plus some slack, and not twice.
// Each incoming migration holds what it needs from its Begin until it is
// running here or discarded, so that concurrent arrivals are admitted
// against what the others left free.
const (
	admitSlackDiv = placement.SlackDiv    // memory slack: 1/8 of the process's memory ...
	admitSlackMin = placement.SlackMin    // ... and at least 16 MiB (page tables, CRIU itself, the images but pages)
	imagesSlack   = placement.ImagesSlack // the images but pages, in the tmpfs
)

// DefaultKeepFree is the memory a daemon never gives to incoming migrations
// unless told otherwise (--keep-free): the host's own work needs some.
const DefaultKeepFree = 256 << 20

// admission tracks the memory held by incoming migrations.
type admission struct {
	imagesDir string
	keepFree  int64

	mu   sync.Mutex
	held map[string]hold // by process ID
}

// hold is what one arrival holds: memory, and room in the images tmpfs.
type hold struct{ mem, images int64 }

func newAdmission(imagesDir string, keepFree int64) *admission {
	return &admission{imagesDir: imagesDir, keepFree: keepFree, held: map[string]hold{}}
}

// need is what a process of mem bytes holds here while it arrives.

// admit holds placement.Held(mem) for process id if the host's available memory and
// the images tmpfs's free space both have it beside what the others hold,
// and says why not otherwise, in a sentence for the user whose process stays
// on its source.
func (a *admission) admit(id string, mem int64, self string) error {
	avail, err := memAvailable()
	if err != nil {
		return err
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(a.imagesDir, &fs); err != nil {
		return fmt.Errorf("reading the images tmpfs's free space: %v", err)
	}
	room := int64(fs.Bavail) * fs.Bsize
	h := hold{mem: placement.Held(mem), images: placement.ImagesHeld(mem)}
	a.mu.Lock()
	defer a.mu.Unlock()
	var others hold
	for _, o := range a.held {
		others.mem += o.mem
		others.images += o.images
	}
	if free := avail - a.keepFree - others.mem; h.mem > free {
		return fmt.Errorf("%s does not have the memory for this process: it needs about %s and %s is free there for incoming "+
			"processes (%s available, %s kept for the host, %s held by other arrivals); choose another target or free memory there",
			self, api.MiB(h.mem), api.MiB(max(free, 0)), api.MiB(avail), api.MiB(a.keepFree), api.MiB(others.mem))
	}
	if free := room - others.images; h.images > free {
		return fmt.Errorf("%s has no room for this process's images: they need about %s and its images tmpfs has %s free "+
			"(%s held by other arrivals); choose another target, or start that daemon with a larger --images-size",
			self, api.MiB(h.images), api.MiB(max(free, 0)), api.MiB(others.images))
	}
	a.held[id] = h
	return nil
}

// release gives back what process id held (once it runs here, or is gone).
func (a *admission) release(id string) {
	a.mu.Lock()
	delete(a.held, id)
	a.mu.Unlock()
}

// memAvailable is the kernel's estimate of the memory available for new
// work without swapping (MemAvailable in /proc/meminfo), in bytes.
func memAvailable() (int64, error) {
	return meminfo("MemAvailable")
}

// memTotal is the host's RAM in bytes.
func memTotal() (int64, error) {
	return meminfo("MemTotal")
}

func meminfo(field string) (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	if v, ok := kbField(b, field); ok {
		return v, nil
	}
	return 0, fmt.Errorf("/proc/meminfo has no %s", field)
}

// kbField reads "Field:   N kB" out of a /proc status-like file, in bytes.
func kbField(b []byte, field string) (int64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			return 0, false
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, false
		}
		if len(f) > 1 && f[1] == "kB" {
			n <<= 10
		}
		return n, true
	}
	return 0, false
}

// treeMemory is what a dump of pid's tree is expected to hold: the resident
// anonymous and shared memory of every process in it (a thread shares its
// process's). Unreadable processes (gone meanwhile) count nothing.
func treeMemory(pid int) int64 {
	var sum int64
	for _, p := range criu.Tree(pid) {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p), "status"))
		if err != nil {
			continue
		}
		for _, f := range []string{"RssAnon", "RssShmem"} {
			if v, ok := kbField(b, f); ok {
				sum += v
			}
		}
	}
	return sum
}

// imagesSize parses --images-size: a size with an optional K, M, G or T
// suffix (powers of 1024), or a percentage of the host's RAM ("50%").
func imagesSize(s string) (int64, error) {
	bad := errors.New("--images-size wants a size such as 4G, 512M or 50% (of the host's RAM), got " + strconv.Quote(s))
	s = strings.TrimSpace(s)
	if pct, ok := strings.CutSuffix(s, "%"); ok {
		p, err := strconv.ParseFloat(pct, 64)
		if err != nil || p <= 0 || p > 100 {
			return 0, bad
		}
		total, err := memTotal()
		if err != nil {
			return 0, err
		}
		return int64(float64(total) * p / 100), nil
	}
	return parseSize(s, bad)
}

// keepFree parses --keep-free: a size, 0 for none.
func keepFree(s string) (int64, error) {
	if strings.TrimSpace(s) == "0" {
		return 0, nil
	}
	return parseSize(strings.TrimSpace(s), errors.New("--keep-free wants a size such as 256M or 1G, or 0, got "+strconv.Quote(s)))
}

// parseSize reads a byte count with an optional K, M, G or T suffix.
func parseSize(s string, bad error) (int64, error) {
	mult := int64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		case 't', 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			s = s[:n-1]
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v <= 0 {
		return 0, bad
	}
	return v * mult, nil
}

// mountImages gives dir a tmpfs of its own of size bytes, so that images pass
// through memory, never a disk, and never take more than size. A tmpfs that a
// crashed daemon left mounted there is resized; a tmpfs dir merely lies on
// (as /run's) is not its own, and gets one. It returns the unmount.
func mountImages(dir string, size int64) (func(), error) {
	opts := fmt.Sprintf("mode=0700,size=%d", size)
	var st, parent unix.Stat_t
	var fs unix.Statfs_t
	if err := unix.Stat(dir, &st); err != nil {
		return nil, err
	}
	if err := unix.Stat(filepath.Dir(dir), &parent); err != nil {
		return nil, err
	}
	if err := unix.Statfs(dir, &fs); err != nil {
		return nil, err
	}
	unmount := func() { unix.Unmount(dir, unix.MNT_DETACH) }
	if fs.Type == unix.TMPFS_MAGIC && st.Dev != parent.Dev {
		if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
			return nil, fmt.Errorf("cannot resize the images tmpfs on %s: %v", dir, err)
		}
		return unmount, nil
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return nil, fmt.Errorf("cannot mount a tmpfs for images on %s: %v", dir, err)
	}
	return unmount, nil
}
