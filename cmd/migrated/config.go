package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"dsmigrate/internal/cliutil"
	"dsmigrate/internal/daemon"
)

// defaultConfig is the config file `migrated serve` reads when there is one
// and --config names none.
const defaultConfig = "/etc/migrated/migrated.conf"

// configKeys are the settings of `migrated serve` a config file may hold
// (docs/config.md), each named as its flag, with what its value must be.
var configKeys = []struct {
	name  string
	check func(string) error
}{
	{"listen", checkHostPort},
	{"advertise", checkHostPort},
	{"state-dir", checkPath},
	{"criu", checkPath},
	{"token-file", checkPath},
	{"images-size", checkImagesSize},
	{"keep-free", checkKeepFree},
	{"metrics", checkHostPort},
	{"http", daemon.CheckHTTPAddr},
	{"peers", func(s string) error { _, err := peerList(s); return err }},
	{"log-level", func(s string) error { _, err := logLevel(s); return err }},
	{"log-format", func(s string) error { _, err := logJSON(s); return err }},
}

// setting is one line of a config file.
type setting struct {
	key, value string
	line       int
}

// applyConfig reads the config file (--config, else defaultConfig if it
// exists) and gives each flag it sets the file's value, unless the command
// line or the environment set it. It returns the file read ("" if none).
// A wrong file is an error naming FILE:LINE, with exit status 2.
func applyConfig(c *cli.Context) (string, error) {
	path := c.String("config")
	if !c.IsSet("config") {
		path = defaultConfig
	}
	if path == "" {
		return "", nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !c.IsSet("config") {
		return "", nil
	}
	if err != nil {
		return "", cli.Exit(fmt.Sprintf("cannot read the config file: %v", err), cliutil.ExitUsage)
	}
	settings, err := parseConfig(path, data)
	if err != nil {
		return "", cli.Exit(err.Error(), cliutil.ExitUsage)
	}
	for _, s := range settings {
		if c.IsSet(s.key) {
			continue
		}
		if err := c.Set(s.key, s.value); err != nil {
			return "", cli.Exit(fmt.Sprintf("%s:%d: %s: %v", path, s.line, s.key, err), cliutil.ExitUsage)
		}
	}
	return path, nil
}

// parseConfig reads a config file: one KEY = VALUE a line, blank lines and
// lines starting with # ignored, a VALUE in double quotes taken as a Go
// string literal. Each key is one of configKeys, at most once, with a value
// its check accepts; the error says where and what is wrong in one line.
func parseConfig(path string, data []byte) ([]setting, error) {
	var out []setting
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%s:%d: %s", path, n, fmt.Sprintf(format, args...))
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, bad("want KEY = VALUE, got %q", line)
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		var check func(string) error
		var known []string
		for _, k := range configKeys {
			known = append(known, k.name)
			if k.name == key {
				check = k.check
			}
		}
		if check == nil {
			return nil, bad("unknown key %q (known: %s)", key, strings.Join(known, ", "))
		}
		if first, dup := seen[key]; dup {
			return nil, bad("%s is set twice (first on line %d)", key, first)
		}
		seen[key] = n
		if strings.HasPrefix(value, `"`) {
			v, err := strconv.Unquote(value)
			if err != nil {
				return nil, bad("%s: bad quoted value %s", key, value)
			}
			value = v
		}
		if value == "" {
			return nil, bad("%s has no value (leave the line out for the default)", key)
		}
		if err := check(value); err != nil {
			return nil, bad("%s: %v", key, err)
		}
		out = append(out, setting{key: key, value: value, line: n})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return out, nil
}

func checkHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if p, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || p == 0 {
		return fmt.Errorf("%q is not ADDR:PORT (e.g. 10.0.0.5:7077)", s)
	}
	return nil
}

// checkPath wants an absolute path: a daemon's working directory is
// nothing a config file should depend on.
func checkPath(s string) error {
	if !filepath.IsAbs(s) {
		return fmt.Errorf("%q is not an absolute path", s)
	}
	return nil
}

// checkImagesSize and checkKeepFree accept what the daemon does for
// --images-size and --keep-free (internal/daemon/admit.go).
func checkImagesSize(s string) error {
	if pct, ok := strings.CutSuffix(s, "%"); ok {
		if p, err := strconv.ParseFloat(pct, 64); err == nil && p > 0 && p <= 100 {
			return nil
		}
	} else if sizeOK(s) {
		return nil
	}
	return fmt.Errorf("%q is not a size such as 4G or 512M, nor a share of the RAM such as 50%%", s)
}

func checkKeepFree(s string) error {
	if s == "0" || sizeOK(s) {
		return nil
	}
	return fmt.Errorf("%q is not a size such as 256M or 1G, nor 0", s)
}

// sizeOK: a positive byte count with an optional K, M, G or T suffix.
func sizeOK(s string) bool {
	if n := len(s); n > 1 && strings.ContainsRune("kKmMgGtT", rune(s[n-1])) {
		s = s[:n-1]
	}
	v, err := strconv.ParseInt(s, 10, 64)
	return err == nil && v > 0
}

// peerList parses --peers: ADDR:PORT daemons, separated by commas.
func peerList(s string) ([]string, error) {
	var out []string
	for _, h := range strings.Split(s, ",") {
		if h = strings.TrimSpace(h); h == "" {
			continue
		}
		if err := checkHostPort(h); err != nil {
			return nil, fmt.Errorf("%q: %v", h, err)
		}
		out = append(out, h)
	}
	return out, nil
}
