package criu

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// image writes an image file of the given magics and entries.
func image(t *testing.T, magics []uint32, entries ...[]byte) string {
	t.Helper()
	var b []byte
	for _, m := range magics {
		b = binary.LittleEndian.AppendUint32(b, m)
	}
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(e)))
		b = append(b, e...)
	}
	path := filepath.Join(t.TempDir(), "x.img")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func varint(b []byte, num protowire.Number, v uint64) []byte {
	return protowire.AppendVarint(protowire.AppendTag(b, num, protowire.VarintType), v)
}

// The pagemap reader skips the head and reads old (compat_nr_pages) and new
// (nr_pages) entries; TestLazyRanges reads CRIU's own.
func TestPagemapEntries(t *testing.T) {
	head := varint(nil, 1, 7) // pages_id
	e1 := varint(varint(varint(nil, 1, 0x1000), 2, 3), 4, peLazy)
	e2 := varint(varint(varint(varint(nil, 1, 0x9000), 2, 1), 5, 1<<33), 3, 1)
	// An unknown field of a later CRIU: a fixed64 and bytes.
	e2 = protowire.AppendFixed64(protowire.AppendTag(e2, 9, protowire.Fixed64Type), 5)
	e2 = protowire.AppendBytes(protowire.AppendTag(e2, 10, protowire.BytesType), []byte("x"))
	es, err := pagemapEntries(image(t, []uint32{magicCommon, magicPagemap}, head, e1, e2))
	if err != nil {
		t.Fatal(err)
	}
	want := []pagemapEntry{{vaddr: 0x1000, nrPages: 3, flags: peLazy}, {vaddr: 0x9000, nrPages: 1 << 33, inParent: true}}
	if len(es) != 2 || es[0] != want[0] || es[1] != want[1] {
		t.Fatalf("entries %+v, want %+v", es, want)
	}

	for name, path := range map[string]string{
		"magic":     image(t, []uint32{magicCommon, magicFiles}, head),
		"truncated": truncate(t, image(t, []uint32{magicCommon, magicPagemap}, head, e1), 2),
		"protobuf":  image(t, []uint32{magicCommon, magicPagemap}, head, []byte{0x08}),
	} {
		if _, err := pagemapEntries(path); err == nil {
			t.Errorf("%s: a broken image read without an error", name)
		}
	}
}

// truncate cuts n bytes off the end of the file at path.
func truncate(t *testing.T, path string, n int) string {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, fi.Size()-int64(n)); err != nil {
		t.Fatal(err)
	}
	return path
}

// files.img: the inet sockets' ids, protocols and local ports; other files
// are skipped.
func TestInetSockets(t *testing.T) {
	isk := varint(varint(varint(nil, 1, 99), 5, 17), 7, 5353)
	sock := protowire.AppendBytes(protowire.AppendTag(varint(varint(nil, 1, 2), 2, 42), 4, protowire.BytesType), isk)
	reg := protowire.AppendBytes(protowire.AppendTag(varint(varint(nil, 1, 1), 2, 41), 3, protowire.BytesType), []byte{0x08, 0x01})
	socks, err := inetSockets(image(t, []uint32{magicService, magicFiles}, reg, sock))
	if err != nil {
		t.Fatal(err)
	}
	if len(socks) != 1 || socks[0] != (inetSocket{id: 42, proto: 17, srcPort: 5353}) {
		t.Fatalf("sockets %+v", socks)
	}
	dir := filepath.Dir(image(t, []uint32{magicCommon, magicFiles}, reg, sock))
	os.Rename(filepath.Join(dir, "x.img"), filepath.Join(dir, "files.img"))
	if port, proto := socketPort(dir, 42); port != 5353 || proto != "udp" {
		t.Errorf("socketPort = %d %s", port, proto)
	}
	if _, err := inetSockets(image(t, []uint32{magicCommon, magicFiles}, []byte{0xff})); err == nil {
		t.Error("a broken entry read without an error")
	}
}
