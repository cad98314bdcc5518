package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"dsmigrate/criu"
	"dsmigrate/internal/api"
	"dsmigrate/internal/placement"
)

// A token file is checked as the daemon loads it, and each failure names
// the command that fixes it.
func TestTokenFileCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := "c2VjcmV0IHNlY3JldCBzZWNyZXQgc2VjcmV0IHNlY3JldA==\n"
	open := write("open", good, 0o644)
	short := write("short", "abc\n", 0o600)
	fine := write("fine", good, 0o600)
	rotating := write("rotating", good+"bmV3IHNlY3JldCBuZXcgc2VjcmV0IG5ldyBzZWNyZXQ=\n", 0o600)
	missing := filepath.Join(dir, "missing")
	cases := []struct {
		path, status, msg, fix string
	}{
		{"", api.CheckFailed, "without --token-file", "head -c 32 /dev/urandom | base64 > /etc/migrated/token"},
		{missing, api.CheckFailed, "does not exist", "head -c 32 /dev/urandom | base64 > " + missing},
		{dir, api.CheckFailed, "not a regular file", "rm -r " + dir},
		{open, api.CheckFailed, "mode 0644", "chmod 600 " + open},
	}
	if os.Geteuid() == 0 {
		cases = append(cases, []struct{ path, status, msg, fix string }{
			{short, api.CheckFailed, "token too short", "base64 > " + short},
			{fine, api.CheckOK, "one token, root's only (mode 0600)", ""},
			{rotating, api.CheckOK, "2 tokens (a rotation", ""},
		}...)
	} else {
		cases = append(cases, struct{ path, status, msg, fix string }{fine, api.CheckFailed, "owned by uid", "chown root: " + fine})
	}
	for _, tc := range cases {
		c := TokenFileCheck(tc.path)
		if c.Name != "token file" || c.Status != tc.status || !strings.Contains(c.Message, tc.msg) || !strings.Contains(c.Fix, tc.fix) {
			t.Errorf("TokenFileCheck(%q) = %+v\nwant status %s, message with %q, fix with %q", tc.path, c, tc.status, tc.msg, tc.fix)
		}
	}
}

// maxFit is the largest process the admission (need) takes in a given
// amount of free memory.
func TestMaxFit(t *testing.T) {
	for _, free := range []int64{-1, 0, admitSlackMin, admitSlackMin + 1, 100 << 20, 144 << 20, 145 << 20, 1 << 30,
		(1 << 30) + 12345, 24 << 30} {
		m := maxFit(free)
		if m == 0 {
			if free > admitSlackMin {
				t.Errorf("maxFit(%d) = 0", free)
			}
			continue
		}
		if placement.Held(m) > free || placement.Held(m+9) <= free {
			t.Errorf("maxFit(%d) = %d: Held(%d) = %d, Held(+9) = %d", free, m, m, placement.Held(m), placement.Held(m+9))
		}
	}
}

func TestMemoryCheck(t *testing.T) {
	const mi = 1 << 20
	c := memoryCheck("h2:7077", api.DaemonInfo{MemAvailableBytes: 2048 * mi, KeepFreeBytes: 256 * mi, HeldBytes: 256 * mi,
		ImagesFreeBytes: 4096 * mi})
	if c.Status != api.CheckOK || !strings.Contains(c.Message, "1536 MiB free for arriving processes (2048 MiB available, "+
		"256 MiB kept free by --keep-free, 256 MiB held by arriving migrations)") || !strings.Contains(c.Message, "up to about 1365 MiB") {
		t.Errorf("room: %+v", c)
	}
	c = memoryCheck("h2:7077", api.DaemonInfo{MemAvailableBytes: 200 * mi, KeepFreeBytes: 256 * mi, ImagesFreeBytes: 4096 * mi})
	if c.Status != api.CheckFailed || !strings.Contains(c.Message, "no room: 0 MiB free") || !strings.Contains(c.Fix, "--keep-free") {
		t.Errorf("no memory: %+v", c)
	}
	c = memoryCheck("h2:7077", api.DaemonInfo{MemAvailableBytes: 2048 * mi, ImagesFreeBytes: 2 * mi})
	if c.Status != api.CheckFailed || !strings.Contains(c.Fix, "--images-size") {
		t.Errorf("images tmpfs full: %+v", c)
	}
}

// A daemon's identity is kept in its state directory: the same every time
// it is asked, another for another state directory.
func TestDaemonID(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	ida, err := daemonID(a)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := daemonID(a); err != nil || again != ida || len(ida) != 32 {
		t.Fatalf("daemonID(a) = %q then %q, %v", ida, again, err)
	}
	if idb, _ := daemonID(b); idb == ida {
		t.Fatalf("two state directories, one identity %s", ida)
	}
	os.WriteFile(filepath.Join(b, daemonIDFile), []byte("garbage\n"), 0o644)
	if _, err := daemonID(b); err == nil || !strings.Contains(err.Error(), "remove it") {
		t.Fatalf("a damaged identity: %v", err)
	}
	x := api.DaemonInfo{ID: ida, MachineID: "m", BootID: "b"}
	for _, y := range []api.DaemonInfo{{ID: "other", MachineID: "m", BootID: "b"}, {ID: ida, MachineID: "m", BootID: "c"},
		{ID: ida, MachineID: "n", BootID: "b"}} {
		if x.SameDaemon(y) {
			t.Errorf("SameDaemon(%+v, %+v)", x, y)
		}
	}
	if !x.SameDaemon(x) || (api.DaemonInfo{}).SameDaemon(api.DaemonInfo{}) {
		t.Error("sameDaemon")
	}
}

// peerDaemon is a daemon serving peers on TCP (all of this machine's
// addresses, port chosen by the kernel) with token tok (nil: none), its
// advertised address on 127.0.0.1, and CRIU nowhere.
func peerDaemon(t *testing.T, tok []byte) *Daemon {
	t.Helper()
	dir := t.TempDir()
	d := &Daemon{stateDir: dir, imagesDir: filepath.Join(dir, "images"), procs: map[string]*Proc{},
		launching: map[string]chan struct{}{}, naming: map[string]nameOf{}, criu: criu.New(filepath.Join(dir, "no-criu")),
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if tok != nil {
		d.token.Store(&tok)
	}
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	_, port, _ := net.SplitHostPort(l.Addr().String())
	d.listen, d.advertise = l.Addr().String(), "127.0.0.1:"+port
	if d.engine, err = d.newEngine(); err != nil {
		t.Fatal(err)
	}
	go d.acceptPeers(l, d.handlePeer)
	return d
}

func findCheck(t *testing.T, checks []api.Check, name string) api.Check {
	t.Helper()
	for _, c := range checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no check %q in %+v", name, checks)
	return api.Check{}
}

// A target is checked through the real daemons' protocol: reachable,
// authenticated with the token, not this daemon (by any address), and
// accepting migrations by its own host checks; and this daemon, reached by
// another of its addresses, is found to be itself.
func TestCheckTarget(t *testing.T) {
	tok := []byte("a token long enough for the cluster")
	src, dst := peerDaemon(t, tok), peerDaemon(t, tok)
	_, srcPort, _ := net.SplitHostPort(src.advertise)
	selfOther := "127.0.0.2:" + srcPort // this daemon, at an address it does not advertise
	ctx := context.Background()
	self, err := src.info()
	if err != nil {
		t.Fatal(err)
	}

	target, checks := src.checkTarget(ctx, dst.advertise, self, api.Owner{})
	if target == nil || target.Advertise != dst.advertise {
		t.Fatalf("target %+v, checks %+v", target, checks)
	}
	for _, name := range []string{"target reachable", "target authenticated", "target not this host"} {
		if c := findCheck(t, checks, name); c.Status != api.CheckOK {
			t.Errorf("%s: %+v", name, c)
		}
	}
	if c := findCheck(t, checks, "target not this host"); !strings.Contains(c.Message, "on this machine") {
		t.Errorf("a daemon of this machine: %+v", c)
	}
	// Its CRIU is nowhere and it has no token file: it refuses migrations.
	if c := findCheck(t, checks, "target accepting migrations"); c.Status != api.CheckFailed ||
		!strings.Contains(c.Message, "criu binary: no CRIU at") || !strings.Contains(c.Fix, "install-deps.sh") {
		t.Errorf("accepting: %+v", c)
	}
	findCheck(t, checks, "target memory")

	for _, addr := range []string{src.advertise, selfOther} {
		_, checks = src.checkTarget(ctx, addr, self, api.Owner{})
		if c := findCheck(t, checks, "target not this host"); c.Status != api.CheckFailed ||
			!strings.Contains(c.Message, addr+" is this host") {
			t.Errorf("%s: %+v", addr, c)
		}
	}

	// Nothing listens.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nothing := l.Addr().String()
	l.Close()
	_, checks = src.checkTarget(ctx, nothing, self, api.Owner{})
	if c := findCheck(t, checks, "target reachable"); c.Status != api.CheckFailed || !strings.Contains(c.Message, "unreachable") ||
		!strings.Contains(c.Fix, "migrated serve --listen "+nothing) || len(checks) != 1 {
		t.Errorf("nothing there: %+v", checks)
	}

	// Another token there, none there, none here.
	other := peerDaemon(t, []byte("another token, long enough too"))
	_, checks = src.checkTarget(ctx, other.advertise, self, api.Owner{})
	if c := findCheck(t, checks, "target authenticated"); c.Status != api.CheckFailed ||
		!strings.Contains(c.Message, "different tokens") || !strings.Contains(c.Fix, "copy this host's token file") {
		t.Errorf("another token: %+v", c)
	}
	none := peerDaemon(t, nil)
	_, checks = src.checkTarget(ctx, none.advertise, self, api.Owner{})
	if c := findCheck(t, checks, "target authenticated"); c.Status != api.CheckFailed ||
		!strings.Contains(c.Message, "without a token") {
		t.Errorf("no token there: %+v", c)
	}
	_, checks = none.checkTarget(ctx, dst.advertise, self, api.Owner{})
	if c := findCheck(t, checks, "target authenticated"); c.Status != api.CheckFailed ||
		!strings.Contains(c.Message, "this daemon has no --token-file") {
		t.Errorf("no token here: %+v", c)
	}
	_, checks = src.checkTarget(ctx, "nonsense", self, api.Owner{})
	if c := findCheck(t, checks, "target reachable"); c.Status != api.CheckFailed || !strings.Contains(c.Message, "want ADDR:PORT") {
		t.Errorf("bad address: %+v", c)
	}
}

// A local client's check request reaches the daemon's check (daemon.go's
// do), which checks its host and the target.
func TestCheckRequest(t *testing.T) {
	tok := []byte("a token long enough for the cluster")
	src, dst := peerDaemon(t, tok), peerDaemon(t, tok)
	sock := filepath.Join(t.TempDir(), "d.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go src.acceptLoop(l, src.handleLocal)
	c, err := api.DialLocal(sock)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := c.Do(api.Request{Op: "check", To: dst.advertise})
	if err != nil {
		t.Fatal(err)
	}
	r := rep.Check
	if r == nil || r.Target == nil || r.Target.ID == r.Daemon.ID || r.Daemon.Advertise != src.advertise {
		t.Fatalf("reply %+v", rep)
	}
	for _, name := range []string{"daemon address", "criu binary", "kernel pid namespaces", "sysctl fs.pipe-max-size",
		"nftables", "tini", "token file", "target reachable", "target authenticated", "target not this host",
		"target accepting migrations", "target memory"} {
		findCheck(t, r.Checks, name)
	}
	if c := findCheck(t, r.Checks, "token file"); c.Status != api.CheckFailed {
		t.Errorf("a daemon without --token-file: %+v", c)
	}
	if !api.Failed(r.Checks) {
		t.Error("api.Failed: false")
	}
}
