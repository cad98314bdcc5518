// Package cliutil holds what the project's urfave/cli programs share.
package cliutil

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// Permute reorders args so that a command's flags come before its positional
// arguments. urfave/cli v2 stops parsing flags at the first positional
// argument, but users type `migrated logs ID --json` as readily as
// `migrated logs --json ID`. Everything after "--" is left alone.
func Permute(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := []string{args[0]}
	rest := args[1:]
	// Global flags come first, up to the command name.
	i := 0
	for i < len(rest) && strings.HasPrefix(rest[i], "-") && rest[i] != "--" {
		out = append(out, rest[i])
		if takesValue(app.Flags, rest[i]) && i+1 < len(rest) {
			i++
			out = append(out, rest[i])
		}
		i++
	}
	if i >= len(rest) {
		return out
	}
	cmd := app.Command(rest[i])
	out = append(out, rest[i])
	rest = rest[i+1:]
	if cmd == nil {
		return append(out, rest...)
	}
	for cmd.Subcommands != nil && len(rest) > 0 {
		sub := cmd.Command(rest[0])
		if sub == nil {
			break
		}
		out = append(out, rest[0])
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
			flags = append(flags, a)
			if takesValue(cmd.Flags, a) && j+1 < len(rest) {
				j++
				flags = append(flags, rest[j])
			}
			continue
		}
		pos = append(pos, a)
	}
	out = append(out, flags...)
	return append(out, pos...)
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
