package integration

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// checkOn runs `migrated check ARGS...` on hK and returns its output
// (stdout and stderr) and exit status.
func checkOn(t *testing.T, k int, args ...string) (string, int) {
	t.Helper()
	out := mustOn(t, k, append([]string{"sh", "-c", `migrated check "$@" 2>&1; echo "#exit=$?"`, "check"}, args...)...)
	t.Logf("h%d: migrated check %s:\n%s", k, strings.Join(args, " "), out)
	body, code, ok := strings.Cut(out, "#exit=")
	n, err := strconv.Atoi(strings.TrimSpace(code))
	if !ok || err != nil {
		t.Fatalf("migrated check %s on h%d: %q", strings.Join(args, " "), k, out)
	}
	return body, n
}

// checkLine is the line of check name in out ("" if none).
func checkLine(out, name string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, name+"  ") {
			return l
		}
	}
	return ""
}

// wantCheck fails the test unless out has a line for check name with
// status (ok, warning, FAILED) and every one of parts.
func wantCheck(t *testing.T, out, name, status string, parts ...string) {
	t.Helper()
	l := checkLine(out, name)
	f := strings.Fields(strings.TrimPrefix(l, name))
	if l == "" || len(f) == 0 || f[0] != status {
		t.Errorf("check %q: want %s, got line %q in:\n%s", name, status, l, out)
		return
	}
	for _, p := range parts {
		if !strings.Contains(l, p) {
			t.Errorf("check %q: line lacks %q: %s", name, p, l)
		}
	}
}

// migrated check on the cluster's hosts, through the real binary and
// daemons: a healthy host passes, another host as --to passes, the host
// itself as --to fails as "this host", an address where nothing listens
// fails as unreachable, and a token file with the wrong mode fails with the
// command that fixes it (and passes once it is run).
func TestCheck(t *testing.T) {
	needHosts(t, 2)

	t.Run("healthy", func(t *testing.T) {
		out, code := checkOn(t, 1)
		if code != 0 || strings.Contains(out, "FAILED") {
			t.Fatalf("exit status %d on a healthy host:\n%s", code, out)
		}
		wantCheck(t, out, "daemon", "ok", "answering at")
		wantCheck(t, out, "criu version", "ok")
		wantCheck(t, out, "criu check", "ok")
		wantCheck(t, out, "nftables", "ok")
		wantCheck(t, out, "tini", "ok")
		wantCheck(t, out, "token file", "ok", "root's only (mode 0600)")
		wantCheck(t, out, "kernel tcp repair", "ok")
	})

	t.Run("to another host", func(t *testing.T) {
		out, code := checkOn(t, 1, "--to", addr(2))
		if code != 0 || strings.Contains(out, "FAILED") {
			t.Fatalf("exit status %d for --to h2:\n%s", code, out)
		}
		wantCheck(t, out, "target reachable", "ok")
		wantCheck(t, out, "target authenticated", "ok")
		wantCheck(t, out, "target not this host", "ok", addr(2)+" is another daemon")
		if l := checkLine(out, "target accepting migrations"); l == "" || strings.Contains(l, "FAILED") {
			t.Errorf("accepting migrations: %q", l)
		}
		wantCheck(t, out, "target memory", "ok", "MiB free for arriving processes", "kept free by --keep-free")

		// The same as JSON, with both daemons' identities.
		js, code := checkOn(t, 1, "--to", addr(2), "--json")
		var rep struct {
			OK             bool
			Daemon, Target *struct {
				ID, Advertise string
				KeepFree      int64 `json:"keep_free_bytes"`
				MemAvailable  int64 `json:"mem_available_bytes"`
			}
			Checks []struct{ Name, Status string }
		}
		if err := json.Unmarshal([]byte(js), &rep); err != nil || code != 0 || !rep.OK || rep.Daemon == nil || rep.Target == nil {
			t.Fatalf("--json: exit status %d, %v:\n%s", code, err, js)
		}
		if rep.Daemon.ID == rep.Target.ID || rep.Daemon.Advertise != addr(1) || rep.Target.Advertise != addr(2) ||
			rep.Target.KeepFree != 256<<20 || rep.Target.MemAvailable <= 0 {
			t.Errorf("--json: daemon %+v, target %+v", rep.Daemon, rep.Target)
		}
	})

	t.Run("to itself", func(t *testing.T) {
		out, code := checkOn(t, 1, "--to", addr(1))
		if code != 1 {
			t.Fatalf("exit status %d for --to itself, want 1:\n%s", code, out)
		}
		wantCheck(t, out, "target not this host", "FAILED", addr(1)+" is this host", "fix:")
	})

	t.Run("to nothing", func(t *testing.T) {
		nothing := hostIP(2) + ":7099" // no daemon listens there
		out, code := checkOn(t, 1, "--to", nothing)
		if code != 1 {
			t.Fatalf("exit status %d for --to %s, want 1:\n%s", code, nothing, out)
		}
		wantCheck(t, out, "target reachable", "FAILED", nothing+" is unreachable", "fix: start the daemon there")
		if l := checkLine(out, "target authenticated"); l != "" {
			t.Errorf("checked beyond an unreachable target: %s", l)
		}
	})

	t.Run("token file mode", func(t *testing.T) {
		dir := hostDir(t, map[string][]byte{"token": []byte("c2VjcmV0IHNlY3JldCBzZWNyZXQgc2VjcmV0IHNlY3JldA==\n")})
		tok := filepath.Join(dir, "token") // mode 0644
		out, code := checkOn(t, 1, "--token-file", tok)
		if code != 1 {
			t.Fatalf("exit status %d for a token file of mode 0644, want 1:\n%s", code, out)
		}
		fix := "chmod 600 " + tok
		wantCheck(t, out, "token file", "FAILED", tok+" has mode 0644", "fix: "+fix)
		// The fix, as printed, makes the check pass.
		mustOn(t, 1, strings.Fields(fix)...)
		out, code = checkOn(t, 1, "--token-file", tok)
		if code != 0 {
			t.Fatalf("exit status %d after %q:\n%s", code, fix, out)
		}
		wantCheck(t, out, "token file", "ok", fmt.Sprintf("%s: one token", tok))
	})
}
