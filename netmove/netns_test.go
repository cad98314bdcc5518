package netmove

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// testNet is a pair of throwaway network namespaces joined by a veth pair:
// a's interface "nma" holds 10.78.<n>.1/24, b's "nmb" holds 10.78.<n>.2/24.
type testNet struct {
	a, b   string // namespace names
	subnet string // "10.78.<n>"
}

// needRoot skips tests that need root (namespaces, nft, packet sockets).
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
}

// newTestNet creates the namespaces, named after the test process so that
// parallel runs do not collide, and removes them when the test ends.
func newTestNet(t *testing.T, n int) *testNet {
	t.Helper()
	needRoot(t)
	id := fmt.Sprintf("nmtest-%d-%d", os.Getpid(), n)
	tn := &testNet{a: id + "a", b: id + "b", subnet: fmt.Sprintf("10.78.%d", n)}
	for _, ns := range []string{tn.a, tn.b} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	run(t, "ip", "-n", tn.a, "link", "add", "nma", "type", "veth", "peer", "name", "nmb", "netns", tn.b)
	run(t, "ip", "-n", tn.a, "addr", "add", tn.subnet+".1/24", "dev", "nma")
	run(t, "ip", "-n", tn.b, "addr", "add", tn.subnet+".2/24", "dev", "nmb")
	run(t, "ip", "-n", tn.a, "link", "set", "nma", "up")
	run(t, "ip", "-n", tn.b, "link", "set", "nmb", "up")
	return tn
}

// run runs a command and fails the test if it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// in runs fn in namespace ns, on a locked OS thread that is thrown away
// afterwards (it never returns to the scheduler in the wrong namespace).
// Commands fn starts inherit the namespace.
func in(t *testing.T, ns string, fn func() error) error {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatalf("namespace %s: %v", ns, err)
	}
	defer h.Close()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := netns.Set(h); err != nil {
			done <- fmt.Errorf("entering %s: %w", ns, err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// mustIn is in for functions that cannot fail on their own.
func mustIn(t *testing.T, ns string, fn func() error) {
	t.Helper()
	if err := in(t, ns, fn); err != nil {
		t.Fatal(err)
	}
}
