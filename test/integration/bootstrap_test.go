package integration

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBootstrapGo: on a machine without Go (a PATH with no go on it),
// scripts/install-go.sh, pointed at an empty prefix, installs a Go that
// go.mod accepts, and the Makefile's go (scripts/go) finds it there; a second
// run finds it and needs no network; a prefix that holds something else is
// refused. It downloads the toolchain (about 70 MB) from the Go module proxy
// ($GOPROXY's first http(s) entry, else proxy.golang.org) and skips, saying
// so, only when that proxy cannot be reached. It needs no cluster.
func TestBootstrapGo(t *testing.T) {
	proxy := "https://proxy.golang.org"
	for _, e := range strings.FieldsFunc(os.Getenv("GOPROXY"), func(r rune) bool { return r == ',' || r == '|' }) {
		if strings.HasPrefix(e, "http://") || strings.HasPrefix(e, "https://") {
			proxy = strings.TrimSuffix(e, "/")
			break
		}
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Get(proxy + "/golang.org/toolchain/@v/list")
	if err != nil { // no answer at all (an HTTP error status is an answer: the installer then fails)
		t.Skipf("the Go module proxy %s cannot be reached from here (%v): the installer's download cannot be tried", proxy, err)
	}
	resp.Body.Close()

	need := goModGo(t)
	noGo := pathWithoutGo(t)
	prefix := t.TempDir() // empty
	env := bootstrapEnv(noGo)
	installer := filepath.Join(repo, "scripts", "install-go.sh")

	run := func(env []string, name string, args ...string) (string, error) {
		cmd := exec.Command(name, args...)
		cmd.Env, cmd.Dir = env, repo
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run(env, installer, prefix)
	if err != nil {
		t.Fatalf("install-go.sh %s with PATH=%s: %v\n%s", prefix, noGo, err, out)
	}
	t.Logf("install-go.sh %s:\n%s", prefix, out)

	// go.mod accepts it: its version is at least the go line, and go, told
	// not to switch toolchains, loads the module.
	goBin := filepath.Join(prefix, "bin", "go")
	local := append(env, "GOTOOLCHAIN=local")
	out, err = run(local, goBin, "version")
	m := regexp.MustCompile(`^go version go(\S+) `).FindStringSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("%s version: %v: %q", goBin, err, out)
	}
	if !goVersionAtLeast(m[1], need) {
		t.Fatalf("installed go%s, go.mod needs go %s", m[1], need)
	}
	if out, err = run(local, goBin, "list", "-m"); err != nil || strings.TrimSpace(out) != "dsmigrate" {
		t.Fatalf("GOTOOLCHAIN=local go list -m with the installed go: %v: %q", err, out)
	}

	// It builds and runs a program, from a cold build cache.
	hello := t.TempDir()
	os.WriteFile(filepath.Join(hello, "go.mod"), []byte("module hello\n\ngo "+need+"\n"), 0o644)
	os.WriteFile(filepath.Join(hello, "main.go"), []byte("package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello from\", 42) }\n"), 0o644)
	cmd := exec.Command(goBin, "run", ".")
	cmd.Dir = hello
	cmd.Env = append(local, "GOCACHE="+t.TempDir(), "GOFLAGS=", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil || string(b) != "hello from 42\n" {
		t.Fatalf("go run of a small program with the installed go: %v: %q", err, b)
	}

	// The Makefile's go finds it in GO_PREFIX when PATH has none.
	out, err = run(append(env, "GO_PREFIX="+prefix, "DSMIGRATE_GO_INSTALL=0"), filepath.Join(repo, "scripts", "go"), "env", "GOROOT")
	if err != nil || strings.TrimSpace(out) != prefix {
		t.Fatalf("scripts/go env GOROOT with GO_PREFIX=%s and no go on PATH: %v: %q, want %s", prefix, err, out, prefix)
	}

	// A second run finds it: nothing to do, no network (a proxy nothing answers at).
	out, err = run(append(env, "GOPROXY=http://127.0.0.1:9"), installer, prefix)
	if err != nil || out != "" {
		t.Fatalf("install-go.sh a second time: %v: %q, want nothing done and nothing said", err, out)
	}

	// A prefix that holds something else than Go is left alone.
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "notes.txt"), []byte("mine\n"), 0o644)
	out, err = run(env, installer, other)
	if exitStatus(err) != 1 || !strings.Contains(out, "is not a Go installation") {
		t.Fatalf("install-go.sh into a directory that holds other files: %v: %q, want status 1 and a refusal", err, out)
	}
	if b, _ := os.ReadFile(filepath.Join(other, "notes.txt")); string(b) != "mine\n" {
		t.Fatalf("install-go.sh changed %s", other)
	}
}

// goModGo is go.mod's go line (1.26.0).
func goModGo(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go\s+(\S+)\s*$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	return string(m[1])
}

// goVersionAtLeast compares Go release versions such as 1.26.8 and 1.26.0
// (1.26 is 1.26.0).
func goVersionAtLeast(v, min string) bool {
	parse := func(s string) (n [3]int) {
		for i, f := range strings.SplitN(s, ".", 3) {
			n[i], _ = strconv.Atoi(f)
		}
		return
	}
	a, b := parse(v), parse(min)
	for i := range a {
		if a[i] != b[i] {
			return a[i] > b[i]
		}
	}
	return true
}

// pathWithoutGo is the usual PATH of a root shell on Debian less any
// directory that holds a go, except /usr/bin and /bin (where a Debian golang
// package's go is too old for go.mod, and the installer must pass it by).
func pathWithoutGo(t *testing.T) string {
	t.Helper()
	var dirs []string
	for _, d := range []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
		if _, err := os.Stat(filepath.Join(d, "go")); err == nil && d != "/usr/bin" && d != "/bin" {
			continue
		}
		dirs = append(dirs, d)
	}
	p := strings.Join(dirs, ":")
	out, err := exec.Command("env", "PATH="+p, "sh", "-c", `command -v go && cd / && GOTOOLCHAIN=local go version`).Output()
	if err == nil {
		if m := regexp.MustCompile(`go version go(\S+) `).FindSubmatch(out); m != nil && goVersionAtLeast(string(m[1]), goModGo(t)) {
			t.Fatalf("PATH=%s holds a go new enough for go.mod (%s): the installer would have nothing to do", p, strings.TrimSpace(string(out)))
		}
	}
	return p
}

// bootstrapEnv is this environment with PATH set to path and nothing that
// names a Go toolchain (go test puts its own GOROOT's bin first on PATH).
func bootstrapEnv(path string) []string {
	env := []string{"PATH=" + path}
	for _, e := range os.Environ() {
		k, _, _ := strings.Cut(e, "=")
		switch k {
		case "PATH", "GOROOT", "GO", "GO_PREFIX", "GO_VERSION", "GOTOOLCHAIN", "GOBIN", "DSMIGRATE_GO_INSTALL":
			continue
		}
		env = append(env, e)
	}
	return env
}
