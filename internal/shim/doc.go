// Package shim is the small supervisor that runs beside every process the
// daemon launches or restores, as containerd's shim and podman's conmon do
// for containers.
//
// # Why
//
// A process's parent reaps it and whoever holds the read end of its output
// pipe keeps it alive: a process writing to a pipe nobody reads dies of
// SIGPIPE. When the daemon itself was both, killing or restarting the daemon
// orphaned every process, lost its output and its exit status. A shim is one
// process per workload that is its parent and reaper, holds its output pipe
// and appends what comes out of it to the log file; the daemon only talks to
// it. The shim does not depend on the daemon: it runs in its own session,
// has no parent-death signal, ignores SIGHUP, SIGINT, SIGTERM and SIGPIPE, and
// keeps serving when the daemon is gone. A restarted daemon finds its shims
// again through the state directory (Dial).
//
// # Lifecycle
//
// The daemon calls Start, which executes the daemon's own binary as the hidden
// subcommand `migrated shim` (Main) and writes the Spec to its stdin, a unix
// socket (never to the command line: the environment may hold secrets; a
// post-copy restore's held socket comes with it, SCM_RIGHTS). Prestart does
// the first half ahead: a migration's target starts the shim when it accepts
// the migration, and with `--criu PATH` the shim makes its output pipe and
// starts the `criu swrk` that will restore, both waiting for the spec while
// the pages arrive; without a spec (Pending.Abort, or the daemon's death
// closing the socket) it exits, and its CRIU dies with it. The shim
//
//  1. names itself "migrated-shim" (so `pkill -x migrated` never matches it),
//     becomes a child subreaper, sends its own stderr to Dir/shim.log;
//  2. creates the output pipe, opens Dir/log for appending and starts copying;
//  3. binds Dir/shim.sock (mode 0600);
//  4. starts the workload (run mode: Argv with stdin /dev/null, stdout and
//     stderr the pipe, no other descriptor but, for a DSM rank, the read end
//     of a pipe holding its job's secret (runtime.PassSecret), its own session, under its init
//     in a pid namespace of its own when Spec.Init is set) or restores it
//     from CRIU images (restore mode: CRIU's restore-sibling mode makes the
//     restored root the shim's child; the tree is left stopped and the pipe's
//     write end is inherited in place of the old one);
//  5. reports Started (or why not) on stdout, closes stdin and stdout, and
//     serves the socket: status, wait (a long poll until the workload has
//     exited) and flush (the log holds everything written so far);
//  6. when the root exits, drains the pipe (until EOF, or until it has been
//     empty for a moment, at most a couple of seconds: descendants may keep it
//     open), writes Dir/exit.json atomically, answers every waiter, keeps
//     copying while any writer remains, reaps what is left of the tree, removes
//     its socket and exits 0.
//
// # Pid namespaces
//
// Every host hands out pids from the same range, and CRIU restores a process
// with the pids it had: on a real host the pid is often taken, and the
// restore fails. With Spec.Init (tini) the shim starts the init as pid 1 of a
// new pid namespace and the workload as its child (pid 2 there). CRIU then
// dumps the namespace with the tree and restores it into a new namespace on
// the target, where the pids inside are the namespace's own: they cannot
// collide with anything on the host, and the process sees the same pids
// before and after every move. The shim knows the tree by its init's pid as
// this host numbers it (Started.PID), which changes with every restore. The
// init reaps what the workload orphans (the namespace's orphans go to it,
// not to the shim), passes every signal it gets on to the workload, exits
// with the workload's status (128+signal for a signal), and its death ends
// the whole namespace. /proc inside is still the host's: the workload finds
// itself at /proc/self, not at /proc/<getpid()>.
//
// Exit codes follow the shell: the exit status, or 128+signal.
//
// A shim that started from a daemon is that daemon's child and the daemon
// reaps it (Start waits for it in a goroutine: Client.Exited). After a daemon
// restart the shim has been re-parented to the nearest subreaper (the host's
// init); the new daemon only talks to it.
//
// # Protocol
//
// One request per connection on Dir/shim.sock: a JSON object {"op": "status"
// | "wait" | "flush"} on one line, answered by one JSON line (response). The
// socket is root's only (0600 in a 0700 directory); its path must fit a
// sockaddr_un (107 bytes).
//
// # Files in Dir
//
//	log        the workload's output, appended (created if missing)
//	shim.sock  the shim's socket, removed when it exits
//	exit.json  {"code": N, "at": time} written when the root has exited
//	shim.log   the shim's own stderr
package shim
