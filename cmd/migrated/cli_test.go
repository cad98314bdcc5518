package main

import (
	"errors"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// The command lines of both programs behave as urfave/cli users expect of
// other tools, through the real binaries: --version, help, and a wrong
// command line (unknown command or flag, missing argument or flag) said in
// one line with a pointer to the usage, exit status 2, nothing done; global
// flags anywhere.
func TestCommandLine(t *testing.T) {
	dir := t.TempDir()
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", dir, "dsmigrate/cmd/migrated",
		"dsmigrate/cmd/dsmrun")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the binaries: %v\n%s", err, out)
	}
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
		{"migrated migrate abc", 2, "", "migrated: missing --to\nRun 'migrated migrate --help' for usage.\n"},
		{"migrated migrate --to h:1", 2, "", "migrated: usage: migrated migrate ID --to ADDR:PORT"},
		{"migrated logs", 2, "", "migrated: usage: migrated logs [-f] ID\nRun 'migrated logs --help' for usage.\n"},
		{"dsmrun migrate job", 2, "", "dsmrun: missing --to\nRun 'dsmrun migrate --help' for usage.\n"},
		// The global --socket after the command: taken, and the daemon
		// looked for there.
		{"migrated ps --socket /nonexistent/sock", 6, "", "migrated: cannot reach the daemon at /nonexistent/sock"},
		{"migrated ps --json --socket=/nonexistent/sock", 6, "", "migrated: cannot reach the daemon at /nonexistent/sock"},
	} {
		f := strings.Fields(tc.args)
		cmd := exec.Command(filepath.Join(dir, f[0]), f[1:]...)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code {
			t.Errorf("%s: exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", tc.args, code, tc.code, stdout.String(),
				stderr.String())
		}
		if !strings.Contains(stdout.String(), tc.stdout) {
			t.Errorf("%s: stdout lacks %q:\n%s", tc.args, tc.stdout, stdout.String())
		}
		if tc.stderr == "" && stderr.Len() > 0 || !strings.Contains(stderr.String(), tc.stderr) {
			t.Errorf("%s: stderr is\n%s\nwant it to hold\n%s", tc.args, stderr.String(), tc.stderr)
		}
		if tc.code == 2 && (stdout.Len() > 0 || strings.Contains(stderr.String(), "USAGE:")) {
			t.Errorf("%s: a usage error printed the help:\n%s%s", tc.args, stdout.String(), stderr.String())
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
