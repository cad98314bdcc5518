package main

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"dsmigrate/criu"
	"dsmigrate/internal/cliutil"
	"dsmigrate/internal/daemon"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the daemon of this host",
		Description: "Settings come from the command line, then the MIGRATED_* environment variables, then the " +
			"config file (--config; docs/config.md), then the defaults.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", EnvVars: []string{"MIGRATED_CONFIG"}, TakesFile: true,
				DefaultText: defaultConfig + ", read if present",
				Usage:       "file of serve's settings, one KEY = VALUE a line (docs/config.md); '' reads none"},
			&cli.StringFlag{Name: "listen", Usage: "ADDR:PORT for other daemons and remote clients " +
				"(a wildcard such as :7077 or 0.0.0.0:7077 needs --advertise); required, here or in the config file"},
			&cli.StringFlag{Name: "advertise", EnvVars: []string{"MIGRATED_ADVERTISE"},
				Usage: "ADDR:PORT the other daemons reach this one at, which it tells them to call back " +
					"(default: --listen, which must then name an address)"},
			&cli.StringFlag{Name: "state-dir", TakesFile: true,
				Usage: "where processes, logs, images and the journal live; required, here or in the config file"},
			&cli.StringFlag{Name: "criu", Value: "/usr/local/sbin/migrate-criu", EnvVars: []string{"MIGRATED_CRIU"},
				TakesFile: true, Usage: "the CRIU binary (>= 4.2; scripts/install-deps.sh installs one)"},
			&cli.StringFlag{Name: "token-file", EnvVars: []string{"MIGRATED_TOKEN_FILE"}, TakesFile: true,
				Usage: "shared secret of the cluster's daemons; without it no migration is accepted"},
			&cli.StringFlag{Name: "images-size", Value: "50%",
				Usage: "bound of the tmpfs that arriving images pass through: a size (4G) or a share of the RAM (50%)"},
			&cli.StringFlag{Name: "keep-free", Value: "256M",
				Usage: "memory never given to arriving processes; a migration that would leave less is refused"},
			&cli.StringFlag{Name: "metrics", Usage: "ADDR:PORT to serve Prometheus metrics on, at /metrics, " +
				"unauthenticated: an address only the monitoring reaches (docs/metrics.md); none without it"},
			&cli.StringFlag{Name: "http", Usage: "loopback ADDR:PORT (127.0.0.1:8077) to serve the live view of the " +
				"cluster on: its hosts, processes, DSM ranks and migrations; elsewhere through ssh -L (it has no " +
				"authentication of its own); none without it"},
			&cli.StringFlag{Name: "peers", EnvVars: []string{"MIGRATED_PEERS"}, Usage: "ADDR:PORT,... of the " +
				"cluster's daemons (this one's may be among them): placement picks among them for migrate without " +
				"--to, run --anywhere and drain (docs/placement.md)"},
			&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{"MIGRATED_LOG_LEVEL"},
				Usage: "least severe messages logged: debug (each migration step's time too), info, warn or error"},
			&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: []string{"MIGRATED_LOG_FORMAT"},
				Usage: "text (key=value) or json (one object a line), on standard error"},
		},
		Action: serve,
	}
}

// serve runs the daemon with its settings from the command line, the
// environment and the config file, and its log as --log-level and
// --log-format say.
func serve(c *cli.Context) error {
	path, err := applyConfig(c)
	if err != nil {
		return err
	}
	for _, name := range []string{"listen", "state-dir"} {
		if c.String(name) == "" {
			return cliutil.Usage(c, "missing --%s", name)
		}
	}
	if m := c.String("metrics"); m != "" {
		if err := checkHostPort(m); err != nil {
			return cliutil.Usage(c, "--metrics: %v", err)
		}
	}
	if h := c.String("http"); h != "" {
		if err := daemon.CheckHTTPAddr(h); err != nil {
			return cliutil.Usage(c, "%v", err)
		}
	}
	peers, err := peerList(c.String("peers"))
	if err != nil {
		return cliutil.Usage(c, "--peers: %v", err)
	}
	level, err := logLevel(c.String("log-level"))
	if err != nil {
		return cliutil.Usage(c, "--log-level: %v", err)
	}
	json, err := logJSON(c.String("log-format"))
	if err != nil {
		return cliutil.Usage(c, "--log-format: %v", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	var log *slog.Logger
	if json {
		log = slog.New(slog.NewJSONHandler(os.Stderr, opts))
	} else {
		log = slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	log.Info("starting", "version", cliutil.Version(), "config", cmp.Or(path, "none"))
	err = daemon.New(daemon.Config{Listen: c.String("listen"), Advertise: c.String("advertise"),
		StateDir: c.String("state-dir"), CRIU: c.String("criu"), Socket: c.String("socket"),
		TokenFile: c.String("token-file"), ImagesSize: c.String("images-size"),
		KeepFree: c.String("keep-free"), Log: log,
		Metrics: c.String("metrics"), Peers: peers, HTTP: c.String("http")}).Serve(c.Context)
	if err != nil && json {
		// A log read by machines gets the reason the daemon stopped as
		// one more object, not as a line of text among them.
		log.Error("stopped", "err", err.Error())
		code := cliutil.ExitCode(err)
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			code = ec.ExitCode()
		}
		return cli.Exit("", code)
	}
	return err
}

// logLevel parses --log-level.
func logLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%q is not a level: want debug, info, warn or error", s)
}

// logJSON parses --log-format: whether it is json.
func logJSON(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "text":
		return false, nil
	case "json":
		return true, nil
	}
	return false, fmt.Errorf("%q is not a format: want text or json", s)
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
