package main

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// migrated serve --metrics (docs/metrics.md), through the real binary: a
// value that is no ADDR:PORT, on the command line or in the config file, is a
// usage error; a daemon with it serves Prometheus's text format at /metrics,
// one without it listens on its --listen port only.
func TestServeMetricsFlag(t *testing.T) {
	bin := t.TempDir()
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "dsmigrate/cmd/migrated")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building migrated: %v\n%s", err, out)
	}
	migrated := filepath.Join(bin, "migrated")
	dir := t.TempDir()

	_, stderr, code := runBin(t, migrated, "serve", "--config", "", "--listen", "10.0.0.5:7077", "--state-dir", dir,
		"--metrics", "9477")
	if code != 2 || !strings.HasPrefix(stderr, `migrated: --metrics: "9477" is not ADDR:PORT`) {
		t.Errorf("--metrics 9477: exit status %d, %q; want 2 and what is wrong", code, stderr)
	}
	conf := filepath.Join(dir, "migrated.conf")
	os.WriteFile(conf, []byte("metrics = localhost\n"), 0o644)
	_, stderr, code = runBin(t, migrated, "serve", "--config", conf, "--listen", "10.0.0.5:7077", "--state-dir", dir)
	if want := "migrated: " + conf + `:1: metrics: "localhost" is not ADDR:PORT`; code != 2 || !strings.HasPrefix(stderr, want) {
		t.Errorf("metrics = localhost: exit status %d, %q; want 2 and %q", code, stderr, want)
	}

	if os.Geteuid() != 0 {
		t.Skip("a serving daemon needs root")
	}
	port := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	maddr := port()
	pid, stop := serveDaemon(t, migrated, port(), "--metrics", maddr)
	resp, err := http.Get("http://" + maddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"# TYPE migrated_migrations_total counter\n",
		`migrated_migrations_total{direction="source",post_copy="false",result="ok"} 0` + "\n",
		`migrated_processes{state="running"} 0` + "\n", "# TYPE migrated_host_memory_available_bytes gauge\n",
		"# TYPE migrated_migration_downtime_seconds histogram\n"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("GET /metrics: %s, no %q in\n%s", resp.Status, want, body)
		}
	}
	if n := listening(t, pid); n != 2 {
		t.Errorf("with --metrics the daemon listens on %d TCP ports, want 2", n)
	}
	stop()
	pid, stop = serveDaemon(t, migrated, port())
	if n := listening(t, pid); n != 1 {
		t.Errorf("without --metrics the daemon listens on %d TCP ports, want 1 (--listen)", n)
	}
	stop()
}

// serveDaemon starts a daemon on a state directory and socket of its own,
// listening on listen, and returns its pid once it serves, and what stops
// it. Without CRIU here the test is skipped.
func serveDaemon(t *testing.T, migrated, listen string, args ...string) (int, func()) {
	t.Helper()
	criu := cmp.Or(os.Getenv("MIGRATED_CRIU"), "/usr/local/sbin/migrate-criu")
	if _, err := os.Stat(criu); err != nil {
		t.Skipf("no CRIU at %s: a daemon does not serve", criu)
	}
	cmd, stderr := startServe(t, migrated, listen, args...)
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	t.Cleanup(stop)
	var log []string
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		log = append(log, sc.Text())
		if strings.Contains(sc.Text(), "msg=serving ") {
			go io.Copy(io.Discard, stderr)
			return cmd.Process.Pid, stop
		}
	}
	t.Fatalf("the daemon did not serve:\n%s", strings.Join(log, "\n"))
	return 0, nil
}

// listening counts the TCP sockets process pid listens on.
func listening(t *testing.T, pid int) int {
	t.Helper()
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	n := 0
	for _, table := range []string{"tcp", "tcp6"} {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		for _, l := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(l) // sl local rem st ... uid timeout inode
			if len(f) > 9 && f[3] == "0A" && inodes[f[9]] {
				n++
			}
		}
	}
	return n
}
