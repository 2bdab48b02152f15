/* unit_fixed.c: white-box test of the fixed-heap allocator (src/fixed.c),
 * driven through its internal interface (src/fixed.h). Every heap lives in
 * a buffer with PROT_NONE pages right before and after it, so a single byte
 * touched outside [mem, mem + size) kills the test. It checks:
 *   - init on starts and ends at every offset modulo 16 (the range touching
 *     a guard page on either side): the heap works and passes
 *     bmm__fixed_check; too small a range or NULL gives EINVAL;
 *   - filling with random sizes until the first NULL: every block lies in
 *     the range, is 16-aligned, overlaps no other, has the usable size it
 *     asked for and keeps its fill pattern; then random frees, refilling,
 *     random reallocs (growing and shrinking: contents kept, alignment
 *     kept; a failed realloc leaves the block intact), aligned blocks
 *     (32 B..64 KiB, and 1 and 2 MiB in a 5 MiB heap) whose
 *     bmm__fixed_align is what was asked for, and a realloc raising it;
 *     bmm__fixed_check and the usage totals after every phase;
 *   - a smaller run with bmm__fixed_check after every operation;
 *   - fill ratio: 48-byte blocks give at least 70% of the capacity in live
 *     bytes (random sizes are only reported);
 *   - coalescing: once everything is freed, one block of the whole
 *     capacity fits, and one byte more does not;
 *   - misuse: double frees, interior pointers (into zeroed, random and
 *     freed-pattern data), pointers outside the range and stale pointers
 *     into merged blocks are refused by free, usable and align, and change
 *     nothing; sizes and alignments near SIZE_MAX fail cleanly;
 *   - visit: exactly the live blocks with their usable sizes, in address
 *     order; stopping early; a callback that frees the block it visits;
 *   - find: the heap for any byte of its range (the inner one for a heap
 *     nested in a block of another), NULL outside and after destroy; a full
 *     registry gives ENOMEM;
 *   - several threads allocating and freeing in one heap at once, while
 *     another looks its blocks up with bmm__fixed_find and the main thread
 *     creates and destroys other heaps.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "../src/internal.h" /* src/ is not on the test targets' include path */

#include "../src/fixed.h"
#include "check.h"

/* ---- Guarded buffers --------------------------------------------------- */

typedef struct guarded_s {
  char *base; /* the mapping, guard pages included */
  size_t len;
  char *mem; /* the range handed to the heap */
  size_t size;
} guarded_t;

static size_t page_size;

/* [guard | body | guard] with mem = body + front and mem + size = body end
 * - back: front == 0 or back == 0 put the range right against a guard. */
static guarded_t guarded_new(size_t body, size_t front, size_t back) {
  guarded_t g = {NULL, 0, NULL, 0};
  body = (body + page_size - 1) / page_size * page_size;
  g.len = body + 2 * page_size;
  void *m = mmap(NULL, g.len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (!CHECK(m != MAP_FAILED)) return g;
  g.base = m;
  CHECK(mprotect(g.base, page_size, PROT_NONE) == 0);
  CHECK(mprotect(g.base + page_size + body, page_size, PROT_NONE) == 0);
  g.mem = g.base + page_size + front;
  g.size = body - front - back;
  return g;
}

static void guarded_free(guarded_t *g) {
  if (g->base != NULL) munmap(g->base, g->len);
  g->base = NULL;
}

/* ---- Tracked blocks ---------------------------------------------------- */

#define MAX_BLOCKS 40000

typedef struct rec_s {
  unsigned char *p;
  size_t size;  /* bytes asked for (and filled) */
  size_t align; /* alignment asked for */
  uint8_t seed; /* fill pattern */
} rec_t;

static rec_t recs[MAX_BLOCKS];
static size_t nrecs;
static uint64_t rng = 0x243f6a8885a308d3u;

static bmm_fixed_t *heap;
static char *range_lo, *range_hi;

static uint8_t pattern(uint8_t seed, size_t j) {
  return (uint8_t)(seed + j * 7 + (j >> 8));
}

static void fill(rec_t *r) {
  for (size_t j = 0; j < r->size; j++)
    r->p[j] = pattern(r->seed, j);
}

/* Index of the first byte among the first n that lost its pattern, or n. */
static size_t intact_upto(const rec_t *r, size_t n) {
  for (size_t j = 0; j < n; j++)
    if (r->p[j] != pattern(r->seed, j)) return j;
  return n;
}

/* Mostly small sizes, as programs ask for them, with a tail of large ones. */
static size_t random_size(void) {
  uint64_t r = check_rand(&rng);
  switch (r % 16) {
  case 0:
    return 0;
  case 1:
  case 2:
  case 3:
  case 4:
  case 5:
  case 6:
    return (r >> 8) % 64;
  case 7:
  case 8:
  case 9:
  case 10:
    return (r >> 8) % 512;
  case 11:
  case 12:
  case 13:
    return (r >> 8) % 4096;
  case 14:
    return (r >> 8) % 20000;
  default:
    return (r >> 8) % 70000;
  }
}

/* Records a new block after checking where it lies; false when p is NULL. */
static bool track(void *p, size_t size, size_t align) {
  if (p == NULL) return false;
  unsigned char *q = p;
  size_t usable = bmm__fixed_usable(heap, p);
  CHECK((char *)q >= range_lo && (char *)q + usable <= range_hi);
  CHECK((uintptr_t)q % 16 == 0 && (uintptr_t)q % align == 0);
  CHECK(usable >= size);
  CHECK(bmm__fixed_align(heap, p) >= align);
  if (!CHECK(nrecs < MAX_BLOCKS)) return false;
  rec_t *r = &recs[nrecs++];
  *r = (rec_t){q, size, align, (uint8_t)check_rand(&rng)};
  fill(r);
  return true;
}

static void untrack(size_t i) {
  CHECK(bmm__fixed_free(heap, recs[i].p));
  recs[i] = recs[--nrecs];
}

static int rec_cmp(const void *a, const void *b) {
  const rec_t *x = a, *y = b;
  return x->p < y->p ? -1 : x->p > y->p;
}

/* Every tracked block: inside the range, no overlaps (with the 8-byte
 * header before each), pattern intact, totals equal to the heap's. */
static void verify_all(const char *phase) {
  size_t bad = 0, live = 0, cap = 0, heap_live = 0;
  qsort(recs, nrecs, sizeof recs[0], rec_cmp);
  for (size_t i = 0; i < nrecs; i++) {
    size_t usable = bmm__fixed_usable(heap, recs[i].p);
    live += usable;
    if (usable < recs[i].size || intact_upto(&recs[i], recs[i].size) != recs[i].size) bad++;
    if ((char *)recs[i].p < range_lo || (char *)recs[i].p + usable > range_hi) bad++;
    if (i + 1 < nrecs && recs[i].p + usable + 8 > recs[i + 1].p) bad++;
  }
  bmm__fixed_usage(heap, &cap, &heap_live);
  if (!CHECK_EQ_SZ(bad, 0) || !CHECK_EQ_SZ(live, heap_live) || !CHECK(bmm__fixed_check(heap)))
    check_print(2, "  in phase %s\n", phase);
}

static void free_all(void) {
  while (nrecs > 0)
    untrack(nrecs - 1);
}

static size_t fill_random(void) {
  size_t n = 0;
  while (nrecs < MAX_BLOCKS) {
    size_t size = random_size();
    if (!track(bmm__fixed_alloc(heap, size, 16), size, 16)) break;
    n++;
  }
  return n;
}

static void free_random(unsigned percent) {
  for (size_t i = 0; i < nrecs;) {
    if (check_rand(&rng) % 100 < percent)
      untrack(i);
    else
      i++;
  }
}

/* One random realloc of block i: contents up to the smaller size kept,
 * alignment kept; on NULL the block is untouched. */
static void realloc_one(size_t i) {
  rec_t *r = &recs[i];
  size_t size = random_size();
  void *q = bmm__fixed_realloc(heap, r->p, size, r->align);
  if (q == NULL) {
    CHECK(bmm__fixed_usable(heap, r->p) >= r->size);
    CHECK_EQ_SZ(intact_upto(r, r->size), r->size);
    return;
  }
  size_t keep = size < r->size ? size : r->size;
  CHECK_EQ_SZ(intact_upto(&(rec_t){q, 0, 0, r->seed}, keep), keep);
  CHECK((uintptr_t)q % r->align == 0);
  CHECK(bmm__fixed_align(heap, q) >= r->align);
  CHECK(bmm__fixed_usable(heap, q) >= size);
  r->p = q;
  r->size = size;
  fill(r);
}

static void alloc_aligned_some(size_t count) {
  for (size_t k = 0; k < count && nrecs < MAX_BLOCKS; k++) {
    size_t align = (size_t)32 << check_rand(&rng) % 12; /* 32 B .. 64 KiB */
    size_t size = random_size() % 3000;
    void *p = bmm__fixed_alloc(heap, size, align);
    if (p == NULL) continue;
    CHECK_EQ_SZ(bmm__fixed_align(heap, p), align);
    track(p, size, align);
  }
}

static void open_heap(guarded_t *g) {
  heap = bmm__fixed_init(g->mem, g->size);
  range_lo = g->mem;
  range_hi = g->mem + g->size;
  nrecs = 0;
}

/* ---- Phases ------------------------------------------------------------ */

static void check_random_phases(size_t body, size_t front, size_t back) {
  guarded_t g = guarded_new(body, front, back);
  open_heap(&g);
  if (!CHECK(heap != NULL)) return;
  CHECK(bmm__fixed_check(heap));
  size_t cap = 0, live = 1;
  bmm__fixed_usage(heap, &cap, &live);
  CHECK(cap > g.size - 4096 && cap < g.size);
  CHECK_EQ_SZ(live, 0);

  CHECK(fill_random() > 0);
  verify_all("fill");
  free_random(50);
  verify_all("free half");
  fill_random();
  verify_all("refill");
  for (size_t k = 0; k < 3000 && nrecs > 0; k++)
    realloc_one((size_t)(check_rand(&rng) % nrecs));
  verify_all("realloc");
  free_random(60);
  alloc_aligned_some(200);
  verify_all("aligned");
  for (size_t k = 0; k < 1000 && nrecs > 0; k++)
    realloc_one((size_t)(check_rand(&rng) % nrecs));
  verify_all("aligned realloc");

  /* Coalescing: with everything freed, the heap is one block again. */
  free_all();
  verify_all("free all");
  bmm__fixed_usage(heap, &cap, &live);
  CHECK_EQ_SZ(live, 0);
  CHECK(bmm__fixed_alloc(heap, cap + 1, 16) == NULL);
  void *p = bmm__fixed_alloc(heap, cap, 16);
  if (CHECK(p != NULL)) {
    CHECK_EQ_SZ(bmm__fixed_usable(heap, p), cap);
    memset(p, 0x5a, cap); /* the guard pages say it stays inside */
    CHECK(bmm__fixed_free(heap, p));
  }
  CHECK(bmm__fixed_check(heap));
  bmm__fixed_destroy(heap);
  guarded_free(&g);
}

/* Random operations with a full check after each one. */
static void check_every_op(void) {
  guarded_t g = guarded_new(64 * 1024, 3, 5);
  open_heap(&g);
  if (!CHECK(heap != NULL)) return;
  size_t bad_check = 0;
  for (int k = 0; k < 3000; k++) {
    uint64_t r = check_rand(&rng) % 10;
    if (r < 4 || nrecs == 0) {
      size_t size = random_size() % 3000;
      track(bmm__fixed_alloc(heap, size, 16), size, 16);
    } else if (r < 7) {
      untrack((size_t)(check_rand(&rng) % nrecs));
    } else if (r < 9) {
      realloc_one((size_t)(check_rand(&rng) % nrecs));
    } else {
      alloc_aligned_some(1);
    }
    bad_check += !bmm__fixed_check(heap);
  }
  CHECK_EQ_SZ(bad_check, 0);
  verify_all("every op");
  free_all();
  bmm__fixed_destroy(heap);
  guarded_free(&g);
}

/* Fill ratio: live bytes over capacity when the first allocation fails. */
static double fill_ratio(size_t fixed_size, size_t body) {
  guarded_t g = guarded_new(body, 0, 0);
  open_heap(&g);
  if (!CHECK(heap != NULL)) return 0;
  if (fixed_size != 0) {
    while (track(bmm__fixed_alloc(heap, fixed_size, 16), fixed_size, 16)) {
    }
  } else {
    /* churn first, then fill: a heap with holes, as a real program leaves */
    fill_random();
    free_random(50);
    fill_random();
  }
  size_t cap = 0, live = 0;
  bmm__fixed_usage(heap, &cap, &live);
  verify_all("fill ratio");
  free_all();
  bmm__fixed_destroy(heap);
  guarded_free(&g);
  return (double)live / (double)cap;
}

static void check_fill_ratio(void) {
  double r48 = fill_ratio(48, 1 << 20), r0 = fill_ratio(0, 1 << 20);
  double r200 = fill_ratio(200, 1 << 20);
  CHECK(r48 >= 0.70);
  CHECK(r200 >= 0.85);
  printf("fill ratio: 48 B blocks %.3f, 200 B blocks %.3f, random sizes after churn %.3f\n", r48,
         r200, r0);
}

/* Alignments of 1 and 2 MiB in a 5 MiB heap; realloc keeps them, and
 * raises a block's alignment when asked to. */
static void check_big_align(void) {
  guarded_t g = guarded_new(5 << 20, 1, 0);
  open_heap(&g);
  if (!CHECK(heap != NULL)) return;
  for (int k = 0; k < 20; k++)
    track(bmm__fixed_alloc(heap, 1000, 16), 1000, 16);
  const size_t aligns[] = {(size_t)1 << 20, (size_t)2 << 20, 4096};
  const size_t sizes[] = {100, (size_t)1 << 20, 0};
  for (size_t i = 0; i < 3; i++) {
    void *p = bmm__fixed_alloc(heap, sizes[i], aligns[i]);
    if (!CHECK(p != NULL)) continue;
    CHECK_EQ_SZ(bmm__fixed_align(heap, p), aligns[i]);
    track(p, sizes[i], aligns[i]);
  }
  verify_all("big alignments");
  for (size_t k = 0; k < 200 && nrecs > 0; k++)
    realloc_one((size_t)(check_rand(&rng) % nrecs));
  verify_all("big alignments realloc");
  /* a 16-aligned block asked to become 64 KiB-aligned */
  rec_t *r = &recs[0];
  for (size_t i = 0; i < nrecs; i++)
    if (recs[i].align == 16) r = &recs[i];
  void *q = bmm__fixed_realloc(heap, r->p, r->size + 10, 65536);
  if (CHECK(q != NULL)) {
    CHECK((uintptr_t)q % 65536 == 0 && bmm__fixed_align(heap, q) == 65536);
    CHECK_EQ_SZ(intact_upto(&(rec_t){q, 0, 0, r->seed}, r->size), r->size);
    r->p = q;
    r->align = 65536;
  }
  verify_all("raised alignment");
  free_all();
  CHECK(bmm__fixed_check(heap));
  bmm__fixed_destroy(heap);
  guarded_free(&g);
}

/* ---- Misuse ------------------------------------------------------------ */

static void expect_refused(void *p, const char *what) {
  size_t cap, live_before, live_after;
  bmm__fixed_usage(heap, &cap, &live_before);
  bool ok = CHECK(!bmm__fixed_free(heap, p)) && CHECK_EQ_SZ(bmm__fixed_usable(heap, p), 0) &&
            CHECK_EQ_SZ(bmm__fixed_align(heap, p), 0);
  bmm__fixed_usage(heap, &cap, &live_after);
  ok = CHECK_EQ_SZ(live_after, live_before) && ok;
  ok = CHECK(bmm__fixed_check(heap)) && ok;
  if (!ok) check_print(2, "  refusing %s %p\n", what, p);
}

/* Every 16-aligned interior pointer of a block holding `byte` (or random
 * bytes when byte < 0) is refused. */
static void check_interior(unsigned char *p, size_t size, int byte) {
  size_t accepted = 0;
  for (size_t j = 0; j < size; j++)
    p[j] = byte < 0 ? (unsigned char)check_rand(&rng) : (unsigned char)byte;
  for (size_t off = 16; off < size; off += 16)
    accepted += bmm__fixed_usable(heap, p + off) != 0;
  CHECK_EQ_SZ(accepted, 0);
}

static void check_misuse(void) {
  guarded_t g = guarded_new(256 * 1024, 0, 0);
  open_heap(&g);
  if (!CHECK(heap != NULL)) return;
  unsigned char *a = bmm__fixed_alloc(heap, 100, 16), *b = bmm__fixed_alloc(heap, 200, 16);
  unsigned char *c = bmm__fixed_alloc(heap, 50000, 16), *d = bmm__fixed_alloc(heap, 64, 16);
  if (!CHECK(a && b && c && d)) return;
  CHECK(bmm__fixed_free(heap, b));
  expect_refused(b, "double free");
  CHECK(bmm__fixed_free(heap, a)); /* merges with b */
  expect_refused(b, "a pointer into a merged block");
  expect_refused(a, "double free after a merge");
  expect_refused(c + 16, "interior");
  expect_refused(c + 8, "misaligned");
  expect_refused(c + 1, "misaligned");
  expect_refused(NULL, "NULL");
  expect_refused(range_lo - 64, "below the range");
  expect_refused(range_hi, "the range end");
  expect_refused(range_hi - 16, "the last bytes");
  expect_refused(range_lo, "the heap header");
  check_interior(c, 50000, 0);
  check_interior(c, 50000, -1);
  check_interior(c, 50000, BMM_DEBUG_FILL_FREE);
  check_interior(c, 50000, BMM_DEBUG_FILL_ALLOC);
  /* copies of real headers inside another block */
  for (size_t off = 16; off + 16 <= 50000; off += 16)
    memcpy(c + off - 8, d - 8, 8);
  size_t accepted = 0;
  for (size_t off = 16; off < 50000; off += 16)
    accepted += bmm__fixed_usable(heap, c + off) != 0;
  CHECK_EQ_SZ(accepted, 0);

  /* Sizes and alignments that cannot be served fail cleanly. */
  size_t cap, live;
  bmm__fixed_usage(heap, &cap, &live);
  const size_t huge[] = {SIZE_MAX, SIZE_MAX - 7, SIZE_MAX - 23, SIZE_MAX / 2, cap + 1, cap};
  for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
    CHECK(bmm__fixed_alloc(heap, huge[i], 16) == NULL);
    CHECK(bmm__fixed_alloc(heap, huge[i], 4096) == NULL);
    CHECK(bmm__fixed_realloc(heap, d, huge[i], 16) == NULL);
  }
  CHECK(bmm__fixed_alloc(heap, 16, 48) == NULL);              /* not a power of two */
  CHECK(bmm__fixed_alloc(heap, 16, (size_t)1 << 63) == NULL); /* beyond any range */
  void *far = bmm__fixed_alloc(heap, 16, (size_t)1 << 30);    /* most likely no such address */
  CHECK(far == NULL || (uintptr_t)far % ((size_t)1 << 30) == 0);
  if (far != NULL) CHECK(bmm__fixed_free(heap, far));
  CHECK_EQ_SZ(bmm__fixed_usable(heap, d), 64 + 8);
  CHECK(bmm__fixed_check(heap));
  bmm__fixed_destroy(heap);
  guarded_free(&g);
}

/* ---- Visit ------------------------------------------------------------- */

typedef struct visit_s {
  size_t count, bytes, bad, stop_after;
  const void *last;
} visit_t;

static bool count_block(const void *block, size_t usable, void *arg) {
  visit_t *v = arg;
  if (block <= v->last || bmm__fixed_usable(heap, block) != usable) v->bad++;
  v->last = block;
  v->count++;
  v->bytes += usable;
  return v->count != v->stop_after;
}

static bool free_block(const void *block, size_t usable, void *arg) {
  (void)usable;
  visit_t *v = arg;
  v->count++;
  v->bad += !bmm__fixed_free(heap, (void *)block);
  return true;
}

static void check_visit(void) {
  guarded_t g = guarded_new(512 * 1024, 9, 0);
  open_heap(&g);
  if (!CHECK(heap != NULL)) return;
  visit_t v = {0, 0, 0, 0, NULL};
  CHECK(bmm__fixed_visit(heap, count_block, &v));
  CHECK_EQ_SZ(v.count, 0);
  fill_random();
  free_random(30);
  alloc_aligned_some(50);
  size_t cap, live;
  bmm__fixed_usage(heap, &cap, &live);
  v = (visit_t){0, 0, 0, 0, NULL};
  CHECK(bmm__fixed_visit(heap, count_block, &v));
  CHECK_EQ_SZ(v.count, nrecs);
  CHECK_EQ_SZ(v.bytes, live);
  CHECK_EQ_SZ(v.bad, 0);
  v = (visit_t){0, 0, 0, 3, NULL};
  CHECK(!bmm__fixed_visit(heap, count_block, &v));
  CHECK_EQ_SZ(v.count, 3);
  /* the callback frees each block it is shown: the walk still sees all */
  size_t n = nrecs;
  v = (visit_t){0, 0, 0, 0, NULL};
  CHECK(bmm__fixed_visit(heap, free_block, &v));
  CHECK_EQ_SZ(v.count, n);
  CHECK_EQ_SZ(v.bad, 0);
  nrecs = 0;
  bmm__fixed_usage(heap, &cap, &live);
  CHECK_EQ_SZ(live, 0);
  CHECK(bmm__fixed_check(heap));
  bmm__fixed_destroy(heap);
  guarded_free(&g);
}

/* ---- Registry ---------------------------------------------------------- */

static void check_registry(void) {
  guarded_t g = guarded_new(64 * 1024, 5, 0);
  bmm_fixed_t *outer = bmm__fixed_init(g.mem, g.size);
  if (!CHECK(outer != NULL)) return;
  CHECK(bmm__fixed_find(g.mem) == outer);
  CHECK(bmm__fixed_find(g.mem + g.size / 2) == outer);
  CHECK(bmm__fixed_find(g.mem + g.size - 1) == outer);
  CHECK(bmm__fixed_find(g.mem + g.size) == NULL);
  CHECK(bmm__fixed_find(g.mem - 1) == NULL);
  CHECK(bmm__fixed_find(NULL) == NULL);

  /* A heap inside a block of another: its blocks are the inner heap's. */
  size_t inner_size = 16 * 1024;
  char *block = bmm__fixed_alloc(outer, inner_size, 16);
  bmm_fixed_t *inner = block ? bmm__fixed_init(block, inner_size) : NULL;
  if (CHECK(inner != NULL)) {
    void *p = bmm__fixed_alloc(inner, 100, 16);
    CHECK(p != NULL && bmm__fixed_find(p) == inner);
    CHECK(bmm__fixed_find(block - 8) == outer);
    bmm__fixed_destroy(inner);
    CHECK(bmm__fixed_find(p) == outer);
  }

  /* Fill the registry with small heaps: then ENOMEM, and room again after. */
  enum { MANY = 4200 }; /* more than the 4096 slots */
  static bmm_fixed_t *many[MANY];
  static char small[MANY][1024] __attribute__((aligned(16)));
  size_t n = 0;
  while (n < MANY && (many[n] = bmm__fixed_init(small[n], sizeof small[n])) != NULL)
    n++;
  CHECK(n >= 4090 && n < MANY);
  CHECK_ERRNO(bmm__fixed_init(small[MANY - 1], sizeof small[MANY - 1]), ENOMEM);
  for (size_t i = 0; i < n; i++) {
    if (i % 61 == 0) CHECK(bmm__fixed_find(small[i] + 100) == many[i]); /* each scans them all */
    void *p = bmm__fixed_alloc(many[i], 300, 16);
    CHECK(p != NULL && bmm__fixed_check(many[i]));
  }
  for (size_t i = 0; i < n; i++)
    bmm__fixed_destroy(many[i]);
  CHECK(bmm__fixed_find(small[0] + 100) == NULL);
  bmm_fixed_t *again = bmm__fixed_init(small[0], sizeof small[0]);
  CHECK(again != NULL);
  if (again != NULL) bmm__fixed_destroy(again);

  bmm__fixed_destroy(outer);
  CHECK(bmm__fixed_find(g.mem + 100) == NULL);
  guarded_free(&g);

  /* Too small, or no memory at all. */
  static char tiny[512] __attribute__((aligned(16)));
  CHECK_ERRNO(bmm__fixed_init(tiny, 0), EINVAL);
  CHECK_ERRNO(bmm__fixed_init(tiny, 16), EINVAL);
  CHECK_ERRNO(bmm__fixed_init(tiny + 1, 64), EINVAL);
  CHECK_ERRNO(bmm__fixed_init(NULL, 4096), EINVAL);
  CHECK_ERRNO(bmm__fixed_init(tiny, SIZE_MAX), EINVAL);
  /* the smallest range that works holds one block of 24 usable bytes */
  size_t smallest = 0;
  for (size_t s = 16; s <= sizeof tiny && smallest == 0; s += 8) {
    bmm_fixed_t *h = bmm__fixed_init(tiny + 8, s - 8);
    if (h == NULL) continue;
    smallest = s - 8;
    void *p = bmm__fixed_alloc(h, 0, 16);
    CHECK(p != NULL && bmm__fixed_usable(h, p) == 24 && bmm__fixed_check(h));
    CHECK(bmm__fixed_alloc(h, 0, 16) == NULL);
    bmm__fixed_destroy(h);
  }
  CHECK(smallest != 0);
}

/* ---- Threads ----------------------------------------------------------- */

#define THREADS 4

static void *thread_churn(void *arg) {
  uint64_t state = (uintptr_t)arg * 0x9e3779b97f4a7c15u + 1;
  unsigned char *mine[64] = {NULL};
  size_t bad = 0;
  for (int k = 0; k < 20000; k++) {
    size_t i = check_rand(&state) % 64;
    if (mine[i] != NULL) {
      bad += mine[i][0] != (unsigned char)i || !bmm__fixed_free(heap, mine[i]);
      mine[i] = NULL;
    } else if ((mine[i] = bmm__fixed_alloc(heap, check_rand(&state) % 600, 16)) != NULL) {
      mine[i][0] = (unsigned char)i;
    }
  }
  for (size_t i = 0; i < 64; i++)
    if (mine[i] != NULL) bad += !bmm__fixed_free(heap, mine[i]);
  return (void *)bad;
}

static atomic_bool finding;

/* Looks up blocks of the churned heap while other heaps come and go. */
static void *thread_find(void *arg) {
  (void)arg;
  size_t bad = 0;
  uint64_t state = 1;
  while (atomic_load(&finding)) {
    bad += bmm__fixed_find(range_lo + check_rand(&state) % 4096) != heap;
    bad += bmm__fixed_find(range_hi - 1) != heap;
  }
  return (void *)bad;
}

static void registry_churn(void) {
  static char small[8][2048] __attribute__((aligned(16)));
  for (int k = 0; k < 2000; k++) {
    bmm_fixed_t *h = bmm__fixed_init(small[k % 8], sizeof small[0]);
    if (!CHECK(h != NULL)) return;
    CHECK(bmm__fixed_find(small[k % 8] + 1000) == h);
    bmm__fixed_destroy(h);
  }
}

static void check_threads(void) {
  guarded_t g = guarded_new(THREADS * 64 * 700, 0, 0);
  open_heap(&g);
  if (!CHECK(heap != NULL)) return;
  pthread_t t[THREADS], finder;
  atomic_store(&finding, true);
  CHECK(pthread_create(&finder, NULL, thread_find, NULL) == 0);
  for (uintptr_t i = 0; i < THREADS; i++)
    CHECK(pthread_create(&t[i], NULL, thread_churn, (void *)(i + 1)) == 0);
  registry_churn();
  for (int i = 0; i < THREADS; i++) {
    void *bad = (void *)1;
    pthread_join(t[i], &bad);
    CHECK(bad == NULL);
  }
  atomic_store(&finding, false);
  void *bad_finds = (void *)1;
  pthread_join(finder, &bad_finds);
  CHECK(bad_finds == NULL);
  size_t cap, live;
  bmm__fixed_usage(heap, &cap, &live);
  CHECK_EQ_SZ(live, 0);
  CHECK(bmm__fixed_check(heap));
  bmm__fixed_destroy(heap);
  guarded_free(&g);
}

int main(void) {
  page_size = (size_t)sysconf(_SC_PAGESIZE);
  /* every start and end offset modulo 16, against a guard page either side */
  for (size_t off = 0; off < 16; off++) {
    check_random_phases(256 * 1024 + off * 4096, off, 0);
    check_random_phases(256 * 1024, 0, off);
  }
  check_random_phases(2 << 20, 7, 13);
  check_every_op();
  check_big_align();
  check_fill_ratio();
  check_misuse();
  check_visit();
  check_registry();
  check_threads();
  return check_done();
}
