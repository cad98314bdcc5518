package integration

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// onHost is a command run on hK, for wantExit.
func onHost(k int, args ...string) *exec.Cmd {
	return exec.Command(cluster, append([]string{"exec", fmt.Sprintf("h%d", k)}, args...)...)
}

// hostOf is the number of the host whose daemon is at a ("" or unknown: 0).
func hostOf(a string) int {
	for k := 1; k <= nHosts; k++ {
		if addr(k) == a {
			return k
		}
	}
	return 0
}

// hostInfo is a line of `migrated hosts --json`.
type hostInfo struct {
	Addr   string `json:"addr"`
	Self   bool   `json:"self"`
	Error  string `json:"error"`
	Daemon *struct {
		Procs   int      `json:"procs"`
		Drained bool     `json:"drained"`
		CPUs    int      `json:"cpus"`
		Subnets []string `json:"subnets"`
	} `json:"daemon"`
}

// clusterHosts is what `migrated hosts --json` on hK says, by host number.
func clusterHosts(t *testing.T, k int) map[int]hostInfo {
	t.Helper()
	var hs []hostInfo
	if err := json.Unmarshal([]byte(mustOn(t, k, "migrated", "hosts", "--json")), &hs); err != nil {
		t.Fatalf("migrated hosts --json on h%d: %v", k, err)
	}
	out := map[int]hostInfo{}
	for _, h := range hs {
		n := hostOf(h.Addr)
		if n == 0 || h.Daemon == nil {
			t.Fatalf("migrated hosts on h%d: %+v", k, h)
		}
		out[n] = h
	}
	if len(out) != nHosts || !out[k].Self {
		t.Fatalf("migrated hosts on h%d lists %d hosts (want %d, itself marked): %+v", k, len(out), nHosts, hs)
	}
	return out
}

// Placement: `migrated run --anywhere`, `migrated migrate` without --to and
// `dsmrun run` without a hostfile go where the fewest processes run (the
// namespace hosts share one machine's memory and load, so the processes
// each daemon runs decide), and never to a drained host.
func TestPlacement(t *testing.T) {
	needHosts(t, 4)
	a := start(t, 1, "pl-a", "migtest", "counter")
	start(t, 1, "pl-b", "migtest", "counter")
	hs := clusterHosts(t, 1)
	if hs[1].Daemon.Procs != 2 || hs[2].Daemon.Procs != 0 || hs[1].Daemon.CPUs < 1 ||
		len(hs[2].Daemon.Subnets) == 0 {
		t.Fatalf("migrated hosts: h1 %+v, h2 %+v; want 2 processes on h1, none on h2, CPUs and networks",
			*hs[1].Daemon, *hs[2].Daemon)
	}

	// run --anywhere: not h1 (2 processes); h2, the first of the idle ones.
	out := mustOn(t, 1, "migrated", "run", "--anywhere", "--name", "pl-any", "--", "migtest", "counter")
	f := strings.Fields(out)
	if len(f) != 2 || hostOf(f[1]) != 2 {
		t.Fatalf("migrated run --anywhere printed %q, want the ID and h2 (%s)", out, addr(2))
	}
	anyID := f[0]
	t.Cleanup(func() { on(2, "migrated", "kill", anyID) })
	if p := find(t, 2, anyID); p == nil || p.State != "running" {
		t.Fatalf("the --anywhere process is not running on h2: %+v", p)
	}

	// Drained, h3 takes nothing: placement skips it, and says so.
	mustOn(t, 1, "migrated", "drain", "--host", addr(3))
	t.Cleanup(func() { on(3, "migrated", "undrain") })
	if !clusterHosts(t, 1)[3].Daemon.Drained {
		t.Error("migrated hosts does not show h3 drained")
	}
	_, errOut := wantExit(t, onHost(3, "migrated", "run", "--", "migtest", "counter"), 4)
	if !strings.Contains(errOut, "drained") || !strings.Contains(errOut, "undrain") {
		t.Errorf("migrated run on a drained host: %s", errOut)
	}

	// migrate without --to: h4 (h2 runs one, h3 is drained).
	out = mustOn(t, 1, "sh", "-c", "exec 2>&1; exec migrated migrate "+a)
	if !strings.Contains(out, "placed") || !strings.Contains(out, addr(4)) {
		t.Errorf("migrate without --to does not say it placed the process on h4:\n%s", out)
	}
	for end := within(15 * time.Second); find(t, 4, a) == nil || find(t, 1, a) != nil; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("after migrate without --to, %s is not on h4 alone:\n%s", a, out)
		}
	}
	// A migration to the drained host is refused; the process stays.
	_, errOut = wantExit(t, onHost(4, "migrated", "migrate", a, "--to", addr(3)), 4)
	if !strings.Contains(errOut, "drained") {
		t.Errorf("a migration to a drained host: %s", errOut)
	}
	if p := find(t, 4, a); p == nil || p.State != "running" {
		t.Fatalf("after the refused migration %s is not running on h4: %+v", a, p)
	}
	_, errOut = wantExit(t, onHost(1, "migrated", "run", "--anywhere", "--policy", "fastest", "--", "true"), 2)
	if !strings.Contains(errOut, "balanced, memory, cpu") {
		t.Errorf("an unknown policy: %s", errOut)
	}

	// dsmrun run over h1-h3 without a hostfile: h1 runs 1 (pl-b), h2 1
	// (pl-any), h3 is drained: rank 0 on h1, rank 1 on h2, rank 2 on h1
	// again (now 2 against h2's 2: the first given). Round-robin would
	// have put rank 2 on the drained h3.
	j := startJob(t, 3, sleeper(t))
	rs := j.running()
	if got := []int{hostOf(rs[0].Host), hostOf(rs[1].Host), hostOf(rs[2].Host)}; fmt.Sprint(got) != "[1 2 1]" {
		t.Errorf("dsmrun run placed the ranks on hosts %v, want [1 2 1]", got)
	}
	_, errOut = wantExit(t, dsmrun("run", "--policy", "fastest", "--", "true"), 1)
	if !strings.Contains(errOut, "round-robin") {
		t.Errorf("dsmrun run with an unknown policy: %s", errOut)
	}
}

// Drain empties a host of a plain process and a rank of a running DSM job
// with its own address (one at a time, each where placement puts it),
// after a dry run that moves nothing; the job verifies; the drained host
// takes nothing until undrain.
func TestDrain(t *testing.T) {
	needHosts(t, 4)
	t.Cleanup(func() { on(2, "migrated", "undrain") })
	j := startJob(t, 3, append([]string{"--rank-ips", subnetCIDR(120), "--"}, jacobiArgs()...)...)
	j.ready()
	if h := hostOf(j.rankHost(1)); h != 2 {
		t.Fatalf("rank 1 runs on h%d, want h2", h)
	}
	c := start(t, 2, "drain-counter", "migtest", "counter")
	waitLog(t, 2, c, `count \d+`, 3)

	// The dry run: the counter to h4 (no process), then rank 1 to h1 (h1,
	// h3 and h4 run one each now: the first given), with its address.
	out, _ := wantExit(t, onHost(2, "migrated", "drain", "--dry-run", "--json"), 0)
	plan := drainReport(t, out)
	if plan.Moved != 0 || len(plan.Items) != 2 {
		t.Fatalf("dry run: %s", out)
	}
	want := map[string]struct {
		to     int
		moveIP string
	}{"drain-counter": {4, ""}, j.id + ".r1": {1, subnetCIDR(121)}}
	for _, it := range plan.Items {
		w := want[it.Name]
		if hostOf(it.To) != w.to || it.MoveIP != w.moveIP {
			t.Errorf("dry run: %s would go to %s with %q, want h%d with %q", it.Name, it.To, it.MoveIP, w.to, w.moveIP)
		}
	}
	if len(ps(t, 2)) != 2 || clusterHosts(t, 2)[2].Daemon.Drained {
		t.Fatalf("the dry run moved or drained something: %+v", ps(t, 2))
	}

	// The drain, from another host.
	out, _ = wantExit(t, onHost(1, "migrated", "drain", "--host", addr(2), "--json"), 0)
	rep := drainReport(t, out)
	if rep.Moved != 2 || rep.Stayed != 0 {
		t.Fatalf("drain: %s", out)
	}
	for _, it := range rep.Items {
		if w := want[it.Name]; hostOf(it.To) != w.to || !it.Moved || it.Migration == nil {
			t.Errorf("drain: %+v, want it moved to h%d", it, w.to)
		}
	}
	if !strings.Contains(out, `"type":"drain"`) || !strings.Contains(out, `"type":"phase"`) {
		t.Errorf("drain --json printed no progress:\n%s", out)
	}
	// The source forgets a process that left in the background, just after
	// its migration answered.
	for end := within(15 * time.Second); len(ps(t, 2)) > 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("h2 still lists %+v after the drain", ps(t, 2))
		}
	}
	if p := find(t, 4, c); p == nil || p.State != "running" {
		t.Errorf("the counter is not running on h4: %+v", p)
	}
	waitLog(t, 4, c, `count \d+`, 3)
	if h := j.settledRank(1); hostOf(h) != 1 {
		t.Errorf("rank 1 runs on %s after the drain, want h1", h)
	}
	if !strings.Contains(mustOn(t, 1, "ip", "-4", "addr", "show", "dev", ifc(1)), " "+subnetIP(121)+"/") {
		t.Error("rank 1's address did not move with it to h1")
	}
	j.wait()

	// Drained, h2 takes no process and no migration until undrain.
	_, errOut := wantExit(t, onHost(2, "migrated", "run", "--", "migtest", "counter"), 4)
	if !strings.Contains(errOut, "drained") {
		t.Errorf("run on the drained host: %s", errOut)
	}
	_, errOut = wantExit(t, onHost(4, "migrated", "migrate", c, "--to", addr(2)), 4)
	if !strings.Contains(errOut, "drained") {
		t.Errorf("a migration to the drained host: %s", errOut)
	}
	// migrated check says so, on the host and of it as a target.
	out, _ = wantExit(t, onHost(4, "migrated", "check", "--to", addr(2)), 1)
	if !strings.Contains(out, "target not drained") {
		t.Errorf("migrated check --to a drained host:\n%s", out)
	}
	if out := mustOn(t, 2, "migrated", "check"); !strings.Contains(out, "daemon drained") {
		t.Errorf("migrated check on a drained host:\n%s", out)
	}
	// A drain of an empty host says so and succeeds.
	out, _ = wantExit(t, onHost(2, "migrated", "drain"), 0)
	if !strings.Contains(out, "0 processes moved, 0 processes stayed") {
		t.Errorf("drain of an empty host:\n%s", out)
	}
	mustOn(t, 2, "migrated", "undrain")
	migrate(t, 4, 2, c)
}

// drainJSON is the last line of `migrated drain --json`.
type drainJSON struct {
	Moved, Stayed int
	Items         []struct {
		Name, To, Stayed string
		MoveIP           string `json:"move_ip"`
		Moved            bool
		Migration        *struct {
			DowntimeMS float64 `json:"downtime_ms"`
		}
	}
}

func drainReport(t *testing.T, out string) drainJSON {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var last struct {
		Type  string
		Drain *drainJSON
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last.Type != "drained" || last.Drain == nil {
		t.Fatalf("drain --json's last line is not its report (%v):\n%s", err, out)
	}
	return *last.Drain
}
