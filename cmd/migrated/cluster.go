package main

import (
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"dsmigrate/internal/api"
	"dsmigrate/internal/cliutil"
	"dsmigrate/internal/placement"
)

// The cluster's operations: its hosts as placement sees them, and draining
// a host (docs/placement.md).

var (
	policyFlag = &cli.StringFlag{Name: "policy", Value: string(placement.Balanced),
		Usage: "how placement weighs the hosts: balanced (memory, load and processes), memory or cpu " +
			"(docs/placement.md)"}
	hostFlag = &cli.StringFlag{Name: "host", Usage: "ADDR:PORT of the daemon to act on (through this host's); " +
		"default: this host's"}
)

// checkPolicy refuses an unknown --policy as a usage error.
func checkPolicy(c *cli.Context) error {
	if _, err := placement.ParsePolicy(c.String("policy")); err != nil {
		return cliutil.Usage(c, "--policy: %v", err)
	}
	return nil
}

// dialHost reaches the daemon of --host, or this host's.
func dialHost(c *cli.Context) (*api.Client, error) {
	if h := c.String("host"); h != "" {
		if err := checkHostPort(h); err != nil {
			return nil, cliutil.Usage(c, "--host: %v", err)
		}
		return api.DialVia(c.String("socket"), h)
	}
	return local(c)
}

func hostsCommand() *cli.Command {
	return &cli.Command{
		Name:  "hosts",
		Usage: "list the cluster's daemons (this one's --peers) with what placement weighs",
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			r, err := roundTrip(c, api.Request{Op: "hosts"})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				if r.Hosts == nil {
					r.Hosts = []api.HostInfo{}
				}
				return cliutil.PrintJSON(r.Hosts)
			}
			printHosts(r.Hosts)
			down := 0
			for _, h := range r.Hosts {
				if h.Error != "" {
					down++
				}
			}
			if down > 0 {
				return api.Errorf(api.KindUnreachable, "%s did not answer", cliutil.Plural(down, "host"))
			}
			return nil
		},
	}
}

// printHosts writes hosts as a table.
func printHosts(hosts []api.HostInfo) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tSTATE\tFREE\tMEMORY\tLOAD\tCPUS\tPROCS\tHOSTNAME")
	for _, h := range hosts {
		addr := h.Addr
		if h.Self {
			addr += " *"
		}
		if h.Daemon == nil {
			fmt.Fprintf(tw, "%s\tunreachable\t-\t-\t-\t-\t-\t%s\n", addr, h.Error)
			continue
		}
		d := h.Daemon
		st := "up"
		if d.Drained {
			st = "drained"
		}
		free := max(d.FreeForArrivals(), 0)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.2f\t%d\t%d\t%s\n", addr, st, api.MiB(free), api.MiB(d.MemTotalBytes),
			d.Load1, d.CPUs, d.Procs, d.Hostname)
	}
	tw.Flush()
}

func drainCommand() *cli.Command {
	return &cli.Command{
		Name: "drain",
		Usage: "move every process off a host (one at a time, DSM ranks included) to hosts placement picks; " +
			"the host then takes no new process until undrain",
		Flags: []cli.Flag{hostFlag, policyFlag,
			&cli.BoolFlag{Name: "dry-run", Usage: "show where each process would go; move nothing, drain nothing"},
			&cli.BoolFlag{Name: "json", Usage: "print the progress and the report as JSON lines " +
				"(docs/json/migrated-drain.md)"}},
		Action: func(c *cli.Context) error {
			if c.NArg() != 0 {
				return cliutil.Usage(c, "usage: migrated drain [--host ADDR:PORT] [--dry-run] [--policy P]")
			}
			if err := checkPolicy(c); err != nil {
				return err
			}
			cl, err := dialHost(c)
			if err != nil {
				return err
			}
			return cliutil.DrainHost(cl, api.Request{Op: "drain", Policy: c.String("policy"),
				DryRun: c.Bool("dry-run")}, c.Bool("json"))
		},
	}
}

func undrainCommand() *cli.Command {
	return &cli.Command{
		Name:  "undrain",
		Usage: "let a drained host take processes and migrations again",
		Flags: []cli.Flag{hostFlag},
		Action: func(c *cli.Context) error {
			if c.NArg() != 0 {
				return cliutil.Usage(c, "usage: migrated undrain [--host ADDR:PORT]")
			}
			cl, err := dialHost(c)
			if err != nil {
				return err
			}
			_, err = cl.Do(api.Request{Op: "undrain"})
			return err
		},
	}
}
