// C half of dsmshm: the page table, the SIGSEGV handler and the page server
// thread. Everything the fault handler touches lives here, so that a handler
// never waits for Go code (see doc.go, "Faults").
#ifndef DSMSHM_DSM_H
#define DSMSHM_DSM_H

#include <stddef.h>
#include <stdint.h>

#define DSM_PAGE 4096
// Largest encoded diff of one page: 2048 runs of one byte, 4-byte header each.
#define DSM_MAX_DIFF (DSM_PAGE / 2 * 5)
// Most pages one fetch asks for: a fault fetches the run of invalid pages
// that follow the faulting one and share its home, up to this many in all
// (ArgoDSM fetches 8 pages per remote miss).
#define DSM_FETCH_RUN_MAX 8

enum { DSM_INVALID = 0, DSM_RO = 1, DSM_RW = 2 };

typedef struct dsm_node dsm_node;
typedef struct dsm_seg dsm_seg;

typedef struct {
	uint64_t read_faults, write_faults, twins, fetches, fetch_ns, served, invalidations;
	uint64_t fetch_reqs; // page requests (round trips) that fetched the pages counted in fetches
	uint64_t bad_tags; // page requests and replies whose tag was wrong (their channel was dropped)
	uint64_t serve_ns; // the page server's time from a request read whole to its reply handed to the socket
} dsm_cstats;

int dsm_install_handler(void);

// Page channels are authenticated (see secure.go): tx and rx are the
// channel's two 32-byte keys from this rank's side. enc: pages and requests
// are encrypted as well as tagged.
dsm_node *dsm_node_new(int rank, int size, int enc);
int dsm_node_start(dsm_node *n);
void dsm_node_set_chan(dsm_node *n, int rank, int fd, const uint8_t *tx, const uint8_t *rx);
// Serves fd, a page channel from rank (replacing rank's previous one).
int dsm_node_serve_fd(dsm_node *n, int fd, int rank, const uint8_t *tx, const uint8_t *rx);
void dsm_node_chan_away(dsm_node *n, int rank);
void dsm_node_set_redial_fd(dsm_node *n, int fd); // takes ownership of an eventfd signalled when a channel breaks
int dsm_node_chan_redial(dsm_node *n, int rank);  // whether the channel to rank is broken and wants a new one
int dsm_node_replace_chan(dsm_node *n, int rank, int fd, const uint8_t *tx,
                          const uint8_t *rx); // installs fd if so (1), else leaves fd to the caller (0)
void dsm_node_set_waits(dsm_node *n, uint64_t down_ns, uint64_t away_ns);
void dsm_node_set_fetch_run(dsm_node *n, int pages); // 1..DSM_FETCH_RUN_MAX; the default is the most
void dsm_node_set_failed(dsm_node *n, const char *why); // once; why is copied (cut to 255 bytes)
void dsm_node_pause(dsm_node *n);   // blocks fetches, waits for in-flight ones, closes every page channel
void dsm_node_unpause(dsm_node *n);
void dsm_node_stop(dsm_node *n); // stops the page server thread
void dsm_node_free(dsm_node *n); // stops it if needed; free segments first
void dsm_node_stats(dsm_node *n, dsm_cstats *out);

dsm_seg *dsm_seg_new(dsm_node *n, uint32_t id, size_t npages, const int32_t *homes, int *err);
char *dsm_seg_app(dsm_seg *s);
void dsm_seg_free(dsm_seg *s);
int dsm_prepare(dsm_seg *s, size_t first, size_t n, int write);
size_t dsm_collect_dirty(dsm_seg *s, uint32_t *out);
int dsm_flush_pages(dsm_seg *s, const uint32_t *pages, size_t n, uint8_t *buf, int32_t *difflen, uint64_t *ver);
int dsm_apply_diff(dsm_seg *s, uint32_t page, const uint8_t *d, size_t len, uint64_t *before, uint64_t *after);
void dsm_set_version_if(dsm_seg *s, uint32_t page, uint64_t before, uint64_t after);
long dsm_invalidate(dsm_seg *s, const uint32_t *pages, const uint64_t *req, size_t n, uint32_t *dirty);

// What dsm_seg_drop_cached freed and kept, added to.
typedef struct {
	uint64_t copies; // resident pages homed elsewhere it freed
	uint64_t twins;  // resident twins it freed
	uint64_t kept;   // dirty pages homed elsewhere it kept (with their twins)
} dsm_drop;
int dsm_seg_drop_cached(dsm_seg *s, dsm_drop *d);
int dsm_page_state(dsm_seg *s, uint32_t page, uint64_t *ver);

#endif
