/* w_strings: string-heavy work in several threads at once, the way a
 * template engine, a log formatter or a scripting language's string type
 * uses the allocator.
 *
 * Each thread keeps a table of 512 string slots (C strings with their
 * lengths alongside) and repeats random operations on it:
 *   40 %  build:   a new string of log-uniform length 1..SIZE, written
 *                  into a random slot (the old string there is freed);
 *   30 %  concat:  two random strings joined into a new one (when the
 *                  result would be longer than 4 x SIZE, a slice of it is
 *                  taken instead), stored in a random slot;
 *   10 %  slice:   a random substring of a string copied into a new one;
 *   20 %  drop:    a random slot is freed and emptied.
 * Sizes are therefore spread from a few bytes to several KiB, with many
 * more small strings than long ones, and every string is written in full
 * and read in full (by memcpy) at least once.  The threads do not share
 * strings; what is measured is how the allocator copes with several
 * threads doing this at the same time.
 *
 *   w_strings [THREADS=2] [OPERATIONS=8M per thread | SECONDSs] [SIZE=256]
 *
 * One unit = one operation; ops counts the strings allocated.
 */
#include "bench_common.h"

#define SLOTS 512

struct state {
    bc_rng rng;
    uint64_t ops;
    uint64_t steps;
    uint64_t sum;
    uint64_t bytes;
    char *s[SLOTS];
    size_t len[SLOTS];
};

static bc_args g_args;
static struct state *g_state[BC_MAX_THREADS];

static inline char *str_alloc(struct state *st, size_t len)
{
    char *p = bc_malloc(len + 1);
    st->ops++;
    st->bytes += len + 1;
    p[len] = '\0';
    return p;
}

static inline void put(struct state *st, uint32_t slot, char *p, size_t len)
{
    if (st->s[slot] != NULL) {
        size_t l = st->len[slot];
        st->sum += l + (unsigned char)st->s[slot][0] +
                   (unsigned char)st->s[slot][l - 1];
        free(st->s[slot]);
    }
    st->s[slot] = p;
    st->len[slot] = len;
}

/* Index of a random non-empty slot, or -1 after a few misses. */
static inline int pick(struct state *st)
{
    for (int tries = 0; tries < 4; tries++) {
        uint32_t i = bc_below(&st->rng, SLOTS);
        if (st->s[i] != NULL)
            return (int)i;
    }
    return -1;
}

static void build(struct state *st)
{
    uint64_t x = bc_next(&st->rng);
    size_t len = bc_logrange(&st->rng, 1, (size_t)g_args.size);
    char *p = str_alloc(st, len);
    memset(p, 'a' + (int)(x % 26), len);
    p[0] = (char)('A' + (x >> 8) % 26);
    put(st, bc_below(&st->rng, SLOTS), p, len);
}

static void slice_into(struct state *st, const char *src, size_t srclen,
                       size_t max)
{
    size_t len = 1 + bc_below(&st->rng, (uint32_t)(srclen < max ? srclen
                                                                 : max));
    size_t off = bc_below(&st->rng, (uint32_t)(srclen - len + 1));
    char *p = str_alloc(st, len);
    memcpy(p, src + off, len);
    put(st, bc_below(&st->rng, SLOTS), p, len);
}

static void concat(struct state *st)
{
    int a = pick(st), b = pick(st);
    if (a < 0 || b < 0) {
        build(st);
        return;
    }
    size_t la = st->len[a], lb = st->len[b], len = la + lb;
    size_t max = 4 * (size_t)g_args.size;
    if (len > max) {
        slice_into(st, st->s[a], la, max);
        return;
    }
    char *p = str_alloc(st, len);
    memcpy(p, st->s[a], la);
    memcpy(p + la, st->s[b], lb);
    put(st, bc_below(&st->rng, SLOTS), p, len);
}

static void step(struct state *st)
{
    uint32_t op = bc_below(&st->rng, 10);
    if (op < 4) {
        build(st);
    } else if (op < 7) {
        concat(st);
    } else if (op < 8) {
        int a = pick(st);
        if (a < 0)
            build(st);
        else
            slice_into(st, st->s[a], st->len[a], st->len[a]);
    } else {
        uint32_t i = bc_below(&st->rng, SLOTS);
        if (st->s[i] != NULL) {
            put(st, i, NULL, 0);
        }
    }
}

BC_STEP_WORKER(g_state, step)

int main(int argc, char **argv)
{
    bc_parse(&g_args, argc, argv, "strings", 2, 8000000, 256, 2, 1 << 24,
             "  THREADS  threads, each with its own table of strings (2)\n"
             "  UNITS    operations per thread: build, concat, slice or drop\n"
             "           (8M)\n"
             "  SIZE     longest string built directly; concatenations reach\n"
             "           4 x SIZE (256)\n");
    int n = g_args.threads;
    for (int i = 0; i < n; i++) {
        struct state *st = bc_map(sizeof *st);
        bc_rng_seed(&st->rng, UINT64_C(0x57216), (uint64_t)i);
        g_state[i] = st;
    }
    double secs = bc_run_threads(&g_args, worker, NULL);

    uint64_t ops = 0, steps = 0, bytes = 0, sum = 0;
    for (int i = 0; i < n; i++) {
        struct state *st = g_state[i];
        for (uint32_t k = 0; k < SLOTS; k++) {
            if (st->s[k] != NULL && strlen(st->s[k]) != st->len[k])
                bc_die("string in slot %u has the wrong length", k);
            put(st, k, NULL, 0);
        }
        ops += st->ops;
        steps += st->steps;
        bytes += st->bytes;
        sum = bc_combine(sum, i, st->sum);
        bc_unmap(st, sizeof *st);
    }
    bc_report(&g_args, ops, steps, secs, sum,
              " max_size=%" PRIu64 " avg_bytes=%.1f", g_args.size,
              ops ? (double)bytes / (double)ops : 0.0);
    return 0;
}
