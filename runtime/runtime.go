// Package runtime is what runs inside every process that migrated launches:
// its identity, and the control channel through which the local daemon asks
// it to prepare for a migration and to resume after one.
//
// Import it under another name, as it shares its name with Go's runtime:
//
//	import mrt "dsmigrate/runtime"
//
// A process that registers hooks is migration-aware. Before the dump the
// daemon runs its Prepare hook, which closes what CRIU cannot or should not
// carry (connections to peers that stay behind, a userfaultfd); after the
// restore, or when a migration is called off after Prepare, the daemon runs
// its Resume hook, which rebuilds them. A process without hooks is dumped as
// it is.
//
// The channel: the daemon serves a unix socket (MIGRATED_CONTROL) and, when
// it has a command for a process, sends it SIGUSR2 (only to processes that
// registered, so the signal's default action never kills anyone). The
// process then connects, says who it is, gets the command, runs the hook and
// answers, and closes the connection, so that nothing connects it to the
// daemon while CRIU dumps it. The same way, between migrations, a daemon
// serving metrics asks a DSM rank for its counters (Hooks.Stats, the
// command "stats") when its metrics are scraped.
//
// # The job secret
//
// Every DSM job has a secret of its own (SecretLen random bytes, made by
// dsmrun run) that its ranks authenticate each other with. A secret on a
// command line or in the environment is readable by anyone who can read
// /proc/PID/cmdline (everyone) or /proc/PID/environ, and is copied into
// every child and every crash report; so a launcher hands it over on a
// pipe instead (PassSecret): the rank inherits the read end, holding
// exactly the secret, and finds its number in DSM_SECRET_FD. Self reads it
// once, closes the descriptor (so that the rank holds no pipe of the
// launcher's for CRIU to dump, nor one for its children to inherit) and
// keeps the secret for the process's later calls. An init between the
// launcher and the rank (tini) keeps its own copy of the descriptor: an
// empty pipe once the rank has read it.
package runtime

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Environment variables the daemon and dsmrun set for a launched process.
const (
	EnvID      = "MIGRATED_ID"      // the process's ID, stable across migrations
	EnvControl = "MIGRATED_CONTROL" // the local daemon's control socket
	EnvJob     = "DSM_JOB"
	EnvRank    = "DSM_RANK"
	EnvSize    = "DSM_SIZE"
	EnvPeers   = "DSM_PEERS"
	// EnvBind is the address a rank dials from when it has one of its own
	// (dsmrun run --rank-ips). Every connection of the rank is then to or
	// from that address, and a migration that moves the address (dsmrun
	// migrate --move-ip) carries the connections through CRIU's TCP repair:
	// no rebinding.
	EnvBind = "DSM_BIND"
	// EnvSecretFD is the number of an inherited descriptor, the read end
	// of a pipe that holds exactly the job's secret (PassSecret). Never
	// the secret itself: the environment is no place for one.
	EnvSecretFD = "DSM_SECRET_FD"
	// EnvEncrypt is "1" when the job's traffic is encrypted as well as
	// authenticated (dsmrun run --encrypt).
	EnvEncrypt = "DSM_ENCRYPT"
)

// SecretLen is the length of a job's secret in bytes.
const SecretLen = 32

// Identity is who a launched process is.
type Identity struct {
	ID    string   // migrated's ID for the process ("" when not launched by migrated)
	Job   string   // DSM job ("" when not a rank)
	Rank  int      // rank in Job
	Size  int      // number of ranks
	Peers []string // every rank's address, host:port, in rank order
	// Secret is the job's secret (SecretLen bytes, the same at every rank),
	// read from DSM_SECRET_FD. Keep it out of logs and error messages.
	Secret  []byte
	Encrypt bool // encrypt the job's traffic (DSM_ENCRYPT=1)
}

// Self reads the process's identity from its environment and, for a rank
// (DSM_JOB set), the job's secret from the descriptor DSM_SECRET_FD names.
// Reading the secret consumes it: the first call reads it, closes the
// descriptor and removes DSM_SECRET_FD from the environment (a child must
// not take a stale number for a secret), and every later call returns what
// that first one got. Self may be called any number of times, from any
// goroutine.
func Self() (Identity, error) {
	id := Identity{ID: os.Getenv(EnvID), Job: os.Getenv(EnvJob)}
	if id.Job == "" {
		return id, nil
	}
	var err error
	if id.Rank, err = strconv.Atoi(os.Getenv(EnvRank)); err != nil {
		return id, fmt.Errorf("%s=%q: not a number", EnvRank, os.Getenv(EnvRank))
	}
	if id.Size, err = strconv.Atoi(os.Getenv(EnvSize)); err != nil || id.Size < 1 {
		return id, fmt.Errorf("%s=%q: not a positive number", EnvSize, os.Getenv(EnvSize))
	}
	if id.Rank < 0 || id.Rank >= id.Size {
		return id, fmt.Errorf("rank %d out of range for size %d", id.Rank, id.Size)
	}
	id.Peers = strings.Split(os.Getenv(EnvPeers), ",")
	if len(id.Peers) != id.Size {
		return id, fmt.Errorf("%s lists %d addresses for %d ranks", EnvPeers, len(id.Peers), id.Size)
	}
	switch v := os.Getenv(EnvEncrypt); v {
	case "", "0":
	case "1":
		id.Encrypt = true
	default:
		// Not read as "no": a typo must not turn encryption off unnoticed.
		return id, fmt.Errorf("%s=%q: want 1 (encrypt) or nothing", EnvEncrypt, v)
	}
	if id.Secret, err = readSecret(); err != nil {
		return id, err
	}
	return id, nil
}

// jobSecret is what the first reading of DSM_SECRET_FD got: the descriptor
// is gone after it, so it is the answer for the rest of the process's life.
var jobSecret struct {
	mu   sync.Mutex
	done bool // the descriptor was consumed: b and err are final
	b    []byte
	err  error
}

// readSecret returns a copy of the job's secret, reading it from
// DSM_SECRET_FD the first time.
func readSecret() ([]byte, error) {
	jobSecret.mu.Lock()
	defer jobSecret.mu.Unlock()
	if !jobSecret.done {
		v, ok := os.LookupEnv(EnvSecretFD)
		if !ok || v == "" {
			// Nothing consumed: not final.
			return nil, fmt.Errorf("no job secret (%s): launch ranks with dsmrun run", EnvSecretFD)
		}
		jobSecret.b, jobSecret.err = readSecretFD(v)
		jobSecret.done = true
		os.Unsetenv(EnvSecretFD)
	}
	if jobSecret.err != nil {
		return nil, jobSecret.err
	}
	return bytes.Clone(jobSecret.b), nil
}

// readSecretFD reads the secret from the descriptor numbered v, to its end
// (the launcher closed the pipe's write end), and closes it.
func readSecretFD(v string) ([]byte, error) {
	fd, err := strconv.Atoi(v)
	// 0-2 are stdio: closing one would give its number to the next file
	// the process opens.
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q: want the number of an inherited descriptor, 3 or more: "+
			"launch ranks with dsmrun run", EnvSecretFD, v)
	}
	// A number that names no inherited pipe may name a descriptor the
	// process opened itself (in a Go program, 3 is often the netpoller's
	// epoll): closing that would break it. Only a pipe (or a file, from a
	// launch by hand) is read and closed.
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("%s=%d: %w: no such descriptor was inherited; launch ranks with dsmrun run",
			EnvSecretFD, fd, err)
	}
	if m := st.Mode & syscall.S_IFMT; m != syscall.S_IFIFO && m != syscall.S_IFREG {
		return nil, fmt.Errorf("%s=%d names neither a pipe nor a file (not left there by the launcher): "+
			"launch ranks with dsmrun run", EnvSecretFD, fd)
	}
	f := os.NewFile(uintptr(fd), "job secret")
	defer f.Close()
	// One byte more than a secret: a longer one is an error, not cut short.
	b, err := io.ReadAll(io.LimitReader(f, SecretLen+1))
	if err != nil {
		return nil, fmt.Errorf("reading the job secret from descriptor %d (%s): %w", fd, EnvSecretFD, err)
	}
	if len(b) != SecretLen {
		clear(b)
		return nil, fmt.Errorf("the job secret on descriptor %d (%s) is %s bytes, want %d: launch ranks with dsmrun run",
			fd, EnvSecretFD, lenString(len(b)), SecretLen)
	}
	return b, nil
}

func lenString(n int) string {
	if n > SecretLen {
		return fmt.Sprintf("more than %d", SecretLen)
	}
	return strconv.Itoa(n)
}

// PassSecret hands secret to the process cmd will start, as Self expects
// it: on a pipe whose read end the process inherits (appended to
// cmd.ExtraFiles) and whose number DSM_SECRET_FD (appended to cmd.Env)
// names. The secret never appears on the command line or in the
// environment. cmd.Env must be set (nil would mean this process's
// environment, without DSM_SECRET_FD).
//
// The pipe holds the whole secret and its write end is closed before
// PassSecret returns (SecretLen bytes always fit a pipe's buffer). The
// caller closes the returned read end once cmd has started (or failed to).
func PassSecret(cmd *exec.Cmd, secret []byte) (*os.File, error) {
	if cmd.Env == nil {
		return nil, errors.New("runtime: PassSecret needs cmd.Env set (nil would pass this process's environment " +
			"without " + EnvSecretFD + "): set it, e.g. to os.Environ(), before calling PassSecret")
	}
	if len(secret) != SecretLen {
		return nil, fmt.Errorf("runtime: a job secret is %d bytes, got %d", SecretLen, len(secret))
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("runtime: a pipe for the job secret: %w", err)
	}
	_, err = w.Write(secret)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("runtime: writing the job secret into its pipe: %w", err)
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, r)
	// ExtraFiles[i] is the child's descriptor 3+i. Clip: the caller's
	// slice may share its spare room with another Cmd's.
	cmd.Env = append(slices.Clip(cmd.Env), fmt.Sprintf("%s=%d", EnvSecretFD, 3+len(cmd.ExtraFiles)-1))
	return r, nil
}

// ResumeInfo tells a Resume hook what happened.
type ResumeInfo struct {
	Moved bool   `json:"moved"` // false: the migration was called off, the process is where it was
	Host  string `json:"host"`  // the address of the host it runs on now
}

// Hooks are a migration-aware process's part in a migration.
type Hooks struct {
	// Prepare runs before the dump: close what must not be dumped.
	Prepare func() error
	// Resume runs after the restore, or after a migration that was called
	// off once Prepare had run.
	Resume func(ResumeInfo) error
	// Stats, if set, returns the process's counters when its daemon asks
	// for them (the "stats" command: migrated serve --metrics). It runs on
	// the control channel's goroutine between hooks, never during one, and
	// must return at once: read counters atomically, take no lock that
	// the process's own work may hold.
	Stats func() Stats
}

// Stats are a DSM rank's counters since it started, for its daemon's
// metrics (docs/metrics.md). They live in the rank's memory, so they go on
// counting across its migrations. Times are in nanoseconds.
type Stats struct {
	ReadFaults    uint64 `json:"read_faults"`
	WriteFaults   uint64 `json:"write_faults"`
	PagesFetched  uint64 `json:"pages_fetched"`
	FetchRequests uint64 `json:"fetch_requests"`
	PagesServed   uint64 `json:"pages_served"`
	Diffs         uint64 `json:"diffs"`
	DiffsApplied  uint64 `json:"diffs_applied"`
	Barriers      uint64 `json:"barriers"`
	LockAcquires  uint64 `json:"lock_acquires"`
	BarrierWaitNS int64  `json:"barrier_wait_ns"`
	LockWaitNS    int64  `json:"lock_wait_ns"`
	FetchTimeNS   int64  `json:"fetch_time_ns"`
	ServeTimeNS   int64  `json:"serve_time_ns"`
}

// Command is what the daemon sends; Answer what the process returns.
type Command struct {
	Op     string     `json:"op"` // "prepare", "resume" or "stats"
	Resume ResumeInfo `json:"resume"`
}

// Answer is a process's reply to a Command.
type Answer struct {
	Err   string `json:"err,omitempty"`
	Stats *Stats `json:"stats,omitempty"` // the answer to "stats"
}

// Hello opens every control connection.
type Hello struct {
	ID       string `json:"id"`
	Register bool   `json:"register,omitempty"` // the first connection: announces hooks
}

var (
	mu        sync.Mutex
	hooks     *Hooks
	listening bool
)

// ErrNotManaged is returned by Register in a process migrated did not start.
var ErrNotManaged = errors.New("not started by migrated: no control channel")

// Register makes the process migration-aware. It tells the local daemon so,
// and from then on serves the daemon's commands. It may be called once.
func Register(h Hooks) error {
	id, path := os.Getenv(EnvID), os.Getenv(EnvControl)
	if id == "" || path == "" {
		return ErrNotManaged
	}
	mu.Lock()
	defer mu.Unlock()
	if hooks != nil {
		return errors.New("runtime: hooks already registered")
	}
	hooks = &h
	if !listening {
		listening = true
		ch := make(chan os.Signal, 4)
		signal.Notify(ch, syscall.SIGUSR2)
		go func() {
			for range ch {
				serve(id, os.Getenv(EnvControl))
			}
		}()
	}
	c, err := dial(path)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := json.NewEncoder(c).Encode(Hello{ID: id, Register: true}); err != nil {
		return err
	}
	var a Answer
	if err := json.NewDecoder(c).Decode(&a); err != nil {
		return fmt.Errorf("runtime: registering with the daemon: %v", err)
	}
	if a.Err != "" {
		return errors.New(a.Err)
	}
	return nil
}

func dial(path string) (net.Conn, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("runtime: control channel %s: %v", path, err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	return c, nil
}

// serve answers the daemon's pending command.
func serve(id, path string) {
	c, err := dial(path)
	if err != nil {
		return
	}
	defer c.Close()
	if json.NewEncoder(c).Encode(Hello{ID: id}) != nil {
		return
	}
	var cmd Command
	if json.NewDecoder(c).Decode(&cmd) != nil {
		return
	}
	mu.Lock()
	h := hooks
	mu.Unlock()
	var herr error
	var a Answer
	switch {
	case cmd.Op == "stats":
		if h == nil || h.Stats == nil {
			herr = errors.New("no stats")
			break
		}
		st := h.Stats()
		a.Stats = &st
	case h == nil:
	case cmd.Op == "prepare" && h.Prepare != nil:
		herr = h.Prepare()
	case cmd.Op == "resume" && h.Resume != nil:
		herr = h.Resume(cmd.Resume)
	case cmd.Op != "prepare" && cmd.Op != "resume":
		herr = fmt.Errorf("unknown command %q", cmd.Op)
	}
	if herr != nil {
		a.Err = herr.Error()
	}
	json.NewEncoder(c).Encode(a)
}
