package cliutil

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"dsmigrate/internal/api"
)

// The documented schemas: times in milliseconds, [] for empty lists (never
// null), a DSM rank's fields only on ranks.
func TestJSONSchemas(t *testing.T) {
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	plain := enc(Procs([]api.ProcInfo{{ID: "a", State: "running"}}))
	rank := enc(Procs([]api.ProcInfo{{ID: "b", Job: "j1", Rank: 0}}))
	if strings.Contains(plain, "rank") || strings.Contains(plain, "job") || strings.Contains(plain, "null") {
		t.Errorf("a plain process: %s", plain)
	}
	if !strings.Contains(rank, `"job":"j1"`) || !strings.Contains(rank, `"rank":0`) {
		t.Errorf("rank 0 of a job: %s", rank)
	}
	if got := enc(Procs(nil)); got != "[]" {
		t.Errorf("no processes: %s", got)
	}
	if got := enc(Migrations(nil)); got != "[]" {
		t.Errorf("no migrations: %s", got)
	}
	m := enc(Migration(api.MigrationRec{ID: "c", Total: 1500 * time.Microsecond, Downtime: 2 * time.Second,
		Outcome: "ok"}))
	for _, want := range []string{`"total_ms":1.5`, `"downtime_ms":2000`, `"phases":[]`, `"result":"ok"`} {
		if !strings.Contains(m, want) {
			t.Errorf("a migration lacks %s: %s", want, m)
		}
	}
	if strings.Contains(m, "null") || strings.Contains(m, "rank") || strings.Contains(m, "last_page") {
		t.Errorf("a migration of a plain process: %s", m)
	}
	pc := enc(Migration(api.MigrationRec{PostCopy: true, LastPage: 3 * time.Millisecond, Job: "j", Rank: 2}))
	if !strings.Contains(pc, `"last_page_ms":3`) || !strings.Contains(pc, `"rank":2`) {
		t.Errorf("a post-copy move of a rank: %s", pc)
	}
	p := enc(Event(api.Event{Phase: api.PhaseProgress, Info: "dump", Dur: time.Second, Bytes: 0, Rate: 0}))
	if !strings.Contains(p, `"type":"progress"`) || !strings.Contains(p, `"bytes":0`) || !strings.Contains(p, `"step_ms":1000`) {
		t.Errorf("a progress event: %s", p)
	}
}

// Every kind of failure has its exit status, through any wrapping.
func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{errors.New("x"), ExitFailure},
		{api.Errorf(api.KindNotFound, "no process"), ExitNotFound},
		{fmt.Errorf("a: %w", api.Errorf(api.KindRefused, "b")), ExitRefused},
		{api.WithKind(api.KindLost, errors.New("gone")), ExitLost},
		{errors.Join(errors.New("x"), api.Errorf(api.KindUnreachable, "down")), ExitUnreachable},
		// A kind given first stays.
		{api.WithKind(api.KindRefused, api.Errorf(api.KindNotFound, "no process")), ExitNotFound},
	} {
		if got := ExitCode(tc.err); got != tc.want {
			t.Errorf("%v: exit %d, want %d", tc.err, got, tc.want)
		}
	}
	if e := api.AsError(fmt.Errorf("x: %w", api.Errorf(api.KindLost, "y"))); e.Kind != api.KindLost || e.Msg != "x: y" {
		t.Errorf("AsError: %+v", e)
	}
}
