// Command migrated is the per-host migration daemon and its client.
//
//	migrated serve --listen ADDR:PORT --state-dir DIR [--criu PATH] [--token-file FILE] [--config FILE]
//	migrated run [--name NAME] [--json] -- CMD [ARG...]
//	migrated ps [--json]
//	migrated logs [-f] ID
//	migrated migrate ID --to ADDR:PORT [--move-ip CIDR] [--post-copy] [--timeout D] [--json]
//	migrated history [--json]
//	migrated kill ID
//	migrated check [--to ADDR:PORT] [--json]
//	migrated completion bash|zsh|fish | man
//
// Exit statuses and the --json schemas are in docs/cli.md.
//
// The daemon (package internal/daemon) owns the processes of its host: it
// starts them, dumps them with CRIU and restores the ones other daemons send
// it, with the migration engine of internal/migration. Each process has a
// supervisor of its own, a shim (`migrated shim`, package internal/shim), that
// is its parent and reaper and writes its output to its log; the shims outlive
// the daemon, and a restarted daemon finds them again. Clients talk to the
// local daemon over a unix socket every user can use (each sees and acts on
// its own processes, root on all); daemons talk to each other over TCP,
// authenticated with a shared token. This package is the
// command line: the client commands and the hidden helpers (shim, quiesce).
package main

import (
	"os"

	"github.com/urfave/cli/v2"

	"dsmigrate/internal/api"
	"dsmigrate/internal/cliutil"
)

func main() {
	app := &cli.App{
		Name:  "migrated",
		Usage: "live-migrate Linux processes between hosts with CRIU",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "socket", Value: api.DefaultSocket, EnvVars: []string{"MIGRATED_SOCKET"},
				Usage: "the local daemon's control socket"},
		},
		Commands: []*cli.Command{
			serveCommand(),
			runCommand(),
			psCommand(),
			logsCommand(),
			migrateCommand(),
			historyCommand(),
			checkCommand(),
			killCommand(),
			hostsCommand(),
			drainCommand(),
			undrainCommand(),
			cliutil.CompletionCommand(), cliutil.ManCommand(),
			quiesceCommand(),
			shimCommand(),
		},
	}
	cliutil.Setup(app)
	cliutil.Main(app, os.Args)
}
