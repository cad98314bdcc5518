package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"dsmigrate/internal/shim"
)

// waiting reports what waits and whether a start is under way.
func (a *ahead[T]) waiting() (*T, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ready, a.filling
}

// One shim waits for the next arrival, in a spare directory: refilled once
// taken, never two; a take moves it, with its log, to the process's
// directory and removes the spare one; a take with none waiting gets none;
// after closeShims none waits, none starts, and no spare directory is left.
func TestAheadShims(t *testing.T) {
	needRoot(t)
	d := testDaemon(t, t.TempDir())
	defer d.closeShims()
	waiting := func() (*shim.Pending, string) {
		t.Helper()
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			x, filling := d.shims.waiting()
			if x != nil {
				return x.p, x.spare
			}
			if !filling {
				return nil, ""
			}
			if time.Now().After(end) {
				t.Fatal("a shim started ahead never got ready")
			}
		}
	}
	d.refillShim()
	if p, _ := waiting(); p != nil {
		t.Fatal("a shim waits before openShims")
	}
	d.openShims()
	d.refillShim()
	ready, spare := waiting()
	if ready == nil {
		t.Fatal("refillShim started no shim")
	}
	if ents, _ := os.ReadDir(d.aheadDir()); len(ents) != 1 || filepath.Join(d.aheadDir(), ents[0].Name()) != spare {
		t.Fatalf("spare directories %v, want the one shim's %s", ents, spare)
	}
	dir := filepath.Join(d.stateDir, "procs", "p1")
	p := d.takeShim(dir)
	if p != ready {
		t.Fatalf("takeShim = %v, want the shim waiting", p)
	}
	if _, err := os.Stat(spare); !os.IsNotExist(err) {
		t.Errorf("the taken shim's spare directory is there still (%v)", err)
	}
	if p2 := d.takeShim(filepath.Join(d.stateDir, "procs", "p2")); p2 != nil {
		p2.Abort()
		t.Fatal("takeShim with none waiting returned a shim")
	}
	// Given up, it leaves, and says so in its log, now in the process's
	// directory.
	p.Abort()
	if b, _ := os.ReadFile(filepath.Join(dir, shim.ShimLog)); !strings.Contains(string(b), "no spec came") {
		t.Errorf("the taken shim's log in %s does not say why it left:\n%s", dir, b)
	}
	d.refillShim()
	if p, _ := waiting(); p == nil {
		t.Fatal("refillShim after a take started no shim")
	}
	d.closeShims()
	d.refillShim()
	if p, _ := waiting(); p != nil {
		t.Fatal("a shim waits after closeShims")
	}
	if ents, _ := os.ReadDir(d.aheadDir()); len(ents) != 0 {
		t.Errorf("spare directories left after closeShims: %v", ents)
	}
}
