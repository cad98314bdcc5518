package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// dsmrun runs dsmrun here (not on a host) against the first three hosts.
func dsmrun(args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(repo, "bin", "dsmrun"), args...)
	hosts := strings.Join([]string{addr(1), addr(2), addr(3)}, ",")
	cmd.Env = append(os.Environ(), "MIGRATED_HOSTS="+hosts)
	return cmd
}

// Every example verifies its result under dsmrun with 2, 3 and 4 ranks over
// three hosts.
func TestDSMExamples(t *testing.T) {
	needHosts(t, 3)
	for _, ex := range []string{"jacobi", "tsp", "matmul", "isort"} {
		for _, n := range []int{2, 3, 4} {
			t.Run(fmt.Sprintf("%s-%d", ex, n), func(t *testing.T) {
				guardHosts(t) // one case's leftovers never fail the next
				j := startJob(t, n, filepath.Join(repo, "bin", ex))
				j.wait()
				// This job's ranks, not another test's leftovers.
				for k := 1; k <= 3; k++ {
					for _, p := range ps(t, k) {
						if strings.HasPrefix(p.Name, j.id+".r") && p.State == "running" {
							t.Errorf("rank process %s still running on h%d after the job", p.Name, k)
						}
					}
				}
			})
		}
	}
}

// A failing rank stops the job: dsmrun exits non-zero and leaves nothing running.
func TestDSMRankFailureStopsJob(t *testing.T) {
	needHosts(t, 3)
	// jacobi with a bad flag exits non-zero on every rank; sleep keeps the
	// others alive: use a program that fails on rank 1 only.
	script := filepath.Join(hostDir(t, map[string][]byte{
		"fail1.sh": []byte("#!/bin/sh\nif [ \"$DSM_RANK\" = 1 ]; then echo rank1 fails; exit 3; fi\nexec sleep 600\n"),
	}), "fail1.sh")
	cmd := dsmrun("run", "-n", "3", "--", script)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	job := jobID(errb.String())
	t.Cleanup(func() { killJob(job) }) // if dsmrun did not stop them
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Fatalf("dsmrun exit: %v, want status 3\n%s%s", err, out.String(), errb.String())
	}
	if !strings.Contains(out.String(), "[1] rank1 fails") {
		t.Errorf("rank output not prefixed: %q", out.String())
	}
	if job == "" {
		t.Fatalf("dsmrun did not print the job ID on stderr:\n%s", errb.String())
	}
	deadline := within(10 * time.Second)
	for {
		var left []string
		for k := 1; k <= 3; k++ {
			for _, p := range ps(t, k) {
				if p.State == "running" && strings.HasPrefix(p.Name, job+".r") {
					left = append(left, fmt.Sprintf("h%d:%s", k, p.Name))
				}
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ranks left running after a failed job: %v", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dsmrun ps --json lists a running job with each rank's host.
func TestDSMPs(t *testing.T) {
	needHosts(t, 3)
	script := filepath.Join(hostDir(t, map[string][]byte{"sleep.sh": []byte("#!/bin/sh\nexec sleep 600\n")}), "sleep.sh")
	j := startJob(t, 4, script)
	jobs, out := psJobs(t, dsmrun("ps", "--json"))
	for _, jb := range jobs {
		if jb.ID != j.id {
			continue
		}
		if len(jb.Ranks) != 4 {
			t.Fatalf("job %s has %d ranks, want 4: %s", j.id, len(jb.Ranks), out)
		}
		for i, r := range jb.Ranks {
			if r.Rank != i || r.Host != addr(i%3+1) || r.State != "running" {
				t.Fatalf("rank %d: %+v, want on %s running", i, r, addr(i%3+1))
			}
		}
		return
	}
	t.Fatalf("job %s not in dsmrun ps: %s", j.id, out)
}

// jobInfo is a job as `dsmrun ps --json` prints it.
type jobInfo struct {
	ID    string     `json:"id"`
	Ranks []rankInfo `json:"ranks"`
}

type rankInfo struct {
	Rank   int    `json:"rank"`
	Host   string `json:"host"`
	State  string `json:"state"`
	ProcID string `json:"proc_id"`
}

// psJobs runs a `dsmrun ps --json` command and decodes what it prints.
func psJobs(t *testing.T, cmd *exec.Cmd) ([]jobInfo, []byte) {
	t.Helper()
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	var jobs []jobInfo
	if err := json.Unmarshal(out, &jobs); err != nil {
		t.Fatalf("dsmrun ps --json: %v\n%s", err, out)
	}
	return jobs, out
}
