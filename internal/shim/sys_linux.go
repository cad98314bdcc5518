package shim

import (
	"os"
	"strconv"
	"strings"
)

// name is the shim's comm: not "migrated", so that `pkill -x migrated` (a
// daemon's kill) never matches a shim.
const name = "migrated-shim"

func init() {
	// As early as can be: before the shim's Main runs, a `pkill -x
	// migrated` aimed at the daemon would match it.
	if len(os.Args) > 1 && os.Args[1] == Command {
		setName()
	}
}

// setName renames the process. Writing /proc/self/comm renames the thread
// group leader, which is what ps and pkill read, from any thread (prctl
// PR_SET_NAME renames only the calling thread).
func setName() {
	os.WriteFile("/proc/self/comm", []byte(name), 0)
}

// parentOf returns pid's parent pid, or 0.
func parentOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command is in parentheses and may hold anything: parse after it.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}
