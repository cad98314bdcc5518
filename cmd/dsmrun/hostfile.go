package main

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"

	"dsmigrate/internal/api"
	"dsmigrate/internal/placement"

	"dsmigrate/internal/cliutil"
)

// hostfileHelp is the format of `dsmrun run --hostfile`, as its help and
// the README say it.
const hostfileHelp = `A hostfile (--hostfile FILE) lists the daemons and how many ranks each takes, as mpirun's
hostfiles do, one host a line:

   # comments run from '#' to the end of the line; blank lines are ignored
   10.77.0.1:7077 slots=2
   10.77.0.2:7077 slots=1
   10.77.0.3:7077          # no slots=: 1 slot

Ranks fill each host's slots in the file's order (Open MPI's "by slot"): rank 0 and 1 on the
first host above, rank 2 on the second, rank 3 on the third. -n defaults to the number of slots;
more ranks than slots is an error, unless --oversubscribe is given: the ranks beyond the slots
then go round-robin over the hosts again, from the first. A host may be listed once. --hosts
(the flag) and --hostfile together are an error; MIGRATED_HOSTS is ignored with a hostfile.`

// hostSlots is one host of a hostfile.
type hostSlots struct {
	host  string // ADDR:PORT
	slots int
	line  int
}

// readHostfile reads a hostfile (hostfileHelp). An error names the file
// and the line, and says what a line should be.
func readHostfile(path string) ([]hostSlots, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []hostSlots
	seen := map[string]int{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fs := strings.Fields(line)
		if len(fs) == 0 {
			continue
		}
		hs, err := parseHostLine(fs)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, n, err)
		}
		if l, ok := seen[hs.host]; ok {
			return nil, fmt.Errorf("%s:%d: %s is listed already on line %d: give it one line with slots=N",
				path, n, hs.host, l)
		}
		seen[hs.host] = n
		hs.line = n
		out = append(out, hs)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %v", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s lists no host: want lines of ADDR:PORT [slots=N]", path)
	}
	return out, nil
}

func parseHostLine(fs []string) (hostSlots, error) {
	const want = "want ADDR:PORT [slots=N]"
	h, port, err := net.SplitHostPort(fs[0])
	if p, perr := strconv.Atoi(port); err != nil || h == "" || perr != nil || p < 1 || p > 65535 {
		return hostSlots{}, fmt.Errorf("%q is not a daemon's ADDR:PORT: %s", fs[0], want)
	}
	hs := hostSlots{host: fs[0], slots: 1}
	if len(fs) > 2 {
		return hostSlots{}, fmt.Errorf("%q: one host a line, %s", strings.Join(fs, " "), want)
	}
	if len(fs) == 2 {
		v, ok := strings.CutPrefix(fs[1], "slots=")
		if !ok {
			if _, err := strconv.Atoi(fs[1]); err == nil {
				return hostSlots{}, fmt.Errorf("%q: write slots=%s (%s)", fs[1], fs[1], want)
			}
			return hostSlots{}, fmt.Errorf("%q: %s", fs[1], want)
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1024 {
			return hostSlots{}, fmt.Errorf("%q: want slots=N with N from 1 to 1024", fs[1])
		}
		hs.slots = n
	}
	return hs, nil
}

// slotCount is the number of slots of a hostfile's hosts.
func slotCount(hs []hostSlots) int {
	n := 0
	for _, h := range hs {
		n += h.slots
	}
	return n
}

// placeBySlot places n ranks on the hosts of a hostfile: each host's slots
// filled in order, then (oversubscribe) round-robin over the hosts again.
// It returns each rank's host, or an error when the ranks outnumber the
// slots and oversubscribe is off.
func placeBySlot(hs []hostSlots, n int, oversubscribe bool) ([]string, error) {
	total := slotCount(hs)
	if n > total && !oversubscribe {
		return nil, fmt.Errorf("%d ranks but the hostfile has %s on %s: ask for at most -n %d, "+
			"add slots, or pass --oversubscribe", n, cliutil.Plural(total, "slot"), cliutil.Plural(len(hs), "host"), total)
	}
	out := make([]string, 0, n)
	for _, h := range hs {
		for range h.slots {
			if len(out) == n {
				return out, nil
			}
			out = append(out, h.host)
		}
	}
	for r := 0; len(out) < n; r++ {
		out = append(out, hs[r%len(hs)].host)
	}
	return out, nil
}

// roundRobin places n ranks on hosts in turn (--hosts).
func roundRobin(hosts []string, n int) []string {
	out := make([]string, n)
	for r := range n {
		out[r] = hosts[r%len(hosts)]
	}
	return out
}

// hostsOnCommandLine reports whether --hosts was given on the command line
// (not only in MIGRATED_HOSTS), before the program's "--".
func hostsOnCommandLine(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && name == "hosts" {
			return true
		}
	}
	return false
}

// placeRanks places n ranks on cl's hosts as policy says (docs/placement.md,
// or round-robin): each host says what it has, and each rank counts against
// its host before the next is placed. A host that does not answer is left
// out, and said on standard error; with --rank-ips, so is a host whose
// networks do not hold the ranks' addresses.
func placeRanks(cl *cluster, n int, policy string, ips []netip.Prefix) ([]string, error) {
	if policy == "round-robin" {
		return roundRobin(cl.hosts, n), nil
	}
	pol, err := placement.ParsePolicy(policy)
	if err != nil {
		return nil, fmt.Errorf("--policy: %v, or round-robin", err)
	}
	hosts := make([]placement.Host, len(cl.hosts))
	var wg sync.WaitGroup
	for i, h := range cl.hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hosts[i].Addr = h
			rep, err := cl.do(h, api.Request{Op: "identity"})
			if err == nil {
				hosts[i].Info, err = api.Identity(rep)
			}
			hosts[i].Err = err
		}()
	}
	wg.Wait()
	down := 0
	for _, h := range hosts {
		if h.Err != nil {
			down++
			fmt.Fprintf(os.Stderr, "dsmrun: %s did not answer (%v): no rank goes there\n", h.Addr, h.Err)
		}
	}
	if down == len(hosts) {
		return nil, api.Errorf(api.KindUnreachable, "no host answered: is `migrated serve` running on them?")
	}
	need := placement.Need{}
	if ips != nil {
		need.OwnIP = ips[0]
	}
	place, err := placement.Spread(hosts, n, need, pol)
	if err != nil {
		return nil, api.WithKind(api.KindRefused, err)
	}
	return place, nil
}
