package cliutil

import (
	"reflect"
	"testing"

	"github.com/urfave/cli/v2"
)

func TestPermute(t *testing.T) {
	app := &cli.App{
		Flags: []cli.Flag{&cli.StringFlag{Name: "socket"}},
		Commands: []*cli.Command{
			{Name: "migrate", Flags: []cli.Flag{&cli.StringFlag{Name: "to"}, &cli.StringFlag{Name: "move-ip"}}},
			{Name: "ps", Flags: []cli.Flag{&cli.BoolFlag{Name: "json"}}},
			{Name: "run", Flags: []cli.Flag{&cli.StringFlag{Name: "name"}}},
		},
	}
	for _, tc := range []struct{ in, want []string }{
		{[]string{"m", "migrate", "ID", "--to", "h:1"}, []string{"m", "migrate", "--to", "h:1", "ID"}},
		{[]string{"m", "migrate", "--to", "h:1", "ID"}, []string{"m", "migrate", "--to", "h:1", "ID"}},
		{[]string{"m", "migrate", "ID", "--to=h:1", "--move-ip", "10.0.0.1/24"},
			[]string{"m", "migrate", "--to=h:1", "--move-ip", "10.0.0.1/24", "ID"}},
		{[]string{"m", "ps", "--json"}, []string{"m", "ps", "--json"}},
		{[]string{"m", "--socket", "/s", "ps", "--json"}, []string{"m", "--socket", "/s", "ps", "--json"}},
		// After "--" nothing is a flag of ours.
		{[]string{"m", "run", "--name", "x", "--", "prog", "--to", "y"},
			[]string{"m", "run", "--name", "x", "--", "prog", "--to", "y"}},
		{[]string{"m", "run", "--", "prog", "--name", "y"}, []string{"m", "run", "--", "prog", "--name", "y"}},
		// A boolean flag takes no value: the ID stays positional.
		{[]string{"m", "ps", "--json", "extra"}, []string{"m", "ps", "--json", "extra"}},
		// Global flags anywhere: moved before the command.
		{[]string{"m", "ps", "--socket", "/s", "--json"}, []string{"m", "--socket", "/s", "ps", "--json"}},
		{[]string{"m", "migrate", "ID", "--socket=/s", "--to", "h:1"}, []string{"m", "--socket=/s", "migrate", "--to", "h:1", "ID"}},
		{[]string{"m", "run", "--", "prog", "--socket", "/s"}, []string{"m", "run", "--", "prog", "--socket", "/s"}},
	} {
		if got := Permute(app, tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Permute(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
