package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The operator's view of a migration (issue 13): progress while pages move,
// JSON lines, --timeout and a client's cancel rolling back, and exit
// statuses that say what became of the process (docs/cli.md). Where a test
// must act at a known step it holds the migration there with a "wait"
// fault point, never by racing it.

// migrateClient is `migrated migrate` running on hK: its JSON lines as they
// come, its pid on the host, and its exit status at the end.
type migrateClient struct {
	t     *testing.T
	k     int
	pid   int
	lines chan map[string]any
	done  chan int // its exit status
	seen  []map[string]any
}

// startMigrate starts `migrated migrate ID --to hTO --json EXTRA...` on hK.
func startMigrate(t *testing.T, k, to int, id string, extra ...string) *migrateClient {
	t.Helper()
	args := append([]string{"exec", fmt.Sprintf("h%d", k), "sh", "-c",
		`migrated migrate "$@" & echo "{\"pid\":$!}"; wait $!`, "migrate", id, "--to", addr(to), "--json"}, extra...)
	cmd := exec.Command(cluster, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &migrateClient{t: t, k: k, lines: make(chan map[string]any, 1000), done: make(chan int, 1)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var v map[string]any
			if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
				v = map[string]any{"type": "NOT JSON", "line": sc.Text()}
			}
			m.lines <- v
		}
		close(m.lines)
		err := cmd.Wait()
		if stderr.Len() > 0 {
			t.Logf("migrate's standard error:\n%s", stderr.String())
		}
		m.done <- exitStatus(err)
	}()
	first := m.next(30 * time.Second)
	pid, ok := first["pid"].(float64)
	if !ok {
		t.Fatalf("migrate started with %v, want its pid", first)
	}
	m.pid = int(pid)
	t.Cleanup(func() { on(k, "kill", "-KILL", fmt.Sprint(m.pid)) })
	return m
}

// next is the client's next line, within d.
func (m *migrateClient) next(d time.Duration) map[string]any {
	m.t.Helper()
	select {
	case v, ok := <-m.lines:
		if !ok {
			m.t.Fatalf("migrate ended; its lines: %v", m.seen)
		}
		m.seen = append(m.seen, v)
		return v
	case <-time.After(d):
		m.t.Fatalf("migrate said nothing for %v; its lines: %v", d, m.seen)
	}
	return nil
}

// until reads lines until one satisfies ok, and returns it.
func (m *migrateClient) until(what string, ok func(map[string]any) bool) map[string]any {
	m.t.Helper()
	for end := within(120 * time.Second); time.Now().Before(end); {
		if v := m.next(time.Until(end)); ok(v) {
			return v
		}
	}
	m.t.Fatalf("migrate never printed %s; its lines: %v", what, m.seen)
	return nil
}

// wait is the client's last line and its exit status.
func (m *migrateClient) wait() (map[string]any, int) {
	m.t.Helper()
	m.drain()
	var last map[string]any
	select {
	case code := <-m.done:
		if len(m.seen) > 0 {
			last = m.seen[len(m.seen)-1]
		}
		return last, code
	case <-time.After(120 * time.Second):
		m.t.Fatalf("migrate did not end; its lines: %v", m.seen)
	}
	return nil, 0
}

// drain keeps what is left of the lines (for wait's last line).
func (m *migrateClient) drain() {
	for v := range m.lines {
		m.seen = append(m.seen, v)
	}
}

// holdAt arms fault point name on hK to wait there until release is
// called; reached waits until a migration is held there.
func holdAt(t *testing.T, k int, name string) (reached func(), release func()) {
	t.Helper()
	armFaultMode(t, k, name, "wait")
	flag := filepath.Join(stateDir(k), "faults", name+".reached")
	t.Cleanup(func() { on(k, "rm", "-f", flag) })
	reached = func() {
		t.Helper()
		for end := within(120 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if _, err := on(k, "test", "-e", flag); err == nil {
				return
			}
			if time.Now().After(end) {
				t.Fatalf("no migration reached %s on h%d", name, k)
			}
		}
	}
	release = func() { on(k, "rm", "-f", flag) }
	return reached, release
}

// A migration held after its dump reports its progress as JSON lines: the
// step and the bytes it has sent so far, of about how many; then its
// phases and a result, exit 0, the memory intact on the target.
func TestMigrateProgressJSON(t *testing.T) {
	needHosts(t, 2)
	guardHosts(t)
	id, marker, digest := startMem(t, 1, 64, "mprog")
	reached, release := holdAt(t, 1, "source-after-dump")
	m := startMigrate(t, 1, 2, id)
	reached()
	p := m.until("a progress line with the dump's bytes", func(v map[string]any) bool {
		b, _ := v["bytes"].(float64)
		return v["type"] == "progress" && v["step"] == "dump" && b >= 64<<20
	})
	if of, _ := p["expected_bytes"].(float64); of < 64<<20 {
		t.Errorf("progress %v: expected_bytes is not the process's memory", p)
	}
	release()
	last, code := m.wait()
	if code != 0 || last["type"] != "result" {
		t.Fatalf("migrate exited %d with %v; want 0 and a result", code, last)
	}
	mig, _ := last["migration"].(map[string]any)
	if mig["result"] != "ok" || mig["id"] != id {
		t.Errorf("the result: %v", mig)
	}
	if total, _ := mig["total_ms"].(float64); total < 1 {
		t.Errorf("the result's total_ms %v", mig["total_ms"])
	}
	var phases []string
	for _, v := range m.seen {
		if v["type"] == "phase" {
			phases = append(phases, fmt.Sprint(v["phase"]))
		}
		if v["type"] == "NOT JSON" {
			t.Errorf("a line of migrate --json is not JSON: %v", v["line"])
		}
	}
	if strings.Join(phases, ",") != "freeze,dump,transfer,restore,resume" {
		t.Errorf("phases %v", phases)
	}
	settledOn(t, id, 2)
	exactlyOnce(t, 2, id, marker, digest)
}

// SIGTERM (or Ctrl-C's SIGINT) while the process is stopped after its dump:
// the client says it cancels, the daemon rolls back, the process runs on
// its source exactly once with its memory intact, and the client exits 4
// (refused) with an error of that kind.
func TestMigrateCancel(t *testing.T) {
	needHosts(t, 2)
	guardHosts(t)
	id, marker, digest := startMem(t, 1, 64, "mcancel")
	reached, release := holdAt(t, 1, "source-before-transfer")
	m := startMigrate(t, 1, 2, id)
	reached()
	if _, err := on(1, "kill", "-TERM", fmt.Sprint(m.pid)); err != nil {
		t.Fatal(err)
	}
	m.until("cancelling", func(v map[string]any) bool { return v["type"] == "cancelling" })
	release()
	last, code := m.wait()
	if code != 4 || last["type"] != "error" || last["kind"] != "refused" ||
		!strings.Contains(fmt.Sprint(last["error"]), "cancelled") {
		t.Fatalf("a cancelled migrate exited %d with %v; want 4 and a refused error", code, last)
	}
	if got := settled(t, id); got != 1 {
		t.Fatalf("after the cancel the process runs on h%d, want h1", got)
	}
	exactlyOnce(t, 1, id, marker, digest)
	if r := lastRecord(t, 1); r["result"] != "refused" {
		t.Errorf("h1's record of the cancelled migration: %v", r)
	}
}

// --timeout that passes before the commit: the same rollback, exit 4, and
// the error names the timeout.
func TestMigrateTimeout(t *testing.T) {
	needHosts(t, 2)
	guardHosts(t)
	id, marker, digest := startMem(t, 1, 16, "mtimeout")
	reached, release := holdAt(t, 1, "source-before-transfer")
	m := startMigrate(t, 1, 2, id, "--timeout", "1s")
	reached()
	time.Sleep(1500 * time.Millisecond) // past the timeout, whatever the load: it started before reached
	release()
	last, code := m.wait()
	if code != 4 || last["kind"] != "refused" || !strings.Contains(fmt.Sprint(last["error"]), "--timeout") {
		t.Fatalf("a timed-out migrate exited %d with %v; want 4 and the timeout named", code, last)
	}
	if got := settled(t, id); got != 1 {
		t.Fatalf("after the timeout the process runs on h%d, want h1", got)
	}
	exactlyOnce(t, 1, id, marker, digest)
}

// Exit statuses and words for what users get wrong: an unknown process
// (3), a name already taken (refused in one line), a bad --timeout (2), a
// move to the host the process is on (4, before anything is touched).
func TestCLIErrors(t *testing.T) {
	needHosts(t, 2)
	guardHosts(t)
	start(t, 1, "dupname", "sleep", "600")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"migrated", "migrate", "nosuchproc", "--to", addr(2)}, 3, `no process "nosuchproc" on this host`},
		{[]string{"migrated", "logs", "nosuchproc"}, 3, `no process "nosuchproc"`},
		{[]string{"migrated", "kill", "nosuchproc"}, 3, `no process "nosuchproc"`},
		{[]string{"migrated", "run", "--name", "dupname", "--", "sleep", "1"}, 1, `the name "dupname" is taken here`},
		{[]string{"migrated", "migrate", "dupname", "--to", addr(2), "--timeout", "-1s"}, 2, "--timeout"},
		{[]string{"migrated", "migrate", "dupname", "--to", addr(1)}, 4, addr(1) + " is this host"},
	} {
		out, err := on(1, append([]string{"sh", "-c", `exec "$@" 2>&1`, "cmd"}, tc.args...)...)
		if code := exitStatus(err); code != tc.code || !strings.Contains(out+fmt.Sprint(err), tc.want) {
			t.Errorf("%s: exit %d, want %d with %q:\n%s", strings.Join(tc.args, " "), code, tc.code, tc.want, out)
		}
		if strings.Contains(out, "wire:") || strings.Count(out, "\n") > 2 {
			t.Errorf("%s: the error is not one line in the user's words:\n%s", strings.Join(tc.args, " "), out)
		}
	}
}

// settledOn waits until id runs on hK alone.
func settledOn(t *testing.T, id string, k int) {
	t.Helper()
	if got := settled(t, id); got != k {
		t.Fatalf("%s runs on h%d, want h%d", id, got, k)
	}
}
