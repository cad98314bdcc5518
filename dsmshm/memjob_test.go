package dsmshm

import (
	"crypto/rand"
	"errors"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// startMem starts size ranks in this process, connected by the in-memory
// transport for control messages and by socketpairs for page channels.
// Faults, twins and protections are the real ones.
func startMem(t *testing.T, size int) []*Node {
	t.Helper()
	return startMemEnc(t, size, false)
}

// startMemEnc is startMem with the page channels encrypted or not.
func startMemEnc(t *testing.T, size int, enc bool) []*Node {
	t.Helper()
	net := newMemNet(size)
	nodes := make([]*Node, size)
	for r := range nodes {
		n, err := newNode(r, size, enc)
		if err != nil {
			t.Fatal(err)
		}
		n.tr = net.transport(r, &n.ctr)
		nodes[r] = n
	}
	for i := range nodes {
		for j := range nodes {
			if i == j {
				continue
			}
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			// The channel's two keys, as a handshake would give them.
			var k1, k2 [secKeyLen]byte
			rand.Read(k1[:])
			rand.Read(k2[:])
			nodes[i].c.setChan(j, fds[0], newSession(enc, k1[:], k2[:]))
			if err := nodes[j].c.serveFD(fds[1], i, newSession(enc, k2[:], k1[:])); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, n := range nodes {
		n.run()
	}
	if err := each(nodes, func(n *Node) error { return n.barrier(startBarrier, 0) }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := each(nodes, (*Node).Close); err != nil {
			t.Errorf("closing: %v", err)
		}
	})
	return nodes
}

// each runs f for every node concurrently, as the ranks of a job would.
func each(nodes []*Node, f func(n *Node) error) error {
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(n)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// allocAll allocates a segment on every node.
func allocAll(t *testing.T, nodes []*Node, name string, size int) []*Segment {
	t.Helper()
	segs := make([]*Segment, len(nodes))
	if err := each(nodes, func(n *Node) error {
		s, err := n.Alloc(name, size)
		segs[n.Rank()] = s
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return segs
}
