package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"dsmigrate/internal/api"
)

// The drained mark: kept in the state directory across restarts, shown in
// what the daemon says of itself and in its metrics, and refusing new
// processes and arrivals until it is taken away.
func TestDrainedMark(t *testing.T) {
	d := metricsDaemon(t)
	addProc(d, "a", "running", 0)
	addProc(d, "b", "exited", 0)
	addProc(d, "c", "incoming", 1000)
	in, err := d.info()
	if err != nil {
		t.Fatal(err)
	}
	if in.Drained || in.Procs != 2 || in.CPUs < 1 || in.MemTotalBytes <= 0 {
		t.Fatalf("info: drained %v, %d processes, %d CPUs, %d bytes; want not drained, 2 (running, incoming)",
			in.Drained, in.Procs, in.CPUs, in.MemTotalBytes)
	}
	if err := d.refuseDrained("new processes"); err != nil {
		t.Fatalf("not drained, yet: %v", err)
	}
	if c := d.drainedCheck(); c != nil {
		t.Errorf("migrated check on a daemon not drained: %+v", c)
	}
	wantMetric(t, gathered(t, d), "migrated_drained{}", 0)

	if err := d.setDrained(true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(d.stateDir, drainedFile)); err != nil {
		t.Fatalf("no mark in the state directory: %v", err)
	}
	err = d.refuseDrained("new processes")
	if api.KindOf(err) != api.KindRefused || !strings.Contains(err.Error(), "migrated undrain") {
		t.Errorf("drained: %v (kind %q)", err, api.KindOf(err))
	}
	if in, _ := d.info(); !in.Drained {
		t.Error("info does not say drained")
	}
	if c := d.drainedCheck(); c == nil || c.Status != api.CheckWarning || c.Fix != "migrated undrain" {
		t.Errorf("migrated check on a drained daemon: %+v", c)
	}
	wantMetric(t, gathered(t, d), "migrated_drained{}", 1)
	// A drained daemon refuses a run before anything starts.
	if _, err := d.do(nil, Request{Op: "run", Argv: []string{"true"}}, api.Owner{}); api.KindOf(err) != api.KindRefused {
		t.Errorf("run on a drained daemon: %v", err)
	}

	// Restarted, it is still drained.
	again := &Daemon{stateDir: d.stateDir}
	again.loadDrained()
	if !again.drained.Load() {
		t.Error("a restarted daemon forgot it was drained")
	}
	if err := d.setDrained(false); err != nil {
		t.Fatal(err)
	}
	if err := d.setDrained(false); err != nil {
		t.Fatalf("undrained twice: %v", err)
	}
	again.loadDrained()
	if again.drained.Load() || d.refuseDrained("x") != nil {
		t.Error("still drained after undrain")
	}
}

// A drain's order: processes of no job first, then each job's ranks in
// rank order; finished ones are left out. A dry run with no other host
// moves nothing and says why each stays; only root drains.
func TestDrainOrderAndPlan(t *testing.T) {
	d := metricsDaemon(t)
	d.advertise = "10.0.0.1:7077"
	mk := func(id, state, job string, rank int, age time.Duration) {
		p := addProc(d, id, state, 0)
		p.Job, p.Rank, p.Started = job, rank, time.Now().Add(-age)
	}
	mk("r1", "running", "j", 1, 3*time.Second)
	mk("plain2", "running", "", 0, time.Second)
	mk("r0", "running", "j", 0, 3*time.Second)
	mk("gone", "exited", "", 0, 5*time.Second)
	mk("plain1", "running", "", 0, 2*time.Second)
	mk("away", "stopped", "", 0, 0)
	var ids []string
	for _, p := range d.drainOrder() {
		ids = append(ids, p.ID)
	}
	if got := strings.Join(ids, " "); got != "plain1 plain2 away r0 r1" {
		t.Errorf("drain order %q", got)
	}

	if _, err := d.drain(context.Background(), Request{Op: "drain", DryRun: true}, api.Owner{UID: 1000}, func(Event) {}); err == nil {
		t.Error("a user drained a host")
	}
	rep, err := d.drain(context.Background(), Request{Op: "drain", DryRun: true}, api.Owner{}, func(Event) {})
	if err != nil {
		t.Fatal(err)
	}
	if d.drained.Load() {
		t.Error("a dry run drained the daemon")
	}
	if len(rep.Drain.Items) != 5 {
		t.Fatalf("dry run: %d items, want the 5 not finished: %+v", len(rep.Drain.Items), rep.Drain.Items)
	}
	for _, it := range rep.Drain.Items {
		want := "--peers"
		if it.ID == "away" {
			want = "it is stopped, not running"
		}
		if it.To != "" || it.Moved || !strings.Contains(it.Stayed, want) {
			t.Errorf("dry run with no other host: %+v, want it to stay because %q", it, want)
		}
	}
}

// The live view listens on loopback only, and shows this daemon's live
// processes (not those that left) and its latest migrations.
func TestLiveViewParts(t *testing.T) {
	for addr, ok := range map[string]bool{"127.0.0.1:8077": true, "[::1]:8077": true, "localhost:8077": true,
		"10.0.0.5:8077": false, ":8077": false, "0.0.0.0:8077": false, "8077": false} {
		if err := CheckHTTPAddr(addr); (err == nil) != ok {
			t.Errorf("CheckHTTPAddr(%q) = %v", addr, err)
		}
	}
	d := metricsDaemon(t)
	addProc(d, "here", "running", 0)
	addProc(d, "left", "migrated", 0)
	for i := range viewRecent + 5 {
		d.addRecord(api.MigrationRec{ID: fmt.Sprint(i), Result: api.ResultOK})
	}
	rep := d.viewReply()
	if len(rep.Procs) != 1 || rep.Procs[0].ID != "here" {
		t.Errorf("view procs %+v, want only the running one", rep.Procs)
	}
	if len(rep.Records) != viewRecent || rep.Records[viewRecent-1].ID != fmt.Sprint(viewRecent+4) {
		t.Errorf("view records: %d, last %+v; want the latest %d", len(rep.Records), rep.Records[len(rep.Records)-1], viewRecent)
	}
	if _, err := d.do(nil, Request{Op: "view"}, api.Owner{UID: 1000}); err == nil {
		t.Error("a user got the whole host's view")
	}
}
