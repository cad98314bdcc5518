package runtime

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// The test binary is also the child of TestPassSecret (childEnv set).
const childEnv = "RUNTIME_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "secret" {
		os.Exit(secretChild())
	}
	os.Exit(m.Run())
}

// secretChild is a rank started with PassSecret: it prints what Self read,
// and checks that nothing of the secret is left where it should not be.
func secretChild() int {
	fdNum := os.Getenv(EnvSecretFD)
	id, err := Self()
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	if v, ok := os.LookupEnv(EnvSecretFD); ok {
		fmt.Printf("error: %s=%s still set after Self\n", EnvSecretFD, v)
		return 1
	}
	if _, err := os.Readlink("/proc/self/fd/" + fdNum); err == nil {
		fmt.Printf("error: descriptor %s still open after Self\n", fdNum)
		return 1
	}
	for _, f := range []string{"/proc/self/environ", "/proc/self/cmdline"} {
		b, _ := os.ReadFile(f)
		if bytes.Contains(b, id.Secret) || bytes.Contains(b, []byte(hex.EncodeToString(id.Secret))) {
			fmt.Printf("error: the secret is in %s\n", f)
			return 1
		}
	}
	fmt.Printf("fd=%s secret=%x encrypt=%v\n", fdNum, id.Secret, id.Encrypt)
	return 0
}

// resetSecret forgets what an earlier test's Self read, now and when the
// test ends.
func resetSecret(t *testing.T) {
	t.Helper()
	reset := func() {
		jobSecret.mu.Lock()
		defer jobSecret.mu.Unlock()
		jobSecret.done, jobSecret.b, jobSecret.err = false, nil, nil
	}
	reset()
	t.Cleanup(reset)
}

// secretFD makes a pipe holding content, with its write end closed, and
// sets DSM_SECRET_FD to a descriptor of its read end, as a launcher would.
// It returns the descriptor and what /proc/self/fd shows for it.
func secretFD(t *testing.T, content []byte) (int, string) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(content); err != nil {
		t.Fatal(err)
	}
	w.Close()
	// A descriptor of its own, which Self closes (not r's: r.Close would
	// close it again, or another file's by then).
	fd, err := syscall.Dup(int(r.Fd()))
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	syscall.CloseOnExec(fd)
	target, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	t.Cleanup(func() {
		if isOpen(fd, target) {
			syscall.Close(fd)
		}
	})
	t.Setenv(EnvSecretFD, strconv.Itoa(fd))
	return fd, target
}

// isOpen says whether descriptor fd is still the file target.
func isOpen(fd int, target string) bool {
	got, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	return err == nil && got == target
}

func setRank(t *testing.T) {
	t.Helper()
	t.Setenv(EnvID, "abc")
	t.Setenv(EnvJob, "j1")
	t.Setenv(EnvRank, "1")
	t.Setenv(EnvSize, "2")
	t.Setenv(EnvPeers, "10.0.0.1:20000,10.0.0.2:20001")
	t.Setenv(EnvEncrypt, "")
}

func testSecret() []byte {
	b := make([]byte, SecretLen)
	for i := range b {
		b[i] = byte(0xa0 + i)
	}
	return b
}

func TestSelf(t *testing.T) {
	resetSecret(t)
	setRank(t)
	fd, target := secretFD(t, testSecret())
	id, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if id.ID != "abc" || id.Job != "j1" || id.Rank != 1 || id.Size != 2 || id.Peers[1] != "10.0.0.2:20001" ||
		!bytes.Equal(id.Secret, testSecret()) || id.Encrypt {
		t.Fatalf("Self() = %+v", id)
	}
	if isOpen(fd, target) {
		t.Errorf("the secret's descriptor %d is still open after Self", fd)
	}
	if v, ok := os.LookupEnv(EnvSecretFD); ok {
		t.Errorf("%s=%s is still set after Self", EnvSecretFD, v)
	}
	for _, bad := range []struct{ k, v string }{{EnvRank, "x"}, {EnvRank, "2"}, {EnvSize, "0"}, {EnvPeers, "a:1"},
		{EnvEncrypt, "yes"}, {EnvEncrypt, "true"}} {
		t.Run(bad.k+"="+bad.v, func(t *testing.T) {
			t.Setenv(bad.k, bad.v)
			if _, err := Self(); err == nil {
				t.Fatalf("Self() accepted %s=%q", bad.k, bad.v)
			}
		})
	}
	t.Run("encrypt", func(t *testing.T) {
		t.Setenv(EnvEncrypt, "1")
		if id, err := Self(); err != nil || !id.Encrypt {
			t.Fatalf("Self() with %s=1: %+v, %v", EnvEncrypt, id, err)
		}
	})
}

// A process that is no rank has no secret to read, and leaves the
// descriptor alone.
func TestSelfNotARank(t *testing.T) {
	resetSecret(t)
	t.Setenv(EnvJob, "")
	fd, target := secretFD(t, testSecret())
	id, err := Self()
	if err != nil || id.Secret != nil {
		t.Fatalf("Self() outside a job = %+v, %v", id, err)
	}
	if !isOpen(fd, target) || os.Getenv(EnvSecretFD) == "" {
		t.Fatal("Self outside a job consumed the secret's descriptor")
	}
}

func TestSelfNoSecret(t *testing.T) {
	resetSecret(t)
	setRank(t)
	t.Setenv(EnvSecretFD, "")
	os.Unsetenv(EnvSecretFD)
	_, err := Self()
	if err == nil || !strings.Contains(err.Error(), "no job secret (DSM_SECRET_FD): launch ranks with dsmrun run") {
		t.Fatalf("Self() without %s: %v", EnvSecretFD, err)
	}
}

func TestSelfWrongLength(t *testing.T) {
	for _, n := range []int{0, 1, SecretLen - 1, SecretLen + 1, 4096} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			resetSecret(t)
			setRank(t)
			fd, target := secretFD(t, bytes.Repeat([]byte{7}, n))
			_, err := Self()
			if err == nil || !strings.Contains(err.Error(), "want 32") {
				t.Fatalf("Self() with a %d-byte secret: %v", n, err)
			}
			if isOpen(fd, target) {
				t.Errorf("descriptor %d still open after a refused secret", fd)
			}
			// The descriptor is gone: the refusal is the answer from now on.
			if _, err2 := Self(); err2 == nil || err2.Error() != err.Error() {
				t.Errorf("second Self() = %v, want the first error again (%v)", err2, err)
			}
		})
	}
}

// A number that names no pipe (a typo, a launch by hand that passed no
// descriptor) is refused, and a descriptor that is not the secret's is
// not closed.
func TestSelfBadFD(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lf, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	sock := int(lf.Fd())
	sockTarget, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", sock))
	unused := 1 << 20 // above any RLIMIT_NOFILE here: never open
	for _, v := range []string{"x", "-1", "0", "2", strconv.Itoa(unused), strconv.Itoa(sock)} {
		t.Run(v, func(t *testing.T) {
			resetSecret(t)
			setRank(t)
			t.Setenv(EnvSecretFD, v)
			if _, err := Self(); err == nil || !strings.Contains(err.Error(), "dsmrun run") {
				t.Fatalf("Self() with %s=%s: %v", EnvSecretFD, v, err)
			}
		})
	}
	if !isOpen(sock, sockTarget) {
		t.Fatal("Self closed a socket that DSM_SECRET_FD named")
	}
}

// The secret is read once: later calls return it although the descriptor
// is closed and DSM_SECRET_FD unset, and what a caller does to its copy
// does not change what the next one gets.
func TestSelfCachesTheSecret(t *testing.T) {
	resetSecret(t)
	setRank(t)
	fd, target := secretFD(t, testSecret())
	id1, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if isOpen(fd, target) {
		t.Fatal("the descriptor is still open after the first Self")
	}
	clear(id1.Secret)
	for range 3 {
		id2, err := Self()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(id2.Secret, testSecret()) {
			t.Fatalf("a later Self() got the secret %x, want %x", id2.Secret, testSecret())
		}
	}
}

func TestSelfConcurrent(t *testing.T) {
	resetSecret(t)
	setRank(t)
	secretFD(t, testSecret())
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			id, err := Self()
			if err == nil && !bytes.Equal(id.Secret, testSecret()) {
				err = fmt.Errorf("got %x", id.Secret)
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// PassSecret's secret reaches a real child's Self, and nothing else of the
// child's shows it.
func TestPassSecret(t *testing.T) {
	for _, extra := range []int{0, 2} {
		t.Run(fmt.Sprintf("after %d other descriptors", extra), func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = []string{childEnv + "=secret", "GORACE=atexit_sleep_ms=0", EnvJob + "=j", EnvRank + "=0",
				EnvSize + "=1", EnvPeers + "=127.0.0.1:1", EnvEncrypt + "=1"}
			for range extra {
				f, err := os.Open(os.DevNull)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				cmd.ExtraFiles = append(cmd.ExtraFiles, f)
			}
			r, err := PassSecret(cmd, testSecret())
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err = cmd.Start()
			r.Close()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("child: %v\n%s", err, out.String())
			}
			want := fmt.Sprintf("fd=%d secret=%x encrypt=true\n", 3+extra, testSecret())
			if out.String() != want {
				t.Fatalf("child says %q, want %q", out.String(), want)
			}
			for _, a := range append(cmd.Args, cmd.Env...) {
				if strings.Contains(a, string(testSecret())) || strings.Contains(a, hex.EncodeToString(testSecret())) {
					t.Fatalf("the secret is in the child's command line or environment: %q", a)
				}
			}
		})
	}
}

func TestPassSecretRefuses(t *testing.T) {
	cmd := exec.Command("true")
	if _, err := PassSecret(cmd, testSecret()); err == nil || !strings.Contains(err.Error(), "cmd.Env") {
		t.Fatalf("PassSecret with a nil Env: %v", err)
	}
	cmd.Env = []string{}
	for _, n := range []int{0, SecretLen - 1, SecretLen + 1} {
		if _, err := PassSecret(cmd, make([]byte, n)); err == nil {
			t.Fatalf("PassSecret accepted a %d-byte secret", n)
		}
	}
	if len(cmd.ExtraFiles) != 0 || len(cmd.Env) != 0 {
		t.Fatalf("a refused PassSecret changed the Cmd: %v, %v", cmd.ExtraFiles, cmd.Env)
	}
}

func TestRegisterOutsideMigrated(t *testing.T) {
	t.Setenv(EnvID, "")
	t.Setenv(EnvControl, "")
	if err := Register(Hooks{}); !errors.Is(err, ErrNotManaged) {
		t.Fatalf("Register outside migrated: %v, want ErrNotManaged", err)
	}
}
