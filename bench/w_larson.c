/* w_larson: a server simulation in the style of Larson and Krishnan's
 * allocator benchmark.
 *
 * T "lineages" run at once.  Each owns a working set of SLOTS blocks of
 * random sizes 8..SIZE bytes, filled by the main thread before the clock
 * starts.  The thread serving a lineage repeatedly picks a random slot,
 * frees the block there and puts a new block of a random size in its place
 * (writing its first and last bytes).  After GEN such replacements the
 * thread starts a successor thread, hands it the whole working set and
 * exits, the way a server hands a connection's state to a new worker.  So:
 *
 *   - most frees are of blocks that another thread allocated, usually a
 *     thread that has already exited (its heap, caches and pages must be
 *     reclaimed or adopted by somebody);
 *   - threads are created and destroyed all the time (hundreds per second),
 *     so per-thread set-up and tear-down of the allocator is measured too;
 *   - with more lineages than CPUs, threads are oversubscribed.
 *
 *   w_larson [THREADS=2] [REPLACEMENTS=16M per lineage | SECONDSs] [SIZE=1024]
 *
 * One unit = one replacement (one free + one malloc).  The sequence of
 * sizes and slots of each lineage comes from its own seeded generator and
 * does not depend on which thread runs it, so the checksum is the same
 * under every allocator.
 */
#include "bench_common.h"

#include <semaphore.h>

#define SLOTS 2000  /* blocks in each lineage's working set */
#define GEN 20000   /* replacements before the set moves to a new thread */
#define MIN_SIZE 8

static bc_args g_args;
static sem_t g_finished;

struct lineage {
    _Alignas(BC_CACHE_LINE) int index; /* lineages never share a line */
    uint64_t gens;   /* threads that have served this lineage */
    uint64_t done;   /* replacements so far */
    uint64_t sum;
    bc_rng rng;
    void *slot[SLOTS];
    size_t slot_size[SLOTS];
};

/* Each lineage is only ever touched by one thread at a time; the hand-off
 * (pthread_create) orders the accesses. */
static struct lineage *g_lin;

static inline uint64_t block_value(const struct lineage *L, uint64_t n)
{
    return ((uint64_t)L->index << 56) ^ n;
}

static inline void fill_block(void *p, size_t size, uint64_t v)
{
    unsigned char *b = p;
    memcpy(b, &v, sizeof v);
    b[size - 1] = (unsigned char)(v >> 8);
}

static inline uint64_t read_block(const void *p, size_t size)
{
    const unsigned char *b = p;
    uint64_t v;
    memcpy(&v, b, sizeof v);
    return v + b[size - 1];
}

static void *serve(void *arg);

static void spawn(struct lineage *L)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    bc_pin_attr(&g_args, &attr, L->index);
    pthread_t tid;
    int err = pthread_create(&tid, &attr, serve, L);
    pthread_attr_destroy(&attr);
    if (err != 0)
        bc_die("pthread_create failed (%s)", strerror(err));
}

static void *serve(void *arg)
{
    struct lineage *L = arg;
    if (L->gens == 0)
        pthread_barrier_wait(&bc_start_barrier);
    const size_t max_size = (size_t)g_args.size;
    uint64_t sum = L->sum, done = L->done;
    bc_rng rng = L->rng;
    for (int i = 0; i < GEN; i++) {
        if (g_args.seconds <= 0 && done >= g_args.units)
            break;
        uint32_t s = bc_below(&rng, SLOTS);
        size_t size = bc_range(&rng, MIN_SIZE, max_size);
        sum += read_block(L->slot[s], L->slot_size[s]);
        free(L->slot[s]);
        void *p = malloc(size);
        if (p == NULL)
            bc_oom(size);
        fill_block(p, size, block_value(L, done));
        L->slot[s] = p;
        L->slot_size[s] = size;
        done++;
    }
    L->sum = sum;
    L->done = done;
    L->rng = rng;
    L->gens++;
    int more = g_args.seconds > 0 ? bc_now() < bc_deadline
                                  : done < g_args.units;
    if (more)
        spawn(L); /* from here on L belongs to the successor */
    else
        sem_post(&g_finished);
    return NULL;
}

int main(int argc, char **argv)
{
    bc_parse(&g_args, argc, argv, "larson", 2, 16000000, 1024, MIN_SIZE,
             UINT64_C(1) << 24,
             "  THREADS  lineages running at once (2)\n"
             "  UNITS    slot replacements per lineage (16M); every 20000 the\n"
             "           working set moves to a newly created thread\n"
             "  SIZE     largest block, bytes; sizes are uniform 8..SIZE (1024)\n");
    int n = g_args.threads;
    g_lin = bc_map((size_t)n * sizeof *g_lin);
    for (int i = 0; i < n; i++) {
        struct lineage *L = &g_lin[i];
        L->index = i;
        bc_rng_seed(&L->rng, UINT64_C(0x1A250A), (uint64_t)i);
        for (int s = 0; s < SLOTS; s++) {
            size_t size = bc_range(&L->rng, MIN_SIZE, (size_t)g_args.size);
            L->slot[s] = bc_malloc(size);
            L->slot_size[s] = size;
            fill_block(L->slot[s], size, block_value(L, ~(uint64_t)s));
        }
    }
    if (sem_init(&g_finished, 0, 0) != 0)
        bc_die("sem_init failed");
    pthread_barrier_init(&bc_start_barrier, NULL, (unsigned)n + 1);
    for (int i = 0; i < n; i++)
        spawn(&g_lin[i]);
    double t0 = bc_now();
    bc_deadline = t0 + g_args.seconds;
    pthread_barrier_wait(&bc_start_barrier);
    for (int i = 0; i < n; i++)
        while (sem_wait(&g_finished) != 0)
            ; /* EINTR */
    double secs = bc_now() - t0;

    uint64_t ops = 0, gens = 0, sum = 0;
    for (int i = 0; i < n; i++) {
        struct lineage *L = &g_lin[i];
        uint64_t part = L->sum;
        for (int s = 0; s < SLOTS; s++) {
            part += read_block(L->slot[s], L->slot_size[s]);
            free(L->slot[s]);
        }
        ops += L->done;
        gens += L->gens;
        sum = bc_combine(sum, i, part);
    }
    bc_report(&g_args, ops, ops, secs, sum,
              " slots=%d max_size=%" PRIu64 " thread_handoffs=%" PRIu64,
              SLOTS, g_args.size, gens - (uint64_t)n);
    return 0;
}
