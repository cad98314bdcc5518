// Package placement picks the host a process goes to: where `migrated
// migrate` without --to sends it, where `migrated run --anywhere` and
// `dsmrun run` without a hostfile start it, and where `migrated drain` moves
// each process of the host it empties. docs/placement.md says the same for
// users.
//
// Each daemon says what it has (api.DaemonInfo): its memory available for
// arriving processes, its CPUs and 1-minute load average, the processes it
// runs, whether it is drained, and its networks. A host is left out when it
// did not answer, is drained, is the process's own, lacks the memory (or,
// before post-copy, the images room) the process needs, or has no network
// that holds the process's own address. The others are weighed by a cost,
// lower first:
//
//	mem   = 1 - (memory free for arrivals after this process) / total memory
//	cpu   = load average / CPUs
//	procs = processes the daemon runs / CPUs
//
//	balanced (default)  mem + cpu + procs
//	memory              mem
//	cpu                 cpu + procs
//
// procs counts what the load average cannot yet show: it trails by about a
// minute, so without it the ranks of one job started together, or the
// processes of one drain, would all pile onto the host that was idle a
// minute ago. Daemons that share a machine (namespace hosts, containers:
// the same machine and boot IDs) share its memory and load; read at
// different moments, their readings differ a little, so the first one's
// count for all of them, and procs alone tells them apart. Costs
// within Tie of each other count as equal: fewer processes first, then more
// free memory, then the order the hosts were given in.
package placement

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"dsmigrate/internal/api"
)

// Policy is how hosts are weighed.
type Policy string

// The policies.
const (
	Balanced Policy = "balanced"
	Memory   Policy = "memory"
	CPU      Policy = "cpu"
)

// Policies lists the policies, the default first.
var Policies = []Policy{Balanced, Memory, CPU}

// ParsePolicy returns the policy named s ("" is Balanced).
func ParsePolicy(s string) (Policy, error) {
	if s == "" {
		return Balanced, nil
	}
	for _, p := range Policies {
		if string(p) == s {
			return p, nil
		}
	}
	names := make([]string, len(Policies))
	for i, p := range Policies {
		names[i] = string(p)
	}
	return "", fmt.Errorf("unknown placement policy %q: want %s", s, strings.Join(names, ", "))
}

// Tie is the difference of costs that counts as none.
const Tie = 0.02

// The room an arriving process holds on its target (the target's admission
// says the same): its memory, plus an eighth of it and at least 16 MiB of
// slack; and in the images tmpfs its memory and 4 MiB.
const (
	SlackDiv    = 8
	SlackMin    = 16 << 20
	ImagesSlack = 4 << 20
)

// Held is the memory a process of mem bytes holds on its target while it
// arrives.
func Held(mem int64) int64 { return mem + max(mem/SlackDiv, SlackMin) }

// ImagesHeld is the room in the images tmpfs a process of mem bytes holds on
// its target while it arrives (not with post-copy, whose pages come later).
func ImagesHeld(mem int64) int64 { return mem + ImagesSlack }

// Host is a candidate: its daemon's address, and what the daemon said of
// itself, or why it did not answer.
type Host struct {
	Addr string
	Info api.DaemonInfo
	Err  error
}

// Need is what a process asks of its target.
type Need struct {
	Memory   int64        // bytes its dump is expected to hold
	PostCopy bool         // its pages come after it resumes: no images room needed
	OwnIP    netip.Prefix // its own address, which moves with it; zero: none
	// From is the daemon the process runs on (left out); zero for a
	// process not started yet.
	From api.DaemonInfo
}

// Choice is a host that can take the process, and its cost.
type Choice struct {
	Addr string
	Cost float64
	Info api.DaemonInfo
}

// Skip is a host left out, and why.
type Skip struct {
	Addr string
	Why  string
}

// Rank orders the hosts that can take a process of need best first under
// policy p, and says why each other one was left out (in hosts' order).
func Rank(hosts []Host, need Need, p Policy) ([]Choice, []Skip) {
	var cs []Choice
	var skips []Skip
	hosts = sameReadings(hosts)
	for i, h := range hosts {
		if why := leftOut(h, need); why != "" {
			skips = append(skips, Skip{h.Addr, why})
			continue
		}
		cs = append(cs, Choice{Addr: h.Addr, Cost: cost(h.Info, need, p), Info: hosts[i].Info})
	}
	sort.SliceStable(cs, func(a, b int) bool { return better(cs[a], cs[b]) })
	return cs, skips
}

// Spread places n processes of need one after another, each on the best
// host once the ones before it count against theirs (a process more, its
// memory less), and returns each one's host. It fails when a process finds
// no host, saying why each was left out.
func Spread(hosts []Host, n int, need Need, p Policy) ([]string, error) {
	hs := append([]Host(nil), hosts...)
	out := make([]string, 0, n)
	for i := range n {
		cs, skips := Rank(hs, need, p)
		if len(cs) == 0 {
			return nil, NoHost(skips, fmt.Sprintf("process %d of %d", i+1, n))
		}
		out = append(out, cs[0].Addr)
		Count(hs, cs[0].Addr, need)
	}
	return out, nil
}

// Count counts a process of need against the host at addr among hosts,
// as the host will once it runs there: a process more, its memory less.
// The memory goes from every daemon of its machine.
func Count(hosts []Host, addr string, need Need) {
	var at *Host
	for i := range hosts {
		if hosts[i].Addr == addr && hosts[i].Err == nil {
			at = &hosts[i]
		}
	}
	if at == nil {
		return
	}
	at.Info.Procs++
	mine := at.Info
	for i := range hosts {
		if h := &hosts[i]; h == at || h.Err == nil && h.Info.SameMachine(mine) {
			h.Info.MemAvailableBytes -= Held(need.Memory)
		}
	}
}

// sameReadings is hosts with the memory and load of the first daemon of
// each machine given to the others of the machine.
func sameReadings(hosts []Host) []Host {
	out := append([]Host(nil), hosts...)
	for i := range out {
		in := &out[i].Info
		for _, f := range out[:i] {
			if out[i].Err == nil && f.Err == nil && f.Info.SameMachine(*in) {
				in.MemAvailableBytes, in.MemTotalBytes, in.Load1, in.CPUs = f.Info.MemAvailableBytes,
					f.Info.MemTotalBytes, f.Info.Load1, f.Info.CPUs
				break
			}
		}
	}
	return out
}

// NoHost is the error of a placement of what (e.g. "process 3 of 4") that
// found no host: it says why each host was left out.
func NoHost(skips []Skip, what string) error {
	if len(skips) == 0 || len(skips) == 1 && skips[0].Why == ownHost {
		return fmt.Errorf("no host for %s: no other daemon is known (start the daemons with --peers "+
			"ADDR:PORT,..., the cluster's hosts)", what)
	}
	var b strings.Builder
	for i, s := range skips {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s %s", s.Addr, s.Why)
	}
	return fmt.Errorf("no host can take %s: %s", what, b.String())
}

// ownHost is why the process's own host is left out.
const ownHost = "is the process's own host"

// leftOut says why h cannot take a process of need ("" if it can).
func leftOut(h Host, need Need) string {
	in := h.Info
	switch {
	case h.Err != nil:
		return fmt.Sprintf("did not answer (%v)", h.Err)
	case in.Drained:
		return "is drained (migrated undrain lets it take processes again)"
	case in.SameDaemon(need.From):
		return ownHost
	}
	if free := freeAfter(in, need); free < 0 {
		return fmt.Sprintf("has not the memory: the process needs about %s and %s is free for arrivals there",
			api.MiB(Held(need.Memory)), api.MiB(max(free+Held(need.Memory), 0)))
	}
	if !need.PostCopy && in.ImagesFreeBytes >= 0 && in.ImagesFreeBytes < ImagesHeld(need.Memory) {
		return fmt.Sprintf("has not the images room: the process needs about %s and its images tmpfs has %s "+
			"(or move it with --post-copy)", api.MiB(ImagesHeld(need.Memory)), api.MiB(in.ImagesFreeBytes))
	}
	if need.OwnIP.IsValid() && !holds(in.Subnets, need.OwnIP.Addr()) {
		return fmt.Sprintf("has no network that holds the process's own address %s", need.OwnIP)
	}
	return ""
}

// freeAfter is the memory free for arrivals on the host of in once a
// process of need has arrived.
func freeAfter(in api.DaemonInfo, need Need) int64 {
	return in.FreeForArrivals() - Held(need.Memory)
}

// holds reports whether one of subnets (prefixes) contains ip.
func holds(subnets []string, ip netip.Addr) bool {
	for _, s := range subnets {
		if p, err := netip.ParsePrefix(s); err == nil && p.Contains(ip) {
			return true
		}
	}
	return false
}

// cost weighs the host of in for a process of need under p (lower is
// better): the package's comment has the formulas.
func cost(in api.DaemonInfo, need Need, p Policy) float64 {
	cpus := float64(max(in.CPUs, 1))
	mem := 0.5 // a host that says no total
	if in.MemTotalBytes > 0 {
		mem = 1 - float64(freeAfter(in, need))/float64(in.MemTotalBytes)
	}
	cpu := in.Load1 / cpus
	procs := float64(in.Procs) / cpus
	switch p {
	case Memory:
		return mem
	case CPU:
		return cpu + procs
	}
	return mem + cpu + procs
}

// better reports whether a goes before b: a lower cost by more than Tie,
// else fewer processes, else more free memory; else neither (Rank keeps the
// hosts' order).
func better(a, b Choice) bool {
	if d := a.Cost - b.Cost; d < -Tie || d > Tie {
		return d < 0
	}
	if a.Info.Procs != b.Info.Procs {
		return a.Info.Procs < b.Info.Procs
	}
	fa, fb := a.Info.FreeForArrivals(), b.Info.FreeForArrivals()
	// Free memory moves by a few pages from one reading to the next: only
	// a difference of more than 1% of the smaller counts.
	if diff := fa - fb; diff > min(fa, fb)/100 || -diff > min(fa, fb)/100 {
		return fa > fb
	}
	return false
}
