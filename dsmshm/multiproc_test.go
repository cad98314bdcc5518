package dsmshm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	mrt "dsmigrate/runtime"
)

// freePorts returns n loopback peer addresses on ports that were free a
// moment ago.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	var lns []net.Listener
	for range n {
		ln, err := listenConfig().Listen(context.Background(), "tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return addrs
}

// launch runs one process per rank with the environment and the job secret
// dsmrun sets up, and returns each rank's combined output.
func launch(t *testing.T, ranks int, bin string, args ...string) []string {
	t.Helper()
	peers := strings.Join(freePorts(t, ranks), ",")
	secret := newJobSecret(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	outs := make([]string, ranks)
	errs := make([]error, ranks)
	var wg sync.WaitGroup
	for r := range ranks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.CommandContext(ctx, bin, args...)
			cmd.Env = append(os.Environ(), "DSM_JOB=test-"+filepath.Base(bin), fmt.Sprint("DSM_RANK=", r),
				fmt.Sprint("DSM_SIZE=", ranks), "DSM_PEERS="+peers)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			errs[r] = runRank(cmd, secret)
			outs[r] = out.String()
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d of %s: %v\n%s", r, filepath.Base(bin), err, outs[r])
		}
	}
	return outs
}

// TestExamplesMultiProcess builds the example programs and runs each with 4
// ranks over TCP on 127.0.0.1; rank 0 must report a verified result.
func TestExamplesMultiProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the examples; skipped with -short")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("needs the go tool to build the examples")
	}
	dir := t.TempDir()
	examples := []string{"jacobi", "matmul", "tsp", "isort"}
	build := exec.Command(goTool, "build", "-o", dir+string(filepath.Separator))
	for _, e := range examples {
		build.Args = append(build.Args, "dsmigrate/examples/"+e)
	}
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building examples: %v\n%s", err, out)
	}
	verified := regexp.MustCompile(`(?m)^result: \S+ verified$`)
	for _, e := range examples {
		t.Run(e, func(t *testing.T) {
			start := time.Now()
			outs := launch(t, 4, filepath.Join(dir, e))
			if !verified.MatchString(outs[0]) {
				t.Errorf("rank 0 did not verify:\n%s", outs[0])
			}
			for r := 1; r < len(outs); r++ {
				if verified.MatchString(outs[r]) {
					t.Errorf("rank %d printed a result line:\n%s", r, outs[r])
				}
			}
			t.Logf("%s, 4 ranks, %v:\n%s", e, time.Since(start).Round(time.Millisecond), strings.Join(outs, ""))
		})
	}
}

// TestStartWithoutLauncher checks the error a program gets when started by
// hand, and that Start takes its Config from runtime.Self, the one parser
// of the launch environment.
func TestStartWithoutLauncher(t *testing.T) {
	for _, v := range []string{"DSM_JOB", "DSM_RANK", "DSM_SIZE", "DSM_PEERS"} {
		t.Setenv(v, "")
	}
	_, err := Start()
	if err == nil || !errors.Is(err, ErrNotLaunched) || !strings.Contains(err.Error(), "not started by dsmrun") ||
		!strings.Contains(err.Error(), "dsmrun run") {
		t.Fatalf("Start without environment: %v", err)
	}
	t.Setenv(mrt.EnvEncrypt, "")
	t.Setenv(mrt.EnvSecretFD, "")
	env := map[string]string{"DSM_JOB": "j", "DSM_RANK": "5", "DSM_SIZE": "2", "DSM_PEERS": "a:1,b:2"}
	set := func() {
		for k, v := range env {
			t.Setenv(k, v)
		}
	}
	set()
	if _, err := configFromSelf(); err == nil {
		t.Fatal("rank 5 of 2 accepted")
	}
	env["DSM_RANK"], env["DSM_PEERS"] = "1", "a:1"
	set()
	if _, err := configFromSelf(); err == nil {
		t.Fatal("DSM_PEERS shorter than DSM_SIZE accepted")
	}
	// A rank without its secret was not launched by dsmrun run either, but
	// it is no ErrNotLaunched: it must not run on as a job of its own.
	env["DSM_PEERS"] = "a:1,b:2"
	set()
	_, err = configFromSelf()
	if err == nil || errors.Is(err, ErrNotLaunched) || !strings.Contains(err.Error(), "DSM_SECRET_FD") {
		t.Fatalf("a rank without its secret: %v", err)
	}
	// The whole launch environment, secret included, reaches the Config
	// (in a child: Self reads the secret once per process).
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	secret := newJobSecret(t)
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), "DSMSHM_TEST_WORKER=config", "DSM_ENCRYPT=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := runRank(cmd, secret); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	want := fmt.Sprintf("job=j rank=1 peers=[a:1 b:2] secret=%x encrypt=true\n", secret)
	if out.String() != want {
		t.Fatalf("the child's Config: %q, want %q", out.String(), want)
	}
}

// TestTCPRanksInOneProcess runs three ranks over real TCP in this process,
// started in reverse order to exercise dial retries.
func TestTCPRanksInOneProcess(t *testing.T) {
	peers := freePorts(t, 3)
	nodes := make([]*Node, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for r := 2; r >= 0; r-- {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nodes[r], errs[r] = StartWith(Config{Job: "tcp", Rank: r, Peers: peers, Secret: testSecret})
		}()
		time.Sleep(200 * time.Millisecond)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	segs := allocAll(t, nodes, "t", 3*pageSize)
	if err := each(nodes, func(n *Node) error {
		v := View[int64](segs[n.Rank()])
		for range 20 {
			if err := n.Lock(0); err != nil {
				return err
			}
			v[0]++
			v[pageSize/8*2+n.Rank()]++
			if err := n.Unlock(0); err != nil {
				return err
			}
		}
		return n.Barrier(0)
	}); err != nil {
		t.Fatal(err)
	}
	for r, s := range segs {
		v := View[int64](s)
		if v[0] != 60 || v[pageSize/8*2] != 20 || v[pageSize/8*2+2] != 20 {
			t.Errorf("rank %d sees %d %d %d, want 60 20 20", r, v[0], v[pageSize/8*2], v[pageSize/8*2+2])
		}
	}
	if err := each(nodes, (*Node).Close); err != nil {
		t.Fatal(err)
	}
}

// TestUpdatePeerReconnects exercises the migration seam: after UpdatePeer
// the control connection and page channel are re-established and the
// protocol carries on.
func TestUpdatePeerReconnects(t *testing.T) {
	nodes, peers := startTCP(t, 2)
	segs := allocAll(t, nodes, "m", 2*pageSize)
	step := func(round int) {
		t.Helper()
		if err := each(nodes, func(n *Node) error {
			// Both write page 1 (homed at rank 1): rank 0 sends a diff
			// over the control connection, then fetches the page over
			// its page channel.
			View[int64](segs[n.Rank()])[pageSize/8+n.Rank()] = int64(round)
			if err := n.Barrier(round); err != nil {
				return err
			}
			v := View[int64](segs[n.Rank()])
			if v[pageSize/8] != int64(round) || v[pageSize/8+1] != int64(round) {
				return fmt.Errorf("rank %d round %d sees %d %d", n.Rank(), round, v[pageSize/8], v[pageSize/8+1])
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	step(1)
	if err := nodes[0].UpdatePeer(1, peers[1]); err != nil {
		t.Fatal(err)
	}
	step(2)
	if err := nodes[1].UpdatePeer(0, peers[0]); err != nil {
		t.Fatal(err)
	}
	step(3)
	if f := nodes[0].Stats().PagesFetched; f < 3 {
		t.Errorf("rank 0 fetched %d pages, want one per round", f)
	}
	if err := each(nodes, (*Node).Close); err != nil {
		t.Fatal(err)
	}
}

// TestCloseReleasesEverything checks that a job's whole lifecycle leaves no
// file descriptors, goroutines or mappings behind.
func TestCloseReleasesEverything(t *testing.T) {
	count := func() (fds, gs, maps int) {
		ents, _ := os.ReadDir("/proc/self/fd")
		m, _ := os.ReadFile("/proc/self/maps")
		return len(ents), runtime.NumGoroutine(), strings.Count(string(m), "\n")
	}
	job := func() {
		nodes, _ := startTCP(t, 2)
		segs := allocAll(t, nodes, "l", 4*pageSize)
		if err := each(nodes, func(n *Node) error {
			segs[n.Rank()].Bytes()[n.Rank()*2*pageSize] = 1
			if err := n.Barrier(0); err != nil {
				return err
			}
			_ = segs[n.Rank()].Bytes()[(1-n.Rank())*2*pageSize]
			return n.Close()
		}); err != nil {
			t.Fatal(err)
		}
	}
	job() // warm up: the first run installs the handler and starts runtime helpers
	fds0, gs0, maps0 := count()
	job()
	var fds, gs, maps int
	for range 50 {
		if fds, gs, maps = count(); fds <= fds0 && gs <= gs0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if fds > fds0 || gs > gs0 || maps > maps0+2 {
		t.Fatalf("after a job: fds %d -> %d, goroutines %d -> %d, mappings %d -> %d", fds0, fds, gs0, gs, maps0, maps)
	}
}

// startTCP starts size ranks in this process, connected over TCP on
// 127.0.0.1, with the default timeouts. The caller closes them.
func startTCP(t *testing.T, size int) ([]*Node, []string) {
	t.Helper()
	return startTCPWith(t, size, 0, 0)
}
