// Package wire is the daemons' transport: an authenticated, encrypted, framed
// connection over a net.Conn, keyed by a token shared by all hosts (LoadToken).
//
// # Handshake
//
// Client and Server run a mutual challenge-response over fixed-size messages
// (nothing is allocated from a length the peer chose):
//
//	C -> S  helloC = "DSMW" | version | 'C' | nonceC (32 random bytes)
//	S -> C  helloS = "DSMW" | version | 'S' | nonceS (32 random bytes)
//	C -> S  proofC = HMAC-SHA256(kAuth, "client" | helloC | helloS)
//	S -> C  status (0 ok, 1 rejected) | proofS = HMAC-SHA256(kAuth, "server" | helloC | helloS)
//
// kAuth and the two traffic keys are HKDF-SHA256(secret=token,
// salt=helloC|helloS). Both nonces are fresh, so a recorded handshake replayed
// against either side fails; the role byte and the labels differ, so a proof
// reflected back at its sender fails. The client proves first: the server,
// which anyone can reach, never emits a token-dependent value to a peer that
// has not proved it knows the token (no offline guessing material).
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
