// Package integration runs the toolkit on a namespace cluster (cluster.sh):
// real daemons, real CRIU, real processes and sockets. It needs root; without
// it the tests skip.
package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	repo     string
	cluster  string
	hostsEnv string
	nHosts   = 4
)

func TestMain(m *testing.M) {
	_, file, _, _ := runtime.Caller(0)
	repo = filepath.Join(filepath.Dir(file), "..", "..")
	cluster = filepath.Join(repo, "test", "integration", "cluster.sh")
	if os.Geteuid() != 0 {
		fmt.Println("integration tests need root: skipped")
		os.Exit(m.Run())
	}
	build := exec.Command("go", "build", "-o", filepath.Join(repo, "bin")+"/", "./cmd/...", "./test/integration/migtest", "./examples/...")
	build.Dir, build.Stdout, build.Stderr = repo, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Println("build failed:", err)
		os.Exit(1)
	}
	up := exec.Command(cluster, "up", strconv.Itoa(nHosts))
	up.Stdout, up.Stderr = os.Stderr, os.Stderr
	if err := up.Run(); err != nil {
		fmt.Println("cluster up failed:", err)
		exec.Command(cluster, "down").Run()
		os.Exit(1)
	}
	out, err := exec.Command(cluster, "env").Output()
	if err != nil {
		fmt.Println("cluster env failed:", err)
		os.Exit(1)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			os.Setenv(k, v)
			if k == "MIGRATED_HOSTS" {
				hostsEnv = v
			}
		}
	}
	code := m.Run()
	if os.Getenv("KEEP_CLUSTER") == "" {
		down := exec.Command(cluster, "down")
		down.Stdout, down.Stderr = os.Stderr, os.Stderr
		if err := down.Run(); err != nil {
			fmt.Println("cluster down failed:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root and the namespace cluster")
	}
}

// addr is the daemon address of host hK.
func addr(k int) string { return fmt.Sprintf("10.77.0.%d:7077", k) }

// on runs a command inside host hK and returns its stdout; stderr goes into
// the error.
func on(k int, args ...string) (string, error) {
	cmd := exec.Command(cluster, append([]string{"exec", fmt.Sprintf("h%d", k)}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s on h%d: %v: %s%s", strings.Join(args, " "), k, err, errb.String(), out.String())
	}
	return out.String(), nil
}

func mustOn(t *testing.T, k int, args ...string) string {
	t.Helper()
	out, err := on(k, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// start launches a workload on hK and returns its ID; it is killed when the
// test ends, wherever it then is.
func start(t *testing.T, k int, name string, argv ...string) string {
	t.Helper()
	out := mustOn(t, k, append([]string{"migrated", "run", "--name", name, "--"}, argv...)...)
	id := strings.TrimSpace(out)
	if !regexp.MustCompile(`^[0-9a-f]{12}$`).MatchString(id) {
		t.Fatalf("migrated run printed %q, want an ID", out)
	}
	t.Cleanup(func() {
		for h := 1; h <= nHosts; h++ {
			on(h, "migrated", "kill", id)
		}
	})
	return id
}

type procInfo struct {
	ID, Name, State string
	PID             int
}

func ps(t *testing.T, k int) []procInfo {
	t.Helper()
	var out []procInfo
	if err := json.Unmarshal([]byte(mustOn(t, k, "migrated", "ps", "--json")), &out); err != nil {
		t.Fatalf("ps --json on h%d: %v", k, err)
	}
	return out
}

func find(t *testing.T, k int, id string) *procInfo {
	for _, p := range ps(t, k) {
		if p.ID == id {
			return &p
		}
	}
	return nil
}

func logs(t *testing.T, k int, id string) string {
	t.Helper()
	return mustOn(t, k, "migrated", "logs", id)
}

// waitLog waits until the log of id on hK matches re at least n times more
// than it did when called, and returns the log.
func waitLog(t *testing.T, k int, id, re string, n int) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	before := len(rx.FindAllString(logs(t, k, id), -1))
	deadline := time.Now().Add(60 * time.Second)
	for {
		l := logs(t, k, id)
		if len(rx.FindAllString(l, -1)) >= before+n {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("log of %s on h%d: %q did not appear %d more times; log tail:\n%s", id, k, re, n, tail(l, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// migrate moves id from hFrom to hTo and checks that the target lists it
// under the same ID and name, and the source no longer does.
func migrate(t *testing.T, from, to int, id string, extra ...string) string {
	t.Helper()
	name := find(t, from, id)
	if name == nil {
		t.Fatalf("%s is not on h%d", id, from)
	}
	out, err := on(from, "sh", "-c", "exec 2>&1; exec migrated migrate "+id+" --to "+addr(to)+" "+strings.Join(extra, " "))
	if err != nil {
		t.Fatalf("migrate %s h%d -> h%d: %v", id, from, to, err)
	}
	got := find(t, to, id)
	if got == nil || got.Name != name.Name || got.State != "running" {
		t.Fatalf("after migrating to h%d, ps there shows %+v; want %s %s running", to, got, id, name.Name)
	}
	if p := find(t, from, id); p != nil {
		t.Fatalf("after migrating away, h%d still lists %+v", from, p)
	}
	return out
}

// checkConsecutive checks that the numbers after prefix in log run 0, step, 2*step...
// with no gap and no repeat: nothing lost, nothing done twice.
func checkConsecutive(t *testing.T, log, prefix string, step int) int {
	t.Helper()
	next := 0
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), prefix)
		if !ok {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(rest))
		if err != nil {
			t.Fatalf("bad line %q", sc.Text())
		}
		if n != next {
			t.Fatalf("%s: got %d, want %d (a gap or a repeat)", prefix, n, next)
		}
		next += step
	}
	return next
}
