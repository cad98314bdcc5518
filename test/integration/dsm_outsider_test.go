package integration

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// An outsider who can reach every rank port of a running job, and knows the
// protocol but not the job's secret, attacks them all while the job runs and
// one rank moves: idle connections (more than a rank keeps), a length prefix
// asking for 4 GiB, random bytes, a well-formed hello for a control
// connection and for a page channel followed by a forged proof, a diff batch
// for the rank's own page where the proof should be, and a replay of its own
// earlier hello. The job must verify (a diff or a page the outsider got in
// would change its result), every attack connection must be closed by the
// rank without an answer that depends on the secret, and no rank's memory
// may grow with what it was sent.
func TestDSMOutsider(t *testing.T) {
	needHosts(t, 4)
	port := 23000 + int(time.Now().UnixNano()%500)*3
	args := append([]string{"--port", fmt.Sprint(port), "--"}, jacobiArgs()...)
	args[len(args)-1] = fmt.Sprint(int(16000 / slow)) // long enough for the attack and a move
	j := startJob(t, 3, args...)
	j.ready()
	rs := j.ranks()
	rss := func() map[int]int {
		m := map[int]int{}
		for _, r := range j.ranks() {
			m[r.Rank] = rankRSS(t, r)
		}
		return m
	}
	before := rss()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	tried, answered := 0, 0
	for _, r := range rs {
		host, _, _ := net.SplitHostPort(r.Host)
		target := net.JoinHostPort(host, fmt.Sprint(port+r.Rank))
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, bad := outsider(target, r.Rank, stop)
			mu.Lock()
			tried, answered = tried+n, answered+bad
			mu.Unlock()
		}()
	}
	time.Sleep(scaled(time.Second))
	j.migrateRank(1, 4)
	time.Sleep(scaled(time.Second))
	close(stop)
	wg.Wait()
	after := rss()
	j.wait()
	t.Logf("%d attack connections on %d ranks", tried, len(rs))
	if tried < 50 {
		t.Errorf("only %d attack connections were made", tried)
	}
	if answered != 0 {
		t.Errorf("%d attack connections got more than the server's hello back", answered)
	}
	for r, kb := range after {
		if b, ok := before[r]; ok && kb-b > 64<<10 {
			t.Errorf("rank %d grew from %d to %d KiB under the attack", r, b, kb)
		}
	}
}

// outsider attacks the rank at addr until stop and returns how many
// connections it made and how many of them were answered with more than a
// server hello (which would be a rank talking to someone without the
// secret).
func outsider(addr string, rank int, stop chan struct{}) (tried, answered int) {
	const helloS = 4 + 1 + 1 + 32 + 32 // "DSMR" version 'S' nonce X25519-share
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	var lastHello []byte
	hello := func(kind byte) []byte { // dsmshm/secure.go's helloC, v2, with a random share
		h := make([]byte, 48+32)
		copy(h, "DSMR")
		h[4], h[5], h[6] = 2, 'C', kind
		binary.LittleEndian.PutUint32(h[8:], uint32((rank+1)%3))
		binary.LittleEndian.PutUint32(h[12:], uint32(rank))
		rand.Read(h[16:])
		return h
	}
	for i := 0; ; i++ {
		select {
		case <-stop:
			return tried, answered
		case <-time.After(2 * time.Millisecond):
		}
		c, err := net.DialTimeout("tcp4", addr, time.Second)
		if err != nil {
			continue // the rank is paused for its move, or gone from here
		}
		tried++
		c.SetDeadline(time.Now().Add(5 * time.Second))
		var sent []byte
		switch i % 7 {
		case 0:
			idle = append(idle, c)
			if len(idle) > 100 {
				idle[0].Close()
				idle = idle[1:]
			}
			continue
		case 1:
			sent = []byte{0xff, 0xff, 0xff, 0xff}
		case 2:
			sent = make([]byte, 64<<10)
			rand.Read(sent)
		case 3, 4: // a control connection, a page channel: a forged proof
			lastHello = hello(byte(i%7 - 3))
			proof := make([]byte, 64+32)
			rand.Read(proof[64:])
			sent = append(append([]byte(nil), lastHello...), proof...)
		case 5: // a diff batch for the rank's own page where the proof goes
			sent = hello(0)
			f := binary.LittleEndian.AppendUint32(nil, 0)
			f = binary.LittleEndian.AppendUint64(f, 1)
			f = append(f, 7) // diff batch
			f = binary.LittleEndian.AppendUint64(f, 1)
			f = binary.LittleEndian.AppendUint32(f, 1)
			f = binary.LittleEndian.AppendUint32(f, 0)
			f = binary.LittleEndian.AppendUint32(f, uint32(rank))
			f = binary.LittleEndian.AppendUint32(f, 8)
			f = append(f, 0, 0, 4, 0, 0xff, 0xff, 0xff, 0x7f)
			binary.LittleEndian.PutUint32(f, uint32(len(f)-4))
			sent = append(sent, append(f, make([]byte, 96-len(f))...)...)
		case 6: // an earlier hello again, as a replay
			if lastHello == nil {
				lastHello = hello(1)
			}
			sent = append(append([]byte(nil), lastHello...), make([]byte, 96)...)
		}
		c.Write(sent)
		c.(*net.TCPConn).CloseWrite() // nothing more comes: the rank need not wait for it
		if got, _ := io.ReadAll(c); len(got) > helloS {
			answered++
		}
		c.Close()
	}
}

// rankRSS is the resident memory of the rank's process, in KiB.
func rankRSS(t *testing.T, r rankInfo) int {
	t.Helper()
	for k := 1; k <= nHosts; k++ {
		if addr(k) != r.Host {
			continue
		}
		out, err := on(k, "migrated", "ps", "--json")
		if err != nil {
			t.Fatalf("ps on h%d: %v", k, err)
		}
		var procs []struct {
			ID  string `json:"id"`
			PID int    `json:"pid"`
		}
		if err := json.Unmarshal([]byte(out), &procs); err != nil {
			t.Fatal(err)
		}
		for _, p := range procs {
			if p.ID != r.ProcID {
				continue
			}
			st, err := on(k, "cat", fmt.Sprintf("/proc/%d/status", p.PID))
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range strings.Split(st, "\n") {
				if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
					kb, _ := strconv.Atoi(f[1])
					return kb
				}
			}
		}
	}
	t.Fatalf("rank %d (%s on %s) not found", r.Rank, r.ProcID, r.Host)
	return 0
}
