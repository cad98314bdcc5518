package main

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
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
	if err := serveQuiesce(strings.NewReader("abc\n0\n999999999\n"+pid+"\n"), &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 || lines[0] == "ok" || lines[1] == "ok" || lines[2] == "ok" || lines[3] != "ok" {
		t.Fatalf("replies %q: want three reasons and ok", lines)
	}
	// It lets go with SIGSTOP queued: the stop follows at once.
	state := ""
	for end := time.Now().Add(2 * time.Second); state != "T" && time.Now().Before(end); time.Sleep(time.Millisecond) {
		b, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			t.Fatal(err)
		}
		state = strings.Fields(string(b))[2]
	}
	if state != "T" {
		t.Fatalf("sleep is %q after ok, want T (stopped)", state)
	}
	syscall.Kill(cmd.Process.Pid, syscall.SIGCONT)
}
