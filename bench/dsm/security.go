package main

import (
	"fmt"
	"strings"
)

// security is what item 5 (the cost of DSM security) measured: jobs with
// integrity only (index 0, the default) and with encryption (index 1), one
// of each per round, run alternately.
type security struct {
	n, ranks  int // Jacobi grid size and ranks (5d)
	rounds    int
	fetch     [2][]*pairResult // 5a/5b: fetch-only pair jobs, in run order
	fetchErr  error
	crypto    *cryptoResult // 5c
	cryptoErr error
	jacobi    [2][][]jacobi4Result // 5d: item 4's job and its repeats
	jacobiErr error
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

var modeName = [2]string{"integrity only", "encryption"}

// agreed says whether every rank of item 5's jobs ran in the mode asked for.
func agreed(ok bool) string {
	if ok {
		return "every rank ran in the mode asked for"
	}
	return "NOT every rank ran in the mode asked for (see the notes above)"
}

func ratios(v []float64) string {
	var s []string
	for _, x := range v {
		s = append(s, fmt.Sprintf("%.2fx", x))
	}
	return strings.Join(s, ", ")
}

func (r *report) security(s *security) {
	fetchMed := r.securityFetch(s)
	r.securityCrypto(s, fetchMed)
	r.securityJacobi(s)
}

// securityFetch reports 5a/5b and returns the modes' median fetch times
// (0 when not measured).
func (r *report) securityFetch(s *security) (fetchMed [2]float64) {
	const goal, goalEnc = "≤ 2x", "≤ 1.5x"
	what := [2]string{
		"read of an invalid page homed on the other process (item 2's fetch), per fault, in a job with integrity only (the default)",
		"same fetch in a job with encryption (DSM_ENCRYPT=1)",
	}
	whatEnc := "what encryption adds to a fetch: 5b's ratio over 5a's (each against its own job's round trip)"
	err := s.fetchErr
	for m := range 2 {
		if err == nil && len(s.fetch[m]) < s.rounds {
			err = fmt.Errorf("%d of %d %s jobs ran", len(s.fetch[m]), s.rounds, modeName[m])
		}
		for _, x := range s.fetch[m] {
			if err == nil && (x == nil || len(x.Reps) == 0) {
				err = fmt.Errorf("a %s job recorded no repetitions", modeName[m])
			}
		}
	}
	if err != nil {
		r.unmeasured("5a", what[0], goal, err)
		r.unmeasured("5b", what[1], goal, err)
		r.unmeasured("5a/5b", whatEnc, goalEnc, err)
		return
	}
	var (
		fetch, cping, lib [2][]float64 // per repetition, pooled over a mode's jobs
		serve             [2][]float64 // per job: the home's Stats.ServeTime per request
		jobRatio          [2][]float64 // per job: median fetch / median round trip
		valid             = [2]bool{true, true}
		modeOK, statsOK   = true, true
		jobs              []string
	)
	for m := range 2 {
		for j, x := range s.fetch[m] {
			pg := uint64(x.Pages)
			if x.Encrypt != (m == 1) {
				valid[m], modeOK = false, false
				r.note("Item 5%c job %d: the ranks ran with Encrypt=%v, not as asked.", 'a'+m, j+1, x.Encrypt)
			}
			if x.BadTags != 0 {
				valid[m], statsOK = false, false
				r.note("Item 5%c job %d: %d page requests or replies failed their tag check.", 'a'+m, j+1, x.BadTags)
			}
			for i, y := range x.Reps {
				if y.FetchRF != pg || y.FetchFetched != pg || y.FetchWF != 0 {
					valid[m], statsOK = false, false
					r.note("Item 5%c job %d rep %d: expected %d read faults and fetches; Stats say %d read faults, %d fetches, %d write faults.", 'a'+m, j+1, i, pg, y.FetchRF, y.FetchFetched, y.FetchWF)
				}
			}
			f := perPage(x, func(y pairRep) int64 { return y.FetchNs })
			c := perPage(x, func(y pairRep) int64 { return y.CPingNs })
			fetch[m] = append(fetch[m], f...)
			cping[m] = append(cping[m], c...)
			lib[m] = append(lib[m], perPage(x, func(y pairRep) int64 { return y.FetchLibNs })...)
			jobRatio[m] = append(jobRatio[m], median(f)/median(c))
			serve[m] = append(serve[m], perServed(x))
		}
	}
	for i := range s.rounds {
		jobs = append(jobs, fmt.Sprintf("round %d: %s / %s", i+1, us(median(perPage(s.fetch[0][i], func(y pairRep) int64 { return y.FetchNs }))), us(median(perPage(s.fetch[1][i], func(y pairRep) int64 { return y.FetchNs })))))
	}
	var ratio [2]float64
	for m := range 2 {
		fetchMed[m], ratio[m] = median(fetch[m]), median(jobRatio[m])
		r.rows = append(r.rows, row{fmt.Sprintf("5%c", 'a'+m), what[m], us(fetchMed[m]),
			us(median(cping[m])) + " TCP round trip 8 B → 4 KiB, blocking sockets, C both ends, same job (2b's baseline)",
			fmt.Sprintf("%.2fx", ratio[m]), goal, verdict(ratio[m], 2, valid[m])})
	}
	var perRound []float64
	for i := range s.rounds {
		perRound = append(perRound, jobRatio[1][i]/jobRatio[0][i])
	}
	re := median(perRound)
	r.rows = append(r.rows, row{"5a/5b", whatEnc, fmt.Sprintf("%.2fx (5b)", ratio[1]), fmt.Sprintf("%.2fx (5a)", ratio[0]),
		fmt.Sprintf("%.2fx (%+.0f%%)", re, (re-1)*100), goalEnc, verdict(re, 1.5, valid[0] && valid[1])})

	p0 := s.fetch[0][0]
	r.note("Item 5a/5b: %d pair jobs (2 processes on 127.0.0.1, each job with a fresh secret), run in the order integrity only, encryption, integrity only, … (%d rounds), the encrypting ones with DSM_ENCRYPT=1 in the ranks' environment and the others with DSM_ENCRYPT empty (also when the driver's own environment sets it); each rank reports the mode runtime.Self read (the parser dsmshm.Start uses), and %s. In each job rank 1 runs item 2's fetch loop over %d pages, interleaved chunk by chunk (%d pages, rotating order) with item 2b's C round trip on blocking sockets between the same two processes (item 1's write faults and 2a's Go net round trips are left out: the pair mode with FetchOnly), %d warm-up + %d recorded repetitions; %s. Each job's ratio is its median fetch over its median round trip; a row's ratio is the median of its mode's per-job ratios (%s for integrity only, %s for encryption; with two jobs, their mean), its times the medians of the repetitions pooled over the mode's jobs. Fetch ranges: %s (integrity only), %s (encryption); round-trip ranges %s, %s. Stats.FetchTime per fetch: %s, %s; of which the home's page server (Stats.ServeTime per request, median of the jobs): %s, %s.",
		2*s.rounds, s.rounds, agreed(modeOK), p0.Pages, chunk, p0.Warm, len(p0.Reps),
		confirm(statsOK, "one read fault and one fetch per page, and no tag failure (BadTags)"), ratios(jobRatio[0]), ratios(jobRatio[1]),
		spread(fetch[0], us), spread(fetch[1], us), spread(cping[0], us), spread(cping[1], us), us(median(lib[0])), us(median(lib[1])), us(median(serve[0])), us(median(serve[1])))
	r.note("Item 5a/5b ratio: for each round, the encrypting job's ratio over the integrity-only job's ratio (%s); the row gives their median. Normalising each job by its own round trip takes out what the machine did between jobs; the raw median fetch times per round (integrity only / encryption) are %s.",
		ratios(perRound), strings.Join(jobs, "; "))
	return fetchMed
}

// securityCrypto reports 5c; fetchMed are 5a's and 5b's fetch times.
func (r *report) securityCrypto(s *security, fetchMed [2]float64) {
	what := [2]string{
		"dsmshm's C ChaCha20-Poly1305 alone, per page fetch, integrity only: seal + open of the 12 B request and of the reply (24 B header + 4 KiB page), in one process",
		"same with encryption",
	}
	const goal = "none (measured to explain 5a/5b)"
	err := s.cryptoErr
	if err == nil && len(s.crypto.Reps) == 0 {
		err = fmt.Errorf("no repetitions recorded")
	}
	if err != nil {
		r.unmeasured("5c", what[0], goal, err)
		r.unmeasured("5c", what[1], goal, err)
		return
	}
	c := s.crypto
	per := func(f func(cryptoRep) int64) []float64 {
		var v []float64
		for _, x := range c.Reps {
			v = append(v, float64(f(x))/float64(c.Pages))
		}
		return v
	}
	cp := per(func(x cryptoRep) int64 { return x.CopyNs })
	kinds := [2][]float64{per(func(x cryptoRep) int64 { return x.MACNs }), per(func(x cryptoRep) int64 { return x.EncNs })}
	mcp := median(cp)
	var med [2]float64
	for m := range 2 {
		med[m] = median(kinds[m])
		cell := us(med[m])
		if fetchMed[m] > 0 {
			cell += fmt.Sprintf(" (%.1f%% of a 5%c fetch)", 100*med[m]/fetchMed[m], 'a'+m)
		}
		r.rows = append(r.rows, row{"5c", what[m], cell, us(mcp) + " memcpy of 4 KiB",
			fmt.Sprintf("%.1fx", med[m]/mcp), goal, "–"})
	}
	added := "not known (5a/5b not measured)"
	if fetchMed[0] > 0 {
		added = fmt.Sprintf("%s, against %s between the pooled medians of 5b and 5a (a difference of two noisy times from different jobs; the ratio row is the robust one)", us(med[1]-med[0]), us(fetchMed[1]-fetchMed[0]))
	}
	r.note("Item 5c: dsmshm/aead.c itself, compiled into dsmbench from its source (#include from a cgo preamble, the external names renamed so as not to collide with dsmshm's copy; same CFLAGS, -O2) and checked first against golang.org/x/crypto's ChaCha20-Poly1305 (the encrypted page and tag equal Seal's; with MAC only, Open accepts the tag). In the driver process, no network, no rank running: per repetition, %d iterations of each kind, in chunks of %d rotating which goes first, timed in C with CLOCK_MONOTONIC; %d warm-up + %d recorded repetitions, medians. One iteration is what a page fetch computes: dsm_aead_seal + dsm_aead_open of the 12 B request, then of the 24 B reply header (status, pages, version: additional data) and the 4 KiB page, with a key per direction and counters as nonces (encrypted in place and decrypted back when encrypting); all four run one after the other on the fetch's critical path (the home seals the reply before it sends, the faulting rank opens it before the page becomes valid). The baseline is one memcpy of a 4 KiB page into another buffer. Ranges: integrity only %s, encryption %s, memcpy %s. What encryption should add to a fetch: %s.",
		c.Pages, chunk, c.Warm, len(c.Reps), spread(kinds[0], us), spread(kinds[1], us), spread(cp, us), added)
}

// securityJacobi reports 5d.
func (r *report) securityJacobi(s *security) {
	const goal = "≤ 1.25x"
	what := fmt.Sprintf("Jacobi %dx%d on %d ranks (item 4's job), per iteration (slowest rank), with encryption versus integrity only", s.n, s.n, s.ranks)
	err := s.jacobiErr
	for m := range 2 {
		if err == nil && len(s.jacobi[m]) < s.rounds {
			err = fmt.Errorf("%d of %d %s jobs ran", len(s.jacobi[m]), s.rounds, modeName[m])
		}
		for _, x := range s.jacobi[m] {
			if err == nil && (len(x) == 0 || len(x[0].Windows) == 0) {
				err = fmt.Errorf("a %s job recorded no windows", modeName[m])
			}
		}
	}
	if err != nil {
		r.unmeasured("5d", what, goal, err)
		return
	}
	var (
		perIt, ctrlBytes [2][]float64 // per window, pooled over a mode's jobs
		jobMed           [2][]float64
		valid, verified  = true, true
		modeOK, tagsOK   = true, true
	)
	for m := range 2 {
		for j, res := range s.jacobi[m] {
			if !res[0].Verified {
				valid, verified = false, false
				r.note("Item 5d %s job %d: the result was not verified.", modeName[m], j+1)
			}
			for _, x := range res {
				if x.Encrypt != (m == 1) || x.BadTags != 0 {
					valid = false
					modeOK = modeOK && x.Encrypt == (m == 1)
					tagsOK = tagsOK && x.BadTags == 0
					r.note("Item 5d %s job %d rank %d: ran with Encrypt=%v, %d bad tags.", modeName[m], j+1, x.Rank, x.Encrypt, x.BadTags)
				}
			}
			var t []float64
			for w := range res[0].Windows {
				var ns, b float64
				for _, x := range res {
					if w < len(x.Windows) {
						ns = max(ns, float64(x.Windows[w].Ns))
						b += float64(x.Windows[w].Bytes)
					}
				}
				t = append(t, ns/float64(res[0].Iters))
				ctrlBytes[m] = append(ctrlBytes[m], b/float64(res[0].Iters))
			}
			perIt[m] = append(perIt[m], t...)
			jobMed[m] = append(jobMed[m], median(t))
		}
	}
	var perRound []float64
	for i := range s.rounds {
		perRound = append(perRound, jobMed[1][i]/jobMed[0][i])
	}
	ratio := median(perRound)
	ms := func(ns float64) string { return fmt.Sprintf("%.2f ms", ns/1e6) }
	r.rows = append(r.rows, row{"5d", what, ms(median(perIt[1])), ms(median(perIt[0])) + " integrity only",
		fmt.Sprintf("%.2fx (%+.0f%%)", ratio, (ratio-1)*100), goal, verdict(ratio, 1.25, valid)})
	j0 := s.jacobi[0][0][0]
	verifiedText := "all verified against a sequential run by rank 0"
	if !verified {
		verifiedText = "NOT all verified (see the notes above)"
	}
	var rounds []string
	for i := range s.rounds {
		rounds = append(rounds, fmt.Sprintf("%s / %s", ms(jobMed[0][i]), ms(jobMed[1][i])))
	}
	r.note("Item 5d: item 4's job (the first integrity-only job of this item) followed at once by %d more jobs of the same loop on %d processes, alternating encryption, integrity only, encryption, … (%d rounds; DSM_ENCRYPT as in 5a/5b: %s, %s), each with %d warm-up iterations and %d windows of %d iterations. Per window, the slowest rank's time divided by the iterations; each job's median over its windows; the ratio is the median over rounds of the encrypting job's median over the integrity-only job's (%s; with two rounds, their mean); the times shown are medians over the windows pooled per mode (ranges %s integrity only, %s encryption). Per round, integrity only / encryption: %s. Results %s. Control-frame bytes per iteration, all ranks (medians): %.0f B integrity only, %.0f B encryption (the same framing: tags are there in both modes).",
		2*s.rounds-1, s.ranks, s.rounds, agreed(modeOK), confirm(tagsOK, "no tag failure"), j0.Warm, len(j0.Windows), j0.Iters,
		ratios(perRound), spread(perIt[0], ms), spread(perIt[1], ms), strings.Join(rounds, "; "), verifiedText, median(ctrlBytes[0]), median(ctrlBytes[1]))
}
