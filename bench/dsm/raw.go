package main

/*
#cgo CFLAGS: -O2 -Wall -Wextra -Wno-unused-parameter
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PG 4096

static uint64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// touch accesses the first byte of npages consecutive pages at base, writing
// val or reading, and returns the elapsed nanoseconds. The same loop times the
// raw harness and the DSM segments.
static int64_t touch(char *base, size_t npages, int write, int val, uint64_t *sink) {
	volatile char *b = base;
	uint64_t s = 0;
	uint64_t t0 = now_ns();
	if (write) {
		for (size_t p = 0; p < npages; p++)
			b[p * PG] = (char)val;
	} else {
		for (size_t p = 0; p < npages; p++)
			s += (unsigned char)b[p * PG];
	}
	uint64_t t1 = now_ns();
	*sink = s;
	return (int64_t)(t1 - t0);
}

// ---- raw baseline: mprotect + SIGSEGV round trip, nothing else ----

static char *raw_base;
static size_t raw_len;
static struct sigaction raw_old;

// raw_handler makes the faulting page writable and returns. Faults outside
// the region go to the handler it replaced (the same chaining dsmshm does).
static void raw_handler(int sig, siginfo_t *si, void *ctx) {
	int saved = errno;
	char *a = si->si_addr;
	if (a >= raw_base && a < raw_base + raw_len) {
		mprotect((void *)((uintptr_t)a & ~(uintptr_t)(PG - 1)), PG, PROT_READ | PROT_WRITE);
		errno = saved;
		return;
	}
	if (raw_old.sa_flags & SA_SIGINFO)
		raw_old.sa_sigaction(sig, si, ctx);
	else if (raw_old.sa_handler == SIG_DFL || raw_old.sa_handler == SIG_IGN)
		signal(sig, SIG_DFL);
	else
		raw_old.sa_handler(sig);
}

// raw_setup maps npages of a memfd MAP_SHARED, like a dsmshm segment's
// application view, and touches every page so that later faults never
// allocate memory.
static int raw_setup(size_t npages) {
	int fd = (int)syscall(SYS_memfd_create, "rawbench", 1);
	if (fd < 0)
		return -errno;
	raw_len = npages * PG;
	if (ftruncate(fd, (off_t)raw_len) != 0)
		return -errno;
	char *p = mmap(NULL, raw_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return -errno;
	memset(p, 1, raw_len);
	raw_base = p;
	return 0;
}

// raw_run write-protects pages [first, first+n) of the region, installs
// raw_handler (same flags as dsmshm's: SA_SIGINFO|SA_ONSTACK|SA_RESTART, all
// signals masked), times one write per page, and puts the previous handler
// back. Returns ns or -errno.
static int64_t raw_run(size_t first, size_t n, int val) {
	if (first + n > raw_len / PG)
		return -EINVAL;
	if (mprotect(raw_base + first * PG, n * PG, PROT_READ) != 0)
		return -errno;
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = raw_handler;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
	sigfillset(&sa.sa_mask);
	if (sigaction(SIGSEGV, &sa, &raw_old) != 0)
		return -errno;
	uint64_t sink;
	int64_t ns = touch(raw_base + first * PG, n, 1, val, &sink);
	sigaction(SIGSEGV, &raw_old, NULL);
	return ns;
}

static int raw_check(int val) {
	for (size_t p = 0; p < raw_len / PG; p++)
		if (raw_base[p * PG] != (char)val)
			return -1;
	return 0;
}
// ---- TCP ping-pong on blocking sockets, both ends in C ----

#include <pthread.h>
#include <sys/socket.h>

static int rd_full(int fd, void *p, size_t n) {
	char *b = p;
	while (n > 0) {
		ssize_t r = read(fd, b, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		b += r;
		n -= (size_t)r;
	}
	return 0;
}

static int wr_full(int fd, const void *p, size_t n) {
	const char *b = p;
	while (n > 0) {
		ssize_t r = send(fd, b, n, MSG_NOSIGNAL);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		b += r;
		n -= (size_t)r;
	}
	return 0;
}

// pp_serve answers {extra u32, reply u32} + extra bytes with reply bytes,
// on a plain pthread like dsmshm's page server, until the peer closes.
static void *pp_serve(void *arg) {
	int fd = (int)(intptr_t)arg;
	static char buf[1 << 16];
	uint32_t hdr[2];
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	while (rd_full(fd, hdr, sizeof hdr) == 0 && hdr[0] <= sizeof buf && hdr[1] <= sizeof buf) {
		if (rd_full(fd, buf, hdr[0]) != 0 || wr_full(fd, buf, hdr[1]) != 0)
			break;
	}
	close(fd);
	return NULL;
}

static int pp_serve_start(int fd) {
	pthread_t t;
	int err = pthread_create(&t, NULL, pp_serve, (void *)(intptr_t)fd);
	if (err != 0)
		return -err;
	pthread_detach(t);
	return 0;
}

// pp_client times n round trips of req bytes (>= 8) out and reply bytes back.
static int64_t pp_client(int fd, int n, uint32_t req, uint32_t reply) {
	static char out[1 << 16], in[1 << 16];
	if (req < 8 || req > sizeof out || reply > sizeof in)
		return -EINVAL;
	uint32_t hdr[2] = {req - 8, reply};
	memcpy(out, hdr, sizeof hdr);
	uint64_t t0 = now_ns();
	for (int i = 0; i < n; i++)
		if (wr_full(fd, out, req) != 0 || rd_full(fd, in, reply) != 0)
			return -EPIPE;
	return (int64_t)(now_ns() - t0);
}
*/
import "C"

import (
	"fmt"
	"net"
	"syscall"
	"time"
	"unsafe"
)

// rawSetup prepares the raw fault harness over npages pages.
func rawSetup(npages int) error {
	if rc := C.raw_setup(C.size_t(npages)); rc != 0 {
		return fmt.Errorf("raw harness setup: %w", syscall.Errno(-rc))
	}
	return nil
}

// rawRun times one write fault on each of pages [first, first+n) of the
// raw harness and returns the total time.
func rawRun(first, n, val int) (time.Duration, error) {
	ns := int64(C.raw_run(C.size_t(first), C.size_t(n), C.int(val)))
	if ns < 0 {
		return 0, fmt.Errorf("raw harness: %w", syscall.Errno(-ns))
	}
	return time.Duration(ns), nil
}

// rawCheck reports whether every page of the harness holds val.
func rawCheck(val int) error {
	if C.raw_check(C.int(val)) != 0 {
		return fmt.Errorf("raw harness: writes did not land")
	}
	return nil
}

// touch accesses the first byte of each of npages pages of b (one write of
// val, or one read) in C and returns the elapsed time and, for reads, the sum
// of the bytes read.
func touch(b []byte, npages int, write bool, val int) (time.Duration, uint64) {
	if len(b) < npages*4096 {
		panic("touch: slice too short")
	}
	w := 0
	if write {
		w = 1
	}
	var sink C.uint64_t
	ns := C.touch((*C.char)(unsafe.Pointer(&b[0])), C.size_t(npages), C.int(w), C.int(val), &sink)
	return time.Duration(ns), uint64(sink)
}

// blockingFD detaches a TCP connection into a blocking file descriptor
// (as dsmshm does for its page channels).
func blockingFD(conn net.Conn) (int, error) {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return -1, fmt.Errorf("not a TCP connection: %T", conn)
	}
	tc.SetNoDelay(true)
	raw, err := tc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	cerr := raw.Control(func(s uintptr) { fd, err = syscall.Dup(int(s)) })
	conn.Close()
	if cerr != nil {
		return -1, cerr
	}
	if err != nil {
		return -1, err
	}
	if err := syscall.SetNonblock(fd, false); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// cPingServe serves the ping-pong protocol on conn from a C pthread.
func cPingServe(conn net.Conn) error {
	fd, err := blockingFD(conn)
	if err != nil {
		return err
	}
	if rc := C.pp_serve_start(C.int(fd)); rc != 0 {
		syscall.Close(fd)
		return syscall.Errno(-rc)
	}
	return nil
}

// cPingPong times n round trips on a blocking descriptor, in C.
func cPingPong(fd, n, req, reply int) (time.Duration, error) {
	ns := int64(C.pp_client(C.int(fd), C.int(n), C.uint32_t(req), C.uint32_t(reply)))
	if ns < 0 {
		return 0, fmt.Errorf("C ping-pong: %w", syscall.Errno(-ns))
	}
	return time.Duration(ns), nil
}
