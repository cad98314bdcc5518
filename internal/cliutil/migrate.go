package cliutil

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"dsmigrate/internal/api"
)

// Migrate sends req, a migration, on cl and shows it as it goes: each phase
// as it ends and, while a step runs, the bytes sent and the rate (a line
// that updates in place on a terminal, one every progressLines events
// otherwise) on standard error; or, with asJSON, JSON lines on standard
// output (docs/json/migrated-migrate.md). The first SIGINT or SIGTERM calls
// the migration off: up to its commit the daemon rolls it back and the
// process runs on its source as before; the answer is awaited either way (a
// second signal stops waiting). It returns an error of the kind the outcome
// calls for (refused, lost...), which Main turns into the exit status.
func Migrate(cl *api.Client, req api.Request, asJSON bool) error {
	v := &view{json: asJSON, w: os.Stderr, tty: isTerminal(os.Stderr)}
	rep, err := v.stream(cl, req, "cancelling: the migration rolls back unless it has committed (interrupt again "+
		"to stop waiting)", "not waiting for the outcome: `migrated history` on the source host will show it")
	if err != nil {
		return err
	}
	rec := rep.Record
	if rec == nil {
		return fmt.Errorf("the daemon answered the migration without its record")
	}
	if asJSON {
		m := Migration(*rec)
		v.line(EventJSON{Type: "result", Migration: &m})
	} else {
		api.PrintDone(os.Stderr, rec)
	}
	if api.RecResult(*rec) == api.ResultLost {
		// Said already (PrintDone's warning, the JSON result): the status
		// tells it.
		return api.Errorf(api.KindLost, "")
	}
	return nil
}

// stream sends req on cl, showing its events with v. The first SIGINT or
// SIGTERM half-closes the connection, which calls the request off, and says
// cancelling; a second one says leaving and exits 130 without waiting for
// the answer. An error is also a JSON line with --json.
func (v *view) stream(cl *api.Client, req api.Request, cancelling, leaving string) (*api.Reply, error) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	over := make(chan struct{})
	defer close(over)
	go func() {
		select {
		case <-sigs:
		case <-over:
			return
		}
		v.note(cancelling, EventJSON{Type: "cancelling"})
		cl.Cancel()
		select {
		case <-sigs:
			v.note(leaving, EventJSON{})
			os.Exit(130)
		case <-over:
		}
	}()
	rep, err := cl.Stream(req, nil, v.event)
	v.clear()
	if err != nil && v.json {
		e := api.AsError(err)
		v.line(EventJSON{Type: "error", Error: e.Msg, Kind: string(e.Kind), ExitCode: ExitCode(err)})
	}
	return rep, err
}

// progressLines: without a terminal, one progress line every this many
// progress events (api.EventEvery apart).
const progressLines = 10

// view shows a migration's events.
type view struct {
	json bool
	tty  bool
	w    io.Writer

	mu    sync.Mutex
	live  bool // a progress line is showing (tty)
	count int  // progress events seen
}

func (v *view) event(e api.Event) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.json {
		WriteJSON(os.Stdout, Event(e), false)
		return
	}
	switch e.Phase {
	case api.PhaseDrain:
		v.clearLocked()
		fmt.Fprintln(v.w, e.Info)
		return
	case api.PhaseProgress:
	default:
		v.clearLocked()
		api.PrintEvent(v.w, e)
		return
	}
	v.count++
	if v.tty {
		fmt.Fprintf(v.w, "\r\033[K%s", progressText(e))
		v.live = true
	} else if v.count%progressLines == 0 {
		fmt.Fprintln(v.w, progressText(e))
	}
}

func progressText(e api.Event) string {
	s := fmt.Sprintf("  %-9s %8.1f s ", e.Info, e.Dur.Seconds())
	if e.Bytes > 0 || e.Rate > 0 {
		s += fmt.Sprintf(" %.1f MiB", float64(e.Bytes)/(1<<20))
		if e.Of > 0 {
			s += fmt.Sprintf(" of ~%.1f MiB", float64(e.Of)/(1<<20))
		}
		s += fmt.Sprintf(" sent, %.1f MiB/s", e.Rate/(1<<20))
	}
	return s
}

// note says something of the client's own: a line on standard error, or
// j on standard output with --json (nothing if j has no Type).
func (v *view) note(msg string, j EventJSON) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.json {
		if j.Type != "" {
			WriteJSON(os.Stdout, j, false)
		}
		return
	}
	v.clearLocked()
	fmt.Fprintln(v.w, msg)
}

func (v *view) line(j EventJSON) {
	v.mu.Lock()
	defer v.mu.Unlock()
	WriteJSON(os.Stdout, j, false)
}

func (v *view) clear() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.clearLocked()
}

func (v *view) clearLocked() {
	if v.live {
		fmt.Fprint(v.w, "\r\033[K")
		v.live = false
	}
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
