package dsmshm

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// transport carries control messages between ranks. send never blocks on the
// network (messages are queued per peer), so the node's dispatcher can send
// while handling a message without risking a distributed deadlock. recv
// returns messages from all peers, including those a rank sends itself.
// close leaves cleanly (queued messages are delivered first); abort drops
// everything at once. After either, recv returns errClosed.
type transport interface {
	send(to int, m *message) error
	recv() (from int, m *message, err error)
	close() error
	abort()
}

var errClosed = errors.New("dsmshm: transport closed")

// netCounters counts what a transport sends.
type netCounters struct {
	msgs, bytes atomic.Uint64
}

func (c *netCounters) count(frameLen int) {
	c.msgs.Add(1)
	c.bytes.Add(uint64(frameLen))
}

type envelope struct {
	from int
	m    *message
	err  error
}

// queue is an unbounded FIFO; pop blocks until an item arrives or the queue
// is closed and drained.
type queue[T any] struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []T
	closed bool
}

func newQueue[T any]() *queue[T] {
	q := &queue[T]{}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *queue[T]) push(v T) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return false
	}
	q.items = append(q.items, v)
	q.cond.Signal()
	return true
}

func (q *queue[T]) pop() (T, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) == 0 && !q.closed {
		q.cond.Wait()
	}
	var zero T
	if len(q.items) == 0 {
		return zero, false
	}
	v := q.items[0]
	q.items[0] = zero
	q.items = q.items[1:]
	return v, true
}

// popUnless is pop that gives up (stopped) when stop returns true; stop is
// checked before every wait and whenever kick is called.
func (q *queue[T]) popUnless(stop func() bool) (v T, ok, stopped bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		if stop() {
			return v, false, true
		}
		if len(q.items) > 0 || q.closed {
			break
		}
		q.cond.Wait()
	}
	if len(q.items) == 0 {
		return v, false, false
	}
	v = q.items[0]
	var zero T
	q.items[0] = zero
	q.items = q.items[1:]
	return v, true, false
}

// kick wakes a waiting popUnless so that it checks its stop condition.
func (q *queue[T]) kick() {
	q.mu.Lock()
	q.cond.Broadcast()
	q.mu.Unlock()
}

func (q *queue[T]) close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Broadcast()
	q.mu.Unlock()
}

// memNet is an in-memory network of size ranks for protocol tests. Every
// message is encoded and decoded on the way, so the codec is exercised too.
type memNet struct {
	inbox []*queue[envelope]
}

func newMemNet(size int) *memNet {
	n := &memNet{inbox: make([]*queue[envelope], size)}
	for i := range n.inbox {
		n.inbox[i] = newQueue[envelope]()
	}
	return n
}

type memTransport struct {
	net  *memNet
	rank int
	ctr  *netCounters
}

func (n *memNet) transport(rank int, ctr *netCounters) *memTransport {
	return &memTransport{net: n, rank: rank, ctr: ctr}
}

func (t *memTransport) send(to int, m *message) error {
	if to < 0 || to >= len(t.net.inbox) {
		return fmt.Errorf("dsmshm: send to rank %d of %d", to, len(t.net.inbox))
	}
	frame := appendFrame(nil, 0, m)
	t.ctr.count(len(frame))
	_, dm, err := decodeFrame(frame[4:])
	if err != nil {
		return err
	}
	if !t.net.inbox[to].push(envelope{from: t.rank, m: dm}) {
		return errClosed
	}
	return nil
}

func (t *memTransport) recv() (int, *message, error) {
	e, ok := t.net.inbox[t.rank].pop()
	if !ok {
		return 0, nil, errClosed
	}
	return e.from, e.m, e.err
}

func (t *memTransport) close() error {
	t.abort()
	return nil
}

func (t *memTransport) abort() { t.net.inbox[t.rank].close() }
