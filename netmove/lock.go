package netmove

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// ErrNoLock is returned by LockName when the dump's lock table is not in
// this network namespace (the dump did not lock, or the lock is gone).
var ErrNoLock = errors.New("no CRIU network lock table")

// nftTimeout bounds every nft run; the lock sits on the downtime path.
const nftTimeout = 10 * time.Second

// lockPrefix starts the name of every table CRIU's nftables lock creates.
const lockPrefix = "CRIU-"

// LockName returns the name of the table (in the inet family) that holds the
// network lock of the dump in imagesDir, e.g. "CRIU-8008451e-740e-41f8-ad".
// CRIU names it after the dump's run id, which it records in inventory.img,
// cut to fit its name buffer; the table that is a prefix of "CRIU-<run id>"
// is the one. ErrNoLock says no such table exists here.
func LockName(imagesDir string) (string, error) {
	runID, err := readRunID(filepath.Join(imagesDir, "inventory.img"))
	if err != nil {
		return "", err
	}
	tables, err := lockTables()
	if err != nil {
		return "", err
	}
	full := lockPrefix + runID
	for _, t := range tables {
		// Demand most of a UUID so that "CRIU-" and the like never match.
		if len(t) >= len(lockPrefix)+16 && strings.HasPrefix(full, t) {
			return t, nil
		}
	}
	return "", fmt.Errorf("dump in %s (run id %s): %w", imagesDir, runID, ErrNoLock)
}

// Conn is a TCP connection: this end's address and its peer's.
type Conn struct{ Local, Remote netip.AddrPort }

// LocksHolding returns the CRIU lock tables here whose connection sets name
// any of conns (CRIU locks each connection both ways, in sets conns4 and
// conns6). A dump's CRIU killed after it locked the connections and before
// it wrote its inventory (the dump's deadline, or its daemon's death) leaves
// a table that LockName cannot find; the connections stay blocked until it
// goes.
//
// Equivalent to: nft -j list sets inet, and a look at their elements.
func LocksHolding(conns []Conn) ([]string, error) {
	if len(conns) == 0 {
		return nil, nil
	}
	out, err := nft(nil, "-j", "list", "sets", "inet")
	if err != nil {
		return nil, fmt.Errorf("listing lock sets: %w", err)
	}
	return locksHolding([]byte(out), conns)
}

// locksHolding reads nft's JSON list of sets.
func locksHolding(js []byte, conns []Conn) ([]string, error) {
	var doc struct {
		Nftables []struct {
			Set *struct {
				Name  string            `json:"name"`
				Table string            `json:"table"`
				Elem  []json.RawMessage `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(js, &doc); err != nil {
		return nil, fmt.Errorf("nft's list of sets: %v", err)
	}
	want := map[[2]netip.AddrPort]bool{}
	for _, c := range conns {
		want[[2]netip.AddrPort{c.Local, c.Remote}] = true
		want[[2]netip.AddrPort{c.Remote, c.Local}] = true
	}
	var tables []string
	for _, x := range doc.Nftables {
		s := x.Set
		if s == nil || !lockName().MatchString(s.Table) || s.Name != "conns4" && s.Name != "conns6" ||
			slices.Contains(tables, s.Table) {
			continue
		}
		for _, e := range s.Elem {
			if k, ok := connElem(e); ok && want[k] {
				tables = append(tables, s.Table)
				break
			}
		}
	}
	return tables, nil
}

// connElem reads an element of a connection set as CRIU adds them (no
// options): {"concat": [addr, port, addr, port]}.
func connElem(e json.RawMessage) ([2]netip.AddrPort, bool) {
	var el struct {
		Concat []json.RawMessage `json:"concat"`
	}
	if json.Unmarshal(e, &el) != nil {
		return [2]netip.AddrPort{}, false
	}
	if len(el.Concat) != 4 {
		return [2]netip.AddrPort{}, false
	}
	var k [2]netip.AddrPort
	for i := range k {
		var a string
		var port uint16
		if json.Unmarshal(el.Concat[2*i], &a) != nil || json.Unmarshal(el.Concat[2*i+1], &port) != nil {
			return k, false
		}
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return k, false
		}
		k[i] = netip.AddrPortFrom(ip.Unmap(), port)
	}
	return k, true
}

// ExportLock returns the lock table as nft prints it, ready for ImportLock
// on another host; "" and no error if the table does not exist.
//
// Equivalent to: nft list table inet $table
func ExportLock(table string) (string, error) {
	if err := checkTableName(table); err != nil {
		return "", err
	}
	if ok, err := hasLockTable(table); err != nil || !ok {
		return "", err
	}
	out, err := nft(nil, "list", "table", "inet", table)
	if err != nil {
		return "", fmt.Errorf("exporting lock %s: %w", table, err)
	}
	return out, nil
}

// ImportLock installs a lock table exported by ExportLock, replacing a table
// of the same name in one transaction. Text that CheckLock refuses is never
// given to nft.
//
// Equivalent to: nft -f - <<<"$rules"
func ImportLock(rules string) error {
	table, err := CheckLock(rules)
	if err != nil {
		return err
	}
	// Declaring the table first makes the delete valid when it is absent.
	script := fmt.Sprintf("table inet %s\ndelete table inet %s\n%s\n", table, table, rules)
	if _, err := nft(strings.NewReader(script), "-f", "-"); err != nil {
		return fmt.Errorf("importing lock %s: %w", table, err)
	}
	return nil
}

// DeleteLock removes a lock table. A table that is not there is not an error.
//
// Equivalent to: nft delete table inet $table
func DeleteLock(table string) error {
	if err := checkTableName(table); err != nil {
		return err
	}
	// One nft run when the table is there, as it mostly is; a table that is
	// not (gone already, or deleted meanwhile by a restore) is no error.
	if _, err := nft(nil, "delete", "table", "inet", table); err != nil {
		if ok, err2 := hasLockTable(table); err2 == nil && !ok {
			return nil
		}
		return fmt.Errorf("deleting lock %s: %w", table, err)
	}
	return nil
}

// CheckLock checks that rules is one CRIU lock table as ExportLock prints it
// (so that importing it cannot touch anything else) and returns its name.
func CheckLock(rules string) (string, error) {
	lines := strings.Split(strings.TrimSpace(rules), "\n")
	m := lockHeader().FindStringSubmatch(lines[0])
	if m == nil {
		return "", fmt.Errorf("lock rules: want %q first, got %.60q", "table inet CRIU-... {", lines[0])
	}
	depth := 0
	for i, l := range lines {
		l = strings.TrimSpace(l)
		if i > 0 && depth == 0 {
			return "", fmt.Errorf("lock rules: line %d is outside the table", i+1)
		}
		for _, w := range strings.FieldsFunc(l, func(r rune) bool { return !isWordRune(r) }) {
			if i > 0 && slices.Contains(forbiddenWords, w) {
				return "", fmt.Errorf("lock rules: line %d: %q is not allowed", i+1, w)
			}
		}
		depth += strings.Count(l, "{") - strings.Count(l, "}")
		if depth < 0 {
			return "", fmt.Errorf("lock rules: unbalanced braces at line %d", i+1)
		}
	}
	if depth != 0 {
		return "", errors.New("lock rules: unbalanced braces")
	}
	return m[1], nil
}

var (
	lockHeader = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^table inet (` + lockPrefix + `[A-Za-z0-9_-]+) \{$`) })
	// forbiddenWords could reach outside the table or the file system.
	forbiddenWords = []string{"table", "include", "flush", "delete", "destroy", "reset", "define", "ruleset", "insert", "replace"}
)

func isWordRune(r rune) bool {
	return r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

func checkTableName(table string) error {
	if !lockName().MatchString(table) {
		return fmt.Errorf("bad lock table name %q: want %s...", table, lockPrefix)
	}
	return nil
}

var lockName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^` + lockPrefix + `[A-Za-z0-9_-]+$`) })

// lockTables lists the tables of the inet family whose name starts with
// lockPrefix.
//
// Equivalent to: nft list tables inet | grep ' CRIU-'
func lockTables() ([]string, error) {
	out, err := nft(nil, "list", "tables", "inet")
	if err != nil {
		return nil, fmt.Errorf("listing nftables tables: %w", err)
	}
	var tables []string
	for l := range strings.Lines(out) {
		f := strings.Fields(l) // "table inet NAME"
		if len(f) == 3 && f[0] == "table" && f[1] == "inet" && strings.HasPrefix(f[2], lockPrefix) {
			tables = append(tables, f[2])
		}
	}
	return tables, nil
}

func hasLockTable(table string) (bool, error) {
	tables, err := lockTables()
	if err != nil {
		return false, err
	}
	return slices.Contains(tables, table), nil
}

// nft runs the nft tool with a deadline and returns its standard output; a
// failure carries what nft wrote to standard error.
func nft(stdin *strings.Reader, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), nftTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nft", args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("nft %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
