package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"dsmigrate/internal/api"
	"dsmigrate/internal/placement"
)

// The cluster as this daemon sees it: its --peers, what each says of itself
// (an "identity" request: api.DaemonInfo), and the host placement picks
// among them (package placement) for migrate without --to, run --anywhere
// (place) and drain.

// surveyTimeout bounds asking every peer who it is and what it has.
const surveyTimeout = 5 * time.Second

// survey asks this daemon's peers (and itself) what they have, at once.
// This daemon answers for itself without a connection and comes first; a
// peer that is this daemon (its own address in --peers) is left out.
func (d *Daemon) survey(ctx context.Context) ([]placement.Host, error) {
	self, err := d.info()
	if err != nil {
		return nil, err
	}
	hosts := make([]placement.Host, len(d.peers))
	var wg sync.WaitGroup
	for i, addr := range d.peers {
		hosts[i].Addr = addr
		if addr == d.advertise || addr == d.listen {
			hosts[i].Info = self
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			hosts[i].Info, hosts[i].Err = d.identity(ctx, addr)
		}()
	}
	wg.Wait()
	out := []placement.Host{{Addr: d.advertise, Info: self}}
	for _, h := range hosts {
		if h.Err == nil && h.Info.SameDaemon(self) {
			continue
		}
		out = append(out, h)
	}
	return out, nil
}

// identity asks the daemon at addr who it is and what it has.
func (d *Daemon) identity(ctx context.Context, addr string) (api.DaemonInfo, error) {
	rep, err := d.askPeer(ctx, addr, Request{Op: "identity"})
	if err != nil {
		return api.DaemonInfo{}, err
	}
	return api.Identity(rep)
}

// hostInfos is hosts as clients see them, with self marked, in order.
func hostInfos(hosts []placement.Host, self string) []api.HostInfo {
	out := make([]api.HostInfo, len(hosts))
	for i, h := range hosts {
		out[i] = api.HostInfo{Addr: h.Addr, Self: h.Addr == self}
		if h.Err != nil {
			out[i].Error = h.Err.Error()
			continue
		}
		in := h.Info
		out[i].Daemon = &in
	}
	return out
}

// place answers "place": the hosts best first for a new process (whose
// memory is not known yet: the admission's slack alone counts), those left
// out after them with why.
func (d *Daemon) place(ctx context.Context, req Request) (*Reply, error) {
	pol, err := placement.ParsePolicy(req.Policy)
	if err != nil {
		return nil, err
	}
	hosts, err := d.survey(ctx)
	if err != nil {
		return nil, err
	}
	need := placement.Need{}
	if req.OwnIP != "" {
		if need.OwnIP, err = netip.ParsePrefix(req.OwnIP); err != nil {
			return nil, fmt.Errorf("bad address %q: want IP/PREFIX", req.OwnIP)
		}
	}
	return &Reply{Hosts: rankedInfos(hosts, need, pol, d.advertise)}, nil
}

// rankedInfos is hosts ranked for need under pol (placement.Rank): the
// choices best first with their costs, then the hosts left out with why.
func rankedInfos(hosts []placement.Host, need placement.Need, pol placement.Policy, self string) []api.HostInfo {
	byAddr := map[string]api.HostInfo{}
	for _, h := range hostInfos(hosts, self) {
		byAddr[h.Addr] = h
	}
	cs, skips := placement.Rank(hosts, need, pol)
	var out []api.HostInfo
	for _, c := range cs {
		h := byAddr[c.Addr]
		h.Cost = c.Cost
		out = append(out, h)
	}
	for _, s := range skips {
		h := byAddr[s.Addr]
		h.Skip = s.Why
		out = append(out, h)
	}
	return out
}

// target picks where process p goes from here under policy pol: the best
// host but this one (one on moveIP's subnet, if the move takes it along).
func (d *Daemon) target(ctx context.Context, p *Proc, pol placement.Policy, postCopy bool, moveIP string) (string, float64, error) {
	hosts, err := d.survey(ctx)
	if err != nil {
		return "", 0, err
	}
	need, err := d.needOf(p, postCopy, moveIP)
	if err != nil {
		return "", 0, err
	}
	cs, skips := placement.Rank(hosts, need, pol)
	if len(cs) == 0 {
		return "", 0, api.WithKind(api.KindRefused, placement.NoHost(skips, "process "+p.ID))
	}
	return cs[0].Addr, cs[0].Cost, nil
}

// needOf is what process p asks of a target, moving the address moveIP
// with it ("": none).
func (d *Daemon) needOf(p *Proc, postCopy bool, moveIP string) (placement.Need, error) {
	self, err := d.info()
	if err != nil {
		return placement.Need{}, err
	}
	p.mu.Lock()
	pid := p.pid
	p.mu.Unlock()
	need := placement.Need{Memory: treeMemory(pid), PostCopy: postCopy, From: self}
	if moveIP != "" {
		if need.OwnIP, err = netip.ParsePrefix(moveIP); err != nil {
			return need, fmt.Errorf("bad --move-ip %q: want IP/PREFIX", moveIP)
		}
	}
	return need, nil
}

// cpuLoad is the host's CPUs (those this daemon may run on) and its
// 1-minute load average.
func cpuLoad() (int, float64) {
	load, _ := load1()
	return runtime.NumCPU(), load
}

// subnets is the networks of this host's addresses (their prefixes,
// masked), but loopback and link-local ones.
func subnets() []string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []string
	seen := map[string]bool{}
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() {
			continue
		}
		bits, _ := n.Mask.Size()
		if ip.Is4() && bits > 32 {
			bits -= 96
		}
		s := netip.PrefixFrom(ip, bits).Masked().String()
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// liveProcs counts the processes this daemon runs (or is receiving).
func (d *Daemon) liveProcs() int {
	d.mu.Lock()
	ps := make([]*Proc, 0, len(d.procs))
	for _, p := range d.procs {
		ps = append(ps, p)
	}
	d.mu.Unlock()
	n := 0
	for _, p := range ps {
		p.mu.Lock()
		switch p.state {
		case "starting", "running", "stopped", "incoming":
			n++
		}
		p.mu.Unlock()
	}
	return n
}

// describeHost is a host's line for a placement event.
func describeHost(addr string, cost float64, pol placement.Policy) string {
	return fmt.Sprintf("%s (placement %s, cost %.2f)", addr, pol, cost)
}
