package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"dsmigrate/internal/api"
	"dsmigrate/internal/wire"
)

// Users. The local socket is open to every user of the host: the daemon
// knows each caller by the socket's peer credentials (SO_PEERCRED, with
// SO_PEERGROUPS for the supplementary groups), and a process runs as the
// user who started it (its Owner: shim.Spec.Cred). A user sees, reads the
// logs of, follows, kills and migrates only the processes it owns; root
// every process. Address changes (addip, delip) are root's alone.
//
// Between hosts, the cluster token is root's: whoever holds it is root on
// every daemon. A user who holds none reaches another host through its own
// daemon (api.DialVia: Request.Host), which passes the request on with the
// caller as Request.Owner; the receiving daemon trusts that owner because
// only a daemon or root could have sent it (the way Slurm's daemons trust
// munge credentials). A user therefore has the same uid on every host, as
// with NFS or Slurm. A migration carries its process's owner along
// (migration.Begin.Owner); CRIU restores the process's credentials and
// capabilities themselves from its images, which only root can read
// (the images tmpfs is mode 0700).

// peerOwner is the caller at the other end of a unix socket: its uid, gid
// and supplementary groups as the kernel recorded them when it connected.
func peerOwner(c net.Conn) (api.Owner, error) {
	cred, groups, err := peerCred(c, true)
	if err != nil {
		return api.Owner{}, err
	}
	return api.Owner{UID: cred.Uid, GID: cred.Gid, Groups: groups}, nil
}

// peerCred is SO_PEERCRED of a unix socket (pid, uid and gid of its peer
// when it connected), and with groups its supplementary groups.
func peerCred(c net.Conn, groups bool) (*unix.Ucred, []uint32, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil, fmt.Errorf("a local client on a %T, not a unix socket", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	var cred *unix.Ucred
	var gs []uint32
	var cerr error
	err = raw.Control(func(fd uintptr) {
		if cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); cerr != nil {
			cerr = fmt.Errorf("SO_PEERCRED: %v", cerr)
		} else if groups {
			gs, cerr = peerGroups(int(fd))
		}
	})
	if err == nil {
		err = cerr
	}
	return cred, gs, err
}

// peerGroups is SO_PEERGROUPS: the supplementary groups of a unix socket's
// peer (Linux 4.13).
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 32)
	for {
		n := uint32(len(buf) * 4)
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch {
		case e == unix.ERANGE && int(n/4) > len(buf):
			buf = make([]uint32, n/4) // n is the size needed
		case e != 0:
			return nil, fmt.Errorf("SO_PEERGROUPS: %v", e)
		default:
			if n == 0 {
				return nil, nil
			}
			return buf[:n/4], nil
		}
	}
}

// canDumpOthers says why CRIU, run by this daemon, cannot dump a process of
// another user's: it reads the process's resource limits (prlimit), which
// takes CAP_SYS_RESOURCE for a process of another uid. Root has it, unless
// a sandbox or a container runtime took it from the bounding set (some VM
// sandboxes do); the dump would then fail half-way.
func canDumpOthers() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("reading the daemon's capabilities: %v", err)
	}
	if data[unix.CAP_SYS_RESOURCE/32].Effective&(1<<(unix.CAP_SYS_RESOURCE%32)) == 0 {
		return errors.New("the daemon runs without CAP_SYS_RESOURCE (this host's root lacks it: a sandbox or " +
			"container dropped it), and CRIU needs it to read the resource limits of another user's process; " +
			"run migrated with full root capabilities to move users' processes")
	}
	return nil
}

// getFor is get among the processes caller may act on: another user's
// process is "no process", as if absent, and its name never makes caller's
// own ambiguous.
func (d *Daemon) getFor(id string, caller api.Owner) (*Proc, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p, ok := d.procs[id]; ok && caller.May(p.Owner) {
		return p, nil
	}
	// Accept a unique prefix or a name, as users type them.
	var found *Proc
	for _, p := range d.procs {
		if !caller.May(p.Owner) {
			continue
		}
		if p.Name == id || (len(id) >= 4 && len(p.ID) > len(id) && p.ID[:len(id)] == id) {
			if found != nil {
				return nil, fmt.Errorf("%q is ambiguous: use the full ID from `migrated ps`", id)
			}
			found = p
		}
	}
	if found == nil {
		return nil, api.Errorf(api.KindNotFound, "no process %q on this host: `migrated ps` lists them", id)
	}
	return found, nil
}

// nameOf is a --name and the uid whose it is.
type nameOf struct {
	name string
	uid  uint32
}

// nameFree refuses a --name that one of caller's processes here has
// already, or is being started with: `logs NAME`, `migrate NAME` and the
// rest would not know which one is meant. (Names are per user; a name given
// to no process, the command's, may repeat.) d.mu is held.
func (d *Daemon) nameFree(name string, caller api.Owner) error {
	if name == "" {
		return nil
	}
	for id, n := range d.naming {
		if n == (nameOf{name, caller.UID}) {
			return fmt.Errorf("the name %q is taken here by process %s (starting): pick another --name", name, id)
		}
	}
	for _, p := range d.procs {
		if p.Name != name || p.Owner.UID != caller.UID {
			continue
		}
		p.mu.Lock()
		st := p.state
		p.mu.Unlock()
		if st == "exited" || st == "lost" {
			return fmt.Errorf("the name %q is taken here by process %s, which has %s: `migrated kill %s` "+
				"forgets it, or pick another --name", name, p.ID, st, p.ID)
		}
		return fmt.Errorf("the name %q is taken here by process %s (%s): pick another --name", name, p.ID, st)
	}
	return nil
}

// rootOnly refuses op to a caller other than root.
func rootOnly(caller api.Owner, op, what string) error {
	if caller.IsRoot() {
		return nil
	}
	return fmt.Errorf("%s is root's alone on a host (uid %d asked): %s", op, caller.UID, what)
}

// relay passes a local caller's request on to the daemon at req.Host,
// acting for caller, and relays every message of the answer (events, log
// data, the reply or the error) back until the last. The caller hanging up
// ends it (a follow may wait long for output).
func (d *Daemon) relay(c net.Conn, local *wire.Conn, req Request, caller api.Owner) {
	host := req.Host
	if _, _, err := net.SplitHostPort(host); err != nil {
		local.WriteError(fmt.Errorf("bad host %q: want ADDR:PORT", host))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	remote, err := d.dialPeer(ctx, host)
	cancel()
	if err != nil {
		local.WriteJSON(tFail, api.Errorf(api.KindUnreachable, "daemon %s unreachable from this host's daemon: %v", host, err))
		return
	}
	defer remote.Close()
	req.Host, req.Owner = "", &caller
	if err := remote.WriteJSON(tRequest, &req); err != nil {
		local.WriteJSON(tFail, api.Errorf(api.KindUnreachable, "daemon %s: %v", host, err))
		return
	}
	hungUp := make(chan struct{})
	defer close(hungUp)
	go func() {
		// A client sends nothing after its request: a read returns when
		// it hangs up, or when this relay is over and closes c.
		var b [1]byte
		c.Read(b[:])
		select {
		case <-hungUp:
		default:
			if req.Op == "migrate" || req.Op == "drain" {
				// The caller calls the migration (or drain) off, or has
				// gone: the other daemon hears a half-close and rolls it
				// back if it can; its answer still comes, for the caller
				// to hear.
				remote.CloseWrite()
				return
			}
			remote.Close()
		}
	}()
	for {
		typ, b, err := remote.ReadMsg()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("closed the connection before it answered")
			}
			local.WriteJSON(tFail, api.Errorf(api.KindUnreachable, "daemon %s: %v", host, err))
			return
		}
		if err := local.WriteMsg(typ, b); err != nil {
			return
		}
		if typ == tReply || typ == tFail || typ == wire.TypeError {
			return
		}
	}
}

// dialPeer reaches the daemon at addr over TCP, authenticated with the
// cluster token.
func (d *Daemon) dialPeer(ctx context.Context, addr string) (*wire.Conn, error) {
	tok := d.tokenNow()
	if tok == nil {
		return nil, errors.New("this daemon has no --token-file, so it cannot authenticate to another")
	}
	var dl net.Dialer
	raw, err := dl.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c, err := wire.ClientContext(ctx, raw, tok)
	if err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}
