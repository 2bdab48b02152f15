/* w_cache_scratch: passive false sharing between threads' small objects.
 *
 * Before the clock starts, the main thread mallocs one small object per
 * thread, back to back, so that they are likely to sit in one cache line,
 * and hands object i to thread i.  Each thread writes into the object it
 * was given, frees it, and then, again and again, mallocs an object of the
 * same size, writes into it WRITES times and frees it.
 *
 * The first free is of a block that belongs to the main thread.  An
 * allocator that puts such a block into the freeing thread's own cache
 * hands it straight back to that thread's next malloc, so every thread
 * goes on writing to its own slice of the one cache line the main thread
 * carved up, and the line bounces between the CPUs for the whole run.  An
 * allocator that returns remote frees to their owner gives each thread
 * fresh memory of its own instead.
 *
 *   w_cache_scratch [THREADS=2] [OBJECTS=400k per thread | SECONDSs] [SIZE=8]
 *
 * One unit = one object: malloc(SIZE), WRITES byte writes, free.
 */
#include "bench_common.h"

#define WRITES 1000

static bc_args g_args;

/* Object i was allocated by the main thread for thread i. */
static unsigned char *g_given[BC_MAX_THREADS];

static void worker(int index, void *ctx)
{
    (void)ctx;
    const size_t size = (size_t)g_args.size;
    bc_tally *t = &bc_tallies[index].v;
    t->sum = bc_hammer(g_given[index], size, ~(uint64_t)index, WRITES);
    free(g_given[index]);
    t->sum += bc_own_objects(&g_args, index, size, WRITES, &t->units);
}

int main(int argc, char **argv)
{
    bc_parse(&g_args, argc, argv, "cache_scratch", 2, 400000, 8, 1, 4096,
             "  THREADS  threads; each first frees an object the main thread\n"
             "           allocated for it, then allocates and writes its own (2)\n"
             "  UNITS    objects per thread; each gets 1000 byte writes (400k)\n"
             "  SIZE     object size in bytes (8)\n");
    for (int i = 0; i < g_args.threads; i++)
        g_given[i] = bc_malloc((size_t)g_args.size);
    double secs = bc_run_threads(&g_args, worker, NULL);
    uint64_t sum, ops = bc_tally_total(&g_args, &sum);
    bc_report(&g_args, ops, ops, secs, sum,
              " size=%" PRIu64 " writes_per_object=%d", g_args.size, WRITES);
    return 0;
}
