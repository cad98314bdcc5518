// Package wire is the daemons' transport: an authenticated, encrypted, framed
// connection over a net.Conn, keyed by a token shared by all hosts (LoadToken).
//
// # Handshake
//
// Client and Server run a mutual challenge-response over fixed-size messages
// (nothing is allocated from a length the peer chose), with an X25519 key
// exchange in it:
//
//	C -> S  helloC = "DSMW" | version | 'C' | nonceC (32 random bytes) | X25519 share (32)
//	S -> C  helloS = "DSMW" | version | 'S' | nonceS (32 random bytes) | X25519 share (32)
//	C -> S  proofC = n (1 or 2) | n x HMAC-SHA256(kAuth(token_i), "client" | helloC | helloS)
//	S -> C  status (0 ok, 1 rejected) | proofS = HMAC-SHA256(kAuth(token), "server" | helloC | helloS)
//
// kAuth(token) is HKDF-SHA256(secret=token, salt=helloC|helloS, "dsmigrate/wire
// v2 auth"). The two traffic keys are HKDF-SHA256(secret=shared|token,
// salt=helloC|helloS, "dsmigrate/wire v2 keys"), where shared is the X25519
// result of the two ephemeral shares: they need the exchange's secret, which
// lives only for the handshake, so traffic recorded now stays unreadable to
// whoever learns the token later (forward secrecy). The proofs cover both
// shares, so a man in the middle without the token cannot put in its own.
// Both nonces are fresh, so a recorded handshake replayed against either
// side fails; the role byte and the labels differ, so a proof reflected back
// at its sender fails. The client proves first: the server, which anyone can
// reach, never emits a token-dependent value to a peer that has not proved
// it knows the token (no offline guessing material).
//
// A token file holds one token, or two during a rotation (LoadToken): the
// client proves each it holds, the server takes the first proof it can check
// with one of its own and answers with that token, so hosts holding the old
// token, the new one or both all talk to each other. A peer of an older
// version is told so after its hello's first six bytes.
//
// # Frames
//
// Each frame on the wire is
//
//	length (uint32 BE, = len(payload)+16) | type (1 byte) | AES-256-GCM(payload) incl. 16-byte tag
//
// sealed with the key of its direction and a nonce that is the frame's
// sequence number in that direction. Length and type are authenticated as
// additional data but sent in clear (the length is visible on the wire
// anyway); the payload is encrypted. A frame that is modified, replayed,
// reordered or dropped fails to open. Any read or write error, including a
// timeout, makes that direction of the Conn permanently unusable: close it.
//
// Types 0xf0-0xff are reserved for this package (TypeData, TypeEnd,
// TypeError); callers number their own messages below 0xf0.
//
// Counters are uint64 and never wrap in practice; there is no rekeying, which
// leaves the AES-GCM usage bounds orders of magnitude above the largest
// image a connection carries.
package wire
