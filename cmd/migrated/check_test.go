package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// migrated check through the real binary, with no daemon to answer: the
// daemon's line fails, the host checks run in the command itself, a token
// file given with --token-file is checked and its fix named, the exit
// status is 1; a wrong command line is a usage error (2).
func TestCheckWithoutDaemon(t *testing.T) {
	dir := t.TempDir()
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", dir, "dsmigrate/cmd/migrated")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building migrated: %v\n%s", err, out)
	}
	bin := filepath.Join(dir, "migrated")
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("c2VjcmV0IHNlY3JldCBzZWNyZXQgc2VjcmV0IHNlY3JldA==\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(tok, 0o644)
	run := func(args ...string) (string, string, int) {
		t.Helper()
		return runBin(t, bin, args...)
	}
	line := func(out, name string) string {
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(l, name+"  ") {
				return l
			}
		}
		t.Fatalf("no line for %q in:\n%s", name, out)
		return ""
	}

	out, errOut, code := run("check", "--socket", "/nonexistent/sock", "--token-file", tok, "--to", "10.77.0.99:7077")
	if code != 1 || errOut != "" {
		t.Errorf("exit status %d, stderr %q; want 1 and nothing", code, errOut)
	}
	if l := line(out, "daemon"); !strings.Contains(l, "FAILED") || !strings.Contains(l, "cannot reach the daemon at /nonexistent/sock") ||
		!strings.Contains(l, "fix: start it: migrated serve") {
		t.Errorf("daemon: %s", l)
	}
	if l := line(out, "token file"); !strings.Contains(l, "FAILED") || !strings.Contains(l, "mode 0644") ||
		!strings.Contains(l, "fix: chmod 600 "+tok) {
		t.Errorf("token file: %s", l)
	}
	if l := line(out, "target"); !strings.Contains(l, "warning") || !strings.Contains(l, "not checked") {
		t.Errorf("target: %s", l)
	}
	for _, name := range []string{"criu binary", "kernel pid namespaces", "kernel userfaultfd", "sysctl fs.pipe-max-size", "nftables", "tini"} {
		line(out, name)
	}
	if !strings.Contains(out, "checks FAILED") {
		t.Errorf("no summary:\n%s", out)
	}

	out, _, code = run("check", "--json", "--socket", "/nonexistent/sock", "--token-file", tok, "--criu", "/nonexistent/criu")
	var rep struct {
		OK     bool `json:"ok"`
		Checks []struct{ Name, Status, Message, Fix string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 1 || rep.OK {
		t.Fatalf("--json: status %d, %v, ok %v:\n%s", code, err, rep.OK, out)
	}
	got := map[string]string{}
	for _, c := range rep.Checks {
		got[c.Name] = c.Status + ": " + c.Message + " | " + c.Fix
	}
	for name, want := range map[string]string{"daemon": "failed: cannot reach", "criu binary": "failed: no CRIU at /nonexistent/criu",
		"token file": "failed: " + tok + " has mode 0644"} {
		if !strings.HasPrefix(got[name], want) {
			t.Errorf("--json %s: %q, want %q...", name, got[name], want)
		}
	}

	for _, args := range [][]string{{"check", "extra"}, {"check", "--to", "nonsense"}, {"check", "--to", ":7077"}} {
		if _, errOut, code := run(args...); code != 2 || !strings.Contains(errOut, "Run 'migrated check --help' for usage.") {
			t.Errorf("%v: exit status %d, stderr %q; want a usage error", args, code, errOut)
		}
	}
}
