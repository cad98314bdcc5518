package main

// Item 5c: dsmshm's page-channel cryptography alone, in this process, no
// network. The C code timed is dsmshm's own aead.c, compiled into this
// package from its source (with the same CFLAGS, raw.go's), its external
// names renamed so that they do not collide with the copy linked in through
// package dsmshm. The go command does not track a file included from
// another directory: scripts/bench-dsm.sh puts a hash of dsmshm/aead.c and
// aead.h into CGO_CFLAGS so that an edit to them rebuilds this package; a
// plain go build after such an edit may reuse a stale copy from the cache.

/*
#define dsm_aead_seal bench_dsm_aead_seal
#define dsm_aead_open bench_dsm_aead_open
#define dsm_aead_seal_nonce bench_dsm_aead_seal_nonce
#define dsm_aead_open_nonce bench_dsm_aead_open_nonce
#define dsm_chacha20_xor bench_dsm_chacha20_xor
#define dsm_poly1305 bench_dsm_poly1305
#include "../../dsmshm/aead.c"

#include <time.h>

static uint64_t cb_now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// The buffers of one page fetch, as dsm.c's fetch and answer have them for
// one page: the request (segment u32, page u32, pages u32), the reply's
// header (status u64, pages u64, the page's version u64: in clear,
// authenticated) and the page. Each direction has its own key and counter,
// as a page channel's.
static uint8_t cb_key_req[DSM_AEAD_KEY], cb_key_rep[DSM_AEAD_KEY];
static uint8_t cb_req[12], cb_hdr[24], cb_page[4096], cb_copy[4096];
static uint64_t cb_ctr;

static void cb_setup(const uint8_t *seed) {
	memcpy(cb_key_req, seed, DSM_AEAD_KEY);
	memcpy(cb_key_rep, seed + DSM_AEAD_KEY, DSM_AEAD_KEY);
	memcpy(cb_page, seed + 2 * DSM_AEAD_KEY, sizeof cb_page);
	memcpy(cb_req, cb_page + 100, sizeof cb_req);
	memcpy(cb_hdr, cb_page + 200, sizeof cb_hdr);
}

// cb_run times n page fetches' worth of kind and returns the nanoseconds, or
// -1 if a tag failed to open. kind 0: memcpy of the 4 KiB page (the
// baseline); 1: the cryptography of a fetch with integrity only, 2: with
// encryption. A fetch's cryptography is the request sealed (by the
// faulting rank) and opened (by the home), then the reply, header and page,
// sealed (by the home) and opened (by the faulting rank): all four on the
// fetch's critical path. Open with encryption decrypts what seal encrypted,
// so the page is the same at every iteration.
static int64_t cb_run(int kind, int n) {
	uint8_t tag[DSM_AEAD_TAG];
	int bad = 0;
	uint64_t t0 = cb_now_ns();
	if (kind == 0) {
		for (int i = 0; i < n; i++) {
			memcpy(cb_copy, cb_page, sizeof cb_page);
			__asm__ volatile("" : : "r"(cb_copy) : "memory");
		}
	} else {
		int enc = kind == 2;
		for (int i = 0; i < n; i++) {
			uint64_t c = cb_ctr++;
			dsm_aead_seal(cb_key_req, c, NULL, 0, cb_req, sizeof cb_req, enc, tag);
			bad |= dsm_aead_open(cb_key_req, c, NULL, 0, cb_req, sizeof cb_req, enc, tag);
			dsm_aead_seal(cb_key_rep, c, cb_hdr, sizeof cb_hdr, cb_page, sizeof cb_page, enc, tag);
			bad |= dsm_aead_open(cb_key_rep, c, cb_hdr, sizeof cb_hdr, cb_page, sizeof cb_page, enc, tag);
		}
	}
	int64_t ns = (int64_t)(cb_now_ns() - t0);
	return bad ? -1 : ns;
}

// cb_seal_page seals p[0:n] under key with counter ctr and aad: the exported
// check against x/crypto that this copy is the real ChaCha20-Poly1305.
static void cb_seal_page(const uint8_t *key, uint64_t ctr, const uint8_t *aad, size_t na,
                         uint8_t *p, size_t n, int enc, uint8_t *tag) {
	dsm_aead_seal(key, ctr, aad, na, p, n, enc, tag);
}
*/
import "C"

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"unsafe"

	"golang.org/x/crypto/chacha20poly1305"
)

// cryptoRep is one repetition of item 5c: Pages iterations of each kind.
type cryptoRep struct {
	CopyNs, MACNs, EncNs int64
}

type cryptoResult struct {
	Pages, Warm int
	Reps        []cryptoRep
}

// checkAEAD checks the included aead.c against x/crypto's
// ChaCha20-Poly1305, with encryption and without, on a page-sized message
// and a 16-byte header as additional data.
func checkAEAD() error {
	key := make([]byte, chacha20poly1305.KeySize)
	msg, hdr := make([]byte, page), make([]byte, 16)
	for _, b := range [][]byte{key, msg, hdr} {
		if _, err := rand.Read(b); err != nil {
			return err
		}
	}
	const ctr = 0x0102030405060708
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		return err
	}
	nonce := make([]byte, chacha20poly1305.NonceSize) // 4 zero bytes, ctr little-endian
	binary.LittleEndian.PutUint64(nonce[4:], ctr)
	for _, enc := range []int{0, 1} {
		p := append([]byte(nil), msg...)
		var tag [16]byte
		C.cb_seal_page((*C.uint8_t)(&key[0]), C.uint64_t(ctr), (*C.uint8_t)(&hdr[0]), C.size_t(len(hdr)),
			(*C.uint8_t)(&p[0]), C.size_t(len(p)), C.int(enc), (*C.uint8_t)(unsafe.Pointer(&tag[0])))
		sealed := append(p, tag[:]...)
		if enc == 1 && !bytes.Equal(sealed, aead.Seal(nil, nonce, msg, hdr)) {
			return fmt.Errorf("the included aead.c encrypts differently from x/crypto's ChaCha20-Poly1305")
		}
		// Either way the tag is RFC 8439's over the header and the page as
		// sent, which x/crypto's Open checks (the MAC-only page then reads
		// as a "ciphertext" that Open decrypts into noise: not looked at).
		if _, err := aead.Open(nil, nonce, sealed, hdr); err != nil {
			return fmt.Errorf("x/crypto rejects the included aead.c's tag (enc=%d): %v", enc, err)
		}
		if enc == 0 && !bytes.Equal(p, msg) {
			return fmt.Errorf("the included aead.c changed the page without encryption")
		}
	}
	return nil
}

// runCrypto is item 5c: Warm+Reps repetitions, each running every kind
// (memcpy, integrity, encryption) over p.Pages page fetches' worth, chunk by
// chunk in rotating order (interleave), so that they share the machine's
// noise.
func runCrypto(p params) (*cryptoResult, error) {
	if err := checkAEAD(); err != nil {
		return nil, err
	}
	seed := make([]byte, 2*chacha20poly1305.KeySize+page)
	if _, err := rand.Read(seed); err != nil {
		return nil, err
	}
	C.cb_setup((*C.uint8_t)(&seed[0]))
	res := &cryptoResult{Pages: p.Pages, Warm: p.Warm}
	for rep := range p.Warm + p.Reps {
		var r cryptoRep
		step := func(kind int, total *int64) func(first, k int) error {
			return func(first, k int) error {
				ns := int64(C.cb_run(C.int(kind), C.int(k)))
				if ns < 0 {
					return fmt.Errorf("item 5c: a tag failed to open (kind %d)", kind)
				}
				*total += ns
				return nil
			}
		}
		if err := interleave(p.Pages, rep, []func(first, k int) error{
			step(0, &r.CopyNs), step(1, &r.MACNs), step(2, &r.EncNs),
		}); err != nil {
			return nil, err
		}
		if rep >= p.Warm {
			res.Reps = append(res.Reps, r)
		}
	}
	return res, nil
}
