/* bench_common.h: the harness shared by the bench/w_*.c workload programs.
 *
 * Each workload is one small C program that calls only the C library's
 * malloc family and POSIX threads, so the allocator under test is whatever
 * the dynamic linker binds malloc to (glibc, or a library in LD_PRELOAD).
 * This header gives them a common command line, clock, random numbers,
 * thread start-up and result line.  Everything is static inline or static
 * data: the harness itself never calls malloc (its arrays come from mmap or
 * static storage, stdout gets a static buffer), so every allocation the
 * allocator sees belongs to the workload being measured.
 *
 * Include it FIRST in the program (it defines _GNU_SOURCE for dladdr,
 * pthread_attr_setaffinity_np and CPU_SET).
 *
 * Command line, common to every program:
 *
 *     w_NAME [THREADS] [UNITS|SECONDSs] [SIZE]
 *
 *   THREADS  number of worker threads (default per program)
 *   UNITS    work units PER THREAD (the unit is defined by each program);
 *            k/M/G suffixes are powers of 1000 (2M = 2000000).
 *            "1.5s" instead runs each thread for about 1.5 seconds.
 *   SIZE     the program's size parameter (block size, maximum size, ...);
 *            k/M/G suffixes are powers of 1024 here (64K = 65536).
 *   "-" for any argument keeps its default.
 *
 * Result: exactly one line on stdout,
 *
 *   RESULT workload=NAME threads=T ops=N seconds=S mops=M ns_per_op=X
 *          units=U [program extras] pinned=P rss_kb=K checksum=C malloc_from=L
 *
 *   ops      allocating calls measured, summed over all threads: every
 *            malloc or realloc counts one; frees are not counted on their
 *            own (every block is freed as well, so for most workloads this
 *            is the number of allocate+free pairs)
 *   seconds  wall-clock time of the measured part (creating the worker
 *            threads is excluded, their exit is included)
 *   mops     ops / seconds / 10^6 (higher is better)
 *   ns_per_op  seconds / ops, in ns (wall time, all threads together)
 *   units    work units done, summed over the threads
 *   rss_kb   peak resident set size of the process (KiB)
 *   checksum a 64-bit digest of the data the workload computed.  The work is
 *            driven by fixed seeds, so with a UNITS count the checksum is the
 *            same under every allocator (and for every run); a different one
 *            means some allocator lost or corrupted data.  With a SECONDSs
 *            run the amount of work depends on speed, so checksum=na.
 *   pinned   "no", or the number of CPUs the threads were spread over.
 *            Multi-threaded runs pin thread i to the i-th CPU of the
 *            process' affinity mask (round robin) so that threads really
 *            run on different cores even on a busy machine; BENCH_PIN=0 in
 *            the environment turns that off.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define BC_MAX_THREADS 256
#define BC_CACHE_LINE 64

/* ------------------------------------------------------------------------ */
/* Errors, escaping pointers                                                */
/* ------------------------------------------------------------------------ */

static const char *bc_prog = "bench";

/* Addresses are stored here so the optimiser cannot prove a block unused
 * (the programs are also built with -fno-builtin).  Thread-local: a shared
 * variable written by every thread would be a data race and, worse, one
 * cache line bouncing between the CPUs on every allocation. */
static _Thread_local void *volatile bc_sink;

_Noreturn static inline void bc_die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", bc_prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

_Noreturn static inline void bc_oom(size_t size)
{
    fprintf(stderr, "%s: allocation of %zu bytes failed\n", bc_prog, size);
    exit(3);
}

/* malloc that stops the program on failure. */
static inline void *bc_malloc(size_t size)
{
    void *p = malloc(size);
    if (p == NULL)
        bc_oom(size);
    return p;
}

static inline void *bc_realloc(void *old, size_t size)
{
    void *p = realloc(old, size);
    if (p == NULL)
        bc_oom(size);
    return p;
}

/* Zeroed memory for the harness' own arrays, straight from the kernel so
 * that it is not charged to the allocator. */
static inline void *bc_map(size_t bytes)
{
    if (bytes == 0)
        bytes = 1;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        bc_die("mmap of %zu bytes failed", bytes);
    return p;
}

static inline void bc_unmap(void *p, size_t bytes)
{
    if (bytes == 0)
        bytes = 1;
    munmap(p, bytes);
}

/* ------------------------------------------------------------------------ */
/* Clock                                                                    */
/* ------------------------------------------------------------------------ */

static inline double bc_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------ */
/* Touching memory                                                          */
/* ------------------------------------------------------------------------ */

/* Fills obj, then does `writes` read-modify-write byte stores into it in
 * turn and returns a digest of its final bytes: the cache benchmarks' unit
 * of work.  The volatile accesses make every store really reach memory. */
static inline uint64_t bc_hammer(unsigned char *obj, size_t size, uint64_t seed, int writes)
{
    volatile unsigned char *v = obj;
    for (size_t k = 0; k < size; k++)
        v[k] = (unsigned char)(seed + k);
    size_t k = 0;
    for (int w = 0; w < writes; w++) {
        v[k] = (unsigned char)(v[k] + 1);
        if (++k == size)
            k = 0;
    }
    uint64_t h = 0;
    for (size_t j = 0; j < size; j++)
        h = h * 31 + v[j];
    return h;
}

/* ------------------------------------------------------------------------ */
/* Random numbers and hashing                                               */
/* ------------------------------------------------------------------------ */

/* A strong 64-bit mixer (the splitmix64 finaliser): seeds, checksums. */
static inline uint64_t bc_mix(uint64_t x)
{
    x += UINT64_C(0x9E3779B97F4A7C15);
    x = (x ^ (x >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94D049BB133111EB);
    return x ^ (x >> 31);
}

/* xorshift64*: a few cycles per number, never returns to state 0. */
typedef struct {
    uint64_t s;
} bc_rng;

/* Seed from a per-program constant and a stream number (thread index). */
static inline void bc_rng_seed(bc_rng *r, uint64_t seed, uint64_t stream)
{
    r->s = bc_mix(seed ^ bc_mix(stream + 1));
    if (r->s == 0)
        r->s = 1;
}

static inline uint64_t bc_next(bc_rng *r)
{
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * UINT64_C(0x2545F4914F6CDD1D);
}

/* Uniform in [0, n) (n >= 1), multiply-shift on the high 32 bits. */
static inline uint32_t bc_below(bc_rng *r, uint32_t n)
{
    return (uint32_t)(((bc_next(r) >> 32) * (uint64_t)n) >> 32);
}

/* Uniform in [lo, hi]. */
static inline size_t bc_range(bc_rng *r, size_t lo, size_t hi)
{
    return lo + (size_t)(bc_next(r) % (uint64_t)(hi - lo + 1));
}

/* Roughly log-uniform in [lo, hi]: an exponent first, then a uniform value
 * inside that power-of-two band, so small sizes are as frequent as large
 * ones per octave (the usual shape of real allocation size histograms). */
static inline size_t bc_logrange(bc_rng *r, size_t lo, size_t hi)
{
    if (lo < 1)
        lo = 1;
    if (hi <= lo)
        return lo;
    unsigned lo_bits = 63 - (unsigned)__builtin_clzll((unsigned long long)lo);
    unsigned hi_bits = 63 - (unsigned)__builtin_clzll((unsigned long long)hi);
    unsigned e = lo_bits + bc_below(r, hi_bits - lo_bits + 1);
    size_t band_lo = (size_t)1 << e, band_hi = ((size_t)2 << e) - 1;
    if (band_lo < lo)
        band_lo = lo;
    if (band_hi > hi)
        band_hi = hi;
    return bc_range(r, band_lo, band_hi);
}

/* FNV-1a over a byte range (for content checks of strings and buffers). */
static inline uint64_t bc_hash_bytes(const void *p, size_t n, uint64_t h)
{
    const unsigned char *b = p;
    if (h == 0)
        h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

/* ------------------------------------------------------------------------ */
/* Command line                                                             */
/* ------------------------------------------------------------------------ */

typedef struct {
    const char *name; /* workload name, printed as workload= */
    int threads;
    uint64_t units;   /* work units per thread (ops mode) */
    double seconds;   /* > 0: timed mode, run about this long */
    uint64_t size;
    int pin;          /* pin threads to CPUs (threads > 1, BENCH_PIN != 0) */
} bc_args;

static char bc_stdout_buf[4096];

static inline int bc_is_default(const char *s)
{
    return s[0] == '\0' || strcmp(s, "-") == 0;
}

/* "12", "2.5M", "64K" -> value; unit is 1000 or 1024. */
static inline uint64_t bc_parse_num(const char *s, const char *what,
                                    double unit)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || v <= 0)
        bc_die("bad %s '%s'", what, s);
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': v *= unit; end++; break;
    case 'm': case 'M': v *= unit * unit; end++; break;
    case 'g': case 'G': v *= unit * unit * unit; end++; break;
    default: bc_die("bad %s '%s'", what, s);
    }
    if (*end != '\0' || v < 1 || v > 1e15)
        bc_die("bad %s '%s'", what, s);
    return (uint64_t)v;
}

static inline void bc_usage(const char *usage, int status)
{
    fprintf(stderr,
            "usage: %s [THREADS] [UNITS|SECONDSs] [SIZE]   ('-' = default)\n"
            "%s"
            "UNITS are per thread (k/M/G = x1000); SIZE takes K/M/G (x1024).\n"
            "Prints one line 'RESULT workload=... checksum=...'.\n"
            "BENCH_PIN=0: do not pin threads to CPUs.\n",
            bc_prog, usage);
    exit(status);
}

/* Parse argv (see the top of this file).  usage describes the program's
 * own meaning of the three arguments and their defaults. */
static inline void bc_parse(bc_args *a, int argc, char **argv,
                            const char *name, int def_threads,
                            uint64_t def_units, uint64_t def_size,
                            uint64_t min_size, uint64_t max_size,
                            const char *usage)
{
    setvbuf(stdout, bc_stdout_buf, _IOLBF, sizeof bc_stdout_buf);
    if (argc > 0 && argv[0] != NULL) {
        const char *base = strrchr(argv[0], '/');
        bc_prog = base ? base + 1 : argv[0];
    }
    a->name = name;
    a->threads = def_threads;
    a->units = def_units;
    a->seconds = 0;
    a->size = def_size;
    if (argc > 1 && (strcmp(argv[1], "-h") == 0 ||
                     strcmp(argv[1], "--help") == 0))
        bc_usage(usage, 0);
    if (argc > 4)
        bc_usage(usage, 2);
    if (argc > 1 && !bc_is_default(argv[1])) {
        uint64_t t = bc_parse_num(argv[1], "thread count", 1000);
        if (t < 1 || t > BC_MAX_THREADS)
            bc_die("thread count must be 1..%d", BC_MAX_THREADS);
        a->threads = (int)t;
    }
    if (argc > 2 && !bc_is_default(argv[2])) {
        const char *s = argv[2];
        size_t len = strlen(s);
        if (len > 1 && s[len - 1] == 's') {
            char *end = NULL;
            double d = strtod(s, &end);
            if (end != s + len - 1 || !(d > 0) || d > 1e6)
                bc_die("bad duration '%s' (expected e.g. 1.5s)", s);
            a->seconds = d;
            a->units = 0;
        } else {
            a->units = bc_parse_num(s, "unit count", 1000);
        }
    }
    if (argc > 3 && !bc_is_default(argv[3]))
        a->size = strcmp(argv[3], "0") == 0
                      ? 0 : bc_parse_num(argv[3], "size", 1024);
    if (a->size < min_size || a->size > max_size)
        bc_die("size must be in %" PRIu64 "..%" PRIu64, min_size, max_size);
    const char *pin = getenv("BENCH_PIN");
    a->pin = a->threads > 1 && !(pin != NULL && strcmp(pin, "0") == 0);
}

/* ------------------------------------------------------------------------ */
/* Running threads                                                          */
/* ------------------------------------------------------------------------ */

/* Set by bc_run_threads before the workers start: timed mode ends here. */
static double bc_deadline;

/* Whether a thread that has done `done` units should do another.  In timed
 * mode the clock is read once every 64 units. */
static inline int bc_more(const bc_args *a, uint64_t done)
{
    if (a->seconds <= 0)
        return done < a->units;
    if (done % 64 != 0)
        return 1;
    return bc_now() < bc_deadline;
}

static cpu_set_t bc_allowed;
static int bc_ncpus = -1; /* CPUs in bc_allowed; 0 = do not pin */

static inline int bc_pin_cpus(const bc_args *a)
{
    if (bc_ncpus < 0) {
        bc_ncpus = 0;
        if (a->pin && sched_getaffinity(0, sizeof bc_allowed,
                                        &bc_allowed) == 0) {
            bc_ncpus = CPU_COUNT(&bc_allowed);
            if (bc_ncpus < 2)
                bc_ncpus = 0;
        }
    }
    return bc_ncpus;
}

/* Put the thread created with *attr on CPU number (index mod ncpus) of the
 * allowed set, when pinning is on. */
static inline void bc_pin_attr(const bc_args *a, pthread_attr_t *attr,
                               int index)
{
    int n = bc_pin_cpus(a);
    if (n == 0)
        return;
    int want = index % n, seen = 0;
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (!CPU_ISSET(c, &bc_allowed))
            continue;
        if (seen++ == want) {
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET(c, &one);
            pthread_attr_setaffinity_np(attr, sizeof one, &one);
            return;
        }
    }
}

static inline const char *bc_pinned_str(const bc_args *a)
{
    static char buf[16];
    int n = bc_pin_cpus(a);
    if (n == 0)
        return "no";
    snprintf(buf, sizeof buf, "%d", n < a->threads ? n : a->threads);
    return buf;
}

typedef void (*bc_worker_fn)(int index, void *ctx);

struct bc_thread {
    pthread_t tid;
    int index;
    bc_worker_fn fn;
    void *ctx;
};

static struct bc_thread bc_threads[BC_MAX_THREADS];
static pthread_barrier_t bc_start_barrier;

static void *bc_trampoline(void *arg)
{
    struct bc_thread *t = arg;
    pthread_barrier_wait(&bc_start_barrier);
    t->fn(t->index, t->ctx);
    return NULL;
}

/* Start a->threads threads running fn(i, ctx), release them together, wait
 * for all of them.  Returns the wall-clock seconds from the release to the
 * last join (thread creation is not timed; thread exit is). */
static inline double bc_run_threads(const bc_args *a, bc_worker_fn fn,
                                    void *ctx)
{
    int n = a->threads;
    pthread_barrier_init(&bc_start_barrier, NULL, (unsigned)n + 1);
    for (int i = 0; i < n; i++) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        bc_pin_attr(a, &attr, i);
        bc_threads[i].index = i;
        bc_threads[i].fn = fn;
        bc_threads[i].ctx = ctx;
        if (pthread_create(&bc_threads[i].tid, &attr, bc_trampoline,
                           &bc_threads[i]) != 0)
            bc_die("pthread_create failed");
        pthread_attr_destroy(&attr);
    }
    double t0 = bc_now();
    bc_deadline = t0 + a->seconds;
    pthread_barrier_wait(&bc_start_barrier);
    for (int i = 0; i < n; i++)
        pthread_join(bc_threads[i].tid, NULL);
    double t1 = bc_now();
    pthread_barrier_destroy(&bc_start_barrier);
    return t1 - t0;
}

/* A per-thread record on its own cache lines (results, RNG, counters), so
 * that the harness adds no false sharing of its own. */
#define BC_PADDED(type) \
    union { type v; char pad_[((sizeof(type) + BC_CACHE_LINE - 1) / \
                               BC_CACHE_LINE) * BC_CACHE_LINE]; }

/* ------------------------------------------------------------------------ */
/* Reporting                                                                */
/* ------------------------------------------------------------------------ */

static inline long bc_peak_rss_kb(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return -1;
    return ru.ru_maxrss; /* KiB on Linux */
}

/* Current VmRSS in KiB from /proc/self/status (read with plain system
 * calls, no stdio buffer), -1 if unavailable. */
static inline long bc_rss_kb(void)
{
    char buf[4096];
    int fd = open("/proc/self/status", O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    const char *p = strstr(buf, "VmRSS:");
    return p ? strtol(p + 6, NULL, 10) : -1;
}

/* Basename of the shared object the process' malloc comes from. */
static inline const char *bc_malloc_from(void)
{
    static char name[128];
    void *sym = dlsym(RTLD_DEFAULT, "malloc");
    Dl_info info;
    if (sym == NULL || dladdr(sym, &info) == 0 || info.dli_fname == NULL)
        return "unknown";
    const char *base = strrchr(info.dli_fname, '/');
    base = base ? base + 1 : info.dli_fname;
    if (*base == '\0')
        base = "main";
    size_t n = 0;
    for (; base[n] != '\0' && n + 1 < sizeof name; n++)
        name[n] = (base[n] == ' ' || base[n] == '=') ? '_' : base[n];
    name[n] = '\0';
    return name;
}

/* Combine per-thread checksums independently of completion order. */
static inline uint64_t bc_combine(uint64_t acc, int index, uint64_t part)
{
    return acc + bc_mix(part ^ ((uint64_t)index << 56));
}

/* What each thread of the simplest workloads reports: units done and a
 * checksum, on its own cache lines; bc_tally_total adds them up. */
typedef struct bc_tally {
    uint64_t units;
    uint64_t sum;
} bc_tally;
static BC_PADDED(bc_tally) bc_tallies[BC_MAX_THREADS] __attribute__((unused));

static inline uint64_t bc_tally_total(const bc_args *a, uint64_t *sum)
{
    uint64_t units = 0;
    *sum = 0;
    for (int i = 0; i < a->threads; i++) {
        units += bc_tallies[i].v.units;
        *sum = bc_combine(*sum, i, bc_tallies[i].v.sum);
    }
    return units;
}

/* Defines the worker of a workload whose threads repeat one step on their
 * own state (states[index], with a `steps` field that gets the count)
 * until the run is over: one definition instead of one per program, and
 * a macro so that the step still inlines into the loop. */
#define BC_STEP_WORKER(states, step)                                  \
    static void worker(int index, void *ctx)                          \
    {                                                                 \
        (void)ctx;                                                    \
        __typeof__((states)[0]) st_ = (states)[index];                \
        uint64_t i_ = 0;                                              \
        for (; bc_more(&g_args, i_); i_++)                            \
            step(st_);                                                \
        st_->steps = i_;                                              \
    }

/* The cache benchmarks' loop: while the run lasts, a thread allocates an
 * object of `size` bytes, hammers it (bc_hammer) and frees it. Returns the
 * checksum; *units gets the number of objects. */
static inline uint64_t bc_own_objects(const bc_args *a, int index, size_t size, int writes,
                                      uint64_t *units)
{
    uint64_t sum = 0, i = 0;
    for (; bc_more(a, i); i++) {
        unsigned char *p = malloc(size);
        if (p == NULL)
            bc_oom(size);
        bc_sink = p;
        sum += bc_hammer(p, size, i + (uint64_t)index, writes);
        free(p);
    }
    *units = i;
    return sum;
}

/* Print the RESULT line.  extra_fmt (may be NULL) adds " key=value" pairs
 * and must start with a space. */
static inline void bc_report(const bc_args *a, uint64_t ops, uint64_t units,
                             double secs, uint64_t checksum,
                             const char *extra_fmt, ...)
{
    if (secs <= 0)
        secs = 1e-9;
    printf("RESULT workload=%s threads=%d ops=%" PRIu64 " seconds=%.3f "
           "mops=%.3f ns_per_op=%.2f units=%" PRIu64,
           a->name, a->threads, ops, secs, (double)ops / secs / 1e6,
           ops ? secs * 1e9 / (double)ops : 0.0, units);
    if (extra_fmt != NULL) {
        va_list ap;
        va_start(ap, extra_fmt);
        vprintf(extra_fmt, ap);
        va_end(ap);
    }
    printf(" pinned=%s rss_kb=%ld", bc_pinned_str(a), bc_peak_rss_kb());
    if (a->seconds > 0)
        printf(" checksum=na");
    else
        printf(" checksum=%016" PRIx64, checksum);
    printf(" malloc_from=%s\n", bc_malloc_from());
    fflush(stdout);
}

#endif /* BENCH_COMMON_H */
