package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"dsmigrate/criu"
)

// quiesceTimeout bounds one request; stopping a tree takes milliseconds.
const quiesceTimeout = 10 * time.Second

// quiescer stops a tree with no fault queued in any thread before CRIU
// dumps it (criu.Quiesce). The work is done by a helper process, this
// binary's hidden `quiesce --serve`: it traces the tree for a moment, and
// the daemon, the tree's parent and reaper, would see the ptrace stops in
// its own waits. The helper is started on first use and kept (starting one
// per dump cost 3-10 ms of downtime); a helper that fails or hangs is killed
// and the request tried once more with a fresh one.
type quiescer struct {
	mu  sync.Mutex
	cmd *exec.Cmd
	in  io.WriteCloser
	out *os.File
	rd  *bufio.Reader
}

func (q *quiescer) quiesce(pid int) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	var err error
	for range 2 {
		if q.cmd == nil {
			if err = q.start(); err != nil {
				return fmt.Errorf("starting the quiesce helper: %v", err)
			}
		}
		var reply string
		if reply, err = q.ask(pid); err == nil {
			if reply == "ok" {
				return nil
			}
			return errors.New(reply) // the helper worked and says why not
		}
		q.stop()
	}
	return fmt.Errorf("quiesce helper: %v", err)
}

// warm starts the helper ahead of the first dump.
func (q *quiescer) warm() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.cmd != nil {
		return nil
	}
	return q.start()
}

func (q *quiescer) start() error {
	cmd := exec.Command("/proc/self/exe", "quiesce", "--serve")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		in.Close()
		return err
	}
	cmd.Stdout = w
	if err := cmd.Start(); err != nil {
		in.Close()
		r.Close()
		w.Close()
		return err
	}
	w.Close()
	q.cmd, q.in, q.out, q.rd = cmd, in, r, bufio.NewReader(r)
	return nil
}

func (q *quiescer) ask(pid int) (string, error) {
	if _, err := fmt.Fprintf(q.in, "%d\n", pid); err != nil {
		return "", err
	}
	q.out.SetReadDeadline(time.Now().Add(quiesceTimeout))
	line, err := q.rd.ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// close ends the helper for good (the daemon is stopping).
func (q *quiescer) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.stop()
}

// stop kills the helper; the kernel lets go of whatever it traced.
func (q *quiescer) stop() {
	if q.cmd == nil {
		return
	}
	q.cmd.Process.Kill()
	q.cmd.Wait()
	q.in.Close()
	q.out.Close()
	q.cmd = nil
}

// ServeQuiesce is the quiesce helper (migrated quiesce --serve): it reads
// pids from in, one per line, stops each tree (criu.Quiesce) and answers
// "ok" or why not on out.
func ServeQuiesce(in io.Reader, out io.Writer) error {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		reply := "ok"
		pid, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
		if err == nil && pid > 0 {
			err = criu.Quiesce(pid)
		} else if err == nil {
			err = fmt.Errorf("bad pid %d", pid)
		}
		if err != nil {
			reply = strings.ReplaceAll(err.Error(), "\n", " ")
		}
		if _, err := fmt.Fprintln(out, reply); err != nil {
			return err
		}
	}
	return sc.Err()
}
