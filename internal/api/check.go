package api

import "errors"

// A preflight (migrated check): a daemon checks its host, and with a
// target, that target as a migration would find it. The JSON schema is
// docs/json/migrated-check.md.

// Status of a Check.
const (
	CheckOK      = "ok"      // nothing wrong
	CheckWarning = "warning" // something a migration may need is missing (e.g. post-copy's); nothing fails
	CheckFailed  = "failed"  // migrations fail until it is fixed
)

// Check is one line of a preflight: what was checked, how it went, and for
// anything wrong what it is and how to fix it.
type Check struct {
	Name    string `json:"name"`          // e.g. "criu version", "target memory"
	Status  string `json:"status"`        // CheckOK, CheckWarning or CheckFailed
	Message string `json:"message"`       // what was found; when not ok, what is wrong
	Fix     string `json:"fix,omitempty"` // when not ok: what to do, the exact command where there is one
}

// CheckReport is a daemon's answer to a "check" request (Reply.Check): the
// checks of its host, and with Request.To, of that target; or, to an
// "identity" request, only Daemon.
type CheckReport struct {
	Daemon DaemonInfo  `json:"daemon"`           // the daemon that answered
	Target *DaemonInfo `json:"target,omitempty"` // with Request.To: the target, if it answered
	Checks []Check     `json:"checks"`
}

// DaemonInfo says which daemon answered, and what room it has for arriving
// processes.
type DaemonInfo struct {
	// ID is the daemon's identity: the same for every address it is
	// reached at, and different for every other daemon, also another one on
	// the same machine (it is kept in its state directory).
	ID string `json:"id"`
	// MachineID is the machine's /etc/machine-id ("" if it has none):
	// daemons of namespace hosts or containers share it.
	MachineID string `json:"machine_id"`
	// BootID is the running kernel's boot ID: two daemons that answer at
	// the same time with different ones are on different machines.
	BootID    string `json:"boot_id"`
	Hostname  string `json:"hostname"`
	Advertise string `json:"advertise"` // the address it tells peers to call it back at
	// Memory, in bytes: the kernel's MemAvailable, what the daemon never
	// gives to arriving processes (--keep-free), what arriving migrations
	// hold now, and the free space of its images tmpfs (--images-size).
	MemAvailableBytes int64 `json:"mem_available_bytes"`
	KeepFreeBytes     int64 `json:"keep_free_bytes"`
	HeldBytes         int64 `json:"held_bytes"`
	ImagesFreeBytes   int64 `json:"images_free_bytes"`
	// What placement (internal/placement) weighs: the host's memory and
	// CPUs, its 1-minute load average, the processes this daemon runs,
	// whether it is drained (migrated drain: it takes no processes), and
	// its networks (the prefixes of its interfaces' addresses, which a
	// process's own address must lie in to move there).
	MemTotalBytes int64    `json:"mem_total_bytes"`
	CPUs          int      `json:"cpus"`
	Load1         float64  `json:"load1"`
	Procs         int      `json:"procs"`
	Drained       bool     `json:"drained"`
	Subnets       []string `json:"subnets,omitempty"`
}

// SameDaemon reports whether d and o describe the same daemon: the same
// identity in its state directory, on the same machine, in the same boot
// (a state directory copied to another machine, or a clone of one, is not
// the same daemon).
func (d DaemonInfo) SameDaemon(o DaemonInfo) bool {
	return d.ID != "" && d.ID == o.ID && d.MachineID == o.MachineID && d.BootID == o.BootID
}

// SameMachine reports whether d and o run on one machine in one boot
// (namespace hosts, containers), as far as they say.
func (d DaemonInfo) SameMachine(o DaemonInfo) bool {
	return d.MachineID != "" && d.MachineID == o.MachineID && d.BootID == o.BootID
}

// FreeForArrivals is the memory the daemon's admission has for arriving
// processes: MemAvailable less --keep-free and what arrivals hold now
// (negative when it has none).
func (d DaemonInfo) FreeForArrivals() int64 {
	return d.MemAvailableBytes - d.KeepFreeBytes - d.HeldBytes
}

// Identity is the daemon an "identity" request's answer describes.
func Identity(rep *Reply) (DaemonInfo, error) {
	if rep.Check == nil {
		return DaemonInfo{}, errors.New("a migrated too old to say what it has: upgrade it")
	}
	return rep.Check.Daemon, nil
}

// Failed reports whether any of checks failed.
func Failed(checks []Check) bool {
	for _, c := range checks {
		if c.Status == CheckFailed {
			return true
		}
	}
	return false
}
