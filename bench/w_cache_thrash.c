/* w_cache_thrash: active false sharing between threads' small objects.
 *
 * Each thread, again and again, mallocs one small object, writes into it
 * WRITES times (read-modify-write of each byte in turn), reads it and frees
 * it.  The allocator is called rarely; the writes dominate.  If the
 * allocator hands two threads objects that lie in the same cache line
 * (because they carve one shared page, or one central free list, into
 * neighbouring objects for different threads), every write bounces that
 * line between the CPUs and the run becomes many times slower.  An
 * allocator that keeps each thread's objects apart costs little more than
 * the writes themselves.
 *
 *   w_cache_thrash [THREADS=2] [OBJECTS=400k per thread | SECONDSs] [SIZE=8]
 *
 * One unit = one object: malloc(SIZE), WRITES byte writes, free.
 * Compare with THREADS=1 for the cost without any sharing.
 */
#include "bench_common.h"

#define WRITES 1000

static bc_args g_args;

static void worker(int index, void *ctx)
{
    (void)ctx;
    bc_tally *t = &bc_tallies[index].v;
    t->sum = bc_own_objects(&g_args, index, (size_t)g_args.size, WRITES, &t->units);
}

int main(int argc, char **argv)
{
    bc_parse(&g_args, argc, argv, "cache_thrash", 2, 400000, 8, 1, 4096,
             "  THREADS  threads, each allocating and writing its own objects (2)\n"
             "  UNITS    objects per thread; each gets 1000 byte writes (400k)\n"
             "  SIZE     object size in bytes (8)\n");
    double secs = bc_run_threads(&g_args, worker, NULL);
    uint64_t sum, ops = bc_tally_total(&g_args, &sum);
    bc_report(&g_args, ops, ops, secs, sum,
              " size=%" PRIu64 " writes_per_object=%d", g_args.size, WRITES);
    return 0;
}
