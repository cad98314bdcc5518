package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"dsmigrate/criu"
	"dsmigrate/internal/api"
	"dsmigrate/internal/shim"
	"dsmigrate/internal/wire"
)

// The preflight (migrated check): a "check" request makes the daemon check
// its host (HostChecks: its CRIU, the kernel features and sysctls it relies
// on, nftables, tini, its token file, its address) and, with Request.To, the
// daemon there as a migration from here would find it: reachable,
// authenticated with this daemon's token, accepting migrations (its own host
// checks), not this daemon, and with memory free for arriving processes.
//
// Every check says, when not ok, what is wrong and how to fix it; checks that
// depend on one that failed (the version of a CRIU that is not there) are
// left out.

const (
	checkTimeout = 60 * time.Second // a whole check, with `criu check` on both hosts
	dialTimeout  = 5 * time.Second  // to connect and authenticate to a target
	daemonIDFile = "daemon-id"      // in the state directory: this daemon's identity
	// genToken is how to make a token file (README).
	genToken = "install -d -m 700 %[1]s && head -c 32 /dev/urandom | base64 > %[2]s && chmod 600 %[2]s"
)

// check serves "check" for caller.
func (d *Daemon) check(req Request, caller api.Owner) (*Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	self, err := d.info()
	if err != nil {
		return nil, err
	}
	rep := &api.CheckReport{Daemon: self, Checks: []api.Check{}}
	rep.Checks = append(rep.Checks, d.addressCheck())
	if c := d.drainedCheck(); c != nil {
		rep.Checks = append(rep.Checks, *c)
	}
	rep.Checks = append(rep.Checks, HostChecks(ctx, d.criu.Path, d.tokenFile)...)
	d.tokenLoadedCheck(rep.Checks)
	if req.To != "" {
		target, checks := d.checkTarget(ctx, req.To, self, caller)
		rep.Target = target
		rep.Checks = append(rep.Checks, checks...)
	}
	return &Reply{Check: rep}, nil
}

// info is who this daemon is, and its room for arriving processes.
func (d *Daemon) info() (api.DaemonInfo, error) {
	id, err := daemonID(d.stateDir)
	if err != nil {
		return api.DaemonInfo{}, err
	}
	host, _ := os.Hostname()
	in := api.DaemonInfo{ID: id, MachineID: readTrim("/etc/machine-id"), BootID: readTrim("/proc/sys/kernel/random/boot_id"),
		Hostname: host, Advertise: d.advertise}
	in.MemAvailableBytes, in.KeepFreeBytes, in.HeldBytes, in.ImagesFreeBytes = d.room()
	in.ImagesFreeBytes = max(in.ImagesFreeBytes, 0)
	in.MemTotalBytes, _ = memTotal()
	in.CPUs, in.Load1 = cpuLoad()
	in.Procs, in.Drained, in.Subnets = d.liveProcs(), d.drained.Load(), subnets()
	return in, nil
}

// room is this host's room for arriving processes, in bytes: the kernel's
// MemAvailable, --keep-free, what arriving migrations hold, and the free
// space of the images tmpfs (-1 if it cannot be read; 0 for MemAvailable).
func (d *Daemon) room() (avail, keepFree, held, imagesFree int64) {
	avail, _ = memAvailable()
	if a := d.admit; a != nil {
		keepFree = a.keepFree
		a.mu.Lock()
		for _, h := range a.held {
			held += h.mem
		}
		a.mu.Unlock()
	}
	imagesFree = -1
	var fs unix.Statfs_t
	if d.imagesDir != "" && unix.Statfs(d.imagesDir, &fs) == nil {
		imagesFree = int64(fs.Bavail) * fs.Bsize
	}
	return avail, keepFree, held, imagesFree
}

// daemonID is the identity of the daemon whose state directory is dir:
// random, made the first time it is asked for, and kept in the directory
// (one daemon to a state directory).
func daemonID(dir string) (string, error) {
	path := filepath.Join(dir, daemonIDFile)
	for range 2 {
		b, err := os.ReadFile(path)
		if err == nil {
			if id := strings.TrimSpace(string(b)); len(id) == 32 {
				if _, err := hex.DecodeString(id); err == nil {
					return id, nil
				}
			}
			return "", fmt.Errorf("%s is damaged: remove it (the daemon makes a new identity)", path)
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("reading the daemon's identity: %v", err)
		}
		// Written whole, then linked into place: a concurrent reader sees
		// no file or the whole of it, and one of two writers wins.
		var r [16]byte
		rand.Read(r[:])
		tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
		if err := os.WriteFile(tmp, []byte(hex.EncodeToString(r[:])+"\n"), 0o644); err != nil {
			return "", fmt.Errorf("making the daemon's identity: %v", err)
		}
		err = os.Link(tmp, path)
		os.Remove(tmp)
		if err != nil && !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("making the daemon's identity: %v", err)
		}
	}
	return "", fmt.Errorf("%s keeps disappearing", path)
}

func readTrim(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

func mkCheck(name, status, msg, fix string) api.Check {
	return api.Check{Name: name, Status: status, Message: msg, Fix: fix}
}

func okCheck(name, msg string) api.Check { return mkCheck(name, api.CheckOK, msg, "") }

// asRoot is the warning for a check that only root can make, when the
// checker is not root (migrated check without its daemon).
func asRoot(name, what string) api.Check {
	return mkCheck(name, api.CheckWarning, fmt.Sprintf("not checked: %s needs root (this check runs as uid %d)",
		what, os.Geteuid()), "run `migrated check` as root")
}

// HostChecks checks this host for a daemon that runs the CRIU at criuPath
// with the token file tokenFile ("": none): CRIUChecks, the kernel features
// the daemon relies on (pid namespaces, checkpoint/restore, TCP repair,
// userfaultfd for post-copy), its capabilities, fs.pipe-max-size for
// post-copy, nftables, tini and TokenFileCheck. Run as another user than
// root, what only root can check is a warning that says so.
func HostChecks(ctx context.Context, criuPath, tokenFile string) []api.Check {
	cs := CRIUChecks(ctx, criuPath)
	cs = append(cs, pidnsCheck(), crCheck(), tcpRepairCheck(), uffdCheck())
	if os.Geteuid() == 0 {
		cs = append(cs, capsCheck())
	}
	cs = append(cs, pipeCheck(), nftCheck(ctx), tiniCheck(), TokenFileCheck(tokenFile))
	return cs
}

// CRIUChecks checks the CRIU binary at path: "criu binary" (it is there),
// "criu version" (>= criu.MinVersion) and "criu check" (CRIU's own check of
// the kernel passes).
func CRIUChecks(ctx context.Context, path string) []api.Check {
	install := fmt.Sprintf("run scripts/install-deps.sh (it installs CRIU >= %s as /usr/local/sbin/migrate-criu), "+
		"or start the daemon with --criu PATH", criu.MinVersion)
	p, err := exec.LookPath(path)
	if err != nil {
		msg := fmt.Sprintf("no CRIU at %s", path)
		if !errors.Is(err, fs.ErrNotExist) {
			msg = fmt.Sprintf("%s: %v", path, unwrapExec(err))
		}
		return []api.Check{mkCheck("criu binary", api.CheckFailed, msg, install)}
	}
	cs := []api.Check{okCheck("criu binary", p)}
	v, err := criu.New(p).Version(ctx)
	switch {
	case err != nil && os.Geteuid() != 0:
		return append(cs, asRoot("criu version", "asking CRIU"))
	case err != nil:
		return append(cs, mkCheck("criu version", api.CheckFailed, fmt.Sprintf("%s does not answer CRIU's RPC: %v", p,
			firstLine(err.Error())), install))
	case v.Less(criu.MinVersion):
		return append(cs, mkCheck("criu version", api.CheckFailed, fmt.Sprintf("%s is CRIU %s, too old: this project needs >= %s "+
			"(older ones cannot dump TCP sockets on kernels >= 6.16)", p, v, criu.MinVersion), install))
	}
	cs = append(cs, okCheck("criu version", fmt.Sprintf("%s (>= %s)", v, criu.MinVersion)))
	if os.Geteuid() != 0 {
		return append(cs, asRoot("criu check", "`criu check`"))
	}
	cctx, cancel := context.WithTimeout(ctx, checkTimeout/2)
	defer cancel()
	out, err := exec.CommandContext(cctx, p, "check").CombinedOutput()
	text := strings.TrimSpace(string(out))
	if err != nil {
		return append(cs, mkCheck("criu check", api.CheckFailed, fmt.Sprintf("`%s check` failed (%v): %s", p, err,
			oneLine(lastLines(text, 4))), "this kernel lacks what CRIU needs: run `"+p+" check` to see all of it, and use a "+
			"kernel built with CONFIG_CHECKPOINT_RESTORE and the namespaces (Debian's are)"))
	}
	msg := oneLine(lastLines(text, 1))
	if strings.Contains(text, "Looks good") {
		msg = "Looks good."
	}
	if strings.Contains("\n"+text, "\nWarn") {
		msg += fmt.Sprintf(" (with warnings: `%s check` shows them)", p)
	}
	return append(cs, okCheck("criu check", msg))
}

func pidnsCheck() api.Check {
	const name = "kernel pid namespaces"
	if _, err := os.Stat("/proc/self/ns/pid"); err != nil {
		return mkCheck(name, api.CheckFailed, "this kernel has no pid namespaces (CONFIG_PID_NS): every process runs in one "+
			"of its own", "use a kernel built with CONFIG_PID_NS (Debian's are)")
	}
	if n := readTrim("/proc/sys/user/max_pid_namespaces"); n == "0" {
		return mkCheck(name, api.CheckFailed, "user.max_pid_namespaces is 0: no process can get a pid namespace of its own",
			"sysctl -w user.max_pid_namespaces=4096")
	}
	return okCheck(name, "available")
}

func crCheck() api.Check {
	const name = "kernel checkpoint/restore"
	if _, err := os.Stat("/proc/sys/kernel/ns_last_pid"); err != nil {
		return mkCheck(name, api.CheckFailed, "this kernel is built without CONFIG_CHECKPOINT_RESTORE (no "+
			"/proc/sys/kernel/ns_last_pid): CRIU cannot restore a process", "use a kernel built with "+
			"CONFIG_CHECKPOINT_RESTORE (Debian's are)")
	}
	return okCheck(name, "available")
}

// tcpRepairCheck: CRIU dumps and restores established TCP connections in
// the kernel's repair mode (CAP_NET_ADMIN).
func tcpRepairCheck() api.Check {
	const name = "kernel tcp repair"
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return mkCheck(name, api.CheckFailed, fmt.Sprintf("cannot open a TCP socket: %v", err), "")
	}
	defer unix.Close(fd)
	err = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_ON)
	switch {
	case err == nil:
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF)
		return okCheck(name, "available (established TCP connections move)")
	case errors.Is(err, unix.EPERM) && os.Geteuid() != 0:
		return asRoot(name, "TCP repair mode")
	case errors.Is(err, unix.EPERM):
		return mkCheck(name, api.CheckFailed, "TCP repair mode refused: the daemon lacks CAP_NET_ADMIN, so a process "+
			"with TCP connections cannot move", "run migrated as root with full capabilities")
	default:
		return mkCheck(name, api.CheckFailed, fmt.Sprintf("this kernel has no TCP repair mode (%v): a process with "+
			"TCP connections cannot move", err), "use a kernel built with CONFIG_CHECKPOINT_RESTORE (Debian's are)")
	}
}

// uffdCheck: post-copy (--post-copy) restores a process whose pages arrive
// later through userfaultfd.
func uffdCheck() api.Check {
	const name = "kernel userfaultfd"
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
	switch {
	case errno == 0:
		unix.Close(int(fd))
		return okCheck(name, "available (post-copy works)")
	case errno == unix.EPERM && os.Geteuid() != 0:
		return asRoot(name, "userfaultfd")
	default:
		return mkCheck(name, api.CheckWarning, fmt.Sprintf("userfaultfd: %v: migrations with --post-copy fail to this "+
			"host (others work)", errno), "use a kernel built with CONFIG_USERFAULTFD (Debian's are)")
	}
}

// capsCheck: CRIU needs CAP_SYS_RESOURCE to dump another user's process
// (canDumpOthers).
func capsCheck() api.Check {
	const name = "capabilities"
	if err := canDumpOthers(); err != nil {
		return mkCheck(name, api.CheckWarning, "root has no CAP_SYS_RESOURCE here (a sandbox or container dropped it): "+
			"root's processes move, other users' do not (CRIU needs it to read their resource limits)",
			"run migrated with full root capabilities (CAP_SYS_RESOURCE), outside a sandbox that drops it")
	}
	return okCheck(name, "full (other users' processes move too)")
}

// pipeCheck: a post-copy dump serves pages through pipes of lazyPipeSize
// (checkPostCopy).
func pipeCheck() api.Check {
	const name = "sysctl fs.pipe-max-size"
	n := readTrim("/proc/sys/fs/pipe-max-size")
	if err := checkPostCopy(); err != nil {
		return mkCheck(name, api.CheckWarning, fmt.Sprintf("%s, below the %d bytes CRIU's pipes need to serve pages: "+
			"--post-copy from this host fails (other migrations work)", n, lazyPipeSize),
			fmt.Sprintf("sysctl -w fs.pipe-max-size=%d && echo fs.pipe-max-size=%[1]d > /etc/sysctl.d/60-migrated.conf",
				lazyPipeSize))
	}
	return okCheck(name, fmt.Sprintf("%s (post-copy's pipes fit)", n))
}

// nftCheck: CRIU's network lock is an nftables table, which the daemon
// copies and removes with nft (package netmove).
func nftCheck(ctx context.Context) api.Check {
	const name = "nftables"
	p, err := exec.LookPath("nft")
	if err != nil {
		return mkCheck(name, api.CheckFailed, "nft is not installed: CRIU's network lock for TCP connections and "+
			"--move-ip need it", "apt-get install nftables")
	}
	if os.Geteuid() != 0 {
		return asRoot(name, "listing nftables tables")
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(cctx, p, "list", "tables").CombinedOutput(); err != nil {
		return mkCheck(name, api.CheckFailed, fmt.Sprintf("`nft list tables` failed (%v): %s", err,
			oneLine(strings.TrimSpace(string(out)))), "load nftables into the kernel: modprobe nf_tables "+
			"(a kernel built with CONFIG_NF_TABLES)")
	}
	return okCheck(name, p+" works")
}

func tiniCheck() api.Check {
	const name = "tini"
	p, err := shim.FindInit()
	if err != nil {
		return mkCheck(name, api.CheckFailed, "neither tini-static nor tini is installed: every process runs under "+
			"tini in a pid namespace of its own", "apt-get install tini")
	}
	return okCheck(name, p)
}

// TokenFileCheck checks the token file at path ("": the daemon has none):
// there, a regular file, root's and root's only, readable, and holding one
// or two tokens long enough (wire.LoadToken).
func TokenFileCheck(path string) api.Check {
	const name = "token file"
	if path == "" {
		return mkCheck(name, api.CheckFailed, "none: the daemon runs without --token-file, so it accepts no migrations "+
			"and sends none", fmt.Sprintf(genToken, "/etc/migrated", "/etc/migrated/token")+
			", copy it to every host, and start each daemon with --token-file /etc/migrated/token")
	}
	gen := fmt.Sprintf(genToken, filepath.Dir(path), path) + ", and copy it to every host"
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return mkCheck(name, api.CheckFailed, path+" does not exist", gen)
	case errors.Is(err, os.ErrPermission):
		return asRoot(name, "reading "+path)
	case err != nil:
		return mkCheck(name, api.CheckFailed, err.Error(), gen)
	case !fi.Mode().IsRegular():
		return mkCheck(name, api.CheckFailed, fmt.Sprintf("%s is not a regular file (%s)", path, fi.Mode().Type()),
			"rm -r "+path+" && "+gen)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return mkCheck(name, api.CheckFailed, fmt.Sprintf("%s has mode %04o: others can read the cluster's secret, and the "+
			"daemon refuses it", path, perm), "chmod 600 "+path)
	}
	if st, isSys := fi.Sys().(*syscall.Stat_t); isSys && st.Uid != 0 {
		return mkCheck(name, api.CheckFailed, fmt.Sprintf("%s is owned by uid %d: the daemon (root) refuses a token "+
			"file that is not root's", path, st.Uid), "chown root: "+path)
	}
	tok, err := wire.LoadToken(path)
	switch {
	case errors.Is(err, os.ErrPermission) && os.Geteuid() != 0:
		return asRoot(name, "reading "+path)
	case err != nil:
		return mkCheck(name, api.CheckFailed, strings.TrimPrefix(err.Error(), "loading token: "), gen)
	}
	n := bytes.Count(tok, []byte("\n")) + 1
	what := "one token"
	if n > 1 {
		what = fmt.Sprintf("%d tokens (a rotation: remove the old line on every host when all hold the new one)", n)
	}
	return okCheck(name, fmt.Sprintf("%s: %s, root's only (mode %04o)", path, what, fi.Mode().Perm()))
}

// tokenLoadedCheck amends the "token file" line of checks with what this
// daemon holds: a file it has not reloaded since it changed, or a broken
// file while it holds a token it loaded before.
func (d *Daemon) tokenLoadedCheck(checks []api.Check) {
	if d.tokenFile == "" {
		return
	}
	for i := range checks {
		c := &checks[i]
		if c.Name != "token file" {
			continue
		}
		held := d.tokenNow()
		switch {
		case c.Status == api.CheckFailed && held != nil:
			c.Message += " (the daemon holds the token it loaded before, until it restarts or reloads)"
		case c.Status == api.CheckOK:
			if tok, err := wire.LoadToken(d.tokenFile); err == nil && !bytes.Equal(tok, held) {
				c.Status = api.CheckWarning
				c.Message = d.tokenFile + " changed since the daemon loaded it: the daemon still uses the token(s) it had"
				c.Fix = fmt.Sprintf("systemctl reload migrated, or kill -HUP %d", os.Getpid())
			}
		}
	}
}

// addressCheck: a daemon that peers call back at a loopback address sends
// and receives no process from another host.
func (d *Daemon) addressCheck() api.Check {
	const name = "daemon address"
	host, _, _ := net.SplitHostPort(d.advertise)
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		return mkCheck(name, api.CheckWarning, fmt.Sprintf("%s is a loopback address: this daemon neither sends a "+
			"process to another host nor receives one", d.advertise), "start it with --listen HOST-IP:7077 (or "+
			"--advertise HOST-IP:7077), an address the other hosts reach")
	}
	return okCheck(name, fmt.Sprintf("peers reach it at %s", d.advertise))
}

// drainedCheck warns of a drained daemon (nil if it is not).
func (d *Daemon) drainedCheck() *api.Check {
	if !d.drained.Load() {
		return nil
	}
	c := mkCheck("daemon drained", api.CheckWarning, "this daemon is drained (migrated drain): it takes no new "+
		"processes and no arriving migrations, and placement leaves it out", "migrated undrain")
	return &c
}

// checkTarget checks the daemon at addr as a migration from this daemon
// (self) would find it, and returns who it is (nil if it did not say).
func (d *Daemon) checkTarget(ctx context.Context, addr string, self api.DaemonInfo, caller api.Owner) (*api.DaemonInfo, []api.Check) {
	var cs []api.Check
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, append(cs, mkCheck("target reachable", api.CheckFailed, fmt.Sprintf("bad address %q: want ADDR:PORT", addr),
			"give the target daemon's ADDR:PORT, e.g. --to 10.0.0.2:7077"))
	}
	_, port, _ := net.SplitHostPort(addr)
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	var dl net.Dialer
	raw, err := dl.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, append(cs, mkCheck("target reachable", api.CheckFailed, fmt.Sprintf("%s is unreachable from this "+
			"host's daemon: %v", addr, unwrapNet(err)), fmt.Sprintf("start the daemon there (`migrated serve --listen %s "+
			"...`, or systemctl start migrated), or give the address it listens at; a firewall must let port %s through",
			addr, port)))
	}
	cs = append(cs, okCheck("target reachable", "connected to "+addr))
	tok := d.tokenNow()
	if tok == nil {
		raw.Close()
		return nil, append(cs, mkCheck("target authenticated", api.CheckFailed, "this daemon has no --token-file, so it "+
			"cannot authenticate to "+addr, "give this host the cluster's token file (copy it from "+addr+"'s host) "+
			"and restart the daemon with --token-file FILE"))
	}
	c, err := wire.ClientContext(dctx, raw, tok)
	if err != nil {
		raw.Close()
		msg, fix := authFailure(addr, err)
		return nil, append(cs, mkCheck("target authenticated", api.CheckFailed, msg, fix))
	}
	defer c.Close()
	cs = append(cs, okCheck("target authenticated", "this host's token works there (mutual proof)"))
	rep, err := ask(ctx, c, Request{Op: "check", Owner: &caller})
	if err == nil && rep.Check == nil {
		err = errors.New("no check in its answer")
	}
	if err != nil {
		return nil, append(cs, mkCheck("target accepting migrations", api.CheckFailed, fmt.Sprintf("%s could not be "+
			"checked: %v", addr, err), "a migrated too old to check? upgrade it there; else see its log "+
			"(journalctl -u migrated)"))
	}
	t := rep.Check.Daemon
	if self.SameDaemon(t) {
		return &t, append(cs, mkCheck("target not this host", api.CheckFailed, fmt.Sprintf("%s is this host: the daemon "+
			"there is this one (%s), and a process cannot migrate to the host it runs on", addr, describeDaemon(t)),
			"give another host's daemon ADDR:PORT with --to"))
	}
	also := ""
	if t.SameMachine(self) {
		also = ", on this machine (another namespace host or container)"
	}
	cs = append(cs, okCheck("target not this host", fmt.Sprintf("%s is another daemon: %s%s", addr, describeDaemon(t), also)))
	if t.Drained {
		cs = append(cs, mkCheck("target not drained", api.CheckFailed, fmt.Sprintf("%s is drained (migrated drain): it "+
			"refuses arriving migrations", addr), "migrated undrain --host "+addr+", or give another host with --to"))
	}
	cs = append(cs, acceptingCheck(addr, rep.Check.Checks), memoryCheck(addr, t))
	return &t, cs
}

// ask sends req on c and returns the reply; a failure comes back as the
// daemon's error.
func ask(ctx context.Context, c *wire.Conn, req Request) (*Reply, error) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(checkTimeout)
	}
	c.SetDeadline(dl)
	defer c.SetDeadline(time.Time{})
	if err := c.WriteJSON(tRequest, &req); err != nil {
		return nil, err
	}
	for {
		typ, b, err := c.ReadMsg()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				err = errors.New("it closed the connection before it answered")
			}
			return nil, err
		}
		switch typ {
		case tReply:
			var r Reply
			if err := jsonUnmarshal(b, &r); err != nil {
				return nil, err
			}
			return &r, nil
		case tFail:
			var e api.Error
			if err := jsonUnmarshal(b, &e); err != nil {
				return nil, err
			}
			return nil, &e
		case wire.TypeError:
			return nil, api.Unwrap(c.DecodeError(b))
		case tEvent, tLogData:
		default:
			return nil, fmt.Errorf("unexpected message type %d", typ)
		}
	}
}

// authFailure says why the handshake with addr failed, and what to do.
func authFailure(addr string, err error) (msg, fix string) {
	copyTok := "copy this host's token file to " + addr + "'s host (the same file on every host), then reload the " +
		"daemon there (systemctl reload migrated, or SIGHUP)"
	switch {
	case errors.Is(err, wire.ErrAuth):
		return fmt.Sprintf("%s refused this host's token: the two hosts hold different tokens", addr), copyTok
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET):
		return fmt.Sprintf("%s closed the connection during the handshake: it runs without a token (--token-file), "+
			"or it is not a migrated", addr), "start the daemon there with --token-file, a copy of this host's token file"
	}
	return fmt.Sprintf("the handshake with %s failed: %v", addr, api.Unwrap(err)), "is " + addr + " a migrated daemon " +
		"of the same version? " + copyTok
}

// acceptingCheck sums up the target's own host checks: a failed one there
// fails every migration to it.
func acceptingCheck(addr string, checks []api.Check) api.Check {
	const name = "target accepting migrations"
	var failed, warned, fixes []string
	for _, c := range checks {
		switch c.Status {
		case api.CheckFailed:
			failed = append(failed, c.Name+": "+c.Message)
			if c.Fix != "" {
				fixes = append(fixes, c.Fix)
			}
		case api.CheckWarning:
			warned = append(warned, c.Name)
		}
	}
	switch {
	case len(failed) > 0:
		return mkCheck(name, api.CheckFailed, fmt.Sprintf("%s fails its own checks: %s", addr, strings.Join(failed, "; ")),
			"on "+addr+"'s host: "+strings.Join(fixes, "; ")+" (`migrated check` there says more)")
	case len(warned) > 0:
		return mkCheck(name, api.CheckWarning, fmt.Sprintf("%s accepts migrations, with warnings: %s", addr,
			strings.Join(warned, ", ")), "run `migrated check` on "+addr+"'s host to see them")
	}
	return okCheck(name, fmt.Sprintf("its CRIU, kernel and token are ready (%d checks passed there)", len(checks)))
}

// memoryCheck reports the target's memory for arriving processes, as its
// admission (admit.go) will count it.
func memoryCheck(addr string, t api.DaemonInfo) api.Check {
	const name = "target memory"
	free := t.FreeForArrivals()
	fit := maxFit(free)
	if room := t.ImagesFreeBytes - imagesSlack; room < fit {
		fit = room
	}
	msg := fmt.Sprintf("%s free for arriving processes (%s available, %s kept free by --keep-free, %s held by arriving "+
		"migrations), %s free in its images tmpfs: room for a process of up to about %s", api.MiB(max(free, 0)),
		api.MiB(t.MemAvailableBytes), api.MiB(t.KeepFreeBytes), api.MiB(t.HeldBytes), api.MiB(t.ImagesFreeBytes), api.MiB(max(fit, 0)))
	if fit < 1<<20 {
		fix := fmt.Sprintf("free memory on %s's host, or restart its daemon with a smaller --keep-free", addr)
		if t.ImagesFreeBytes-imagesSlack < maxFit(free) {
			fix = fmt.Sprintf("restart the daemon on %s's host with a larger --images-size", addr)
		}
		return mkCheck(name, api.CheckFailed, "no room: "+msg, fix)
	}
	return okCheck(name, msg)
}

// maxFit is the largest process memory whose need (admit.go) is at most
// free bytes.
func maxFit(free int64) int64 {
	if free <= admitSlackMin {
		return 0
	}
	if m := free - admitSlackMin; m/admitSlackDiv <= admitSlackMin {
		return m
	}
	return free * admitSlackDiv / (admitSlackDiv + 1)
}

func describeDaemon(t api.DaemonInfo) string {
	s := "daemon " + t.ID
	if len(t.ID) > 12 {
		s = "daemon " + t.ID[:12]
	}
	if t.Hostname != "" {
		s += " on " + t.Hostname
	}
	return s
}

func unwrapExec(err error) error {
	var ee *exec.Error
	if errors.As(err, &ee) {
		return ee.Err
	}
	return err
}

// unwrapNet is a dial error without Go's "dial tcp ADDR:" preamble.
func unwrapNet(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		var se *os.SyscallError
		if errors.As(oe.Err, &se) {
			return se.Err
		}
		return oe.Err
	}
	return err
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
