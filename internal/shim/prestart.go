package shim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"dsmigrate/criu"
)

// The shim's side of Prestart. A shim started ahead of its spec (a migration's
// target starts one when it accepts the migration, while the pages are still
// on their way) does what it can before the spec comes: its own start-up
// (a Go binary of this size takes ~50 ms to reach Main on a loaded host),
// and, given --criu, the output pipe and the `criu swrk` that will restore
// (another 10-20 ms). A restore spec then only sends CRIU its request.

// maxSpec bounds the spec a shim reads (an Env of a few hundred KiB is
// already unusual).
const maxSpec = 16 << 20

// early is what a prestarted shim made before its spec came.
type early struct {
	criu   string
	r, w   *os.File // the output pipe
	worker *criu.Worker
}

// criuArg is the value of --criu after the shim command in args, if any.
func criuArg(args []string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == criuFlag {
			return args[i+1]
		}
	}
	return ""
}

// prepare makes the output pipe and starts CRIU holding its write end.
func prepare(criuPath string) (*early, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	wk, err := criu.New(criuPath).StartWorker([]*os.File{w})
	if err != nil {
		r.Close()
		w.Close()
		return nil, err
	}
	return &early{criu: criuPath, r: r, w: w, worker: wk}, nil
}

// close gives up what prepare made. nil-safe.
func (e *early) close() {
	if e == nil {
		return
	}
	e.worker.Close()
	e.r.Close()
	e.w.Close()
}

// forRestore is the worker to restore with, if it runs the CRIU rs names;
// otherwise it is stopped and nil returned.
func (e *early) forRestore(rs *RestoreSpec) *criu.Worker {
	if e == nil {
		return nil
	}
	if rs == nil || rs.CRIU != e.criu {
		e.worker.Close()
		return nil
	}
	return e.worker
}

// readSpec reads the spec, one JSON line, from the shim's stdin: a unix
// stream socket whose first byte may carry a descriptor (RestoreSpec.Hold),
// which is returned, close-on-exec, as a bare descriptor (-1 if none). A
// stdin that is not a socket is read as a plain stream.
func readSpec(in *os.File) (Spec, int, error) {
	var spec Spec
	hold := -1
	fd := int(in.Fd())
	var msg []byte
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*4))
	plain := false
	for len(msg) == 0 || msg[len(msg)-1] != '\n' {
		var n int
		var err error
		if plain {
			n, err = in.Read(buf)
		} else {
			var oobn int
			n, oobn, _, _, err = unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
			if errors.Is(err, unix.ENOTSOCK) {
				plain = true
				continue
			}
			if err == nil && oobn > 0 {
				hold = takeRights(oob[:oobn], hold)
			}
			if err == nil && n == 0 {
				err = io.EOF
			}
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			if len(msg) > 0 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return spec, hold, err
		}
		msg = append(msg, buf[:n]...)
		if len(msg) > maxSpec {
			return spec, hold, fmt.Errorf("a spec of more than %d bytes", maxSpec)
		}
	}
	if err := json.NewDecoder(bytes.NewReader(msg)).Decode(&spec); err != nil {
		return spec, hold, err
	}
	return spec, hold, nil
}

// takeRights keeps the first descriptor of the control messages in oob (hold
// if one was kept already) and closes any other.
func takeRights(oob []byte, hold int) int {
	cms, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return hold
	}
	for _, cm := range cms {
		fds, err := unix.ParseUnixRights(&cm)
		if err != nil {
			continue
		}
		for _, f := range fds {
			if hold < 0 {
				hold = f
			} else {
				unix.Close(f)
			}
		}
	}
	return hold
}
