package criu

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Why Quiesce exists
//
// CRIU seizes every thread with PTRACE_SEIZE + PTRACE_INTERRUPT, then runs
// its parasite in each one with all signals blocked but SIGTRAP, and expects
// the parasite's int3 to be the next stop. A thread that took a page fault
// just before it was seized stops with that SIGSEGV still queued: the
// interrupt trap comes before signal delivery. When the parasite's int3 then
// queues SIGTRAP, the kernel's dequeue_synchronous_signal picks the first
// synchronous signal in the queue, the blocked SIGSEGV, so CRIU sees a
// SIGSEGV stop ("Unexpected task interruption"), aborts the dump, restores
// the thread's registers and leaves the SIGTRAP queued: the process dies of
// it once CRIU lets go. A program that takes write faults as a matter of
// course (a DSM rank, a garbage collector using mprotect, a JVM) loses this
// race now and then; a thread faulting in a tight loop loses it almost
// every time (TestQuiesceFaultingThreads).
//
// Quiesce closes the race: it stops every thread with no synchronous signal
// queued, and leaves the process in a group stop, where it runs no
// instruction (so takes no fault) until it is continued. CRIU dumps stopped
// processes; the restored copy is stopped too and must be sent SIGCONT.

// syncSignals are the signals the kernel delivers before all others when a
// fault raised them (SYNCHRONOUS_MASK in kernel/signal.c).
const syncSignals = 1<<(unix.SIGSEGV-1) | 1<<(unix.SIGBUS-1) | 1<<(unix.SIGILL-1) |
	1<<(unix.SIGTRAP-1) | 1<<(unix.SIGFPE-1) | 1<<(unix.SIGSYS-1)

// maxSettle bounds the signal deliveries Quiesce makes to one thread.
const maxSettle = 64

// Quiesce leaves every process of the tree rooted at pid in a group stop
// (SIGSTOP) with no thread holding a queued synchronous signal, so that a
// CRIU dump of it cannot trip over one (see above). Queued faults are
// delivered first: each handler is entered, not run.
//
// Quiesce traces the processes for a moment, so it must not run in a
// process that waits for them (their parent reaps them: ptrace stops would
// be reported to its waits). The daemon runs it in a helper process.
func Quiesce(pid int) error {
	runtime.LockOSThread() // every ptrace request must come from the tracer thread
	defer runtime.UnlockOSThread()
	done := map[int]bool{}
	for {
		more := false
		for _, p := range Tree(pid) {
			if done[p] {
				continue
			}
			more = true
			if err := quiesceOne(p); err != nil {
				if errors.Is(err, unix.ESRCH) && p != pid {
					continue // a child that exited meanwhile
				}
				return fmt.Errorf("stopping process %d for the dump: %w", p, err)
			}
			done[p] = true
		}
		// A process stopped after its parent may have forked before it
		// stopped: walk the tree again until it holds nothing new.
		if !more {
			return nil
		}
	}
}

// quiesceOne seizes every thread of pid, settles each, queues SIGSTOP for
// the process and lets go: each thread enters the group stop on its way out
// of the trap, before it runs an instruction.
func quiesceOne(pid int) error {
	seized := map[int]bool{} // tid -> settled
	detach := func() {
		for tid := range seized {
			unix.PtraceDetach(tid)
		}
	}
	// Threads may be created until all are seized and stopped: read the
	// list again until it holds no new one.
	for {
		tids, err := threads(pid)
		if err != nil {
			detach()
			return err
		}
		fresh := 0
		for _, tid := range tids {
			if _, ok := seized[tid]; ok {
				continue
			}
			if err := unix.PtraceSeize(tid); err != nil {
				if errors.Is(err, unix.ESRCH) && tid != pid {
					continue // exited
				}
				detach()
				return fmt.Errorf("ptrace seize %d: %w", tid, err)
			}
			seized[tid] = false
			fresh++
			if err := unix.PtraceInterrupt(tid); err != nil && !errors.Is(err, unix.ESRCH) {
				detach()
				return fmt.Errorf("ptrace interrupt %d: %w", tid, err)
			}
		}
		if fresh == 0 {
			break
		}
		for tid, ok := range seized {
			if ok {
				continue
			}
			if err := settle(pid, tid); err != nil {
				if errors.Is(err, errExited) {
					delete(seized, tid)
					continue
				}
				detach()
				return err
			}
			seized[tid] = true
		}
	}
	if len(seized) == 0 {
		return unix.ESRCH
	}
	if err := unix.Kill(pid, unix.SIGSTOP); err != nil {
		detach()
		return err
	}
	detach()
	return waitStopped(pid)
}

// stopWait bounds waitStopped; a thread on a busy CPU may take a few
// scheduling rounds to reach its stop.
const stopWait = 2 * time.Second

// waitStopped waits until every thread of pid is in the group stop. Once
// let go, a thread takes a moment to get there (it runs no instruction of
// its own on the way); CRIU should seize it only once it is there.
func waitStopped(pid int) error {
	end := time.Now().Add(stopWait)
	for {
		tids, err := threads(pid)
		if err != nil {
			return err
		}
		moving := 0
		for _, tid := range tids {
			if st, err := threadState(pid, tid); err == nil && st != 'T' {
				moving = tid
				break
			}
		}
		if moving == 0 {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("thread %d of process %d did not stop within %v", moving, pid, stopWait)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// threadState is the state letter of a thread (/proc/PID/task/TID/stat): R,
// S, D, T (stopped), t (traced), Z...
func threadState(pid, tid int) (byte, error) {
	f, err := statFields(fmt.Sprintf("/proc/%d/task/%d/stat", pid, tid))
	if err != nil {
		return 0, err
	}
	return f[0][0], nil
}

// ParentOf returns pid's parent pid (/proc/PID/stat), or 0 if pid is gone.
func ParentOf(pid int) int {
	f, err := statFields(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// statFields returns the fields of a stat file after the command, which may
// hold anything but ends before the last ')': state, ppid, ...
func statFields(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("%s: malformed", path)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 || f[0] == "" {
		return nil, fmt.Errorf("%s: malformed", path)
	}
	return f, nil
}

var errExited = errors.New("thread exited")

// settle waits for tid's next stop and, while the thread has a synchronous
// signal queued, delivers it: continued, the thread stops again to deliver
// the signal; continued with the signal and an interrupt pending, it enters
// the handler and traps before the handler's first instruction.
func settle(pid, tid int) error {
	for range maxSettle {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(tid, &ws, unix.WALL, nil); err != nil {
			if errors.Is(err, unix.ECHILD) {
				return errExited
			}
			return fmt.Errorf("waiting for thread %d: %w", tid, err)
		}
		if ws.Exited() || ws.Signaled() {
			return errExited
		}
		if !ws.Stopped() {
			continue
		}
		// An interrupt or a group stop (then the stop signal is SIGSTOP
		// or the like, not SIGTRAP, so not ws.TrapCause()).
		if uint32(ws)>>16 == unix.PTRACE_EVENT_STOP {
			pending, err := syncPending(pid, tid)
			if err != nil {
				return err
			}
			if !pending {
				return nil
			}
			// Let it dequeue the signal: it stops again to deliver it.
			if err := unix.PtraceCont(tid, 0); err != nil {
				return fmt.Errorf("ptrace cont %d: %w", tid, err)
			}
			continue
		}
		// A signal-delivery stop: deliver the signal, trapping right after.
		if err := unix.PtraceInterrupt(tid); err != nil {
			return fmt.Errorf("ptrace interrupt %d: %w", tid, err)
		}
		if err := unix.PtraceCont(tid, int(ws.StopSignal())); err != nil {
			return fmt.Errorf("ptrace cont %d: %w", tid, err)
		}
	}
	return fmt.Errorf("thread %d of process %d keeps raising faults; it cannot be stopped cleanly", tid, pid)
}

// syncPending reports whether tid has an unblocked synchronous signal in
// its own queue.
func syncPending(pid, tid int) (bool, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", pid, tid))
	if err != nil {
		return false, err
	}
	var pnd, blk uint64
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch k {
		case "SigPnd":
			pnd, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		case "SigBlk":
			blk, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
		if err != nil {
			return false, fmt.Errorf("/proc/%d/task/%d/status: %v", pid, tid, err)
		}
	}
	return pnd&^blk&syncSignals != 0, nil
}

func threads(pid int) ([]int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, unix.ESRCH
		}
		return nil, err
	}
	var out []int
	for _, e := range ents {
		if t, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, t)
		}
	}
	return out, nil
}

// Tree returns pid and all its descendants, parents first: the processes a
// dump of pid takes.
func Tree(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", out[i]))
		for _, t := range tasks {
			b, err := os.ReadFile(t)
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil {
					out = append(out, c)
				}
			}
		}
	}
	return out
}
