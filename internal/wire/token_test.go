package wire

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestLoadToken(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // WriteFile honours umask
			t.Fatal(err)
		}
		return p
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	good := "  c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0Cg==\n"

	tests := []struct {
		name, path, wantErr string
	}{
		{"ok", file("ok", good, 0o600), ""},
		{"read-only ok", file("ro", good, 0o400), ""},
		{"missing", filepath.Join(dir, "nope"), "no such file"},
		{"group readable", file("g", good, 0o640), "chmod 600 " + filepath.Join(dir, "g")},
		{"world readable", file("o", good, 0o604), "chmod 600"},
		{"short", file("short", " 0123456789abcde \n", 0o600), "token too short: generate one with `head -c 32 /dev/urandom | base64 > "},
		{"empty", file("empty", "", 0o600), "token too short"},
		{"huge", file("huge", strings.Repeat("x", 5000), 0o600), "larger than"},
		{"directory", dir, "not a regular file"},
		{"fifo", fifo, "not a regular file"}, // and does not block
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := LoadToken(tt.path)
			if tt.wantErr == "" {
				if err != nil || string(tok) != strings.TrimSpace(good) {
					t.Fatalf("got %q, %v", tok, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}

	t.Run("rotation", func(t *testing.T) {
		next := "bmV4dC1uZXh0LW5leHQtbmV4dC1uZXh0LW5leHQK"
		tok, err := LoadToken(file("two", good+"\n  "+next+"  \n\n", 0o600))
		if err != nil || string(tok) != strings.TrimSpace(good)+"\n"+next {
			t.Fatalf("two tokens: got %q, %v", tok, err)
		}
		if _, err := LoadToken(file("three", good+next+"\n"+next+"\n", 0o600)); err == nil || !strings.Contains(err.Error(), "3 lines") {
			t.Fatalf("three tokens: %v", err)
		}
		if _, err := LoadToken(file("shortsecond", good+"short\n", 0o600)); err == nil || !strings.Contains(err.Error(), "too short") {
			t.Fatalf("a short second token: %v", err)
		}
	})

	t.Run("other owner", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to chown")
		}
		p := file("theirs", good, 0o600)
		if err := os.Chown(p, 12345, 12345); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadToken(p); err == nil || !strings.Contains(err.Error(), "chown 0 "+p) {
			t.Fatalf("got %v, want an ownership error", err)
		}
	})
}
