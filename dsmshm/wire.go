package dsmshm

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Wire format of the control protocol. A frame is
//
//	length u32 | seq u64 | type u8 | payload
//
// with length counting everything after itself, all integers little-endian.
// seq numbers the frames a rank sends to one peer, starting at 1; a receiver
// drops a frame whose seq it has already seen, which is the seam for
// re-establishing a connection after a rank moves (see tcpTransport.UpdatePeer).
// Page contents never travel here: they go over the page channels served by
// the C page server (dsm.c), which speak fixed-size request/response records.

// maxFrame bounds one frame; a larger length prefix is rejected before any
// allocation.
const maxFrame = 64 << 20

const frameHeader = 4 + 8 + 1

// pageSize is the DSM page size; it must equal the MMU's (checked in Start).
const pageSize = 4096

// maxDiff is the largest encoded diff of one page (DSM_MAX_DIFF in dsm.h).
const maxDiff = pageSize / 2 * 5

type msgType uint8

const (
	_ msgType = iota + 1 // 1 was the hello, now the handshake (secure.go); 0 is no type
	mLockReq
	mLockGrant
	mUnlock
	mBarrierEnter
	mBarrierExit
	mDiffBatch
	mDiffAck
	mBye // last frame on a control connection: the sender is leaving cleanly
	// Transport frames with sequence number 0, never delivered to the node:
	mAck  // ID: the highest sequence number received from the addressee
	mAway // the sender is migrating: its connections close and it comes back
	// Node messages again (after the transport's, to keep their numbers):
	mMigIntent // the sender wants to migrate: may it? (see migrate.go)
	mMigReply  // ID: 0 yes, 1 no (this rank migrates, or let another)
	mMigDone   // the sender's migration is over (or called off): the yes is void
)

var msgNames = map[msgType]string{
	mLockReq: "lock-request", mLockGrant: "lock-grant", mUnlock: "unlock",
	mBarrierEnter: "barrier-enter", mBarrierExit: "barrier-exit", mDiffBatch: "diff-batch", mDiffAck: "diff-ack", mBye: "bye",
	mAck: "ack", mAway: "away", mMigIntent: "migrate-intent", mMigReply: "migrate-reply", mMigDone: "migrate-done",
}

func (t msgType) String() string {
	if s, ok := msgNames[t]; ok {
		return s
	}
	return fmt.Sprintf("msgType(%d)", uint8(t))
}

// Connection kinds named in a handshake's hello (secure.go).
const (
	connControl = 0
	connPage    = 1
)

// notice is a write notice: version ver of a page (identified by segment and
// page index) exists at its home, and whoever learns it must not use an older
// copy.
type notice struct {
	Seg, Page uint32
	Ver       uint64
}

// diff is an encoded diff of one page (see encode_diff in dsm.c).
type diff struct {
	Seg, Page uint32
	Data      []byte
}

// ack reports the versions of a page just before and after a diff was applied.
type ack struct {
	Seg, Page     uint32
	Before, After uint64
}

// message is one decoded frame. Which fields are meaningful depends on Type.
type message struct {
	Type    msgType
	ID      int64  // lock id, barrier id or diff request id
	Check   uint64 // barrier: agreement value (all ranks must send the same)
	Err     string // barrier-enter: why this rank refuses the collective call; barrier-exit: why the barrier failed
	Kind    uint8  // barrier with Err: refusedTooLarge or 0
	Notices []notice
	Diffs   []diff
	Acks    []ack
}

var errMalformed = errors.New("dsmshm: malformed message")

// appendFrame appends the frame for m with sequence number seq to b.
func appendFrame(b []byte, seq uint64, m *message) []byte {
	start := len(b)
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint64(b, seq)
	b = append(b, byte(m.Type))
	switch m.Type {
	case mLockReq, mAck, mMigIntent, mMigReply, mMigDone:
		b = binary.LittleEndian.AppendUint64(b, uint64(m.ID))
	case mLockGrant, mUnlock:
		b = binary.LittleEndian.AppendUint64(b, uint64(m.ID))
		b = appendNotices(b, m.Notices)
	case mBarrierEnter, mBarrierExit:
		b = binary.LittleEndian.AppendUint64(b, uint64(m.ID))
		b = binary.LittleEndian.AppendUint64(b, m.Check)
		b = appendString(b, m.Err)
		b = append(b, m.Kind)
		b = appendNotices(b, m.Notices)
	case mDiffBatch:
		b = binary.LittleEndian.AppendUint64(b, uint64(m.ID))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(m.Diffs)))
		for _, d := range m.Diffs {
			b = binary.LittleEndian.AppendUint32(b, d.Seg)
			b = binary.LittleEndian.AppendUint32(b, d.Page)
			b = binary.LittleEndian.AppendUint32(b, uint32(len(d.Data)))
			b = append(b, d.Data...)
		}
	case mDiffAck:
		b = binary.LittleEndian.AppendUint64(b, uint64(m.ID))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(m.Acks)))
		for _, a := range m.Acks {
			b = binary.LittleEndian.AppendUint32(b, a.Seg)
			b = binary.LittleEndian.AppendUint32(b, a.Page)
			b = binary.LittleEndian.AppendUint64(b, a.Before)
			b = binary.LittleEndian.AppendUint64(b, a.After)
		}
	}
	binary.LittleEndian.PutUint32(b[start:], uint32(len(b)-start-4))
	return b
}

// appendString appends s, cut to 64 KiB, with a 16-bit length.
func appendString(b []byte, s string) []byte {
	s = s[:min(len(s), 0xffff)]
	b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func appendNotices(b []byte, ns []notice) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(ns)))
	for _, n := range ns {
		b = binary.LittleEndian.AppendUint32(b, n.Seg)
		b = binary.LittleEndian.AppendUint32(b, n.Page)
		b = binary.LittleEndian.AppendUint64(b, n.Ver)
	}
	return b
}

// decodeFrame decodes a frame body (everything after the length prefix).
// It never panics; any inconsistency is errMalformed. Decoded byte slices
// are copies, so buf may be reused.
func decodeFrame(buf []byte) (seq uint64, m *message, err error) {
	d := decoder{b: buf}
	seq = d.u64()
	m = &message{Type: msgType(d.u8())}
	switch m.Type {
	case mBye, mAway:
	case mLockReq, mAck, mMigIntent, mMigReply, mMigDone:
		m.ID = int64(d.u64())
	case mLockGrant, mUnlock:
		m.ID = int64(d.u64())
		m.Notices = d.notices()
	case mBarrierEnter, mBarrierExit:
		m.ID = int64(d.u64())
		m.Check = d.u64()
		m.Err = d.str()
		m.Kind = d.u8()
		m.Notices = d.notices()
	case mDiffBatch:
		m.ID = int64(d.u64())
		n := d.count(12)
		m.Diffs = make([]diff, 0, n)
		for range n {
			df := diff{Seg: d.u32(), Page: d.u32()}
			l := d.u32()
			if l > maxDiff {
				d.fail()
			}
			df.Data = d.bytes(int(l))
			m.Diffs = append(m.Diffs, df)
		}
	case mDiffAck:
		m.ID = int64(d.u64())
		n := d.count(24)
		m.Acks = make([]ack, 0, n)
		for range n {
			m.Acks = append(m.Acks, ack{Seg: d.u32(), Page: d.u32(), Before: d.u64(), After: d.u64()})
		}
	default:
		return 0, nil, fmt.Errorf("%w: unknown type %d", errMalformed, m.Type)
	}
	if d.bad {
		return 0, nil, fmt.Errorf("%w: truncated or inconsistent %v", errMalformed, m.Type)
	}
	if len(d.b) != 0 {
		return 0, nil, fmt.Errorf("%w: %d trailing bytes after %v", errMalformed, len(d.b), m.Type)
	}
	return seq, m, nil
}

// decoder consumes little-endian fields; once anything is short it sets bad
// and returns zeros from then on.
type decoder struct {
	b   []byte
	bad bool
}

func (d *decoder) fail() { d.bad, d.b = true, nil }

func (d *decoder) take(n int) []byte {
	if d.bad || n < 0 || len(d.b) < n {
		d.fail()
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) u8() uint8 {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if p := d.take(2); p != nil {
		return binary.LittleEndian.Uint16(p)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

func (d *decoder) str() string { return string(d.take(int(d.u16()))) }

func (d *decoder) bytes(n int) []byte { return append([]byte(nil), d.take(n)...) }

// count reads an element count and checks that the remaining bytes can hold
// that many elements of at least minSize bytes, so a forged count cannot make
// the decoder allocate more than the frame's size.
func (d *decoder) count(minSize int) int {
	n := int(d.u32())
	if d.bad || n > len(d.b)/minSize {
		d.fail()
		return 0
	}
	return n
}

func (d *decoder) notices() []notice {
	n := d.count(16)
	ns := make([]notice, 0, n)
	for range n {
		ns = append(ns, notice{Seg: d.u32(), Page: d.u32(), Ver: d.u64()})
	}
	return ns
}
