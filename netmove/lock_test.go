package netmove

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A lock table as CRIU 4.2.1 made it for run id
// 8008451e-740e-41f8-ad28-726dc99e3699 (seen by hand, connections changed
// to the test range).
const (
	testRunID = "8008451e-740e-41f8-ad28-726dc99e3699"
	testTable = "CRIU-8008451e-740e-41f8-ad"
	testRules = `table inet CRIU-8008451e-740e-41f8-ad {
	set conns4 {
		type ipv4_addr . inet_service . ipv4_addr . inet_service
		elements = { 10.78.9.1 . 35494 . 10.78.9.2 . 9999,
			     10.78.9.2 . 9999 . 10.78.9.1 . 35494 }
	}

	set conns6 {
		type ipv6_addr . inet_service . ipv6_addr . inet_service
	}

	chain output {
		type filter hook output priority filter; policy accept;
		meta mark 0x0000c114 accept
		ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop
		ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 drop
	}

	chain input {
		type filter hook input priority filter; policy accept;
		meta mark 0x0000c114 accept
		ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop
		ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 drop
	}
}
`
)

// inventory encodes an inventory image as CRIU writes it, with the fields
// CRIU 4.2.1 wrote before the run id (img_version, fdinfo_per_id, a nested
// message) so that the decoder has something to skip.
func inventory(runID string) []byte {
	var msg []byte
	msg = append(msg, 0x08, 0x02) // field 1 varint
	msg = append(msg, 0x10, 0x01) // field 2 varint
	msg = append(msg, 0x1a, 0x02, 0x08, 0x01)
	msg = append(msg, 0x65, 1, 2, 3, 4)             // field 12, 32-bit
	msg = append(msg, 0x59, 1, 2, 3, 4, 5, 6, 7, 8) // field 11, 64-bit
	msg = append(msg, runIDField<<3|2, byte(len(runID)))
	msg = append(msg, runID...)
	b := binary.LittleEndian.AppendUint32(nil, inventoryMagic)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(msg)))
	return append(b, msg...)
}

func TestParseRunID(t *testing.T) {
	if got, err := parseRunID(inventory(testRunID)); err != nil || got != testRunID {
		t.Errorf("parseRunID = %q, %v; want %q", got, err, testRunID)
	}
	withCommon := append(binary.LittleEndian.AppendUint32(nil, imgCommonMagic), inventory(testRunID)...)
	if got, err := parseRunID(withCommon); err != nil || got != testRunID {
		t.Errorf("parseRunID(common magic first) = %q, %v", got, err)
	}
	noID := inventory("")
	noID = noID[:len(noID)-2] // drop the empty run id field
	binary.LittleEndian.PutUint32(noID[4:], uint32(len(noID)-8))
	for name, b := range map[string][]byte{
		"empty":      nil,
		"bad magic":  append([]byte{1, 2, 3, 4}, inventory(testRunID)[4:]...),
		"truncated":  inventory(testRunID)[:20],
		"no run id":  noID,
		"bad run id": inventory("x; rm -rf /"),
	} {
		if got, err := parseRunID(b); err == nil {
			t.Errorf("%s: parseRunID = %q, want an error", name, got)
		}
	}
}

func FuzzParseRunID(f *testing.F) {
	f.Add(inventory(testRunID))
	f.Add(inventory(""))
	f.Add([]byte{0x16, 0x31, 0x31, 0x58, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := parseRunID(b)
		if err == nil && !runIDPattern().MatchString(id) {
			t.Fatalf("accepted run id %q", id)
		}
	})
}

func TestCheckLock(t *testing.T) {
	if got, err := CheckLock(testRules); err != nil || got != testTable {
		t.Fatalf("CheckLock(CRIU's table) = %q, %v", got, err)
	}
	for name, rules := range map[string]string{
		"empty":          "",
		"other table":    strings.Replace(testRules, "CRIU-", "filter-", 1),
		"other family":   strings.Replace(testRules, "inet CRIU", "ip CRIU", 1),
		"trailing table": testRules + "table inet other {\n}\n",
		"flush":          testRules + "flush ruleset\n",
		"nested flush":   strings.Replace(testRules, "meta mark", "flush ruleset\n\t\tmeta mark", 1),
		"include":        strings.Replace(testRules, "meta mark", "include \"/etc/x\"\n\t\tmeta mark", 1),
		"unbalanced":     strings.TrimSuffix(strings.TrimSpace(testRules), "}"),
		"extra brace":    testRules + "}\n",
	} {
		if got, err := CheckLock(rules); err == nil {
			t.Errorf("%s: CheckLock = %q, want an error", name, got)
		}
	}
}

// TestLockRoundTrip installs a table like CRIU's in one namespace, finds it
// from a dump's inventory, copies it to another and removes both copies.
func TestLockRoundTrip(t *testing.T) {
	tn := newTestNet(t, 6)
	images := t.TempDir()
	if err := os.WriteFile(filepath.Join(images, "inventory.img"), inventory(testRunID), 0o600); err != nil {
		t.Fatal(err)
	}
	var rules string
	mustIn(t, tn.a, func() error {
		// Before the dump locked anything: no table, nothing to export.
		if _, err := LockName(images); !errors.Is(err, ErrNoLock) {
			t.Errorf("LockName without a table: %v, want ErrNoLock", err)
		}
		if got, err := ExportLock(testTable); got != "" || err != nil {
			t.Errorf("ExportLock(absent) = %q, %v; want \"\", nil", got, err)
		}
		// The source's lock, as CRIU leaves it (plus an unrelated table
		// with the same prefix, which must not be mistaken for it).
		if err := ImportLock(testRules); err != nil {
			return err
		}
		if _, err := nft(strings.NewReader("table inet CRIU-12345 {\n}\n"), "-f", "-"); err != nil {
			return err
		}
		name, err := LockName(images)
		if err != nil || name != testTable {
			t.Errorf("LockName = %q, %v; want %q", name, err, testTable)
		}
		if rules, err = ExportLock(testTable); err != nil {
			return err
		}
		if !strings.Contains(rules, "10.78.9.1 . 35494 . 10.78.9.2 . 9999") {
			t.Errorf("exported lock lacks the connection:\n%s", rules)
		}
		// Removing twice is fine; the other table stays.
		for range 2 {
			if err := DeleteLock(testTable); err != nil {
				t.Errorf("DeleteLock: %v", err)
			}
		}
		if ok, _ := hasLockTable(testTable); ok {
			t.Errorf("table still there after DeleteLock")
		}
		if ok, _ := hasLockTable("CRIU-12345"); !ok {
			t.Errorf("DeleteLock removed another table")
		}
		return nil
	})
	mustIn(t, tn.b, func() error {
		// Importing twice replaces, it does not duplicate rules.
		for range 2 {
			if err := ImportLock(rules); err != nil {
				return err
			}
		}
		got, err := ExportLock(testTable)
		if err != nil {
			return err
		}
		if got != rules {
			t.Errorf("imported lock differs:\n got %s\nwant %s", got, rules)
		}
		if err := DeleteLock(testTable); err != nil {
			return err
		}
		if err := ImportLock("flush ruleset\n"); err == nil {
			t.Errorf("ImportLock(flush ruleset): no error")
		}
		if err := DeleteLock("inet filter"); err == nil {
			t.Errorf("DeleteLock(bad name): no error")
		}
		return nil
	})
}

// TestLocksHolding finds a lock table by the connections it blocks, as the
// undo of a dump whose CRIU was killed before it wrote its inventory must:
// the table of this connection (either way round), not another CRIU table
// beside it, nor an empty one; an IPv6 connection in conns6 too.
func TestLocksHolding(t *testing.T) {
	tn := newTestNet(t, 7)
	conn := func(l, r string) Conn { return Conn{netip.MustParseAddrPort(l), netip.MustParseAddrPort(r)} }
	other := strings.NewReplacer(testTable, "CRIU-0badc0de-0000-4000-8000-00", "35494", "41000",
		"set conns6 {\n\t\ttype ipv6_addr . inet_service . ipv6_addr . inet_service\n\t}",
		"set conns6 {\n\t\ttype ipv6_addr . inet_service . ipv6_addr . inet_service\n\t\telements = { fd00::1 . 5000 . fd00::2 . 6000 }\n\t}").Replace(testRules)
	mustIn(t, tn.a, func() error {
		for _, rules := range []string{testRules, other} {
			if err := ImportLock(rules); err != nil {
				return err
			}
		}
		if _, err := nft(strings.NewReader("table inet CRIU-12345 {\n}\n"), "-f", "-"); err != nil {
			return err
		}
		for _, c := range []struct {
			conns []Conn
			want  string
		}{
			{[]Conn{conn("10.78.9.1:35494", "10.78.9.2:9999")}, testTable},
			{[]Conn{conn("10.78.9.2:9999", "10.78.9.1:35494")}, testTable},
			{[]Conn{conn("10.78.9.1:35495", "10.78.9.2:9999"), conn("10.78.9.1:41000", "10.78.9.2:9999")}, "CRIU-0badc0de-0000-4000-8000-00"},
			{[]Conn{conn("[fd00::2]:6000", "[fd00::1]:5000")}, "CRIU-0badc0de-0000-4000-8000-00"},
			{[]Conn{conn("10.78.9.1:1", "10.78.9.2:9999")}, ""},
			{nil, ""},
		} {
			got, err := LocksHolding(c.conns)
			if err != nil {
				return err
			}
			if strings.Join(got, ",") != c.want {
				t.Errorf("LocksHolding(%v) = %v, want %q", c.conns, got, c.want)
			}
		}
		return nil
	})
}
