package migration

import (
	"testing"

	"dsmigrate/internal/api"
)

// The target tells its daemon how each migration it received ended
// (Config.OnArrival, the daemon's metrics): ok once the process runs there,
// refused when what arrived was dropped, lost when a post-copy copy's
// memory could not all arrive; the source's record is unchanged.
func TestArrival(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    worldCfg
		result string
	}{
		{"plain", worldCfg{}, api.ResultOK},
		{"hooks", worldCfg{hooks: true}, api.ResultOK},
		{"post-copy", worldCfg{postCopy: true, pages: 2}, api.ResultOK},
		{"post-copy, page connection broken after the resume", worldCfg{postCopy: true, pages: 2}, api.ResultLost},
		{"target fails", worldCfg{faults: map[string]string{Point(SideTarget, "before", "restore"): "fail"}},
			api.ResultRefused},
		{"source fails after the restore", worldCfg{faults: map[string]string{Point(SideSource, "before", "commit"): "fail"}},
			api.ResultRefused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []api.MigrationRec
			w := run(t, tc.cfg, nil, func(w *world) {
				w.B().eng.cfg.OnArrival = func(r api.MigrationRec) { got = append(got, r) }
				w.A().eng.cfg.OnArrival = func(r api.MigrationRec) { t.Errorf("the source told an arrival: %+v", r) }
				if tc.result == api.ResultLost { // as TestPostCopyPageConnBreak's "after the resume"
					w.afterOp = func(h *host, o string) {
						if c := w.pageConn(); h.name == "B" && o == "Procs.Activate" && c != nil && !c.broken {
							c.broken = true
						}
					}
				}
			})
			defer dumpTrace(t, w)
			if len(got) != 1 {
				t.Fatalf("arrivals %+v, want one", got)
			}
			r := got[0]
			if r.Result != tc.result || r.ID != testProcID || r.From != w.A().addr || r.To != w.B().addr ||
				r.PostCopy != tc.cfg.postCopy || r.Start.IsZero() || r.Total <= 0 {
				t.Errorf("arrival %+v, want result %s from %s to %s", r, tc.result, w.A().addr, w.B().addr)
			}
			if len(w.A().records) != 1 {
				t.Errorf("source history %+v", w.A().records)
			}
		})
	}
}
