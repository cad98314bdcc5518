package main

import (
	"fmt"
	"net"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"dsmigrate/internal/api"
	"dsmigrate/internal/cliutil"
	"dsmigrate/internal/daemon"
)

// defaultCRIU is the daemon's --criu default (serve.go), checked when the
// daemon does not answer.
const defaultCRIU = "/usr/local/sbin/migrate-criu"

func checkCommand() *cli.Command {
	return &cli.Command{
		Name: "check",
		Usage: "check that this host, and with --to a target, is ready for migrations: each line says ok, warning or " +
			"FAILED, what is wrong and how to fix it; exit status 1 if a check failed",
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "to", Usage: "ADDR:PORT of a target daemon: check it as a migration from this host " +
				"would find it (reachable, authenticated, accepting migrations, not this host, memory free)"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON (docs/json/migrated-check.md)"},
			&cli.StringFlag{Name: "criu", Usage: "check this CRIU binary instead of the daemon's (when the daemon does " +
				"not answer: " + defaultCRIU + ")"},
			&cli.StringFlag{Name: "token-file", Usage: "check this token file instead of the daemon's"},
		},
		Action: runCheck,
	}
}

// checkOutput is what migrated check --json prints
// (docs/json/migrated-check.md).
type checkOutput struct {
	OK     bool            `json:"ok"`
	Daemon *api.DaemonInfo `json:"daemon,omitempty"`
	Target *api.DaemonInfo `json:"target,omitempty"`
	Checks []api.Check     `json:"checks"`
}

func runCheck(c *cli.Context) error {
	const usage = "usage: migrated check [--to ADDR:PORT] [--json] [--criu PATH] [--token-file FILE]"
	if c.NArg() > 0 {
		return cliutil.Usage(c, usage)
	}
	to := c.String("to")
	if h, p, err := net.SplitHostPort(to); to != "" && (err != nil || h == "" || p == "") {
		return cliutil.Usage(c, "--to %q: want the target daemon's ADDR:PORT, e.g. 10.0.0.2:7077", to)
	}
	sock := c.String("socket")
	out := checkOutput{}
	rep, err := roundTrip(c, api.Request{Op: "check", To: to})
	if err == nil && rep.Check == nil {
		err = fmt.Errorf("it answered without a check")
	}
	if err != nil {
		st, fix := api.CheckFailed, "start it: migrated serve --listen HOST-IP:7077 --state-dir /var/lib/migrated "+
			"--token-file /etc/migrated/token (or systemctl start migrated); a daemon on another socket: --socket PATH"
		if api.KindOf(err) != api.KindUnreachable {
			st, fix = api.CheckWarning, "upgrade the daemon (a migrated older than this client?); see its log "+
				"(journalctl -u migrated)"
		}
		out.Checks = append(out.Checks, api.Check{Name: "daemon", Status: st, Message: fmt.Sprintf("%v (the checks "+
			"below ran in this command, as uid %d, not in the daemon)", err, os.Geteuid()), Fix: fix})
		criuPath := defaultCRIU
		if c.IsSet("criu") {
			criuPath = c.String("criu")
		}
		checks := daemon.HostChecks(c.Context, criuPath, c.String("token-file"))
		if !c.IsSet("token-file") {
			checks = replaceChecks(checks, "token file", []api.Check{{Name: "token file", Status: api.CheckWarning,
				Message: "not checked: the daemon's --token-file is unknown while it does not answer",
				Fix:     "give it: migrated check --token-file FILE"}})
		}
		out.Checks = append(out.Checks, checks...)
		if to != "" {
			out.Checks = append(out.Checks, api.Check{Name: "target", Status: api.CheckWarning, Message: "not checked: " +
				"migrations to " + to + " start from this host's daemon, which did not answer", Fix: "start the daemon here first"})
		}
	} else {
		r := rep.Check
		out.Daemon, out.Target = &r.Daemon, r.Target
		out.Checks = append(out.Checks, api.Check{Name: "daemon", Status: api.CheckOK, Message: fmt.Sprintf("answering at "+
			"%s (daemon %s on %s)", sock, short(r.Daemon.ID), r.Daemon.Hostname)})
		checks := r.Checks
		if c.IsSet("criu") {
			checks = replaceChecks(checks, "criu ", daemon.CRIUChecks(c.Context, c.String("criu")))
		}
		if c.IsSet("token-file") {
			checks = replaceChecks(checks, "token file", []api.Check{daemon.TokenFileCheck(c.String("token-file"))})
		}
		out.Checks = append(out.Checks, checks...)
	}
	out.OK = !api.Failed(out.Checks)
	if c.Bool("json") {
		if err := cliutil.PrintJSON(out); err != nil {
			return err
		}
	} else {
		printChecks(out.Checks)
	}
	if !out.OK {
		return cli.Exit("", cliutil.ExitFailure)
	}
	return nil
}

// replaceChecks puts with in place of the checks whose names start with
// prefix (where the first of them was; at the end if none).
func replaceChecks(checks []api.Check, prefix string, with []api.Check) []api.Check {
	var out []api.Check
	at := -1
	for _, ch := range checks {
		if strings.HasPrefix(ch.Name, prefix) {
			if at < 0 {
				at = len(out)
			}
			continue
		}
		out = append(out, ch)
	}
	if at < 0 {
		at = len(out)
	}
	return append(out[:at], append(with, out[at:]...)...)
}

// printChecks writes one line a check: its name, ok, warning or FAILED, what
// was found or what is wrong, and the fix; then a summary.
func printChecks(checks []api.Check) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	var failed, warned int
	for _, ch := range checks {
		st := ch.Status
		switch st {
		case api.CheckFailed:
			st = "FAILED"
			failed++
		case api.CheckWarning:
			warned++
		}
		msg := ch.Message
		if ch.Fix != "" {
			msg += "; fix: " + ch.Fix
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", ch.Name, st, msg)
	}
	tw.Flush()
	switch {
	case failed > 0:
		fmt.Printf("%d of %d checks FAILED, %s: migrations fail until that is fixed\n", failed, len(checks),
			cliutil.Plural(warned, "warning"))
	case warned > 0:
		fmt.Printf("ok: %s, %s\n", cliutil.Plural(len(checks), "check"), cliutil.Plural(warned, "warning"))
	default:
		fmt.Printf("ok: %s\n", cliutil.Plural(len(checks), "check"))
	}
}

func short(id string) string { return id[:min(12, len(id))] }
