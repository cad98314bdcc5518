package main

import (
	"os"
	"strconv"

	"github.com/urfave/cli/v2"

	"dsmigrate/criu"
	"dsmigrate/internal/cliutil"
	"dsmigrate/internal/daemon"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the daemon of this host",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Required: true, Usage: "ADDR:PORT for other daemons and remote clients " +
				"(a wildcard such as :7077 or 0.0.0.0:7077 needs --advertise)"},
			&cli.StringFlag{Name: "advertise", EnvVars: []string{"MIGRATED_ADVERTISE"},
				Usage: "ADDR:PORT the other daemons reach this one at, which it tells them to call back " +
					"(default: --listen, which must then name an address)"},
			&cli.StringFlag{Name: "state-dir", Required: true, Usage: "where processes, logs, images and the journal live"},
			&cli.StringFlag{Name: "criu", Value: "/usr/local/sbin/migrate-criu", EnvVars: []string{"MIGRATED_CRIU"},
				Usage: "the CRIU binary (>= 4.2; scripts/install-deps.sh installs one)"},
			&cli.StringFlag{Name: "token-file", EnvVars: []string{"MIGRATED_TOKEN_FILE"},
				Usage: "shared secret of the cluster's daemons; without it no migration is accepted"},
			&cli.StringFlag{Name: "images-size", Value: "50%",
				Usage: "bound of the tmpfs that arriving images pass through: a size (4G) or a share of the RAM (50%)"},
			&cli.StringFlag{Name: "keep-free", Value: "256M",
				Usage: "memory never given to arriving processes; a migration that would leave less is refused"},
		},
		Action: func(c *cli.Context) error {
			return daemon.New(daemon.Config{Listen: c.String("listen"), Advertise: c.String("advertise"),
				StateDir: c.String("state-dir"), CRIU: c.String("criu"), Socket: c.String("socket"),
				TokenFile: c.String("token-file"), ImagesSize: c.String("images-size"),
				KeepFree: c.String("keep-free")}).Serve(c.Context)
		},
	}
}

func quiesceCommand() *cli.Command {
	return &cli.Command{
		Name:      "quiesce",
		Usage:     "stop a process tree so that CRIU can dump it (run by the daemon)",
		ArgsUsage: "PID | --serve",
		Hidden:    true,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "serve", Usage: "read PIDs from stdin, one per line; answer each with ok or why not"},
		},
		Action: func(c *cli.Context) error {
			if c.Bool("serve") {
				return daemon.ServeQuiesce(os.Stdin, os.Stdout)
			}
			pid, err := strconv.Atoi(c.Args().First())
			if c.NArg() != 1 || err != nil || pid <= 0 {
				return cliutil.Usage(c, "usage: migrated quiesce PID")
			}
			return criu.Quiesce(pid)
		},
	}
}
