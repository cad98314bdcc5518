package migration

import (
	"context"
	"sync"
	"time"

	"dsmigrate/internal/api"
)

// A migration tells its client how far it has come while a step runs (a
// big dump, post-copy's background pages), so that a long transfer is not
// taken for a hang: every api.EventEvery, the step, how long it has run and
// the bytes sent on the migration's connections (those that count them,
// as wire.Conn does), with the rate over the last interval.

// byteCounter is a Conn that counts the payload bytes it sent.
type byteCounter interface{ Written() int64 }

// meter is what the progress reports read, set by the steps as they go.
type meter struct {
	mu    sync.Mutex
	conns []Conn
	step  string
	since time.Time
	of    int64 // bytes the dump is expected to hold
}

func (mt *meter) add(c Conn) {
	mt.mu.Lock()
	mt.conns = append(mt.conns, c)
	mt.mu.Unlock()
}

func (mt *meter) begin(step string) {
	mt.mu.Lock()
	mt.step, mt.since = step, time.Now()
	mt.mu.Unlock()
}

func (mt *meter) expect(n int64) {
	mt.mu.Lock()
	mt.of = n
	mt.mu.Unlock()
}

// read is the current step, how long it has run, the bytes sent and
// expected.
func (mt *meter) read() (step string, d time.Duration, sent, of int64) {
	mt.mu.Lock()
	defer mt.mu.Unlock()
	for _, c := range mt.conns {
		if bc, ok := c.(byteCounter); ok {
			sent += bc.Written()
		}
	}
	return mt.step, time.Since(mt.since), sent, mt.of
}

// metered wraps each step's do so that the meter knows the step running.
func metered(mt *meter, steps []step) []step {
	out := make([]step, len(steps))
	for i, s := range steps {
		do := s.do
		s.do = func(ctx context.Context) error {
			mt.begin(s.name)
			return do(ctx)
		}
		out[i] = s
	}
	return out
}

// report calls emit with a progress event every interval until the
// returned stop is called (it waits for the reporter to finish).
func report(mt *meter, every time.Duration, emit func(api.Event)) (stop func()) {
	done := make(chan struct{})
	over := make(chan struct{})
	go func() {
		defer close(over)
		tick := time.NewTicker(every)
		defer tick.Stop()
		last, lastAt := int64(0), time.Now()
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				step, d, sent, of := mt.read()
				if step == "" {
					continue
				}
				rate := float64(sent-last) / now.Sub(lastAt).Seconds()
				last, lastAt = sent, now
				emit(api.Event{Phase: api.PhaseProgress, Info: step, Dur: d, Bytes: sent, Of: of, Rate: max(rate, 0)})
			}
		}
	}()
	return func() {
		close(done)
		<-over
	}
}

// stopKey holds, in a migration's context, the context of its caller: the
// steps run on one the caller cannot cancel (a CRIU dump cut in half can
// hurt the process), and the caller's cancel or deadline is heeded between
// steps, before the commit (stopped).
type stopKey struct{}

// withStop is ctx (not cancelled with caller) that carries caller for
// stopped.
func withStop(ctx, caller context.Context) context.Context {
	return context.WithValue(ctx, stopKey{}, caller)
}

// stopped is why the caller of ctx's migration called it off (the cause
// of its context), or nil.
func stopped(ctx context.Context) error {
	caller, _ := ctx.Value(stopKey{}).(context.Context)
	if caller == nil || caller.Err() == nil {
		return nil
	}
	return context.Cause(caller)
}
