// Package cliutil holds what the project's urfave/cli programs share.
package cliutil

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// Permute reorders args so that a command's flags come before its positional
// arguments, and the program's global flags before the command. urfave/cli
// v2 stops parsing flags at the first positional argument and knows global
// flags only before the command, but users type `migrated logs ID --json`
// as readily as `migrated logs --json ID`, and `migrated ps --socket S` as
// `migrated --socket S ps`. Everything after "--" is left alone.
func Permute(app *cli.App, args []string) []string {
	if out, ok := completionLast(app, args); ok {
		return out
	}
	if len(args) < 2 {
		return args
	}
	var globals []string
	rest := args[1:]
	// Global flags come first, up to the command name.
	i := 0
	for i < len(rest) && strings.HasPrefix(rest[i], "-") && rest[i] != "--" {
		globals = append(globals, rest[i])
		if takesValue(app.Flags, rest[i]) && i+1 < len(rest) {
			i++
			globals = append(globals, rest[i])
		}
		i++
	}
	if i >= len(rest) {
		return append([]string{args[0]}, globals...)
	}
	cmd := app.Command(rest[i])
	cmdPath := []string{rest[i]}
	rest = rest[i+1:]
	if cmd == nil {
		return append(append(append([]string{args[0]}, globals...), cmdPath...), rest...)
	}
	for cmd.Subcommands != nil && len(rest) > 0 {
		sub := cmd.Command(rest[0])
		if sub == nil {
			break
		}
		cmdPath = append(cmdPath, rest[0])
		cmd, rest = sub, rest[1:]
	}
	var flags, pos []string
	for j := 0; j < len(rest); j++ {
		a := rest[j]
		if a == "--" {
			pos = append(pos, rest[j:]...)
			break
		}
		if strings.HasPrefix(a, "-") && len(a) > 1 {
			fs := cmd.Flags
			if !hasFlag(cmd.Flags, a) && hasFlag(app.Flags, a) {
				fs = app.Flags // a global flag after the command
			}
			taken := []string{a}
			if takesValue(fs, a) && j+1 < len(rest) {
				j++
				taken = append(taken, rest[j])
			}
			if hasFlag(fs, a) && !hasFlag(cmd.Flags, a) {
				globals = append(globals, taken...)
			} else {
				flags = append(flags, taken...)
			}
			continue
		}
		pos = append(pos, a)
	}
	out := append([]string{args[0]}, globals...)
	out = append(out, cmdPath...)
	out = append(out, flags...)
	return append(out, pos...)
}

// hasFlag reports whether arg ("-x", "--name" or "--name=value") names one
// of flags.
func hasFlag(flags []cli.Flag, arg string) bool {
	name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return true
			}
		}
	}
	return false
}

// takesValue reports whether arg names a flag that takes a separate value
// ("--to ADDR" but not "--to=ADDR" or a boolean "--json").
func takesValue(flags []cli.Flag, arg string) bool {
	name := strings.TrimLeft(arg, "-")
	if strings.Contains(name, "=") {
		return false
	}
	for _, f := range flags {
		for _, n := range f.Names() {
			if n != name {
				continue
			}
			if bf, ok := f.(*cli.BoolFlag); ok && bf != nil {
				return false
			}
			return true
		}
	}
	return false
}
