/* w_rbtree: a balanced binary search tree (a red-black tree) under random
 * inserts and erases, every node malloc'd on its own, the way node-based
 * containers (std::map, set implementations of scripting languages, kernel
 * style intrusive trees with private nodes) use an allocator.
 *
 * Each step draws a random key from 0..KEYS-1 (KEYS = 2^16): if the key is
 * in the tree, its node is unlinked and freed; if not, a new node (32 bytes
 * of links, key and colour plus SIZE bytes of payload) is malloc'd, filled
 * and inserted.  The tree hovers around KEYS/2 = 32768 nodes, about 2 MiB: every
 * search walks ~16 levels of nodes whose placement in memory is the
 * allocator's doing, so an allocator that packs nodes densely and reuses
 * freed ones close to their neighbours also makes the tree walks faster.
 * Erasing a node with two children relinks its in-order successor into its
 * place (no copying of payloads), as real containers do.
 *
 *   w_rbtree [THREADS=1] [STEPS=4M per thread | SECONDSs] [SIZE=32]
 *
 * One unit = one insert (malloc) or erase (free); ops counts the inserts.
 * Each thread has its own tree.  After the run the tree is checked (order,
 * colours, black heights, parent links, node count, payloads) and freed.
 */
#include "bench_common.h"

#define KEY_BITS 16
#define KEYS (1u << KEY_BITS)

struct node {
    struct node *parent, *l, *r;
    uint32_t key;
    uint32_t red;
    unsigned char payload[]; /* SIZE bytes */
};

struct state {
    bc_rng rng;
    struct node *root;
    uint64_t steps;
    uint64_t ops;      /* inserts */
    uint64_t erases;
    uint64_t live;
    uint64_t sum;
    uint64_t present[KEYS / 64]; /* which keys are in the tree */
};

static bc_args g_args;
static struct state *g_state[BC_MAX_THREADS];

static inline int is_red(const struct node *n)
{
    return n != NULL && n->red;
}

/* Put v where u hangs (v may be NULL). */
static inline void replace_child(struct state *st, struct node *u,
                                 struct node *v)
{
    struct node *p = u->parent;
    if (p == NULL)
        st->root = v;
    else if (u == p->l)
        p->l = v;
    else
        p->r = v;
    if (v != NULL)
        v->parent = p;
}

static void rotate_left(struct state *st, struct node *x)
{
    struct node *y = x->r;
    x->r = y->l;
    if (y->l != NULL)
        y->l->parent = x;
    replace_child(st, x, y);
    y->l = x;
    x->parent = y;
}

static void rotate_right(struct state *st, struct node *x)
{
    struct node *y = x->l;
    x->l = y->r;
    if (y->r != NULL)
        y->r->parent = x;
    replace_child(st, x, y);
    y->r = x;
    x->parent = y;
}

/* The payload: a tag derived from the key in its first 8 bytes (or as much
 * of them as fits) and one byte at the end. */
static inline uint64_t payload_value(uint32_t key)
{
    return bc_mix(key);
}

static struct node *node_new(struct state *st, uint32_t key)
{
    size_t psize = (size_t)g_args.size;
    struct node *n = bc_malloc(sizeof *n + psize);
    st->ops++;
    n->parent = n->l = n->r = NULL;
    n->key = key;
    n->red = 1;
    uint64_t tag = payload_value(key);
    memcpy(n->payload, &tag, psize < 8 ? psize : 8);
    if (psize > 8)
        n->payload[psize - 1] = (unsigned char)key;
    return n;
}

static uint64_t node_digest(const struct node *n)
{
    size_t psize = (size_t)g_args.size;
    uint64_t tag = 0, want = payload_value(n->key);
    memcpy(&tag, n->payload, psize < 8 ? psize : 8);
    if (psize < 8)
        want &= (UINT64_C(1) << (8 * psize)) - 1;
    if (tag != want || (psize > 8 && n->payload[psize - 1] !=
                                         (unsigned char)n->key))
        bc_die("node %u has a corrupted payload", n->key);
    return tag ^ n->key;
}

static void insert(struct state *st, struct node *parent, struct node *z)
{
    z->parent = parent;
    if (parent == NULL)
        st->root = z;
    else if (z->key < parent->key)
        parent->l = z;
    else
        parent->r = z;
    struct node *p;
    while ((p = z->parent) != NULL && p->red) {
        struct node *g = p->parent; /* exists: the root is black */
        if (p == g->l) {
            struct node *u = g->r;
            if (is_red(u)) {
                p->red = u->red = 0;
                g->red = 1;
                z = g;
            } else {
                if (z == p->r) {
                    z = p;
                    rotate_left(st, z);
                    p = z->parent;
                }
                p->red = 0;
                g->red = 1;
                rotate_right(st, g);
            }
        } else {
            struct node *u = g->l;
            if (is_red(u)) {
                p->red = u->red = 0;
                g->red = 1;
                z = g;
            } else {
                if (z == p->l) {
                    z = p;
                    rotate_right(st, z);
                    p = z->parent;
                }
                p->red = 0;
                g->red = 1;
                rotate_left(st, g);
            }
        }
    }
    st->root->red = 0;
}

/* Restore the colours after a black node was removed above x (x may be
 * NULL, hence its parent xp is passed along). */
static void erase_fixup(struct state *st, struct node *x, struct node *xp)
{
    while (x != st->root && !is_red(x)) {
        if (x == xp->l) {
            struct node *w = xp->r;
            if (w->red) {
                w->red = 0;
                xp->red = 1;
                rotate_left(st, xp);
                w = xp->r;
            }
            if (!is_red(w->l) && !is_red(w->r)) {
                w->red = 1;
                x = xp;
                xp = x->parent;
            } else {
                if (!is_red(w->r)) {
                    w->l->red = 0;
                    w->red = 1;
                    rotate_right(st, w);
                    w = xp->r;
                }
                w->red = xp->red;
                xp->red = 0;
                w->r->red = 0;
                rotate_left(st, xp);
                x = st->root;
            }
        } else {
            struct node *w = xp->l;
            if (w->red) {
                w->red = 0;
                xp->red = 1;
                rotate_right(st, xp);
                w = xp->l;
            }
            if (!is_red(w->l) && !is_red(w->r)) {
                w->red = 1;
                x = xp;
                xp = x->parent;
            } else {
                if (!is_red(w->l)) {
                    w->r->red = 0;
                    w->red = 1;
                    rotate_left(st, w);
                    w = xp->l;
                }
                w->red = xp->red;
                xp->red = 0;
                w->l->red = 0;
                rotate_right(st, xp);
                x = st->root;
            }
        }
    }
    if (x != NULL)
        x->red = 0;
}

/* Unlink z; a node with two children is replaced by its successor node. */
static void erase(struct state *st, struct node *z)
{
    struct node *x, *xp;
    int removed_red;
    if (z->l == NULL) {
        x = z->r;
        xp = z->parent;
        removed_red = z->red;
        replace_child(st, z, x);
    } else if (z->r == NULL) {
        x = z->l;
        xp = z->parent;
        removed_red = z->red;
        replace_child(st, z, x);
    } else {
        struct node *y = z->r;
        while (y->l != NULL)
            y = y->l;
        removed_red = y->red;
        x = y->r;
        if (y->parent == z) {
            xp = y;
        } else {
            xp = y->parent;
            replace_child(st, y, x);
            y->r = z->r;
            y->r->parent = y;
        }
        replace_child(st, z, y);
        y->l = z->l;
        y->l->parent = y;
        y->red = z->red;
    }
    if (!removed_red)
        erase_fixup(st, x, xp);
}

static void step(struct state *st)
{
    uint32_t key = bc_below(&st->rng, KEYS);
    uint64_t bit = UINT64_C(1) << (key % 64);
    uint64_t *word = &st->present[key / 64];
    /* The bitmap only cross-checks the tree; the tree is always searched. */
    struct node *n = st->root, *parent = NULL;
    while (n != NULL && n->key != key) {
        parent = n;
        n = key < n->key ? n->l : n->r;
    }
    if (n != NULL) {
        if (!(*word & bit))
            bc_die("tree holds key %u that was erased", key);
        erase(st, n);
        st->sum += node_digest(n);
        free(n);
        *word &= ~bit;
        st->erases++;
        st->live--;
    } else {
        if (*word & bit)
            bc_die("tree lost key %u", key);
        insert(st, parent, node_new(st, key));
        *word |= bit;
        st->live++;
    }
}

BC_STEP_WORKER(g_state, step)

/* Check order, colours, parent links and payloads; returns the subtree's
 * black height. */
static int verify(struct state *st, const struct node *n,
                  const struct node *parent, int64_t lo, int64_t hi,
                  uint64_t *count, uint64_t *digest)
{
    if (n == NULL)
        return 1;
    if ((int64_t)n->key <= lo || (int64_t)n->key >= hi)
        bc_die("tree out of order at key %u", n->key);
    if (n->parent != parent)
        bc_die("bad parent link at key %u", n->key);
    if (!(st->present[n->key / 64] & (UINT64_C(1) << (n->key % 64))))
        bc_die("tree holds key %u that is not present", n->key);
    if (n->red && (is_red(n->l) || is_red(n->r)))
        bc_die("red node %u has a red child", n->key);
    int bl = verify(st, n->l, n, lo, n->key, count, digest);
    *count += 1;
    *digest = *digest * 31 + node_digest(n);
    int br = verify(st, n->r, n, n->key, hi, count, digest);
    if (bl != br)
        bc_die("black heights differ below key %u", n->key);
    return bl + !n->red;
}

static void free_tree(struct node *n)
{
    if (n == NULL)
        return;
    free_tree(n->l);
    free_tree(n->r);
    free(n);
}

int main(int argc, char **argv)
{
    bc_parse(&g_args, argc, argv, "rbtree", 1, 4000000, 32, 0, 1 << 20,
             "  THREADS  independent threads, one tree each (1)\n"
             "  UNITS    steps per thread: insert or erase a random key (4M)\n"
             "  SIZE     payload bytes per node, after 32 bytes of links (32)\n");
    int n = g_args.threads;
    for (int i = 0; i < n; i++) {
        struct state *st = bc_map(sizeof *st);
        bc_rng_seed(&st->rng, UINT64_C(0xA71), (uint64_t)i);
        g_state[i] = st;
    }
    double secs = bc_run_threads(&g_args, worker, NULL);

    uint64_t ops = 0, steps = 0, live = 0, sum = 0;
    for (int i = 0; i < n; i++) {
        struct state *st = g_state[i];
        uint64_t count = 0, digest = 0;
        if (is_red(st->root))
            bc_die("red root");
        verify(st, st->root, NULL, -1, (int64_t)KEYS, &count, &digest);
        if (count != st->live)
            bc_die("tree has %" PRIu64 " nodes, expected %" PRIu64, count,
                   st->live);
        free_tree(st->root);
        ops += st->ops;
        steps += st->steps;
        live += st->live;
        sum = bc_combine(sum, i, st->sum ^ digest ^ (count << 40));
        bc_unmap(st, sizeof *st);
    }
    bc_report(&g_args, ops, steps, secs, sum,
              " node_size=%zu final_nodes=%" PRIu64,
              sizeof(struct node) + (size_t)g_args.size, live);
    return 0;
}
