package main

import (
	"cmp"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"dsmigrate/internal/api"
	"dsmigrate/internal/cliutil"
	"dsmigrate/internal/placement"
)

func local(c *cli.Context) (*api.Client, error) { return api.DialLocal(c.String("socket")) }

func roundTrip(c *cli.Context, req api.Request) (*api.Reply, error) {
	cl, err := local(c)
	if err != nil {
		return nil, err
	}
	return cl.Do(req)
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "start a migratable process on this host; prints its ID",
		ArgsUsage: "-- CMD [ARG...]",
		Flags: []cli.Flag{&cli.StringFlag{Name: "name", Usage: "a name to find it by (unique among your processes here)"},
			&cli.BoolFlag{Name: "anywhere", Usage: "start it on the host placement picks among the daemon's --peers " +
				"(this one included), not necessarily this one; prints the host too"},
			policyFlag, jsonFlag},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return cliutil.Usage(c, "no command: migrated run [--name NAME] [--anywhere] -- CMD [ARG...]")
			}
			if err := checkPolicy(c); err != nil {
				return err
			}
			via, where := "", "" // via: the daemon to ask ("": this host's); where: its address
			if c.Bool("anywhere") {
				var err error
				if via, where, err = placeNew(c); err != nil {
					return err
				}
			}
			cl, err := api.DialVia(c.String("socket"), via)
			if err != nil {
				return err
			}
			dir, _ := os.Getwd()
			r, err := cl.Do(api.Request{Op: "run", Name: c.String("name"), Argv: c.Args().Slice(), Env: os.Environ(), Dir: dir})
			if err != nil {
				return err
			}
			if c.Bool("anywhere") {
				if c.Bool("json") {
					return cliutil.PrintJSON(map[string]string{"id": r.ID, "host": where})
				}
				fmt.Println(r.ID, where)
				return nil
			}
			if c.Bool("json") {
				return cliutil.PrintJSON(map[string]string{"id": r.ID})
			}
			fmt.Println(r.ID)
			return nil
		},
	}
}

func psCommand() *cli.Command {
	return &cli.Command{
		Name:  "ps",
		Usage: "list the processes on this host",
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			r, err := roundTrip(c, api.Request{Op: "ps"})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return cliutil.PrintJSON(cliutil.Procs(r.Procs))
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tPID\tSTATE\tCOMMAND")
			for _, p := range r.Procs {
				st := p.State
				if p.ExitCode != nil && st == "exited" {
					st = fmt.Sprintf("exited(%d)", *p.ExitCode)
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", p.ID, p.Name, p.PID, st, strings.Join(p.Command, " "))
			}
			return tw.Flush()
		},
	}
}

func logsCommand() *cli.Command {
	return &cli.Command{
		Name:      "logs",
		Usage:     "print a process's output since it started, across migrations",
		ArgsUsage: "ID",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "follow", Aliases: []string{"f"},
			Usage: "go on printing what it writes, wherever it moves, until it exits"}},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cliutil.Usage(c, "usage: migrated logs [-f] ID")
			}
			if c.Bool("follow") {
				return followLog(c, c.Args().First())
			}
			cl, err := local(c)
			if err != nil {
				return err
			}
			_, err = cl.Stream(api.Request{Op: "logs", ID: c.Args().First()}, os.Stdout, nil)
			return err
		},
	}
}

// followLog prints process id's output from its start and as it grows, and
// follows the process when it moves (through this host's daemon, which
// passes the request on to the process's new host), until it exits; it
// then says how.
func followLog(c *cli.Context, id string) error {
	var off int64
	host := "" // this host's daemon
	for {
		cl, err := api.DialVia(c.String("socket"), host)
		if err != nil {
			return err
		}
		w := &cliutil.CountWriter{W: os.Stdout}
		rep, err := cl.Stream(api.Request{Op: "follow", ID: id, Offset: off}, w, nil)
		off += w.N
		if err != nil {
			if host != "" {
				return fmt.Errorf("following %s on %s: %w", id, host, err)
			}
			return err
		}
		if rep.State == "migrated" && rep.MovedTo != "" {
			id, host = rep.ID, rep.MovedTo // the full ID: a name may be another's there
			continue
		}
		if rep.State == "exited" {
			fmt.Fprintf(os.Stderr, "migrated: process %s exited with status %d\n", rep.ID, rep.ExitCode)
		}
		return nil
	}
}

func killCommand() *cli.Command {
	return &cli.Command{
		Name:      "kill",
		Usage:     "kill a process (and its children) and forget it",
		ArgsUsage: "ID",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cliutil.Usage(c, "usage: migrated kill ID")
			}
			_, err := roundTrip(c, api.Request{Op: "kill", ID: c.Args().First()})
			return err
		},
	}
}

func migrateCommand() *cli.Command {
	return &cli.Command{
		Name:      "migrate",
		Usage:     "move a running process to another host's daemon",
		ArgsUsage: "ID",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "to", Usage: "ADDR:PORT of the target daemon; without it placement picks one " +
				"among the daemon's --peers (docs/placement.md)"},
			policyFlag,
			&cli.StringFlag{Name: "move-ip", Usage: "CIDR: move this address with the process (its TCP connections " +
				"survive); an address of the process's own: loopback, the daemon's own address, the one this host " +
				"reaches the target from and an interface's last address are refused"},
			&cli.BoolFlag{Name: "post-copy", Usage: "resume the process on the target before its memory has arrived " +
				"(CRIU's lazy pages): the downtime no longer grows with its memory, but if the source host, its daemon " +
				"or the link fails before the last page arrived, the process is LOST (killed on the target, " +
				"not resumed here)"},
			timeoutFlag,
			&cli.BoolFlag{Name: "json", Usage: "print the phases, progress and result as JSON lines " +
				"(docs/json/migrated-migrate.md)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cliutil.Usage(c, "usage: migrated migrate ID [--to ADDR:PORT] [--move-ip CIDR] [--post-copy] [--timeout D]")
			}
			if c.Duration("timeout") < 0 {
				return cliutil.Usage(c, "--timeout %v: want a positive duration such as 30s or 5m", c.Duration("timeout"))
			}
			if err := checkPolicy(c); err != nil {
				return err
			}
			id := c.Args().First()
			cl, err := local(c)
			if err != nil {
				return err
			}
			if !c.Bool("json") {
				fmt.Fprintf(os.Stderr, "migrating %s to %s\n", id, cmp.Or(c.String("to"), "the host placement picks"))
			}
			return cliutil.Migrate(cl, api.Request{Op: "migrate", ID: id, To: c.String("to"), MoveIP: c.String("move-ip"),
				PostCopy: c.Bool("post-copy"), Timeout: c.Duration("timeout"), Policy: c.String("policy")}, c.Bool("json"))
		},
	}
}

func historyCommand() *cli.Command {
	return &cli.Command{
		Name:  "history",
		Usage: "show the migrations this host's daemon sent",
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			r, err := roundTrip(c, api.Request{Op: "history"})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return cliutil.PrintJSON(cliutil.Migrations(r.Records))
			}
			api.PrintRecords(os.Stdout, r.Records)
			return nil
		},
	}
}

var (
	jsonFlag    = &cli.BoolFlag{Name: "json", Usage: "print JSON (docs/json/ has the schema)"}
	timeoutFlag = &cli.DurationFlag{Name: "timeout", Usage: "give the migration up if it has not committed " +
		"within this long (30s, 5m): the process then runs on here as before", DefaultText: "15m, the daemon's bound"}
)

// placeNew asks this host's daemon where a new process should start: the
// daemon to pass the run to ("" if it is this host's) and its address.
func placeNew(c *cli.Context) (via, addr string, err error) {
	r, err := roundTrip(c, api.Request{Op: "place", Policy: c.String("policy")})
	if err != nil {
		return "", "", err
	}
	var skips []placement.Skip
	for _, h := range r.Hosts {
		if h.Skip == "" && h.Daemon != nil {
			if h.Self {
				return "", h.Addr, nil
			}
			return h.Addr, h.Addr, nil
		}
		skips = append(skips, placement.Skip{Addr: h.Addr, Why: h.Skip})
	}
	return "", "", api.WithKind(api.KindRefused, placement.NoHost(skips, "a new process"))
}
