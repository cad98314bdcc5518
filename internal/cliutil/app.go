package cliutil

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/urfave/cli/v2"

	"dsmigrate/internal/api"
)

// Exit statuses the project's commands share (docs/cli.md lists them).
const (
	ExitFailure     = 1 // the command failed
	ExitUsage       = 2 // the command line is wrong: nothing was done
	ExitNotFound    = 3 // no such process, job or rank
	ExitRefused     = 4 // the migration did not happen: the process runs on its source as before
	ExitLost        = 5 // the process is lost
	ExitUnreachable = 6 // a daemon could not be reached or did not answer
)

// ExitCode is the exit status that err's kind (api.KindOf) calls for.
func ExitCode(err error) int {
	switch api.KindOf(err) {
	case api.KindNotFound:
		return ExitNotFound
	case api.KindRefused:
		return ExitRefused
	case api.KindLost:
		return ExitLost
	case api.KindUnreachable:
		return ExitUnreachable
	}
	return ExitFailure
}

// Version is the version of the running binary: the commit it was built
// from (with "-dirty" if the tree had changes), as Go's build information
// records it, and the Go release.
func Version() string {
	v := "devel"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	} else if rev != "" {
		v = rev[:min(12, len(rev))] + dirty
	}
	return v + " (" + bi.GoVersion + ")"
}

// Usage is a wrong command line for the command of c: said in one line,
// with where to read the usage, and exit status 2.
func Usage(c *cli.Context, format string, args ...any) error {
	name := c.App.Name
	if c.Command != nil && c.Command.Name != "" {
		name += " " + c.Command.Name
	}
	return cli.Exit(fmt.Sprintf(format, args...)+"\n"+helpHint(name), ExitUsage)
}

func helpHint(name string) string { return fmt.Sprintf("Run '%s --help' for usage.", name) }

// Setup gives app what users of command-line tools expect of it: --version,
// a help command (`help`, `help COMMAND`), and usage errors (an unknown
// command, an unknown or malformed flag) told in one line with a pointer to
// the usage and exit status 2, instead of the whole help text.
func Setup(app *cli.App) {
	app.Version = Version()
	app.HideHelpCommand = false
	enableCompletion(app)
	app.CommandNotFound = func(c *cli.Context, name string) {
		fmt.Fprintf(errWriter(app), "%s: unknown command %q\n%s\n", app.Name, name, helpHint(app.Name))
		cli.OsExiter(ExitUsage)
	}
	onUsage := func(c *cli.Context, err error, _ bool) error {
		name := app.Name
		if c != nil && c.Command != nil && c.Command.Name != "" {
			name = app.Name + " " + c.Command.Name
		}
		return cli.Exit(fmt.Sprintf("%v\n%s", err, helpHint(name)), ExitUsage)
	}
	app.OnUsageError = onUsage
	// Errors come back from Run to Main, which says them once.
	app.ExitErrHandler = func(*cli.Context, error) {}
	var walk func(cmds []*cli.Command)
	walk = func(cmds []*cli.Command) {
		for _, c := range cmds {
			c.OnUsageError = onUsage
			// Without this urfave/cli gives each command a "help"
			// subcommand, and takes its first argument for a command.
			c.HideHelpCommand = true
			requireFlags(app, c)
			walk(c.Subcommands)
		}
	}
	walk(app.Commands)
}

// requireFlags checks c's required flags itself: urfave/cli prints the
// command's whole help before saying which one is missing.
func requireFlags(app *cli.App, c *cli.Command) {
	var names []string
	for _, f := range c.Flags {
		switch f := f.(type) {
		case *cli.StringFlag:
			if f.Required {
				f.Required = false
				names = append(names, f.Name)
			}
		case *cli.IntFlag:
			if f.Required {
				f.Required = false
				names = append(names, f.Name)
			}
		}
	}
	if len(names) == 0 {
		return
	}
	before := c.Before
	c.Before = func(ctx *cli.Context) error {
		for _, n := range names {
			if !ctx.IsSet(n) {
				return cli.Exit(fmt.Sprintf("missing --%s\n%s", n, helpHint(app.Name+" "+c.Name)), ExitUsage)
			}
		}
		if before != nil {
			return before(ctx)
		}
		return nil
	}
}

func errWriter(app *cli.App) io.Writer {
	if app.ErrWriter != nil {
		return app.ErrWriter
	}
	return os.Stderr
}

// Main runs app on args (Permute puts the flags where urfave/cli wants
// them) and exits: 0 on success, else with the error's exit status (see
// the Exit constants), after "NAME: ERROR" on standard error.
func Main(app *cli.App, args []string) {
	err := app.Run(Permute(app, args))
	if err == nil {
		os.Exit(0)
	}
	code := ExitCode(err)
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		code = ec.ExitCode()
	}
	if msg := err.Error(); msg != "" {
		fmt.Fprintf(errWriter(app), "%s: %s\n", app.Name, msg)
	}
	os.Exit(code)
}

// CountWriter passes writes on to W and counts the bytes it took (a log
// followed from an offset goes on from Offset+N).
type CountWriter struct {
	W io.Writer
	N int64
}

func (c *CountWriter) Write(b []byte) (int, error) {
	n, err := c.W.Write(b)
	c.N += int64(n)
	return n, err
}
