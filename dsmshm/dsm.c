// C half of dsmshm. See dsm.h and doc.go.
//
// Locking: every page has a futex word (seg->lock[p]) that guards its state,
// version, twin and protection. Two rules keep page locks free of deadlock,
// within a rank and across ranks (see doc.go, "Why Prepare and faults cannot
// deadlock"):
//
//   - A thread holds the locks of pages of one kind only: pages homed here,
//     or pages homed elsewhere. Within a kind, ranges are locked in ascending
//     page order; callers split ranges where the kind changes (kind_end).
//   - Only a thread holding the lock of an invalid page homed elsewhere may
//     hold it across a page fetch (a network round trip to the home's page
//     server thread): the fault handler and Prepare's first pass
//     (make_ready). It may also hold the locks of the invalid pages after it
//     of the same home, the run it fetches, which it took with a trylock
//     (run_end): a lock taken without waiting adds no wait. Nothing else
//     waits for the network, or for Go code, with a page lock held.
//
// So a lock on a page homed here is only ever held for local work and only
// ever waited for by threads holding locks of the same kind: the page server,
// which takes such locks alone, always gets them, and every fetch finishes.
// Go calls into this file only through cgo, so a Go caller holding a page
// lock is "in a system call" as far as the Go scheduler is concerned and
// never delays a GC stop. Each page channel (one blocking socket per home)
// has its own futex word, taken after the page lock.

#define _GNU_SOURCE
#include "dsm.h"
#include "aead.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#define MAX_REG 1024
#define MAX_SEG 1024
#define SERVE_TIMEOUT_NS (5ull * 1000000000u) // a started request or an unread reply, at most
#define MAX_RUN 512 // pages per flush run; bounds a stack array
#define SERVED_WRITABLE 2 // a copyset value: see dsm_seg

// A page channel's keys (see secure.go): requests are sealed with tx and a
// counter, replies opened with rx and another.
typedef struct {
	uint8_t tx[DSM_AEAD_KEY], rx[DSM_AEAD_KEY];
	uint64_t ntx, nrx;
} chan_keys;

typedef struct {
	int fd;
	uint32_t mu;         // guards the fields below
	int away;            // the home announced that it is migrating
	uint64_t down_since; // when the channel was found broken (0: not down)
	int redial;          // broken, and the Go side was asked to dial a new one
	chan_keys k;
} dsm_chan;

// A page channel this rank's page server serves: one per client rank (a new
// one from the same rank replaces the old), read and written without
// blocking, so that no client can stall the server for the others.
typedef struct {
	int fd; // -1: none
	chan_keys k;
	uint8_t in[12 + DSM_AEAD_TAG]; // a request: segment u32, first page u32, pages u32, tag
	size_t inlen;
	// A reply: status u64, pages u64 (n), n versions u64, n pages, tag.
	uint8_t out[16 + 8 * DSM_FETCH_RUN_MAX + DSM_FETCH_RUN_MAX * DSM_PAGE + DSM_AEAD_TAG];
	size_t outlen, outoff;
	uint64_t since; // when a request started to arrive or a reply to wait (0: idle)
} srv_conn;

struct dsm_node {
	int rank, size;
	dsm_chan *chans;
	dsm_seg *segs[MAX_SEG];
	int enc;     // encrypt pages and requests (else tags only)
	uint32_t mu; // guards pend, stopping
	srv_conn *pend; // per client rank: a channel handed over, not yet taken by the server (fd -1: none)
	srv_conn *srv;  // per client rank: the channels served (the server thread's alone)
	struct pollfd *pf;
	int *pfrank;
	int stopping;
	int wake[2];
	pthread_t thr;
	int started;
	dsm_cstats st;
	// Migration (see doc.go, "Migration"). paused and inflight form a
	// Dekker pair (sequentially consistent atomics): a fetch announces
	// itself in inflight, then checks paused; dsm_node_pause sets paused,
	// then waits for inflight to drain.
	int paused, inflight;
	int failed;                       // the node failed: waiting faults give up
	char why[256];                    // why, set before failed (see die)
	uint64_t down_wait_ns, away_wait_ns; // how long a fault waits for a broken channel
	int fetch_run;                       // most pages a fetch asks for (dsm_node_set_fetch_run)
	uint64_t drop_req, drop_done;     // guarded by mu: the server drops its fds
	// An eventfd (owned here; -1: none) signalled when a page channel
	// breaks, so that the Go side dials a new one (see fetch).
	int redial_fd;
};

struct dsm_seg {
	dsm_node *node;
	uint32_t id;
	size_t npages, len;
	char *app, *sys, *twin;
	uint8_t *state;
	uint32_t *lock;
	uint64_t *ver;
	int32_t *home;
	// copyset[p], for a page homed here: nonzero when another rank may
	// hold a copy of it (set when the page server serves it or a diff from
	// another rank is applied to it, and by Prepare(write)), so the home's
	// writes to it must be tracked: it is write-protected until written,
	// and a write makes it dirty. Zero: nobody else can hold a valid copy;
	// the page stays writable and the home's writes need no write notice.
	// Cleared only by a release that issues a notice for the page (see
	// doc.go, "Exclusive home pages"). SERVED_WRITABLE: set, and the page
	// server copied the page while it was exclusive, without
	// write-protecting it, keeping the copy in the page's twin slot (unused
	// otherwise for a page homed here); the home's writes do not fault,
	// and the next release compares the page with that copy (see
	// dsm_flush_pages). Unused for pages homed elsewhere.
	uint8_t *copyset;
	// used[p], for a page homed elsewhere: this rank has needed it (a fault
	// or Prepare fetched it, alone or in a run). Only used pages join a
	// run: a program that read a page once will likely read it again after
	// it is invalidated, one that never read it likely never will (see
	// doc.go, "Fetching runs of pages"). Never cleared.
	uint8_t *used;
	int memfd;
};

static dsm_seg *registry[MAX_REG];
static int registry_hi; // slots at or above it were never used
static struct sigaction old_segv;

// ---- futex mutex (Drepper, "Futexes are tricky", mutex #2) ----

static void mu_lock(uint32_t *l) {
	uint32_t c = 0;
	if (__atomic_compare_exchange_n(l, &c, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
		return;
	if (c != 2)
		c = __atomic_exchange_n(l, 2, __ATOMIC_ACQUIRE);
	while (c != 0) {
		syscall(SYS_futex, l, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
		c = __atomic_exchange_n(l, 2, __ATOMIC_ACQUIRE);
	}
}

// mu_trylock takes l if it is free, never waiting.
static int mu_trylock(uint32_t *l) {
	uint32_t c = 0;
	return __atomic_compare_exchange_n(l, &c, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

static void mu_unlock(uint32_t *l) {
	if (__atomic_exchange_n(l, 0, __ATOMIC_RELEASE) != 1)
		syscall(SYS_futex, l, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static void add(uint64_t *c, uint64_t v) { __atomic_add_fetch(c, v, __ATOMIC_RELAXED); }

static uint64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// ---- blocking I/O that survives EINTR (cgo callers get Go's SIGURG) ----

static int write_full(int fd, const void *p, size_t n) {
	const char *b = p;
	while (n > 0) {
		ssize_t r = send(fd, b, n, MSG_NOSIGNAL);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r == 0 ? -EPIPE : -errno;
		b += r;
		n -= (size_t)r;
	}
	return 0;
}

// ---- page protection ----

static int prot_of(uint8_t st) {
	return st == DSM_INVALID ? PROT_NONE : st == DSM_RO ? PROT_READ : PROT_READ | PROT_WRITE;
}

// protect_range sets the protection of pages [a,b) from their states, one
// mprotect per run of equal state, so adjacent pages that agree share a VMA.
static int protect_range(dsm_seg *s, size_t a, size_t b) {
	size_t i = a;
	while (i < b) {
		uint8_t st = s->state[i];
		size_t j = i + 1;
		while (j < b && s->state[j] == st)
			j++;
		if (mprotect(s->app + i * DSM_PAGE, (j - i) * DSM_PAGE, prot_of(st)) != 0)
			return -errno;
		i = j;
	}
	return 0;
}

static int homed_here(dsm_seg *s, size_t p) { return s->home[p] == s->node->rank; }

// kind_end returns the end of the run of pages in [a,b) that are of the same
// kind as page a (homed here, or homed elsewhere): a range that one thread
// locks at once never mixes the two (see the locking rules above).
static size_t kind_end(dsm_seg *s, size_t a, size_t b) {
	size_t e = a + 1;
	while (e < b && homed_here(s, e) == homed_here(s, a))
		e++;
	return e;
}

static void lock_range(dsm_seg *s, size_t a, size_t b) {
	for (size_t i = a; i < b; i++)
		mu_lock(&s->lock[i]);
}

static void unlock_range(dsm_seg *s, size_t a, size_t b) {
	for (size_t i = a; i < b; i++)
		mu_unlock(&s->lock[i]);
}

// ---- page fetch (client side) ----

// A page reply for got pages is, on the wire: status u64, got u64, got
// versions u64, got pages, tag. read_reply reads the reply to a request for
// k pages into its places (header and versions to hdr, pages to page, tag
// to tag) with one readv, which on a local or fast link takes one system
// call instead of four: it reads into the places of a full reply (got ==
// k, the rule: the client asks only for pages of one home), and a shorter
// one, status not 0 or fewer pages (the home has fewer homed from the
// first on than asked), is moved to its own places afterwards. The pages
// it reads over are invalid and locked by the caller, so nothing reads
// them meanwhile. It reads no more than the reply: the channel carries one
// request at a time. It returns 0 and sets *got (0 when status is not 0),
// or a negative errno (-EBADMSG: a header out of bounds, which drops the
// channel like a bad tag; the count is read before the tag is checked,
// bounded by what was asked).
static int read_reply(int fd, uint64_t *hdr, uint8_t *page, uint8_t *tag, size_t k, size_t *got) {
	size_t meta = 16 + 8 * k, plen = k * DSM_PAGE;
	struct iovec full[3] = {{hdr, meta}, {page, plen}, {tag, DSM_AEAD_TAG}};
	size_t have = 0, want = meta + plen + DSM_AEAD_TAG, g = k;
	int parsed = 0;
	while (have < want) {
		// The places of the bytes from have on, up to want.
		struct iovec iov[3];
		int n = 0;
		for (size_t i = 0, off = 0; i < 3 && off < want; off += full[i].iov_len, i++) {
			size_t a = have > off ? have - off : 0, b = want - off < full[i].iov_len ? want - off : full[i].iov_len;
			if (a < b)
				iov[n++] = (struct iovec){(uint8_t *)full[i].iov_base + a, b - a};
		}
		ssize_t r = readv(fd, iov, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r == 0 ? -EPIPE : -errno;
		have += (size_t)r;
		if (!parsed && have >= 16) {
			parsed = 1;
			g = hdr[0] == 0 ? (size_t)hdr[1] : 0;
			if ((hdr[0] == 0 && (g == 0 || g > k)) || (hdr[0] != 0 && hdr[1] != 0))
				return -EBADMSG;
			want = 16 + 8 * g + g * DSM_PAGE + DSM_AEAD_TAG;
			if (have > want)
				return -EBADMSG; // cannot be: the home sends one reply per request
		}
	}
	*got = g;
	if (g == k)
		return 0;
	// Shorter: the bytes from 16 + 8g on sit where a full reply puts them.
	// The tag first (its 16 bytes may straddle the versions and the pages),
	// then the pages, which went 8(k-g) bytes late: their first bytes are
	// in the versions' places past g.
	size_t t = 16 + 8 * g + g * DSM_PAGE;
	for (size_t i = 0; i < DSM_AEAD_TAG; i++, t++)
		tag[i] = t < meta ? ((uint8_t *)hdr)[t] : page[t - meta];
	if (g > 0) {
		size_t d = 8 * (k - g);
		memmove(page + d, page, g * DSM_PAGE - d);
		memcpy(page, (uint8_t *)hdr + 16 + 8 * g, d);
	}
	return 0;
}

// fetch copies the home's current copies of pages [p, p+k) into the system
// view: p and the k-1 pages after it, all invalid here and of one home,
// whose locks the caller holds (see run_end). The home may serve fewer
// (a prefix of the run, at least p); fetch returns how many it installed,
// or a negative errno. It returns -EAGAIN when the page cannot be
// fetched now but may be later: this rank is paused for a migration, or the
// channel to the home is broken and the home may come back (it announced a
// migration, or it may reconnect within the dial timeout). The caller must
// then release everything and retry (see the handler). A broken channel is
// closed here, and the Go side is asked to dial a new one (unless the home
// announced a migration: then the home's return brings one); it installs it
// with dsm_node_replace_chan, or fails the node if the home is really gone.
static int fetch(dsm_seg *s, size_t p, size_t k) {
	dsm_node *n = s->node;
	dsm_chan *c = &n->chans[s->home[p]];
	uint32_t ids[3] = {s->id, (uint32_t)p, (uint32_t)k};
	uint8_t req[12 + DSM_AEAD_TAG], tag[DSM_AEAD_TAG];
	// status, pages served (n), their versions: in clear, covered by the tag
	uint64_t hdr[2 + DSM_FETCH_RUN_MAX];
	uint8_t *page = (uint8_t *)s->sys + p * DSM_PAGE;
	uint64_t t0 = now_ns();
	__atomic_add_fetch(&n->inflight, 1, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&n->paused, __ATOMIC_SEQ_CST)) {
		__atomic_sub_fetch(&n->inflight, 1, __ATOMIC_SEQ_CST);
		return -EAGAIN;
	}
	mu_lock(&c->mu);
	int err = c->fd < 0 ? -ENOTCONN : 0;
	if (err == 0) {
		memcpy(req, ids, 12);
		dsm_aead_seal(c->k.tx, c->k.ntx++, NULL, 0, req, 12, n->enc, req + 12);
		err = write_full(c->fd, req, sizeof req);
	}
	size_t got = 0;
	if (err == 0)
		err = read_reply(c->fd, hdr, page, tag, k, &got);
	size_t plen = got * DSM_PAGE;
	if (err == 0 && dsm_aead_open(c->k.rx, c->k.nrx++, (uint8_t *)hdr, 16 + 8 * got, page, plen, n->enc, tag) != 0) {
		// Forged or damaged on the way: the channel is dropped as broken.
		add(&n->st.bad_tags, 1);
		err = -EBADMSG;
	}
	if (err == 0 && hdr[0] != 0) {
		mu_unlock(&c->mu);
		__atomic_sub_fetch(&n->inflight, 1, __ATOMIC_SEQ_CST);
		return -EPROTO;
	}
	uint64_t since = 0;
	int away = 0, ask = 0;
	if (err != 0) {
		// The channel is unusable (and may be mid-response): drop it.
		if (c->fd >= 0)
			close(c->fd);
		c->fd = -1;
		if (c->down_since == 0)
			c->down_since = now_ns();
		since = c->down_since;
		away = c->away;
		if (!away && !c->redial) {
			c->redial = 1;
			ask = 1;
		}
	}
	mu_unlock(&c->mu);
	__atomic_sub_fetch(&n->inflight, 1, __ATOMIC_SEQ_CST);
	int efd = __atomic_load_n(&n->redial_fd, __ATOMIC_ACQUIRE);
	if (ask && efd >= 0) {
		uint64_t one = 1;
		ssize_t r = write(efd, &one, sizeof one); // async-signal-safe; never blocks (EFD_NONBLOCK)
		(void)r;
	}
	if (err != 0) {
		uint64_t limit = away ? n->away_wait_ns : n->down_wait_ns;
		if (__atomic_load_n(&n->failed, __ATOMIC_ACQUIRE) || now_ns() - since > limit)
			return err;
		return -EAGAIN;
	}
	for (size_t i = 0; i < got; i++)
		s->ver[p + i] = hdr[2 + i];
	add(&n->st.fetches, got);
	add(&n->st.fetch_reqs, 1);
	add(&n->st.fetch_ns, now_ns() - t0);
	return (int)got;
}

// run_end returns the end of the run a fault on invalid page p (homed
// elsewhere, its lock held) fetches: p and the pages after it that are
// invalid, of the same home and used here before, up to the node's
// fetch_run in all, whose locks it takes. It only tries them (mu_trylock),
// never waits: a page another thread holds ends the run, so taking them
// cannot deadlock (see the locking rules above: they are all of one kind).
// Fetching a page early is what a fault on it at this moment would do, so
// consistency is as with single-page fetches (see doc.go, "Fetching runs
// of pages").
static size_t run_end(dsm_seg *s, size_t p) {
	size_t max = (size_t)__atomic_load_n(&s->node->fetch_run, __ATOMIC_RELAXED);
	size_t e = p + 1;
	while (e - p < max && e < s->npages && s->home[e] == s->home[p] &&
	       __atomic_load_n(&s->used[e], __ATOMIC_RELAXED) &&
	       __atomic_load_n(&s->state[e], __ATOMIC_RELAXED) == DSM_INVALID && mu_trylock(&s->lock[e])) {
		if (s->state[e] != DSM_INVALID) { // validated before we took it
			mu_unlock(&s->lock[e]);
			break;
		}
		e++;
	}
	return e;
}

static void sleep_ms(long ms) {
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL); // async-signal-safe
}

// make_ready brings page p up to date and, if write, writable (with a twin
// if it is homed elsewhere): what a fault on it needs. It takes p's lock
// alone, and holds it across the fetch if p is invalid (then p is homed
// elsewhere: pages homed here are never invalid).
static int make_ready(dsm_seg *s, size_t p, int write) {
	int err = 0;
	int home = homed_here(s, p);
	size_t end = p + 1, e = p + 1; // pages whose state may change here; pages locked
	mu_lock(&s->lock[p]);
	if (s->state[p] == DSM_INVALID) {
		e = run_end(s, p); // locks p+1 .. e-1
		int got = fetch(s, p, e - p);
		if (got > 0) {
			end = p + (size_t)got;
			for (size_t q = p; q < end; q++)
				s->state[q] = DSM_RO;
			__atomic_store_n(&s->used[p], 1, __ATOMIC_RELAXED);
		}
		err = got < 0 ? got : 0;
	}
	if (err == 0 && write && s->state[p] == DSM_RO) {
		if (!home) {
			memcpy(s->twin + p * DSM_PAGE, s->sys + p * DSM_PAGE, DSM_PAGE);
			add(&s->node->st.twins, 1);
		}
		s->state[p] = DSM_RW;
	}
	// A home page written through Prepare(write) must stay writable
	// until the next release, whoever fetches it meanwhile: marking it
	// tracked makes it dirty (writable, not protected by the page
	// server), and the release ends that with a notice.
	if (err == 0 && write && home)
		__atomic_store_n(&s->copyset[p], 1, __ATOMIC_RELAXED);
	// Under their locks: an invalidation must not slip in between a
	// page's state and its protection.
	int perr = protect_range(s, p, end);
	unlock_range(s, p, e);
	return err != 0 ? err : perr;
}

// make_writable makes pages [a,b), all of one kind and none invalid,
// writable, as make_ready(write) does, with one lock_range and one mprotect
// per run of pages. It never fetches: a page that a concurrent acquire
// invalidated since the caller fetched it gives -EAGAIN (fetch it again).
static int make_writable(dsm_seg *s, size_t a, size_t b) {
	int home = homed_here(s, a);
	lock_range(s, a, b);
	for (size_t p = a; p < b; p++) {
		if (s->state[p] == DSM_INVALID) {
			unlock_range(s, a, b);
			return -EAGAIN;
		}
	}
	for (size_t p = a; p < b; p++) {
		if (s->state[p] == DSM_RO) {
			if (!home) {
				memcpy(s->twin + p * DSM_PAGE, s->sys + p * DSM_PAGE, DSM_PAGE);
				add(&s->node->st.twins, 1);
			}
			s->state[p] = DSM_RW;
		}
		if (home) // as in make_ready
			__atomic_store_n(&s->copyset[p], 1, __ATOMIC_RELAXED);
	}
	int err = protect_range(s, a, b);
	unlock_range(s, a, b);
	return err;
}

// prepare_once brings pages [a,b) up to date and, if write, writable. It
// used to lock the whole range and fetch with every lock held, pages homed
// here included; two ranks preparing ranges that covered each other's pages
// then deadlocked, each page server waiting for a lock its own rank's
// Prepare held while that Prepare waited for the other page server. Now it
// fetches page by page as faults do (one lock, that of the invalid page
// homed elsewhere), then makes the range writable one run of pages of one
// kind at a time, fetching nothing (see the locking rules at the top).
static int prepare_once(dsm_seg *s, size_t a, size_t b, int write) {
	for (size_t p = a; p < b; p++) {
		if (__atomic_load_n(&s->state[p], __ATOMIC_RELAXED) != DSM_INVALID)
			continue;
		int err = make_ready(s, p, 0);
		if (err != 0)
			return err;
	}
	if (!write)
		return 0;
	for (size_t x = a, y; x < b; x = y) {
		y = kind_end(s, x, b);
		int err = make_writable(s, x, y);
		if (err != 0)
			return err;
	}
	return 0;
}

int dsm_prepare(dsm_seg *s, size_t first, size_t n, int write) {
	if (first > s->npages || n > s->npages - first)
		return -EINVAL;
	for (;;) {
		// A cgo call: waiting here holds up neither the Go scheduler nor
		// a stop-the-world.
		int err = prepare_once(s, first, first + n, write);
		if (err != -EAGAIN)
			return err;
		sleep_ms(1);
	}
}

// ---- the SIGSEGV handler ----

static dsm_seg *lookup(char *addr) {
	int hi = __atomic_load_n(&registry_hi, __ATOMIC_ACQUIRE);
	for (int i = 0; i < hi; i++) {
		dsm_seg *s = __atomic_load_n(&registry[i], __ATOMIC_ACQUIRE);
		if (s && addr >= s->app && addr < s->app + s->len)
			return s;
	}
	return NULL;
}

// die reports a fault that cannot be resolved and aborts: the faulting code
// cannot be given an error. The message names the page's home and, if the
// node failed, why (the Go side's error, which nobody else will print).
static void die(dsm_node *nd, int home, int err) {
	char buf[512], num[12];
	size_t n = 0, k = sizeof num;
	num[--k] = 0;
	do
		num[--k] = (char)('0' + home % 10);
	while ((home /= 10) > 0 && k > 0);
	const char *why = __atomic_load_n(&nd->failed, __ATOMIC_ACQUIRE) ? nd->why : "";
	const char *parts[] = {"dsmshm: fatal: resolving a shared-memory fault: fetching the page from its home, rank ",
	                       num + k, ", failed: ", strerror(-err), *why ? "; the job failed: " : "", why, "\n"};
	for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
		for (const char *p = parts[i]; *p && n < sizeof buf - 1; p++)
			buf[n++] = *p;
	if (n == sizeof buf - 1)
		buf[n++] = '\n';
	ssize_t r = write(2, buf, n);
	(void)r;
	abort();
}

static void handler(int sig, siginfo_t *si, void *ctx) {
	int saved = errno;
	dsm_seg *s = lookup(si->si_addr);
	if (s == NULL) {
		errno = saved;
		if (old_segv.sa_flags & SA_SIGINFO) {
			old_segv.sa_sigaction(sig, si, ctx);
		} else if (old_segv.sa_handler == SIG_DFL || old_segv.sa_handler == SIG_IGN) {
			// Restore the default action; the fault repeats and kills us.
			signal(sig, SIG_DFL);
		} else {
			old_segv.sa_handler(sig);
		}
		return;
	}
	ucontext_t *uc = ctx;
	int write = (uc->uc_mcontext.gregs[REG_ERR] & 2) != 0;
	size_t p = (size_t)((char *)si->si_addr - s->app) / DSM_PAGE;
	add(write ? &s->node->st.write_faults : &s->node->st.read_faults, 1);
	int err = make_ready(s, p, write);
	if (err == -EAGAIN) {
		// The page cannot be had now (a migration is under way). Do not
		// wait here: a thread inside this handler cannot be preempted, so
		// a stop-the-world would wait for it while the goroutines that
		// reconnect the home are stopped. Sleep briefly and return with
		// nothing held; the access faults again, and in between any
		// pending preemption signal is delivered (see doc.go, "Migration").
		sleep_ms(1);
		errno = saved;
		return;
	}
	if (err != 0)
		die(s->node, s->home[p], err);
	errno = saved;
}

int dsm_install_handler(void) {
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = handler;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
	sigfillset(&sa.sa_mask);
	if (sigaction(SIGSEGV, &sa, &old_segv) != 0)
		return -errno;
	return 0;
}

// ---- segments ----

dsm_seg *dsm_seg_new(dsm_node *n, uint32_t id, size_t npages, const int32_t *homes, int *err) {
	if (id >= MAX_SEG) {
		*err = -ENOSPC;
		return NULL;
	}
	dsm_seg *s = calloc(1, sizeof *s);
	if (s == NULL) {
		*err = -ENOMEM;
		return NULL;
	}
	s->node = n;
	s->id = id;
	s->npages = npages;
	s->len = npages * DSM_PAGE;
	s->app = s->sys = s->twin = MAP_FAILED;
	s->memfd = (int)syscall(SYS_memfd_create, "dsmshm", 1 /* MFD_CLOEXEC */);
	s->state = malloc(npages);
	s->lock = calloc(npages, sizeof *s->lock);
	s->ver = calloc(npages, sizeof *s->ver);
	s->home = malloc(npages * sizeof *s->home);
	s->copyset = malloc(npages);
	s->used = calloc(npages, 1);
	if (s->memfd < 0 || !s->state || !s->lock || !s->ver || !s->home || !s->copyset || !s->used) {
		*err = s->memfd < 0 ? -errno : -ENOMEM;
		goto fail;
	}
	memcpy(s->home, homes, npages * sizeof *s->home);
	// Every rank starts with a valid copy (version 0, zeros) of every page,
	// so with other ranks every home page starts shared and read-only. A
	// single rank is home of everything and nobody else can hold a copy:
	// its pages start writable and stay so (no faults, no protection work).
	int alone = n->size == 1;
	memset(s->state, alone ? DSM_RW : DSM_RO, npages);
	memset(s->copyset, alone ? 0 : 1, npages);
	if (ftruncate(s->memfd, (off_t)s->len) != 0) {
		*err = -errno;
		goto fail;
	}
	s->app = mmap(NULL, s->len, alone ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, s->memfd, 0);
	s->sys = mmap(NULL, s->len, PROT_READ | PROT_WRITE, MAP_SHARED, s->memfd, 0);
	s->twin = mmap(NULL, s->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (s->app == MAP_FAILED || s->sys == MAP_FAILED || s->twin == MAP_FAILED) {
		*err = -errno;
		goto fail;
	}
	for (int i = 0; i < MAX_REG; i++) {
		dsm_seg *empty = NULL;
		if (__atomic_compare_exchange_n(&registry[i], &empty, s, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
			int hi = __atomic_load_n(&registry_hi, __ATOMIC_RELAXED);
			while (hi < i + 1 &&
			       !__atomic_compare_exchange_n(&registry_hi, &hi, i + 1, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED))
				;
			mu_lock(&n->mu);
			n->segs[id] = s;
			mu_unlock(&n->mu);
			return s;
		}
	}
	*err = -ENOSPC;
fail:
	dsm_seg_free(s);
	return NULL;
}

char *dsm_seg_app(dsm_seg *s) { return s->app; }

void dsm_seg_free(dsm_seg *s) {
	for (int i = 0; i < MAX_REG; i++) {
		dsm_seg *me = s;
		__atomic_compare_exchange_n(&registry[i], &me, NULL, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
	}
	mu_lock(&s->node->mu);
	if (s->id < MAX_SEG && s->node->segs[s->id] == s)
		s->node->segs[s->id] = NULL;
	mu_unlock(&s->node->mu);
	if (s->app != MAP_FAILED)
		munmap(s->app, s->len);
	if (s->sys != MAP_FAILED)
		munmap(s->sys, s->len);
	if (s->twin != MAP_FAILED)
		munmap(s->twin, s->len);
	if (s->memfd >= 0)
		close(s->memfd);
	free(s->state);
	free(s->lock);
	free(s->ver);
	free(s->home);
	free(s->copyset);
	free(s->used);
	free(s);
}

int dsm_page_state(dsm_seg *s, uint32_t p, uint64_t *ver) {
	mu_lock(&s->lock[p]);
	int st = s->state[p];
	*ver = s->ver[p];
	mu_unlock(&s->lock[p]);
	return st;
}

// ---- release: diffs ----

// dsm_collect_dirty lists the dirty pages: writable pages homed elsewhere,
// and writable pages homed here that another rank may hold a copy of
// (exclusive home pages are writable but not dirty).
size_t dsm_collect_dirty(dsm_seg *s, uint32_t *out) {
	size_t n = 0;
	int rank = s->node->rank;
	for (size_t p = 0; p < s->npages; p++)
		if (__atomic_load_n(&s->state[p], __ATOMIC_RELAXED) == DSM_RW &&
		    (s->home[p] != rank || __atomic_load_n(&s->copyset[p], __ATOMIC_RELAXED)))
			out[n++] = (uint32_t)p;
	return n;
}

// encode_diff writes the runs of bytes where cur differs from twin as
// (offset u16, length u16, bytes). Runs are byte exact: a byte this rank did
// not change must never be sent, or it would overwrite another writer's.
static size_t encode_diff(const uint8_t *cur, const uint8_t *twin, uint8_t *out) {
	size_t o = 0, i = 0;
	while (i < DSM_PAGE) {
		while (i + 8 <= DSM_PAGE && *(const uint64_t *)(cur + i) == *(const uint64_t *)(twin + i))
			i += 8;
		while (i < DSM_PAGE && cur[i] == twin[i])
			i++;
		if (i >= DSM_PAGE)
			break;
		size_t j = i;
		while (j < DSM_PAGE && cur[j] != twin[j])
			j++;
		uint16_t h[2] = {(uint16_t)i, (uint16_t)(j - i)};
		memcpy(out + o, h, 4);
		memcpy(out + o + 4, cur + i, j - i);
		o += 4 + (j - i);
		i = j;
	}
	return o;
}

// dsm_flush_pages write-protects the dirty pages among pages (sorted) that
// are homed elsewhere and encodes their diffs into buf (DSM_MAX_DIFF bytes
// per page), setting difflen[i]; for dirty pages homed here it bumps the
// version, sets ver[i], difflen[i] = 0, and clears the copyset: the notice
// for the new version invalidates every older copy at its holder's next
// acquire, so the page stays writable and exclusive (see doc.go). A page
// homed here that was served while writable is write-protected and
// compared with the copy kept in its twin slot: unchanged, it is clean
// (read-only, tracked) and needs no notice; changed, it was written since
// it was served and is flushed as a dirty page. Pages no longer dirty get
// difflen[i] = -1.
int dsm_flush_pages(dsm_seg *s, const uint32_t *pages, size_t n, uint8_t *buf, int32_t *difflen, uint64_t *ver) {
	size_t i = 0;
	for (size_t k = 0; k < n; k++)
		if (pages[k] >= s->npages || (k > 0 && pages[k] <= pages[k - 1]))
			return -EINVAL;
	while (i < n) {
		size_t j = i + 1;
		while (j < n && j - i < MAX_RUN && pages[j] == pages[j - 1] + 1 &&
		       homed_here(s, pages[j]) == homed_here(s, pages[i])) // one kind: see the locking rules
			j++;
		size_t a = pages[i], b = pages[j - 1] + 1;
		lock_range(s, a, b);
		uint8_t was[MAX_RUN];
		int changed = 0, written = 0;
		for (size_t p = a; p < b; p++) {
			was[p - a] = s->state[p];
			// Pages homed elsewhere are diffed, and pages served while
			// writable compared, write-protected: a concurrent write
			// faults and waits for the page lock.
			if (s->state[p] == DSM_RW &&
			    (s->home[p] != s->node->rank || s->copyset[p] == SERVED_WRITABLE)) {
				s->state[p] = DSM_RO;
				changed = 1;
			}
		}
		int err = changed ? protect_range(s, a, b) : 0;
		if (err != 0) {
			for (size_t p = a; p < b; p++)
				s->state[p] = was[p - a];
			unlock_range(s, a, b);
			return err;
		}
		for (size_t k = i; k < j; k++) {
			size_t p = pages[k];
			difflen[k] = -1;
			if (was[p - a] != DSM_RW)
				continue;
			if (s->home[p] == s->node->rank) {
				if (!s->copyset[p])
					continue; // exclusive: not dirty
				if (s->copyset[p] == SERVED_WRITABLE) {
					// Unchanged since it was served: every copy is
					// current, and the page is clean from now on.
					if (memcmp(s->sys + p * DSM_PAGE, s->twin + p * DSM_PAGE, DSM_PAGE) == 0) {
						__atomic_store_n(&s->copyset[p], 1, __ATOMIC_RELAXED);
						continue;
					}
					s->state[p] = DSM_RW; // written: dirty, and exclusive below
					written = 1;
				}
				ver[k] = ++s->ver[p];
				__atomic_store_n(&s->copyset[p], 0, __ATOMIC_RELAXED);
				difflen[k] = 0;
			} else {
				difflen[k] = (int32_t)encode_diff((uint8_t *)s->sys + p * DSM_PAGE,
				                                  (uint8_t *)s->twin + p * DSM_PAGE, buf + k * DSM_MAX_DIFF);
				ver[k] = s->ver[p];
			}
		}
		err = written ? protect_range(s, a, b) : 0;
		unlock_range(s, a, b);
		if (err != 0)
			return err;
		i = j;
	}
	return 0;
}

// track makes the home's writes to page p (homed here) tracked from now on,
// because another rank is about to hold a copy: an exclusive page is
// write-protected, so the home's next write faults and makes it dirty.
// Called with the page lock held, before the copy is taken (served or
// acknowledged): a write by the home that lands before the mprotect is in
// the copy, one after it faults, waits for the page lock, and is tracked.
static int track(dsm_seg *s, size_t p) {
	if (s->copyset[p])
		return 0;
	if (s->state[p] == DSM_RW) {
		if (mprotect(s->app + p * DSM_PAGE, DSM_PAGE, PROT_READ) != 0)
			return -errno;
		s->state[p] = DSM_RO;
	}
	__atomic_store_n(&s->copyset[p], 1, __ATOMIC_RELAXED);
	return 0;
}

// dsm_apply_diff applies a diff from another rank to a page homed here. The
// diff comes from the network: it is validated completely before any byte is
// written.
int dsm_apply_diff(dsm_seg *s, uint32_t p, const uint8_t *d, size_t len, uint64_t *before, uint64_t *after) {
	if (p >= s->npages || s->home[p] != s->node->rank)
		return -EINVAL;
	for (size_t o = 0; o < len;) {
		uint16_t h[2];
		if (len - o < 4)
			return -EINVAL;
		memcpy(h, d + o, 4);
		if ((size_t)h[0] + h[1] > DSM_PAGE || len - o - 4 < h[1])
			return -EINVAL;
		o += 4 + h[1];
	}
	mu_lock(&s->lock[p]);
	// The sender holds a copy and may keep it as the new version (see
	// dsm_set_version_if): from now on the home's writes must be tracked.
	int err = track(s, p);
	if (err != 0) {
		mu_unlock(&s->lock[p]);
		return err;
	}
	// A page served while writable: the diff goes into the copy kept for
	// the next release's comparison too. The copies served hold what the
	// diff changed at the version before it, and the sender's notice for
	// its version covers them, as for a clean page; only the home's own
	// writes are what the comparison is for.
	int kept = s->copyset[p] == SERVED_WRITABLE;
	for (size_t o = 0; o < len;) {
		uint16_t h[2];
		memcpy(h, d + o, 4);
		memcpy(s->sys + (size_t)p * DSM_PAGE + h[0], d + o + 4, h[1]);
		if (kept)
			memcpy(s->twin + (size_t)p * DSM_PAGE + h[0], d + o + 4, h[1]);
		o += 4 + h[1];
	}
	*before = s->ver[p]++;
	*after = s->ver[p];
	mu_unlock(&s->lock[p]);
	return 0;
}

// dsm_set_version_if records that this rank's copy of p is version after,
// provided the home applied our diff directly on top of the version we had.
void dsm_set_version_if(dsm_seg *s, uint32_t p, uint64_t before, uint64_t after) {
	if (p >= s->npages)
		return;
	mu_lock(&s->lock[p]);
	if (s->state[p] != DSM_INVALID && s->ver[p] == before)
		s->ver[p] = after;
	mu_unlock(&s->lock[p]);
}

// ---- acquire: invalidation ----

// dsm_invalidate invalidates every page among pages (sorted) whose copy is
// older than req[i]. Dirty pages cannot be dropped: they are listed in dirty
// and left alone for the caller to flush and retry. Returns the number of
// dirty pages, or a negative errno.
long dsm_invalidate(dsm_seg *s, const uint32_t *pages, const uint64_t *req, size_t n, uint32_t *dirty) {
	size_t nd = 0, i = 0, inv = 0;
	for (size_t k = 0; k < n; k++)
		if (pages[k] >= s->npages || (k > 0 && pages[k] <= pages[k - 1]))
			return -EINVAL;
	while (i < n) {
		size_t j = i + 1;
		while (j < n && pages[j] == pages[j - 1] + 1 && homed_here(s, pages[j]) == homed_here(s, pages[i]))
			j++;
		size_t a = pages[i], b = pages[j - 1] + 1;
		lock_range(s, a, b);
		for (size_t k = i; k < j; k++) {
			size_t p = pages[k];
			if (s->home[p] == s->node->rank || s->ver[p] >= req[k] || s->state[p] == DSM_INVALID)
				continue;
			if (s->state[p] == DSM_RW) {
				dirty[nd++] = (uint32_t)p;
				continue;
			}
			s->state[p] = DSM_INVALID;
			inv++;
		}
		int err = protect_range(s, a, b);
		unlock_range(s, a, b);
		if (err != 0)
			return err;
		i = j;
	}
	add(&s->node->st.invalidations, inv);
	return (long)nd;
}

// resident counts the pages of [p, p+len) that are in memory (mincore).
static size_t resident(char *p, size_t len) {
	size_t n = len / DSM_PAGE, r = 0;
	unsigned char v[256];
	for (size_t i = 0; i < n; i += sizeof v) {
		size_t k = n - i < sizeof v ? n - i : sizeof v;
		if (mincore(p + i * DSM_PAGE, k * DSM_PAGE, v) != 0)
			return 0;
		for (size_t j = 0; j < k; j++)
			r += v[j] & 1;
	}
	return r;
}

// drop_twins frees the twin slots of pages [a,b): the twins of pages homed
// elsewhere, or, for pages homed here, the copies kept for a comparison
// (answer) that are not needed.
static void drop_twins(dsm_seg *s, size_t a, size_t b, dsm_drop *d) {
	if (a >= b)
		return;
	size_t off = a * DSM_PAGE, len = (b - a) * DSM_PAGE;
	d->twins += resident(s->twin + off, len);
	madvise(s->twin + off, len, MADV_DONTNEED);
}

// drop_run frees pages [a,b) of s, homed elsewhere, none of them dirty:
// their memory (the memfd's pages: both views) and their twins.
static void drop_run(dsm_seg *s, size_t a, size_t b, dsm_drop *d) {
	if (a >= b)
		return;
	size_t off = a * DSM_PAGE, len = (b - a) * DSM_PAGE;
	d->copies += resident(s->sys + off, len);
	fallocate(s->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len);
	drop_twins(s, a, b, d);
}

// drop_runs calls drop on each run of pages of [a,b) between the pages
// keep holds.
static void drop_runs(dsm_seg *s, size_t a, size_t b, int (*keep)(dsm_seg *, size_t),
                      void (*drop)(dsm_seg *, size_t, size_t, dsm_drop *), dsm_drop *d) {
	size_t run = a;
	for (size_t p = a; p < b; p++) {
		if (keep(s, p)) {
			drop(s, run, p, d);
			run = p + 1;
		}
	}
	drop(s, run, b, d);
}

static int is_dirty(dsm_seg *s, size_t p) { return s->state[p] == DSM_RW; }      // homed elsewhere: dirty
static int holds_copy(dsm_seg *s, size_t p) { return s->copyset[p] == SERVED_WRITABLE; } // homed here

int dsm_seg_drop_cached(dsm_seg *s, dsm_drop *d) {
	size_t a = 0;
	while (a < s->npages) {
		size_t b = kind_end(s, a, s->npages);
		if (homed_here(s, a)) {
			// The home's pages stay; twin slots hold copies only for
			// pages served while writable (answer), the rest is left
			// over from earlier ones.
			lock_range(s, a, b);
			drop_runs(s, a, b, holds_copy, drop_twins, d);
			unlock_range(s, a, b);
			a = b;
			continue;
		}
		lock_range(s, a, b);
		for (size_t p = a; p < b; p++) {
			if (s->state[p] == DSM_RW)
				d->kept++;
			else
				s->state[p] = DSM_INVALID;
		}
		int err = protect_range(s, a, b);
		if (err == 0)
			drop_runs(s, a, b, is_dirty, drop_run, d);
		unlock_range(s, a, b);
		if (err != 0)
			return err;
		a = b;
	}
	return 0;
}

// ---- nodes and the page server thread ----

static void free_arrays(dsm_node *n) {
	free(n->chans);
	free(n->pend);
	free(n->srv);
	free(n->pf);
	free(n->pfrank);
}

dsm_node *dsm_node_new(int rank, int size, int enc) {
	dsm_node *n = calloc(1, sizeof *n);
	if (n == NULL)
		return NULL;
	n->rank = rank;
	n->size = size;
	n->enc = enc;
	n->chans = calloc((size_t)size, sizeof *n->chans);
	n->pend = calloc((size_t)size, sizeof *n->pend);
	n->srv = calloc((size_t)size, sizeof *n->srv);
	n->pf = calloc((size_t)size + 1, sizeof *n->pf);
	n->pfrank = calloc((size_t)size, sizeof *n->pfrank);
	if (n->chans == NULL || n->pend == NULL || n->srv == NULL || n->pf == NULL || n->pfrank == NULL ||
	    pipe2(n->wake, O_CLOEXEC) != 0) {
		free_arrays(n);
		free(n);
		return NULL;
	}
	for (int i = 0; i < size; i++)
		n->chans[i].fd = n->pend[i].fd = n->srv[i].fd = -1;
	n->redial_fd = -1;
	n->down_wait_ns = 30ull * 1000000000u;
	n->away_wait_ns = 300ull * 1000000000u;
	n->fetch_run = DSM_FETCH_RUN_MAX;
	return n;
}

static void set_keys(chan_keys *k, const uint8_t *tx, const uint8_t *rx) {
	memcpy(k->tx, tx, DSM_AEAD_KEY);
	memcpy(k->rx, rx, DSM_AEAD_KEY);
	k->ntx = k->nrx = 0;
}

void dsm_node_set_chan(dsm_node *n, int rank, int fd, const uint8_t *tx, const uint8_t *rx) {
	dsm_chan *c = &n->chans[rank];
	mu_lock(&c->mu);
	if (c->fd >= 0)
		close(c->fd);
	c->fd = fd;
	set_keys(&c->k, tx, rx);
	c->away = 0;
	c->down_since = 0;
	c->redial = 0;
	mu_unlock(&c->mu);
}

void dsm_node_set_redial_fd(dsm_node *n, int fd) {
	int old = __atomic_exchange_n(&n->redial_fd, fd, __ATOMIC_ACQ_REL);
	if (old >= 0)
		close(old);
}

int dsm_node_chan_redial(dsm_node *n, int rank) {
	dsm_chan *c = &n->chans[rank];
	mu_lock(&c->mu);
	int r = c->redial;
	mu_unlock(&c->mu);
	return r;
}

int dsm_node_replace_chan(dsm_node *n, int rank, int fd, const uint8_t *tx, const uint8_t *rx) {
	dsm_chan *c = &n->chans[rank];
	mu_lock(&c->mu);
	int ok = c->redial && !c->away && c->fd < 0;
	if (ok) {
		c->fd = fd;
		set_keys(&c->k, tx, rx);
		c->down_since = 0;
		c->redial = 0;
	}
	mu_unlock(&c->mu);
	return ok;
}

void dsm_node_chan_away(dsm_node *n, int rank) {
	dsm_chan *c = &n->chans[rank];
	mu_lock(&c->mu);
	c->away = 1;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->down_since = now_ns();
	c->redial = 0; // the home's return brings a new channel
	mu_unlock(&c->mu);
}

void dsm_node_set_waits(dsm_node *n, uint64_t down_ns, uint64_t away_ns) {
	n->down_wait_ns = down_ns;
	n->away_wait_ns = away_ns;
}

void dsm_node_set_fetch_run(dsm_node *n, int pages) {
	if (pages < 1)
		pages = 1;
	if (pages > DSM_FETCH_RUN_MAX)
		pages = DSM_FETCH_RUN_MAX;
	__atomic_store_n(&n->fetch_run, pages, __ATOMIC_RELAXED);
}

void dsm_node_set_failed(dsm_node *n, const char *why) {
	if (__atomic_load_n(&n->failed, __ATOMIC_ACQUIRE))
		return;
	size_t k = 0;
	for (; why[k] && k < sizeof n->why - 1; k++)
		n->why[k] = why[k];
	n->why[k] = 0;
	__atomic_store_n(&n->failed, 1, __ATOMIC_RELEASE);
}

void dsm_node_pause(dsm_node *n) {
	__atomic_store_n(&n->paused, 1, __ATOMIC_SEQ_CST);
	while (__atomic_load_n(&n->inflight, __ATOMIC_SEQ_CST) != 0)
		sleep_ms(1);
	// No fetch runs or starts now: close this rank's page channels.
	for (int i = 0; i < n->size; i++) {
		dsm_chan *c = &n->chans[i];
		mu_lock(&c->mu);
		if (c->fd >= 0)
			close(c->fd);
		c->fd = -1;
		c->down_since = 0;
		c->redial = 0; // resume dials every channel anew
		mu_unlock(&c->mu);
	}
	// The page server closes the channels it serves, between requests.
	mu_lock(&n->mu);
	uint64_t req = ++n->drop_req;
	int started = n->started;
	mu_unlock(&n->mu);
	char b = 0;
	ssize_t r = write(n->wake[1], &b, 1);
	(void)r;
	for (;;) {
		mu_lock(&n->mu);
		int done = n->drop_done >= req || !started || n->stopping;
		mu_unlock(&n->mu);
		if (done)
			break;
		sleep_ms(1);
	}
}

void dsm_node_unpause(dsm_node *n) { __atomic_store_n(&n->paused, 0, __ATOMIC_SEQ_CST); }

int dsm_node_serve_fd(dsm_node *n, int fd, int rank, const uint8_t *tx, const uint8_t *rx) {
	mu_lock(&n->mu);
	if (n->stopping || rank < 0 || rank >= n->size) {
		mu_unlock(&n->mu);
		return -EINVAL;
	}
	srv_conn *pc = &n->pend[rank];
	if (pc->fd >= 0)
		close(pc->fd); // replaced before the server took it
	pc->fd = fd;
	set_keys(&pc->k, tx, rx);
	mu_unlock(&n->mu);
	char b = 0;
	ssize_t r = write(n->wake[1], &b, 1);
	(void)r;
	return 0;
}

// srv_reset forgets sc's channel: its keys and progress (not its buffers,
// 33 KiB that a rank that never served would otherwise touch).
static void srv_reset(srv_conn *sc) {
	memset(&sc->k, 0, sizeof sc->k);
	sc->fd = -1;
	sc->inlen = sc->outlen = sc->outoff = 0;
	sc->since = 0;
}

static void srv_drop(srv_conn *sc) {
	if (sc->fd >= 0)
		close(sc->fd);
	srv_reset(sc);
}

// answer fills sc->out with the reply to the request in sc->in: the pages
// asked for, from the first, as far as they are homed here (at least the
// first, or status 1 and none). Each is copied under its own lock, alone
// (a lock of a page homed here, held for local work only). Serving makes
// the home's writes to a page tracked (another rank holds a copy), without
// an mprotect, which costs more than the rest of the answer on some
// machines (a VM's page tables): an exclusive page is marked served while
// writable and its copy kept in its twin slot, for the next release to
// compare with; one served so before is compared with that copy now, and
// if the home wrote it since, it becomes dirty (as a write fault would have
// made it) before it is copied again (see doc.go, "Exclusive home pages").
static void answer(dsm_node *n, srv_conn *sc) {
	uint32_t req[3]; // segment, first page, pages
	memcpy(req, sc->in, sizeof req);
	uint64_t hdr[2 + DSM_FETCH_RUN_MAX] = {1, 0}; // status, pages served, their versions
	mu_lock(&n->mu);
	dsm_seg *s = req[0] < MAX_SEG ? n->segs[req[0]] : NULL;
	mu_unlock(&n->mu);
	size_t first = req[1], k = 0;
	if (s != NULL && req[2] >= 1 && req[2] <= DSM_FETCH_RUN_MAX)
		while (k < req[2] && first < s->npages && k < s->npages - first && s->home[first + k] == n->rank)
			k++;
	uint8_t *pages = sc->out + 16 + 8 * k; // where k pages go after k versions
	for (size_t i = 0; i < k; i++) {
		size_t p = first + i;
		char *sys = s->sys + p * DSM_PAGE, *kept = s->twin + p * DSM_PAGE;
		mu_lock(&s->lock[p]);
		if (s->copyset[p] == SERVED_WRITABLE && memcmp(sys, kept, DSM_PAGE) != 0) {
			__atomic_store_n(&s->copyset[p], 1, __ATOMIC_RELAXED); // written since: dirty
		} else if (s->copyset[p] == 0) { // exclusive, so writable
			memcpy(kept, sys, DSM_PAGE);
			__atomic_store_n(&s->copyset[p], SERVED_WRITABLE, __ATOMIC_RELAXED);
		}
		memcpy(pages + i * DSM_PAGE, sys, DSM_PAGE);
		hdr[2 + i] = s->ver[p];
		mu_unlock(&s->lock[p]);
	}
	if (k > 0) {
		hdr[0] = 0;
		hdr[1] = k;
		add(&n->st.served, k);
	}
	size_t meta = 16 + 8 * k, plen = k * DSM_PAGE;
	memcpy(sc->out, hdr, meta);
	dsm_aead_seal(sc->k.tx, sc->k.ntx++, sc->out, meta, sc->out + meta, plen, n->enc, sc->out + meta + plen);
	sc->outlen = meta + plen + DSM_AEAD_TAG;
	sc->outoff = 0;
}

// serve_step makes what progress it can on sc without blocking: sends what
// is left of a reply, or reads a request and answers it. It returns -1 when
// the channel is to be dropped: closed, broken, or a request whose tag is
// wrong (nothing in it is used).
static int serve_step(dsm_node *n, srv_conn *sc) {
	uint64_t t0 = 0; // when a request was read whole here (for serve_ns)
	if (sc->outoff == sc->outlen) {
		ssize_t r = recv(sc->fd, sc->in + sc->inlen, sizeof sc->in - sc->inlen, MSG_DONTWAIT);
		if (r == 0)
			return -1;
		if (r < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -1;
		if (sc->inlen == 0)
			sc->since = now_ns();
		sc->inlen += (size_t)r;
		if (sc->inlen < sizeof sc->in)
			return 0;
		sc->inlen = 0;
		t0 = now_ns();
		if (dsm_aead_open(sc->k.rx, sc->k.nrx++, NULL, 0, sc->in, 12, n->enc, sc->in + 12) != 0) {
			add(&n->st.bad_tags, 1);
			return -1;
		}
		answer(n, sc);
	}
	ssize_t w = send(sc->fd, sc->out + sc->outoff, sc->outlen - sc->outoff, MSG_DONTWAIT | MSG_NOSIGNAL);
	int serr = errno;
	if (t0 != 0)
		add(&n->st.serve_ns, now_ns() - t0);
	if (w < 0)
		return serr == EAGAIN || serr == EINTR ? 0 : -1;
	sc->outoff += (size_t)w;
	if (sc->outoff == sc->outlen) {
		sc->outoff = sc->outlen = 0;
		sc->since = 0;
	}
	return 0;
}

static void *serve(void *arg) {
	dsm_node *n = arg;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	for (;;) {
		mu_lock(&n->mu);
		if (n->stopping) {
			mu_unlock(&n->mu);
			return NULL;
		}
		int drop = n->drop_done != n->drop_req;
		for (int r = 0; r < n->size; r++) {
			if (drop)
				srv_drop(&n->srv[r]);
			if (n->pend[r].fd < 0)
				continue;
			if (drop) {
				srv_drop(&n->pend[r]);
				continue;
			}
			srv_drop(&n->srv[r]); // a rank's new channel replaces its old one
			n->srv[r].fd = n->pend[r].fd;
			n->srv[r].k = n->pend[r].k;
			srv_reset(&n->pend[r]); // its fd is the server's now
		}
		if (drop)
			n->drop_done = n->drop_req;
		mu_unlock(&n->mu);
		int nf = 0, busy = 0;
		for (int r = 0; r < n->size; r++) {
			srv_conn *sc = &n->srv[r];
			if (sc->fd < 0)
				continue;
			busy |= sc->since != 0;
			n->pf[nf] = (struct pollfd){.fd = sc->fd, .events = sc->outoff < sc->outlen ? POLLOUT : POLLIN};
			n->pfrank[nf++] = r;
		}
		n->pf[nf] = (struct pollfd){.fd = n->wake[0], .events = POLLIN};
		// A started request or a waiting reply is timed out below: wake
		// up now and then while there is one.
		if (poll(n->pf, (nfds_t)nf + 1, busy ? 1000 : -1) < 0)
			continue;
		if (n->pf[nf].revents) {
			char b[64];
			ssize_t r = read(n->wake[0], b, sizeof b);
			(void)r;
		}
		uint64_t now = now_ns();
		for (int i = 0; i < nf; i++) {
			srv_conn *sc = &n->srv[n->pfrank[i]];
			// (since may be later than now: set by this serve_step.)
			if ((n->pf[i].revents && serve_step(n, sc) != 0) ||
			    (sc->since != 0 && now > sc->since && now - sc->since > SERVE_TIMEOUT_NS))
				srv_drop(sc);
		}
	}
}

int dsm_node_start(dsm_node *n) {
	int err = pthread_create(&n->thr, NULL, serve, n);
	if (err != 0)
		return -err;
	n->started = 1;
	return 0;
}

void dsm_node_stop(dsm_node *n) {
	mu_lock(&n->mu);
	n->stopping = 1;
	mu_unlock(&n->mu);
	char b = 0;
	ssize_t r = write(n->wake[1], &b, 1);
	(void)r;
	if (n->started)
		pthread_join(n->thr, NULL);
	n->started = 0;
}

void dsm_node_free(dsm_node *n) {
	dsm_node_stop(n);
	for (int i = 0; i < n->size; i++) {
		if (n->chans[i].fd >= 0)
			close(n->chans[i].fd);
		srv_drop(&n->pend[i]);
		srv_drop(&n->srv[i]);
	}
	close(n->wake[0]);
	close(n->wake[1]);
	if (n->redial_fd >= 0)
		close(n->redial_fd);
	free_arrays(n);
	free(n);
}

void dsm_node_stats(dsm_node *n, dsm_cstats *out) {
	uint64_t *src = (uint64_t *)&n->st, *dst = (uint64_t *)out;
	for (size_t i = 0; i < sizeof *out / sizeof(uint64_t); i++)
		dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}
