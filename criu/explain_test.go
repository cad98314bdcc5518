package criu

import (
	"errors"
	"strings"
	"testing"
)

// Each conflict CRIU's log names becomes one sentence that says what to do;
// anything else, and any dump, stays CRIU's own error.
func TestExplain(t *testing.T) {
	dir := t.TempDir() // no files.img: the port cannot be named
	for _, tc := range []struct {
		op, line, want string
	}{
		{"restore", "(00.003448)      2: Error (criu/sk-inet.c:1059): inet: Can't bind inet socket (id 9): Address already in use",
			"a port the process listens on is in use on the target"},
		{"restore", "(00.01) Error (criu/cr-restore.c:1): Can't fork for 4242: File exists", "pid 4242 is taken on the target"},
		{"restore", "(00.03) 1: Error (criu/files-reg.c:2175): File tmp/x/log has bad size 54 (expect 0)",
			"the file /tmp/x/log differs on the target from the source's (54 bytes on the target, 0 on the source)"},
		{"restore", "(00.03) 1: Error (criu/files-reg.c:2101): Can't open file srv/data on restore: No such file or directory",
			"the file /srv/data that the process has open is missing on the target"},
		{"restore", "(00.04) Error (criu/cr-restore.c:2331): Restoring FAILED.", ""},
		{"dump", "(00.01) Error (criu/cr-restore.c:1): Can't fork for 4242: File exists", ""},
	} {
		orig := &Error{Op: tc.op, Log: []string{"(00.0) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE", tc.line}}
		err := Explain(orig, dir)
		ce, ok := errors.AsType[*ConflictError](err)
		if tc.want == "" {
			if ok || err != orig {
				t.Errorf("%s %q: got %v, want CRIU's error as it was", tc.op, tc.line, err)
			}
			continue
		}
		if !ok || !strings.HasPrefix(ce.Msg, tc.want) || strings.Contains(ce.Msg, "\n") || ce.Cause != orig {
			t.Errorf("%q: got %v, want one sentence starting %q with CRIU's error as its cause", tc.line, err, tc.want)
		}
	}
	if err := Explain(errors.New("plain"), dir); err.Error() != "plain" {
		t.Errorf("a non-CRIU error came back as %v", err)
	}
}
