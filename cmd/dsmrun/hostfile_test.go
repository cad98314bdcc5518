package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestReadHostfile(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "hosts")
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := write("# the cluster\n\n10.0.0.1:7077 slots=2\n  10.0.0.2:7077\t# one slot\n[fd00::3]:7077 slots=3 # v6\n")
	hs, err := readHostfile(p)
	if err != nil {
		t.Fatal(err)
	}
	want := []hostSlots{{"10.0.0.1:7077", 2, 3}, {"10.0.0.2:7077", 1, 4}, {"[fd00::3]:7077", 3, 5}}
	if !slices.Equal(hs, want) {
		t.Fatalf("got %+v, want %+v", hs, want)
	}
	for _, tc := range []struct{ text, err string }{
		{"10.0.0.1:7077 slots=2\n10.0.0.2 slots=1\n", ":2: \"10.0.0.2\" is not a daemon's ADDR:PORT"},
		{"10.0.0.1:7077 slots=x\n", ":1: \"slots=x\": want slots=N"},
		{"10.0.0.1:7077 slots=0\n", ":1: \"slots=0\": want slots=N"},
		{"10.0.0.1:7077 4\n", ":1: \"4\": write slots=4"},
		{"10.0.0.1:7077 max_slots=4\n", ":1: \"max_slots=4\": want ADDR:PORT [slots=N]"},
		{"10.0.0.1:7077 slots=1 slots=2\n", ":1: \"10.0.0.1:7077 slots=1 slots=2\": one host a line"},
		{"10.0.0.1:7077\n\n10.0.0.1:7077 slots=2\n", ":3: 10.0.0.1:7077 is listed already on line 1"},
		{"10.0.0.1:99999\n", ":1: \"10.0.0.1:99999\" is not"},
		{"# nothing\n\n", " lists no host"},
	} {
		p := write(tc.text)
		_, err := readHostfile(p)
		if err == nil || !strings.Contains(err.Error(), p+tc.err) {
			t.Errorf("%q: error %v, want it to hold %q", tc.text, err, p+tc.err)
		}
	}
}

func TestPlaceBySlot(t *testing.T) {
	hs := []hostSlots{{"a:1", 2, 1}, {"b:1", 1, 2}, {"c:1", 1, 3}}
	got, err := placeBySlot(hs, 3, false)
	if want := []string{"a:1", "a:1", "b:1"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("3 ranks: %v %v, want %v", got, err, want)
	}
	if _, err := placeBySlot(hs, 5, false); err == nil || !strings.Contains(err.Error(), "has 4 slots on 3 hosts") {
		t.Errorf("5 ranks on 4 slots: %v", err)
	}
	got, err = placeBySlot(hs, 7, true)
	if want := []string{"a:1", "a:1", "b:1", "c:1", "a:1", "b:1", "c:1"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("7 ranks oversubscribed: %v %v, want %v", got, err, want)
	}
}

func TestHostsOnCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args string
		want bool
	}{
		{"run --hosts a:1 --hostfile f -- p", true},
		{"run --hostfile f -hosts=a:1 -- p", true},
		{"run --hostfile f -n 2 -- p --hosts x", false},
		{"run --hostfile f --hostsx 1", false},
	} {
		if got := hostsOnCommandLine(strings.Fields(tc.args)); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.args, got, tc.want)
		}
	}
}
