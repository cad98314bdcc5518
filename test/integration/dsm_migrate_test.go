package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// dsmJob is a running dsmrun job.
type dsmJob struct {
	t        *testing.T
	cmd      *exec.Cmd
	mu       sync.Mutex
	out, err bytes.Buffer
	id       string
	n        int // ranks
	done     chan error
	exited   chan struct{} // closed when dsmrun has exited
}

type lockedBuf struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedBuf) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func startJob(t *testing.T, n int, args ...string) *dsmJob {
	t.Helper()
	j := &dsmJob{t: t, n: n, done: make(chan error, 1)}
	run := []string{"run", "-n", fmt.Sprint(n)}
	if len(args) == 0 || !strings.HasPrefix(args[0], "--") {
		run = append(run, "--") // dsmrun options first, then "--" and the program
	}
	j.cmd = dsmrun(append(run, args...)...)
	j.cmd.Stdout, j.cmd.Stderr = lockedBuf{&j.mu, &j.out}, lockedBuf{&j.mu, &j.err}
	if err := j.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	j.exited = make(chan struct{})
	go func() { j.done <- j.cmd.Wait(); close(j.exited) }()
	// Whatever the test's fate, the job goes with it: dsmrun stops its
	// ranks on SIGTERM; SIGKILL would leave them running for the next test.
	t.Cleanup(func() {
		j.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-j.exited:
		case <-time.After(scaled(15 * time.Second)):
			j.cmd.Process.Kill()
		}
		if j.id == "" {
			j.id = jobID(j.stderr())
		}
		if err := killJob(j.id); err != nil {
			t.Errorf("removing job %s: %v", j.id, err)
		}
	})
	// dsmrun prints the ID once every rank has started.
	for end := within(30 * time.Second); j.id == ""; time.Sleep(25 * time.Millisecond) {
		if j.id = jobID(j.stderr()); j.id == "" && time.Now().After(end) {
			t.Fatalf("no job ID: %s", j.stderr())
		}
	}
	return j
}

// jobID is the job ID dsmrun printed in stderr, or "".
func jobID(stderr string) string {
	if m := regexp.MustCompile(`job: ([0-9a-f]+)`).FindStringSubmatch(stderr); m != nil {
		return m[1]
	}
	return ""
}

// killJob removes every rank of job that a host lists, running or ended
// (dsmrun does it when it stops; this is for a dsmrun that could not).
// It may run in a cleanup: it does not stop the test.
func killJob(job string) error {
	if job == "" {
		return nil
	}
	var errs []error
	for k := 1; k <= nHosts; k++ {
		out, err := on(k, "migrated", "ps", "--json")
		var procs []procInfo
		if err == nil {
			err = json.Unmarshal([]byte(out), &procs)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, p := range procs {
			if strings.HasPrefix(p.Name, job+".r") {
				if _, err := on(k, "migrated", "kill", p.ID); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// ready waits until every rank of the job runs and has registered its
// migration hooks with its daemon (a rank moved before that would move
// without its prepare step): a fixed sleep is not enough on a loaded machine.
func (j *dsmJob) ready() {
	j.t.Helper()
	for end := within(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		rs := j.ranks()
		ok := len(rs) == j.n
		for _, r := range rs {
			ok = ok && r.State == "running" && hooked(r.Host, r.ProcID)
		}
		if ok {
			return
		}
		select {
		case <-j.exited:
			j.t.Fatalf("job %s ended before its ranks were ready\nstdout:\n%s\nstderr:\n%s", j.id, tail(j.stdout(), 20), j.stderr())
		default:
		}
		if time.Now().After(end) {
			j.t.Fatalf("the ranks of job %s are not all running with their hooks registered: %+v\nstdout:\n%s\nstderr:\n%s",
				j.id, rs, tail(j.stdout(), 20), j.stderr())
		}
	}
}

// hooked reports whether process id on the host at hostport has registered
// its migration hooks: its daemon's record of it says so (ProcRec.Hooks).
func hooked(hostport, id string) bool {
	for k := 1; k <= nHosts; k++ {
		if addr(k) == hostport {
			b, err := on(k, "cat", filepath.Join(stateDir(k), "procs", id, "proc.json"))
			var rec struct{ Hooks bool }
			return err == nil && json.Unmarshal([]byte(b), &rec) == nil && rec.Hooks
		}
	}
	return false
}

// ranks is what `dsmrun ps --json` says of the job's ranks.
func (j *dsmJob) ranks() []rankInfo {
	j.t.Helper()
	jobs, _ := psJobs(j.t, dsmrunAll("ps", "--json"))
	for _, jb := range jobs {
		if jb.ID == j.id {
			return jb.Ranks
		}
	}
	return nil
}

func (j *dsmJob) stdout() string { j.mu.Lock(); defer j.mu.Unlock(); return j.out.String() }
func (j *dsmJob) stderr() string { j.mu.Lock(); defer j.mu.Unlock(); return j.err.String() }

// wait checks that the job ends well and verifies its result.
func (j *dsmJob) wait() {
	t := j.t
	t.Helper()
	select {
	case err := <-j.done:
		if err != nil {
			t.Fatalf("job %s: %v\nstdout:\n%s\nstderr:\n%s", j.id, err, tail(j.stdout(), 20), j.stderr())
		}
	case <-time.After(scaled(5 * time.Minute)):
		t.Fatalf("job %s timed out\nstdout:\n%s\nstderr:\n%s", j.id, tail(j.stdout(), 20), j.stderr())
	}
	if !regexp.MustCompile(`(?m)^\[0\] result: \S+ verified$`).MatchString(j.stdout()) {
		t.Fatalf("no verified result:\n%s", tail(j.stdout(), 20))
	}
}

// rankHost is where `dsmrun ps --json` says the rank runs (a host that
// still lists it after it left does not count), "" if nowhere.
func (j *dsmJob) rankHost(rank int) string {
	j.t.Helper()
	for _, r := range j.ranks() {
		if r.Rank == rank && r.State == "running" {
			return r.Host
		}
	}
	return ""
}

// settledRank waits until one host only lists the rank, as running (a move
// that failed or succeeded may take its other copy away a moment after
// dsmrun returns), and returns that host.
func (j *dsmJob) settledRank(rank int) string {
	j.t.Helper()
	for end := within(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var seen []rankInfo
		for _, r := range j.ranks() {
			if r.Rank == rank {
				seen = append(seen, r)
			}
		}
		if len(seen) == 1 && seen[0].State == "running" {
			return seen[0].Host
		}
		if time.Now().After(end) {
			j.t.Fatalf("rank %d of job %s never settled on one host: %+v", rank, j.id, seen)
		}
	}
}

// dsmrunAll is dsmrun against all the hosts (ranks move to h4 too).
func dsmrunAll(args ...string) *exec.Cmd {
	cmd := dsmrun(args...)
	for i, e := range cmd.Env {
		if strings.HasPrefix(e, "MIGRATED_HOSTS=") {
			cmd.Env[i] = "MIGRATED_HOSTS=" + hostsEnv
		}
	}
	return cmd
}

// spare is where a test moves a rank of a job on h1-h3: h4, which runs
// none, or with three hosts h3, which runs rank 2 (and rank 1 then joins it).
func spare() int { return min(nHosts, 4) }

// migrateRank moves a rank and checks where dsmrun ps then shows it.
func (j *dsmJob) migrateRank(rank, to int, extra ...string) string {
	j.t.Helper()
	out, err := dsmrunAll(append([]string{"migrate", j.id, fmt.Sprint(rank), "--to", addr(to)}, extra...)...).CombinedOutput()
	if err != nil {
		j.t.Fatalf("dsmrun migrate %s %d --to %s: %v\n%s\njob stderr:\n%s", j.id, rank, addr(to), err, out, j.stderr())
	}
	for _, ph := range []string{"prepare", "dump", "restore", "rebind"} {
		if !strings.Contains(string(out), ph) {
			j.t.Errorf("dsmrun migrate output lacks phase %q:\n%s", ph, out)
		}
	}
	if h := j.settledRank(rank); h != addr(to) {
		j.t.Fatalf("after the move dsmrun ps shows rank %d on %q, want %s", rank, h, addr(to))
	}
	return string(out)
}

// jacobiArgs makes a Jacobi run long enough to migrate ranks during it
// (~8 s here). On slow hosts (DSMIGRATE_TEST_SLOW=F) it does 1/F of the
// sweeps, which take each F times as long or longer: 8000 sweeps on TCG
// guests ran for more than 7 minutes.
func jacobiArgs() []string {
	return []string{filepath.Join(repo, "bin", "jacobi"), "-n", "256", "-iters", fmt.Sprint(int(8000 / slow))}
}

func TestDSMMigrateOneRank(t *testing.T) {
	needHosts(t, 3)
	j := startJob(t, 3, jacobiArgs()...)
	j.ready()
	time.Sleep(500 * time.Millisecond)
	j.migrateRank(1, spare())
	j.wait()
}

func TestDSMMigrateRankZero(t *testing.T) {
	needHosts(t, 3)
	j := startJob(t, 3, jacobiArgs()...)
	j.ready()
	time.Sleep(500 * time.Millisecond)
	j.migrateRank(0, spare())
	j.wait()
}

func TestDSMMigrateBackAndForth(t *testing.T) {
	needHosts(t, 4)
	j := startJob(t, 3, jacobiArgs()...)
	j.ready()
	for i := 0; i < 4; i++ {
		time.Sleep(200 * time.Millisecond)
		if i%2 == 0 {
			j.migrateRank(2, 4)
		} else {
			j.migrateRank(2, 3)
		}
	}
	j.wait()
}

func TestDSMMigrateSeveralRanks(t *testing.T) {
	needHosts(t, 4)
	j := startJob(t, 4, jacobiArgs()...)
	j.ready()
	time.Sleep(300 * time.Millisecond)
	j.migrateRank(1, 4)
	j.migrateRank(3, 2)
	j.migrateRank(0, 3)
	j.wait()

	// Every move left a record that dsmrun shows: job, rank, source,
	// target, phases, bytes, outcome.
	out, err := dsmrunAll("history", "--json", j.id).Output()
	if err != nil {
		t.Fatal(err)
	}
	var recs []struct {
		Job, From, To, Outcome string
		Rank                   int
		Bytes                  int64
		Phases                 []struct{ Phase string }
	}
	if err := json.Unmarshal(out, &recs); err != nil {
		t.Fatalf("dsmrun history --json: %v: %s", err, out)
	}
	want := []struct {
		rank     int
		from, to string
	}{{1, addr(2), addr(4)}, {3, addr(1), addr(2)}, {0, addr(1), addr(3)}}
	if len(recs) != len(want) {
		t.Fatalf("dsmrun history shows %d records, want %d: %s", len(recs), len(want), out)
	}
	for i, w := range want {
		r := recs[i]
		if r.Job != j.id || r.Rank != w.rank || r.From != w.from || r.To != w.to || r.Outcome != "ok" ||
			r.Bytes == 0 || len(r.Phases) < 6 {
			t.Errorf("record %d = %+v, want rank %d %s -> %s ok", i, r, w.rank, w.from, w.to)
		}
	}
}

// The lock-based TSP: ranks that take locks all the time and manage them
// (lock id mod size) move in the middle of the search, rank 0 too.
func TestDSMMigrateLockHolder(t *testing.T) {
	needHosts(t, 4)
	j := startJob(t, 3, filepath.Join(repo, "bin", "tsp"), "-cities", "16")
	j.ready()
	time.Sleep(100 * time.Millisecond)
	j.migrateRank(1, 4)
	j.migrateRank(0, 2)
	j.wait()
}

// The target daemon dies (kill -9, at a fault point) during a rank's
// migration: the rank resumes on its source and the job still verifies.
func TestDSMMigrateTargetKilled(t *testing.T) {
	needHosts(t, 4)
	j := startJob(t, 3, jacobiArgs()...)
	j.ready()
	time.Sleep(300 * time.Millisecond)
	src := j.rankHost(1)
	armFaultMode(t, 4, "target-after-pages", "crash")
	out, err := dsmrunAll("migrate", j.id, "1", "--to", addr(4)).CombinedOutput()
	if faultArmed(t, 4, "target-after-pages") {
		t.Fatalf("the migration never reached h4's fault point (migrate: %v):\n%s", err, out)
	}
	if err == nil {
		t.Fatalf("migration did not fail as it should:\n%s", out)
	}
	waitPort(t, 4, addr(4)) // the host's supervisor (cluster.sh's loop, systemd) restarts it; it drops its copy
	if h := j.settledRank(1); h != src {
		t.Fatalf("rank 1 is on %q, want its source %s", h, src)
	}
	j.wait()
}

// The other two examples, matmul (rows copied into shared memory) and isort
// (fine-grained false sharing), verify with ranks moved during the run.
func TestDSMMigrateMatmulIsort(t *testing.T) {
	needHosts(t, 4)
	for _, tc := range []struct {
		name  string
		ranks int
		args  []string
	}{
		{"matmul", 3, []string{filepath.Join(repo, "bin", "matmul"), "-n", "1400"}},
		{"isort", 4, []string{filepath.Join(repo, "bin", "isort"), "-keys", "1048576", "-iters", "60"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			guardHosts(t)
			j := startJob(t, tc.ranks, tc.args...)
			j.ready()
			time.Sleep(600 * time.Millisecond)
			j.migrateRank(1, 4)
			j.migrateRank(2, 1)
			j.wait()
		})
	}
}

// IP-preserving mode: each rank has an address of its own (dsmrun run
// --rank-ips) that its connections use; moving the address with the rank
// carries the connections through CRIU's TCP repair, with no prepare and no
// rebinding, and the job verifies.
func TestDSMMigrateMoveIP(t *testing.T) {
	needHosts(t, 4)
	j := startJob(t, 3, append([]string{"--rank-ips", subnetCIDR(110), "--"}, jacobiArgs()...)...)
	j.ready()
	time.Sleep(500 * time.Millisecond)
	for _, mv := range []struct {
		rank, to int
		cidr     string
	}{{1, 4, subnetCIDR(111)}, {0, 2, subnetCIDR(110)}} {
		out, err := dsmrunAll("migrate", j.id, fmt.Sprint(mv.rank), "--to", addr(mv.to), "--move-ip", mv.cidr).CombinedOutput()
		if err != nil {
			t.Fatalf("dsmrun migrate --move-ip: %v\n%s\njob stderr:\n%s", err, out, j.stderr())
		}
		if strings.Contains(string(out), "prepare") || !strings.Contains(string(out), "network") {
			t.Errorf("with --move-ip the move should carry connections, not rebind them:\n%s", out)
		}
		if h := j.rankHost(mv.rank); h != addr(mv.to) {
			t.Fatalf("rank %d on %q, want %s", mv.rank, h, addr(mv.to))
		}
		ip := " " + strings.Split(mv.cidr, "/")[0] + "/"
		if !strings.Contains(mustOn(t, mv.to, "ip", "-4", "addr", "show", "dev", ifc(mv.to)), ip) {
			t.Fatalf("h%d does not hold %s after the move", mv.to, mv.cidr)
		}
	}
	j.wait()
	for k := 1; k <= nHosts; k++ {
		a := mustOn(t, k, "ip", "-4", "addr", "show", "dev", ifc(k))
		for n := 110; n < 113; n++ { // rank r's address is the first's + r
			if strings.Contains(a, " "+subnetIP(n)+"/") {
				t.Errorf("h%d still holds rank %d's address %s after the job:\n%s", k, n-110, subnetIP(n), a)
			}
		}
	}
}

// The target's restore fails (a fault point: the real conflicts a restore
// can meet are tested in pidns_test.go): the rank resumes on its source,
// rebinds to its peers there, and the job verifies.
func TestDSMMigrateRestoreRefused(t *testing.T) {
	needHosts(t, 4)
	j := startJob(t, 3, jacobiArgs()...)
	j.ready()
	time.Sleep(500 * time.Millisecond)
	src := j.rankHost(1)
	if src != addr(2) {
		t.Fatalf("rank 1 is on %q, want h2", src)
	}
	armFaultMode(t, 4, "target-before-restore", "fail")
	out, err := dsmrunAll("migrate", j.id, "1", "--to", addr(4)).CombinedOutput()
	if faultArmed(t, 4, "target-before-restore") {
		t.Fatalf("the migration never reached h4's fault point (migrate: %v):\n%s", err, out)
	}
	if err == nil {
		t.Fatalf("the migration succeeded although h4's restore fails:\n%s", out)
	}
	if !strings.Contains(string(out), "resumed on the source") {
		t.Errorf("dsmrun migrate does not say the rank resumed on its source:\n%s", out)
	}
	if h := j.settledRank(1); h != src {
		t.Fatalf("rank 1 is on %q after a refused restore, want %s", h, src)
	}
	j.wait()
}

// Moves of two ranks of one job started at the same moment: one rank of a
// job moves at a time, so each either moves or is refused saying so (both
// may be, when they asked at once), and the job verifies. Three rounds.
func TestDSMMigrateTwoAtOnce(t *testing.T) {
	needHosts(t, 4)
	j := startJob(t, 4, jacobiArgs()...)
	j.ready()
	time.Sleep(500 * time.Millisecond)
	moved := 0
	// Each rank goes back and forth between two hosts: back where it
	// lived, it finds the thread ids it had there taken by others or not,
	// which its pid namespace makes no matter.
	alts := map[int][2]string{1: {addr(2), addr(4)}, 2: {addr(3), addr(1)}}
	for round := range 3 {
		var to [2]string
		for i, rank := range []int{1, 2} {
			to[i] = alts[rank][0]
			if j.settledRank(rank) == alts[rank][0] {
				to[i] = alts[rank][1]
			}
		}
		var outs [2][]byte
		var errs [2]error
		var wg sync.WaitGroup
		for i, rank := range []int{1, 2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				outs[i], errs[i] = dsmrunAll("migrate", j.id, fmt.Sprint(rank), "--to", to[i]).CombinedOutput()
			}()
		}
		wg.Wait()
		for i, err := range errs {
			switch {
			case err == nil:
				moved++
			case !strings.Contains(string(outs[i]), "one rank"):
				t.Fatalf("round %d: moving rank %d failed otherwise: %v\n%s\njob stderr:\n%s", round, i+1, err, outs[i], j.stderr())
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%d of 6 moves went, the others were refused", moved)
	j.wait()
}
