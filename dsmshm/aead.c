// ChaCha20-Poly1305 (RFC 8439). See aead.h.
//
// Safe in a signal handler: no allocation, no locks, no global state, no libc
// but memcpy and memset, a few hundred bytes of stack. Constant time: no
// branch or array index depends on the key, the key stream, the message or
// the tag (only on the lengths, which are public); the tag check ORs all
// byte differences together before it looks at the result.
//
// ChaCha20 is the plain 20-round block function over 64-byte blocks.
// Poly1305 is the "donna" 64-bit variant: the 130-bit accumulator and r in
// three limbs of 44, 44 and 42 bits, products in unsigned __int128.

#include "aead.h"

#include <string.h>

typedef unsigned __int128 u128;

static inline uint32_t ld32(const uint8_t *p) {
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void st32(uint8_t *p, uint32_t v) {
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static inline uint64_t ld64(const uint8_t *p) {
	return (uint64_t)ld32(p) | (uint64_t)ld32(p + 4) << 32;
}

static inline void st64(uint8_t *p, uint64_t v) {
	st32(p, (uint32_t)v);
	st32(p + 4, (uint32_t)(v >> 32));
}

// wipe clears secrets off the stack; volatile so that the stores survive
// dead-store elimination.
static void wipe(void *p, size_t n) {
	volatile uint8_t *v = (volatile uint8_t *)p;
	while (n--)
		*v++ = 0;
}

// ---- ChaCha20 ----

#define ROTL32(v, c) (((v) << (c)) | ((v) >> (32 - (c))))
#define QR(a, b, c, d)                                                         \
	do {                                                                   \
		a += b; d ^= a; d = ROTL32(d, 16);                             \
		c += d; b ^= c; b = ROTL32(b, 12);                             \
		a += b; d ^= a; d = ROTL32(d, 8);                              \
		c += d; b ^= c; b = ROTL32(b, 7);                              \
	} while (0)

// chacha_init sets up the input state; s[12] is the block counter.
static void chacha_init(uint32_t s[16], const uint8_t key[32], uint32_t counter,
                        const uint8_t nonce[12]) {
	s[0] = 0x61707865; // "expand 32-byte k"
	s[1] = 0x3320646e;
	s[2] = 0x79622d32;
	s[3] = 0x6b206574;
	for (int i = 0; i < 8; i++)
		s[4 + i] = ld32(key + 4 * i);
	s[12] = counter;
	s[13] = ld32(nonce);
	s[14] = ld32(nonce + 4);
	s[15] = ld32(nonce + 8);
}

// chacha_block writes the key stream block of state s as 16 words and steps
// the block counter.
static inline void chacha_block(uint32_t s[16], uint32_t ks[16]) {
	uint32_t x0 = s[0], x1 = s[1], x2 = s[2], x3 = s[3];
	uint32_t x4 = s[4], x5 = s[5], x6 = s[6], x7 = s[7];
	uint32_t x8 = s[8], x9 = s[9], x10 = s[10], x11 = s[11];
	uint32_t x12 = s[12], x13 = s[13], x14 = s[14], x15 = s[15];
	for (int i = 0; i < 10; i++) {
		QR(x0, x4, x8, x12);
		QR(x1, x5, x9, x13);
		QR(x2, x6, x10, x14);
		QR(x3, x7, x11, x15);
		QR(x0, x5, x10, x15);
		QR(x1, x6, x11, x12);
		QR(x2, x7, x8, x13);
		QR(x3, x4, x9, x14);
	}
	ks[0] = x0 + s[0];
	ks[1] = x1 + s[1];
	ks[2] = x2 + s[2];
	ks[3] = x3 + s[3];
	ks[4] = x4 + s[4];
	ks[5] = x5 + s[5];
	ks[6] = x6 + s[6];
	ks[7] = x7 + s[7];
	ks[8] = x8 + s[8];
	ks[9] = x9 + s[9];
	ks[10] = x10 + s[10];
	ks[11] = x11 + s[11];
	ks[12] = x12 + s[12];
	ks[13] = x13 + s[13];
	ks[14] = x14 + s[14];
	ks[15] = x15 + s[15];
	s[12]++;
}

// chacha_xor64 XORs one full 64-byte block of p with the next key stream
// block, using ks as scratch (the caller wipes it once at the end).
static inline void chacha_xor64(uint32_t s[16], uint32_t ks[16], uint8_t *p) {
	chacha_block(s, ks);
	for (int i = 0; i < 16; i++)
		st32(p + 4 * i, ld32(p + 4 * i) ^ ks[i]);
}

// chacha_xor_tail XORs the last n < 64 bytes of a message with the next key
// stream block.
static void chacha_xor_tail(uint32_t s[16], uint32_t ks[16], uint8_t *p, size_t n) {
	uint8_t b[64];
	chacha_block(s, ks);
	for (int i = 0; i < 16; i++)
		st32(b + 4 * i, ks[i]);
	for (size_t i = 0; i < n; i++)
		p[i] ^= b[i];
	wipe(b, sizeof b);
}

// chacha_xor XORs p[0:n] with the key stream from s's block counter on.
static void chacha_xor(uint32_t s[16], uint8_t *p, size_t n) {
	uint32_t ks[16];
	for (; n >= 64; n -= 64, p += 64)
		chacha_xor64(s, ks, p);
	if (n > 0)
		chacha_xor_tail(s, ks, p, n);
	wipe(ks, sizeof ks);
}

// ---- Poly1305 ----

#define M44 0xfffffffffffULL
#define M42 0x3ffffffffffULL

typedef struct {
	uint64_t r0, r1, r2; // clamped r, in limbs of 44, 44, 42 bits
	uint64_t h0, h1, h2; // accumulator
	uint64_t pad0, pad1; // s, added at the end
} poly;

static void poly_init(poly *st, const uint8_t key[32]) {
	uint64_t t0 = ld64(key), t1 = ld64(key + 8);
	// r &= 0x0ffffffc0ffffffc0ffffffc0fffffff, split into limbs.
	st->r0 = t0 & 0xffc0fffffffULL;
	st->r1 = ((t0 >> 44) | (t1 << 20)) & 0xfffffc0ffffULL;
	st->r2 = (t1 >> 24) & 0x00ffffffc0fULL;
	st->h0 = st->h1 = st->h2 = 0;
	st->pad0 = ld64(key + 16);
	st->pad1 = ld64(key + 24);
}

// poly_blocks absorbs nb 16-byte blocks; hibit is 1 << 40 (the 2^128 bit in
// limb 2) for full blocks, 0 for a final block padded by hand.
static void poly_blocks(poly *st, const uint8_t *m, size_t nb, uint64_t hibit) {
	const uint64_t r0 = st->r0, r1 = st->r1, r2 = st->r2;
	const uint64_t s1 = r1 * (5 << 2), s2 = r2 * (5 << 2);
	uint64_t h0 = st->h0, h1 = st->h1, h2 = st->h2;
	for (; nb > 0; nb--, m += 16) {
		uint64_t t0 = ld64(m), t1 = ld64(m + 8);
		h0 += t0 & M44;
		h1 += ((t0 >> 44) | (t1 << 20)) & M44;
		h2 += ((t1 >> 24) & M42) | hibit;

		u128 d0 = (u128)h0 * r0 + (u128)h1 * s2 + (u128)h2 * s1;
		u128 d1 = (u128)h0 * r1 + (u128)h1 * r0 + (u128)h2 * s2;
		u128 d2 = (u128)h0 * r2 + (u128)h1 * r1 + (u128)h2 * r0;

		uint64_t c = (uint64_t)(d0 >> 44);
		h0 = (uint64_t)d0 & M44;
		d1 += c;
		c = (uint64_t)(d1 >> 44);
		h1 = (uint64_t)d1 & M44;
		d2 += c;
		c = (uint64_t)(d2 >> 42);
		h2 = (uint64_t)d2 & M42;
		h0 += c * 5;
		c = h0 >> 44;
		h0 &= M44;
		h1 += c;
	}
	st->h0 = h0;
	st->h1 = h1;
	st->h2 = h2;
}

// poly_padded absorbs m[0:n], n < 16, zero-padded to a full block (the AEAD
// construction's padding; nothing when n == 0).
static void poly_padded(poly *st, const uint8_t *m, size_t n) {
	if (n == 0)
		return;
	uint8_t b[16];
	memset(b, 0, sizeof b);
	memcpy(b, m, n);
	poly_blocks(st, b, 1, 1ULL << 40);
	wipe(b, sizeof b);
}

// poly_mac absorbs m[0:n] zero-padded to a multiple of 16 bytes.
static void poly_mac(poly *st, const uint8_t *m, size_t n) {
	if (n == 0)
		return;
	poly_blocks(st, m, n / 16, 1ULL << 40);
	poly_padded(st, m + (n & ~(size_t)15), n % 16);
}

static void poly_finish(poly *st, uint8_t tag[16]) {
	uint64_t h0 = st->h0, h1 = st->h1, h2 = st->h2, c;

	// Fully carry h.
	c = h1 >> 44; h1 &= M44;
	h2 += c; c = h2 >> 42; h2 &= M42;
	h0 += c * 5; c = h0 >> 44; h0 &= M44;
	h1 += c; c = h1 >> 44; h1 &= M44;
	h2 += c; c = h2 >> 42; h2 &= M42;
	h0 += c * 5; c = h0 >> 44; h0 &= M44;
	h1 += c;

	// g = h + 5 - 2^130; take g if it did not borrow (h >= p).
	uint64_t g0 = h0 + 5; c = g0 >> 44; g0 &= M44;
	uint64_t g1 = h1 + c; c = g1 >> 44; g1 &= M44;
	uint64_t g2 = h2 + c - (1ULL << 42);
	c = (g2 >> 63) - 1; // all ones: take g; zero: keep h
	g0 &= c; g1 &= c; g2 &= c;
	c = ~c;
	h0 = (h0 & c) | g0;
	h1 = (h1 & c) | g1;
	h2 = (h2 & c) | g2;

	// h += s (mod 2^128).
	uint64_t t0 = st->pad0, t1 = st->pad1;
	h0 += t0 & M44; c = h0 >> 44; h0 &= M44;
	h1 += (((t0 >> 44) | (t1 << 20)) & M44) + c; c = h1 >> 44; h1 &= M44;
	h2 += ((t1 >> 24) & M42) + c; h2 &= M42;

	st64(tag, h0 | (h1 << 44));
	st64(tag + 8, (h1 >> 20) | (h2 << 24));
	wipe(st, sizeof *st);
}

void dsm_poly1305(const uint8_t key[32], const uint8_t *m, size_t n, uint8_t tag[16]) {
	poly st;
	poly_init(&st, key);
	if (n >= 16)
		poly_blocks(&st, m, n / 16, 1ULL << 40);
	if (n % 16) {
		uint8_t b[16];
		memset(b, 0, sizeof b);
		memcpy(b, m + (n & ~(size_t)15), n % 16);
		b[n % 16] = 1;
		poly_blocks(&st, b, 1, 0);
		wipe(b, sizeof b);
	}
	poly_finish(&st, tag);
}

// ---- ChaCha20 ----

void dsm_chacha20_xor(const uint8_t key[32], uint32_t counter, const uint8_t nonce[12],
                      uint8_t *p, size_t n) {
	uint32_t s[16];
	chacha_init(s, key, counter, nonce);
	chacha_xor(s, p, n);
	wipe(s, sizeof s);
}

// ---- AEAD ----

// aead_start derives the Poly1305 key from block 0, leaves s at block 1 and
// absorbs the associated data.
static void aead_start(uint32_t s[16], poly *mac, const uint8_t key[32], const uint8_t nonce[12],
                       const uint8_t *aad, size_t na) {
	uint32_t ks[16];
	uint8_t pk[32];
	chacha_init(s, key, 0, nonce);
	chacha_block(s, ks);
	for (int i = 0; i < 8; i++)
		st32(pk + 4 * i, ks[i]);
	poly_init(mac, pk);
	wipe(ks, sizeof ks);
	wipe(pk, sizeof pk);
	poly_mac(mac, aad, na);
}

static void aead_finish(poly *mac, size_t na, size_t n, uint8_t tag[16]) {
	uint8_t b[16];
	st64(b, (uint64_t)na);
	st64(b + 8, (uint64_t)n);
	poly_blocks(mac, b, 1, 1ULL << 40);
	poly_finish(mac, tag);
}

void dsm_aead_seal_nonce(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
                         size_t na, uint8_t *p, size_t n, int enc, uint8_t tag[16]) {
	uint32_t s[16], ks[16];
	poly mac;
	aead_start(s, &mac, key, nonce, aad, na);
	if (enc) {
		// One pass: encrypt a block, then absorb it while it is in cache.
		size_t i = 0;
		for (; n - i >= 64; i += 64) {
			chacha_xor64(s, ks, p + i);
			poly_blocks(&mac, p + i, 4, 1ULL << 40);
		}
		if (i < n) {
			chacha_xor_tail(s, ks, p + i, n - i);
			poly_mac(&mac, p + i, n - i);
		}
		wipe(ks, sizeof ks);
	} else {
		poly_mac(&mac, p, n);
	}
	aead_finish(&mac, na, n, tag);
	wipe(s, sizeof s);
}

int dsm_aead_open_nonce(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
                        size_t na, uint8_t *p, size_t n, int enc, const uint8_t tag[16]) {
	uint32_t s[16];
	poly mac;
	uint8_t want[16];
	aead_start(s, &mac, key, nonce, aad, na);
	poly_mac(&mac, p, n);
	aead_finish(&mac, na, n, want);
	uint32_t d = 0;
	for (int i = 0; i < 16; i++)
		d |= (uint32_t)(want[i] ^ tag[i]);
	wipe(want, sizeof want);
	// d is 0 exactly when the tags match; the outcome is public.
	int ok = (int)(1 & ((d - 1) >> 8));
	if (ok && enc)
		chacha_xor(s, p, n);
	wipe(s, sizeof s);
	return ok ? 0 : -1;
}

static void ctr_nonce(uint8_t nonce[12], uint64_t ctr) {
	st32(nonce, 0);
	st64(nonce + 4, ctr);
}

void dsm_aead_seal(const uint8_t key[32], uint64_t ctr, const uint8_t *aad, size_t na,
                   uint8_t *p, size_t n, int enc, uint8_t tag[16]) {
	uint8_t nonce[12];
	ctr_nonce(nonce, ctr);
	dsm_aead_seal_nonce(key, nonce, aad, na, p, n, enc, tag);
}

int dsm_aead_open(const uint8_t key[32], uint64_t ctr, const uint8_t *aad, size_t na,
                  uint8_t *p, size_t n, int enc, const uint8_t tag[16]) {
	uint8_t nonce[12];
	ctr_nonce(nonce, ctr);
	return dsm_aead_open_nonce(key, nonce, aad, na, p, n, enc, tag);
}
