// faulter: two threads write to a PROT_NONE page forever; the SIGSEGV
// handler only counts, so each thread faults again at once. Every 20 ms the
// main thread writes the count, as text, to the file named by argv[1]. A
// thread of it is nearly always between a fault and its delivery: the case
// CRIU's parasite trips over unless the process is quiesced first.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static char *page;
static volatile unsigned long faults;

static void handler(int sig, siginfo_t *si, void *ctx) {
	(void)sig, (void)si, (void)ctx;
	__atomic_add_fetch(&faults, 1, __ATOMIC_RELAXED);
}

static void *spin(void *arg) {
	(void)arg;
	for (;;)
		*(volatile char *)page = 1;
	return NULL;
}

int main(int argc, char **argv) {
	if (argc != 2)
		return 2;
	int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (fd < 0 || page == MAP_FAILED)
		return 1;
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = handler;
	sa.sa_flags = SA_SIGINFO;
	sigfillset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, NULL);
	pthread_t t;
	for (int i = 0; i < 2; i++)
		pthread_create(&t, NULL, spin, NULL);
	struct timespec ts = {0, 20 * 1000 * 1000};
	for (;;) {
		char buf[32];
		int n = snprintf(buf, sizeof buf, "%20lu\n", faults);
		if (pwrite(fd, buf, n, 0) != n)
			return 1;
		nanosleep(&ts, NULL);
	}
}
