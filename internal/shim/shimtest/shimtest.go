// Package shimtest is the TestMain of packages whose tests start shims. The
// test binary is the shim too (the daemon starts /proc/self/exe with the
// hidden command shim.Command), orphans come to it rather than to this
// machine's PID 1 (which does not reap them), and a run that leaves any
// process behind fails.
package shimtest

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"dsmigrate/criu"
	"dsmigrate/internal/shim"
)

// Main runs the tests of m, or, when the binary is started as a shim (or as
// one of the extra commands, by name), that instead.
func Main(m *testing.M, extra map[string]func() int) {
	if len(os.Args) > 1 {
		if os.Args[1] == shim.Command {
			if err := shim.Main(); err != nil {
				fmt.Fprintln(os.Stderr, "shim:", err)
				os.Exit(1)
			}
			os.Exit(0)
		}
		if f := extra[os.Args[1]]; f != nil {
			os.Exit(f())
		}
	}
	// Race-built shims would each sleep a second at exit (TSan's default).
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Println("PR_SET_CHILD_SUBREAPER:", err)
		os.Exit(1)
	}
	code := m.Run()
	if left := leftovers(); left != "" {
		fmt.Println("processes left behind:", left)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// leftovers kills and reaps this process's remaining children (all orphans
// of the tests come here) and names those that were still alive.
func leftovers() string {
	var alive []string
	me := os.Getpid()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || criu.ParentOf(pid) != me {
			continue
		}
		var ws unix.WaitStatus
		if got, _ := unix.Wait4(pid, &ws, unix.WNOHANG, nil); got == pid {
			continue // it had ended: reaped now
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		alive = append(alive, fmt.Sprintf("%d (%s)", pid, strings.TrimSpace(string(comm))))
		unix.Kill(pid, unix.SIGKILL)
		unix.Wait4(pid, &ws, 0, nil)
	}
	return strings.Join(alive, ", ")
}
