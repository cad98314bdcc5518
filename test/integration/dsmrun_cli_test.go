package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// dsmrun's operator commands through the real binary: kill JOB, logs JOB
// [RANK] (-f) across a migration, run --hostfile with slots, and commands
// that could not reach a host (exit status 6, the host named).

// runCLI runs cmd to its end (killed after a generous deadline) and returns
// what it printed and its exit status.
func runCLI(t *testing.T, cmd *exec.Cmd) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(scaled(2*time.Minute), func() { cmd.Process.Kill() })
	err := cmd.Wait()
	timer.Stop()
	if code = exitStatus(err); code < 0 {
		t.Fatalf("%s: %v", strings.Join(cmd.Args, " "), err)
	}
	return o.String(), e.String(), code
}

// wantExit fails the test unless the command ended with status code.
func wantExit(t *testing.T, cmd *exec.Cmd, code int) (stdout, stderr string) {
	t.Helper()
	stdout, stderr, got := runCLI(t, cmd)
	if got != code {
		t.Fatalf("%s: exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(cmd.Args[1:], " "), got, code,
			tail(stdout, 20), stderr)
	}
	return stdout, stderr
}

// sleeper is a rank program that sleeps (under its own command line, which
// names the script, so that pgrep finds it on a host).
func sleeper(t *testing.T) string {
	return filepath.Join(hostDir(t, map[string][]byte{"sleeper.sh": []byte("#!/bin/sh\nsleep 600\n")}), "sleeper.sh")
}

// running waits until dsmrun ps lists the job's n ranks, each once and
// running, and returns them by rank.
func (j *dsmJob) running() []rankInfo {
	j.t.Helper()
	for end := within(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		rs := j.ranks()
		ok := len(rs) == j.n
		for i, r := range rs {
			ok = ok && r.Rank == i && r.State == "running"
		}
		if ok {
			return rs
		}
		select {
		case <-j.exited:
			j.t.Fatalf("job %s ended before its ranks ran\nstderr:\n%s", j.id, j.stderr())
		default:
		}
		if time.Now().After(end) {
			j.t.Fatalf("the ranks of job %s are not all running: %+v\nstderr:\n%s", j.id, rs, j.stderr())
		}
	}
}

// deadHost is a daemon address nobody holds, in the hosts' subnet.
func deadHost() string { return net.JoinHostPort(subnetIP(250), "7077") }

// dsmrun kill JOB kills every rank wherever it is and says what per host; a
// job that is not there is exit status 3, a host that does not answer 6.
func TestDSMRunKill(t *testing.T) {
	needHosts(t, 3)
	script := sleeper(t)
	j := startJob(t, 4, script)
	j.running()
	// The dsmrun that started the job is gone, as after a crash: its
	// ranks run on, and only dsmrun kill stops them.
	j.cmd.Process.Kill()
	<-j.exited

	out, _ := wantExit(t, dsmrun("kill", j.id), 0)
	for k, want := range map[int]string{1: "rank 0, rank 3", 2: "rank 1", 3: "rank 2"} {
		if line := addr(k) + ": killed " + want + "\n"; !strings.Contains(out, line) {
			t.Errorf("dsmrun kill output lacks %q:\n%s", line, out)
		}
	}
	for k := 1; k <= nHosts; k++ {
		for _, p := range ps(t, k) {
			if strings.HasPrefix(p.Name, j.id+".r") {
				t.Errorf("h%d still lists %s (%s) after dsmrun kill", k, p.Name, p.State)
			}
		}
		if left, _ := on(k, "pgrep", "-f", exclusive(script)); left != "" {
			t.Errorf("h%d still runs the job's program after dsmrun kill: pids %s", k, strings.Fields(left))
		}
	}

	jout, errOut := wantExit(t, dsmrun("kill", "--json", j.id), 3)
	if !strings.Contains(errOut, "no job \""+j.id+"\"") {
		t.Errorf("dsmrun kill of a gone job says:\n%s", errOut)
	}
	var killed struct {
		Job    string
		Killed []rankInfo
	}
	if err := json.Unmarshal([]byte(jout), &killed); err != nil || killed.Job != j.id || killed.Killed == nil ||
		len(killed.Killed) != 0 {
		t.Errorf("dsmrun kill --json of a gone job: %v\n%s", err, jout)
	}
	_, errOut = wantExit(t, dsmrun("kill", j.id, "--hosts", addr(1)+","+deadHost()), 6)
	if !strings.Contains(errOut, deadHost()) {
		t.Errorf("dsmrun kill with a host down does not name it:\n%s", errOut)
	}
}

var countRx = regexp.MustCompile(`count (\d+)\n`)

// lastCount is the last number a migtest counter printed in out, -1 if none.
func lastCount(out string) int {
	m := countRx.FindAllStringSubmatch(out, -1)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[len(m)-1][1])
	return n
}

// dsmrun logs prints a rank's output from its start, after it moved; -f
// follows it across the move until it ends; unknown jobs and ranks are
// exit status 3.
func TestDSMRunLogs(t *testing.T) {
	needHosts(t, 3)
	j := startJob(t, 2, filepath.Join(repo, "bin", "migtest"), "counter")
	j.running()
	logsOf := func(args ...string) string {
		t.Helper()
		out, _ := wantExit(t, dsmrunAll(append([]string{"logs"}, args...)...), 0)
		return out
	}
	// grown waits until rank 1 has counted to n at least, and returns its log.
	grown := func(n int) string {
		t.Helper()
		for end := within(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			l := logsOf(j.id, "1")
			if lastCount(l) >= n {
				return l
			}
			if time.Now().After(end) {
				t.Fatalf("rank 1 of job %s did not count to %d:\n%s", j.id, n, tail(l, 5))
			}
		}
	}
	before := lastCount(grown(10))

	// A follower from before the move.
	f := dsmrunAll("logs", "-f", j.id, "1")
	var fout, ferr bytes.Buffer
	f.Stdout, f.Stderr = &fout, &ferr
	if err := f.Start(); err != nil {
		t.Fatal(err)
	}
	fdone := make(chan error, 1)
	go func() { fdone <- f.Wait() }()
	t.Cleanup(func() { f.Process.Kill() })

	to := spare()
	if out, err := dsmrunAll("migrate", j.id, "1", "--to", addr(to)).CombinedOutput(); err != nil {
		t.Fatalf("dsmrun migrate %s 1 --to %s: %v\n%s", j.id, addr(to), err, out)
	}
	if h := j.settledRank(1); h != addr(to) {
		t.Fatalf("rank 1 is on %q after the move, want %s", h, addr(to))
	}
	moved := lastCount(logsOf(j.id, "1")) // printed by the time the move was over
	l := grown(moved + 10)
	if next := checkConsecutive(t, l, "count ", 1); next <= moved {
		t.Fatalf("dsmrun logs %s 1 after the move counts to %d; want from 0 past %d (before the move: %d)",
			j.id, next-1, moved, before)
	}
	all := logsOf(j.id)
	for _, line := range strings.Split(strings.TrimSuffix(all, "\n"), "\n") {
		if !strings.HasPrefix(line, "[0] count ") && !strings.HasPrefix(line, "[1] count ") {
			t.Fatalf("dsmrun logs %s: line %q is not a rank's count behind its rank", j.id, line)
		}
	}
	checkConsecutive(t, all, "[0] count ", 1)
	if next := checkConsecutive(t, all, "[1] count ", 1); next <= moved {
		t.Errorf("dsmrun logs %s: rank 1 counts to %d, want past %d", j.id, next-1, moved)
	}

	_, errOut := wantExit(t, dsmrunAll("logs", j.id, "7"), 3)
	if !strings.Contains(errOut, "no rank 7") {
		t.Errorf("dsmrun logs of an unknown rank says:\n%s", errOut)
	}
	wantExit(t, dsmrunAll("logs", "0badc0de"), 3)

	// The job ends: the follower prints the rest and ends too.
	wantExit(t, dsmrunAll("kill", j.id), 0)
	select {
	case err := <-fdone:
		if err != nil {
			t.Fatalf("dsmrun logs -f: %v\n%s", err, ferr.String())
		}
	case <-time.After(scaled(60 * time.Second)):
		t.Fatalf("dsmrun logs -f did not end with the job\nstderr:\n%s", ferr.String())
	}
	if next := checkConsecutive(t, fout.String(), "count ", 1); next <= moved+10 {
		t.Errorf("dsmrun logs -f counted to %d, want from 0 past %d", next-1, moved+10)
	}
	if !strings.Contains(ferr.String(), "rank 1 of job "+j.id+" exited") {
		t.Errorf("dsmrun logs -f does not say the rank exited:\n%s", ferr.String())
	}
}

// dsmrun run --hostfile places ranks by slot, refuses more ranks than slots
// unless oversubscribed, and says which line of a bad hostfile is wrong.
func TestDSMRunHostfile(t *testing.T) {
	needHosts(t, 3)
	script := sleeper(t)
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// checkPlaces checks where dsmrun ps shows the job's ranks.
	checkPlaces := func(j *dsmJob, want ...string) {
		t.Helper()
		rs := j.running()
		for i, r := range rs {
			if r.Host != want[i] {
				t.Errorf("rank %d of job %s is on %s, want %s (all: %+v)", i, j.id, r.Host, want[i], rs)
			}
		}
	}
	hf := write("hosts", fmt.Sprintf("# h1 takes two\n%s slots=2\n\n%s   # one slot\n  %s slots=1\n",
		addr(1), addr(2), addr(3)))
	// MIGRATED_HOSTS (set by dsmrun) is not --hosts: the hostfile decides.
	j := startJob(t, 4, "--hostfile", hf, "--", script)
	checkPlaces(j, addr(1), addr(1), addr(2), addr(3))

	// noJob runs a dsmrun run that must not start a job, removing one if
	// it did.
	noJob := func(code int, args ...string) string {
		t.Helper()
		cmd := dsmrun(append([]string{"run"}, args...)...)
		out, errOut, got := runCLI(t, cmd)
		if err := killJob(jobID(errOut)); err != nil {
			t.Errorf("removing what dsmrun %s started: %v", strings.Join(cmd.Args[1:], " "), err)
		}
		if got != code {
			t.Fatalf("dsmrun %s: exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(cmd.Args[1:], " "),
				got, code, tail(out, 20), errOut)
		}
		return errOut
	}
	small := write("small", fmt.Sprintf("%s slots=1\n%s slots=1\n", addr(1), addr(2)))
	if e := noJob(2, "-n", "3", "--hostfile", small, "--", script); !strings.Contains(e, "3 ranks but the hostfile has 2 slots") {
		t.Errorf("more ranks than slots says:\n%s", e)
	}
	o := startJob(t, 3, "--hostfile", small, "--oversubscribe", "--", script)
	checkPlaces(o, addr(1), addr(2), addr(1))

	bad := write("bad", fmt.Sprintf("%s slots=2\n%s slots=two\n", addr(1), addr(2)))
	if e := noJob(2, "-n", "2", "--hostfile", bad, "--", script); !strings.Contains(e, bad+":2: ") {
		t.Errorf("a bad hostfile line is not named as %s:2:\n%s", bad, e)
	}
	if e := noJob(2, "-n", "2", "--hosts", addr(1), "--hostfile", hf, "--", script); !strings.Contains(e, "--hosts and --hostfile") {
		t.Errorf("--hosts with --hostfile says:\n%s", e)
	}
}

// dsmrun ps and history with a host that does not answer print what the
// others said, name the host on stderr, and exit with status 6.
func TestDSMRunUnreachable(t *testing.T) {
	needHosts(t, 1)
	dead := deadHost()
	out, errOut := wantExit(t, dsmrun("ps", "--json", "--hosts", addr(1)+","+dead), 6)
	var jobs []jobInfo
	if err := json.Unmarshal([]byte(out), &jobs); err != nil {
		t.Errorf("dsmrun ps --json with a host down printed no list: %v\n%s", err, out)
	}
	if !strings.Contains(errOut, dead) {
		t.Errorf("dsmrun ps does not name the host that did not answer:\n%s", errOut)
	}
	if _, errOut := wantExit(t, dsmrun("ps", "--hosts", dead), 6); !strings.Contains(errOut, dead) {
		t.Errorf("dsmrun ps with every host down does not name it:\n%s", errOut)
	}
	if _, errOut := wantExit(t, dsmrun("history", "--hosts", addr(1)+","+dead), 6); !strings.Contains(errOut, dead) {
		t.Errorf("dsmrun history does not name the host that did not answer:\n%s", errOut)
	}
}
