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
// daemon while CRIU dumps it.
package runtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
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
)

// Identity is who a launched process is.
type Identity struct {
	ID    string   // migrated's ID for the process ("" when not launched by migrated)
	Job   string   // DSM job ("" when not a rank)
	Rank  int      // rank in Job
	Size  int      // number of ranks
	Peers []string // every rank's address, host:port, in rank order
}

// Self reads the process's identity from its environment.
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
	return id, nil
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
}

// Command is what the daemon sends; Answer what the process returns.
type Command struct {
	Op     string     `json:"op"` // "prepare" or "resume"
	Resume ResumeInfo `json:"resume"`
}

// Answer is a process's reply to a Command.
type Answer struct {
	Err string `json:"err,omitempty"`
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
	switch {
	case h == nil:
	case cmd.Op == "prepare" && h.Prepare != nil:
		herr = h.Prepare()
	case cmd.Op == "resume" && h.Resume != nil:
		herr = h.Resume(cmd.Resume)
	case cmd.Op != "prepare" && cmd.Op != "resume":
		herr = fmt.Errorf("unknown command %q", cmd.Op)
	}
	var a Answer
	if herr != nil {
		a.Err = herr.Error()
	}
	json.NewEncoder(c).Encode(a)
}
