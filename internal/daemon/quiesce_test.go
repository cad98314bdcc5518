package daemon

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// The helper answers each line: ok for a process it stopped, why not for
// anything else, and goes on.
func TestServeQuiesce(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	cmd := exec.Command("sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := strconv.Itoa(cmd.Process.Pid)
	var out bytes.Buffer
	if err := ServeQuiesce(strings.NewReader("abc\n0\n999999999\n"+pid+"\n"), &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 || lines[0] == "ok" || lines[1] == "ok" || lines[2] == "ok" || lines[3] != "ok" {
		t.Fatalf("replies %q: want three reasons and ok", lines)
	}
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	if state := strings.Fields(string(b))[2]; state != "T" {
		t.Fatalf("sleep is %q after ok, want T (stopped)", state)
	}
	syscall.Kill(cmd.Process.Pid, syscall.SIGCONT)
}
