package cliutil

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"dsmigrate/internal/api"
)

// What the commands print with --json: the documented schemas of
// docs/json/. They are the commands' interface, kept apart from the
// daemons' protocol (package api): times in milliseconds, timestamps in
// RFC 3339, [] where a list is empty, a DSM rank's fields only on ranks.

// ProcJSON is a process (migrated ps --json; docs/json/migrated-ps.md).
type ProcJSON struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	PID      int       `json:"pid"`
	State    string    `json:"state"`
	ExitCode *int      `json:"exit_code,omitempty"`
	Command  []string  `json:"command"`
	Started  time.Time `json:"started"`
	Moves    int       `json:"moves"`
	UID      uint32    `json:"uid"`
	Job      string    `json:"job,omitempty"`
	Rank     *int      `json:"rank,omitempty"`
}

// Proc is p as ps --json prints it.
func Proc(p api.ProcInfo) ProcJSON {
	out := ProcJSON{ID: p.ID, Name: p.Name, PID: p.PID, State: p.State, ExitCode: p.ExitCode, Command: p.Command,
		Started: p.Started, Moves: p.Moves, UID: p.UID, Job: p.Job}
	if out.Command == nil {
		out.Command = []string{}
	}
	if p.Job != "" {
		out.Rank = &p.Rank
	}
	return out
}

// Procs is ps as ps --json prints it.
func Procs(ps []api.ProcInfo) []ProcJSON {
	out := make([]ProcJSON, 0, len(ps))
	for _, p := range ps {
		out = append(out, Proc(p))
	}
	return out
}

// PhaseJSON is one phase of a migration.
type PhaseJSON struct {
	Phase string  `json:"phase"`
	MS    float64 `json:"ms"`
	Info  string  `json:"info,omitempty"`
}

// MigrationJSON is a migration (history --json, migrate --json's result;
// docs/json/migrated-history.md).
type MigrationJSON struct {
	ID         string      `json:"id"`
	Name       string      `json:"name"`
	From       string      `json:"from"`
	To         string      `json:"to"`
	MoveIP     string      `json:"move_ip,omitempty"`
	Job        string      `json:"job,omitempty"`
	Rank       *int        `json:"rank,omitempty"`
	Start      time.Time   `json:"start"`
	TotalMS    float64     `json:"total_ms"`
	DowntimeMS float64     `json:"downtime_ms"`
	Bytes      int64       `json:"bytes"`
	PostCopy   bool        `json:"post_copy"`
	LastPageMS *float64    `json:"last_page_ms,omitempty"`
	Phases     []PhaseJSON `json:"phases"`
	Result     string      `json:"result"`
	Outcome    string      `json:"outcome"`
	UID        uint32      `json:"uid"`
}

// Migration is r as the commands print it.
func Migration(r api.MigrationRec) MigrationJSON {
	out := MigrationJSON{ID: r.ID, Name: r.Name, From: r.From, To: r.To, MoveIP: r.MoveIP, Job: r.Job, Start: r.Start,
		TotalMS: ms(r.Total), DowntimeMS: ms(r.Downtime), Bytes: r.Bytes, PostCopy: r.PostCopy,
		Phases: make([]PhaseJSON, 0, len(r.Phases)), Result: api.RecResult(r), Outcome: r.Outcome, UID: r.UID}
	if r.Job != "" {
		out.Rank = &r.Rank
	}
	if r.PostCopy && r.LastPage > 0 {
		v := ms(r.LastPage)
		out.LastPageMS = &v
	}
	for _, e := range r.Phases {
		out.Phases = append(out.Phases, PhaseJSON{Phase: e.Phase, MS: ms(e.Dur), Info: e.Info})
	}
	return out
}

// Migrations is rs as the commands print them.
func Migrations(rs []api.MigrationRec) []MigrationJSON {
	out := make([]MigrationJSON, 0, len(rs))
	for _, r := range rs {
		out = append(out, Migration(r))
	}
	return out
}

// EventJSON is one line of migrate --json (docs/json/migrated-migrate.md):
// a phase that ended, progress, the result, or the error.
type EventJSON struct {
	Type string `json:"type"` // "phase", "progress", "cancelling", "result", "error"; drain: "drain", "drained"
	// phase
	Phase string   `json:"phase,omitempty"`
	MS    *float64 `json:"ms,omitempty"`
	Info  string   `json:"info,omitempty"`
	// progress
	Step          string   `json:"step,omitempty"`
	StepMS        *float64 `json:"step_ms,omitempty"`
	Bytes         *int64   `json:"bytes,omitempty"`
	ExpectedBytes int64    `json:"expected_bytes,omitempty"`
	BytesPerS     *float64 `json:"bytes_per_s,omitempty"`
	// result
	Migration *MigrationJSON `json:"migration,omitempty"`
	// drained (migrated drain's last line)
	Drain *DrainJSON `json:"drain,omitempty"`
	// error
	Error    string `json:"error,omitempty"`
	Kind     string `json:"kind,omitempty"`
	ExitCode int    `json:"exit_code,omitempty"`
}

// Event is e as a line of migrate --json.
func Event(e api.Event) EventJSON {
	d := ms(e.Dur)
	if e.Phase == api.PhaseDrain {
		return EventJSON{Type: "drain", Info: e.Info}
	}
	if e.Phase != api.PhaseProgress {
		return EventJSON{Type: "phase", Phase: e.Phase, MS: &d, Info: e.Info}
	}
	b, r := e.Bytes, e.Rate
	return EventJSON{Type: "progress", Step: e.Info, StepMS: &d, Bytes: &b, ExpectedBytes: e.Of, BytesPerS: &r}
}

// PrintJSON writes v to standard output as indented JSON.
func PrintJSON(v any) error { return WriteJSON(os.Stdout, v, true) }

// WriteJSON writes v to w as JSON, indented or on one line (JSON Lines).
func WriteJSON(w io.Writer, v any, indent bool) error {
	enc := json.NewEncoder(w)
	if indent {
		enc.SetIndent("", "  ")
	}
	return enc.Encode(v)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Plural is n things, in words: "1 host", "2 hosts".
func Plural(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	if strings.HasSuffix(thing, "s") {
		return fmt.Sprintf("%d %ses", n, thing)
	}
	return fmt.Sprintf("%d %ss", n, thing)
}
