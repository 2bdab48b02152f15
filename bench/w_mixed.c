/* w_mixed: churn of many small objects of mixed sizes around a slowly
 * changing long-lived structure, the allocation profile of symbolic
 * computation (arbitrary-precision arithmetic in the manner of a
 * continued-fraction factoriser) and of two-level logic minimisation
 * (covers of cubes, i.e. lists of small bit vectors).
 *
 * Each thread keeps a table of TERMS long-lived "numbers", each a block of
 * 1..SIZE 64-bit limbs.  One step:
 *   - multiplies two random numbers into a temporary of len(a)+len(b)
 *     limbs (capped at SIZE);
 *   - builds and drops a short list of 1-4 small cells (16-48 B), the
 *     quotients/remainders/cons cells such code creates by the million;
 *   - reduces the product into a new number of a random shorter length,
 *     frees the temporary, and half the time lets the new number replace
 *     one in the table (freeing the old one), otherwise drops it.
 * Every 16th step also runs a "cover" pass: allocate a pointer array and
 * 8..64 cubes (bit vectors of 2..9 words), intersect neighbours into new
 * cubes collected in an array grown with realloc, keep a few of them in a
 * long-lived ring of 256 cubes (evicting old ones) and free the rest, the
 * cubes in a shuffled order.
 *
 * So most blocks are 16-300 B and die young, some live long, frees come in
 * LIFO, FIFO and random orders, and a few sizes recur much more than others.
 *
 *   w_mixed [THREADS=1] [STEPS=2M per thread | SECONDSs] [SIZE=32]
 *
 * One unit = one step (about 9 allocations on average); SIZE is the largest
 * number in limbs (block of 8 + 8*SIZE bytes).
 */
#include "bench_common.h"

#define TERMS 4096
#define RING 256
#define PASS_EVERY 16
#define MAX_CUBES 64

struct term {
    uint32_t len;
    uint32_t tag;
    uint64_t limb[];
};

struct cell {
    struct cell *next;
    uint64_t v;
    /* followed by 0..32 bytes of payload */
};

struct cube {
    uint32_t words;
    uint32_t id;
    uint64_t bits[];
};

struct state {
    bc_rng rng;
    uint64_t ops;
    uint64_t steps;
    uint64_t sum;
    struct term *term[TERMS];
    struct cube *ring[RING];
    uint32_t ring_next;
};

static bc_args g_args;
static struct state *g_state[BC_MAX_THREADS];

static inline struct term *term_new(struct state *st, uint32_t len)
{
    struct term *t = bc_malloc(sizeof *t + len * sizeof(uint64_t));
    st->ops++;
    t->len = len;
    t->tag = (uint32_t)st->ops;
    return t;
}

static inline struct cube *cube_new(struct state *st, uint32_t words)
{
    struct cube *c = bc_malloc(sizeof *c + words * sizeof(uint64_t));
    st->ops++;
    c->words = words;
    c->id = (uint32_t)st->ops;
    return c;
}

static void build_terms(struct state *st)
{
    uint32_t max_len = (uint32_t)g_args.size;
    for (int i = 0; i < TERMS; i++) {
        uint32_t len = 1 + bc_below(&st->rng, max_len < 8 ? max_len : 8);
        struct term *t = term_new(st, len);
        for (uint32_t k = 0; k < len; k++)
            t->limb[k] = bc_next(&st->rng);
        st->term[i] = t;
    }
}

/* The logic-minimisation flavoured part. */
static void cover_pass(struct state *st)
{
    bc_rng *r = &st->rng;
    uint32_t n = 8 + bc_below(r, MAX_CUBES - 8 + 1);
    uint32_t words = 2 + bc_below(r, 8);
    struct cube **cover = bc_malloc(n * sizeof *cover);
    st->ops++;
    for (uint32_t i = 0; i < n; i++) {
        struct cube *c = cube_new(st, words);
        for (uint32_t w = 0; w < words; w++)
            c->bits[w] = bc_next(r) | bc_next(r); /* dense-ish */
        cover[i] = c;
    }

    /* Intersections of neighbours, collected in an array that grows by
     * realloc as cubes are found. */
    uint32_t cap = 4, found = 0;
    struct cube **inter = bc_malloc(cap * sizeof *inter);
    st->ops++;
    for (uint32_t i = 0; i + 1 < n; i++) {
        uint64_t any = 0;
        for (uint32_t w = 0; w < words; w++)
            any |= cover[i]->bits[w] & cover[i + 1]->bits[w];
        if (any == 0)
            continue;
        struct cube *c = cube_new(st, words);
        for (uint32_t w = 0; w < words; w++)
            c->bits[w] = cover[i]->bits[w] & cover[i + 1]->bits[w];
        if (found == cap) {
            cap *= 2;
            inter = bc_realloc(inter, cap * sizeof *inter);
            st->ops++;
        }
        inter[found++] = c;
    }

    /* Keep every 8th intersection in the long-lived ring. */
    uint64_t sum = 0;
    for (uint32_t i = 0; i < found; i++) {
        struct cube *c = inter[i];
        sum += c->bits[0] ^ c->bits[c->words - 1];
        if (i % 8 == 0) {
            struct cube **slot = &st->ring[st->ring_next++ % RING];
            if (*slot != NULL) {
                sum += (*slot)->id;
                free(*slot);
            }
            *slot = c;
        } else {
            free(c);
        }
    }
    free(inter);

    /* Free the cover in a shuffled order. */
    for (uint32_t i = n; i > 1; i--) {
        uint32_t j = bc_below(r, i);
        struct cube *t = cover[i - 1];
        cover[i - 1] = cover[j];
        cover[j] = t;
    }
    for (uint32_t i = 0; i < n; i++) {
        sum += cover[i]->bits[0];
        free(cover[i]);
    }
    free(cover);
    st->sum += sum;
}

/* The arithmetic flavoured part. */
static void step(struct state *st)
{
    bc_rng *r = &st->rng;
    const uint32_t max_len = (uint32_t)g_args.size;
    struct term *a = st->term[bc_below(r, TERMS)];
    struct term *b = st->term[bc_below(r, TERMS)];

    uint32_t plen = a->len + b->len;
    if (plen > max_len)
        plen = max_len;
    struct term *prod = term_new(st, plen);
    uint64_t carry = 0;
    for (uint32_t k = 0; k < plen; k++) {
        unsigned __int128 m = (unsigned __int128)a->limb[k % a->len] *
                              (b->limb[(k * 7) % b->len] | 1);
        m += carry;
        prod->limb[k] = (uint64_t)m;
        carry = (uint64_t)(m >> 64);
    }

    /* A short-lived list of small cells, dropped in LIFO order. */
    uint32_t ncells = 1 + bc_below(r, 4);
    struct cell *head = NULL;
    for (uint32_t c = 0; c < ncells; c++) {
        size_t size = sizeof(struct cell) + 8 * bc_below(r, 5);
        struct cell *cl = bc_malloc(size);
        st->ops++;
        cl->next = head;
        cl->v = prod->limb[c % plen] + c;
        head = cl;
    }
    uint64_t acc = carry;
    while (head != NULL) {
        struct cell *next = head->next;
        acc = acc * 3 + head->v;
        free(head);
        head = next;
    }

    /* Reduce into a fresh number of a random shorter length. */
    uint32_t rlen = 1 + (uint32_t)((prod->limb[0] ^ acc) % plen);
    struct term *res = term_new(st, rlen);
    for (uint32_t k = 0; k < rlen; k++)
        res->limb[k] = prod->limb[k] ^ prod->limb[(k + rlen) % plen] ^ acc;
    free(prod);

    st->sum += res->limb[0] + res->len;
    if (bc_next(r) & 1) {
        uint32_t i = bc_below(r, TERMS);
        st->sum += st->term[i]->limb[st->term[i]->len - 1];
        free(st->term[i]);
        st->term[i] = res;
    } else {
        free(res);
    }
}

static void worker(int index, void *ctx)
{
    (void)ctx;
    struct state *st = g_state[index];
    uint64_t i = 0;
    for (; bc_more(&g_args, i); i++) {
        step(st);
        if (i % PASS_EVERY == PASS_EVERY - 1)
            cover_pass(st);
    }
    st->steps = i;
}

int main(int argc, char **argv)
{
    bc_parse(&g_args, argc, argv, "mixed", 1, 2000000, 32, 2, 4096,
             "  THREADS  independent threads, each with its own data (1)\n"
             "  UNITS    steps per thread, ~9 allocations each (2M)\n"
             "  SIZE     largest number, in 64-bit limbs (32 = 264 B)\n");
    int n = g_args.threads;
    /* Set-up (not timed): each thread's long-lived table. */
    for (int i = 0; i < n; i++) {
        struct state *st = bc_map(sizeof *st);
        bc_rng_seed(&st->rng, UINT64_C(0xCF4AC), (uint64_t)i);
        build_terms(st);
        st->ops = 0;
        g_state[i] = st;
    }
    double secs = bc_run_threads(&g_args, worker, NULL);

    uint64_t ops = 0, steps = 0, sum = 0;
    for (int i = 0; i < n; i++) {
        struct state *st = g_state[i];
        uint64_t part = st->sum;
        for (int t = 0; t < TERMS; t++) {
            part += st->term[t]->limb[0] + st->term[t]->tag;
            free(st->term[t]);
        }
        for (int c = 0; c < RING; c++) {
            if (st->ring[c] != NULL) {
                part += st->ring[c]->bits[0];
                free(st->ring[c]);
            }
        }
        ops += st->ops;
        steps += st->steps;
        sum = bc_combine(sum, i, part);
        bc_unmap(st, sizeof *st);
    }
    bc_report(&g_args, ops, steps, secs, sum, " max_limbs=%" PRIu64,
              g_args.size);
    return 0;
}
