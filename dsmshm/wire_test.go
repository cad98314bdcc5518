package dsmshm

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"reflect"
	"testing"
	"time"
)

func sampleMessages() []*message {
	return []*message{
		{Type: mLockReq, ID: 7},
		{Type: mLockGrant, ID: 7, Notices: []notice{{1, 2, 3}, {4, 5, 6}}},
		{Type: mUnlock, ID: -2, Notices: []notice{}},
		{Type: mBarrierEnter, ID: -1, Check: 99, Notices: []notice{{0, 1, 2}}},
		{Type: mBarrierExit, ID: 4, Err: "ranks disagree", Notices: []notice{}},
		{Type: mBarrierEnter, ID: -2, Check: 5, Err: "segment too large", Kind: refusedTooLarge, Notices: []notice{}},
		{Type: mDiffBatch, ID: 11, Diffs: []diff{{Seg: 1, Page: 2, Data: []byte{0, 0, 1, 0, 9}}}},
		{Type: mDiffAck, ID: 11, Acks: []ack{{1, 2, 3, 4}}},
		{Type: mBye},
	}
}

// sessionPair returns the two ends of a session, keyed as a handshake
// would key them.
func sessionPair(enc bool) (client, server *session) {
	var k1, k2 [secKeyLen]byte
	rand.Read(k1[:])
	rand.Read(k2[:])
	return newSession(enc, k1[:], k2[:]), newSession(enc, k2[:], k1[:])
}

func TestFrameRoundTrip(t *testing.T) {
	cl, srv := sessionPair(false)
	for i, m := range sampleMessages() {
		frame := appendFrame(nil, uint64(i+1), m)
		body, err := srv.readSealed(bytes.NewReader(cl.seal(nil, frame)), nil)
		if err != nil {
			t.Fatalf("%v: %v", m.Type, err)
		}
		seq, got, err := decodeFrame(body)
		if err != nil || seq != uint64(i+1) {
			t.Fatalf("%v: seq %d err %v", m.Type, seq, err)
		}
		if !reflect.DeepEqual(normalize(got), normalize(m)) {
			t.Errorf("%v: got %+v, want %+v", m.Type, got, m)
		}
	}
}

// normalize makes nil and empty slices compare equal.
func normalize(m *message) message {
	c := *m
	if len(c.Notices) == 0 {
		c.Notices = nil
	}
	if len(c.Diffs) == 0 {
		c.Diffs = nil
	}
	if len(c.Acks) == 0 {
		c.Acks = nil
	}
	return c
}

func TestDecodeRejectsBadFrames(t *testing.T) {
	good := appendFrame(nil, 1, &message{Type: mLockGrant, ID: 1, Notices: []notice{{1, 1, 1}}})[4:]
	for cut := range len(good) {
		if _, _, err := decodeFrame(good[:cut]); !errors.Is(err, errMalformed) {
			t.Fatalf("truncated to %d bytes: %v, want errMalformed", cut, err)
		}
	}
	if _, _, err := decodeFrame(append(append([]byte(nil), good...), 0)); !errors.Is(err, errMalformed) {
		t.Fatalf("trailing byte: %v", err)
	}
	// A count claiming more notices than the frame can hold.
	forged := append([]byte(nil), good...)
	binary.LittleEndian.PutUint32(forged[8+1+8:], 1<<30)
	if _, _, err := decodeFrame(forged); !errors.Is(err, errMalformed) {
		t.Fatalf("forged count: %v", err)
	}
	unknown := appendFrame(nil, 1, &message{Type: mLockReq})[4:]
	unknown[8] = 200
	if _, _, err := decodeFrame(unknown); !errors.Is(err, errMalformed) {
		t.Fatalf("unknown type: %v", err)
	}
}

func TestReadFrameLimits(t *testing.T) {
	cl, srv := sessionPair(false)
	var huge [4]byte
	binary.LittleEndian.PutUint32(huge[:], maxFrame+secTagLen+1)
	if _, err := srv.readSealed(bytes.NewReader(huge[:]), nil); !errors.Is(err, errMalformed) {
		t.Fatalf("oversized frame: %v", err)
	}
	frame := cl.seal(nil, appendFrame(nil, 1, &message{Type: mLockReq, ID: 1}))
	if _, err := srv.readSealed(bytes.NewReader(frame[:len(frame)-1]), nil); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated frame: %v", err)
	}
}

// A peer that sends a frame header and then stalls gets a timeout, not a
// hang: readLoop arms a deadline once a frame has started.
func TestReadFrameStalledBody(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	cl, srv := sessionPair(false)
	go b.Write(cl.seal(nil, appendFrame(nil, 1, &message{Type: mLockReq, ID: 1}))[:6])
	_, err := srv.readSealed(a, func() { a.SetReadDeadline(time.Now().Add(50 * time.Millisecond)) })
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("stalled body: %v, want a timeout", err)
	}
}

func FuzzDecodeFrame(f *testing.F) {
	for i, m := range sampleMessages() {
		f.Add(appendFrame(nil, uint64(i), m)[4:])
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		seq, m, err := decodeFrame(body)
		if err != nil {
			return
		}
		// What decodes must re-encode to the same bytes.
		again := appendFrame(nil, seq, m)[4:]
		if !bytes.Equal(again, body) {
			t.Fatalf("re-encoding %+v differs:\n%x\n%x", m, body, again)
		}
	})
}

// FuzzReadSealed feeds arbitrary bytes to a control connection's reader, as
// a peer (or whoever tampers with its connection) could: it never panics,
// and nothing but a genuinely sealed frame opens.
func FuzzReadSealed(f *testing.F) {
	cl, _ := sessionPair(false)
	for i, m := range sampleMessages() {
		f.Add(append([]byte(nil), cl.seal(nil, appendFrame(nil, uint64(i), m))...))
	}
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, wire []byte) {
		var k [secKeyLen]byte
		srv := newSession(false, k[:], k[:]) // not the sender's keys
		if body, err := srv.readSealed(bytes.NewReader(wire), nil); err == nil {
			t.Fatalf("opened %x without the key", body)
		}
	})
}
