package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"dsmigrate/internal/wire"
)

// TestREADME runs the shell blocks of README.md (fenced ```sh, ```bash or
// ```shell; other blocks, such as ```go or ```text, are not commands), so
// that its recipes work as written. Each block is one of:
//
//   - skipped: it matches an entry of readmeSkip, which says why (the one
//     place to add a block that cannot run here);
//   - a synopsis: every command in it starts with `migrated` or `dsmrun` and
//     it has placeholders (ADDR:PORT, [--flag ...]): each command and flag it
//     names must exist, which the real binary's `COMMAND --help` says (exit 0,
//     every --flag and -f listed);
//   - a recipe: everything else, run with `bash -e` from the repository's top
//     in a private mount namespace where /etc, /usr, /opt and /var are
//     copy-on-write overlays (what it installs or configures stays out of this
//     machine), with an environment that has none of the test's MIGRATED_*,
//     CLUSTER_* or DSMIGRATE_* settings (a user's shell has none). A recipe
//     runs on the test's shared namespace cluster: its lines
//     `test/integration/cluster.sh up N` (N at most the cluster's hosts) and
//     `test/integration/cluster.sh down` are left to the harness, which has
//     brought the hosts up and takes them down. readmeChecks adds checks of
//     what a recipe made. A block that fails fails the test, with its output.
//
// Every process a recipe starts is killed when it ends (its process group),
// and the hosts are cleaned as for every test (guardHosts).
func TestREADME(t *testing.T) {
	needHosts(t, 3)
	blocks := readmeBlocks(t, filepath.Join(repo, "README.md"))
	if len(blocks) == 0 {
		t.Fatal("README.md has no shell block")
	}
	used := map[string]bool{}
	for _, b := range blocks {
		t.Run(fmt.Sprintf("line%d", b.line), func(t *testing.T) {
			for _, s := range readmeSkip {
				if strings.Contains(b.text, s.match) {
					used[s.match] = true
					t.Skipf("README.md:%d (%s): %s", b.line, firstLine(b.text), s.reason)
				}
			}
			if readmeSynopsis(b.text) {
				checkSynopsis(t, b)
				return
			}
			runRecipe(t, b)
		})
	}
	for _, s := range readmeSkip {
		if !used[s.match] {
			t.Errorf("readmeSkip has %q, which no shell block of README.md holds any more: remove the entry", s.match)
		}
	}
}

// readmeSkip lists the README's shell blocks that this test does not run: a
// block that holds match is skipped, for reason.
var readmeSkip = []struct{ match, reason string }{
	{"make demo", "`make demo` brings up four namespace hosts of its own (taking down the ones the tests share) and " +
		"runs for minutes, and `make test` is the suite this test is part of; the Go toolchain both install first " +
		"is TestBootstrapGo's"},
}

// readmeChecks are shell commands run after the recipe that holds match, in
// its shell and namespace, with the test's own check of what they print.
var readmeChecks = []struct {
	match, script string
	check         func(t *testing.T, out string)
}{
	{"/etc/migrated/token", `echo "#stat"; stat -c '%a %U %n' /etc/migrated /etc/migrated/token; echo "#token"; cat /etc/migrated/token`,
		func(t *testing.T, out string) {
			_, rest, _ := strings.Cut(out, "#stat\n")
			stat, tok, _ := strings.Cut(rest, "#token\n")
			if want := "700 root /etc/migrated\n600 root /etc/migrated/token\n"; stat != want {
				t.Errorf("modes and owners after the token recipe:\n%swant:\n%s", stat, want)
			}
			// The daemon's own loader must accept it (it checks the mode too).
			f := filepath.Join(t.TempDir(), "token")
			if err := os.WriteFile(f, []byte(tok), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := wire.LoadToken(f); err != nil {
				t.Errorf("the token the README makes is refused: %v (%q)", err, tok)
			}
		}},
	{"cluster.sh env", `echo "#env"; env | grep -E '^MIGRATED_(HOSTS|TOKEN_FILE)=' | sort`,
		func(t *testing.T, out string) {
			_, env, _ := strings.Cut(out, "#env\n")
			if want := "MIGRATED_HOSTS=" + hostsEnv + "\n"; !strings.Contains(env, want) {
				t.Errorf("after eval $(cluster.sh env), the environment that commands see lacks %s:\n%s", want, out)
			}
		}},
}

type readmeBlock struct {
	line int    // of the opening fence
	text string // the lines between the fences
}

// readmeBlocks returns the shell blocks of the Markdown file at path.
func readmeBlocks(t *testing.T, path string) []readmeBlock {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []readmeBlock
	var cur *readmeBlock
	var shell bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		fence := strings.HasPrefix(strings.TrimSpace(l), "```")
		switch {
		case fence && cur == nil:
			lang := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "```"))
			cur, shell = &readmeBlock{line: n}, lang == "sh" || lang == "bash" || lang == "shell"
		case fence:
			if shell {
				out = append(out, *cur)
			}
			cur = nil
		case cur != nil:
			cur.text += l + "\n"
		}
	}
	if cur != nil {
		t.Fatalf("%s:%d: a fenced block that never ends", path, cur.line)
	}
	return out
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return l
}

// placeholder is what a synopsis has and a recipe does not: an optional part
// in brackets, or a word in capitals standing for a value (ADDR:PORT, ID, N).
var placeholder = regexp.MustCompile(`\[|(^|[\s=,])[A-Z][A-Z0-9_]*(:[A-Z]+)?([\s,.]|$)`)

// synopsisCommands is the block's commands: comments cut, continuation lines
// (indented) joined to theirs, alternatives (" | ") split, each with its
// program's name.
func synopsisCommands(text string) []string {
	var cmds []string
	for _, l := range strings.Split(text, "\n") {
		if i := strings.Index(l, "#"); i >= 0 {
			l = l[:i]
		}
		if strings.TrimSpace(l) == "" {
			continue
		}
		if (strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")) && len(cmds) > 0 {
			cmds[len(cmds)-1] += " " + strings.TrimSpace(l)
			continue
		}
		cmds = append(cmds, strings.TrimSpace(l))
	}
	var out []string
	for _, c := range cmds {
		prog, _, _ := strings.Cut(c, " ")
		for i, alt := range strings.Split(c, " | ") {
			if i > 0 {
				alt = prog + " " + strings.TrimSpace(alt)
			}
			out = append(out, alt)
		}
	}
	return out
}

func readmeSynopsis(text string) bool {
	cmds := synopsisCommands(text)
	if len(cmds) == 0 || !placeholder.MatchString(text) {
		return false
	}
	for _, c := range cmds {
		if !strings.HasPrefix(c, "migrated ") && !strings.HasPrefix(c, "dsmrun ") {
			return false
		}
	}
	return true
}

var synopsisFlag = regexp.MustCompile(`(^|[\s\[|])(--?[a-zA-Z][a-zA-Z0-9-]*)`)

// checkSynopsis checks each command of a synopsis block against the real
// binary's help.
func checkSynopsis(t *testing.T, b readmeBlock) {
	for _, c := range synopsisCommands(b.text) {
		words := strings.Fields(c)
		args := []string{}
		if len(words) > 1 && regexp.MustCompile(`^[a-z][a-z-]*$`).MatchString(words[1]) {
			args = append(args, words[1])
		}
		cmd := exec.Command(filepath.Join(repo, "bin", words[0]), append(args, "--help")...)
		cmd.Env = readmeEnv()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("README.md:%d: `%s`: `%s --help` failed (%v):\n%s", b.line, c, strings.Join(append(words[:1], args...), " "), err, out)
			continue
		}
		for _, m := range synopsisFlag.FindAllStringSubmatch(c, -1) {
			flag := m[2]
			if !regexp.MustCompile(`(^|[\s,])` + regexp.QuoteMeta(flag) + `([\s,=]|$)`).Match(out) {
				t.Errorf("README.md:%d: `%s` names %s, which `%s --help` does not list:\n%s",
					b.line, c, flag, strings.Join(append(words[:1], args...), " "), out)
			}
		}
	}
}

// readmeEnv is the test's environment less the settings a user's shell does
// not have: those the harness set for the tests (MIGRATED_HOSTS...) and the
// tests' own.
func readmeEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		k, _, _ := strings.Cut(e, "=")
		if strings.HasPrefix(k, "MIGRATED_") || strings.HasPrefix(k, "CLUSTER_") || strings.HasPrefix(k, "DSMIGRATE_") {
			continue
		}
		env = append(env, e)
	}
	return env
}

var clusterLine = regexp.MustCompile(`^\s*test/integration/cluster\.sh\s+(up\s+(\d+)|down)\s*(#.*)?$`)

// runRecipe runs a recipe block as the type comment says.
func runRecipe(t *testing.T, b readmeBlock) {
	script := ""
	for _, l := range strings.Split(strings.TrimRight(b.text, "\n"), "\n") {
		m := clusterLine.FindStringSubmatch(l)
		switch {
		case m == nil:
			script += l + "\n"
			continue
		case cluster != filepath.Join(repo, "test", "integration", "cluster.sh"):
			t.Skipf("README.md:%d runs the namespace cluster; the tests run on %s", b.line, cluster)
		case m[2] != "":
			if n, _ := strconv.Atoi(m[2]); n > nHosts {
				t.Fatalf("README.md:%d: %q wants %d hosts, the tests' cluster has %d", b.line, l, n, nHosts)
			}
		}
		script += "true # left to the harness (its cluster is up): " + strings.TrimSpace(l) + "\n"
	}
	var check func(*testing.T, string)
	for _, c := range readmeChecks {
		if strings.Contains(b.text, c.match) {
			script += c.script + "\n"
			check = c.check
		}
	}
	dir := t.TempDir()
	// The sandbox: the overlays, then the block, from the repository's top.
	runner := `set -eu
for d in /etc /usr /opt /var; do
	[ -d "$d" ] || continue
	mkdir -p "$1/upper$d" "$1/work$d"
	mount -t overlay overlay -o "lowerdir=$d,upperdir=$1/upper$d,workdir=$1/work$d" "$d"
done
cd "$2"
exec bash -e "$1/block.sh"
`
	if err := os.WriteFile(filepath.Join(dir, "block.sh"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), scaled(3*time.Minute))
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "--",
		"bash", "-c", runner, "readme-runner", dir, repo)
	cmd.Env = readmeEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// On a time-out or a failure, nothing the recipe started lives on.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if ctx.Err() != nil {
		err = errors.Join(err, fmt.Errorf("did not end within %v", scaled(3*time.Minute)))
	}
	if err != nil {
		t.Fatalf("README.md:%d: the block failed (%v):\n%s\noutput:\n%s", b.line, err, b.text, out.String())
	}
	t.Logf("README.md:%d ran:\n%s", b.line, out.String())
	if check != nil {
		check(t, out.String())
	}
}
