package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"dsmigrate/netmove"
)

// The daemon's addresses, and what it refuses to do to its host's.
//
// --listen is where the daemon accepts peers; --advertise is the address it
// tells them to call back (a target asks its source how a migration ended
// at the address the source gave it). A wildcard listen address (":7077",
// "0.0.0.0:7077", "[::]:7077") names no address a peer can call, and a
// target that was told one asks itself, hears "unknown", and drops its copy
// after the source dropped its own: so a wildcard, link-local or multicast
// listen address needs --advertise, and the daemon refuses to start without
// it. A loopback listen address is accepted alone for a single-host setup
// (several daemons on one machine, where loopback reaches each of them);
// such a daemon refuses to send a process to a target outside loopback,
// which could not call it back.

// lookupTimeout bounds a name lookup of the daemon's or a target's address.
const lookupTimeout = 5 * time.Second

// advertised checks --listen and --advertise and returns the address peers
// are told, and the daemon's own IP addresses (the listen address's unless
// it is a wildcard, and the advertised one's), which an address move must
// never take away.
func advertised(ctx context.Context, listen, advertise string) (string, []netip.Addr, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || !validPort(port, true) {
		return "", nil, fmt.Errorf("--listen %q: want ADDR:PORT, e.g. 10.0.0.5:7077", listen)
	}
	var own []netip.Addr
	if host != "" {
		if own, err = lookup(ctx, host); err != nil {
			return "", nil, fmt.Errorf("--listen %s: %v", listen, err)
		}
	}
	if advertise == "" {
		switch {
		case host == "" || own[0].IsUnspecified():
			return "", nil, fmt.Errorf("--listen %s accepts peers on every address but names none for them to call "+
				"back: add --advertise ADDR:PORT, the address the other hosts reach this daemon at", listen)
		case !callable(own[0]):
			return "", nil, fmt.Errorf("--listen %s is not an address other hosts can call back: add --advertise "+
				"ADDR:PORT, the address the other hosts reach this daemon at", listen)
		case port == "0":
			return "", nil, fmt.Errorf("--listen %s picks a port at random, which peers cannot know: give a port, "+
				"or add --advertise ADDR:PORT", listen)
		}
		return listen, own, nil
	}
	ahost, aport, err := net.SplitHostPort(advertise)
	if err != nil || ahost == "" || !validPort(aport, false) {
		return "", nil, fmt.Errorf("--advertise %q: want ADDR:PORT, the address the other hosts reach this daemon "+
			"at, e.g. 10.0.0.5:7077", advertise)
	}
	aips, err := lookup(ctx, ahost)
	if err != nil {
		return "", nil, fmt.Errorf("--advertise %s: %v", advertise, err)
	}
	for _, ip := range aips {
		if ip.IsUnspecified() || !callable(ip) {
			return "", nil, fmt.Errorf("--advertise %s is not an address other hosts can call: give the address "+
				"they reach this daemon at", advertise)
		}
	}
	var keep []netip.Addr
	for _, ip := range own {
		if !ip.IsUnspecified() {
			keep = append(keep, ip)
		}
	}
	return advertise, append(keep, aips...), nil
}

func validPort(port string, zeroOK bool) bool {
	n, err := strconv.Atoi(port)
	return err == nil && n <= 65535 && (n > 0 || zeroOK && n == 0)
}

// callable reports whether peers can be told ip: a loopback address is
// (for peers on the same host), a link-local one needs an interface to
// mean anything, a multicast one is no daemon's.
func callable(ip netip.Addr) bool {
	return !ip.IsLinkLocalUnicast() && !ip.IsMulticast() && !ip.IsInterfaceLocalMulticast()
}

// lookup returns host's addresses (host itself if it is an IP).
func lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip.Unmap()}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		return nil, fmt.Errorf("cannot resolve %q: give an IP address", host)
	}
	for i := range ips {
		ips[i] = ips[i].Unmap()
	}
	return ips, nil
}

// allLoopback reports whether every address of ips is a loopback address.
func allLoopback(ips []netip.Addr) bool {
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return false
		}
	}
	return len(ips) > 0
}

// checkOut refuses, before anything is touched, a migration to target `to`
// that this daemon could not see through, and an address move that would
// hurt this host (netmove.CheckRemove says which).
func (d *Daemon) checkOut(ctx context.Context, to, moveIP string) error {
	if to == "" {
		return nil // the engine says what to give
	}
	host, _, err := net.SplitHostPort(to)
	if err != nil {
		return fmt.Errorf("bad target %q: want ADDR:PORT", to)
	}
	targets, err := lookup(ctx, host)
	if err != nil {
		return fmt.Errorf("target %s: %v", to, err)
	}
	ahost, _, _ := net.SplitHostPort(d.advertise)
	if aips, err := lookup(ctx, ahost); err == nil && allLoopback(aips) && !allLoopback(targets) {
		return fmt.Errorf("this daemon tells its peers to call it back at %s, which %s cannot reach: restart it "+
			"with --advertise ADDR:PORT, the address the other hosts reach it at", d.advertise, to)
	}
	if moveIP == "" {
		return nil
	}
	if _, err := netmove.CheckRemove(moveIP, netmove.Keep{Own: d.own, Targets: targets}); err != nil {
		return fmt.Errorf("--move-ip refused, nothing was touched: %w", err)
	}
	return nil
}

// addIP puts a process's own address (dsmrun run --rank-ips) on this host.
// An address the host holds already is refused: it is the host's (or a
// leftover), and the delip that ends the job would take it away.
func (d *Daemon) addIP(cidr string) error {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return fmt.Errorf("bad address %q: want IP/PREFIX", cidr)
	}
	if p.Addr().IsLoopback() || p.Addr().IsUnspecified() || p.Addr().IsMulticast() {
		return fmt.Errorf("%s cannot be a process's own address: give one of the hosts' network", cidr)
	}
	held, err := netmove.HasAddr(cidr)
	if err != nil {
		return err
	}
	if held {
		return fmt.Errorf("this host holds %s already, so it cannot become a process's own (the job's end would "+
			"remove it): pick addresses no host uses, or remove a leftover with `ip addr del %s dev IFACE`", p.Addr(),
			cidr)
	}
	iface, err := netmove.Iface(cidr)
	if err != nil {
		return err
	}
	// Announce it at once: the address may have lived on another host a
	// moment ago, and peers' ARP caches would still send there.
	if err := netmove.AddAddr(iface, cidr); err != nil {
		return err
	}
	return netmove.Announce(iface, p.Addr().String())
}

// delIP removes a process's own address (dsmrun's cleanup). One this host
// does not hold is not an error; one whose removal would hurt the host
// (netmove.CheckRemove) is refused.
func (d *Daemon) delIP(cidr string) error {
	iface, err := netmove.CheckRemove(cidr, netmove.Keep{Own: d.own})
	if errors.Is(err, netmove.ErrNoSuchAddr) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("refusing to remove an address, nothing was touched: %w", err)
	}
	return netmove.DelAddr(iface, cidr)
}

// logLimiter lets one log line of a kind through per interval and counts
// the lines it held back: anyone who reaches the TCP port can make failed
// handshakes, and a flood of them must not flood the log.
type logLimiter struct {
	every time.Duration

	mu   sync.Mutex
	next time.Time // no line before
	held int       // lines held back since the last one
}

// allow reports whether a line may go out at now and, if so, how many were
// held back before it.
func (l *logLimiter) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next) {
		l.held++
		return false, 0
	}
	held := l.held
	l.next, l.held = now.Add(l.every), 0
	return true, held
}
