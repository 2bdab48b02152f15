/* w_large: large blocks, 64 KiB to 32 MiB.
 *
 * Each thread keeps a window of 8 live blocks and, one step at a time,
 * frees a random one and allocates a new block in its place with a size
 * drawn log-uniformly from 64 KiB..SIZE (so each power-of-two band is
 * equally likely: as many 64-128 KiB blocks as 16-32 MiB ones).  Only the
 * first and the last page of a block are written (and read back before it
 * is freed), as a program that allocates a big buffer and uses part of it
 * would: the cost measured is the allocator's own (mapping and unmapping,
 * or reusing and splitting/merging free space, page faults on memory it
 * hands out fresh), not the filling of the block.
 *
 *   w_large [THREADS=1] [STEPS=200k per thread | SECONDSs] [SIZE=32M]
 *
 * One unit = one step (one free + one malloc).  Address space in use
 * reaches up to THREADS x 8 x SIZE, resident memory stays small.
 */
#include "bench_common.h"

#define WINDOW 8
#define MIN_LARGE 65536

struct state {
    bc_rng rng;
    uint64_t steps;
    uint64_t ops;
    uint64_t sum;
    uint64_t bytes; /* total bytes requested */
    void *blk[WINDOW];
    size_t size[WINDOW];
};

static bc_args g_args;
static BC_PADDED(struct state) g_state[BC_MAX_THREADS];

static inline void touch(void *p, size_t size, uint64_t v)
{
    unsigned char *b = p;
    memcpy(b, &v, sizeof v);
    v = ~v;
    memcpy(b + size - sizeof v, &v, sizeof v);
}

static inline uint64_t check(const void *p, size_t size)
{
    const unsigned char *b = p;
    uint64_t first, last;
    memcpy(&first, b, sizeof first);
    memcpy(&last, b + size - sizeof last, sizeof last);
    return first + (last << 1);
}

static void worker(int index, void *ctx)
{
    (void)ctx;
    struct state *st = &g_state[index].v;
    bc_rng_seed(&st->rng, UINT64_C(0x1A26E), (uint64_t)index);
    uint64_t i = 0;
    for (; bc_more(&g_args, i); i++) {
        uint32_t s = bc_below(&st->rng, WINDOW);
        size_t size = bc_logrange(&st->rng, MIN_LARGE, (size_t)g_args.size);
        if (st->blk[s] != NULL) {
            st->sum += check(st->blk[s], st->size[s]);
            free(st->blk[s]);
        }
        void *p = malloc(size);
        if (p == NULL)
            bc_oom(size);
        touch(p, size, bc_mix(i ^ ((uint64_t)index << 40)));
        st->blk[s] = p;
        st->size[s] = size;
        st->bytes += size;
        st->ops++;
    }
    for (int s = 0; s < WINDOW; s++) {
        if (st->blk[s] != NULL) {
            st->sum += check(st->blk[s], st->size[s]);
            free(st->blk[s]);
            st->blk[s] = NULL;
        }
    }
    st->steps = i;
}

int main(int argc, char **argv)
{
    bc_parse(&g_args, argc, argv, "large", 1, 200000, 32 << 20, MIN_LARGE,
             UINT64_C(1) << 32,
             "  THREADS  threads, each with its own window of 8 blocks (1)\n"
             "  UNITS    steps per thread: free one block, malloc another\n"
             "           (200k)\n"
             "  SIZE     largest block; sizes are log-uniform 64K..SIZE (32M)\n");
    double secs = bc_run_threads(&g_args, worker, NULL);
    uint64_t ops = 0, steps = 0, bytes = 0, sum = 0;
    for (int i = 0; i < g_args.threads; i++) {
        struct state *st = &g_state[i].v;
        ops += st->ops;
        steps += st->steps;
        bytes += st->bytes;
        sum = bc_combine(sum, i, st->sum);
    }
    bc_report(&g_args, ops, steps, secs, sum,
              " max_size=%" PRIu64 " avg_kb=%.0f", g_args.size,
              ops ? (double)bytes / (double)ops / 1024.0 : 0.0);
    return 0;
}
