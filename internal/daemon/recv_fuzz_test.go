package daemon

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"dsmigrate/internal/wire"
)

// FuzzRecvImages feeds a target's image receiver whatever an authenticated
// source could send: any sequence of frames (file headers with any name and
// size, data, ends, errors). It must never panic, never write outside the
// images directory (or to the log's path), and end within its deadlines.
//
// The input is a list of frames: type (1 byte), payload length (2 bytes),
// payload.
func FuzzRecvImages(f *testing.F) {
	frame := func(typ byte, p string) []byte {
		b := []byte{typ, 0, 0}
		binary.LittleEndian.PutUint16(b[1:], uint16(len(p)))
		return append(b, p...)
	}
	end := func(n uint64) string { var b [8]byte; binary.BigEndian.PutUint64(b[:], n); return string(b[:]) }
	join := func(fs ...[]byte) []byte {
		var b []byte
		for _, x := range fs {
			b = append(b, x...)
		}
		return b
	}
	f.Add(join(frame(tFile, `{"name":"core-1.img","size":3}`), frame(wire.TypeData, "abc"), frame(wire.TypeEnd, end(3)), frame(tFilesDone, "")))
	f.Add(join(frame(tFile, `{"name":"../../etc/x","size":1}`), frame(wire.TypeData, "a")))
	f.Add(join(frame(tFile, `{"name":"@log","size":2}`), frame(wire.TypeData, "ab"), frame(wire.TypeEnd, end(2))))
	f.Add(join(frame(tFile, `{"name":"a","size":-5}`)))
	f.Add(join(frame(tFile, `{"name":"a","size":10}`), frame(wire.TypeData, "0123456789ABCDEF")))
	f.Add(join(frame(wire.TypeError, "no")))
	token := []byte("fuzz-token-0123456789abcdef")
	f.Fuzz(func(t *testing.T, in []byte) {
		root := t.TempDir()
		dir, logPath := filepath.Join(root, "images"), filepath.Join(root, "log")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		a, b := loopbackPair(t)
		go func() {
			wc, err := wire.Client(a, token)
			if err != nil {
				return
			}
			for len(in) >= 3 {
				n := int(binary.LittleEndian.Uint16(in[1:]))
				typ := in[0]
				in = in[3:]
				n = min(n, len(in))
				if wc.WriteMsg(typ, in[:n]) != nil {
					return
				}
				in = in[n:]
			}
			a.Close()
		}()
		wc, err := wire.Server(b, token)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		recvImages(ctx, wc, dir, logPath, 0)
		filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() && p != logPath && !strings.HasPrefix(p, dir+string(filepath.Separator)) {
				t.Fatalf("a file was written outside the images directory: %s", p)
			}
			return nil
		})
	})
}
