// ChaCha20-Poly1305 AEAD (RFC 8439) for dsmshm's C half.
//
// Everything here is async-signal-safe and thread-safe: pure computation on
// the caller's buffers and the stack (about 600 bytes of it), no allocation,
// no locks, no global state, no libc beyond memcpy and memset. The code takes
// no branch and indexes no table by secret data, and the tag comparison in
// dsm_aead_open takes the same time wherever the tags differ.
#ifndef DSMSHM_AEAD_H
#define DSMSHM_AEAD_H

#include <stddef.h>
#include <stdint.h>

#define DSM_AEAD_KEY 32
#define DSM_AEAD_TAG 16

// ChaCha20-Poly1305 (RFC 8439). The 96-bit nonce is 4 zero bytes followed by ctr as
// uint64 little-endian. seal encrypts p[0:n] in place when enc is non-zero (else leaves
// it as it is), then writes the tag over aad[0:na] and p[0:n] as RFC 8439 does (so with
// enc == 0 and n == 0 it is a MAC over aad alone, byte-identical to what Go's
// chacha20poly1305 Seal(nil, nonce, nil, aad) returns).
//
// aad may be NULL when na == 0, p may be NULL when n == 0. aad must not overlap
// p[0:n] when enc is non-zero. n must stay below 2^38 - 64 (RFC 8439's limit:
// the 32-bit block counter would wrap).
void dsm_aead_seal(const uint8_t key[32], uint64_t ctr, const uint8_t *aad, size_t na,
                   uint8_t *p, size_t n, int enc, uint8_t tag[16]);
// open checks tag (constant time) over aad and p[0:n] as received; on a match it decrypts
// p in place when enc is non-zero and returns 0; otherwise returns -1 and leaves p as it was.
int dsm_aead_open(const uint8_t key[32], uint64_t ctr, const uint8_t *aad, size_t na,
                  uint8_t *p, size_t n, int enc, const uint8_t tag[16]);

// The building blocks, exposed for tests (RFC 8439 sections 2.4, 2.5, 2.8
// vectors use nonces that dsm_aead_seal cannot express). Callers use the two
// functions above.
//
// dsm_chacha20_xor XORs p[0:n] in place with the ChaCha20 key stream for key,
// the 12-byte nonce, and the 32-bit block counter starting at counter.
void dsm_chacha20_xor(const uint8_t key[32], uint32_t counter, const uint8_t nonce[12],
                      uint8_t *p, size_t n);
// dsm_poly1305 writes the Poly1305 tag of m[0:n] under the one-time key.
void dsm_poly1305(const uint8_t key[32], const uint8_t *m, size_t n, uint8_t tag[16]);
// dsm_aead_seal_nonce and dsm_aead_open_nonce are dsm_aead_seal and
// dsm_aead_open with a full 12-byte nonce.
void dsm_aead_seal_nonce(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
                         size_t na, uint8_t *p, size_t n, int enc, uint8_t tag[16]);
int dsm_aead_open_nonce(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
                        size_t na, uint8_t *p, size_t n, int enc, const uint8_t tag[16]);

#endif
