package api

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// PrintRecords writes migration records as a table.
func PrintRecords(w io.Writer, recs []MigrationRec) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WHEN\tID\tNAME\tJOB\tRANK\tFROM\tTO\tTOTAL\tDOWNTIME\tMIB\tPHASES\tOUTCOME")
	for _, r := range recs {
		var ph []string
		for _, e := range r.Phases {
			ph = append(ph, fmt.Sprintf("%s=%.0fms", e.Phase, Millis(e.Dur)))
		}
		job, rank := "-", "-"
		if r.Job != "" {
			job, rank = r.Job, fmt.Sprint(r.Rank)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.0fms\t%.0fms\t%.1f\t%s\t%s\n", r.Start.Format(time.TimeOnly), r.ID,
			r.Name, job, rank, r.From, r.To, Millis(r.Total), Millis(r.Downtime), float64(r.Bytes)/(1<<20),
			strings.Join(ph, ","), r.Outcome)
	}
	tw.Flush()
}

// MiB is n bytes in whole MiB, for people.
func MiB(n int64) string { return fmt.Sprintf("%d MiB", n>>20) }

// Millis is d in milliseconds.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// PrintEvent writes one phase of a migration as it happens.
func PrintEvent(w io.Writer, e Event) {
	fmt.Fprintf(w, "  %-9s %8.1f ms  %s\n", e.Phase, Millis(e.Dur), e.Info)
}

// PrintDone writes the summary of a finished migration.
func PrintDone(w io.Writer, rec *MigrationRec) {
	if rec == nil {
		return
	}
	fmt.Fprintf(w, "done: total %.1f ms, downtime %.1f ms, %.1f MiB moved\n",
		Millis(rec.Total), Millis(rec.Downtime), float64(rec.Bytes)/(1<<20))
	if rec.PostCopy && rec.LastPage > 0 {
		fmt.Fprintf(w, "post-copy: the last page arrived %.1f ms after the freeze\n", Millis(rec.LastPage))
	}
	if rec.Outcome != "ok" {
		fmt.Fprintf(w, "warning: %s\n", rec.Outcome)
	}
}
