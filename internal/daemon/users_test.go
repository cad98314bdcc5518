package daemon

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"dsmigrate/internal/api"
)

// dialCommand is the test binary's extra command (TestMain) that plays a
// local client: `dial SOCKET REQUEST-JSON` prints what the daemon answers
// (log data, then the reply's JSON) or its error on stderr, exit 1.
func dialCommand() int {
	var req api.Request
	if len(os.Args) != 4 || json.Unmarshal([]byte(os.Args[3]), &req) != nil {
		fmt.Fprintln(os.Stderr, "usage: dial SOCKET REQUEST-JSON")
		return 2
	}
	c, err := api.DialLocal(os.Args[2])
	if err == nil {
		var rep *api.Reply
		if rep, err = c.Stream(req, os.Stdout, nil); err == nil {
			json.NewEncoder(os.Stdout).Encode(rep)
			return 0
		}
	}
	fmt.Fprintln(os.Stderr, err)
	return 1
}

const nobody = 65534

// A user on the local socket is who its peer credentials say (not who its
// request says), sees only its own processes and migrations, finds another
// user's process nowhere (not even as an ambiguous name), and may not
// change addresses; root sees everything. The client is a real process
// running as nobody.
func TestLocalCallerIsItsCredentials(t *testing.T) {
	needRoot(t)
	d := testDaemon(t, t.TempDir())
	dir := t.TempDir()
	for _, p := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	logPath := filepath.Join(dir, "log")
	if err := os.WriteFile(logPath, []byte("nobody's output\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	proc := func(id, name string, uid uint32) *Proc {
		p := newProc(id, name, []string{"x"}, time.Now())
		p.Owner, p.state, p.logPath = api.Owner{UID: uid, GID: uid}, "exited", logPath
		d.procs[id] = p
		return p
	}
	proc("aaaaaaaaaaaa", "job", nobody)
	proc("bbbbbbbbbbbb", "roots", 0)
	proc("cccccccccccc", "job", 1234) // the same name as nobody's
	d.records = []MigrationRec{{ID: "aaaaaaaaaaaa", UID: nobody}, {ID: "bbbbbbbbbbbb"}, {ID: "cccccccccccc", UID: 1234}}

	sock := filepath.Join(dir, "d.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	os.Chmod(sock, 0o666)
	go d.acceptLoop(l, d.handleLocal)

	// The test binary as nobody can run it (go test builds in a 0700 directory).
	exe := filepath.Join(dir, "daemon.test")
	if bin, err := os.ReadFile(os.Args[0]); err != nil || os.WriteFile(exe, bin, 0o755) != nil {
		t.Fatalf("copying the test binary: %v", err)
	}
	asNobody := func(req api.Request) (string, error) {
		b, _ := json.Marshal(req)
		cmd := exec.Command(exe, "dial", sock, string(b))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			return out.String(), fmt.Errorf("%v: %s", err, strings.TrimSpace(errb.String()))
		}
		return out.String(), nil
	}

	out, err := asNobody(api.Request{Op: "ps"})
	if err != nil {
		t.Fatal(err)
	}
	var rep api.Reply
	json.Unmarshal([]byte(out), &rep)
	if len(rep.Procs) != 1 || rep.Procs[0].ID != "aaaaaaaaaaaa" || rep.Procs[0].UID != nobody {
		t.Errorf("nobody's ps: %+v, want its own process only", rep.Procs)
	}
	out, err = asNobody(api.Request{Op: "history"})
	rep = api.Reply{}
	json.Unmarshal([]byte(out), &rep)
	if err != nil || len(rep.Records) != 1 || rep.Records[0].ID != "aaaaaaaaaaaa" {
		t.Errorf("nobody's history: %+v (%v), want its own migration only", rep.Records, err)
	}
	// Its own process by name: another user's of the same name is not there.
	if out, err := asNobody(api.Request{Op: "logs", ID: "job"}); err != nil || !strings.HasPrefix(out, "nobody's output\n") {
		t.Errorf("nobody's logs of its own process: %q, %v", out, err)
	}
	for _, req := range []api.Request{{Op: "logs", ID: "bbbbbbbbbbbb"}, {Op: "kill", ID: "roots"},
		{Op: "follow", ID: "cccc"}, {Op: "migrate", ID: "cccccccccccc", To: "127.0.0.1:1"}} {
		if _, err := asNobody(req); err == nil || !strings.Contains(err.Error(), "no process") {
			t.Errorf("nobody's %s of another's process %s: %v, want no process", req.Op, req.ID, err)
		}
	}
	for _, req := range []api.Request{{Op: "addip", MoveIP: "10.77.0.250/24"}, {Op: "delip", MoveIP: "10.77.0.250/24"},
		{Op: "migrate", ID: "job", To: "127.0.0.1:1", MoveIP: "10.77.0.250/24"}} {
		if _, err := asNobody(req); err == nil || !strings.Contains(err.Error(), "root's alone") {
			t.Errorf("nobody's %s %s: %v, want root's alone", req.Op, req.MoveIP, err)
		}
	}
	// Claiming to be root in the request changes nothing.
	if _, err := asNobody(api.Request{Op: "ps", Owner: &api.Owner{}}); err == nil || !strings.Contains(err.Error(), "names no owner") {
		t.Errorf("a local request naming its owner: %v, want it refused", err)
	}
	if d.lookup("bbbbbbbbbbbb") == nil {
		t.Error("nobody's kill removed root's process")
	}
	// Root sees all three.
	if r, err := d.do(nil, Request{Op: "ps"}, api.Owner{}); err != nil || len(r.Procs) != 3 {
		t.Errorf("root's ps: %v, %v, want 3 processes", r, err)
	}
	if _, err := d.getFor("job", api.Owner{}); err == nil || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("root's job: %v, want ambiguous (two users' processes share the name)", err)
	}
}

// peerOwner reads the groups as well: the test's own, over a socket pair.
func TestPeerOwnerGroups(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	f0, f1 := os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
	defer f1.Close()
	c, err := net.FileConn(f0)
	f0.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	o, err := peerOwner(c)
	if err != nil {
		t.Fatal(err)
	}
	groups, _ := os.Getgroups()
	got := make([]int, len(o.Groups))
	for i, g := range o.Groups {
		got[i] = int(g)
	}
	slices.Sort(got)
	slices.Sort(groups)
	if o.UID != uint32(os.Getuid()) || o.GID != uint32(os.Getgid()) || !slices.Equal(got, groups) {
		t.Errorf("peerOwner = %+v, want uid %d gid %d groups %v", o, os.Getuid(), os.Getgid(), groups)
	}
}

// A user's process runs as it, and a restarted daemon knows its owner.
func TestReattachKeepsOwner(t *testing.T) {
	needRoot(t)
	state := t.TempDir()
	d1 := testDaemon(t, state)
	owner := api.Owner{UID: nobody, GID: nobody, Groups: []uint32{nobody}}
	id := newID()
	p1, err := d1.launchAs(id, "sleeper", owner, []string{"sleep", "300"}, []string{"PATH=/usr/bin:/bin"}, "/", nil)
	if err != nil {
		t.Fatal(err)
	}
	cleanupProc(t, p1)
	d1.register(p1)
	var uids string
	waitFor(t, "the workload as nobody", func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p1.info().PID))
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "Uid:") {
				uids = strings.Join(strings.Fields(l)[1:], " ")
			}
		}
		return uids == "65534 65534 65534 65534"
	})
	d2 := testDaemon(t, state)
	if err := d2.reattach(); err != nil {
		t.Fatal(err)
	}
	p2 := d2.lookup(id)
	if p2 != nil {
		cleanupProc(t, p2) // its watcher too writes the record at the end
	}
	if p2 == nil || p2.Owner.UID != nobody || p2.Owner.GID != nobody || len(p2.Owner.Groups) != 1 {
		t.Fatalf("after a restart the process is %+v, want nobody's", p2)
	}
	if procs := d2.list(api.Owner{UID: nobody}); len(procs) != 1 || procs[0].UID != nobody {
		t.Errorf("nobody's ps after a restart: %+v", procs)
	}
	// Both daemons' watchers write the record of the end: let them, before
	// the state directory goes.
	killTree(p2)
	for _, p := range []*Proc{p1, p2} {
		select {
		case <-p.gone:
		case <-time.After(10 * time.Second):
			t.Errorf("the watcher of process %s did not end", p.ID)
		}
	}
}
