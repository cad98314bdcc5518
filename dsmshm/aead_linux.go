package dsmshm

/*
#include "aead.h"
*/
import "C"

import "unsafe"

// Go wrappers of the C ChaCha20-Poly1305 in aead.c (see aead.h). The C code is
// meant to be called from C (the fault handler and the page server); these
// wrappers exist so that Go tests can check it against
// golang.org/x/crypto/chacha20poly1305. As everywhere in this package, the
// pointers passed to C point to Go memory without Go pointers inside and are
// not retained after the call.

// aeadKeySize and aeadTagSize are DSM_AEAD_KEY and DSM_AEAD_TAG.
const (
	aeadKeySize = C.DSM_AEAD_KEY
	aeadTagSize = C.DSM_AEAD_TAG
)

// cbytes returns a C pointer to b's first byte, or nil when b is empty.
func cbytes(b []byte) *C.uint8_t {
	if len(b) == 0 {
		return nil
	}
	return (*C.uint8_t)(unsafe.Pointer(&b[0]))
}

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

// aeadSeal is dsm_aead_seal: the nonce is 4 zero bytes and ctr little-endian.
// With enc it encrypts p in place; either way it returns the RFC 8439 tag
// over aad and p (as it is after encryption). aad must not overlap p when enc
// is set.
func aeadSeal(key *[aeadKeySize]byte, ctr uint64, aad, p []byte, enc bool) (tag [aeadTagSize]byte) {
	C.dsm_aead_seal((*C.uint8_t)(&key[0]), C.uint64_t(ctr), cbytes(aad), C.size_t(len(aad)),
		cbytes(p), C.size_t(len(p)), cbool(enc), (*C.uint8_t)(&tag[0]))
	return tag
}

// aeadOpen is dsm_aead_open: it reports whether tag matches aad and p as
// given and, if so and enc is set, decrypts p in place. On a mismatch p is
// left as it was.
func aeadOpen(key *[aeadKeySize]byte, ctr uint64, aad, p []byte, enc bool, tag *[aeadTagSize]byte) bool {
	return C.dsm_aead_open((*C.uint8_t)(&key[0]), C.uint64_t(ctr), cbytes(aad), C.size_t(len(aad)),
		cbytes(p), C.size_t(len(p)), cbool(enc), (*C.uint8_t)(&tag[0])) == 0
}

// aeadSealNonce and aeadOpenNonce are aeadSeal and aeadOpen with a full
// 12-byte nonce (dsm_aead_seal_nonce, dsm_aead_open_nonce), for RFC 8439's
// test vectors.
func aeadSealNonce(key *[aeadKeySize]byte, nonce *[12]byte, aad, p []byte, enc bool) (tag [aeadTagSize]byte) {
	C.dsm_aead_seal_nonce((*C.uint8_t)(&key[0]), (*C.uint8_t)(&nonce[0]), cbytes(aad), C.size_t(len(aad)),
		cbytes(p), C.size_t(len(p)), cbool(enc), (*C.uint8_t)(&tag[0]))
	return tag
}

func aeadOpenNonce(key *[aeadKeySize]byte, nonce *[12]byte, aad, p []byte, enc bool, tag *[aeadTagSize]byte) bool {
	return C.dsm_aead_open_nonce((*C.uint8_t)(&key[0]), (*C.uint8_t)(&nonce[0]), cbytes(aad), C.size_t(len(aad)),
		cbytes(p), C.size_t(len(p)), cbool(enc), (*C.uint8_t)(&tag[0])) == 0
}

// chacha20XOR is dsm_chacha20_xor: p ^= the ChaCha20 key stream for key and
// nonce from block counter on.
func chacha20XOR(key *[aeadKeySize]byte, counter uint32, nonce *[12]byte, p []byte) {
	C.dsm_chacha20_xor((*C.uint8_t)(&key[0]), C.uint32_t(counter), (*C.uint8_t)(&nonce[0]),
		cbytes(p), C.size_t(len(p)))
}

// poly1305Sum is dsm_poly1305: the Poly1305 tag of m under a one-time key.
func poly1305Sum(key *[32]byte, m []byte) (tag [16]byte) {
	C.dsm_poly1305((*C.uint8_t)(&key[0]), cbytes(m), C.size_t(len(m)), (*C.uint8_t)(&tag[0]))
	return tag
}
