package integration

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// metricsPort is where the cluster's daemons serve --metrics, on each host's
// address (cluster.sh).
const metricsPort = 9477

// scrape reads hK's daemon's /metrics from here (the bridge reaches every
// host): each sample's value by its series as the exposition format prints
// it, name{label="value",...} with the labels in name order.
func scrape(t *testing.T, k int) map[string]float64 {
	t.Helper()
	url := fmt.Sprintf("http://%s:%d/metrics", hostIP(k), metricsPort)
	cl := http.Client{Timeout: scaled(30 * time.Second)}
	resp, err := cl.Get(url)
	if err != nil {
		t.Fatalf("scraping h%d: %v (the cluster's daemons serve --metrics on port %d)", k, err, metricsPort)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s, %s\n%s", url, resp.Status, resp.Header.Get("Content-Type"), b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("h%d: a line that is no sample: %q", k, l)
		}
		out[l[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// A migration h1 -> h2 counts on both sides (ok, source on h1 and target on
// h2) with its bytes and times on h1; h2's process gauge has it running;
// the hosts' memory and load are there; and a running DSM job's ranks show
// their counters, faults and fetches moving, by job and rank on the host
// each runs on, also on a rank's new host after it migrated.
func TestMetrics(t *testing.T) {
	needHosts(t, 4)
	okSrc := `migrated_migrations_total{direction="source",post_copy="false",result="ok"}`
	okDst := `migrated_migrations_total{direction="target",post_copy="false",result="ok"}`
	down := `migrated_migration_downtime_seconds_count{post_copy="false"}`
	dur := `migrated_migration_duration_seconds_count{post_copy="false"}`
	bytes := `migrated_migration_bytes_total`
	before1, before2 := scrape(t, 1), scrape(t, 2)
	for _, k := range []string{okSrc, okDst, down, dur, bytes} {
		if _, ok := before1[k]; !ok {
			t.Fatalf("h1 has no series %s before any migration", k)
		}
	}

	id := start(t, 1, "metered", "migtest", "counter")
	migrate(t, 1, 2, id)
	// The target counts once its steps after the commit are over.
	var after1, after2 map[string]float64
	for end := within(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		after1, after2 = scrape(t, 1), scrape(t, 2)
		if after2[okDst] > before2[okDst] || time.Now().After(end) {
			break
		}
	}
	for _, c := range []struct {
		host          string
		series        string
		before, after map[string]float64
	}{
		{"h1", okSrc, before1, after1}, {"h2", okDst, before2, after2},
		{"h1", down, before1, after1}, {"h1", dur, before1, after1}, {"h1", bytes, before1, after1},
	} {
		if c.after[c.series] <= c.before[c.series] {
			t.Errorf("%s: %s went from %v to %v, want more", c.host, c.series, c.before[c.series], c.after[c.series])
		}
	}
	if n := after2[`migrated_processes{state="running"}`]; n < 1 {
		t.Errorf("h2: migrated_processes{state=\"running\"} = %v with the migrated process running there", n)
	}
	for k, m := range map[int]map[string]float64{1: after1, 2: after2} {
		if m["migrated_host_memory_available_bytes"] <= 0 || m["migrated_admission_keep_free_bytes"] <= 0 {
			t.Errorf("h%d: no host memory or keep-free", k)
		}
		if _, ok := m["migrated_host_load1"]; !ok {
			t.Errorf("h%d: no load average", k)
		}
	}

	// A DSM job of 3 ranks over h1-h3, where placement puts them (h2 runs
	// the process moved above). Long enough to scrape every rank and move
	// one while it runs.
	j := startJob(t, 3, filepath.Join(repo, "bin", "jacobi"), "-n", "256", "-iters", fmt.Sprint(int(16000/slow)))
	j.ready()
	series := func(name string, rank int) string {
		return fmt.Sprintf(`migrated_dsm_%s{job="%s",rank="%d"}`, name, j.id, rank)
	}
	// counters waits until hK shows rank's faults, and fetches unless it
	// is rank 0, above floor's, and returns what it shows. Jacobi's rank 0
	// is the home of the whole grid: it fetches nothing (its own summary
	// says "0 pages fetched").
	counters := func(k, rank int, floor map[string]float64) map[string]float64 {
		t.Helper()
		for end := within(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			m := scrape(t, k)
			faults, fetches := series("page_faults_total", rank), series("page_fetches_total", rank)
			_, ok := m[fetches]
			if ok && m[faults] > floor[faults] && (rank == 0 || m[fetches] > floor[fetches]) {
				return m
			}
			if time.Now().After(end) {
				var got []string
				for s, v := range m {
					if strings.HasPrefix(s, "migrated_dsm_") && strings.Contains(s, j.id) {
						got = append(got, fmt.Sprintf("%s %v", s, v))
					}
				}
				t.Fatalf("h%d shows no faults and fetches moving for rank %d of job %s; its DSM series:\n%s",
					k, rank, j.id, strings.Join(got, "\n"))
			}
		}
	}
	var seen map[string]float64
	for rank := range 3 {
		k := hostOf(j.rankHost(rank))
		m := counters(k, rank, nil)
		for _, name := range []string{"diffs_total", "barriers_total", "barrier_wait_seconds_total"} {
			if _, ok := m[series(name, rank)]; !ok {
				t.Errorf("h%d: no %s", k, series(name, rank))
			}
		}
		if rank == 1 {
			seen = m
		}
	}
	// Rank 1 moves to h4: its counters, which live in its memory, go on
	// from where they were, on h4, and its old host no longer shows them.
	from := hostOf(j.rankHost(1))
	j.migrateRank(1, 4)
	counters(4, 1, seen)
	if _, ok := scrape(t, from)[series("page_faults_total", 1)]; ok {
		t.Errorf("h%d still shows rank 1's counters after it left", from)
	}
	for end := within(30 * time.Second); scrape(t, 4)[okDst] < 1; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("h4 did not count the rank's arrival: %s is %v", okDst, scrape(t, 4)[okDst])
		}
	}
	j.wait()
}
