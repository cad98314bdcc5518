// Package dsmshm is a software distributed shared memory for Go programs in
// the line of TreadMarks: the ranks of a job (one process each, usually
// started by dsmrun) share segments of memory that they read and write as
// plain Go slices, and synchronize with locks and barriers.
//
//	node, err := dsmshm.Start()          // joins the job dsmrun describes
//	defer node.Close()                   // collective: a final barrier
//	seg, err := node.Alloc("grid", n*8)  // collective, zero-filled
//	g := dsmshm.View[float64](seg)       // or seg.Bytes()
//	g[i] = 1                             // no accessor calls
//	node.Barrier(0)                      // everyone sees everyone's writes
//	node.Lock(3); g[0]++; node.Unlock(3)
//
// The package name says what it provides (distributed shared memory) and
// shadows nothing that programs commonly import. It needs Linux on x86-64
// and cgo (the fault handler reads the x86 page-fault error code to tell
// reads from writes).
//
// # Consistency model
//
// Release consistency for data-race-free programs: writes a rank makes
// before a release (Unlock, or entering a barrier) are visible to every rank
// after a matching acquire (Lock of the same id, or leaving the barrier),
// transitively. Accesses not ordered by synchronization may see old values.
// Goroutines of one rank share that rank's memory directly; locks exclude
// goroutines of one rank from each other as well, and Barrier is called by
// one goroutine per rank.
//
// # Protocol: home-based lazy release consistency
//
// Every page has a home rank (pages are dealt out in contiguous blocks, so
// rank r is home for the r-th part of each segment, which suits programs
// that partition data by rank). The home's copy is the master copy and is
// never invalid. Elsewhere a page is invalid, read-only or read-write:
//
//   - A write to a read-only page faults; the handler copies the page to a
//     twin, marks it dirty (read-write) and returns, and the write proceeds.
//     At the home no twin is needed, and a home page that no other rank
//     holds a copy of is not write-protected at all (see "Exclusive home
//     pages" below).
//   - At a release every dirty page homed elsewhere is write-protected and
//     diffed against its twin (byte-exact runs, so ranks writing different
//     bytes of one page never overwrite each other: a multiple-writer
//     protocol without ping-pong). Diffs go to the homes, which apply them
//     at once and answer with the page's new version number; the release
//     completes when every home has answered. The home bumps the version of
//     pages it wrote itself while other ranks may hold copies of them.
//   - The resulting write notices, (page, version) pairs, travel with the
//     synchronization: to the lock's manager (rank id mod Size) with Unlock
//     and from it with the next grant; to the barrier manager (rank 0) and
//     back from it to all. At an acquire a rank invalidates every cached page
//     older than its notice (one mprotect per run of pages).
//   - A read or write of an invalid page faults; the handler fetches the
//     whole page from its home, with the invalid pages after it that share
//     that home and were used before (see "Fetching runs of pages"), maps
//     them, and the access proceeds.
//
// Home-based LRC was chosen over TreadMarks' homeless LRC because it is the
// simpler one to get right and it bounds memory without a separate garbage
// collector. In homeless LRC every writer keeps its diffs until all ranks
// have seen them, write notices are kept per interval with vector
// timestamps, and a miss gathers and orders diffs from several writers;
// memory grows until a global garbage collection at a barrier. Here diffs
// exist only between a release and the home's answer. Write notices are
// per-page version numbers, and a newer notice for a page subsumes every
// older one, so every set of notices (a rank's knowledge, a lock manager's,
// the barrier manager's) holds at most one entry per shared page, however
// long the program runs: that is the garbage collection. To keep messages
// small, each set stamps its entries with a local sequence number and every
// sender remembers, per receiver, how far it has sent; only newer entries
// travel. A rank's knowledge includes everything it acquired, and it passes
// all of it on at its next release, so notices follow happens-before
// transitively. The costs of this choice are diffs sent at every release even
// if nobody reads them, and whole pages fetched on a miss; a miss is one
// round trip to one home.
//
// # Fetching runs of pages
//
// A miss on page p asks p's home for p and the pages after it that are
// invalid here, share that home and were used here before (fetched for a
// fault or Prepare since the segment began), up to Config.FetchRun (8 by
// default, as ArgoDSM fetches 8 pages per remote miss) in one request, and
// the home answers with as many of them from p on as it is home of.
// Programs read shared arrays in runs (a Jacobi boundary row is two pages),
// so one round trip serves what would otherwise be several; a page this
// rank never needed is never fetched along, so a run costs no bytes a
// program's own misses would not (a Jacobi rank never fetches the interior
// of a neighbour's band, only its boundary row). Consistency is that of
// single-page fetches: a page fetched early is installed exactly as a
// fault on it at that moment would install it, with the home's current
// copy and version, under its own lock, and an invalid page may be
// fetched at any time (release consistency asks only that a copy be no
// older than the notices its rank has acquired, and the home's copy is the
// newest there is). The pages after p are taken only if their locks are
// free at once (a trylock; see "Why Prepare and faults cannot deadlock"),
// are still invalid under them, and stay locked until their state and
// protection are set, so an invalidation cannot slip between the two.
//
// # Exclusive home pages
//
// The home keeps, per page it is home of, a copyset bit (dsm.c): set when
// another rank may hold a copy. It is set when the page server serves the
// page, when a diff from another rank is applied to it (the sender keeps its
// copy as the new version), and by Prepare(write) at the home; every page
// starts with it set, because every rank starts with a valid zero copy,
// except in a one-rank job. A home page is clean (read-only, bit set), dirty
// (writable, bit set: written since another rank may have copied it) or
// exclusive (writable, bit clear). A release flushes only dirty pages: it
// bumps the version, records the write notice and clears the bit, leaving
// the page writable. Exclusive pages cost nothing: no fault, no
// protection change, no notice. So in a one-rank job nothing is ever
// protected, and in a job that partitions data by home, only the pages
// others read (a Jacobi boundary row) travel as notices. A fourth state,
// served while writable, is below.
//
// When the page server serves an exclusive page, it copies it under the
// page's lock, keeps the copy in the page's twin slot (a page homed here
// has no twin otherwise), sets the bit to "served while writable" and
// leaves the page writable (dsm.c, answer): the home's writes do not fault.
// The next release of the home, which lists the page as dirty (writable,
// bit set), write-protects it under its lock and compares it with the copy
// kept (dsm_flush_pages): unchanged, the page is clean (read-only, bit
// set) and needs no notice, every copy served being the page as it is;
// changed, the home wrote it since, and it is flushed like a dirty page,
// with a notice. From that mprotect on, a home write faults, and the
// handler waits for the page lock (held by a plain pthread, never by a
// goroutine), marks the page dirty and lets the write proceed. A page
// served while writable and served again is first compared with the copy
// kept: if the home wrote it since, it becomes dirty (bit 1, writable)
// before it is copied, so that a later write-back cannot make it look
// unchanged to the release while a copy holds the value in between. A
// diff applied to such a page goes into the kept copy as well: the copies
// served lack only what the diff changed, which the sender's notice covers,
// as for a clean page. Applying a diff to an exclusive page write-protects
// it first (track), and Prepare(write) at the home marks the page dirty
// (bit 1), which ends "served while writable" too. This used to be an
// mprotect before every copy, inside the fetch's round trip, and a fault at
// the home's next write: on this project's VM (its page tables go through
// the hypervisor) it and the client's four reads of a reply made a fetch's
// round trip (Stats.FetchTime) ~60 us instead of ~40 (README, "DSM"); now a
// fetch costs a 4 KiB copy into the twin slot, and a release a 4 KiB
// comparison per page served since the last.
//
// Why no update is lost: take a home page p and a copy of it at another
// rank R with version u. Claim: from the moment p's bit was last cleared,
// at a release of the home that published version v, every write the home
// makes while the bit stays clear either is in R's copy or R will
// invalidate its copy before it can be obliged to see the write.
// Copies are made only by a fetch or a diff acknowledged by the home, both
// of which set the bit, and versions only grow, so while the bit stays
// clear every copy elsewhere was made before the clearing release and has
// u < v. The notice (p, v) is in the home's knowledge from that release
// on, and knowledge travels with every later release of the home, through
// lock and barrier managers, transitively; so any acquire of R that follows
// a later release of the home (which is the only way R can be obliged to
// see the write) delivers (p, v) to R no later than that acquire, and the
// acquire invalidates every cached copy older than a notice it receives
// (a dirty one is flushed first: its diff's acknowledgement cannot make it
// v or newer, since it was based on u < v). A fetch after that returns the
// master copy, which has every write. The bit is cleared only together
// with a version bump and a notice, so a copy made while it is set is
// covered by that notice in the same way, and a dirty page's writes are
// covered by the notice of the release that flushes it. A page served while
// writable is settled by the next release of the home: every copy served
// since the bit was set from 0 holds the content kept (a second copy of a
// changed page made it dirty, bit 1, first), plus diffs whose senders'
// notices cover them; so if the page still equals the kept copy when
// write-protected, every copy is current, and if it does not, the release
// issues the notice.
//
// A rank's copy can be behind its own notice (another rank wrote the same
// page concurrently), so an acquire checks every notice it receives against
// the cached version, not only notices that are news. A page dirtied again
// by a goroutine of the rank while an acquire invalidates it is flushed
// first and retried, so no local write is lost.
//
// # Faults
//
// Go turns SIGSEGV into a panic, so the fault handler is C (dsm.c),
// installed after the Go runtime with SA_SIGINFO|SA_ONSTACK and all signals
// masked. It handles faults inside registered segments and passes every
// other fault to the handler it replaced, Go's: a nil dereference still
// panics and can be recovered as usual.
//
// A handler must never wait for a goroutine: the faulting thread cannot be
// preempted while in the handler, so a garbage collector stopping the world
// would wait for it forever while the goroutine it waits for stays stopped.
// Here no fault ever waits for Go code. The page table (states, versions,
// per-page futex locks) lives in C. An invalid-page fault is resolved by the
// faulting thread itself: it sends a request over a blocking socket (one
// "page channel" per home, serialized by a futex) and reads the page back.
// At the home the request is answered by a page server thread that is a
// plain pthread, not a goroutine, reading the master copy under the page's
// lock. Go code takes page locks only inside cgo calls, which run to
// completion on their own thread and do not hold up a stop-the-world. So
// faults from any goroutine work under any GC pressure, even with
// GOMAXPROCS=1, and the cost of a stop-the-world meeting a fetch is at most
// one round trip.
//
// # Why Prepare and faults cannot deadlock
//
// A fetch waits for the home's page server, which waits for the lock of the
// page it serves there; so across ranks, page locks can wait for each other.
// Two rules (dsm.c) keep the waits acyclic. First, only a thread holding
// the lock of an invalid page homed elsewhere (and at most the locks of the
// invalid pages after it of the same home, which it took without waiting:
// a run, above) holds it across a fetch: the fault handler, and Prepare,
// which fetches the invalid pages of its range as faults do and only then
// makes the range writable, fetching nothing while it holds other locks.
// Locks taken without waiting add no edge to the graph of waits. Second, no
// thread holds locks of pages homed at its own rank and of pages homed
// elsewhere at once: Prepare, releases and acquires lock a range in
// ascending order one run of pages of one kind at a time. So the lock of a
// page homed here is held only for local work (a copy, an mprotect, a
// diff), by a thread that waits for nothing but other such locks, taken in
// ascending order; the page server, which takes one such lock at a time,
// always gets it; every fetch therefore completes, and with it every wait
// for a lock of a page homed elsewhere. Prepare used to lock its whole
// range, home pages included, and fetch with every lock held: two ranks
// preparing ranges that covered each other's pages (every rank preparing
// the segment after the final barrier) each held the lock the other's
// page server waited for, and hung for good (over TCP, until the page I/O
// timeout). None of this changes what a fetch or Prepare does to a page,
// which happens under that page's lock as before, so the consistency
// argument above is untouched: a home page prepared for writing has its
// copyset bit set under its lock (it stays dirty until the next release),
// and a page homed elsewhere is twinned, under its lock, from the copy the
// fetch installed.
//
// userfaultfd was not used: CRIU refuses to dump a process
// holding one, and PROT_NONE plus this handler serves both purposes, so the
// library needs no Detach/Reattach around a checkpoint.
//
// Each segment is a memfd mapped twice: the application view, whose
// protections encode the page states, and a system view, always writable,
// through which the library installs fetched pages, applies diffs, makes
// twins and serves pages without changing protections under the
// application's feet. A page is write-protected before it is diffed, so a
// concurrent writer of the same rank faults and re-twins after the diff.
// The page server thread serves home pages without changing their
// protection (see "Exclusive home pages").
//
// Measured here (2 cores, two ranks in one process; see TestFaultCosts): a
// write fault on a page homed locally costs about 8 us, a write fault with a
// twin about 11 us, a read fault that fetches a page 20-90 us (a socketpair
// or TCP on loopback; most of the spread is waking the home's page server
// thread on two busy cores).
//
// # System calls on shared memory
//
// When the kernel touches shared memory on behalf of a system call
// (f.Write(seg.Bytes()), f.Read into a segment), a protected page raises no
// signal: the call fails with EFAULT ("bad address"), possibly after a short
// transfer. Call seg.Prepare(off, n, write) first: it brings the range up to
// date and, with write, makes it writable (twinned), without faults. The
// range stays prepared until this rank's next acquire; do not synchronize
// between Prepare and the system call. Ranks may prepare ranges that cover
// each other's pages at the same time (see "Why Prepare and faults cannot
// deadlock").
//
// # The VMA limit
//
// Every run of pages with one protection is a separate memory mapping
// (VMA), and the kernel limits a process to vm.max_map_count of them (65530
// by default). Protection changes are made per run of adjacent pages and the
// kernel merges neighbours that agree, but in the worst case every page of
// the application view is its own VMA. Alloc therefore refuses (ErrTooLarge)
// a segment whose pages, added to those already allocated and the mappings
// in use, could exceed the limit; the error says which sysctl to raise.
// With the default limit that is about 240 MiB of shared memory.
//
// Each rank checks against its own process, so near the limit ranks can
// disagree. The decision is collective: each rank maps its side (or finds
// it cannot) and enters the allocation barrier with its verdict; the
// barrier manager returns the first refusal to all, and then every rank
// returns the same error (matching ErrTooLarge when that was the reason)
// and unmaps and unregisters its side. So a failed Alloc, a refusal or
// ranks whose calls disagree, leaves nothing behind, and the program may
// go on and retry with the same name. (A rank used to refuse alone while
// the others waited for it in the barrier, and a failed barrier left the
// segment registered.)
//
// # Transport
//
// Ranks talk over TCP. Every rank dials every other rank (retrying for up
// to 30 s while peers start) twice: a control connection carrying framed
// messages (wire.go: length-prefixed, bounded to 64 MiB, counts checked
// against the frame size, a read deadline once a frame has started; the
// decoder is fuzzed) and a page channel for fetches, which the dialler uses
// only once the peer's handshake answer says its page server serves the
// channel (a paused peer refuses it instead, so no fault ever waits on a
// connection that only the peer's kernel accepted). Every connection is
// authenticated first; see Security. Listeners bind the wildcard address and MPTCP is disabled on
// every socket, because CRIU refuses MPTCP sockets. Control frames carry
// per-peer sequence numbers; each
// sender keeps its frames until the receiver acknowledges them (an unnumbered
// ack frame on the receiver's own control connection, coalesced: at most one
// queued at a time), so the resend buffer holds only what is in flight. The
// receiver delivers frame n+1 after n only, drops frames it has delivered, and
// treats a gap as an error. Protocol tests run ranks in one process over an
// in-memory transport.
//
// A page channel on which a fetch fails (a reset, or no answer within the
// 60 s page I/O timeout) is closed by the faulting thread, which signals an
// eventfd; a goroutine then dials a new channel to that home, retrying for
// up to the dial timeout, while faults on the home's pages re-fault (1 ms
// apart, nothing held). If the home cannot be reached in that time, the node
// fails with an error naming the home and the address; Prepare returns it,
// and a fault that must abort prints it. A channel closed because its home
// announced a migration, or because this rank pauses, is not redialled: the
// resumption dials it.
//
// # Security
//
// Every job has a secret (Config.Secret; dsmrun run makes a new one per job
// and hands it to each rank on a pipe, see runtime.Self). A connection
// between ranks opens with a mutual challenge-response over fixed-size
// messages keyed by it (secure.go), so a rank reads nothing of a
// connection's payload, and allocates nothing from a length it carries,
// before the peer has proved it holds the secret; the proofs cover fresh
// nonces from both ends, so a recorded handshake cannot be replayed, and
// the address a migrated rank announces, so no one else can repoint a rank.
// The traffic keys also need an X25519 exchange made in the handshake, so a
// recorded connection stays unreadable to whoever learns the secret later.
// A connection that fails is closed and counted (Stats.Rejected), nothing
// more. A rank holds at most 64 connections that have not authenticated
// (16 per remote address), closing the oldest to make room, each for at
// most the 10 s handshake timeout.
//
// After the handshake, each direction has a key of its own, and every
// control frame, page request and page reply carries a ChaCha20-Poly1305
// tag under it with a counter as nonce: a message forged, changed, replayed
// or reordered on the way fails, and its connection is dropped like a
// broken one (a page channel is redialled). With Config.Encrypt the frame
// bodies, requests and pages are encrypted too. The C half does the page
// channels' cryptography itself (aead.c: no allocation, no locks, nothing
// but computation, so the fault handler may call it), checked against Go's
// x/crypto in its tests.
//
// The page server reads and writes its channels without blocking, keeps a
// partial request per channel (dropped after 5 s), and serves one channel
// per peer rank (a new one from the same rank replaces the old), so a slow
// or stalled peer delays no one else, and no number of connections can
// exhaust its table.
//
// What the secret does not protect: the traffic's size and timing, and the
// connections themselves (whoever can reset a TCP connection can break a
// job, as without any of this). The secret is in each rank's memory, so in
// the CRIU images of a rank being migrated (root-only, on a tmpfs).
//
// # Migration
//
// A rank launched by migrated registers Prepare and Resume hooks in Start.
// Prepare returns once the rank may be dumped holding no socket at all:
//
//   - the listener is closed, with every connection that has not
//     authenticated, and no handshake is left running (a connection CRIU
//     was not asked to carry, an outsider's or one in the listener's queue,
//     would fail the dump); peers dialling meanwhile are refused and retry,
//     and Resume listens again on the same port;
//   - each writer (one per peer) finishes the frame it is writing, sends an
//     unnumbered "away" frame, closes its connection and parks; messages the
//     rank sends meanwhile are queued;
//   - inbound control connections are closed (nothing more is accepted
//     until Resume) and their readers waited for;
//   - page fetches in flight finish; new ones do not start (a faulting
//     thread sleeps 1 ms and returns from the handler, so the access faults
//     again: no thread waits inside connect or read); the rank's page
//     channels are closed and its page server closes those it serves,
//     between requests;
//   - what the rank only caches is freed, so that its image holds only what
//     only it has (its home pages, its dirty pages and their twins, its
//     private memory): clean copies of pages homed elsewhere become invalid
//     and their memory is punched out of the segment's memfd, and twins of
//     pages that are not dirty are discarded (Stats.MigDropped, MigKept).
//     Invalidating a clean copy is what a write notice does; it is always
//     allowed, since the home has the page at least as new (the copy was
//     fetched from it, or made valid by the rank's own diffs, which the home
//     applied before acknowledging). A thread that touches such a page
//     before the dump faults and waits with the fetches; after the move the
//     page is fetched from its home like any invalid page, in runs (the used
//     bits stay).
//
// Resume listens again, dials a new page channel to every peer and lets
// each writer dial its peer with a handshake announcing the rank's address (info.Host and the
// same port after a move, the old address otherwise) and resend every frame
// the peer has not acknowledged. A peer receiving such a handshake records the
// address (as UpdatePeer does), closes its dead connection, redials the
// moved rank and resends what that rank has not acknowledged, and dials a
// new page channel to it. Fetches resume last.
//
// One rank of a job migrates at a time. Before it pauses, a rank asks
// every peer (a migrate-intent message) and goes on only if all say yes; a
// rank says no while it asks or migrates itself, while a peer is away, or
// while its yes to another rank stands (until that rank's migrate-done,
// sent after its Resume, or 10 min). A refused rank asks again for up to
// 300 ms, pausing 5-25 ms at random in between: a peer's migrate-done may
// still be in flight, and of two ranks asking at once one usually gets
// through. Refused still, it fails before pausing: nothing to undo, and the
// move can be retried. Without this, two ranks pausing at once could each
// miss the other's "away" (their readers close) and later take the other's
// silence for a failure.
//
// A peer that reads "away" waits for the rank up to Config.AwayTimeout
// (default 5 min), then fails with a clear error. Its messages to the rank
// queue; its faults on pages homed there close the channel and re-fault
// (sleeping 1 ms in between, nothing held) until the new channel arrives. A
// connection that ends without "away" or a goodbye is a failure unless the
// rank reconnects within DialTimeout, as before.
//
// Why nothing is lost or applied twice: every control message is a
// numbered frame kept by its sender until acknowledged, and an ack is sent
// only for frames already pushed to the receiver's inbox, which is in
// process memory and moves with it (CRIU dumps it; a called-off migration
// keeps it). A frame written to a connection that closed before the
// receiver read it is therefore unacknowledged and resent on the next
// connection; the receiver delivers only frame n+1 after n, so a resent
// frame already delivered is dropped and none is delivered twice or out of
// order. Acks are idempotent (the highest seq wins), and losing one only
// delays trimming. Page fetches are idempotent reads retried on a new
// channel. Rank 0's barrier manager, the lock managers (lock id mod size)
// and the homes of pages are state in the rank's memory (the dispatcher's
// maps, the master copies of pages, their versions), not in the network, so
// they move with the process: a peer's lock request or diff reaching the
// moved rank after the restore finds exactly the state the dump captured,
// and replies it had queued before the dump are sent after Resume.
//
// The garbage collector is off between Prepare and Resume: a thread that
// faulted inside runtime assembly (copy into shared memory) cannot be
// preempted while it re-faults, and a stop-the-world would wait for it
// while the goroutine that runs Resume is stopped.
//
// # Counters for the daemon's metrics
//
// Besides Prepare and Resume, a rank launched by migrated answers its
// daemon's "stats" command (runtime's Hooks.Stats) with its counters (faults,
// fetches, diffs, barriers and waits: a subset of Stats), which `migrated
// serve --metrics` exports per job and rank (docs/metrics.md). The daemon
// asks when it is scraped, over the same control channel as the hooks and
// never while the rank is migrating; the answer is made of atomic loads (the
// C counters and the Go ones), takes no lock a fault, fetch or release
// holds, and costs the fault path nothing. The counters are in the rank's
// memory: after a migration the new host's daemon shows them, going on from
// where they were.
//
// # Lifecycle and locks
//
// Start and Alloc are collective and end with a barrier, so no rank can
// fetch a page before its home has the segment. Close is collective too: a
// final barrier, then goodbyes on every connection, then the page server
// thread stops and the mappings go away; slices over segments must not be
// used after Close. Go-side lock order: barrierMu, syncMu, freeMu, segMu, mu;
// the dispatcher goroutine never takes syncMu; Alloc holds barrierMu from
// mapping its segment until the barrier has decided, so that undoing it
// removes the last segment. C-side: page locks of one kind (homed here, or
// homed elsewhere) at a time, in ascending page order, then a page
// channel's lock; only a single lock of an invalid page homed elsewhere is
// held across a fetch (see "Why Prepare and faults cannot deadlock").
//
// # Unfinished
//
// Migration under GC pressure is not reliable yet: with a goroutine
// allocating hard and calling runtime.GC, the in-process stress test
// (TestMigrationHooksUnderLoad with DSM_MIGRATION_GC_STRESS=1) hangs about
// one run in ten for about a minute (the away timeout or the page I/O
// timeout): the whole process stalls, which points at a stop-the-world
// waiting for a thread in the re-fault loop (the return from the handler
// evidently does not always let the preemption through) or blocked in a
// page read. Not yet diagnosed. Without that pressure 15 of 15 runs passed.
// The copyset is one bit per home page, not a set of ranks: a page another
// rank reads in every interval faults once per interval at the home and
// sends a notice, and notices still travel to every rank through the
// barrier manager (they are few now: only pages others may hold). A page
// fetch is one round trip per page, so a boundary row of two pages costs
// two. Peers of an absent rank keep the garbage collector on: a
// peer thread that faults on a page of the absent home inside runtime
// assembly (copy, not a plain slice access) delays a stop-the-world until
// the home is back, and since reconnecting needs goroutines, such a fault
// waits for the away timeout and aborts; use seg.Prepare before bulk copies
// into pages homed elsewhere. The resend buffer is bounded by what is in
// flight, not by a fixed size. In the daemon's IP-preserving mode (a rank
// with an address of its own, dialling from it: DSM_BIND) the hooks are not
// called at all: CRIU's TCP repair carries the connections, and peers see a
// pause. Segments live until Close. A rank
// that dies is noticed when its connection breaks (or after the dial
// timeout if it closed cleanly without a goodbye); a fault waiting on a dead
// home aborts the process with a message after the dial timeout, when its
// page channel could not be redialled (the away timeout if the home
// announced a migration), or at once when the node has failed.
package dsmshm
