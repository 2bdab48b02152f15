/* w_realloc: growth by realloc, the two ways programs do it.
 *
 * String builders: each thread keeps 4 strings under construction and, one
 * step at a time, appends a chunk of 1..64 random bytes to one of them,
 * growing its buffer with realloc to exactly the new length (the naive
 * append that leaves all the work to the allocator: extend in place when it
 * can, move otherwise).  A chunk is one byte value repeated (memset), so
 * that the allocator's work, not the filling, dominates.  A string is finished when it reaches its target
 * length, log-uniform 64..SIZE bytes; it is then checked and freed.
 * Because the four builders interleave, the block being grown is often not
 * the one allocated last.
 *
 * Vectors: in the same step the thread pushes one 8-byte element onto a
 * vector whose capacity doubles by realloc when full, starting from 4
 * elements; at its target length (log-uniform 16..SIZE/2 elements) the
 * vector is shrunk to fit with a last realloc, checked and freed.
 *
 * The contents are verified when a string or vector is finished: a realloc
 * that lost data makes the program stop with an error (exit status 4).
 *
 *   w_realloc [THREADS=1] [STEPS=8M per thread | SECONDSs] [SIZE=64K]
 *
 * One unit = one append (one realloc) plus one push (a realloc now and
 * then).  ops counts every malloc and realloc call.
 */
#include "bench_common.h"

#define BUILDERS 4
#define MAX_CHUNK 64

struct builder {
    char *buf;
    size_t len;
    size_t target;
    uint64_t bytesum; /* sum of the bytes appended */
    uint64_t mix;     /* digest of the chunks' byte values */
};

struct vec {
    uint64_t *v;
    size_t n, cap, target;
    uint64_t sum;  /* of the pushed values */
};

struct state {
    bc_rng rng;
    uint64_t ops;
    uint64_t steps;
    uint64_t sum;
    uint64_t strings, vectors;
    struct builder b[BUILDERS];
    struct vec vec;
};

static bc_args g_args;
static struct state *g_state[BC_MAX_THREADS];

_Noreturn static void corrupted(const char *what, size_t len)
{
    fprintf(stderr, "%s: %s of length %zu has the wrong contents after "
            "realloc\n", bc_prog, what, len);
    exit(4);
}

static void builder_start(struct state *st, struct builder *b)
{
    b->target = bc_logrange(&st->rng, 64, (size_t)g_args.size);
    b->len = 0;
    b->bytesum = 0;
    b->mix = 0;
    b->buf = bc_malloc(1);
    b->buf[0] = '\0';
    st->ops++;
}

static void builder_finish(struct state *st, struct builder *b)
{
    uint64_t s = 0;
    const unsigned char *p = (const unsigned char *)b->buf;
    for (size_t i = 0; i < b->len; i++)
        s += p[i];
    if (s != b->bytesum || p[b->len] != 0)
        corrupted("string", b->len);
    st->sum += b->mix + b->len;
    st->strings++;
    free(b->buf);
}

static void append(struct state *st, struct builder *b)
{
    uint64_t x = bc_next(&st->rng);
    size_t chunk = 1 + (size_t)(x % MAX_CHUNK);
    unsigned char c = (unsigned char)(1 + (x >> 32) % 255); /* never 0 */
    b->buf = bc_realloc(b->buf, b->len + chunk + 1);
    st->ops++;
    memset(b->buf + b->len, c, chunk);
    b->len += chunk;
    b->buf[b->len] = '\0';
    b->bytesum += (uint64_t)c * chunk;
    b->mix = b->mix * 31 + c;
}

static void vec_start(struct state *st)
{
    struct vec *v = &st->vec;
    v->target = bc_logrange(&st->rng, 16, (size_t)g_args.size / 2);
    v->n = 0;
    v->cap = 4;
    v->sum = 0;
    v->v = bc_malloc(v->cap * sizeof *v->v);
    st->ops++;
}

static void vec_push(struct state *st)
{
    struct vec *v = &st->vec;
    if (v->n == v->cap) {
        v->cap *= 2;
        v->v = bc_realloc(v->v, v->cap * sizeof *v->v);
        st->ops++;
    }
    uint64_t x = bc_mix(v->n ^ st->steps);
    v->v[v->n++] = x;
    v->sum += x;
    if (v->n == v->target) {
        v->v = bc_realloc(v->v, v->n * sizeof *v->v); /* shrink to fit */
        st->ops++;
        uint64_t s = 0;
        for (size_t i = 0; i < v->n; i++)
            s += v->v[i];
        if (s != v->sum)
            corrupted("vector", v->n);
        st->sum += s ^ v->n;
        st->vectors++;
        free(v->v);
        vec_start(st);
    }
}

static void worker(int index, void *ctx)
{
    (void)ctx;
    struct state *st = g_state[index];
    uint64_t i = 0;
    for (; bc_more(&g_args, i); i++) {
        st->steps = i;
        struct builder *b = &st->b[bc_below(&st->rng, BUILDERS)];
        append(st, b);
        if (b->len >= b->target) {
            builder_finish(st, b);
            builder_start(st, b);
        }
        vec_push(st);
    }
    st->steps = i;
}

int main(int argc, char **argv)
{
    bc_parse(&g_args, argc, argv, "realloc", 1, 8000000, 65536, 256,
             UINT64_C(1) << 30,
             "  THREADS  independent threads (1)\n"
             "  UNITS    steps per thread: one string append + one vector\n"
             "           push (8M)\n"
             "  SIZE     longest string in bytes; vectors reach SIZE/2\n"
             "           elements (64K)\n");
    int n = g_args.threads;
    for (int i = 0; i < n; i++) {
        struct state *st = bc_map(sizeof *st);
        bc_rng_seed(&st->rng, UINT64_C(0x5EA110C), (uint64_t)i);
        for (int k = 0; k < BUILDERS; k++)
            builder_start(st, &st->b[k]);
        vec_start(st);
        st->ops = 0;
        g_state[i] = st;
    }
    double secs = bc_run_threads(&g_args, worker, NULL);

    uint64_t ops = 0, steps = 0, strings = 0, vectors = 0, sum = 0;
    for (int i = 0; i < n; i++) {
        struct state *st = g_state[i];
        for (int k = 0; k < BUILDERS; k++)
            builder_finish(st, &st->b[k]);
        free(st->vec.v);
        ops += st->ops;
        steps += st->steps;
        strings += st->strings;
        vectors += st->vectors;
        sum = bc_combine(sum, i, st->sum);
        bc_unmap(st, sizeof *st);
    }
    bc_report(&g_args, ops, steps, secs, sum,
              " strings=%" PRIu64 " vectors=%" PRIu64 " max_size=%" PRIu64,
              strings, vectors, g_args.size);
    return 0;
}
