/* w_phases: long- and short-lived objects mixed, with the live set growing
 * and shrinking in phases (a compiler's or a server's request batches, a
 * cache filling and being evicted).
 *
 * Each thread alternates two kinds of phase:
 *   grow    until the long-lived set holds a random target of
 *           HIGH/2..HIGH objects, each step allocates one long-lived object
 *           (log-uniform 16..SIZE bytes; one in 64 is a 8-64 KiB buffer);
 *   shrink  until it is down to a random LOW..HIGH/4 objects, each step
 *           frees a random long-lived object.
 * In both, each step also replaces two blocks in a ring of 64 short-lived
 * objects (16-256 B) that die almost at once.  Frees of the long-lived set
 * come in random order, so every shrink leaves holes scattered over the
 * heap that the next grow phase should fill instead of asking the OS for
 * more memory.  Besides throughput, the result gives the peak RSS and the
 * RSS left once everything has been freed.
 *
 *   w_phases [THREADS=1] [STEPS=3M per thread | SECONDSs] [SIZE=2048]
 *
 * One unit = one step (one long-lived malloc or free plus two short-lived
 * malloc+free pairs).
 */
#include "bench_common.h"

#define HIGH 60000   /* most long-lived objects per thread */
#define LOW 1000
#define SHORT 64     /* ring of short-lived objects */

struct obj {
    uint64_t tag;
    uint32_t size;
    uint32_t pad;
};

struct state {
    bc_rng rng;
    uint64_t ops;
    uint64_t steps;
    uint64_t sum;
    uint64_t phases;
    uint32_t live;
    uint32_t target;
    int growing;
    struct obj *long_lived[HIGH];
    struct obj *short_lived[SHORT];
};

static bc_args g_args;
static struct state *g_state[BC_MAX_THREADS];

static inline struct obj *obj_new(struct state *st, size_t size)
{
    struct obj *o = bc_malloc(size);
    st->ops++;
    o->tag = st->ops ^ bc_mix(size);
    o->size = (uint32_t)size;
    ((unsigned char *)o)[size - 1] = (unsigned char)o->tag;
    return o;
}

static inline uint64_t obj_free(struct obj *o)
{
    uint64_t v = o->tag + ((unsigned char *)o)[o->size - 1];
    free(o);
    return v;
}

static void new_phase(struct state *st)
{
    st->phases++;
    st->growing = !st->growing;
    if (st->growing)
        st->target = (uint32_t)bc_range(&st->rng, HIGH / 2, HIGH);
    else
        st->target = (uint32_t)bc_range(&st->rng, LOW, HIGH / 4);
}

static void step(struct state *st)
{
    bc_rng *r = &st->rng;
    if (st->growing ? st->live >= st->target : st->live <= st->target)
        new_phase(st);
    if (st->growing) {
        size_t size;
        if (bc_below(r, 64) == 0)
            size = bc_range(r, 8192, 65536);
        else
            size = bc_logrange(r, sizeof(struct obj), (size_t)g_args.size);
        st->long_lived[st->live++] = obj_new(st, size);
    } else {
        uint32_t i = bc_below(r, st->live);
        st->sum += obj_free(st->long_lived[i]);
        st->long_lived[i] = st->long_lived[--st->live];
    }
    for (int k = 0; k < 2; k++) {
        uint32_t s = bc_below(r, SHORT);
        st->sum += obj_free(st->short_lived[s]);
        st->short_lived[s] = obj_new(st, bc_range(r, 16, 256));
    }
}

BC_STEP_WORKER(g_state, step)

int main(int argc, char **argv)
{
    bc_parse(&g_args, argc, argv, "phases", 1, 3000000, 2048,
             sizeof(struct obj), 1 << 20,
             "  THREADS  independent threads, each with its own phases (1)\n"
             "  UNITS    steps per thread (3M); a phase is 15k-60k steps\n"
             "  SIZE     largest ordinary long-lived object, bytes (2048)\n");
    int n = g_args.threads;
    for (int i = 0; i < n; i++) {
        struct state *st = bc_map(sizeof *st);
        bc_rng_seed(&st->rng, UINT64_C(0x9A5E5), (uint64_t)i);
        for (int s = 0; s < SHORT; s++)
            st->short_lived[s] = obj_new(st, 16 + 8 * (size_t)(s % 8));
        st->growing = 0;
        new_phase(st);
        st->ops = 0;
        g_state[i] = st;
    }
    double secs = bc_run_threads(&g_args, worker, NULL);
    long rss_end = bc_rss_kb();

    uint64_t ops = 0, steps = 0, phases = 0, sum = 0;
    for (int i = 0; i < n; i++) {
        struct state *st = g_state[i];
        uint64_t part = st->sum;
        for (uint32_t k = 0; k < st->live; k++)
            part += obj_free(st->long_lived[k]);
        for (int s = 0; s < SHORT; s++)
            part += obj_free(st->short_lived[s]);
        ops += st->ops;
        steps += st->steps;
        phases += st->phases;
        sum = bc_combine(sum, i, part);
        bc_unmap(st, sizeof *st);
    }
    long rss_freed = bc_rss_kb();
    bc_report(&g_args, ops, steps, secs, sum,
              " phases=%" PRIu64 " end_rss_kb=%ld after_free_rss_kb=%ld",
              phases, rss_end, rss_freed);
    return 0;
}
