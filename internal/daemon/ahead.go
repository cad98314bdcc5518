package daemon

import (
	"log/slog"
	"sync"
)

// ahead keeps one T started ahead of the migration that will use it: the
// next dump's CRIU (dumpworker.go) and the next arrival's shim
// (shimahead.go). Each is a process whose start-up, paid in a migration, is
// downtime or, on a host with few cores, CPU taken from the steps it
// overlaps. One waits while the daemon serves (from open to close):
// started in the background when the daemon starts and again, once taken,
// after the migration that took it is over (not during it, where its
// start-up would compete for the CPU), never two at once. A migration that
// finds none starts its own, as it would without.
type ahead[T any] struct {
	mu      sync.Mutex
	ready   *T
	filling bool
	open    bool
	closed  bool
	fill    sync.WaitGroup // the start under way, if any
}

// take returns what waits, nil if nothing does.
func (a *ahead[T]) take() *T {
	a.mu.Lock()
	defer a.mu.Unlock()
	x := a.ready
	a.ready = nil
	return x
}

// openFill opens a and starts the first one.
func (a *ahead[T]) openFill(log *slog.Logger, what string, start func() (*T, error), end func(*T)) {
	a.mu.Lock()
	a.open = true
	a.mu.Unlock()
	a.refill(log, what, start, end)
}

// refill starts one in the background unless one waits or is starting, or
// a is not open. A failure is logged (what says what was starting): the
// next migration starts its own, and its error, if that cannot start
// either, is the one that matters.
func (a *ahead[T]) refill(log *slog.Logger, what string, start func() (*T, error), end func(*T)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ready != nil || a.filling || !a.open || a.closed {
		return
	}
	a.filling = true
	a.fill.Add(1)
	go func() {
		defer a.fill.Done()
		x, err := start()
		if err != nil {
			log.Warn(what, "err", err)
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		a.filling = false
		if x != nil && a.closed {
			end(x)
			return
		}
		a.ready = x
	}()
}

// close ends what waits and starts no more; a start under way is waited for
// (and what it started ended), so that nothing outlives the daemon's close.
func (a *ahead[T]) close(end func(*T)) {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.fill.Wait()
	if x := a.take(); x != nil {
		end(x)
	}
}
