package daemon

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"dsmigrate/criu"
	"dsmigrate/internal/api"
	mrt "dsmigrate/runtime"
)

// metricsDaemon is a daemon with metrics and no CRIU, network or root: its
// process table, records and admission are the test's to fill.
func metricsDaemon(t *testing.T) *Daemon {
	t.Helper()
	dir := t.TempDir()
	d := &Daemon{stateDir: dir, imagesDir: filepath.Join(dir, "images"), procs: map[string]*Proc{},
		launching: map[string]chan struct{}{}, naming: map[string]nameOf{}, criu: criu.New(filepath.Join(dir, "no-criu")),
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := os.MkdirAll(d.imagesDir, 0o700); err != nil {
		t.Fatal(err)
	}
	d.admit = newAdmission(d.imagesDir, 300<<20)
	d.metrics = newMetrics(d)
	return d
}

// gathered is one scrape of d's registry: each series's value (a
// histogram's sample count) by name and labels, "name{k=v,...}" with the
// labels sorted.
func gathered(t *testing.T, d *Daemon) map[string]float64 {
	t.Helper()
	fams, err := d.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(ls)
			key := f.GetName() + "{" + strings.Join(ls, ",") + "}"
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key] = float64(m.GetHistogram().GetSampleCount())
				out[key+"sum"] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

func wantMetric(t *testing.T, got map[string]float64, key string, want float64) {
	t.Helper()
	v, ok := got[key]
	if !ok {
		t.Errorf("no series %s", key)
		return
	}
	if v != want {
		t.Errorf("%s = %v, want %v", key, v, want)
	}
}

func addProc(d *Daemon, id, state string, uid uint32) *Proc {
	p := newProc(id, id, []string{"x"}, time.Now())
	p.state, p.Owner = state, api.Owner{UID: uid}
	d.mu.Lock()
	d.procs[id] = p
	d.mu.Unlock()
	return p
}

// The collectors: migrations by side and outcome as the records and the
// target's word come, downtime and duration of those that committed, the
// bytes sent, the process table by state and owner, the host and the
// admission bounds.
func TestMetricsCollectors(t *testing.T) {
	d := metricsDaemon(t)
	addProc(d, "a", "running", 0)
	addProc(d, "b", "running", 1000)
	addProc(d, "c", "exited", 1000)
	addProc(d, "d", "incoming", 0)
	d.admit.held["d"] = hold{mem: 64 << 20, images: 70 << 20}

	got := gathered(t, d)
	// Before any migration every series of the counter is there, at 0.
	for _, dir := range []string{"source", "target"} {
		wantMetric(t, got, "migrated_migrations_total{direction="+dir+",post_copy=false,result=ok}", 0)
	}
	wantMetric(t, got, "migrated_migrations_total{direction=source,post_copy=true,result=failed}", 0)
	if _, ok := got["migrated_migrations_total{direction=target,post_copy=false,result=failed}"]; ok {
		t.Error("a target counts failed migrations: only a source knows of a failed undo")
	}

	d.addRecord(api.MigrationRec{ID: "a", Result: api.ResultOK, Bytes: 1000, Downtime: 150 * time.Millisecond,
		Total: 2 * time.Second})
	d.addRecord(api.MigrationRec{ID: "a", Outcome: "ok", Bytes: 500, Downtime: 50 * time.Millisecond,
		Total: time.Second}) // an older daemon's record: no Result
	d.addRecord(api.MigrationRec{ID: "b", Result: api.ResultRefused, Bytes: 24, Downtime: 10 * time.Millisecond})
	d.addRecord(api.MigrationRec{ID: "b", Result: api.ResultLost, PostCopy: true, Bytes: 100, Downtime: time.Second,
		Total: 3 * time.Second})
	d.addArrival(api.MigrationRec{ID: "e", Result: api.ResultOK})
	d.addArrival(api.MigrationRec{ID: "f", Result: api.ResultRefused, PostCopy: true})

	got = gathered(t, d)
	wantMetric(t, got, "migrated_migrations_total{direction=source,post_copy=false,result=ok}", 2)
	wantMetric(t, got, "migrated_migrations_total{direction=source,post_copy=false,result=refused}", 1)
	wantMetric(t, got, "migrated_migrations_total{direction=source,post_copy=true,result=lost}", 1)
	wantMetric(t, got, "migrated_migrations_total{direction=target,post_copy=false,result=ok}", 1)
	wantMetric(t, got, "migrated_migrations_total{direction=target,post_copy=true,result=refused}", 1)
	wantMetric(t, got, "migrated_migrations_total{direction=source,post_copy=false,result=warning}", 0)
	wantMetric(t, got, "migrated_migration_bytes_total{}", 1624)
	// The refused one did not commit: its downtime is not a migration's.
	wantMetric(t, got, "migrated_migration_downtime_seconds{post_copy=false}", 2)
	wantMetric(t, got, "migrated_migration_downtime_seconds{post_copy=false}sum", 0.2)
	wantMetric(t, got, "migrated_migration_downtime_seconds{post_copy=true}", 1)
	wantMetric(t, got, "migrated_migration_duration_seconds{post_copy=false}", 2)
	wantMetric(t, got, "migrated_migration_duration_seconds{post_copy=true}sum", 3)

	wantMetric(t, got, "migrated_processes{state=running}", 2)
	wantMetric(t, got, "migrated_processes{state=exited}", 1)
	wantMetric(t, got, "migrated_processes{state=incoming}", 1)
	wantMetric(t, got, "migrated_processes{state=migrating}", 0)
	wantMetric(t, got, "migrated_processes_by_owner{state=running,uid=0}", 1)
	wantMetric(t, got, "migrated_processes_by_owner{state=running,uid=1000}", 1)
	wantMetric(t, got, "migrated_processes_by_owner{state=exited,uid=1000}", 1)
	if _, ok := got["migrated_processes_by_owner{state=exited,uid=0}"]; ok {
		t.Error("a state and owner without processes has a series")
	}
	wantMetric(t, got, "migrated_admission_keep_free_bytes{}", 300<<20)
	wantMetric(t, got, "migrated_admission_held_bytes{}", 64<<20)
	for _, k := range []string{"migrated_host_memory_available_bytes{}", "migrated_admission_images_free_bytes{}"} {
		if got[k] <= 0 {
			t.Errorf("%s = %v, want > 0", k, got[k])
		}
	}
	if _, ok := got["migrated_host_load1{}"]; !ok {
		t.Error("no migrated_host_load1")
	}
	// The daemon's own process and Go runtime.
	if got["process_resident_memory_bytes{}"] <= 0 || got["go_goroutines{}"] <= 0 {
		t.Error("no process or Go metrics")
	}
}

// rankSim is a DSM rank as its daemon sees it, played by this test process
// (a Proc whose pid is the test's): the daemon's SIGUSR2 reaches the test,
// which connects to the daemon's control handler and answers as package
// runtime does.
type rankSim struct {
	t       *testing.T
	d       *Daemon
	p       *Proc
	signals atomic.Int32
	answer  atomic.Value // func(mrt.Command) mrt.Answer, or nil: ignore the signal
}

func newRankSim(t *testing.T, d *Daemon, id, job string, rank int) *rankSim {
	p := addProc(d, id, "running", 0)
	p.pid, p.hooks, p.Job, p.Rank = os.Getpid(), true, job, rank
	r := &rankSim{t: t, d: d, p: p}
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, syscall.SIGUSR2)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); signal.Stop(ch) })
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-ch:
			}
			r.signals.Add(1)
			f, _ := r.answer.Load().(func(mrt.Command) mrt.Answer)
			if f == nil {
				continue
			}
			srv, cli := unixPair(t)
			go d.handleControl(srv)
			cli.SetDeadline(time.Now().Add(5 * time.Second))
			json.NewEncoder(cli).Encode(mrt.Hello{ID: id})
			var cmd mrt.Command
			if json.NewDecoder(cli).Decode(&cmd) == nil {
				json.NewEncoder(cli).Encode(f(cmd))
			}
			cli.Close()
		}
	}()
	return r
}

// A scrape asks each running DSM rank for its counters over the control
// channel and shows them by job and rank; a rank that does not answer
// keeps its last counters and holds the scrape no longer than the bound; a
// migrating rank is not asked, and a migration's Claim waits for a request
// under way; a rank that cannot answer (an older runtime) is not asked
// again.
func TestMetricsRankStats(t *testing.T) {
	d := metricsDaemon(t)
	r := newRankSim(t, d, "r1", "job1", 2)
	st := mrt.Stats{ReadFaults: 10, WriteFaults: 5, PagesFetched: 7, FetchRequests: 3, Diffs: 4, DiffsApplied: 2,
		Barriers: 6, BarrierWaitNS: 1500e6, ServeTimeNS: 250e6}
	r.answer.Store(func(cmd mrt.Command) mrt.Answer {
		if cmd.Op != "stats" {
			return mrt.Answer{Err: "unexpected " + cmd.Op}
		}
		s := st
		return mrt.Answer{Stats: &s}
	})
	got := gathered(t, d)
	lbl := "{job=job1,rank=2}"
	wantMetric(t, got, "migrated_dsm_page_faults_total"+lbl, 15)
	wantMetric(t, got, "migrated_dsm_read_faults_total"+lbl, 10)
	wantMetric(t, got, "migrated_dsm_page_fetches_total"+lbl, 7)
	wantMetric(t, got, "migrated_dsm_fetch_requests_total"+lbl, 3)
	wantMetric(t, got, "migrated_dsm_diffs_total"+lbl, 4)
	wantMetric(t, got, "migrated_dsm_diffs_applied_total"+lbl, 2)
	wantMetric(t, got, "migrated_dsm_barriers_total"+lbl, 6)
	wantMetric(t, got, "migrated_dsm_barrier_wait_seconds_total"+lbl, 1.5)
	wantMetric(t, got, "migrated_dsm_serve_seconds_total"+lbl, 0.25)

	// Current numbers at every scrape.
	st.ReadFaults = 20
	wantMetric(t, gathered(t, d), "migrated_dsm_page_faults_total"+lbl, 25)

	// Silent: the scrape ends by the bound, with the last counters.
	r.answer.Store((func(mrt.Command) mrt.Answer)(nil))
	t0 := time.Now()
	got = gathered(t, d)
	if el := time.Since(t0); el > statsTimeout+2*time.Second {
		t.Errorf("a scrape waited %v for a silent rank", el)
	}
	wantMetric(t, got, "migrated_dsm_page_faults_total"+lbl, 25)
	d.metrics.statsQuiet(r.p.ID) // the silent request is given up

	// A request under way holds a Claim until it is over, and none
	// starts for a migrating process.
	st.ReadFaults = 30
	r.answer.Store(func(cmd mrt.Command) mrt.Answer {
		time.Sleep(300 * time.Millisecond) // a rank slow to answer
		s := st
		return mrt.Answer{Stats: &s}
	})
	req := d.metrics.ask(r.p)
	if req == nil {
		t.Fatal("a running rank was not asked")
	}
	r.p.mu.Lock()
	r.p.state = "migrating"
	r.p.mu.Unlock()
	d.metrics.statsQuiet(r.p.ID)
	select {
	case <-req.done:
	default:
		t.Fatal("statsQuiet returned while a request was under way")
	}
	if d.metrics.ask(r.p) != nil {
		t.Fatal("a migrating rank was asked for its counters")
	}
	// A migrating rank shows its last counters; gone, it shows none.
	wantMetric(t, gathered(t, d), "migrated_dsm_page_faults_total"+lbl, 35)
	d.mu.Lock()
	delete(d.procs, r.p.ID)
	d.mu.Unlock()
	if _, ok := gathered(t, d)["migrated_dsm_page_faults_total"+lbl]; ok {
		t.Error("a rank that left still has counters here")
	}

	// An older runtime answers "stats" with an error: asked once only.
	o := newRankSim(t, d, "r2", "job1", 3)
	o.answer.Store(func(cmd mrt.Command) mrt.Answer { return mrt.Answer{Err: fmt.Sprintf("unknown command %q", cmd.Op)} })
	base := o.signals.Load() // every simulated rank gets every signal: they are this process
	gathered(t, d)
	gathered(t, d)
	if n := o.signals.Load() - base; n != 1 {
		t.Errorf("a rank that cannot answer was signalled %d times, want 1", n)
	}
	if _, ok := gathered(t, d)["migrated_dsm_page_faults_total{job=job1,rank=3}"]; ok {
		t.Error("a rank without counters has some")
	}
}

// --metrics serves the registry over HTTP at /metrics; two daemons in one
// process have counters of their own; an address that cannot be had stops
// the daemon with what to do.
func TestMetricsServe(t *testing.T) {
	var urls []string
	ds := []*Daemon{metricsDaemon(t), metricsDaemon(t)}
	for _, d := range ds {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.serveMetricsOn(l))
		urls = append(urls, "http://"+l.Addr().String()+"/metrics")
	}
	ds[0].addRecord(api.MigrationRec{ID: "x", Result: api.ResultOK, Bytes: 4096})
	for i, want := range []string{"1", "0"} {
		resp, err := http.Get(urls[i])
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), "# TYPE migrated_migrations_total counter") {
			t.Fatalf("GET %s: %s\n%s", urls[i], resp.Status, body)
		}
		line := `migrated_migrations_total{direction="source",post_copy="false",result="ok"} ` + want + "\n"
		if !strings.Contains(string(body), line) {
			t.Errorf("daemon %d: no line %q in\n%s", i, line, body)
		}
	}

	busy := metricsDaemon(t)
	busy.metricsAddr = strings.TrimSuffix(strings.TrimPrefix(urls[0], "http://"), "/metrics")
	if _, err := busy.serveMetrics(); err == nil || !strings.Contains(err.Error(), "--metrics") {
		t.Errorf("a port in use: %v", err)
	}
	off := metricsDaemon(t)
	off.metrics = nil
	if _, err := off.serveMetrics(); err != nil || off.metrics != nil {
		t.Errorf("without --metrics: %v, metrics %v", err, off.metrics)
	}
}
