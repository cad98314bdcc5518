// Command dsmbench is the dsmshm part of make bench (scripts/bench-dsm.sh).
// It measures dsmshm side by side with a baseline for each item and writes
// a markdown table of ratios to bench-out/dsm.md and stdout:
//
//  1. a DSM write fault (twin path and home path) versus a raw
//     mprotect + SIGSEGV round trip (a C harness with its own handler);
//  2. an invalid-page fetch versus a TCP round trip carrying 4 KiB between
//     the same two processes;
//  3. Jacobi 1024x1024 on one rank versus the same sweeps on plain slices;
//  4. bytes and messages per Jacobi iteration on 4 ranks versus the minimum
//     (boundary rows plus a barrier);
//  5. the cost of DSM security: item 2's fetch in jobs with integrity only
//     (the default) and with encryption (DSM_ENCRYPT=1), each against its
//     own job's C round trip; the page channel's C ChaCha20-Poly1305 alone
//     per fetch versus a 4 KiB memcpy; Jacobi on 4 ranks with and without
//     encryption. The two modes' jobs alternate.
//
// Ranks are this binary re-executed ("dsmbench rank") with the launch
// environment dsmshm.Start reads (DSM_JOB, DSM_RANK, DSM_SIZE, DSM_PEERS, and
// a fresh job secret on an inherited pipe, as dsmrun run hands it over:
// runtime.PassSecret), on 127.0.0.1 ports below 32768 (outside the
// ephemeral range).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mrt "dsmigrate/runtime"
)

// params travel to the rank processes in BENCH_DSM_PARAMS.
type params struct {
	Mode                string
	Pages, Warm, Reps   int
	N, Iters            int
	PingAddr, PingAddr2 string
	// Encrypt runs the job with encryption: runJob puts DSM_ENCRYPT=1 in the
	// ranks' environment (else DSM_ENCRYPT empty: integrity only, the
	// default), which dsmshm.Start reads through runtime.Self.
	Encrypt bool
	// FetchOnly makes a pair job run item 2's fetch loop and its C round
	// trip only (item 5a/5b); see runPair.
	FetchOnly bool
}

const resultPrefix = "DSMBENCH-RESULT "

func main() {
	if runtime.GOMAXPROCS(0) < 2 {
		runtime.GOMAXPROCS(2)
	}
	if len(os.Args) > 1 && os.Args[1] == "rank" {
		rankMain()
		return
	}
	os.Exit(driver())
}

func rankMain() {
	var p params
	if err := json.Unmarshal([]byte(os.Getenv("BENCH_DSM_PARAMS")), &p); err != nil {
		fmt.Fprintln(os.Stderr, "dsmbench rank: bad BENCH_DSM_PARAMS:", err)
		os.Exit(2)
	}
	var res any
	var err error
	switch p.Mode {
	case "pair":
		res, err = runPair(p)
	case "jacobi1":
		res, err = runJacobi1(p)
	case "jacobi4":
		res, err = runJacobi4(p)
	default:
		err = fmt.Errorf("unknown mode %q", p.Mode)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "dsmbench rank %s %s: %v\n", p.Mode, os.Getenv("DSM_RANK"), err)
		os.Exit(1)
	}
	b, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dsmbench rank:", err)
		os.Exit(1)
	}
	fmt.Println(resultPrefix + string(b))
}

// freePorts returns count ports at or above from that nothing listens on.
func freePorts(from, count int) ([]int, error) {
	lc, _ := mptcpOff()
	var ports []int
	for port := from; port < 32768 && len(ports) < count; port++ {
		ln, err := lc.Listen(context.Background(), "tcp4", fmt.Sprintf("0.0.0.0:%d", port))
		if err != nil {
			continue
		}
		ln.Close()
		ports = append(ports, port)
	}
	if len(ports) < count {
		return nil, fmt.Errorf("no %d free ports between %d and 32767", count, from)
	}
	return ports, nil
}

// jobSeq numbers the jobs of a run, so that each has a name of its own.
var jobSeq atomic.Int32

// runJob starts size ranks of this binary in mode p.Mode and returns each
// rank's result (nil for ranks that report none). If a rank fails, the
// others are killed.
func runJob(ports []int, size int, p params, timeout time.Duration) ([]json.RawMessage, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var peers []string
	for r := range size {
		peers = append(peers, fmt.Sprintf("127.0.0.1:%d", ports[r]))
	}
	pj, _ := json.Marshal(p)
	name := fmt.Sprintf("dsmbench-%s-%d-%d", p.Mode, os.Getpid(), jobSeq.Add(1))
	encrypt := mrt.EnvEncrypt + "=" // integrity only, whatever the driver's environment says
	if p.Encrypt {
		encrypt += "1"
	}
	secret := make([]byte, mrt.SecretLen) // a job's own, as dsmrun run makes it
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("making the job's secret: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	results := make([]json.RawMessage, size)
	errs := make([]error, size)
	var wg sync.WaitGroup
	for r := range size {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.CommandContext(ctx, self, "rank")
			// Later entries win over duplicates from os.Environ (os/exec).
			cmd.Env = append(os.Environ(), "DSM_JOB="+name,
				fmt.Sprint("DSM_RANK=", r), fmt.Sprint("DSM_SIZE=", size), "DSM_PEERS="+strings.Join(peers, ","),
				encrypt, "BENCH_DSM_PARAMS="+string(pj))
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the driver
			var out, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &stderr
			if err := runRank(cmd, secret); err != nil {
				msg := strings.TrimSpace(stderr.String())
				if ctx.Err() == context.DeadlineExceeded {
					msg = fmt.Sprintf("timed out after %v; %s", timeout, msg)
				}
				errs[r] = fmt.Errorf("rank %d: %v: %s", r, err, lastLines(msg, 3))
				cancel()
				return
			}
			sc := bufio.NewScanner(&out)
			sc.Buffer(make([]byte, 1<<20), 1<<24)
			for sc.Scan() {
				if s, ok := strings.CutPrefix(sc.Text(), resultPrefix); ok && s != "null" {
					results[r] = json.RawMessage(s)
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil { // the first failure, not the kills it caused
			if !strings.Contains(err.Error(), "signal: killed") {
				return nil, err
			}
		}
	}
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return results, nil
}

// runRank runs cmd, a rank, with the job's secret on an inherited pipe.
func runRank(cmd *exec.Cmd, secret []byte) error {
	r, err := mrt.PassSecret(cmd, secret)
	if err != nil {
		return err
	}
	err = cmd.Start()
	r.Close() // the rank has its copy
	if err != nil {
		return err
	}
	return cmd.Wait()
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}

func driver() int {
	out := flag.String("out", "bench-out/dsm.md", "markdown report")
	port := flag.Int("port", 24100, "first TCP port to try (ranks use 127.0.0.1 ports below 32768)")
	warm := flag.Int("warm", 2, "unrecorded warm-up repetitions")
	reps := flag.Int("reps", 15, "recorded repetitions (medians are over these)")
	pages := flag.Int("pages", 2048, "pages per fault loop (items 1, 2 and 5)")
	n := flag.Int("n", 1024, "Jacobi grid size")
	iters := flag.Int("iters", 50, "Jacobi iterations per repetition (item 3)")
	reps3 := flag.Int("reps3", 7, "recorded repetitions of item 3")
	iters4 := flag.Int("iters4", 30, "Jacobi iterations per measured window (items 4 and 5d)")
	reps4 := flag.Int("reps4", 7, "measured windows of item 4 (and of each job of 5d)")
	ranks4 := flag.Int("ranks4", 4, "ranks of items 4 and 5d")
	reps5 := flag.Int("reps5", 13, "recorded repetitions of each fetch job of item 5a/5b")
	rounds5 := flag.Int("rounds5", 2, "rounds of item 5's jobs, each an integrity-only job then an encrypting one")
	flag.Parse()
	if *rounds5 < 1 {
		*rounds5 = 1
	}

	start := time.Now()
	rep := &report{}
	next := *port
	job := func(name string, size int, p params, extra int) ([]json.RawMessage, error) {
		ports, err := freePorts(next, size+extra)
		if err != nil {
			return nil, err
		}
		next = ports[len(ports)-1] + 1
		if extra > 0 {
			p.PingAddr = fmt.Sprintf("127.0.0.1:%d", ports[size])
			p.PingAddr2 = fmt.Sprintf("127.0.0.1:%d", ports[size+1])
		}
		t0 := time.Now()
		fmt.Fprintf(os.Stderr, "dsmbench: %s (%d ranks, ports %d-%d)...\n", name, size, ports[0], ports[len(ports)-1])
		res, err := runJob(ports, size, p, 150*time.Second)
		fmt.Fprintf(os.Stderr, "dsmbench: %s took %.1fs\n", name, time.Since(t0).Seconds())
		return res, err
	}
	// pairJob runs a pair job; rank 1 measures.
	pairJob := func(name string, p params) (*pairResult, error) {
		p.Mode = "pair"
		res, err := job(name, 2, p, 2)
		if err != nil {
			return nil, err
		}
		if len(res) < 2 || res[0] == nil || res[1] == nil {
			return nil, fmt.Errorf("rank 0 or 1 reported no result")
		}
		pr, home := new(pairResult), new(pairResult)
		if err := json.Unmarshal(res[1], pr); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(res[0], home); err != nil {
			return nil, err
		}
		pr.ServeNs, pr.Served = home.ServeNs, home.Served
		return pr, nil
	}
	// jacobi4Job runs item 4's job (every rank reports).
	jacobi4Job := func(name string, p params) ([]jacobi4Result, error) {
		p.Mode = "jacobi4"
		res, err := job(name, *ranks4, p, 0)
		if err != nil {
			return nil, err
		}
		var j4 []jacobi4Result
		for r, raw := range res {
			var x jacobi4Result
			if raw == nil {
				return nil, fmt.Errorf("rank %d reported no result", r)
			}
			if err := json.Unmarshal(raw, &x); err != nil {
				return nil, err
			}
			j4 = append(j4, x)
		}
		return j4, nil
	}
	var sec security

	// Items 1 and 2: two ranks, rank 1 measures.
	pair, err := pairJob("write faults and page fetches", params{Pages: *pages, Warm: *warm, Reps: *reps})
	rep.pair(pair, err)

	// Item 3: one rank.
	jres, err := job("Jacobi on 1 rank", 1, params{Mode: "jacobi1", N: *n, Iters: *iters, Warm: 1, Reps: *reps3}, 0)
	var j1 *jacobi1Result
	if err == nil {
		j1 = new(jacobi1Result)
		if len(jres) < 1 || jres[0] == nil {
			err = fmt.Errorf("rank 0 reported no result")
		} else {
			err = json.Unmarshal(jres[0], j1)
		}
	}
	rep.jacobi1(j1, err)

	// Item 4: four ranks. Its job is also item 5d's first integrity-only
	// job; 5d's others follow at once, alternating with encrypting ones.
	p4 := params{N: *n, Iters: *iters4, Warm: 5, Reps: *reps4}
	j4, err := jacobi4Job(fmt.Sprintf("Jacobi on %d ranks", *ranks4), p4)
	rep.jacobi4(j4, *n, err)
	sec.n, sec.ranks, sec.rounds = *n, *ranks4, *rounds5
	for round := range *rounds5 {
		for _, enc := range []bool{false, true} {
			if round == 0 && !enc {
				sec.jacobi[0] = append(sec.jacobi[0], j4)
				sec.jacobiErr = err
				continue
			}
			if sec.jacobiErr != nil {
				break
			}
			p := p4
			p.Encrypt = enc
			var x []jacobi4Result
			x, sec.jacobiErr = jacobi4Job(fmt.Sprintf("5d: Jacobi on %d ranks, %s, round %d", *ranks4, modeName[b2i(enc)], round+1), p)
			sec.jacobi[b2i(enc)] = append(sec.jacobi[b2i(enc)], x)
		}
	}

	// Item 5a/5b: fetch-only pair jobs, integrity only and encryption
	// alternating.
	for round := range *rounds5 {
		for _, enc := range []bool{false, true} {
			if sec.fetchErr != nil {
				break
			}
			var x *pairResult
			x, sec.fetchErr = pairJob(fmt.Sprintf("5a/5b: page fetches, %s, round %d", modeName[b2i(enc)], round+1),
				params{Pages: *pages, Warm: *warm, Reps: *reps5, Encrypt: enc, FetchOnly: true})
			sec.fetch[b2i(enc)] = append(sec.fetch[b2i(enc)], x)
		}
	}

	// Item 5c: in this process, no network.
	t0 := time.Now()
	fmt.Fprintf(os.Stderr, "dsmbench: 5c: page-channel cryptography in-process...\n")
	sec.crypto, sec.cryptoErr = runCrypto(params{Pages: *pages, Warm: *warm, Reps: *reps})
	fmt.Fprintf(os.Stderr, "dsmbench: 5c took %.1fs\n", time.Since(t0).Seconds())
	rep.security(&sec)

	text := rep.markdown(time.Since(start))
	fmt.Print(text)
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "dsmbench:", err)
		return 1
	}
	if err := os.WriteFile(*out, []byte(text), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "dsmbench:", err)
		return 1
	}
	if rep.failed {
		return 1
	}
	return 0
}

// ---- statistics and the report ----

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func minmax(v []float64) (lo, hi float64) {
	lo, hi = v[0], v[0]
	for _, x := range v {
		lo, hi = min(lo, x), max(hi, x)
	}
	return
}

type row struct {
	item, what, dsm, base, ratio, goal, met string
}

type report struct {
	rows   []row
	notes  []string
	failed bool // something could not be measured
}

func (r *report) note(format string, a ...any) { r.notes = append(r.notes, fmt.Sprintf(format, a...)) }

func (r *report) unmeasured(item, what, goal string, err error) {
	r.failed = true
	msg := strings.ReplaceAll(err.Error(), "|", "/")
	r.rows = append(r.rows, row{item, what, "not measured", "not measured", "-", goal, "not measured: " + msg})
}

func verdict(ratio, limit float64, valid bool) string {
	switch {
	case !valid:
		return "not measured cleanly (see notes)"
	case ratio <= limit:
		return "met"
	default:
		return "**not met**"
	}
}

func confirm(ok bool, what string) string {
	if ok {
		return "Stats confirm " + what
	}
	return "Stats do NOT confirm " + what + " in every repetition (see the notes above)"
}

func us(ns float64) string { return fmt.Sprintf("%.2f µs", ns/1e3) }

// perServed is the home's Stats.ServeTime per request it answered in the
// recorded repetitions' fetch phases, in ns (0: none answered).
func perServed(p *pairResult) float64 {
	if p.Served == 0 {
		return 0
	}
	return float64(p.ServeNs) / float64(p.Served)
}

// perPage collects f(rep)/pages over the repetitions, in ns.
func perPage(p *pairResult, f func(pairRep) int64) []float64 {
	var v []float64
	for _, x := range p.Reps {
		v = append(v, float64(f(x))/float64(p.Pages))
	}
	return v
}

func paired(a, b []float64) []float64 {
	var v []float64
	for i := range a {
		v = append(v, a[i]/b[i])
	}
	return v
}

func spread(v []float64, unit func(float64) string) string {
	lo, hi := minmax(v)
	return unit(lo) + " – " + unit(hi)
}

func (r *report) pair(p *pairResult, err error) {
	if err == nil && len(p.Reps) == 0 {
		err = fmt.Errorf("no repetitions recorded")
	}
	if err != nil {
		r.unmeasured("1a", "write fault, page homed elsewhere (twin)", "≤ 1.5x", err)
		r.unmeasured("1b", "write fault, page homed here", "≤ 1.5x", err)
		r.unmeasured("2", "invalid-page fetch (fetch versus TCP round trip)", "≤ 2x", err)
		return
	}
	pg := uint64(p.Pages)
	twinOK, homeOK, fetchOK := true, true, true
	for i, x := range p.Reps {
		if x.TwinWF != pg || x.TwinTwins != pg || x.TwinRF != 0 || x.TwinFetched != 0 {
			twinOK = false
			r.note("Item 1a rep %d: expected %d write faults and twins, no reads/fetches; Stats say %d write faults, %d twins, %d read faults, %d fetches.", i, pg, x.TwinWF, x.TwinTwins, x.TwinRF, x.TwinFetched)
		}
		if x.HomeWF != pg || x.HomeTwins != 0 || x.HomeRF != 0 || x.HomeFetched != 0 {
			homeOK = false
			r.note("Item 1b rep %d: expected %d write faults, no twins/reads/fetches; Stats say %d write faults, %d twins, %d read faults, %d fetches.", i, pg, x.HomeWF, x.HomeTwins, x.HomeRF, x.HomeFetched)
		}
		if x.FetchRF != pg || x.FetchFetched != pg || x.FetchWF != 0 {
			fetchOK = false
			r.note("Item 2 rep %d: expected %d read faults and fetches; Stats say %d read faults, %d fetches, %d write faults.", i, pg, x.FetchRF, x.FetchFetched, x.FetchWF)
		}
	}
	raw := perPage(p, func(x pairRep) int64 { return x.RawNs })
	twin := perPage(p, func(x pairRep) int64 { return x.TwinNs })
	home := perPage(p, func(x pairRep) int64 { return x.HomeNs })
	fetch := perPage(p, func(x pairRep) int64 { return x.FetchNs })
	fetchLib := perPage(p, func(x pairRep) int64 { return x.FetchLibNs })
	ping := perPage(p, func(x pairRep) int64 { return x.PingNs })
	pingSym := perPage(p, func(x pairRep) int64 { return x.PingSymNs })
	cping := perPage(p, func(x pairRep) int64 { return x.CPingNs })

	mraw, mtwin, mhome := median(raw), median(twin), median(home)
	mfetch, mping := median(fetch), median(ping)
	rt, rh, rf := mtwin/mraw, mhome/mraw, mfetch/mping
	r.rows = append(r.rows,
		row{"1a", "first write to a read-only page homed on the other rank (twin made), per fault", us(mtwin), us(mraw) + " raw mprotect + SIGSEGV", fmt.Sprintf("%.2fx", rt), "≤ 1.5x", verdict(rt, 1.5, twinOK)},
		row{"1b", "first write to a read-only page homed here (no twin), per fault", us(mhome), us(mraw) + " raw mprotect + SIGSEGV", fmt.Sprintf("%.2fx", rh), "≤ 1.5x", verdict(rh, 1.5, homeOK)},
		row{"2a", "read of an invalid page homed on the other process (fetch), per fault", us(mfetch), us(mping) + " TCP round trip 8 B → 4 KiB, Go net both ends", fmt.Sprintf("%.2fx", rf), "≤ 2x", verdict(rf, 2, fetchOK)},
		row{"2b", "same fetch, against the stricter baseline", us(mfetch), us(median(cping)) + " TCP round trip 8 B → 4 KiB, blocking sockets, C both ends", fmt.Sprintf("%.2fx", mfetch/median(cping)), "≤ 2x", verdict(mfetch/median(cping), 2, fetchOK)},
	)
	r.note("Items 1-2: %d pages per loop, %d warm-up + %d recorded repetitions, two processes (ranks 0 and 1) on 127.0.0.1; all timing in rank 1 with CLOCK_MONOTONIC in C. Within a repetition the compared loops run in chunks of %d pages (or round trips), rotating which goes first, so they share the machine's noise. Medians; per-repetition ranges and the median of per-repetition (paired) ratios follow.", p.Pages, p.Warm, len(p.Reps), chunk)
	r.note("Item 1 raw baseline: C loop writing the first byte of each of %d read-only pages of a memfd MAP_SHARED mapping (pre-faulted, like a segment's view); its own SIGSEGV handler (SA_SIGINFO|SA_ONSTACK|SA_RESTART, all signals masked, as dsmshm's) checks the address range, mprotects the page RW and returns. Range %s.", p.Pages, spread(raw, us))
	r.note("Item 1a DSM: the same C loop over %d pages of a segment homed at rank 0, read-only at rank 1 after a barrier (written in the previous repetition, so memory is populated); %s. Range %s; paired ratio median %.2fx.", p.Pages, confirm(twinOK, "one write fault and one twin per page, no fetch"), spread(twin, us), median(paired(twin, raw)))
	r.note("Item 1b DSM: same loop over pages homed at rank 1 itself (write-protected by the previous barrier's release); %s. Range %s; paired ratio median %.2fx.", confirm(homeOK, "one write fault per page and no twin"), spread(home, us), median(paired(home, raw)))
	r.note("Item 2 DSM: the C loop reads the first byte of %d pages homed at rank 0 that rank 0 wrote before the last barrier, so they are invalid at rank 1; each read faults and fetches the page (with the fetch run set to 1: a 12 B request, a 16 B header + 8 B version + 4 KiB reply over the page channel); %s, and the data read is checked. Range %s; paired ratio median %.2fx. Stats.FetchTime (the socket round trip inside the handler) is %s per fetch, of which rank 0's page server spent %s (Stats.ServeTime per request: the tag checked, the page copied, the reply sealed and sent; the rest is the request's send and the wake-ups on both sides).", p.Pages, confirm(fetchOK, "one read fault and one fetch per page"), spread(fetch, us), median(paired(fetch, ping)), us(median(fetchLib)), us(perServed(p)))
	r.note("Item 2 baseline: Go net TCP connection between the same two processes (MPTCP off via SetMultipathTCP(false), TCP_NODELAY), %d round trips of an 8 B request answered by 4096 B, server goroutine in rank 0. Range %s. A symmetric 4 KiB ↔ 4 KiB ping-pong takes %s (fetch/that = %.2fx). Row 2b: the same 8 B → 4 KiB round trips on a second connection (also made with MPTCP off) detached into blocking descriptors, with a C client loop and a plain pthread server in rank 0, the way dsmshm's page channels work: %s (range %s; paired ratio median %.2fx). It is the tighter bound on what a fetch could cost; Go's netpoller adds goroutine wake-ups to 2a.", p.Pages, spread(ping, us), us(median(pingSym)), mfetch/median(pingSym), us(median(cping)), spread(cping, us), median(paired(fetch, cping)))
}

func (r *report) jacobi1(j *jacobi1Result, err error) {
	if err == nil && len(j.Reps) == 0 {
		err = fmt.Errorf("no repetitions recorded")
	}
	if err != nil {
		r.unmeasured("3", "Jacobi 1024x1024, 1 rank", "≤ 1.10x", err)
		return
	}
	var dsm, plain, wf []float64
	for _, x := range j.Reps {
		dsm = append(dsm, float64(x.DSMNs)/float64(j.Iters))
		plain = append(plain, float64(x.PlainNs)/float64(j.Iters))
		wf = append(wf, float64(x.WriteFaults)/float64(j.Iters))
	}
	ms := func(ns float64) string { return fmt.Sprintf("%.2f ms", ns/1e6) }
	md, mp := median(dsm), median(plain)
	ratio := md / mp
	r.rows = append(r.rows, row{"3", fmt.Sprintf("Jacobi %dx%d on 1 rank, per iteration (sweep + barrier)", j.N, j.N), ms(md), ms(mp) + " same sweep on plain []float64", fmt.Sprintf("%.2fx (%+.0f%%)", ratio, (ratio-1)*100), "≤ 1.10x", verdict(ratio, 1.10, true)})
	r.note("Item 3: one process, a one-rank job; each repetition resets both grid pairs, then runs %d iterations of examples/jacobi's sweep over DSM segments with Barrier after each, and %d iterations of the same sweep function over two plain Go slices (order alternates). Grids are compared cell by cell after every repetition. %d warm-up + %d recorded repetitions. DSM range %s, plain range %s, paired ratio median %.2fx. The DSM run takes %.0f write faults per iteration (median; a one-rank job's pages stay writable, so this should be 0).", j.Iters, j.Iters, j.Warm, len(j.Reps), spread(dsm, ms), spread(plain, ms), median(paired(dsm, plain)), median(wf))
}

func (r *report) jacobi4(res []jacobi4Result, n int, err error) {
	if err == nil && (len(res) == 0 || len(res[0].Windows) == 0) {
		err = fmt.Errorf("no windows recorded")
	}
	if err != nil {
		r.unmeasured("4a", "Jacobi 4 ranks, bytes per iteration", "≤ 2x", err)
		r.unmeasured("4b", "Jacobi 4 ranks, messages per iteration", "≤ 2x", err)
		return
	}
	size, iters := len(res), res[0].Iters
	// Page channel: a request (segment, page, pages), a reply's header
	// (status, pages), and per page served its version and the page.
	const reqBytes, replyBytes, pageBytes = 12, 16, 8 + 4096
	var bytesIt, msgsIt, ctrlBytesIt, ctrlMsgsIt, fetchIt, reqIt, diffIt, timeIt []float64
	for w := range res[0].Windows {
		var b, m, cb, cm, f, q, s, d, t float64
		for _, x := range res {
			win := x.Windows[w]
			cb += float64(win.Bytes)
			cm += float64(win.Msgs)
			f += float64(win.Fetched)
			q += float64(win.Reqs)
			s += float64(win.Served)
			d += float64(win.DiffBytes)
			t = max(t, float64(win.Ns))
		}
		b = cb + q*(reqBytes+replyBytes) + s*pageBytes
		m = cm + 2*q
		it := float64(iters)
		bytesIt, msgsIt = append(bytesIt, b/it), append(msgsIt, m/it)
		ctrlBytesIt, ctrlMsgsIt = append(ctrlBytesIt, cb/it), append(ctrlMsgsIt, cm/it)
		fetchIt, reqIt, diffIt, timeIt = append(fetchIt, f/it), append(reqIt, q/it), append(diffIt, d/it), append(timeIt, t/it)
	}
	bounds := size - 1
	minBytes := float64(2 * bounds * n * 8)
	minMsgs := float64(2*bounds + 2*(size-1))
	mb, mm := median(bytesIt), median(msgsIt)
	rb, rm := mb/minBytes, mm/minMsgs
	r.rows = append(r.rows,
		row{"4a", fmt.Sprintf("Jacobi %dx%d on %d ranks: bytes per iteration, all ranks", n, n, size), fmt.Sprintf("%.0f B", mb), fmt.Sprintf("%.0f B minimum (boundary rows)", minBytes), fmt.Sprintf("%.2fx", rb), "≤ 1.1x", verdict(rb, 1.1, true)},
		row{"4b", fmt.Sprintf("Jacobi %dx%d on %d ranks: messages per iteration, all ranks", n, n, size), fmt.Sprintf("%.1f", mm), fmt.Sprintf("%.0f minimum (rows + barrier)", minMsgs), fmt.Sprintf("%.2fx", rm), "≤ 1.5x", verdict(rm, 1.5, true)},
	)
	var bands []string
	for _, x := range res {
		bands = append(bands, fmt.Sprintf("rank %d rows %d-%d", x.Rank, x.Rows[0], x.Rows[1]))
	}
	verified := "verified against a sequential run by rank 0"
	if !res[0].Verified {
		verified = "NOT verified"
	}
	r.note("Item 4: %d processes on 127.0.0.1 running examples/jacobi's loop (%s) on a grid whose interior starts non-uniform, so every write changes its cell and diffs are never empty; %d warm-up iterations, then %d windows of %d iterations; each rank's Stats deltas per window are summed over ranks and divided by the iterations; medians over windows. Result %s.", size, strings.Join(bands, ", "), res[0].Warm, len(res[0].Windows), iters, verified)
	r.note("Item 4 counting: bytes = control-frame bytes sent (Stats.BytesSent: framed diffs, write notices, barrier and lock messages) + page requests (Stats.FetchRequests) × (12 B request + 16 B reply header) + pages served × (8 B version + 4096 B page) on the page channels; messages = control frames (Stats.MessagesSent) + 2 per page request (request, reply). A fault fetches the run of invalid pages after it that share its home, up to 8, in one request (dsmshm/doc.go, \"Fetching runs of pages\"). TCP/IP headers and the 16 B tags are not counted on either side. Per iteration (medians): control %.0f B in %.1f frames, of which diff payload %.0f B (the rest: write notices for pages another rank holds a copy of, barrier and lock messages); %.1f pages fetched in %.1f requests. Wall time per iteration %.1f ms (slowest rank; 4 processes on %d CPUs).", median(ctrlBytesIt), median(ctrlMsgsIt), median(diffIt), median(fetchIt), median(reqIt), median(timeIt)/1e6, runtime.NumCPU())
	r.note("Item 4 minimum: each of the %d interior boundaries needs 2 rows of %d float64 (one each way) = %.0f B in %d messages, plus a barrier: %d arrivals and %d releases of no payload (a central barrier, the fewest messages) = %.0f messages, %.0f B.", bounds, n, minBytes, 2*bounds, size-1, size-1, minMsgs, minBytes)
}

func (r *report) markdown(took time.Duration) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "\n## dsmshm benchmarks (%s, %s, %d CPUs, GOMAXPROCS %d, %s, %s; took %.0f s)\n\n",
		time.Now().Format("2006-01-02 15:04"), host, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), kernel(), took.Seconds())
	b.WriteString("| # | measurement | dsmshm | baseline | ratio | goal | goal met? |\n|---|---|---|---|---|---|---|\n")
	for _, x := range r.rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", x.item, x.what, x.dsm, x.base, x.ratio, x.goal, x.met)
	}
	b.WriteString("\nHow each number is obtained:\n\n")
	for _, n := range r.notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	return b.String()
}

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "Linux"
	}
	return "Linux " + strings.TrimSpace(string(b))
}
