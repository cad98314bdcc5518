package cliutil

import (
	"fmt"
	"io"
	"os"
	"strings"

	"dsmigrate/internal/api"
)

// DrainJSON is what a drain did, the last line of migrated drain --json
// (docs/json/migrated-drain.md).
type DrainJSON struct {
	Host   string          `json:"host"`
	DryRun bool            `json:"dry_run"`
	Moved  int             `json:"moved"`
	Stayed int             `json:"stayed"`
	Items  []DrainItemJSON `json:"items"`
}

// DrainItemJSON is one process of a drain.
type DrainItemJSON struct {
	ID        string         `json:"id"`
	Name      string         `json:"name"`
	Job       string         `json:"job,omitempty"`
	Rank      *int           `json:"rank,omitempty"` // with job
	To        string         `json:"to,omitempty"`
	MoveIP    string         `json:"move_ip,omitempty"`
	Moved     bool           `json:"moved"`
	Stayed    string         `json:"stayed,omitempty"`
	Migration *MigrationJSON `json:"migration,omitempty"`
}

// Drain is r in the JSON of migrated drain.
func Drain(r api.DrainReport) DrainJSON {
	out := DrainJSON{Host: r.Host, DryRun: r.DryRun, Items: []DrainItemJSON{}}
	for _, it := range r.Items {
		j := DrainItemJSON{ID: it.ID, Name: it.Name, Job: it.Job, To: it.To, MoveIP: it.MoveIP, Moved: it.Moved,
			Stayed: it.Stayed}
		if it.Job != "" {
			j.Rank = &it.Rank
		}
		if it.Record != nil {
			m := Migration(*it.Record)
			j.Migration = &m
		}
		if it.Moved {
			out.Moved++
		} else if !r.DryRun || it.To == "" {
			out.Stayed++
		}
		out.Items = append(out.Items, j)
	}
	return out
}

// DrainHost sends req, a drain, on cl and shows it as it goes (which process
// goes where, each migration's phases and progress, what stays), then a
// summary; with asJSON, JSON lines (docs/json/migrated-drain.md). The first
// SIGINT or SIGTERM stops the drain: the migration under way rolls back
// unless it has committed, and the processes after it stay. A process that
// stayed makes the error (exit status 4, refused).
func DrainHost(cl *api.Client, req api.Request, asJSON bool) error {
	v := &view{json: asJSON, w: os.Stderr, tty: isTerminal(os.Stderr)}
	rep, err := v.stream(cl, req, "stopping the drain: the migration under way rolls back unless it has "+
		"committed, the processes after it stay (interrupt again to stop waiting)",
		"not waiting: `migrated ps` on the host shows what is left")
	if err != nil {
		return err
	}
	if rep.Drain == nil {
		return fmt.Errorf("the daemon answered the drain without its report")
	}
	d := Drain(*rep.Drain)
	if asJSON {
		v.line(EventJSON{Type: "drained", Drain: &d})
	} else {
		printDrain(os.Stdout, d)
	}
	if d.Stayed > 0 && !d.DryRun {
		return api.Errorf(api.KindRefused, "%s stayed on %s, running there as before (the report says why); it "+
			"takes no new processes until `migrated undrain`", Plural(d.Stayed, "process"), d.Host)
	}
	return nil
}

// printDrain writes a drain's report as a table and a summary line.
func printDrain(w io.Writer, d DrainJSON) {
	if len(d.Items) > 0 {
		fmt.Fprintf(w, "%-12s  %-16s  %-10s  %-21s  %s\n", "ID", "NAME", "JOB/RANK", "TO", "RESULT")
	}
	for _, it := range d.Items {
		jr := "-"
		if it.Rank != nil {
			jr = fmt.Sprintf("%s/%d", it.Job, *it.Rank)
		}
		to, res := it.To, "moved"
		switch {
		case d.DryRun && it.To != "":
			res = "would move"
			if it.MoveIP != "" {
				res += " with " + it.MoveIP
			}
		case !it.Moved:
			res = "stays: " + it.Stayed
		case it.Migration != nil:
			res = fmt.Sprintf("moved, downtime %.1f ms", it.Migration.DowntimeMS)
		}
		fmt.Fprintf(w, "%-12s  %-16s  %-10s  %-21s  %s\n", it.ID, it.Name, jr, strings.TrimSpace(to+" "), res)
	}
	switch {
	case d.DryRun:
		fmt.Fprintf(w, "dry run: %s would move off %s, %s would stay; nothing was touched\n",
			Plural(len(d.Items)-d.Stayed, "process"), d.Host, Plural(d.Stayed, "process"))
	default:
		fmt.Fprintf(w, "%s drained: %s moved, %s stayed; it takes no new processes until `migrated undrain`\n",
			d.Host, Plural(d.Moved, "process"), Plural(d.Stayed, "process"))
	}
}
