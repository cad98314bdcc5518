package daemon

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"dsmigrate/criu"
)

// One CRIU waits for the next dump: refilled once taken, never two; a take
// with none waiting gets a page socket of its own; after closeDumps none
// waits and none starts.
func TestDumpWorkers(t *testing.T) {
	needRoot(t)
	d := &Daemon{criu: criu.New(testCRIU), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	defer d.closeDumps()
	waiting := func() *dumpWorker {
		t.Helper()
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			x, filling := d.dumps.waiting()
			if x != nil || !filling {
				return x
			}
			if time.Now().After(end) {
				t.Fatal("a CRIU started ahead never got ready")
			}
		}
	}
	d.refillDump()
	if waiting() != nil {
		t.Fatal("a CRIU waits before openDumps")
	}
	d.openDumps()
	d.refillDump()
	x := waiting()
	if x == nil {
		t.Fatal("refillDump started no CRIU")
	}
	w, local, criuEnd, err := d.takeDump()
	if err != nil || w == nil || local != x.local || criuEnd != x.criuEnd {
		t.Fatalf("takeDump = %v %v %v %v, want the CRIU waiting and its sockets", w, local, criuEnd, err)
	}
	defer x.close()
	w2, local2, criuEnd2, err := d.takeDump()
	if err != nil || w2 != nil || local2 == nil || criuEnd2 == nil {
		t.Fatalf("takeDump with none waiting = %v %v %v %v, want no CRIU and a page socket", w2, local2, criuEnd2, err)
	}
	local2.Close()
	criuEnd2.Close()
	d.refillDump()
	if waiting() == nil {
		t.Fatal("refillDump after a take started no CRIU")
	}
	d.closeDumps()
	d.refillDump()
	if x := waiting(); x != nil {
		t.Fatal("a CRIU waits after closeDumps")
	}
}
