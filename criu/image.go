package criu

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"google.golang.org/protobuf/encoding/protowire"
)

// CRIU's image files, read for the few fields this package needs.
//
// go-criu's crit decodes every kind of image, and importing it links (and
// initializes, at every start of this binary: the daemon, the CLI, each
// shim) the protobuf descriptors of ~70 image types: ~12 ms and ~100 page
// faults per process start on this kind of VM, 1.6 MB of binary. An image
// file is simple enough to read here: a magic (CRIU's common or service
// magic, then the image's own), then entries, each a little-endian uint32
// size and that many bytes of protobuf (CRIU's criu/protobuf.c). The few
// fields wanted are picked out with protowire; field numbers are those of
// CRIU's images/*.proto.

// Image magics (CRIU's criu/include/magic.h).
const (
	magicCommon  = 0x54564319
	magicService = 0x55105940
	magicPagemap = 0x56084025
	magicFiles   = 0x56303138
)

// maxEntry bounds one entry: CRIU's entries are small (a pagemap entry is a
// few bytes, a files.img entry at most a path's length).
const maxEntry = 16 << 20

// readImage calls entry with each entry of the image at path, in order,
// after checking that the image is of kind magic.
func readImage(path string, magic uint32, entry func(b []byte) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var word [4]byte
	read32 := func() (uint32, error) {
		if _, err := io.ReadFull(r, word[:]); err != nil {
			return 0, err
		}
		return binary.LittleEndian.Uint32(word[:]), nil
	}
	m, err := read32()
	if err == nil && (m == magicCommon || m == magicService) {
		m, err = read32()
	}
	if err != nil {
		return fmt.Errorf("reading its magic: %w", err)
	}
	if m != magic {
		return fmt.Errorf("magic %#x, want %#x", m, magic)
	}
	var buf []byte
	for {
		n, err := read32()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("a truncated entry: %w", err)
		}
		if n > maxEntry {
			return fmt.Errorf("an entry of %d bytes", n)
		}
		if cap(buf) < int(n) {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(r, buf); err != nil {
			return fmt.Errorf("a truncated entry: %w", io.ErrUnexpectedEOF)
		}
		if err := entry(buf); err != nil {
			return err
		}
	}
}

// fields calls f with each field of the protobuf message b: its number, and
// its value as a varint (v) or as bytes (p) by its wire type. Fixed-width
// and group fields are skipped.
func fields(b []byte, f func(num protowire.Number, v uint64, p []byte)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			f(num, v, nil)
			b = b[n:]
		case protowire.BytesType:
			p, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			f(num, 0, p)
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	return nil
}

// pagemapEntry is the part of a pagemap_entry this package reads.
type pagemapEntry struct {
	vaddr    uint64
	nrPages  uint64 // nr_pages, or compat_nr_pages from older CRIUs
	inParent bool
	flags    uint32
}

// pagemapEntries reads a pagemap-N.img: its head (pagemap_head) and then its
// entries.
func pagemapEntries(path string) ([]pagemapEntry, error) {
	var out []pagemapEntry
	head := true
	err := readImage(path, magicPagemap, func(b []byte) error {
		if head {
			head = false
			return nil
		}
		var e pagemapEntry
		var compat uint64
		haveNr := false
		err := fields(b, func(num protowire.Number, v uint64, _ []byte) {
			switch num {
			case 1:
				e.vaddr = v
			case 2:
				compat = v
			case 3:
				e.inParent = v != 0
			case 4:
				e.flags = uint32(v)
			case 5:
				e.nrPages, haveNr = v, true
			}
		})
		if !haveNr {
			e.nrPages = compat
		}
		out = append(out, e)
		return err
	})
	return out, err
}

// inetSocket is the part of a files.img entry this package reads: an inet
// socket's id (the file's), protocol and local port.
type inetSocket struct {
	id      uint32
	proto   uint32
	srcPort uint32
}

// inetSockets reads the inet sockets of a files.img (file_entry: id = 2,
// isk = 4; inet_sk_entry: proto = 5, src_port = 7).
func inetSockets(path string) ([]inetSocket, error) {
	var out []inetSocket
	err := readImage(path, magicFiles, func(b []byte) error {
		var s inetSocket
		var isk []byte
		if err := fields(b, func(num protowire.Number, v uint64, p []byte) {
			switch num {
			case 2:
				s.id = uint32(v)
			case 4:
				isk = p
			}
		}); err != nil || isk == nil {
			return err
		}
		if err := fields(isk, func(num protowire.Number, v uint64, _ []byte) {
			switch num {
			case 5:
				s.proto = uint32(v)
			case 7:
				s.srcPort = uint32(v)
			}
		}); err != nil {
			return err
		}
		out = append(out, s)
		return nil
	})
	return out, err
}
