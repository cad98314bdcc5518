package shim

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A workload that is not root's runs as its owner, but its init (tini) runs
// as root: CRIU's parasite, dumping the root of a pid namespace, needs a
// /proc of that namespace and mounts one from inside the init, which an
// unprivileged init may not do ("can't dump unprivileged task whose /proc
// doesn't belong to it"). So the init runs `BINARY as-user UID GID GROUPS
// DIR -- PATH ARG...` (this binary: the shim's), which becomes the owner and
// only then enters DIR and executes PATH, so that both are checked as the
// owner. The init stays root's and holds nothing of the owner's: a pid 1
// that reaps and forwards signals, which the owner can neither signal nor
// trace.

// asUserCommand is the argv[1] that makes this binary asUser.
const asUserCommand = "as-user"

func init() {
	// Before anything else of the binary runs: this is the workload's
	// first instruction but for the exec.
	if len(os.Args) > 1 && os.Args[1] == asUserCommand {
		err := asUser(os.Args[2:])
		fmt.Fprintf(os.Stderr, "cannot start the process as its owner: %v\n", err)
		os.Exit(127)
	}
}

// asUserArgs is the init's command line that runs path with argv[1:] as
// cred in dir.
func asUserArgs(self string, cred *syscall.Credential, dir, path string, argv []string) []string {
	groups := make([]string, len(cred.Groups))
	for i, g := range cred.Groups {
		groups[i] = strconv.FormatUint(uint64(g), 10)
	}
	return append([]string{self, asUserCommand, strconv.FormatUint(uint64(cred.Uid), 10),
		strconv.FormatUint(uint64(cred.Gid), 10), strings.Join(groups, ","), dir, "--", path}, argv[1:]...)
}

// asUser sets the calling thread's groups, gid and uid (real, effective and
// saved, so that no way back to root is kept; the capabilities go with
// uid 0), enters dir and executes the program; it returns only an error.
// Everything happens on one locked thread with raw system calls: execve
// takes the credentials of the thread that calls it, and ends the others.
func asUser(args []string) error {
	if len(args) < 6 || args[4] != "--" {
		return fmt.Errorf("usage: %s UID GID GROUPS DIR -- PATH ARG...", asUserCommand)
	}
	uid, err1 := strconv.ParseUint(args[0], 10, 32)
	gid, err2 := strconv.ParseUint(args[1], 10, 32)
	if err1 != nil || err2 != nil || uid == 0 {
		return fmt.Errorf("bad owner %s:%s", args[0], args[1])
	}
	var groups []uint32
	if args[2] != "" {
		for _, s := range strings.Split(args[2], ",") {
			g, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return fmt.Errorf("bad group %q", s)
			}
			groups = append(groups, uint32(g))
		}
	}
	dir, path, argv := args[3], args[5], args[5:]
	runtime.LockOSThread()
	var gp unsafe.Pointer
	if len(groups) > 0 {
		gp = unsafe.Pointer(&groups[0])
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(gp), 0); e != 0 {
		return fmt.Errorf("setgroups: %v", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); e != 0 {
		return fmt.Errorf("setresgid %d: %v", gid, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
		return fmt.Errorf("setresuid %d: %v", uid, e)
	}
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("cannot enter %s as uid %d: %v", dir, uid, err)
	}
	argv0, err := syscall.BytePtrFromString(path)
	if err != nil {
		return err
	}
	argvp, err := syscall.SlicePtrFromStrings(argv)
	if err != nil {
		return err
	}
	envp, err := syscall.SlicePtrFromStrings(os.Environ())
	if err != nil {
		return err
	}
	_, _, e := unix.RawSyscall(unix.SYS_EXECVE, uintptr(unsafe.Pointer(argv0)), uintptr(unsafe.Pointer(&argvp[0])),
		uintptr(unsafe.Pointer(&envp[0])))
	return fmt.Errorf("cannot run %s as uid %d: %v", path, uid, e)
}
