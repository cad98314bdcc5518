package criu

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
)

// ConflictError is a restore that failed for a reason of the host it ran on,
// not of the process: something there holds what the process needs, or lacks
// it. Its message is one sentence saying what and what to do; Cause keeps
// CRIU's own report for the log.
type ConflictError struct {
	Msg   string
	Cause *Error
}

func (e *ConflictError) Error() string { return e.Msg }
func (e *ConflictError) Unwrap() error { return e.Cause }

// The lines of CRIU's log (4.2) that name a conflict with the host.
var (
	bindInUse = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`Can't bind inet socket \(id (\d+)\): Address already in use`)
	})
	pidTaken = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`Can't fork for (\d+): File exists`) })
	badSize  = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`File (\S+) has bad size (\d+) \(expect (\d+)\)`) })
	noFile   = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`Can't open file (\S+) on restore: No such file or directory`)
	})
)

// Explain turns a failed restore of the images in dir into a *ConflictError
// when CRIU's log names a conflict with the host: a port in use, a pid taken,
// a file missing or different. Any other error comes back as it is.
func Explain(err error, dir string) error {
	ce, ok := errors.AsType[*Error](err)
	if !ok || ce.Op != "restore" {
		return err
	}
	conflict := func(format string, args ...any) error {
		return &ConflictError{Msg: fmt.Sprintf(format, args...), Cause: ce}
	}
	for _, l := range ce.Log {
		if m := bindInUse().FindStringSubmatch(l); m != nil {
			id, _ := strconv.ParseUint(m[1], 10, 32)
			if port, proto := socketPort(dir, uint32(id)); port != 0 {
				return conflict("port %d (%s) is in use on the target: a process there listens on it; "+
					"free the port there or move the process to another host", port, proto)
			}
			return conflict("a port the process listens on is in use on the target; " +
				"free it there or move the process to another host")
		}
		if m := pidTaken().FindStringSubmatch(l); m != nil {
			return conflict("pid %s is taken on the target, and the process has no pid namespace of its own "+
				"(it was started by a migrated older than pid namespaces): restart it under this migrated", m[1])
		}
		if m := badSize().FindStringSubmatch(l); m != nil {
			return conflict("the file /%s differs on the target from the source's (%s bytes on the target, %s on the source): "+
				"every host needs the same files at the same paths", m[1], m[2], m[3])
		}
		if m := noFile().FindStringSubmatch(l); m != nil {
			return conflict("the file /%s that the process has open is missing on the target: "+
				"every host needs the same files at the same paths", m[1])
		}
	}
	return err
}

// socketPort finds the inet socket id in the image set's files.img: its
// local port and protocol, or 0.
func socketPort(dir string, id uint32) (uint32, string) {
	socks, err := inetSockets(filepath.Join(dir, "files.img"))
	if err != nil {
		return 0, ""
	}
	for _, s := range socks {
		if s.id != id {
			continue
		}
		proto := "tcp"
		if s.proto == 17 { // IPPROTO_UDP
			proto = "udp"
		}
		return s.srcPort, proto
	}
	return 0, ""
}
