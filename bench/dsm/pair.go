package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"dsmigrate/dsmshm"
	mrt "dsmigrate/runtime"
)

const page = 4096

// pairRep is what rank 1 of the two-rank job measures in one repetition.
type pairRep struct {
	RawNs, TwinNs, HomeNs int64 // items 1: total time of Pages write faults each
	FetchNs, FetchLibNs   int64 // item 2: total time of Pages read faults; FetchTime delta
	PingNs, PingSymNs     int64 // item 2 baseline: Pages TCP round trips, 8 B -> 4 KiB; 4 KiB <-> 4 KiB
	CPingNs               int64 // the same 8 B -> 4 KiB round trips on blocking sockets, both ends in C

	// Stats deltas over each timed loop, to show what was measured.
	TwinWF, TwinTwins, TwinRF, TwinFetched uint64
	HomeWF, HomeTwins, HomeRF, HomeFetched uint64
	FetchRF, FetchWF, FetchFetched         uint64
}

type pairResult struct {
	Pages     int
	Warm      int
	FetchOnly bool // item 5's jobs: phase 3's fetch and C round trip only
	// Encrypt is the job's mode as the rank read it from its launch
	// environment (runtime.Self, the parser dsmshm.Start uses).
	Encrypt bool
	BadTags uint64 // Stats.BadTags at the end of the run (should be 0)
	Reps    []pairRep
	// Rank 0's (the home's) over the recorded repetitions' phase 3:
	// Stats.ServeTime and the page requests it answered (PagesServed: one
	// page each, the fetch run being 1).
	ServeNs int64
	Served  uint64
}

func mptcpOff() (*net.ListenConfig, *net.Dialer) {
	lc := &net.ListenConfig{}
	lc.SetMultipathTCP(false)
	d := &net.Dialer{Timeout: 10 * time.Second}
	d.SetMultipathTCP(false)
	return lc, d
}

// pingServer answers requests on conn: an 8-byte header {extra, reply}
// followed by extra bytes, answered by reply bytes.
func pingServer(conn net.Conn) {
	defer conn.Close()
	var hdr [8]byte
	buf := make([]byte, 1<<16)
	for {
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			return
		}
		extra, reply := binary.LittleEndian.Uint32(hdr[:4]), binary.LittleEndian.Uint32(hdr[4:])
		if extra > uint32(len(buf)) || reply > uint32(len(buf)) {
			return
		}
		if _, err := io.ReadFull(conn, buf[:extra]); err != nil {
			return
		}
		if _, err := conn.Write(buf[:reply]); err != nil {
			return
		}
	}
}

// pingPong times n round trips of req bytes out (>= 8) and reply bytes back.
func pingPong(conn net.Conn, n, req, reply int) (time.Duration, error) {
	out := make([]byte, req)
	binary.LittleEndian.PutUint32(out[:4], uint32(req-8))
	binary.LittleEndian.PutUint32(out[4:8], uint32(reply))
	in := make([]byte, reply)
	t0 := time.Now()
	for range n {
		if _, err := conn.Write(out); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(conn, in); err != nil {
			return 0, err
		}
	}
	return time.Since(t0), nil
}

// runPair is items 1 and 2: two ranks (processes) on 127.0.0.1. Rank 1
// measures; rank 0 is the home of the pages rank 1 faults on and the
// ping-pong server. Every phase in which rank 1 measures has rank 0 idle in
// a barrier or serving, so the two never compete for the CPUs otherwise.
//
// With p.FetchOnly (item 5a/5b) it skips phase 1's write faults and the Go
// net round trips: what is left is item 2's fetch loop interleaved with its
// stricter baseline, the C round trip. The job's mode (integrity only, or
// encryption: p.Encrypt) comes from the launch environment (runJob).
func runPair(p params) (_ any, retErr error) {
	lc, d := mptcpOff()
	node, err := dsmshm.Start()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := node.Close(); err != nil && retErr == nil {
			retErr = err
		}
	}()
	if node.Size() != 2 {
		return nil, fmt.Errorf("pair job needs 2 ranks, got %d", node.Size())
	}
	// Items 2 and 5 measure the fetch of one page (a fault on a page whose
	// neighbours are invalid too would fetch them along: TestFetchRun).
	node.SetFetchRun(1)
	rank := node.Rank()
	id, err := mrt.Self() // what dsmshm.Start read: the job's mode
	if err != nil {
		return nil, err
	}
	var ln net.Listener
	if rank == 0 && !p.FetchOnly {
		if ln, err = lc.Listen(context.Background(), "tcp4", p.PingAddr); err != nil {
			return nil, err
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go pingServer(c)
			}
		}()
	}
	if rank == 0 {
		ln2, err := lc.Listen(context.Background(), "tcp4", p.PingAddr2)
		if err != nil {
			return nil, err
		}
		defer ln2.Close()
		go func() {
			for {
				c, err := ln2.Accept()
				if err != nil {
					return
				}
				if err := cPingServe(c); err != nil {
					c.Close()
				}
			}
		}()
	}
	n := p.Pages
	// wf: pages [0,n) homed at rank 0, [n,2n) at rank 1. rf: same split.
	wfSeg, err := node.Alloc("wf", 2*n*page)
	if err != nil {
		return nil, err
	}
	rfSeg, err := node.Alloc("rf", 2*n*page)
	if err != nil {
		return nil, err
	}
	wf, rf := wfSeg.Bytes(), rfSeg.Bytes()
	if wfSeg.Home(0) != 0 || wfSeg.Home(n*page) != 1 || rfSeg.Home((n-1)*page) != 0 {
		return nil, fmt.Errorf("unexpected home layout")
	}
	if err := node.Barrier(0); err != nil { // rank 0 listens now
		return nil, err
	}
	res := pairResult{Pages: n, Warm: p.Warm, FetchOnly: p.FetchOnly, Encrypt: id.Encrypt}
	var conn net.Conn
	cfd := -1
	if rank == 1 && !p.FetchOnly {
		if err := rawSetup(n); err != nil {
			return nil, err
		}
		if conn, err = d.Dial("tcp4", p.PingAddr); err != nil {
			return nil, err
		}
		defer conn.Close()
		conn.(*net.TCPConn).SetNoDelay(true)
	}
	if rank == 1 {
		c2, err := d.Dial("tcp4", p.PingAddr2)
		if err != nil {
			return nil, err
		}
		if cfd, err = blockingFD(c2); err != nil {
			return nil, err
		}
		defer syscall.Close(cfd)
	}
	for rep := range p.Warm + p.Reps {
		val := rep%250 + 1
		var r pairRep
		// Phase 1: rank 1 write faults (raw, twin path, home path), chunk by
		// chunk in rotating order so all three see the same noise; rank 0 waits.
		if rank == 1 && !p.FetchOnly {
			steps := []func(first, k int) error{
				func(first, k int) error { // raw harness
					dur, err := rawRun(first, k, val)
					r.RawNs += int64(dur)
					return err
				},
				func(first, k int) error { // homed at rank 0: twin
					s0 := node.Stats()
					dur, _ := touch(wf[first*page:], k, true, val)
					s1 := node.Stats()
					r.TwinNs += int64(dur)
					r.TwinWF += s1.WriteFaults - s0.WriteFaults
					r.TwinTwins += s1.Twins - s0.Twins
					r.TwinRF += s1.ReadFaults - s0.ReadFaults
					r.TwinFetched += s1.PagesFetched - s0.PagesFetched
					return nil
				},
				func(first, k int) error { // homed here
					s0 := node.Stats()
					dur, _ := touch(wf[(n+first)*page:], k, true, val)
					s1 := node.Stats()
					r.HomeNs += int64(dur)
					r.HomeWF += s1.WriteFaults - s0.WriteFaults
					r.HomeTwins += s1.Twins - s0.Twins
					r.HomeRF += s1.ReadFaults - s0.ReadFaults
					r.HomeFetched += s1.PagesFetched - s0.PagesFetched
					return nil
				},
			}
			if err := interleave(n, rep, steps); err != nil {
				return nil, err
			}
			if err := rawCheck(val); err != nil {
				return nil, err
			}
		}
		// The release write-protects rank 1's pages again (diffs go home).
		if err := node.Barrier(1); err != nil {
			return nil, err
		}
		// Phase 2: rank 0 writes the rf pages it is home of; rank 1 waits.
		if rank == 0 && !p.FetchOnly {
			for pg := range 2 * n {
				if wf[pg*page] != byte(val) {
					return nil, fmt.Errorf("rep %d: rank 1's write to page %d did not reach rank 0", rep, pg)
				}
			}
		}
		if rank == 0 {
			touch(rf, n, true, val)
		}
		// Rank 0's release and rank 1's acquire invalidate rank 1's copies.
		if err := node.Barrier(2); err != nil {
			return nil, err
		}
		var h0 dsmshm.Stats // rank 0: what it serves in phase 3
		if rank == 0 {
			h0 = node.Stats()
		}
		// Phase 3: rank 1 fetches the invalid pages and ping-pongs, chunk by
		// chunk in rotating order; rank 0 serves.
		if rank == 1 {
			var sum uint64
			steps := []func(first, k int) error{
				func(first, k int) error {
					s0 := node.Stats()
					dur, sm := touch(rf[first*page:], k, false, 0)
					s1 := node.Stats()
					sum += sm
					r.FetchNs += int64(dur)
					r.FetchLibNs += int64(s1.FetchTime - s0.FetchTime)
					r.FetchRF += s1.ReadFaults - s0.ReadFaults
					r.FetchWF += s1.WriteFaults - s0.WriteFaults
					r.FetchFetched += s1.PagesFetched - s0.PagesFetched
					return nil
				},
			}
			if !p.FetchOnly { // item 2's Go net baselines
				steps = append(steps,
					func(first, k int) error {
						dur, err := pingPong(conn, k, 8, page)
						r.PingNs += int64(dur)
						return err
					},
					func(first, k int) error {
						dur, err := pingPong(conn, k, page, page)
						r.PingSymNs += int64(dur)
						return err
					})
			}
			steps = append(steps, func(first, k int) error {
				dur, err := cPingPong(cfd, k, 8, page)
				r.CPingNs += int64(dur)
				return err
			})
			if err := interleave(n, rep, steps); err != nil {
				return nil, err
			}
			if sum != uint64(n*val) {
				return nil, fmt.Errorf("rep %d: fetched pages hold the wrong data (sum %d, want %d)", rep, sum, n*val)
			}
			if rep >= p.Warm {
				res.Reps = append(res.Reps, r)
			}
		}
		if err := node.Barrier(3); err != nil {
			return nil, err
		}
		if rank == 0 && rep >= p.Warm {
			h1 := node.Stats()
			res.ServeNs += int64(h1.ServeTime - h0.ServeTime)
			res.Served += h1.PagesServed - h0.PagesServed
		}
	}
	res.BadTags = node.Stats().BadTags
	return res, nil
}

// chunk is how many pages (or round trips) one step of interleave covers.
const chunk = 128

// interleave runs every step over pages [0, n) chunk by chunk, rotating
// which step goes first, so that on a noisy machine the measurements being
// compared share the same moments.
func interleave(n, rep int, steps []func(first, k int) error) error {
	for c, first := 0, 0; first < n; c, first = c+1, first+chunk {
		k := min(chunk, n-first)
		for i := range steps {
			if err := steps[(rep+c+i)%len(steps)](first, k); err != nil {
				return err
			}
		}
	}
	return nil
}
