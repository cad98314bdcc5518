package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Packaging (issue 13, item 7) and the daemon's log flags (item 6), through
// the real binaries: shell completion, man pages, make install, the config
// file of `migrated serve`, --log-level and --log-format.
func TestPackaging(t *testing.T) {
	bin := t.TempDir()
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	build := exec.Command(gobin, "build", "-o", bin, "dsmigrate/cmd/migrated", "dsmigrate/cmd/dsmrun")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the binaries: %v\n%s", err, out)
	}
	migrated, dsmrun := filepath.Join(bin, "migrated"), filepath.Join(bin, "dsmrun")
	commands := map[string][]string{
		migrated: {"serve", "run", "ps", "logs", "migrate", "history", "kill", "completion", "man"},
		dsmrun:   {"run", "ps", "history", "migrate", "completion", "man"},
	}

	t.Run("completion scripts", func(t *testing.T) {
		for prog, cmds := range commands {
			name := filepath.Base(prog)
			for _, shell := range []string{"bash", "zsh", "fish"} {
				out, stderr, code := runBin(t, prog, "completion", shell)
				if code != 0 || stderr != "" {
					t.Fatalf("%s completion %s: exit status %d\n%s", name, shell, code, stderr)
				}
				for _, c := range cmds {
					if !strings.Contains(out, c) {
						t.Errorf("%s completion %s does not mention the command %s:\n%s", name, shell, c, out)
					}
				}
				for _, hidden := range []string{"shim", "quiesce"} {
					if strings.Contains(out, hidden) {
						t.Errorf("%s completion %s offers the hidden command %s", name, shell, hidden)
					}
				}
				if !strings.Contains(out, name) {
					t.Errorf("%s completion %s does not name the program:\n%s", name, shell, out)
				}
				// The script is valid for its shell, where the shell is here.
				sh, err := exec.LookPath(shell)
				if err != nil {
					continue
				}
				f := filepath.Join(t.TempDir(), "script")
				if err := os.WriteFile(f, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
				if out, err := exec.Command(sh, "-n", f).CombinedOutput(); err != nil {
					t.Errorf("%s -n on %s completion %s: %v\n%s", shell, name, shell, err, out)
				}
			}
		}
		_, stderr, code := runBin(t, migrated, "completion", "powershell")
		if code != 2 || !strings.Contains(stderr, `no completion for shell "powershell"`) {
			t.Errorf("migrated completion powershell: exit status %d, %q; want 2 and the shells it knows", code, stderr)
		}
	})

	// urfave/cli's protocol: the words so far, then
	// --generate-bash-completion, and the program prints what may come next
	// instead of running the command.
	t.Run("completion protocol", func(t *testing.T) {
		for _, tc := range []struct {
			prog string
			args string
			want []string // words it must offer
			not  []string // and must not
		}{
			{migrated, "", commands[migrated], []string{"shim", "quiesce", "--socket"}},
			{dsmrun, "", commands[dsmrun], nil},
			{migrated, "-", []string{"--socket", "--version", "--help"}, []string{"serve"}},
			{migrated, "migrate --t", []string{"--to"}, []string{"--move-ip"}},
			{migrated, "migrate ID -", []string{"--to", "--move-ip", "--post-copy"}, nil},
			{migrated, "serve --log", []string{"--log-level", "--log-format"}, []string{"--listen"}},
			{migrated, "completion", []string{"bash", "zsh", "fish"}, nil},
			{dsmrun, "migrate -", []string{"--to", "--hosts"}, nil},
			// A kill of a process that does not exist: printed nothing,
			// and the command never ran (it would say "cannot reach").
			{migrated, "--socket /nonexistent/sock kill abc", nil, nil},
		} {
			args := append(strings.Fields(tc.args), "--generate-bash-completion")
			out, stderr, code := runBin(t, tc.prog, args...)
			if code != 0 || stderr != "" {
				t.Errorf("%s %s: exit status %d, stderr %q", filepath.Base(tc.prog), strings.Join(args, " "), code, stderr)
			}
			words := strings.Fields(out)
			for _, w := range tc.want {
				if !slices.Contains(words, w) {
					t.Errorf("%s %s: %q not offered: %q", filepath.Base(tc.prog), tc.args, w, words)
				}
			}
			for _, w := range tc.not {
				if slices.Contains(words, w) {
					t.Errorf("%s %s: %q offered: %q", filepath.Base(tc.prog), tc.args, w, words)
				}
			}
			if tc.want == nil && len(words) > 0 {
				t.Errorf("%s %s: offered %q", filepath.Base(tc.prog), tc.args, words)
			}
		}
	})

	// The bash script itself, in bash, as the shell would call it.
	t.Run("bash completes", func(t *testing.T) {
		bash, err := exec.LookPath("bash")
		if err != nil {
			t.Skip("no bash here")
		}
		for _, tc := range []struct{ line, want string }{
			{"migrated mig", "migrate"},
			{"migrated h", "history hosts help h"},
			{"migrated migrate ID --mo", "--move-ip"},
			{"migrated --socket /x p", "ps"},
			{"migrated completion f", "fish"},
			{"dsmrun r", "run"},
			{"migrated run -- sl", ""}, // the program's own arguments: left to bash
		} {
			script := `source <("$PROG" completion bash)
read -ra COMP_WORDS <<<"$LINE"
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_$(basename "$PROG")
echo "${COMPREPLY[*]}"`
			f := strings.Fields(tc.line)
			cmd := exec.Command(bash, "-c", script)
			cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "PROG="+f[0], "LINE="+tc.line)
			out, err := cmd.CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != tc.want {
				t.Errorf("bash completion of %q: %q, %v; want %q", tc.line, out, err, tc.want)
			}
		}
	})

	t.Run("man", func(t *testing.T) {
		for prog, cmds := range commands {
			name := filepath.Base(prog)
			out, stderr, code := runBin(t, prog, "man")
			if code != 0 || stderr != "" {
				t.Fatalf("%s man: exit status %d\n%s", name, code, stderr)
			}
			if !strings.Contains(out, ".TH "+name+" 1") || !strings.Contains(out, ".SH NAME") {
				t.Errorf("%s man is no man page of section 1:\n%s", name, out)
			}
			for _, c := range cmds {
				if !strings.Contains(out, c) {
					t.Errorf("%s man does not mention the command %s", name, c)
				}
			}
		}
		out, _, _ := runBin(t, migrated, "man")
		for _, f := range []string{"--listen", "--config", "--log-format", "--post-copy"} {
			if !strings.Contains(out, strings.ReplaceAll(f, "-", `\-`)) && !strings.Contains(out, f) {
				t.Errorf("migrated man does not mention %s", f)
			}
		}
	})

	t.Run("make install", func(t *testing.T) {
		if _, err := exec.LookPath("make"); err != nil {
			t.Skip("no make here")
		}
		root, err := filepath.Abs("../..")
		if err != nil {
			t.Fatal(err)
		}
		for _, prefix := range []string{"", "/opt/dsm"} {
			dest := t.TempDir()
			args := []string{"-C", root, "--no-print-directory", "install", "DESTDIR=" + dest, "GO=" + gobin,
				"BIN=" + t.TempDir()}
			p := "/usr/local"
			if prefix != "" {
				args, p = append(args, "PREFIX="+prefix), prefix
			}
			if out, err := exec.Command("make", args...).CombinedOutput(); err != nil {
				t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			want := map[string]os.FileMode{
				"bin/migrated": 0o755, "bin/dsmrun": 0o755,
				"lib/systemd/system/migrated.service":           0o644,
				"share/man/man1/migrated.1":                     0o644,
				"share/man/man1/dsmrun.1":                       0o644,
				"share/bash-completion/completions/migrated":    0o644,
				"share/bash-completion/completions/dsmrun":      0o644,
				"share/zsh/site-functions/_migrated":            0o644,
				"share/zsh/site-functions/_dsmrun":              0o644,
				"share/fish/vendor_completions.d/migrated.fish": 0o644,
				"share/fish/vendor_completions.d/dsmrun.fish":   0o644,
			}
			for f, mode := range want {
				st, err := os.Stat(filepath.Join(dest, p, f))
				if err != nil {
					t.Errorf("make install PREFIX=%s: %v", p, err)
					continue
				}
				if st.Mode().Perm() != mode || st.Size() == 0 {
					t.Errorf("make install PREFIX=%s: %s has mode %v and %d bytes, want %v and some", p, f,
						st.Mode().Perm(), st.Size(), mode)
				}
			}
			var got []string
			filepath.WalkDir(dest, func(path string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					rel, _ := filepath.Rel(filepath.Join(dest, p), path)
					got = append(got, rel)
				}
				return nil
			})
			if len(got) != len(want) {
				t.Errorf("make install PREFIX=%s installed %q, want only %d files", p, got, len(want))
			}
			unit, _ := os.ReadFile(filepath.Join(dest, p, "lib/systemd/system/migrated.service"))
			if !pkgHasLine(string(unit), "KillMode=process") {
				t.Errorf("the installed unit lacks KillMode=process:\n%s", unit)
			}
			if !strings.Contains(string(unit), "\nExecStart="+p+"/bin/migrated serve ") {
				t.Errorf("the installed unit does not run %s/bin/migrated:\n%s", p, unit)
			}
			man, _ := os.ReadFile(filepath.Join(dest, p, "share/man/man1/migrated.1"))
			if !strings.Contains(string(man), ".TH migrated 1") {
				t.Errorf("the installed migrated.1 is no man page:\n%s", man)
			}
			args[3] = "uninstall"
			if out, err := exec.Command("make", args...).CombinedOutput(); err != nil {
				t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			for f := range want {
				if _, err := os.Stat(filepath.Join(dest, p, f)); err == nil {
					t.Errorf("make uninstall PREFIX=%s left %s", p, f)
				}
			}
		}
	})

	t.Run("config file", func(t *testing.T) {
		dir := t.TempDir()
		conf := filepath.Join(dir, "migrated.conf")
		for _, tc := range []struct {
			file string
			want string // stderr, after "migrated: FILE:"
		}{
			{"# a comment\n\nlisten = 10.0.0.5:7077\nlisen = 10.0.0.5:7077\n", `4: unknown key "lisen" (known: listen, `},
			{"log-level = verbose\n", `1: log-level: "verbose" is not a level: want debug, info, warn or error`},
			{"log-format = xml\n", `1: log-format: "xml" is not a format: want text or json`},
			{"  \nlisten 10.0.0.5:7077\n", `2: want KEY = VALUE, got "listen 10.0.0.5:7077"`},
			{"listen = 10.0.0.5:7077\nlisten = 10.0.0.6:7077\n", "2: listen is set twice (first on line 1)"},
			{"keep-free =\n", "1: keep-free has no value"},
			{"keep-free = lots\n", `1: keep-free: "lots" is not a size`},
			{"images-size = 150%\n", `1: images-size: "150%" is not a size`},
			{"state-dir = var/lib/migrated\n", `1: state-dir: "var/lib/migrated" is not an absolute path`},
			{"listen = 10.0.0.5\n", `1: listen: "10.0.0.5" is not ADDR:PORT`},
			{`token-file = "/etc/migrated/tok` + "\n", `1: token-file: bad quoted value`},
		} {
			if err := os.WriteFile(conf, []byte(tc.file), 0o644); err != nil {
				t.Fatal(err)
			}
			// The flags on the command line do not hide a wrong file.
			_, stderr, code := runBin(t, migrated, "serve", "--config", conf, "--listen", "10.0.0.5:7077",
				"--state-dir", dir)
			if code != 2 || !strings.HasPrefix(stderr, "migrated: "+conf+":"+tc.want) ||
				strings.Count(stderr, "\n") != 1 {
				t.Errorf("config file %q: exit status %d, stderr\n%s\nwant 2 and one line starting %q", tc.file, code,
					stderr, "migrated: "+conf+":"+tc.want)
			}
		}
		_, stderr, code := runBin(t, migrated, "serve", "--config", filepath.Join(dir, "none.conf"))
		if code != 2 || !strings.Contains(stderr, "none.conf: no such file") {
			t.Errorf("a missing --config file: exit status %d, %q", code, stderr)
		}
		// Settings from the file, the command line winning: a wildcard
		// --listen without --advertise is refused first thing, in words
		// that show which value the daemon got.
		os.WriteFile(conf, []byte("listen = 0.0.0.0:7077\nstate-dir = \""+dir+"\"\n"), 0o644)
		_, stderr, code = runBin(t, migrated, "serve", "--config", conf)
		if code != 1 || !strings.Contains(stderr, "--listen 0.0.0.0:7077 accepts peers on every address") {
			t.Errorf("listen and state-dir from the file: exit status %d, %q", code, stderr)
		}
		_, stderr, code = runBin(t, migrated, "serve", "--config", conf, "--listen", "0.0.0.0:7078")
		if code != 1 || !strings.Contains(stderr, "--listen 0.0.0.0:7078 accepts peers on every address") {
			t.Errorf("--listen over the file's: exit status %d, %q", code, stderr)
		}
		_, stderr, code = runBin(t, migrated, "serve", "--config", "", "--listen", "0.0.0.0:7077")
		if code != 2 || !strings.Contains(stderr, "migrated: missing --state-dir\n") {
			t.Errorf("no config file and no --state-dir: exit status %d, %q", code, stderr)
		}
		// Bad values on the command line: usage errors too.
		_, stderr, code = runBin(t, migrated, "serve", "--config", "", "--listen", "10.0.0.5:7077", "--state-dir",
			dir, "--log-level", "loud")
		if code != 2 || !strings.HasPrefix(stderr, `migrated: --log-level: "loud" is not a level`) {
			t.Errorf("--log-level loud: exit status %d, %q", code, stderr)
		}
	})

	// The daemon itself, on a state directory and socket of its own and a
	// loopback port: every line it logs is a JSON object with a time, a
	// level and a message, and --log-level drops what is below it.
	t.Run("json log", func(t *testing.T) {
		// A daemon that serves (with CRIU and root; without, it stops
		// at its check of CRIU, and says why in JSON too).
		recs, code := pkgServeLog(t, migrated, "", "--log-format", "json")
		pkgCheckJSON(t, recs)
		if len(recs) == 0 || recs[0].obj["level"] != "INFO" || recs[0].obj["msg"] != "starting" {
			t.Errorf("--log-format json: the first record is not INFO starting: %v", recs)
		}
		if code == 0 && recs[len(recs)-1].obj["msg"] != "shutting down" {
			t.Errorf("--log-format json: the daemon served and stopped without saying so: %v", recs)
		}
		if code != 0 {
			t.Logf("the daemon did not serve here (%v): only its start and stop were seen", recs[len(recs)-1].line)
		}
		// --log-level warn: the INFO records are left out; the reason the
		// daemon stops (a --listen it refuses at once) is an ERROR.
		recs, code = pkgServeLog(t, migrated, "127.0.0.1:0", "--log-format", "json", "--log-level", "warn")
		pkgCheckJSON(t, recs)
		if code != 1 || len(recs) != 1 || recs[0].obj["level"] != "ERROR" || recs[0].obj["msg"] != "stopped" ||
			!strings.Contains(recs[0].line, "picks a port at random") {
			t.Errorf("--log-level warn, a refused --listen: exit status %d, %v; want 1 and one ERROR record", code, recs)
		}
		// Text stays the default, the error in the program's words.
		recs, code = pkgServeLog(t, migrated, "127.0.0.1:0")
		if code != 1 || len(recs) != 2 || !strings.Contains(recs[0].line, "level=INFO msg=starting") ||
			!strings.HasPrefix(recs[1].line, "migrated: --listen 127.0.0.1:0 picks a port at random") {
			t.Errorf("the default log: exit status %d, %v; want slog's text, then the error", code, recs)
		}
	})
}

// pkgCheckJSON checks that each record is a JSON object with a time, a
// level and a message.
func pkgCheckJSON(t *testing.T, recs []pkgLogRecord) {
	t.Helper()
	for _, r := range recs {
		if r.err != nil {
			t.Errorf("--log-format json: a line that is no JSON object: %q (%v)", r.line, r.err)
			continue
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := r.obj[k].(string); !ok {
				t.Errorf("--log-format json: %q has no %s", r.line, k)
			}
		}
	}
}

// pkgLogRecord is one line of a daemon's standard error.
type pkgLogRecord struct {
	line string
	obj  map[string]any
	err  error // not a JSON object
}

// pkgServeLog runs `migrated serve` with args on a state directory, socket
// and --listen of its own (a free loopback port if listen is ""), reads its
// standard error until it serves (then stops it with SIGTERM) or exits
// (without CRIU or root it cannot serve), and returns what it logged and its
// exit status.
func pkgServeLog(t *testing.T, migrated, listen string, args ...string) ([]pkgLogRecord, int) {
	t.Helper()
	if listen == "" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		listen = l.Addr().String()
		l.Close()
	}
	cmd, stderr := startServe(t, migrated, listen, args...)
	var recs []pkgLogRecord
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		r := pkgLogRecord{line: sc.Text()}
		r.err = json.Unmarshal(sc.Bytes(), &r.obj)
		recs = append(recs, r)
		if r.obj["msg"] == "serving" || r.err != nil && strings.Contains(r.line, "msg=serving") {
			cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	io.Copy(io.Discard, stderr)
	err := cmd.Wait()
	code := 0
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return recs, code
}

func pkgHasLine(s, line string) bool {
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

// startServe starts `migrated serve` with args on a state directory and
// socket of its own, listening on listen, and returns it with its standard
// error to read. When the test ends it is killed if it still runs, and its
// images tmpfs (which a killed daemon leaves mounted) goes.
func startServe(t *testing.T, migrated, listen string, args ...string) (*exec.Cmd, io.ReadCloser) {
	t.Helper()
	dir := t.TempDir()
	criu := cmp.Or(os.Getenv("MIGRATED_CRIU"), "/usr/local/sbin/migrate-criu")
	cmd := exec.Command(migrated, append([]string{"--socket", filepath.Join(dir, "sock"), "serve", "--config", "",
		"--listen", listen, "--state-dir", filepath.Join(dir, "state"), "--criu", criu}, args...)...)
	cmd.Env = testEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			cmd.Wait()
		}
		unix.Unmount(filepath.Join(dir, "state", "images"), unix.MNT_DETACH)
	})
	return cmd, stderr
}
