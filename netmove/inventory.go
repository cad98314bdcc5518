package netmove

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sync"
)

// CRIU image magics (criu/include/magic.h). inventory.img starts with
// inventoryMagic, possibly after one of the two common ones.
const (
	imgCommonMagic  = 0x54564319
	imgServiceMagic = 0x55105940
	inventoryMagic  = 0x58313116
)

// runIDField is dump_criu_run_id in CRIU's images/inventory.proto.
const runIDField = 13

// maxInventory bounds what readRunID reads; a real inventory is ~100 bytes.
const maxInventory = 1 << 20

var runIDPattern = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9A-Za-z-]{1,64}$`) })

// readRunID returns the run id of the CRIU dump that wrote the inventory
// image at path.
func readRunID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading CRIU inventory: %w", err)
	}
	if len(b) > maxInventory {
		return "", fmt.Errorf("%s: %d bytes, too large for an inventory", path, len(b))
	}
	id, err := parseRunID(b)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return id, nil
}

// parseRunID decodes an inventory image: magic(s), then one entry, a
// little-endian uint32 length and an InventoryEntry protobuf message, in
// which it finds dump_criu_run_id. Only the protobuf wire format is decoded,
// which keeps the package free of generated code.
func parseRunID(b []byte) (string, error) {
	magic, b, ok := u32(b)
	if ok && (magic == imgCommonMagic || magic == imgServiceMagic) {
		magic, b, ok = u32(b)
	}
	if !ok || magic != inventoryMagic {
		return "", errors.New("not a CRIU inventory image")
	}
	size, b, ok := u32(b)
	if !ok || uint64(size) > uint64(len(b)) {
		return "", errors.New("truncated CRIU inventory image")
	}
	msg := b[:size]
	for len(msg) > 0 {
		key, n := binary.Uvarint(msg)
		if n <= 0 {
			return "", errors.New("corrupt CRIU inventory image")
		}
		msg = msg[n:]
		field, wire := key>>3, key&7
		var skip uint64
		switch wire {
		case 0: // varint
			if _, n = binary.Uvarint(msg); n <= 0 {
				return "", errors.New("corrupt CRIU inventory image")
			}
			skip = uint64(n)
		case 1: // 64-bit
			skip = 8
		case 2: // length-delimited
			l, n := binary.Uvarint(msg)
			if n <= 0 || l > uint64(len(msg)-n) {
				return "", errors.New("corrupt CRIU inventory image")
			}
			if field == runIDField {
				id := string(msg[n : n+int(l)])
				if !runIDPattern().MatchString(id) {
					return "", fmt.Errorf("implausible CRIU run id %.80q", id)
				}
				return id, nil
			}
			skip = uint64(n) + l
		case 5: // 32-bit
			skip = 4
		default:
			return "", fmt.Errorf("corrupt CRIU inventory image (wire type %d)", wire)
		}
		if skip > uint64(len(msg)) {
			return "", errors.New("truncated CRIU inventory image")
		}
		msg = msg[skip:]
	}
	return "", errors.New("CRIU inventory has no run id (CRIU older than 4.0 names its lock table CRIU-<pid>)")
}

func u32(b []byte) (uint32, []byte, bool) {
	if len(b) < 4 {
		return 0, b, false
	}
	return binary.LittleEndian.Uint32(b), b[4:], true
}
