/* w_fixed_mt: a tight fixed-size malloc/free loop in T threads at once.
 *
 * Every thread repeats malloc(SIZE), write its first word, read it back,
 * free.  Nothing is shared between the threads, so an allocator with
 * thread-local caches should scale linearly with the number of CPUs; one
 * that takes a shared lock (or bounces a shared cache line) on every call
 * does not.  micro's "fixed" row is the single-threaded baseline.
 *
 *   w_fixed_mt [THREADS=2] [PAIRS=25M per thread | SECONDSs] [SIZE=64]
 *
 * One unit = one malloc+free pair.
 */
#include "bench_common.h"

static bc_args g_args;

static void worker(int index, void *ctx)
{
    (void)ctx;
    const size_t size = (size_t)g_args.size;
    uint64_t sum = 0, i = 0;
    uint64_t tag = (uint64_t)index << 48;
    while (bc_more(&g_args, i)) {
        /* 8 pairs per check of the loop condition */
        for (int k = 0; k < 8; k++, i++) {
            unsigned char *p = malloc(size);
            if (p == NULL)
                bc_oom(size);
            uint64_t v = tag + i;
            if (size >= sizeof v)
                memcpy(p, &v, sizeof v);
            else
                p[0] = (unsigned char)v;
            bc_sink = p;
            if (size >= sizeof v) {
                uint64_t w;
                memcpy(&w, p, sizeof w);
                sum += w;
            } else {
                sum += p[0];
            }
            free(p);
        }
    }
    bc_tallies[index].v.units = i;
    bc_tallies[index].v.sum = sum;
}

int main(int argc, char **argv)
{
    bc_parse(&g_args, argc, argv, "fixed_mt", 2, 25000000, 64, 1,
             UINT64_C(1) << 30,
             "  THREADS  threads, each in its own malloc/free loop (2)\n"
             "  UNITS    malloc+free pairs per thread, rounded up to 8 (25M)\n"
             "  SIZE     block size in bytes (64)\n");
    double secs = bc_run_threads(&g_args, worker, NULL);
    uint64_t sum, ops = bc_tally_total(&g_args, &sum);
    bc_report(&g_args, ops, ops, secs, sum, " size=%" PRIu64, g_args.size);
    return 0;
}
