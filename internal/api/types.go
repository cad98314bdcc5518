package api

// Message types on daemon connections: the one table of them. The client
// protocol (requests, replies, events, logs) and the daemons' migration
// protocol (internal/migration) share a connection type, internal/wire,
// which reserves 0xf0-0xff for its own frames (TypeData, TypeEnd,
// TypeError); everything the project numbers lies below 0xf0.
const (
	// Client protocol: a client and the daemon it asks.
	TRequest byte = 1 // client -> daemon: Request
	TReply   byte = 2 // daemon -> client: the final answer to a Request
	TEvent   byte = 3 // daemon -> client: progress of a migration
	TLogData byte = 4 // daemon -> client: a chunk of a log
	TEnd     byte = 5 // daemon -> client: end of a log
	TFail    byte = 6 // daemon -> client: the request failed (Error: its words and its kind)

	// Migration protocol: source daemon and target daemon
	// (internal/migration/doc.go says what each step means).
	TBegin        byte = 10 // source -> target: Begin
	TAccept       byte = 11 // target -> source: the process is reserved here
	TFile         byte = 12 // source -> target: one image file follows as a stream
	TFilesDone    byte = 13 // source -> target: no more files
	TRestore      byte = 14 // source -> target: restore now (RestoreMsg)
	TRestored     byte = 15 // target -> source: restored, stopped (Restored)
	TCommit       byte = 16 // source -> target: the source copy is gone, resume yours
	TDone         byte = 17 // target -> source: the process runs on the target (Done)
	TPages        byte = 18 // source -> target: a chunk of CRIU's page-server stream
	TPagesBack    byte = 19 // target -> source: a chunk of the page server's replies
	TPagesEnd     byte = 20 // source -> target: CRIU's dump has exited, the stream is over
	TPagesDone    byte = 21 // target -> source: the page server has written every page
	TOutcome      byte = 22 // target -> source, on a connection of its own: how did this migration end?
	TOutcomeReply byte = 23 // source -> target: the outcome, final
	// Post-copy: the page stream of migration Mig runs on a connection of
	// its own (PageConnMsg), so that pages and the steps do not wait for
	// each other. Its frames are TPages (source CRIU's replies), TPagesBack
	// (the target lazy-pages's requests), TPagesEnd and TPagesDone.
	TPageConn byte = 24 // source -> target, on a connection of its own: the page stream of a post-copy migration
	// A source whose page stream broke asks the target, on a connection of
	// its own, whether its copy had every page (OutcomeMsg both ways).
	TPagesQuery  byte = 25 // source -> target: did migration Mig's copy get every page?
	TPagesAnswer byte = 26 // target -> source: "complete", "lost", "pending" or "unknown"
)

// ReservedFrom is the first message type internal/wire reserves.
const ReservedFrom byte = 0xf0
