package daemon

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"dsmigrate/internal/journal"
	"dsmigrate/internal/migration"
)

// A record that a crash of the host left damaged (steps are journaled
// unsynced) is dropped at load, with an error in the log; the others load,
// whether written synced (a decision) or not.
func TestMigJournalDamaged(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "migrations")
	jd, err := journal.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	j := migJournal{jd, slog.New(slog.NewTextHandler(&logs, nil))}
	if err := j.Put(&migration.Record{Mig: "aaaaaaaaaaaa", Side: migration.SideSource, Step: "dump"}); err != nil {
		t.Fatal(err)
	}
	if err := j.PutDurable(&migration.Record{Mig: "bbbbbbbbbbbb", Side: migration.SideSource, Decision: migration.Committed}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cccccccccccc.json"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	recs, err := j.Load()
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	var got []string
	for _, r := range recs {
		got = append(got, r.Mig+":"+r.Step+r.Decision)
	}
	if strings.Join(got, " ") != "aaaaaaaaaaaa:dump bbbbbbbbbbbb:"+migration.Committed {
		t.Fatalf("loaded %v", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "cccccccccccc.json")); !os.IsNotExist(err) {
		t.Fatalf("the damaged record is still there (%v)", err)
	}
	if !strings.Contains(logs.String(), "cccccccccccc") || !strings.Contains(logs.String(), "level=ERROR") {
		t.Fatalf("the damaged record was not logged as an error: %q", logs.String())
	}
}
