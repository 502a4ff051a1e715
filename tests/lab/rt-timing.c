/*
 * rt-timing: what a runtime call costs a Linux guest, timed from inside the
 * guest (lab scenario T, tests/lab/T.sh). Runs as root in L2, under efivmm
 * or under QEMU with OVMF, and prints one line per measure:
 *
 *   LAB-TIMING <vmm> <what> n=N median_ns=X p99_ns=Y max_ns=Z [ratio_median=A ratio_p99=B] [...]
 *
 * where the ratios are against the median of this run's bare exit, the
 * only figure that is comparable across VMMs and runs of the lab (L1 is
 * emulated by TCG: absolute times are inflated and vary).
 *
 * - bare-exit: `outb` to port 0x80 (ioperm), which no VMM handles in the
 *   kernel: one round trip L2 -> the VMM in L1's user space (efivmm or
 *   QEMU) -> L2.
 * - get-variable: one read of an efivarfs file, pread(2) at offset 0 on a
 *   file opened once (open/read/close each time if pread is refused). In
 *   Linux 6.1 (fs/efivarfs/file.c, efivarfs_file_read) every read makes
 *   two GetVariable calls, the size (efivar_entry_size: DataSize 0, answer
 *   EFI_BUFFER_TOO_SMALL) and then the data; nothing is cached. The read
 *   rate limit (__ratelimit(&file->f_cred->user->ratelimit)) is 100/s for
 *   other users but never limits root (root_user's ratelimit has interval 0).
 * - set-variable: one write(2) of 4 + 8 bytes (NV|BS|RT, a counter) to an
 *   efivarfs file opened once. Linux 6.1 makes it three calls:
 *   QueryVariableInfo (efi_query_variable_store, for a non-volatile
 *   variable), SetVariable, and GetVariable for the new size
 *   (efivar_entry_set_get_size).
 * - efibootmgr-v: the wall time of `efibootmgr -v` (output to /dev/null);
 *   libefivar reads each variable with two read(2)s (attributes, then
 *   data), so four GetVariable calls per variable, and does not sleep for
 *   root.
 *
 * Per-operation times are rdtsc differences, converted with a calibration
 * against CLOCK_MONOTONIC (250 ms at the start, checked again over the
 * whole run: `clock` line). Each measure stops at N operations or when its
 * time budget is spent, whichever comes first (n= says how many ran).
 * p99 is the nearest-rank percentile: with n < 100 it is the maximum.
 *
 * Usage: rt-timing VMM READ-FILE WRITE-FILE [--bare N] [--reads N]
 *        [--writes N] [--efibootmgr N] [--budget-s S]
 * Exit 0 only if every operation succeeded.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *vmm;
static int errors;
static double ns_per_tick;

static inline uint64_t ticks(void) {
	uint32_t lo, hi;
	__asm__ volatile("lfence; rdtsc; lfence" : "=a"(lo), "=d"(hi)::"memory");
	return (uint64_t)hi << 32 | lo;
}

static uint64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

struct stats { size_t n; uint64_t median, p99, max; };

/* Sorts the samples (in ns) and takes the median and the nearest-rank p99. */
static struct stats stats_of(uint64_t *ns, size_t n) {
	struct stats s = { n, 0, 0, 0 };
	if (!n) return s;
	qsort(ns, n, sizeof *ns, cmp_u64);
	s.median = n % 2 ? ns[n / 2] : (ns[n / 2 - 1] + ns[n / 2]) / 2;
	size_t rank = (size_t)((99 * n + 99) / 100); /* ceil(0.99 n) */
	s.p99 = ns[rank - 1];
	s.max = ns[n - 1];
	return s;
}

static uint64_t bare_median;

static void report(const char *what, struct stats s, const char *extra) {
	printf("LAB-TIMING %s %s n=%zu median_ns=%llu p99_ns=%llu max_ns=%llu", vmm, what, s.n,
	       (unsigned long long)s.median, (unsigned long long)s.p99, (unsigned long long)s.max);
	if (bare_median && strcmp(what, "bare-exit"))
		printf(" ratio_median=%.2f ratio_p99=%.2f", (double)s.median / bare_median,
		       (double)s.p99 / bare_median);
	if (extra && *extra) printf(" %s", extra);
	printf("\n");
	fflush(stdout);
}

static void fail(const char *what) {
	printf("LAB-TIMING %s error %s: %s\n", vmm, what, strerror(errno));
	fflush(stdout);
	errors++;
}

static uint64_t to_ns(uint64_t t) { return (uint64_t)(t * ns_per_tick + 0.5); }

/* Calibration: rdtsc against CLOCK_MONOTONIC over about 250 ms. */
static void calibrate(void) {
	uint64_t c0 = now_ns(), t0 = ticks(), c1;
	while ((c1 = now_ns()) - c0 < 250000000ULL) {
	}
	uint64_t t1 = ticks();
	ns_per_tick = (double)(c1 - c0) / (double)(t1 - t0);
}

static int budget_left(uint64_t start, double budget_s) {
	return now_ns() - start < (uint64_t)(budget_s * 1e9);
}

static void bare_exits(size_t n, double budget_s) {
	if (ioperm(0x80, 1, 1)) {
		fail("ioperm(0x80)");
		return;
	}
	uint64_t *ns = calloc(n, sizeof *ns);
	size_t i;
	for (i = 0; i < 20; i++) outb(0, 0x80); /* warm-up */
	uint64_t start = now_ns();
	for (i = 0; i < n && (i % 64 || budget_left(start, budget_s)); i++) {
		uint64_t t0 = ticks();
		outb(0, 0x80);
		uint64_t t1 = ticks();
		ns[i] = to_ns(t1 - t0);
	}
	struct stats s = stats_of(ns, i);
	bare_median = s.median;
	report("bare-exit", s, "port=0x80");
	free(ns);
}

static void reads(const char *path, size_t n, double budget_s) {
	uint8_t buf[256], first[256];
	int fd = open(path, O_RDONLY);
	if (fd < 0) {
		fail("open (read)");
		return;
	}
	const char *mode = "pread-one-open";
	ssize_t len = pread(fd, first, sizeof first, 0);
	if (len < 0 && errno == ESPIPE) {
		mode = "open-read-close";
		close(fd);
		fd = -1;
		int f2 = open(path, O_RDONLY);
		len = f2 < 0 ? -1 : read(f2, first, sizeof first);
		if (f2 >= 0) close(f2);
	}
	if (len < 4) {
		if (len >= 0) errno = EIO;
		fail("first read");
		if (fd >= 0) close(fd);
		return;
	}
	uint64_t *ns = calloc(n, sizeof *ns);
	uint64_t start = now_ns();
	size_t i;
	for (i = 0; i < n && (i % 16 || budget_left(start, budget_s)); i++) {
		uint64_t t0 = ticks();
		ssize_t r;
		if (fd >= 0) {
			r = pread(fd, buf, sizeof buf, 0);
		} else {
			int f = open(path, O_RDONLY);
			r = f < 0 ? -1 : read(f, buf, sizeof buf);
			if (f >= 0) close(f);
		}
		uint64_t t1 = ticks();
		if (r != len || memcmp(buf, first, len)) {
			if (r < 0) fail("read");
			else { errno = EIO; fail("read returned other data"); }
			break;
		}
		ns[i] = to_ns(t1 - t0);
	}
	char extra[128];
	snprintf(extra, sizeof extra, "mode=%s bytes=%zd calls_per_op=2", mode, len);
	report("get-variable", stats_of(ns, i), extra);
	free(ns);
	if (fd >= 0) close(fd);
}

/* Opens an efivarfs file for writing; efivarfs makes a non-standard
 * variable immutable (FS_IMMUTABLE_FL) when it lists it: cleared here. */
static int open_writable(const char *path) {
	int fd = open(path, O_WRONLY);
	if (fd >= 0 || errno != EPERM) return fd;
	int r = open(path, O_RDONLY);
	if (r < 0) return -1;
	int flags = 0;
	if (ioctl(r, FS_IOC_GETFLAGS, &flags) == 0) {
		flags &= ~FS_IMMUTABLE_FL;
		ioctl(r, FS_IOC_SETFLAGS, &flags);
	}
	close(r);
	return open(path, O_WRONLY);
}

static void writes(const char *path, size_t n, double budget_s) {
	int fd = open_writable(path);
	if (fd < 0) {
		fail("open (write)");
		return;
	}
	uint8_t buf[12] = { 7, 0, 0, 0 }; /* NV|BS|RT, then 8 bytes of data */
	uint64_t value = now_ns();
	uint64_t *ns = calloc(n, sizeof *ns);
	uint64_t start = now_ns();
	size_t i;
	for (i = 0; i < n && budget_left(start, budget_s); i++) {
		value++;
		memcpy(buf + 4, &value, 8);
		uint64_t t0 = ticks();
		ssize_t w = write(fd, buf, sizeof buf);
		uint64_t t1 = ticks();
		if (w != (ssize_t)sizeof buf) {
			fail("write");
			break;
		}
		ns[i] = to_ns(t1 - t0);
	}
	close(fd);
	/* The last value must read back. */
	uint8_t back[64];
	int r = open(path, O_RDONLY);
	ssize_t len = r < 0 ? -1 : read(r, back, sizeof back);
	if (r >= 0) close(r);
	if (len != 12 || memcmp(back, buf, 12)) {
		errno = EIO;
		fail("write read-back");
	}
	report("set-variable", stats_of(ns, i), "bytes=8 attrs=7 calls_per_op=3");
	free(ns);
}

static void efibootmgr(size_t n, double budget_s) {
	uint64_t *ns = calloc(n, sizeof *ns);
	uint64_t start = now_ns();
	size_t i;
	for (i = 0; i < n && (i == 0 || budget_left(start, budget_s)); i++) {
		uint64_t c0 = now_ns();
		pid_t pid = fork();
		if (pid == 0) {
			int null = open("/dev/null", O_WRONLY);
			if (null >= 0) {
				dup2(null, 1);
				dup2(null, 2);
			}
			execlp("efibootmgr", "efibootmgr", "-v", (char *)NULL);
			_exit(127);
		}
		int status = 0;
		if (pid < 0 || waitpid(pid, &status, 0) < 0) {
			fail("efibootmgr: fork/wait");
			break;
		}
		uint64_t c1 = now_ns();
		if (!WIFEXITED(status) || WEXITSTATUS(status)) {
			printf("LAB-TIMING %s error efibootmgr -v: status %d\n", vmm, status);
			errors++;
			break;
		}
		ns[i] = c1 - c0;
	}
	report("efibootmgr-v", stats_of(ns, i), "clock=monotonic-wall");
	free(ns);
}

static size_t arg_n(const char *s) {
	long v = strtol(s, NULL, 10);
	return v > 0 ? (size_t)v : 1;
}

int main(int argc, char **argv) {
	if (argc < 4) {
		fprintf(stderr, "usage: rt-timing VMM READ-FILE WRITE-FILE [--bare N] [--reads N] "
				"[--writes N] [--efibootmgr N] [--budget-s S]\n");
		return 2;
	}
	vmm = argv[1];
	size_t n_bare = 5000, n_reads = 2000, n_writes = 100, n_ebm = 10;
	double budget = 20; /* seconds per measure at most (the bare exit: a quarter) */
	for (int i = 4; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--bare")) n_bare = arg_n(argv[i + 1]);
		else if (!strcmp(argv[i], "--reads")) n_reads = arg_n(argv[i + 1]);
		else if (!strcmp(argv[i], "--writes")) n_writes = arg_n(argv[i + 1]);
		else if (!strcmp(argv[i], "--efibootmgr")) n_ebm = arg_n(argv[i + 1]);
		else if (!strcmp(argv[i], "--budget-s")) budget = atof(argv[i + 1]);
		else {
			fprintf(stderr, "rt-timing: unknown option %s\n", argv[i]);
			return 2;
		}
	}
	uint64_t c_start = now_ns(), t_start = ticks();
	calibrate();
	bare_exits(n_bare, budget / 4);
	reads(argv[2], n_reads, budget);
	writes(argv[3], n_writes, budget);
	efibootmgr(n_ebm, budget);
	uint64_t c_end = now_ns(), t_end = ticks();
	double whole = (double)(c_end - c_start) / (double)(t_end - t_start);
	printf("LAB-TIMING %s clock ns_per_tick=%.4f whole_run_ns_per_tick=%.4f run_s=%.1f errors=%d\n", vmm,
	       ns_per_tick, whole, (c_end - c_start) / 1e9, errors);
	return errors ? 1 : 0;
}
