package wire

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"syscall"
)

// MinTokenLen is the minimum length of a token, after trimming whitespace.
const MinTokenLen = 16

// maxTokenFile bounds how much of a token file is read.
const maxTokenFile = 4096

// LoadToken reads the shared secret from the token file at path. The file must
// be a regular file owned by the effective user (root, for the daemons) and
// not accessible to group or other, and hold one token of at least
// MinTokenLen bytes after trimming surrounding whitespace, or, during a
// rotation, two on separate lines: both are accepted from peers, and the
// handshake proves knowledge of both, so hosts that hold either one, or
// both, talk to each other. To rotate: add the new token as a second line on
// every host and restart (or reload) each daemon, then remove the old line
// on every host the same way. Processes keep running across daemon restarts.
func LoadToken(path string) ([]byte, error) {
	// O_NONBLOCK so that a FIFO planted at path cannot block the open; it has
	// no effect on regular files. Stat the opened file, not the path, so the
	// checks apply to what is read.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("loading token: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("loading token: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("loading token: %s is not a regular file (%s)", path, fi.Mode().Type())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("loading token: %s is owned by uid %d, not by uid %d: chown %d %s",
			path, st.Uid, os.Geteuid(), os.Geteuid(), path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("loading token: %s has mode %04o, readable by others: chmod 600 %s", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return nil, fmt.Errorf("loading token: %w", err)
	}
	if len(data) > maxTokenFile {
		return nil, fmt.Errorf("loading token: %s is larger than %d bytes", path, maxTokenFile)
	}
	lines := tokenLines(data)
	if len(lines) > MaxTokens {
		return nil, fmt.Errorf("loading token: %s has %d lines: a token file holds one token, or two during a rotation", path, len(lines))
	}
	if len(lines) == 0 {
		lines = [][]byte{nil}
	}
	for _, l := range lines {
		if len(l) < MinTokenLen {
			return nil, fmt.Errorf("loading token: %s has %d bytes, need %d: token too short: generate one with `head -c 32 /dev/urandom | base64 > %s`",
				path, len(l), MinTokenLen, path)
		}
	}
	return bytes.Join(lines, []byte("\n")), nil
}

// tokenLines returns the tokens in b: its non-empty lines, trimmed.
func tokenLines(b []byte) [][]byte {
	var lines [][]byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if l = bytes.TrimSpace(l); len(l) > 0 {
			lines = append(lines, l)
		}
	}
	return lines
}
