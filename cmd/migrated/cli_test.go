package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// The command lines of both programs behave as urfave/cli users expect of
// other tools, through the real binaries: --version, help, and a wrong
// command line (unknown command or flag, missing argument or flag) said in
// one line with a pointer to the usage, exit status 2, nothing done; global
// flags anywhere.
func TestCommandLine(t *testing.T) {
	dir := buildBinaries(t)
	for _, tc := range []struct {
		args   string
		code   int
		stdout string // a line it must hold
		stderr string // what stderr must hold ("" : nothing)
	}{
		{"migrated --version", 0, "migrated version ", ""},
		{"dsmrun --version", 0, "dsmrun version ", ""},
		{"migrated help", 0, "migrate", ""},
		{"migrated help migrate", 0, "--post-copy", ""},
		{"dsmrun help", 0, "migrate", ""},
		{"migrated bogus", 2, "", `migrated: unknown command "bogus"` + "\nRun 'migrated --help' for usage.\n"},
		{"dsmrun bogus", 2, "", `dsmrun: unknown command "bogus"` + "\nRun 'dsmrun --help' for usage.\n"},
		{"migrated ps --bogus", 2, "", "migrated: flag provided but not defined: -bogus\nRun 'migrated ps --help' for usage.\n"},
		{"migrated migrate abc --policy fastest", 2, "", "migrated: --policy: unknown placement policy \"fastest\": want balanced, memory, cpu\n"},
		{"migrated migrate --to h:1", 2, "", "migrated: usage: migrated migrate ID [--to ADDR:PORT]"},
		{"migrated drain now", 2, "", "migrated: usage: migrated drain [--host ADDR:PORT]"},
		{"migrated drain --host nohost", 2, "", "migrated: --host: "},
		{"migrated logs", 2, "", "migrated: usage: migrated logs [-f] ID\nRun 'migrated logs --help' for usage.\n"},
		{"dsmrun migrate job", 2, "", "dsmrun: usage: dsmrun migrate JOB RANK [--to ADDR:PORT]"},
		// The global --socket after the command: taken, and the daemon
		// looked for there.
		{"migrated ps --socket /nonexistent/sock", 6, "", "migrated: cannot reach the daemon at /nonexistent/sock"},
		{"migrated ps --json --socket=/nonexistent/sock", 6, "", "migrated: cannot reach the daemon at /nonexistent/sock"},
	} {
		f := strings.Fields(tc.args)
		stdout, stderr, code := runBin(t, filepath.Join(dir, f[0]), f[1:]...)
		if code != tc.code {
			t.Errorf("%s: exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", tc.args, code, tc.code, stdout,
				stderr)
		}
		if !strings.Contains(stdout, tc.stdout) {
			t.Errorf("%s: stdout lacks %q:\n%s", tc.args, tc.stdout, stdout)
		}
		if tc.stderr == "" && stderr != "" || !strings.Contains(stderr, tc.stderr) {
			t.Errorf("%s: stderr is\n%s\nwant it to hold\n%s", tc.args, stderr, tc.stderr)
		}
		if tc.code == 2 && (stdout != "" || strings.Contains(stderr, "USAGE:")) {
			t.Errorf("%s: a usage error printed the help:\n%s%s", tc.args, stdout, stderr)
		}
	}
	// dsmrun run --help: no placeholder mangled out of --rank-ips, one
	// default for --port.
	out, err := exec.Command(filepath.Join(dir, "dsmrun"), "run", "--help").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "--rank-ips") && !strings.Contains(l, "'dsmrun migrate --move-ip'") {
			t.Errorf("dsmrun run --help: %q", l)
		}
		if strings.Contains(l, "--port") && strings.Count(l, "default") != 1 {
			t.Errorf("dsmrun run --help: %q", l)
		}
	}
}

// runBin runs prog with args in testEnv and returns what it printed and its
// exit status.
func runBin(t *testing.T, prog string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(prog, args...)
	cmd.Env = testEnv()
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

// testEnv is this test's environment without MIGRATED_* (a caller's
// settings must not change what the commands do).
func testEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MIGRATED_") {
			env = append(env, kv)
		}
	}
	return env
}

// buildBinaries builds migrated and dsmrun into a temporary directory.
func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", dir, "dsmigrate/cmd/migrated",
		"dsmigrate/cmd/dsmrun")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the binaries: %v\n%s", err, out)
	}
	return dir
}

// Every command, the daemon and every shim start this binary, and what its
// packages do at init is paid each time: on this kind of VM fresh memory is
// slow to touch, and regular expressions compiled at init (a {0,127} took
// 118 KB) and go-criu's crit (~70 image descriptors) made `migrated
// --version` take 62 ms against 26 without them. No package of ours may
// allocate more than 16 KiB at init (compile on first use: sync.OnceValue),
// nor may crit come back.
func TestInitCost(t *testing.T) {
	dir := buildBinaries(t)
	for _, bin := range []string{"migrated", "dsmrun"} {
		cmd := exec.Command(filepath.Join(dir, bin), "--version")
		cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s --version: %v\n%s", bin, err, out)
		}
		n := 0
		for _, line := range strings.Split(string(out), "\n") {
			// init PKG @T ms, C ms clock, B bytes, A allocs
			f := strings.Fields(line)
			if len(f) < 8 || f[0] != "init" {
				continue
			}
			n++
			if strings.Contains(f[1], "go-criu/v8/crit") {
				t.Errorf("%s links %s: read images in package criu (image.go)", bin, f[1])
			}
			if b, _ := strconv.Atoi(f[7]); strings.HasPrefix(f[1], "dsmigrate/") && b > 16<<10 {
				t.Errorf("%s: %s allocates %d bytes at init: %s", bin, f[1], b, line)
			}
		}
		if n == 0 {
			t.Fatalf("%s: no init trace:\n%s", bin, out)
		}
	}
}
