package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// testUser is the unprivileged user the tests act as, otherUser another
// one: made on every host with one uid if they are not there (and removed
// at the end), as a cluster's users are.
const (
	testUser  = "dsmigrate-t"
	otherUser = "dsmigrate-o"
)

// needUser returns user's uid, making the user where it is missing.
func needUser(t *testing.T, user string) string {
	t.Helper()
	uid := ""
	for k := 1; k <= nHosts; k++ {
		out, err := on(k, "id", "-u", user)
		if err == nil {
			if got := strings.TrimSpace(out); uid != "" && got != uid {
				t.Fatalf("%s has uid %s on h%d and %s on h1: a user needs one uid on every host", user, got, k, uid)
			} else {
				uid = got
			}
			continue
		}
		args := []string{"useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group"}
		if uid != "" {
			args = append(args, "--uid", uid)
		}
		if _, err := on(k, append(args, user)...); err != nil {
			t.Fatal(err)
		}
		// Last cleanup to run: the user's processes are gone by then.
		t.Cleanup(func() {
			if _, err := on(k, "userdel", user); err != nil {
				t.Errorf("removing the test user: %v", err)
			}
		})
		if uid == "" {
			uid = strings.TrimSpace(mustOn(t, k, "id", "-u", user))
		}
	}
	return uid
}

// asUser runs a command on hK as the test user, in dir.
func asUser(k int, dir string, args ...string) (string, error) { return as(testUser, k, dir, args...) }

// as runs a command on hK as user, in dir.
func as(user string, k int, dir string, args ...string) (string, error) {
	return on(k, append([]string{"setpriv", "--reuid=" + user, "--regid=" + user, "--init-groups", "--",
		"sh", "-c", `cd "$0" && exec "$@"`, dir}, args...)...)
}

// procStatus is the lines of /proc/PID/status on hK whose field is one of
// fields, as "Field: values" with single spaces.
func procStatus(t *testing.T, k, pid int, fields ...string) map[string]string {
	t.Helper()
	out := mustOn(t, k, "cat", fmt.Sprintf("/proc/%d/status", pid))
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		for _, want := range fields {
			if len(f) > 0 && f[0] == want+":" {
				m[want] = strings.Join(f[1:], " ")
			}
		}
	}
	return m
}

// A user who is not root uses migrated and dsmrun on hosts whose daemons
// run as root: its processes run as it (on every host, DSM ranks
// included, with no cluster token: its daemon passes its requests on); it
// sees and acts on its own processes only; address changes stay root's.
// Moving its process keeps its uid, gid, groups and (no) capabilities; on a
// host whose root lacks CAP_SYS_RESOURCE (CRIU needs it to dump another
// user's process) the move is refused before anything is touched and the
// process runs on.
func TestUsers(t *testing.T) {
	needHosts(t, 3)
	guardHosts(t)
	uid := needUser(t, testUser)
	needUser(t, otherUser)
	files := map[string][]byte{}
	for _, b := range []string{"migrated", "dsmrun", "jacobi"} {
		bin, err := os.ReadFile(filepath.Join(repo, "bin", b))
		if err != nil {
			t.Fatal(err)
		}
		files[b] = bin
	}
	dir := hostDir(t, files) // the user's working directory and programs
	for k := 1; k <= nHosts; k++ {
		mustOn(t, k, "chmod", "755", filepath.Dir(dir), dir)
	}
	bin := func(name string) string { return filepath.Join(dir, name) }

	rootID := start(t, 1, "root-sleeper", "sleep", "600")
	out, err := as(otherUser, 1, dir, bin("migrated"), "run", "--name", "other-sleeper", "--", "sleep", "600")
	if err != nil {
		t.Fatal(err)
	}
	otherID := strings.TrimSpace(out)
	t.Cleanup(func() { on(1, "migrated", "kill", otherID) })
	out, err = asUser(1, dir, bin("migrated"), "run", "--name", "user-ticker", "--",
		"sh", "-c", `i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 0.05; done`)
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(out)
	t.Cleanup(func() {
		for h := 1; h <= nHosts; h++ {
			on(h, "migrated", "kill", id)
		}
	})
	waitLog(t, 1, id, `tick \d+`, 5)

	// What the user sees: its own process, with its uid.
	var mine []struct {
		ID  string
		PID int
		UID int
	}
	out, err = asUser(1, dir, bin("migrated"), "ps", "--json")
	if err != nil || json.Unmarshal([]byte(out), &mine) != nil || len(mine) != 1 || mine[0].ID != id ||
		fmt.Sprint(mine[0].UID) != uid {
		t.Fatalf("the user's ps: %s (%v), want its process %s alone, uid %s", out, err, id, uid)
	}
	if p := find(t, 1, rootID); p == nil {
		t.Fatal("root's ps does not list root's own process")
	}
	if p := find(t, 1, id); p == nil {
		t.Fatal("root's ps does not list the user's process")
	}
	// It runs as the user, with no capabilities; its init stays root's.
	st := procStatus(t, 1, mine[0].PID, "Uid", "Gid", "Groups", "CapEff", "CapPrm", "CapBnd", "PPid")
	if st["Uid"] != strings.Repeat(uid+" ", 3)+uid || st["CapEff"] != "0000000000000000" || st["CapPrm"] != "0000000000000000" {
		t.Errorf("the user's process: %v, want uid %s everywhere and no capabilities", st, uid)
	}

	// Root's process and another user's are nowhere for the user.
	for _, other := range []string{rootID, otherID} {
		for _, cmd := range [][]string{{"logs", other}, {"kill", other}, {"migrate", other, "--to", addr(2)}} {
			if _, err := asUser(1, dir, append([]string{bin("migrated")}, cmd...)...); err == nil ||
				!strings.Contains(err.Error(), "no process") {
				t.Errorf("the user's %s of another's process %s: %v, want no process", cmd[0], other, err)
			}
		}
		if p := find(t, 1, other); p == nil || p.State != "running" {
			t.Fatalf("another's process %s after the user's attempts: %+v", other, p)
		}
	}

	// Its own process moves, as it, or stays where it is when this host
	// cannot dump another user's process.
	out, err = asUser(1, dir, bin("migrated"), "migrate", id, "--to", addr(2))
	switch {
	case err != nil && strings.Contains(err.Error(), "CAP_SYS_RESOURCE"):
		t.Logf("this host's root lacks CAP_SYS_RESOURCE: the move was refused (%v)", err)
		if p := find(t, 1, id); p == nil || p.State != "running" {
			t.Fatalf("after the refused move the process is %+v on h1, want running", p)
		}
		waitLog(t, 1, id, `tick \d+`, 5)
	case err != nil:
		t.Fatalf("the user's migrate: %v\n%s", err, out)
	default:
		p := find(t, 2, id)
		if p == nil || p.State != "running" {
			t.Fatalf("after the move the process is %+v on h2, want running", p)
		}
		st2 := procStatus(t, 2, p.PID, "Uid", "Gid", "Groups", "CapEff", "CapPrm", "CapBnd")
		for f, v := range st { // all but PPid, which differs on every host
			if f != "PPid" && st2[f] != v {
				t.Errorf("%s after the move: %q, want %q as before", f, st2[f], v)
			}
		}
		out, err := asUser(2, dir, bin("migrated"), "logs", id)
		if err != nil || !regexp.MustCompile(`tick \d+\n$`).MatchString(out) {
			t.Errorf("the user's logs on h2: %v\n%s", err, tail(out, 3))
		}
		out, err = asUser(1, dir, bin("migrated"), "history", "--json")
		if err != nil || !strings.Contains(out, id) {
			t.Errorf("the user's history on h1 lacks its move: %v\n%s", err, out)
		}
	}

	// A DSM job, launched by the user with no token it could read: the
	// ranks run as it on every host, and it verifies.
	hosts := strings.Join([]string{addr(1), addr(2), addr(3)}, ",")
	var mu sync.Mutex
	var jobOut bytes.Buffer
	cmd := exec.Command(cluster, "exec", "h1", "setpriv", "--reuid="+testUser, "--regid="+testUser, "--init-groups", "--",
		"sh", "-c", `cd "$0" && exec "$@" 2>&1`, dir, "env", "MIGRATED_TOKEN_FILE="+tokenOn, bin("dsmrun"), "run",
		"--hosts", hosts, "-n", "3", "--policy", "round-robin", "--", bin("jacobi"), "-n", "256", "-iters", fmt.Sprint(int(2000/slow)))
	cmd.Stdout = lockedBuf{&mu, &jobOut}
	output := func() string { mu.Lock(); defer mu.Unlock(); return jobOut.String() }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	job := ""
	t.Cleanup(func() {
		killJob(job) // its ranks gone, dsmrun ends
		select {
		case <-done:
		case <-time.After(scaled(15 * time.Second)):
			cmd.Process.Kill()
			<-done
		}
	})
	for end := within(30 * time.Second); job == ""; time.Sleep(25 * time.Millisecond) {
		if job = jobID(output()); job == "" && time.Now().After(end) {
			t.Fatalf("the user's dsmrun printed no job ID:\n%s", output())
		}
	}
	for k := 1; k <= 3; k++ {
		var procs []struct {
			Name, State string
			UID         int
		}
		json.Unmarshal([]byte(mustOn(t, k, "migrated", "ps", "--json")), &procs)
		found := 0
		for _, p := range procs {
			if strings.HasPrefix(p.Name, job+".r") {
				found++
				if fmt.Sprint(p.UID) != uid {
					t.Errorf("rank %s on h%d runs as uid %d, want the user's %s", p.Name, k, p.UID, uid)
				}
			}
		}
		if found != 1 {
			t.Errorf("h%d has %d ranks of job %s, want 1: %+v", k, found, job, procs)
		}
	}
	select {
	case err := <-done:
		done <- err // for the cleanup
		if err != nil || !regexp.MustCompile(`(?m)^\[0\] result: \S+ verified$`).MatchString(output()) {
			t.Fatalf("the user's DSM job: %v\n%s", err, tail(output(), 10))
		}
	case <-time.After(scaled(5 * time.Minute)):
		t.Fatalf("the user's DSM job timed out:\n%s", tail(output(), 10))
	}

	// Addresses are root's: a job with addresses of its own is refused
	// before any rank starts.
	_, err = asUser(1, dir, bin("dsmrun"), "run", "--hosts", hosts, "-n", "2", "--rank-ips", subnetCIDR(200),
		"--", bin("jacobi"))
	if err == nil || !strings.Contains(err.Error(), "root's alone") {
		t.Errorf("the user's job with --rank-ips: %v, want address changes refused as root's alone", err)
	}
}
