package wire

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
)

// validFrames returns the encoding of a few frames under testConn's key.
func validFrames() []byte {
	var buf bytes.Buffer
	c := testConn(&buf)
	c.WriteMsg(1, []byte(`{"pid":42}`))
	c.WriteMsg(TypeData, bytes.Repeat([]byte("x"), 300))
	c.WriteMsg(TypeEnd, []byte{0, 0, 0, 0, 0, 0, 1, 44})
	c.WriteMsg(TypeError, nil)
	return buf.Bytes()
}

// FuzzReadMsg feeds arbitrary bytes to the frame decoder: it must fail
// cleanly, never panic, hang or return an oversize payload. Seeds are in
// testdata/fuzz/FuzzReadMsg and below; valid frames are sealed with
// testConn's fixed key, so the fuzzer can also mutate real ciphertext.
func FuzzReadMsg(f *testing.F) {
	valid := validFrames()
	f.Add(valid)
	f.Add(valid[:len(valid)/2])
	f.Add([]byte("\xff\xff\xff\xff\x01"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		c := testConn(bytes.NewBuffer(data))
		var err error
		for err == nil { // each frame consumes at least hdrLen+tagLen bytes
			var p []byte
			_, p, err = c.ReadMsg()
			if len(p) > MaxFrame {
				t.Fatalf("payload of %d bytes", len(p))
			}
		}
		if _, _, err2 := c.ReadMsg(); err2 != err {
			t.Fatalf("error not sticky: %v then %v", err, err2)
		}
		if err != io.EOF && len(data) == 0 {
			t.Fatalf("empty input: %v, want io.EOF", err)
		}

		// Whatever the input, sending it as a frame round-trips.
		if len(data) > 0 && len(data) <= MaxFrame {
			var buf bytes.Buffer
			c := testConn(&buf)
			if err := c.WriteMsg(data[0], data[1:]); err != nil {
				t.Fatal(err)
			}
			typ, p, err := c.ReadMsg()
			if err != nil || typ != data[0] || !bytes.Equal(p, data[1:]) {
				t.Fatalf("round trip: %#x %q %v", typ, p, err)
			}
		}
	})
}

func TestValidFramesDecode(t *testing.T) {
	c := testConn(bytes.NewBuffer(validFrames()))
	var types []byte
	for {
		typ, _, err := c.ReadMsg()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		types = append(types, typ)
	}
	if !bytes.Equal(types, []byte{1, TypeData, TypeEnd, TypeError}) {
		t.Fatalf("decoded types %x", types)
	}
}

// FuzzServerHandshake feeds a daemon's side of the handshake whatever anyone
// who can reach its port could send: it never panics, never accepts without
// the token, and never answers with anything that depends on the token
// before the peer proved it holds it.
func FuzzServerHandshake(f *testing.F) {
	hello := append([]byte("DSMW\x02C"), make([]byte, nonceLen+pubLen)...)
	f.Add(hello)
	f.Add(append(append([]byte(nil), hello...), append([]byte{1}, make([]byte, proofLen)...)...))
	f.Add(append(append([]byte(nil), hello...), append([]byte{200}, make([]byte, proofLen)...)...))
	f.Add([]byte("DSMW\x01C"))
	f.Fuzz(func(t *testing.T, in []byte) {
		a, b := net.Pipe()
		defer b.Close()
		got := make(chan []byte, 1)
		go func() {
			a.Write(in)
			a.Close()
		}()
		go func() {
			all, _ := io.ReadAll(a)
			got <- all
		}()
		if _, err := ServerContext(context.Background(), b, testToken); err == nil {
			t.Fatal("accepted a handshake without the token")
		}
		b.Close()
		if out := <-got; len(out) > helloLen && out[helloLen] == statusOK {
			t.Fatalf("answered status ok to %x", in)
		}
	})
}
