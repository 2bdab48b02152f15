/* BrainMM micro-benchmark.
 *
 * This program only calls the plain malloc/free of the C library and POSIX
 * threads, so the allocator under test is whatever the dynamic linker binds
 * malloc to: glibc when run as is, another allocator when that allocator is
 * given in LD_PRELOAD.  bench/run.sh runs it that way for several allocators
 * side by side.
 *
 * Usage: micro WORKLOAD [args]
 *   small   [OPS|SECONDSs]  random sizes 16..1024 B in a window of live blocks
 *   fixed   [SIZE] [OPS]    tight malloc(SIZE)/free loop
 *   batch   [SIZE] [OPS]    malloc 100 blocks of SIZE, then free the 100
 *   aligned [SIZE] [OPS] [ALIGN]  as fixed, through posix_memalign(ALIGN)
 *   prodcon [OPS]           producer thread mallocs, consumer thread frees
 *                           (pinned to two CPUs; MICRO_PIN=0 leaves them free)
 *   mem     SIZE            RSS cost of 100 MB of live SIZE-byte objects
 *                           (any SIZE >= 1; bench/workloads.txt runs 8, 16,
 *                           24, 32, 48, 64, 128 and 256)
 *
 * Counts accept a k/M/G suffix (powers of 1000): 20M = 20000000.
 * Each workload ends by printing exactly one line that starts with "RESULT ",
 * made of space separated key=value pairs (workload= and threads= first).
 * The other workloads of the suite are the bench/w_*.c programs; the list
 * of rows the driver runs is bench/workloads.txt.  Throughput workloads report
 * mops (million malloc+free pairs per second); mem reports rss_mb in
 * decimal megabytes (10^6 bytes), so 100 MB of live data ideally costs 100.
 *
 * Build with -O2 -fno-builtin -pthread.  -fno-builtin stops the compiler from
 * treating malloc/free as known functions (it may otherwise delete a
 * malloc/free pair whose block is not used); on top of that every block is
 * written to and its address is stored in a volatile variable.
 */
#include "bench_common.h" /* first: it defines _GNU_SOURCE */

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

/* Blocks' addresses are stored here so that no allocation can be proven
 * useless by the optimiser. */
static void *volatile g_escape;

_Noreturn static void die(const char *what)
{
    fprintf(stderr, "micro: %s\n", what);
    exit(2);
}

static void *xmalloc(size_t size)
{
    void *p = malloc(size);
    if (p == NULL) {
        fprintf(stderr, "micro: malloc(%zu) failed\n", size);
        exit(3);
    }
    g_escape = p;
    return p;
}

/* Map 32 random bits onto [0, n) with a multiply instead of a division. */
static inline uint32_t in_range(uint64_t bits32, uint32_t n)
{
    return (uint32_t)(((bits32 & 0xffffffffu) * (uint64_t)n) >> 32);
}

/* Parse a count such as 20000000, 20M, 500k, 1G (decimal multipliers). */
static uint64_t parse_count(const char *s, const char *what)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || v <= 0)
        goto bad;
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': v *= 1e3; end++; break;
    case 'm': case 'M': v *= 1e6; end++; break;
    case 'g': case 'G': v *= 1e9; end++; break;
    default: goto bad;
    }
    if (*end != '\0' || v < 1 || v > 1e15)
        goto bad;
    return (uint64_t)v;
bad:
    fprintf(stderr, "micro: bad %s '%s'\n", what, s);
    exit(2);
}

static void print_throughput(const char *workload, int threads,
                             const char *extra, uint64_t ops, double secs,
                             uint64_t checksum)
{
    printf("RESULT workload=%s threads=%d%s ops=%" PRIu64 " seconds=%.3f "
           "mops=%.2f ns_per_op=%.2f rss_kb=%ld checksum=%016" PRIx64
           " malloc_from=%s\n",
           workload, threads, extra, ops, secs, (double)ops / secs / 1e6,
           secs * 1e9 / (double)ops, bc_peak_rss_kb(), checksum,
           bc_malloc_from());
}

/* ------------------------------------------------------------------------ */
/* small: random sizes in a window of live blocks                           */
/* ------------------------------------------------------------------------ */

#define SMALL_WINDOW 1000
#define SMALL_MIN 16
#define SMALL_MAX 1024

static void *g_window[SMALL_WINDOW];

static int run_small(int argc, char **argv)
{
    uint64_t ops = 20000000;
    double duration = 0; /* > 0: run for this many seconds instead */
    if (argc > 0) {
        size_t len = strlen(argv[0]);
        if (len > 1 && argv[0][len - 1] == 's') {
            char *end = NULL;
            duration = strtod(argv[0], &end);
            if (end != argv[0] + len - 1 || duration <= 0)
                die("bad duration (expected e.g. 2s or 0.5s)");
        } else {
            ops = parse_count(argv[0], "op count");
        }
    }

    bc_rng r = {UINT64_C(0x9E3779B97F4A7C15)};
    uint64_t sum = 0;
    for (int i = 0; i < SMALL_WINDOW; i++) {
        uint64_t x = bc_next(&r);
        size_t size = SMALL_MIN + in_range(x, SMALL_MAX - SMALL_MIN + 1);
        uint64_t *p = xmalloc(size);
        p[0] = x;
        p[1] = size;
        g_window[i] = p;
    }

    /* One op: free a random live block, malloc a random size in its place,
     * write its first 16 bytes. The checksum reads each block before it is
     * freed, so it depends only on the RNG, not on the allocator. */
    uint64_t done = 0;
    double t0 = bc_now(), t1;
    for (;;) {
        uint64_t chunk = duration > 0 ? 65536 : ops;
        for (uint64_t i = 0; i < chunk; i++) {
            uint64_t x = bc_next(&r);
            uint32_t slot = in_range(x >> 32, SMALL_WINDOW);
            uint64_t *old = g_window[slot];
            sum += old[0] ^ old[1];
            free(old);
            size_t size = SMALL_MIN + in_range(x, SMALL_MAX - SMALL_MIN + 1);
            uint64_t *p = malloc(size);
            if (p == NULL)
                die("malloc failed");
            p[0] = x;
            p[1] = size;
            g_window[slot] = p;
        }
        done += chunk;
        t1 = bc_now();
        if (duration <= 0 || t1 - t0 >= duration)
            break;
    }
    g_escape = g_window[0];

    for (int i = 0; i < SMALL_WINDOW; i++)
        free(g_window[i]);
    print_throughput("small", 1, "", done, t1 - t0, sum);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* fixed / batch: one size, tight loops                                     */
/* ------------------------------------------------------------------------ */

#define BATCH 100

static size_t parse_size(const char *s)
{
    uint64_t v = parse_count(s, "size");
    if (v > (UINT64_C(1) << 40))
        die("size too large");
    return (size_t)v;
}

static void touch_block(void *p, size_t size, uint64_t v)
{
    if (size >= sizeof(uint64_t))
        memcpy(p, &v, sizeof v);
    else
        *(unsigned char *)p = (unsigned char)v;
}

static uint64_t read_block(const void *p, size_t size)
{
    uint64_t v = 0;
    if (size >= sizeof(uint64_t))
        memcpy(&v, p, sizeof v);
    else
        v = *(const unsigned char *)p;
    return v;
}

/* Allocate `size` bytes; with a non-zero `align`, through posix_memalign
 * (the "aligned" workload: the same loop as "fixed", aligned). */
static void *alloc_maybe_aligned(size_t size, size_t align)
{
    if (align == 0)
        return malloc(size);
    void *p = NULL;
    return posix_memalign(&p, align, size) == 0 ? p : NULL;
}

static int run_fixed(int argc, char **argv, int batched)
{
    size_t size = argc > 0 ? parse_size(argv[0]) : 64;
    size_t align = batched == 2 ? (argc > 2 ? parse_size(argv[2]) : 64) : 0;
    if (batched == 2)
        batched = 0;
    uint64_t ops = argc > 1 ? parse_count(argv[1], "op count") : 50000000;
    if (size == 0)
        die("size must be > 0");
    uint64_t sum = 0;
    double t0, t1;

    if (!batched) {
        t0 = bc_now();
        for (uint64_t i = 0; i < ops; i++) {
            void *p = alloc_maybe_aligned(size, align);
            if (p == NULL || ((uintptr_t)p & (align ? align - 1 : 0)) != 0)
                die("malloc failed (or misaligned)");
            touch_block(p, size, i);
            g_escape = p;
            sum += read_block(p, size);
            free(p);
        }
        t1 = bc_now();
    } else {
        void *blocks[BATCH];
        uint64_t rounds = (ops + BATCH - 1) / BATCH;
        ops = rounds * BATCH;
        t0 = bc_now();
        for (uint64_t r = 0; r < rounds; r++) {
            for (int j = 0; j < BATCH; j++) {
                void *p = malloc(size);
                if (p == NULL)
                    die("malloc failed");
                touch_block(p, size, r + (uint64_t)j);
                blocks[j] = p;
            }
            g_escape = blocks[BATCH - 1];
            for (int j = 0; j < BATCH; j++) {
                sum += read_block(blocks[j], size);
                free(blocks[j]);
            }
        }
        t1 = bc_now();
    }

    char extra[64];
    if (align)
        snprintf(extra, sizeof extra, " size=%zu align=%zu", size, align);
    else
        snprintf(extra, sizeof extra, " size=%zu", size);
    print_throughput(align ? "aligned" : batched ? "batch" : "fixed", 1, extra, ops,
                     t1 - t0, sum);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* prodcon: malloc on one thread, free on another                           */
/* ------------------------------------------------------------------------ */

#define RING_SIZE 1024 /* power of two */
#define PUBLISH_EVERY 16 /* producer makes its pushes visible in groups */
#define CACHE_LINE 64

/* Single-producer/single-consumer ring. Each side owns one index and only
 * reads the other's; the two indices live on separate cache lines, and both
 * sides publish their index once per group of blocks rather than per block,
 * so that the ring's own cache traffic stays small next to the allocator's. */
struct ring {
    _Alignas(CACHE_LINE) _Atomic uint64_t head; /* next slot to fill */
    _Alignas(CACHE_LINE) _Atomic uint64_t tail; /* next slot to drain */
    _Alignas(CACHE_LINE) void *slot[RING_SIZE];
};

static struct ring g_ring;
static uint64_t g_pc_ops;
static uint64_t g_pc_sum;
static _Atomic int g_pc_go;

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Spin briefly, then give the CPU away: the machine may have a single CPU
 * available, in which case pure spinning would starve the other side. */
static inline void backoff(unsigned *spins)
{
    if (++*spins < 64)
        cpu_relax();
    else
        sched_yield();
}

static void wait_for_start(void)
{
    unsigned spins = 0;
    while (!atomic_load_explicit(&g_pc_go, memory_order_acquire))
        backoff(&spins);
}

static void *producer(void *arg)
{
    (void)arg;
    bc_rng r = {UINT64_C(0xD1B54A32D192ED03)};
    uint64_t head = 0, tail_seen = 0;
    wait_for_start();
    for (uint64_t i = 0; i < g_pc_ops; i++) {
        uint64_t x = bc_next(&r);
        size_t size = 16 + in_range(x, 256 - 16 + 1);
        uint64_t *p = malloc(size);
        if (p == NULL)
            die("malloc failed");
        p[0] = x;
        if (head - tail_seen == RING_SIZE) {
            /* full: everything pushed must be visible before waiting */
            atomic_store_explicit(&g_ring.head, head, memory_order_release);
            unsigned spins = 0;
            for (;;) {
                tail_seen = atomic_load_explicit(&g_ring.tail,
                                                 memory_order_acquire);
                if (head - tail_seen < RING_SIZE)
                    break;
                backoff(&spins);
            }
        }
        g_ring.slot[head & (RING_SIZE - 1)] = p;
        head++;
        if (head % PUBLISH_EVERY == 0)
            atomic_store_explicit(&g_ring.head, head, memory_order_release);
    }
    atomic_store_explicit(&g_ring.head, head, memory_order_release);
    return NULL;
}

static void *consumer(void *arg)
{
    (void)arg;
    uint64_t tail = 0, head_seen = 0, sum = 0;
    wait_for_start();
    while (tail < g_pc_ops) {
        if (tail == head_seen) {
            unsigned spins = 0;
            for (;;) {
                head_seen = atomic_load_explicit(&g_ring.head,
                                                 memory_order_acquire);
                if (head_seen != tail)
                    break;
                backoff(&spins);
            }
        }
        /* drain everything published so far, then publish progress once */
        while (tail < head_seen) {
            uint64_t *p = g_ring.slot[tail & (RING_SIZE - 1)];
            sum += p[0];
            free(p);
            tail++;
        }
        atomic_store_explicit(&g_ring.tail, tail, memory_order_release);
    }
    g_pc_sum = sum;
    return NULL;
}

/* Put the two threads on two different CPUs of the process' affinity mask,
 * so that every free really crosses cores even when other work on the
 * machine would lead the scheduler to stack both threads on one CPU (which
 * turns the ring into a batch hand-off and measures something else).
 * Returns the number of CPUs used (2), or 0 if the threads are left free. */
static int pin_threads(pthread_attr_t *prod_attr, pthread_attr_t *cons_attr)
{
    const char *env = getenv("MICRO_PIN");
    if (env != NULL && strcmp(env, "0") == 0)
        return 0;
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0)
        return 0;
    size_t cpus[2];
    int found = 0;
    for (size_t c = 0; c < (size_t)CPU_SETSIZE && found < 2; c++)
        if (CPU_ISSET(c, &allowed))
            cpus[found++] = c;
    if (found < 2)
        return 0;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpus[0], &one);
    if (pthread_attr_setaffinity_np(prod_attr, sizeof one, &one) != 0)
        return 0;
    CPU_ZERO(&one);
    CPU_SET(cpus[1], &one);
    if (pthread_attr_setaffinity_np(cons_attr, sizeof one, &one) != 0) {
        pthread_attr_setaffinity_np(prod_attr, sizeof allowed, &allowed);
        return 0;
    }
    return 2;
}

static int run_prodcon(int argc, char **argv)
{
    g_pc_ops = argc > 0 ? parse_count(argv[0], "op count") : 10000000;
    pthread_attr_t prod_attr, cons_attr;
    pthread_attr_init(&prod_attr);
    pthread_attr_init(&cons_attr);
    int pinned = pin_threads(&prod_attr, &cons_attr);
    pthread_t tp, tc;
    if (pthread_create(&tc, &cons_attr, consumer, NULL) != 0)
        die("pthread_create failed");
    if (pthread_create(&tp, &prod_attr, producer, NULL) != 0)
        die("pthread_create failed");
    pthread_attr_destroy(&prod_attr);
    pthread_attr_destroy(&cons_attr);
    /* Thread creation is not timed: both threads wait for g_pc_go. */
    double t0 = bc_now();
    atomic_store_explicit(&g_pc_go, 1, memory_order_release);
    pthread_join(tp, NULL);
    pthread_join(tc, NULL);
    double t1 = bc_now();
    print_throughput("prodcon", 2, pinned ? " pinned=2cpus" : " pinned=no",
                     g_pc_ops, t1 - t0, g_pc_sum);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* mem: RSS cost of 100 MB of live small objects                            */
/* ------------------------------------------------------------------------ */

#define MEM_LIVE_BYTES 100000000ull /* 100 MB (decimal) of requested size */

static int run_mem(int argc, char **argv)
{
    if (argc < 1)
        die("usage: micro mem SIZE");
    long rss_start = bc_rss_kb();
    size_t size = parse_size(argv[0]);
    if (size == 0)
        die("size must be > 0");
    size_t count = (size_t)((MEM_LIVE_BYTES + size - 1) / size);

    /* The pointer array comes from mmap, not malloc, and is faulted in
     * before the baseline is read, so it is not charged to the allocator. */
    size_t array_bytes = count * sizeof(void *);
    void **ptrs = mmap(NULL, array_bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ptrs == MAP_FAILED)
        die("mmap of pointer array failed");
    memset(ptrs, 0, array_bytes);
    long rss_base = bc_rss_kb();
    if (rss_start < 0 || rss_base < 0)
        die("cannot read VmRSS from /proc/self/status");

    double t0 = bc_now();
    for (size_t i = 0; i < count; i++) {
        unsigned char *p = malloc(size);
        if (p == NULL)
            die("malloc failed");
        memset(p, (int)(i & 0xff) | 1, size); /* touch every byte */
        ptrs[i] = p;
    }
    double t1 = bc_now();
    long rss_live = bc_rss_kb();

    uint64_t sum = 0;
    for (size_t i = 0; i < count; i++) {
        unsigned char *p = ptrs[i];
        sum += p[0] + p[size - 1];
        free(p);
    }
    long rss_freed = bc_rss_kb();
    munmap(ptrs, array_bytes);

    long cost_kb = rss_live - rss_base;
    double live_mb = (double)count * (double)size / 1e6;
    double rss_mb = (double)cost_kb * 1024.0 / 1e6;
    printf("RESULT workload=mem threads=1 size=%zu objects=%zu live_mb=%.1f "
           "rss_mb=%.1f overhead_pct=%.1f rss_kb=%ld base_rss_kb=%ld "
           "start_rss_kb=%ld after_free_rss_kb=%ld alloc_seconds=%.3f "
           "checksum=%016" PRIx64 " malloc_from=%s units=MB_10^6\n",
           size, count, live_mb, rss_mb, (rss_mb / live_mb - 1.0) * 100.0,
           cost_kb, rss_base, rss_start, rss_freed - rss_base, t1 - t0, sum,
           bc_malloc_from());
    return 0;
}

/* ------------------------------------------------------------------------ */

static void usage(void)
{
    fputs("usage: micro WORKLOAD [args]\n"
          "  small   [OPS|SECONDSs]  window of 1000 live blocks, random 16..1024 B\n"
          "                          (default 20M ops; e.g. 'small 2s' runs ~2 s)\n"
          "  fixed   [SIZE] [OPS]    malloc(SIZE)/free in a tight loop (64, 50M)\n"
          "  batch   [SIZE] [OPS]    malloc 100 x SIZE, then free them (64, 50M)\n"
          "  aligned [SIZE] [OPS] [ALIGN]  fixed, via posix_memalign (64, 50M, 64)\n"
          "  prodcon [OPS]           2 threads: one mallocs 16..256 B, the other\n"
          "                          frees (default 10M blocks); the threads are\n"
          "                          pinned to 2 CPUs unless MICRO_PIN=0\n"
          "  mem     SIZE            RSS (10^6 B) to hold 100 MB of SIZE-byte objects\n"
          "                          (any SIZE >= 1, e.g. 8 16 24 32 48 64 128 256)\n"
          "counts take k/M/G suffixes (x1000). The last line is 'RESULT key=value...'.\n",
          stderr);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage();
        return 2;
    }
    const char *w = argv[1];
    int n = argc - 2;
    char **a = argv + 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(w, "small") == 0)
        return run_small(n, a);
    if (strcmp(w, "fixed") == 0)
        return run_fixed(n, a, 0);
    if (strcmp(w, "batch") == 0)
        return run_fixed(n, a, 1);
    if (strcmp(w, "aligned") == 0)
        return run_fixed(n, a, 2);
    if (strcmp(w, "prodcon") == 0)
        return run_prodcon(n, a);
    if (strcmp(w, "mem") == 0)
        return run_mem(n, a);
    if (strcmp(w, "-h") == 0 || strcmp(w, "--help") == 0) {
        usage();
        return 0;
    }
    fprintf(stderr, "micro: unknown workload '%s'\n", w);
    usage();
    return 2;
}
