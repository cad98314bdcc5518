package dsmshm

import (
	"crypto/rand"
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A read fault fetches the run of invalid pages that follow the faulting
// one, share its home and were used here before, up to fetchRunMax pages,
// in one round trip: the run ends at a page already valid, at another
// home, at a page this rank never needed, and at the most pages; the pages
// after the faulting one are then read without a fault. With a fetch run
// of 1 every page is a round trip of its own. Either way every page holds
// what its home wrote.
func TestFetchRun(t *testing.T) {
	for _, run := range []int{fetchRunMax, 1} {
		nodes := startMem(t, 2)
		nodes[1].SetFetchRun(run)
		segs := allocAll(t, nodes, "runs", 40*pageSize) // pages 0-19 homed at rank 0, 20-39 at rank 1
		if segs[0].Home(19*pageSize) != 0 || segs[0].Home(20*pageSize) != 1 {
			t.Fatal("pages 0-19 are not rank 0's, 20-39 not rank 1's")
		}
		home, reader := segs[0].Bytes(), segs[1].Bytes()
		write := func(v uint64) {
			for p := range 20 {
				binary.LittleEndian.PutUint64(home[p*pageSize:], uint64(p)+v)
			}
			if err := each(nodes, func(n *Node) error { return n.Barrier(0) }); err != nil {
				t.Fatal(err)
			}
		}
		// reads reads the first word of pages in order and checks it,
		// and says how many read faults, requests and pages fetched that
		// took.
		reads := func(v uint64, pages ...int) (faults, reqs, fetched uint64) {
			s0 := nodes[1].Stats()
			for _, p := range pages {
				if got := binary.LittleEndian.Uint64(reader[p*pageSize:]); got != uint64(p)+v {
					t.Errorf("run %d: page %d reads %d, want %d", run, p, got, uint64(p)+v)
				}
			}
			s1 := nodes[1].Stats()
			return s1.ReadFaults - s0.ReadFaults, s1.FetchRequests - s0.FetchRequests, s1.PagesFetched - s0.PagesFetched
		}
		// Nothing used yet: a page at a time. Page 12 is never read.
		write(100)
		var first []int
		for p := range 20 {
			if p != 12 {
				first = append(first, p)
			}
		}
		if f, q, n := reads(100, first...); f != 19 || q != 19 || n != 19 {
			t.Errorf("run %d, first reads: %d faults, %d requests, %d pages; want 19 of each", run, f, q, n)
		}
		// 18-19 (20 is rank 1's own), 0-7 (the most), 8-11 (12 was never
		// used), 16-17 (18 is valid), and 12, demanded, with 13-15.
		// With a run of 1, those five pages, then the fifteen others.
		write(200)
		want, pages, rest := uint64(5), uint64(20), uint64(0)
		if run == 1 {
			pages, rest = 5, 15
		}
		if f, q, n := reads(200, 18, 0, 8, 16, 12); f != want || q != want || n != pages {
			t.Errorf("run %d, runs: %d faults, %d requests, %d pages; want %d, %d, %d", run, f, q, n, want, want, pages)
		}
		if f, q, _ := reads(200, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19); f != rest || q != rest {
			t.Errorf("run %d: reading all the pages then took %d faults, %d requests; want %d", run, f, q, rest)
		}
		// The home timed its answers; rank 1 answered none.
		if s0, s1 := nodes[0].Stats(), nodes[1].Stats(); s0.ServeTime <= 0 || s1.ServeTime != 0 || s1.PagesServed != 0 {
			t.Errorf("run %d: ServeTime %v at the home, %v at rank 1 (which served %d pages); want some, none", run, s0.ServeTime, s1.ServeTime, s1.PagesServed)
		}
		if err := each(nodes, (*Node).Close); err != nil {
			t.Fatal(err)
		}
	}
}

// A reply may carry fewer pages than asked for (a home serves those homed
// there from the first on): the client reads a reply into the places of a
// full one in one readv and moves a shorter one's pages and tag to theirs.
// Here a proxy between rank 1 and rank 0's page server cuts every request
// to at most 3 pages: rank 1's runs of 8 come back 3 at a time, and every
// page must hold what its home wrote, checked by its tag as usual.
func TestFetchShortReply(t *testing.T) {
	const pages, most = 8, 3
	nodes := startMem(t, 2)
	segs := allocAll(t, nodes, "short", 2*pages*pageSize) // pages 0-7 homed at rank 0
	home, reader := View[uint64](segs[0]), View[uint64](segs[1])
	const words = pageSize / 8
	// The proxy: rank 1's channel to rank 0 is a socketpair whose other
	// end it reads, and it asks rank 0's page server on a channel of its own.
	up := attachClient(t, nodes[0], 1, false)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[1]) })
	var reqKey, replyKey [secKeyLen]byte
	rand.Read(reqKey[:])
	rand.Read(replyKey[:])
	nodes[1].c.setChan(0, fds[0], newSession(false, reqKey[:], replyKey[:]))
	down := &pageClient{fd: fds[1]} // its reads, with a timeout
	tv := unix.NsecToTimeval((10 * time.Second).Nanoseconds())
	unix.SetsockoptTimeval(down.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	var nreq, nrep uint64
	// proxy serves n requests from rank 1, each cut to at most most pages.
	proxy := func(n int) {
		t.Helper()
		for range n {
			req := down.read(t, 12+secTagLen)
			var tag [secTagLen]byte
			copy(tag[:], req[12:])
			if !aeadOpen(&reqKey, nreq, nil, req[:12], false, &tag) {
				t.Fatalf("request %d: bad tag", nreq)
			}
			nreq++
			seg, p, k := binary.LittleEndian.Uint32(req), binary.LittleEndian.Uint32(req[4:]), binary.LittleEndian.Uint32(req[8:])
			unix.Write(up.fd, up.requestRun(seg, p, min(k, most)))
			st, vers, body := up.replyRun(t)
			hdr := binary.LittleEndian.AppendUint64(nil, st)
			hdr = binary.LittleEndian.AppendUint64(hdr, uint64(len(vers)))
			for _, v := range vers {
				hdr = binary.LittleEndian.AppendUint64(hdr, v)
			}
			tag = aeadSeal(&replyKey, nrep, hdr, body, false)
			nrep++
			if _, err := unix.Write(down.fd, append(append(hdr, body...), tag[:]...)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// reads has rank 1 read the first word of every page while the proxy
	// serves n requests, and checks what it read.
	reads := func(v uint64, n int) (faults, reqs, fetched uint64) {
		t.Helper()
		s0 := nodes[1].Stats()
		got := make(chan []uint64, 1)
		go func() {
			var r []uint64
			for p := range pages {
				r = append(r, reader[p*words])
			}
			got <- r
		}()
		proxy(n)
		for p, w := range <-got {
			if w != uint64(p)+v {
				t.Errorf("page %d reads %d, want %d", p, w, uint64(p)+v)
			}
		}
		s1 := nodes[1].Stats()
		return s1.ReadFaults - s0.ReadFaults, s1.FetchRequests - s0.FetchRequests, s1.PagesFetched - s0.PagesFetched
	}
	write := func(v uint64) {
		for p := range pages {
			home[p*words] = uint64(p) + v
		}
		if err := each(nodes, func(n *Node) error { return n.Barrier(0) }); err != nil {
			t.Fatal(err)
		}
	}
	write(100)
	if f, q, n := reads(100, pages); f != pages || q != pages || n != pages { // none used before: a page at a time
		t.Errorf("first reads: %d faults, %d requests, %d pages; want %d of each", f, q, n, pages)
	}
	write(200)
	// Runs of 8, then 5, then 2 asked for; 3, 3 and 2 pages served.
	if f, q, n := reads(200, 3); f != 3 || q != 3 || n != pages {
		t.Errorf("runs cut to %d: %d faults, %d requests, %d pages; want 3, 3, %d", most, f, q, n, pages)
	}
}
