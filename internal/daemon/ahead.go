package daemon

import (
	"log/slog"
	"sync"
)

// ahead keeps one T started ahead of the migration that will use it: the
// next dump's CRIU (dumpworker.go) and the next arrival's shim
// (shimahead.go). Each is a process whose start-up, paid in a migration, is
// downtime or, on a host with few cores, CPU taken from the steps it
// overlaps. One waits while the daemon serves (from openWith to close):
// started in the background when the daemon starts and again, once taken,
// after the migration that took it is over (not during it, where its
// start-up would compete for the CPU), never two at once. A migration that
// finds none starts its own, as it would without.
type ahead[T any] struct {
	// Set by openWith: what says what is starting (in a failure's log line);
	// start starts one, end ends one that is not used.
	log   *slog.Logger
	what  string
	start func() (*T, error)
	end   func(*T)

	mu      sync.Mutex
	ready   *T
	filling bool
	open    bool           // from openWith to close
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

// openWith opens a and starts the first one.
func (a *ahead[T]) openWith(log *slog.Logger, what string, start func() (*T, error), end func(*T)) {
	a.mu.Lock()
	a.log, a.what, a.start, a.end = log, what, start, end
	a.open = true
	a.mu.Unlock()
	a.refill()
}

// refill starts one in the background unless one waits or is starting, or
// a is not open. A failure is logged: the next migration starts its own,
// and its error, if that cannot start either, is the one that matters.
func (a *ahead[T]) refill() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ready != nil || a.filling || !a.open {
		return
	}
	a.filling = true
	a.fill.Add(1)
	go func() {
		defer a.fill.Done()
		x, err := a.start()
		if err != nil {
			a.log.Warn(a.what, "err", err)
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		a.filling = false
		if x != nil && !a.open {
			a.end(x)
			return
		}
		a.ready = x
	}()
}

// close ends what waits and starts no more; a start under way is waited for
// (and what it started ended), so that nothing outlives the daemon's close.
func (a *ahead[T]) close() {
	a.mu.Lock()
	a.open = false
	a.mu.Unlock()
	a.fill.Wait()
	if x := a.take(); x != nil {
		a.end(x)
	}
}
