package integration

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Post-copy (migrate --post-copy): the process resumes on the target before
// its memory has arrived; CRIU's lazy pages bring it on demand and in the
// background, relayed between the daemons.

// startMem starts a process with mib MiB of checked memory and a numbered
// output sequence on hK, and returns its ID, marker and digest.
func startMem(t *testing.T, k, mib int, name string) (id, marker, digest string) {
	t.Helper()
	marker = fmt.Sprintf("mark-%s-%d", name, time.Now().UnixNano())
	id = start(t, k, name, "migtest", "memcount", strconv.Itoa(mib), marker)
	l := waitLog(t, k, id, `mem ok`, 1)
	m := regexp.MustCompile(fmt.Sprintf(`mem ready %d MiB ([0-9a-f]+)`, mib)).FindStringSubmatch(l)
	if m == nil {
		t.Fatalf("no digest in the log:\n%s", tail(l, 5))
	}
	return id, marker, m[1]
}

// lastRecord is the newest migration record in hK's history.
func lastRecord(t *testing.T, k int) map[string]any {
	t.Helper()
	var recs []map[string]any
	if err := json.Unmarshal([]byte(mustOn(t, k, "migrated", "history", "--json")), &recs); err != nil {
		t.Fatal(err)
	}
	if len(recs) == 0 {
		t.Fatalf("h%d has no migration history", k)
	}
	return recs[len(recs)-1]
}

// noPostCopyLeft checks that nothing of a post-copy migration is left on
// the hosts once it has settled: no lazy-pages, no CRIU, no images. Two
// CRIUs wait idle on every host, the daemon's, not the migration's (started
// ahead: internal/daemon/ahead.go), still called "criu swrk 3" (a CRIU
// serving a request renames itself), one for each parent: the daemon's for
// the next dump and the one of the shim that waits for the next arrival.
func noPostCopyLeft(t *testing.T, hosts ...int) {
	t.Helper()
	for _, k := range hosts {
		var left string
		for end := within(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			// Each line: the parent's name, then the command line.
			out, _ := on(k, "sh", "-c", `for p in $(pgrep -f '[l]azy-pages|[c]riu swrk|sbin/[c]riu'); do
				pp=$(ps -o ppid= -p "$p" | tr -d ' '); echo "$(ps -o comm= -p "$pp") $(ps -o args= -p "$p")"; done; ls -A "$1/images"`,
				"left", stateDir(k))
			var rest []string
			idle := map[string]bool{}
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				parent, _, _ := strings.Cut(l, " ")
				switch {
				case (parent == "migrated" || parent == "migrated-shim") && !idle[parent] && strings.HasSuffix(l, "/criu swrk 3"):
					idle[parent] = true
				case l != "":
					rest = append(rest, l)
				}
			}
			if left = strings.Join(rest, "\n"); left == "" {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("h%d keeps what a post-copy migration used:\n%q", k, left)
			}
		}
	}
}

// 256 MiB of checked memory moves post-copy h1 -> h2 -> h3: each time it
// resumes before its memory has arrived, and runs on with every page intact
// and its output sequence unbroken. The record tells the downtime and when
// the last page arrived.
func TestPostCopy(t *testing.T) {
	needHosts(t, 3)
	id, marker, digest := startMem(t, 1, 256, "pc")
	for _, hop := range [][2]int{{1, 2}, {2, 3}} {
		out := migrate(t, hop[0], hop[1], id, "--post-copy")
		for _, want := range []string{"pages", "post-copy: the last page arrived"} {
			if !strings.Contains(out, want) {
				t.Errorf("migrate --post-copy output lacks %q:\n%s", want, out)
			}
		}
		r := lastRecord(t, hop[0])
		down, _ := r["downtime_ms"].(float64)
		last, _ := r["last_page_ms"].(float64)
		if r["post_copy"] != true || r["outcome"] != "ok" || r["result"] != "ok" || down <= 0 || last <= down {
			t.Fatalf("h%d's record of the post-copy move: %v", hop[0], r)
		}
		waitLog(t, hop[1], id, `mem ok `+digest, 2)
		exactlyOnce(t, hop[1], id, marker, digest)
		noPostCopyLeft(t, hop[0], hop[1])
		prefetched(t, hop[1])
	}
}

// A tree of three processes, each with 48 MiB of its own checked memory,
// moves post-copy: every process's pages come right (the target prefetches
// for each of them, by its id in the dump), and each goes on.
func TestPostCopyTree(t *testing.T) {
	needHosts(t, 2)
	id := start(t, 1, "pc-tree", "migtest", "memtree", "3", "48")
	digests := map[int]string{}
	for k := 0; k < 3; k++ {
		l := waitLog(t, 1, id, fmt.Sprintf(`child %d mem ok`, k), 1)
		m := regexp.MustCompile(fmt.Sprintf(`child %d mem ready ([0-9a-f]+)`, k)).FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("no digest of child %d in the log:\n%s", k, tail(l, 5))
		}
		digests[k] = m[1]
	}
	migrate(t, 1, 2, id, "--post-copy")
	for k := 0; k < 3; k++ {
		waitLog(t, 2, id, fmt.Sprintf(`child %d mem ok %s`, k, digests[k]), 3)
	}
	if l := logs(t, 2, id); strings.Contains(l, "BAD") {
		t.Fatalf("a child's memory changed in the move:\n%s", tail(l, 10))
	}
	noPostCopyLeft(t, 1, 2)
	prefetched(t, 2)
}

// prefetched checks that host k's daemon answered lazy-pages from pages it
// had asked for ahead (internal/daemon/prefetch.go) in its last post-copy
// move in: without that the move still works, only slower. How many it
// answered depends on timing (make bench counts them); that it answered
// any is behaviour.
func prefetched(t *testing.T, k int) {
	t.Helper()
	b, _ := on(k, "cat", filepath.Join(filepath.Dir(stateDir(k)), "daemon.log"))
	var last string
	for _, l := range strings.Split(b, "\n") {
		if strings.Contains(l, "post-copy pages") {
			last = l
		}
	}
	m := regexp.MustCompile(`answered_from_prefetch=(\d+) relayed=(\d+)`).FindStringSubmatch(last)
	if m == nil {
		t.Fatalf("h%d's daemon log has no post-copy pages line (%q)", k, last)
	}
	if hits, _ := strconv.Atoi(m[1]); hits == 0 {
		t.Errorf("h%d answered none of lazy-pages's requests from prefetched pages (relayed %s): %s", k, m[2], last)
	}
}

// A TCP client moves post-copy with its own address: its connection lives
// on, every echo in order, and the address is on the target alone.
func TestPostCopyMoveIP(t *testing.T) {
	needHosts(t, 3)
	ip, cidr := subnetIP(111), subnetCIDR(111)
	withIP(t, 1, cidr)
	srv := start(t, 3, "pc-srv", "migtest", "tcp-server", "0.0.0.0:7111")
	waitLog(t, 3, srv, `server conns`, 1)
	cli := start(t, 1, "pc-cli", "migtest", "tcp-client", ip, hostIP(3)+":7111")
	waitLog(t, 1, cli, `client ok`, 3)
	migrate(t, 1, 2, cli, "--move-ip", cidr, "--post-copy")
	l := waitLog(t, 2, cli, `client ok`, 10)
	if strings.Contains(l, "FAIL") {
		t.Fatalf("client failed:\n%s", tail(l, 5))
	}
	checkConsecutive(t, l, "client ok ", 10)
	if sl := logs(t, 3, srv); strings.Contains(sl, "closed") {
		t.Fatalf("server saw the connection end:\n%s", tail(sl, 5))
	}
	if strings.Contains(mustOn(t, 1, "ip", "-4", "addr", "show", "dev", ifc(1)), " "+ip+"/") {
		t.Fatalf("h1 still holds %s after the move", ip)
	}
	if !strings.Contains(mustOn(t, 2, "ip", "-4", "addr", "show", "dev", ifc(2)), " "+ip+"/") {
		t.Fatalf("h2 does not hold %s after the move", ip)
	}
	noPostCopyLeft(t, 1, 2)
}

// A rank of a running Jacobi job moves post-copy, twice; the job verifies.
func TestPostCopyDSMRank(t *testing.T) {
	needHosts(t, 4)
	j := startJob(t, 3, jacobiArgs()...)
	j.ready()
	time.Sleep(300 * time.Millisecond)
	for _, to := range []int{4, 2} {
		if out := j.migrateRank(1, to, "--post-copy"); !strings.Contains(out, "post-copy: the last page arrived") {
			t.Errorf("dsmrun migrate --post-copy output:\n%s", out)
		}
	}
	j.wait()
}

// A failure or a daemon's kill -9 at each step of a post-copy migration:
// before the commit the process runs on the source, once, intact; after it,
// on the target, or, if its memory could no longer arrive, nowhere, having
// never run on missing pages (its log says why it was killed). Nothing is
// left behind: no lazy-pages, no CRIU, no images, no lock.
func TestPostCopyFaults(t *testing.T) {
	needHosts(t, 2)
	cases := []struct{ mode, side, when, step string }{
		{"fail", "source", "after", "dump"},
		{"fail", "source", "after", "transfer"},
		{"fail", "source", "before", "commit"},
		{"fail", "target", "after", "restore"},
		{"crash", "source", "after", "dump"},
		{"crash", "source", "before", "commit"},
		{"crash", "target", "after", "restore"},
		{"fail", "target", "before", "resume"},
		{"crash", "target", "before", "resume"},
		{"crash", "source", "before", "pages"},
	}
	for _, c := range cases {
		point := c.side + "-" + c.when + "-" + c.step
		t.Run(c.mode+"/"+point, func(t *testing.T) {
			guardHosts(t)
			id, marker, digest := startMem(t, 1, 64, "pcf")
			before := map[int]string{1: lockTables(t, 1), 2: lockTables(t, 2)}
			armFaultMode(t, map[string]int{"source": 1, "target": 2}[c.side], point, c.mode)
			out, err := on(1, "sh", "-c", "exec 2>&1; exec migrated migrate "+id+" --to "+addr(2)+" --post-copy")
			host := map[string]int{"source": 1, "target": 2}[c.side]
			if faultArmed(t, host, point) {
				t.Fatalf("the fault point was never reached (migrate: %v)\n%s", err, out)
			}
			if c.mode == "crash" {
				waitPort(t, host, addr(host))
			}
			committed := c.side == "target" && c.step == "resume" || c.step == "pages"
			switch {
			case !committed:
				if got := settled(t, id); got != 1 {
					t.Fatalf("the process runs on h%d, want h1 (migrate: %v)\n%s", got, err, out)
				}
				exactlyOnce(t, 1, id, marker, digest)
			default:
				lost := lostOrOn2(t, id, marker, digest)
				t.Logf("after the commit: lost %v", lost)
				// The target's restart while pages arrive loses the
				// process always; the source's record says so.
				if c.side == "target" && c.mode == "crash" {
					if !lost {
						t.Fatal("the process runs on after its target's daemon restarted while its pages arrived")
					}
					if r := lastRecord(t, 1); !strings.Contains(fmt.Sprint(r["outcome"]), "LOST") || r["result"] != "lost" {
						t.Fatalf("h1's record of a lost process: %v", r)
					}
					if code := exitStatus(err); code != 5 {
						t.Errorf("migrate exited %d for a lost process, want 5:\n%s", code, out)
					}
				}
			}
			noLocks(t, before, 1, 2)
			noPostCopyLeft(t, 1, 2)
		})
	}
}

// lostOrOn2 waits until id either runs once on h2 with its memory intact, or
// is gone from both hosts having been killed on h2 for its missing memory
// (and never ran on zeros: its log has no failed check); it reports whether
// it was lost. A daemon's restart while the pages arrive loses it always.
func lostOrOn2(t *testing.T, id, marker, digest string) bool {
	t.Helper()
	for end := within(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		p1, p2 := find(t, 1, id), find(t, 2, id)
		if p1 != nil && p1.State == "running" {
			t.Fatalf("after the commit the process runs on the source: %+v", p1)
		}
		if p2 != nil && p2.State == "running" && p1 == nil {
			exactlyOnce(t, 2, id, marker, digest)
			return false
		}
		if p2 != nil && p2.State != "running" && p2.State != "incoming" && copies(t, 1, marker)+copies(t, 2, marker) == 0 {
			l := logs(t, 2, id)
			if !strings.Contains(l, "[dsmigrate] the process was killed") {
				t.Fatalf("the process ended on h2 (%s) without the reason in its log:\n%s", p2.State, tail(l, 5))
			}
			if strings.Contains(l, "BAD") || strings.Contains(l, "FAIL") {
				t.Fatalf("the process ran on missing memory before it was killed:\n%s", tail(l, 8))
			}
			return true
		}
		if time.Now().After(end) {
			t.Fatalf("the process neither runs on h2 nor was lost: h1 %+v, h2 %+v", p1, p2)
		}
	}
}
