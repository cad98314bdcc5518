package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"dsmigrate/internal/api"
	mrt "dsmigrate/runtime"
)

// Prometheus metrics (migrated serve --metrics ADDR; docs/metrics.md lists
// every name, type and label). The migrations are counted as they end (the
// source's records, addRecord; the target's word, Config.OnArrival); all
// the rest is read at scrape time: the process table, the host's memory
// and load, the admission bounds, and the DSM ranks' counters, which the
// daemon asks each running rank for over its control channel (the command
// "stats", runtime's Hooks.Stats; serveStats below). Each daemon has a
// registry of its own, so that several can run in one process (tests).

// statsTimeout bounds one rank's answer to "stats": the time for it to
// connect after its signal, and then the exchange. A scrape waits at most
// this long for its ranks; one that did not answer shows its last counters.
const statsTimeout = 2 * time.Second

// Buckets of the time histograms, in seconds: 10 ms to 60 s.
var timeBuckets = []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// procStates are the process table's states, each shown (0 if none) by
// migrated_processes.
var procStates = []string{"starting", "running", "migrating", "incoming", "exited", "lost", "migrated"}

// metrics is a daemon's Prometheus registry and what it counts.
type metrics struct {
	d   *Daemon
	reg *prometheus.Registry

	migrations      *prometheus.CounterVec   // direction, result, post_copy
	downtime, total *prometheus.HistogramVec // post_copy
	bytes           prometheus.Counter

	mu    sync.Mutex
	ranks map[string]*rankStats // DSM ranks' counters, by process ID
}

// rankStats is what the daemon knows of a rank's counters.
type rankStats struct {
	last *mrt.Stats // the last answer, nil before the first
	old  bool       // the rank cannot answer (no Hooks.Stats): not asked again
	req  *statsReq  // the request under way, nil if none
}

// statsReq is one "stats" request to a rank: the daemon signals the rank,
// which connects to the control socket and takes it (serveStats).
type statsReq struct {
	taken bool          // the rank connected for it (guarded by metrics.mu)
	done  chan struct{} // closed when it is over: answered, failed, or given up before the rank took it
}

// newMetrics makes d's registry with every collector registered.
func newMetrics(d *Daemon) *metrics {
	m := &metrics{d: d, reg: prometheus.NewRegistry(), ranks: map[string]*rankStats{}}
	m.migrations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "migrated_migrations_total",
		Help: "Migrations that ended, by this daemon's side (direction: source or target), what became of the " +
			"process (result: ok, warning, refused, failed or lost) and post_copy.",
	}, []string{"direction", "result", "post_copy"})
	m.downtime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "migrated_migration_downtime_seconds",
		Help: "How long the processes this daemon sent were stopped, of migrations that committed (result ok, " +
			"warning or lost), by post_copy.",
		Buckets: timeBuckets,
	}, []string{"post_copy"})
	m.total = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "migrated_migration_duration_seconds",
		Help: "How long the migrations this daemon sent took from start to end, of migrations that committed, " +
			"by post_copy.",
		Buckets: timeBuckets,
	}, []string{"post_copy"})
	m.bytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "migrated_migration_bytes_total",
		Help: "Bytes the migrations this daemon sent moved to their targets (pages, images, post-copy pages).",
	})
	// Every series a migration can make, at 0 from the start: a rate
	// over the first migration needs the value before it.
	for _, pc := range []string{"false", "true"} {
		for _, res := range []string{api.ResultOK, api.ResultWarning, api.ResultRefused, api.ResultFailed, api.ResultLost} {
			m.migrations.WithLabelValues("source", res, pc)
			if res != api.ResultFailed { // a target never knows of a failed undo on the source
				m.migrations.WithLabelValues("target", res, pc)
			}
		}
		m.downtime.WithLabelValues(pc)
		m.total.WithLabelValues(pc)
	}
	m.reg.MustRegister(m.migrations, m.downtime, m.total, m.bytes, daemonCollector{m},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// record counts a migration this daemon sent (addRecord).
func (m *metrics) record(r api.MigrationRec) {
	if m == nil {
		return
	}
	res, pc := api.RecResult(r), strconv.FormatBool(r.PostCopy)
	m.migrations.WithLabelValues("source", res, pc).Inc()
	m.bytes.Add(float64(max(r.Bytes, 0)))
	if res == api.ResultOK || res == api.ResultWarning || res == api.ResultLost {
		m.downtime.WithLabelValues(pc).Observe(r.Downtime.Seconds())
		m.total.WithLabelValues(pc).Observe(r.Total.Seconds())
	}
}

// arrival counts a migration this daemon received (Config.OnArrival).
func (m *metrics) arrival(r api.MigrationRec) {
	if m == nil {
		return
	}
	m.migrations.WithLabelValues("target", api.RecResult(r), strconv.FormatBool(r.PostCopy)).Inc()
}

// addArrival is the engine's OnArrival.
func (d *Daemon) addArrival(r api.MigrationRec) { d.metrics.arrival(r) }

// serveMetrics serves d's metrics on Config.Metrics at /metrics, if set,
// and returns what stops it. The counters start here: call it before the
// engine, whose recovery may end migrations.
func (d *Daemon) serveMetrics() (stop func(), err error) {
	if d.metricsAddr == "" {
		return func() {}, nil
	}
	lc := net.ListenConfig{}
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(context.Background(), "tcp", d.metricsAddr)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on %s for --metrics: %v; give an address of this host and a free port",
			d.metricsAddr, err)
	}
	return d.serveMetricsOn(l), nil
}

// serveMetricsOn makes d's metrics and serves them on l.
func (d *Daemon) serveMetricsOn(l net.Listener) (stop func()) {
	d.metrics = newMetrics(d)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelWarn), MaxRequestsInFlight: 4, Timeout: 30 * time.Second}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, "migrated: metrics at /metrics\n")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelDebug)}
	go srv.Serve(l)
	d.log.Info("serving metrics", "addr", l.Addr().String(), "path", "/metrics")
	return func() { srv.Close() }
}

// daemonCollector reads the daemon's state at scrape time.
type daemonCollector struct{ m *metrics }

var (
	descProcs = prometheus.NewDesc("migrated_processes",
		"Processes in this daemon's table, by state.", []string{"state"}, nil)
	descProcsOwner = prometheus.NewDesc("migrated_processes_by_owner",
		"Processes in this daemon's table, by state and owner's uid (only pairs that have some).",
		[]string{"state", "uid"}, nil)
	descMemAvail = prometheus.NewDesc("migrated_host_memory_available_bytes",
		"The host's available memory (MemAvailable in /proc/meminfo).", nil, nil)
	descLoad1 = prometheus.NewDesc("migrated_host_load1",
		"The host's load average over 1 minute (/proc/loadavg).", nil, nil)
	descKeepFree = prometheus.NewDesc("migrated_admission_keep_free_bytes",
		"Memory this daemon never gives to arriving processes (--keep-free).", nil, nil)
	descHeld = prometheus.NewDesc("migrated_admission_held_bytes",
		"Memory held for the migrations arriving here now.", nil, nil)
	descImagesFree = prometheus.NewDesc("migrated_admission_images_free_bytes",
		"Free space of the images tmpfs arriving migrations pass through (--images-size).", nil, nil)
	descDrained = prometheus.NewDesc("migrated_drained",
		"1 while this daemon is drained (migrated drain: no new processes or migrations), else 0.", nil, nil)
)

// dsmCounter is one of a rank's counters as a metric.
type dsmCounter struct {
	desc *prometheus.Desc
	val  func(s *mrt.Stats) float64
}

func dsmDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc("migrated_dsm_"+name, help+" (since the rank started, wherever it ran).",
		[]string{"job", "rank"}, nil)
}

func nsSeconds(ns int64) float64 { return float64(ns) / 1e9 }

var dsmCounters = []dsmCounter{
	{dsmDesc("page_faults_total", "Page faults of the DSM rank on shared memory, reads and writes"),
		func(s *mrt.Stats) float64 { return float64(s.ReadFaults + s.WriteFaults) }},
	{dsmDesc("read_faults_total", "Page faults of the DSM rank by reads of invalid pages"),
		func(s *mrt.Stats) float64 { return float64(s.ReadFaults) }},
	{dsmDesc("write_faults_total", "Page faults of the DSM rank by writes"),
		func(s *mrt.Stats) float64 { return float64(s.WriteFaults) }},
	{dsmDesc("page_fetches_total", "Pages the DSM rank fetched from their homes"),
		func(s *mrt.Stats) float64 { return float64(s.PagesFetched) }},
	{dsmDesc("fetch_requests_total", "Page requests (round trips) the DSM rank's fetches took"),
		func(s *mrt.Stats) float64 { return float64(s.FetchRequests) }},
	{dsmDesc("pages_served_total", "Pages the DSM rank sent to others as their home"),
		func(s *mrt.Stats) float64 { return float64(s.PagesServed) }},
	{dsmDesc("diffs_total", "Diffs the DSM rank made and sent to the pages' homes"),
		func(s *mrt.Stats) float64 { return float64(s.Diffs) }},
	{dsmDesc("diffs_applied_total", "Diffs the DSM rank applied as the pages' home"),
		func(s *mrt.Stats) float64 { return float64(s.DiffsApplied) }},
	{dsmDesc("barriers_total", "Barriers the DSM rank passed"),
		func(s *mrt.Stats) float64 { return float64(s.Barriers) }},
	{dsmDesc("lock_acquires_total", "Locks the DSM rank acquired"),
		func(s *mrt.Stats) float64 { return float64(s.LockAcquires) }},
	{dsmDesc("barrier_wait_seconds_total", "Time the DSM rank waited at barriers"),
		func(s *mrt.Stats) float64 { return nsSeconds(s.BarrierWaitNS) }},
	{dsmDesc("lock_wait_seconds_total", "Time the DSM rank waited for locks"),
		func(s *mrt.Stats) float64 { return nsSeconds(s.LockWaitNS) }},
	{dsmDesc("fetch_wait_seconds_total", "Time the DSM rank's threads waited for page fetches, summed over threads"),
		func(s *mrt.Stats) float64 { return nsSeconds(s.FetchTimeNS) }},
	{dsmDesc("serve_seconds_total", "Time the DSM rank's page server spent answering other ranks' page requests"),
		func(s *mrt.Stats) float64 { return nsSeconds(s.ServeTimeNS) }},
}

func (c daemonCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descProcs, descProcsOwner, descMemAvail, descLoad1, descKeepFree, descHeld, descDrained,
		descImagesFree} {
		ch <- d
	}
	for _, dc := range dsmCounters {
		ch <- dc.desc
	}
}

// procView is what a scrape reads of a process.
type procView struct {
	p     *Proc
	state string
	uid   uint32
	job   string
	rank  int
}

func (c daemonCollector) Collect(ch chan<- prometheus.Metric) {
	m, d := c.m, c.m.d
	d.mu.Lock()
	procs := make([]*Proc, 0, len(d.procs))
	for _, p := range d.procs {
		procs = append(procs, p)
	}
	d.mu.Unlock()

	// The ranks' counters first (asked for all at once), the table after.
	var reqs []*statsReq
	for _, p := range procs {
		if r := m.ask(p); r != nil {
			reqs = append(reqs, r)
		}
	}
	wait := time.NewTimer(statsTimeout)
	for _, r := range reqs {
		select {
		case <-r.done:
			continue
		case <-wait.C:
		}
		break
	}
	wait.Stop()

	views := make([]procView, 0, len(procs))
	for _, p := range procs {
		p.mu.Lock()
		views = append(views, procView{p: p, state: p.state, uid: p.Owner.UID, job: p.Job, rank: p.Rank})
		p.mu.Unlock()
	}
	byState := map[string]int{}
	type owned struct {
		state string
		uid   uint32
	}
	byOwner := map[owned]int{}
	for _, s := range procStates {
		byState[s] = 0
	}
	for _, v := range views {
		byState[v.state]++
		byOwner[owned{v.state, v.uid}]++
	}
	for s, n := range byState {
		ch <- prometheus.MustNewConstMetric(descProcs, prometheus.GaugeValue, float64(n), s)
	}
	for o, n := range byOwner {
		ch <- prometheus.MustNewConstMetric(descProcsOwner, prometheus.GaugeValue, float64(n), o.state,
			strconv.FormatUint(uint64(o.uid), 10))
	}

	avail, keepFree, held, imagesFree := d.room()
	if avail > 0 {
		ch <- prometheus.MustNewConstMetric(descMemAvail, prometheus.GaugeValue, float64(avail))
	}
	if l, err := load1(); err == nil {
		ch <- prometheus.MustNewConstMetric(descLoad1, prometheus.GaugeValue, l)
	}
	if d.admit != nil {
		ch <- prometheus.MustNewConstMetric(descKeepFree, prometheus.GaugeValue, float64(keepFree))
		ch <- prometheus.MustNewConstMetric(descHeld, prometheus.GaugeValue, float64(held))
	}
	if imagesFree >= 0 {
		ch <- prometheus.MustNewConstMetric(descImagesFree, prometheus.GaugeValue, float64(imagesFree))
	}
	drained := 0.0
	if d.drained.Load() {
		drained = 1
	}
	ch <- prometheus.MustNewConstMetric(descDrained, prometheus.GaugeValue, drained)

	// The ranks here: running ones with their latest counters, migrating
	// ones with their last (until they are gone; then their new host shows
	// them). What the daemon knew of processes no longer here goes.
	var out []prometheus.Metric
	m.mu.Lock()
	here := map[string]bool{}
	for _, v := range views {
		here[v.p.ID] = true
		rs := m.ranks[v.p.ID]
		if v.job == "" || rs == nil || rs.last == nil || (v.state != "running" && v.state != "migrating") {
			continue
		}
		rank := strconv.Itoa(v.rank)
		for _, dc := range dsmCounters {
			out = append(out, prometheus.MustNewConstMetric(dc.desc, prometheus.CounterValue, dc.val(rs.last), v.job, rank))
		}
	}
	for id, rs := range m.ranks {
		if !here[id] && rs.req == nil {
			delete(m.ranks, id)
		}
	}
	m.mu.Unlock()
	for _, mt := range out {
		ch <- mt
	}
}

// ask starts a "stats" request to p if it is a running DSM rank with hooks
// (or joins the one under way), and returns it; nil if p is not asked. A
// request starts only while p runs, checked under p.mu, so that Claim (which
// makes it migrating under p.mu, then waits for the request: statsQuiet)
// never lets a freeze find the rank connected to this daemon.
func (m *metrics) ask(p *Proc) *statsReq {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != "running" || !p.hooks || p.Job == "" || p.pid <= 0 {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	rs := m.ranks[p.ID]
	if rs == nil {
		rs = &rankStats{}
		m.ranks[p.ID] = rs
	}
	if rs.old {
		return nil
	}
	if rs.req != nil {
		return rs.req
	}
	req := &statsReq{done: make(chan struct{})}
	rs.req = req
	go m.signal(rs, req, p.pid)
	return req
}

// signal asks the rank at pid to connect (SIGUSR2, as for its hooks), and
// gives the request up if the rank has not taken it within statsTimeout.
func (m *metrics) signal(rs *rankStats, req *statsReq, pid int) {
	if err := syscall.Kill(pid, syscall.SIGUSR2); err == nil {
		t := time.NewTimer(statsTimeout)
		defer t.Stop()
		select {
		case <-req.done:
			return
		case <-t.C:
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !req.taken { // once taken, serveStats ends it, within its deadline
		m.end(rs, req)
	}
}

// end closes req, rs's request (with m.mu held).
func (m *metrics) end(rs *rankStats, req *statsReq) {
	if rs.req == req {
		rs.req = nil
	}
	close(req.done)
}

// serveStats serves a control connection of process id that came with no
// hook command pending (handleControl): the rank's answer to a "stats"
// request, if one waits; otherwise it was a stray signal. Nothing else is
// connected to the rank then: the request and the exchange are over, and
// the rank has closed its end, before done is closed.
func (m *metrics) serveStats(id string, c net.Conn, dec *json.Decoder, enc *json.Encoder) {
	if m == nil {
		return
	}
	m.mu.Lock()
	rs := m.ranks[id]
	var req *statsReq
	if rs != nil && rs.req != nil && !rs.req.taken {
		req = rs.req
		req.taken = true
	}
	m.mu.Unlock()
	if req == nil {
		return
	}
	c.SetDeadline(time.Now().Add(statsTimeout))
	var a mrt.Answer
	err := enc.Encode(mrt.Command{Op: "stats"})
	if err == nil {
		err = dec.Decode(&a)
	}
	if err == nil {
		var b [1]byte
		c.Read(b[:]) // until the rank closes its end
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case err != nil:
	case a.Stats != nil:
		rs.last = a.Stats
	default:
		// A rank without Hooks.Stats (an older dsmshm) says an error.
		rs.old = true
	}
	m.end(rs, req)
}

// statsQuiet waits until no "stats" request to process id is under way
// (at most about twice statsTimeout). Claim calls it once the process is
// migrating, when no new request starts: a freeze must not find it
// connected to this daemon.
func (m *metrics) statsQuiet(id string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	var done chan struct{}
	if rs := m.ranks[id]; rs != nil && rs.req != nil {
		done = rs.req.done
	}
	m.mu.Unlock()
	if done == nil {
		return
	}
	t := time.NewTimer(2*statsTimeout + time.Second)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// load1 is the host's load average over one minute.
func load1() (float64, error) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("/proc/loadavg is empty")
	}
	return strconv.ParseFloat(f[0], 64)
}
