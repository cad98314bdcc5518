package dsmshm

import (
	"bytes"
	"crypto/cipher"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"golang.org/x/crypto/chacha20"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/poly1305" //nolint:staticcheck // deprecated, but an independent reference
)

// Tests of the C ChaCha20-Poly1305 (aead.c) against RFC 8439's vectors and
// against golang.org/x/crypto.

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ctrNonce(ctr uint64) []byte {
	n := make([]byte, chacha20poly1305.NonceSize)
	binary.LittleEndian.PutUint64(n[4:], ctr)
	return n
}

func xAEAD(t testing.TB, key *[32]byte) cipher.AEAD {
	t.Helper()
	a, err := chacha20poly1305.New(key[:])
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// refSeal is what dsm_aead_seal should do, computed with x/crypto: the
// payload as it should be afterwards, and the tag. With enc false, p is
// taken as the ciphertext: x/crypto seals the plaintext that encrypts to p.
func refSeal(t testing.TB, key *[32]byte, ctr uint64, aad, p []byte, enc bool) (out []byte, tag [16]byte) {
	t.Helper()
	nonce := ctrNonce(ctr)
	plain := p
	if !enc && len(p) > 0 {
		c, err := chacha20.NewUnauthenticatedCipher(key[:], nonce)
		if err != nil {
			t.Fatal(err)
		}
		c.SetCounter(1)
		plain = make([]byte, len(p))
		c.XORKeyStream(plain, p)
	}
	sealed := xAEAD(t, key).Seal(nil, nonce, plain, aad)
	out = sealed[:len(p)]
	copy(tag[:], sealed[len(p):])
	if !enc && !bytes.Equal(out, p) {
		t.Fatalf("reference: re-encryption does not give p back")
	}
	return out, tag
}

const rfcLadies = "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it."

func TestAEADRFC8439ChaCha20(t *testing.T) {
	// Section 2.4.2.
	var key [32]byte
	for i := range key {
		key[i] = byte(i)
	}
	nonce := [12]byte{7: 0x4a}
	p := []byte(rfcLadies)
	chacha20XOR(&key, 1, &nonce, p)
	want := unhex(t, `
		6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b
		f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8
		07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736
		5af90bbf74a35be6b40b8eedf2785e42874d`)
	if !bytes.Equal(p, want) {
		t.Fatalf("ChaCha20 2.4.2:\n got %x\nwant %x", p, want)
	}
	chacha20XOR(&key, 1, &nonce, p)
	if string(p) != rfcLadies {
		t.Fatalf("ChaCha20 2.4.2 does not decrypt: %q", p)
	}
}

func TestAEADRFC8439Poly1305(t *testing.T) {
	for i, v := range []struct{ key, msg, tag string }{
		{ // Section 2.5.2.
			"85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b",
			hex.EncodeToString([]byte("Cryptographic Forum Research Group")),
			"a8061dc1305136c6c22b8baf0c0127a9",
		},
		{ // Appendix A.3 #4.
			"1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0",
			hex.EncodeToString([]byte("'Twas brillig, and the slithy toves\nDid gyre and gimble in the wabe:\n" +
				"All mimsy were the borogoves,\nAnd the mome raths outgrabe.")),
			"4541669a7eaaee61e708dc7cbcc5eb62",
		},
		{ // Appendix A.3 #5: h reaches 2^130 - 2.
			"0200000000000000000000000000000000000000000000000000000000000000",
			"ffffffffffffffffffffffffffffffff",
			"03000000000000000000000000000000",
		},
		{ // Appendix A.3 #6: h + s wraps modulo 2^128.
			"02000000000000000000000000000000ffffffffffffffffffffffffffffffff",
			"02000000000000000000000000000000",
			"03000000000000000000000000000000",
		},
		{ // All zero.
			"0000000000000000000000000000000000000000000000000000000000000000",
			"", "00000000000000000000000000000000",
		},
	} {
		var key [32]byte
		copy(key[:], unhex(t, v.key))
		got := poly1305Sum(&key, unhex(t, v.msg))
		if want := unhex(t, v.tag); !bytes.Equal(got[:], want) {
			t.Errorf("Poly1305 vector %d:\n got %x\nwant %x", i, got, want)
		}
	}
}

func TestAEADRFC8439Vectors(t *testing.T) {
	// Section 2.8.2: nonce 07000000 || 4041424344454647.
	var key [32]byte
	for i := range key {
		key[i] = 0x80 + byte(i)
	}
	nonce := [12]byte{0: 7, 4: 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47}
	aad := unhex(t, "50515253c0c1c2c3c4c5c6c7")
	wantCT := unhex(t, `
		d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
		3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
		92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
		3ff4def08e4b7a9de576d26586cec64b6116`)
	wantTag := unhex(t, "1ae10b594f09e26a7e902ecbd0600691")
	p := []byte(rfcLadies)
	tag := aeadSealNonce(&key, &nonce, aad, p, true)
	if !bytes.Equal(p, wantCT) || !bytes.Equal(tag[:], wantTag) {
		t.Fatalf("AEAD 2.8.2:\n got %x %x\nwant %x %x", p, tag, wantCT, wantTag)
	}
	if !aeadOpenNonce(&key, &nonce, aad, p, true, &tag) || string(p) != rfcLadies {
		t.Fatalf("AEAD 2.8.2 does not open: %q", p)
	}

	// Appendix A.5: nonce 00000000 || 0102030405060708, which dsm_aead_open
	// can express (ctr 0x0807060504030201).
	copy(key[:], unhex(t, "1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0"))
	const ctr = 0x0807060504030201
	aad = unhex(t, "f33388860000000000004e91")
	ct := unhex(t, `
		64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2
		4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf
		332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855
		9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4
		b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e
		af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a
		0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10
		49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29
		a6ad5cb4022b02709b`)
	copy(tag[:], unhex(t, "eead9d67890cbb22392336fea1851f38"))
	plain := unhex(t, `
		496e7465726e65742d4472616674732061726520647261667420646f63756d65
		6e74732076616c696420666f722061206d6178696d756d206f6620736978206d
		6f6e74687320616e64206d617920626520757064617465642c207265706c6163
		65642c206f72206f62736f6c65746564206279206f7468657220646f63756d65
		6e747320617420616e792074696d652e20497420697320696e617070726f7072
		6961746520746f2075736520496e7465726e65742d4472616674732061732072
		65666572656e6365206d6174657269616c206f7220746f206369746520746865
		6d206f74686572207468616e206173202fe2809c776f726b20696e2070726f67
		726573732e2fe2809d`)
	p = bytes.Clone(ct)
	if !aeadOpen(&key, ctr, aad, p, true, &tag) || !bytes.Equal(p, plain) {
		t.Fatalf("AEAD A.5 does not open:\n got %x\nwant %x", p, plain)
	}
	if got := aeadSeal(&key, ctr, aad, p, true); got != tag || !bytes.Equal(p, ct) {
		t.Fatalf("AEAD A.5 seal:\n got %x %x\nwant %x %x", p, got, ct, tag)
	}
}

// TestAEADMacOnly checks the documented MAC mode: enc == 0 and n == 0 gives
// x/crypto's Seal(nil, nonce, nil, aad).
func TestAEADMacOnly(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, na := range []int{0, 1, 15, 16, 17, 63, 64, 65, 4096, 4112, 5000} {
		var key [32]byte
		fill(r, key[:])
		aad := make([]byte, na)
		fill(r, aad)
		ctr := r.Uint64()
		want := xAEAD(t, &key).Seal(nil, ctrNonce(ctr), nil, aad)
		if got := aeadSeal(&key, ctr, aad, nil, false); !bytes.Equal(got[:], want) {
			t.Errorf("na=%d: got %x want %x", na, got, want)
		}
		if got := aeadSeal(&key, ctr, aad, nil, true); !bytes.Equal(got[:], want) {
			t.Errorf("na=%d enc: got %x want %x", na, got, want)
		}
		var tag [16]byte
		copy(tag[:], want)
		if !aeadOpen(&key, ctr, aad, nil, false, &tag) {
			t.Errorf("na=%d: open fails", na)
		}
	}
}

func fill(r *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(r.Uint32())
	}
}

// checkAEAD compares one seal with x/crypto and checks that open accepts
// the result and rejects a wrong counter, a wrong key and flipped bits
// (flips of them sampled from r), leaving p as it was. It returns false
// after the first mismatch.
func checkAEAD(t testing.TB, r *rand.Rand, flips int, key *[32]byte, ctr uint64, aad, plain []byte, enc bool) bool {
	t.Helper()
	what := fmt.Sprintf("ctr=%#x na=%d n=%d enc=%v", ctr, len(aad), len(plain), enc)
	wantP, wantTag := refSeal(t, key, ctr, aad, plain, enc)
	p := bytes.Clone(plain)
	tag := aeadSeal(key, ctr, aad, p, enc)
	if !bytes.Equal(p, wantP) {
		t.Errorf("%s: payload differs from x/crypto", what)
		return false
	}
	if tag != wantTag {
		t.Errorf("%s: tag %x, x/crypto %x", what, tag, wantTag)
		return false
	}

	// Open the genuine message.
	q := bytes.Clone(p)
	if !aeadOpen(key, ctr, aad, q, enc, &tag) {
		t.Errorf("%s: open fails", what)
		return false
	}
	if !bytes.Equal(q, plain) {
		t.Errorf("%s: open does not give the plaintext back", what)
		return false
	}

	reject := func(how string, key *[32]byte, ctr uint64, aad, q []byte, tag *[16]byte) bool {
		before := bytes.Clone(q)
		if aeadOpen(key, ctr, aad, q, enc, tag) {
			t.Errorf("%s: open accepts %s", what, how)
			return false
		}
		if !bytes.Equal(q, before) {
			t.Errorf("%s: failed open (%s) changed p", what, how)
			return false
		}
		return true
	}
	q = bytes.Clone(p)
	if !reject("ctr+1", key, ctr+1, aad, q, &tag) || !reject("ctr-1", key, ctr-1, aad, q, &tag) {
		return false
	}
	bad := *key
	bad[r.IntN(32)] ^= 1 << r.IntN(8)
	if !reject("a wrong key", &bad, ctr, aad, q, &tag) {
		return false
	}
	// Every tag bit; sampled aad and payload bits, first and last included.
	for i := range 128 {
		bt := tag
		bt[i/8] ^= 1 << (i % 8)
		if !reject(fmt.Sprintf("tag bit %d", i), key, ctr, aad, q, &bt) {
			return false
		}
	}
	for _, b := range [][]byte{aad, q} {
		nb := 8 * len(b)
		if nb == 0 {
			continue
		}
		bits := []int{0, nb - 1}
		for range flips {
			bits = append(bits, r.IntN(nb))
		}
		for _, i := range bits {
			b[i/8] ^= 1 << (i % 8)
			ok := reject(fmt.Sprintf("bit %d of %d flipped", i, len(b)), key, ctr, aad, q, &tag)
			b[i/8] ^= 1 << (i % 8)
			if !ok {
				return false
			}
		}
	}
	return true
}

func TestAEADDifferential(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	lens := []int{0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 1000,
		4095, 4096, 4097, 4111, 4112, 4113, 5000}
	ctrs := []uint64{0, 1, math.MaxUint32, math.MaxUint32 + 1, math.MaxUint64 - 1, math.MaxUint64}
	var keys [][32]byte
	var ones [32]byte
	for i := range ones {
		ones[i] = 0xff
	}
	keys = append(keys, [32]byte{}, ones)
	for range 4 {
		var k [32]byte
		fill(r, k[:])
		keys = append(keys, k)
	}
	randLen := func() int {
		if r.IntN(2) == 0 {
			return lens[r.IntN(len(lens))]
		}
		return r.IntN(5001)
	}
	cases := 0
	run := func(key *[32]byte, ctr uint64, na, n int, enc bool, flips int) {
		aad := make([]byte, na)
		fill(r, aad)
		p := make([]byte, n)
		fill(r, p)
		if !checkAEAD(t, r, flips, key, ctr, aad, p, enc) {
			t.FailNow()
		}
		cases++
	}
	// Every listed payload length, with a few aad lengths, counters and keys.
	for _, n := range lens {
		for _, na := range []int{0, 1, 12, 16, 17, 64, 4112} {
			for _, enc := range []bool{false, true} {
				k := &keys[r.IntN(len(keys))]
				run(k, ctrs[r.IntN(len(ctrs))], na, n, enc, 4)
			}
		}
	}
	// Random combinations.
	for range 400 {
		var k [32]byte
		fill(r, k[:])
		ctr := r.Uint64()
		if r.IntN(3) == 0 {
			ctr = ctrs[r.IntN(len(ctrs))]
		}
		run(&k, ctr, randLen(), randLen(), r.IntN(2) == 0, 16)
	}
	t.Logf("%d cases", cases)
}

// TestAEADNonceForms checks that dsm_aead_seal is dsm_aead_seal_nonce with
// nonce 0^4 || le64(ctr), and the raw ChaCha20 and Poly1305 against x/crypto.
func TestAEADNonceForms(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for range 200 {
		var key [32]byte
		fill(r, key[:])
		ctr := r.Uint64()
		var nonce [12]byte
		copy(nonce[:], ctrNonce(ctr))
		aad := make([]byte, r.IntN(100))
		fill(r, aad)
		p := make([]byte, r.IntN(300))
		fill(r, p)
		q := bytes.Clone(p)
		enc := r.IntN(2) == 0
		if a, b := aeadSeal(&key, ctr, aad, p, enc), aeadSealNonce(&key, &nonce, aad, q, enc); a != b || !bytes.Equal(p, q) {
			t.Fatalf("seal and seal_nonce differ")
		}

		fill(r, nonce[:])
		counter := r.Uint32() >> 1
		m := make([]byte, r.IntN(1000))
		fill(r, m)
		want := bytes.Clone(m)
		c, err := chacha20.NewUnauthenticatedCipher(key[:], nonce[:])
		if err != nil {
			t.Fatal(err)
		}
		c.SetCounter(counter)
		c.XORKeyStream(want, want)
		chacha20XOR(&key, counter, &nonce, m)
		if !bytes.Equal(m, want) {
			t.Fatalf("ChaCha20 differs from x/crypto (counter %d, n %d)", counter, len(m))
		}

		var wantTag [16]byte
		if r.IntN(4) == 0 {
			for i := range key {
				key[i] = 0xff
			}
			for i := range m {
				m[i] = 0xff
			}
		}
		poly1305.Sum(&wantTag, m, &key)
		if got := poly1305Sum(&key, m); got != wantTag {
			t.Fatalf("Poly1305 differs from x/crypto (n %d): %x, want %x", len(m), got, wantTag)
		}
	}
}

// FuzzAEAD compares seal with x/crypto and checks open on fuzzer-chosen
// inputs. grow appends up to 5000 pseudorandom bytes (seeded by ctr) to aad
// (top bit set) or to the payload, so that long messages are covered
// without long corpus entries: Go minimizes new inputs byte by byte, which
// takes the whole -fuzzminimizetime on kilobyte-sized ones.
func FuzzAEAD(f *testing.F) {
	f.Add([]byte{}, uint64(0), []byte{}, []byte{}, false, uint16(0), uint16(0))
	f.Add([]byte("0123456789abcdef0123456789abcdef"), uint64(1), []byte("header"), []byte("payload"), true, uint16(3), uint16(0))
	f.Add(bytes.Repeat([]byte{0xff}, 32), uint64(math.MaxUint64), bytes.Repeat([]byte{0xff}, 17),
		bytes.Repeat([]byte{0xff}, 65), true, uint16(999), uint16(0))
	f.Add([]byte{1}, uint64(math.MaxUint32), []byte{}, []byte{}, false, uint16(77), uint16(0x8000|4112))
	f.Add([]byte{2}, uint64(1<<32), []byte{1}, []byte{}, true, uint16(4200), uint16(4112))
	f.Add([]byte{3}, uint64(42), bytes.Repeat([]byte{1}, 63), bytes.Repeat([]byte{2}, 64), false, uint16(65535), uint16(4096))
	f.Add([]byte{4}, uint64(5), []byte{7}, []byte{8}, true, uint16(1), uint16(0x8000|5000))
	f.Fuzz(func(t *testing.T, k []byte, ctr uint64, aad, plain []byte, enc bool, flip, grow uint16) {
		var key [32]byte
		copy(key[:], k)
		if n := int(grow&0x7fff) % 5001; n > 0 {
			extra := make([]byte, n)
			fill(rand.New(rand.NewPCG(ctr, uint64(grow))), extra)
			if grow&0x8000 != 0 {
				aad = append(bytes.Clone(aad), extra...)
			} else {
				plain = append(bytes.Clone(plain), extra...)
			}
		}
		wantP, wantTag := refSeal(t, &key, ctr, aad, plain, enc)
		p := bytes.Clone(plain)
		tag := aeadSeal(&key, ctr, aad, p, enc)
		if !bytes.Equal(p, wantP) || tag != wantTag {
			t.Fatalf("differs from x/crypto: %x %x, want %x %x", p, tag, wantP, wantTag)
		}
		q := bytes.Clone(p)
		if !aeadOpen(&key, ctr, aad, q, enc, &tag) || !bytes.Equal(q, plain) {
			t.Fatalf("open fails")
		}
		// Flip one bit of aad | p | tag.
		aad = bytes.Clone(aad)
		q = bytes.Clone(p)
		nb := 8 * (len(aad) + len(q) + len(tag))
		i := int(flip) % nb
		switch {
		case i < 8*len(aad):
			aad[i/8] ^= 1 << (i % 8)
		case i < 8*(len(aad)+len(q)):
			i -= 8 * len(aad)
			q[i/8] ^= 1 << (i % 8)
		default:
			i -= 8 * (len(aad) + len(q))
			tag[i/8] ^= 1 << (i % 8)
		}
		before := bytes.Clone(q)
		if aeadOpen(&key, ctr, aad, q, enc, &tag) {
			t.Fatalf("open accepts a flipped bit")
		}
		if !bytes.Equal(q, before) {
			t.Fatalf("failed open changed p")
		}
	})
}

func BenchmarkAEAD(b *testing.B) {
	var key [32]byte
	for i := range key {
		key[i] = byte(i)
	}
	x := xAEAD(b, &key)
	nonce := ctrNonce(7)
	for _, n := range []int{64, 4112} {
		msg := make([]byte, n)
		dst := make([]byte, n+16)
		b.Run(fmt.Sprintf("C/enc/%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				aeadSeal(&key, 7, nil, msg, true)
			}
		})
		b.Run(fmt.Sprintf("C/noenc/%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				aeadSeal(&key, 7, nil, msg, false)
			}
		})
		b.Run(fmt.Sprintf("C/mac-aad/%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				aeadSeal(&key, 7, msg, nil, false)
			}
		})
		b.Run(fmt.Sprintf("C/open-enc/%d", n), func(b *testing.B) {
			ct := bytes.Clone(msg)
			tag := aeadSeal(&key, 7, nil, ct, true)
			buf := make([]byte, n)
			b.SetBytes(int64(n))
			for b.Loop() {
				copy(buf, ct) // counted in
				if !aeadOpen(&key, 7, nil, buf, true, &tag) {
					b.Fatal("open fails")
				}
			}
		})
		b.Run(fmt.Sprintf("xcrypto/enc/%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				x.Seal(dst[:0], nonce, msg, nil)
			}
		})
		b.Run(fmt.Sprintf("xcrypto/mac-aad/%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				x.Seal(dst[:0], nonce, nil, msg)
			}
		})
	}
}
