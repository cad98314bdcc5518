package main

import (
	"github.com/urfave/cli/v2"

	"dsmigrate/internal/shim"
)

// shimCommand is the supervisor of one process (package shim): the daemon
// starts it, hands it the process's spec on stdin, and it lives on when the
// daemon does not.
func shimCommand() *cli.Command {
	return &cli.Command{
		Name:   shim.Command,
		Usage:  "supervise one process: its parent, reaper and log writer (run by the daemon)",
		Hidden: true,
		// Read by shim.Main from the command line itself (shim.Prestart).
		Flags:  []cli.Flag{&cli.StringFlag{Name: "criu", Usage: "start this CRIU ahead of a restore spec"}},
		Action: func(c *cli.Context) error { return shim.Main() },
	}
}
