package shim

import "os"

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
