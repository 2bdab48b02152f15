/* fixed_heap.c: fixed heaps (API section 8, bmm_heap_new_fixed): a heap
 * that lives inside [mem, mem + size), metadata included, never grows, and
 * has a lock of its own.
 *
 * Cases, each in a function of its own:
 *   args       NULL memory, a size too small for anything (0, 64 bytes):
 *              NULL + EINVAL; on a working fixed heap, sizes and counts that
 *              overflow give ENOMEM, bad alignments EINVAL
 *   guarded    the range between PROT_NONE pages (page-aligned and odd
 *              starts, odd sizes, the end against the guard or not; the
 *              bytes between range and guard hold a canary): a random mix
 *              of malloc/calloc/malloc_aligned until NULL (errno ENOMEM),
 *              every block inside the range, aligned, non-overlapping,
 *              patterns intact; frees with bmm_free (and free when it is
 *              BrainMM's), reallocs with bmm_heap_realloc and bmm_realloc
 *              (staying in the range), calloc zeroing reused memory,
 *              bmm_usable_size, exact visits; after freeing everything the
 *              largest block is as large as on the fresh heap (almost the
 *              whole range); after destroy the range takes a new fixed heap
 *   in_block   the range is a BrainMM block (small, medium, large, huge):
 *              its fixed heap's blocks freed with bmm_free go to the fixed
 *              heap (no misuse report), the block is freed normally after
 *   static     the range is a static array, then a stack array
 *   misuse     in a child: a double free, an interior pointer, a realloc of
 *              a freed block, a double free in a heap inside a BrainMM
 *              block: one line on stderr and SIGABRT. With abort_on_error=0
 *              the calls are reported and ignored, and the heap keeps its
 *              blocks (visit counts unchanged) and works on
 *   threads    4 threads allocating, resizing, freeing (their own blocks
 *              and blocks handed over by the others) in one guarded fixed
 *              heap at once: patterns intact, every block in the range, the
 *              final visit exact
 * Every case ends with bmm_heap_check(). Each runs in a child process so an
 * abort in one does not hide the others; `fixed_heap CASE` runs one case in
 * this process instead (for a debugger).
 */
#define _GNU_SOURCE
#include <brainmm.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"
#include "pattern.h"

#define KiB ((size_t)1024)
#define MiB (KiB * 1024)

/* Whether the standard malloc/free/realloc are BrainMM's (the override is
 * compiled into the static library); found out once in main. */
static bool std_is_bmm;

/* ---- Helpers -------------------------------------------------------------- */

static size_t count_bad(const blk_t *b, size_t n) {
  size_t bad = 0;
  for (size_t i = 0; i < n; i++)
    if (b[i].p != NULL && !blk_ok(&b[i])) bad++;
  return bad;
}

static bool all_zero(const void *p, size_t n) {
  const uint8_t *c = p;
  for (size_t i = 0; i < n; i++)
    if (c[i] != 0) return false;
  return true;
}

/* Frees with bmm_free, or (one time in four, when it is BrainMM's) free. */
static void free_any(void *p, uint64_t *r) {
  if (std_is_bmm && rng_below(r, 4) == 0)
    free(p);
  else
    bmm_free(p);
}

/* ---- Ranges ----------------------------------------------------------------- */

typedef struct range_s {
  uint8_t *mem;
  size_t size;
} range_t;

static bool in_range(const range_t *rg, const void *p, size_t bytes) {
  uintptr_t a = (uintptr_t)p, lo = (uintptr_t)rg->mem;
  return a >= lo && a <= lo + rg->size && bytes <= lo + rg->size - a;
}

/* Checks every live block of blocks: inside the range (all its usable
 * bytes), 16-aligned and aligned as asked, no two overlapping, patterns
 * intact. */
static void check_layout(const range_t *rg, const blk_t *blocks, size_t n, const char *where) {
  blk_t *b = bmm_malloc((n + 1) * sizeof *b);
  CHECK(b != NULL);
  if (b == NULL) return;
  memcpy(b, blocks, n * sizeof *b);
  qsort(b, n, sizeof *b, cmp_blk);
  size_t outside = 0, misaligned = 0, overlaps = 0, bad = 0, too_small = 0;
  const uint8_t *prev_end = NULL;
  for (size_t i = 0; i < n; i++) {
    if (b[i].p == NULL) continue;
    size_t u = bmm_usable_size(b[i].p);
    if (u < b[i].size) too_small++;
    if (!in_range(rg, b[i].p, u)) outside++;
    if (!aligned_to(b[i].p, 16) || (b[i].align && !aligned_to(b[i].p, b[i].align))) misaligned++;
    if (prev_end != NULL && (const uint8_t *)b[i].p < prev_end) overlaps++;
    prev_end = (const uint8_t *)b[i].p + u;
    if (!blk_ok(&b[i])) bad++;
  }
  if (outside || misaligned || overlaps || bad || too_small)
    check_print(2,
                "fixed_heap: layout (%s): %zu outside, %zu misaligned, %zu overlapping, %zu "
                "bad, %zu too small\n",
                where, outside, misaligned, overlaps, bad, too_small);
  CHECK_EQ_SZ(outside, 0);
  CHECK_EQ_SZ(misaligned, 0);
  CHECK_EQ_SZ(overlaps, 0);
  CHECK_EQ_SZ(bad, 0);
  CHECK_EQ_SZ(too_small, 0);
  bmm_free(b);
}

/* The largest block h can give now (binary search; every failure must say
 * ENOMEM). */
static size_t largest_block(bmm_heap_t *h, size_t limit) {
  size_t lo = 0, hi = limit, wrong_errno = 0;
  while (lo < hi) {
    size_t mid = lo + (hi - lo + 1) / 2;
    errno = 0;
    void *p = bmm_heap_malloc(h, mid);
    if (p != NULL) {
      bmm_free(p);
      lo = mid;
    } else {
      if (errno != ENOMEM) wrong_errno++;
      hi = mid - 1;
    }
  }
  CHECK_EQ_SZ(wrong_errno, 0);
  return lo;
}

/* A range between two PROT_NONE pages; the bytes between the range and the
 * guards hold a canary. */
typedef struct guarded_s {
  uint8_t *map; /* guard, rw, guard */
  size_t map_len;
  uint8_t *rw;
  size_t rw_len;
  range_t rg;
} guarded_t;

#define CANARY 0x5A

/* offset: where the range starts after the first guard; at_end: instead
 * put the range's end against the second guard. */
static bool guarded_map(guarded_t *g, size_t offset, size_t size, bool at_end) {
  size_t ps = (size_t)sysconf(_SC_PAGESIZE);
  size_t rw_len = (offset + size + ps - 1) / ps * ps;
  g->map_len = rw_len + 2 * ps;
  g->map = mmap(NULL, g->map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (g->map == MAP_FAILED) return false;
  g->rw = g->map + ps;
  g->rw_len = rw_len;
  if (mprotect(g->rw, rw_len, PROT_READ | PROT_WRITE) != 0) return false;
  memset(g->rw, CANARY, rw_len);
  g->rg.mem = at_end ? g->rw + rw_len - size : g->rw + offset;
  g->rg.size = size;
  return true;
}

static bool guarded_canary_ok(const guarded_t *g) {
  for (uint8_t *c = g->rw; c < g->rg.mem; c++)
    if (*c != CANARY) return false;
  for (uint8_t *c = g->rg.mem + g->rg.size; c < g->rw + g->rw_len; c++)
    if (*c != CANARY) return false;
  return true;
}

static void guarded_unmap(guarded_t *g) {
  munmap(g->map, g->map_len);
}

/* ---- The single-threaded workload ------------------------------------------ */

/* Runs everything a fixed heap must do in rg (see `guarded` at the top);
 * returns with the heap destroyed and the range free. */
static void fixed_workload(const range_t *rg, uint64_t seed, const char *where) {
  uint64_t r = seed;
  memset(rg->mem, 0xCC, rg->size); /* calloc must not rely on fresh memory */
  bmm_heap_t *h = bmm_heap_new_fixed(rg->mem, rg->size);
  CHECK(h != NULL);
  if (h == NULL) {
    check_print(2, "fixed_heap: %s: bmm_heap_new_fixed(%p, %zu) failed, errno %d\n", where,
                (void *)rg->mem, rg->size, errno);
    return;
  }
  /* The heap's own metadata is inside the range too. */
  CHECK(in_range(rg, h, 1));
  CHECK_EQ_SZ(visit_count(h), 0);

  size_t l0 = largest_block(h, rg->size);
  if (rg->size >= 64 * KiB)
    CHECK(l0 >= rg->size / 8 * 7);
  else
    CHECK(l0 >= rg->size / 2);
  if (rg->size >= 64 * KiB && l0 < rg->size / 8 * 7)
    check_print(2, "fixed_heap: %s: largest block %zu of %zu\n", where, l0, rg->size);

  /* Fill until NULL: random kinds and sizes, then tiny blocks. */
  size_t cap = rg->size / 16 + 16, n = 0;
  blk_t *b = bmm_calloc(cap, sizeof *b);
  CHECK(b != NULL);
  if (b == NULL) return;
  size_t max_piece = rg->size / 16 < 64 ? 64 : rg->size / 16;
  size_t wrong_errno = 0, dirty = 0, misaligned = 0, consecutive = 0;
  while (n < cap && consecutive < 64) {
    blk_t x = {NULL, rng_log(&r, 1, max_piece), 0, check_rand(&r)};
    size_t kind = rng_below(&r, 100);
    errno = 0;
    if (kind < 15) {
      x.align = (size_t)32 << rng_below(&r, 8); /* 32 .. 4096 */
      x.p = bmm_heap_malloc_aligned(h, x.size, x.align);
    } else if (kind < 30) {
      size_t count = x.size / 8 + 1;
      x.size = count * 8;
      x.p = bmm_heap_calloc(h, count, 8);
      if (x.p != NULL && !all_zero(x.p, x.size)) dirty++;
    } else {
      x.p = bmm_heap_malloc(h, x.size);
    }
    if (x.p == NULL) {
      if (errno != ENOMEM) wrong_errno++;
      consecutive++;
      continue;
    }
    consecutive = 0;
    if (!aligned_to(x.p, x.align ? x.align : 16)) misaligned++;
    pat_fill(x.p, x.size, x.seed);
    b[n++] = x;
  }
  for (consecutive = 0; n < cap && consecutive < 4;) {
    blk_t x = {NULL, 1 + rng_below(&r, 16), 0, check_rand(&r)};
    errno = 0;
    x.p = bmm_heap_malloc(h, x.size);
    if (x.p == NULL) {
      if (errno != ENOMEM) wrong_errno++;
      consecutive++;
      continue;
    }
    pat_fill(x.p, x.size, x.seed);
    b[n++] = x;
  }
  CHECK(n < cap); /* it did fill up */
  CHECK_EQ_SZ(wrong_errno, 0);
  CHECK_EQ_SZ(dirty, 0);
  CHECK_EQ_SZ(misaligned, 0);
  /* Full: nothing more of any kind. */
  bmm_free(CHECK_ERRNO(bmm_heap_malloc(h, 1), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_heap_malloc(h, 0), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_heap_calloc(h, 1, 1), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_heap_malloc_aligned(h, 1, 64), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_heap_realloc(h, NULL, 1), ENOMEM));
  check_layout(rg, b, n, where);
  visit_exact(h, b, n, "full");

  /* Free a random half. */
  for (size_t i = 0; i < n; i++)
    if (rng_below(&r, 2) == 0) {
      free_any(b[i].p, &r);
      b[i].p = NULL;
    }
  visit_exact(h, b, n, "half freed");

  /* Resize a third of the rest, with each of the realloc calls. */
  size_t lost = 0, lost_align = 0, outside = 0;
  wrong_errno = 0;
  for (size_t i = 0; i < n; i++) {
    if (b[i].p == NULL || rng_below(&r, 3) != 0) continue;
    size_t size = rng_log(&r, 1, max_piece);
    size_t how = rng_below(&r, std_is_bmm ? 3 : 2);
    errno = 0;
    void *q = how == 0   ? bmm_heap_realloc(h, b[i].p, size)
              : how == 1 ? bmm_realloc(b[i].p, size)
                         : realloc(b[i].p, size);
    if (q == NULL) {
      if (errno != ENOMEM) wrong_errno++;
      if (!blk_ok(&b[i])) lost++; /* the old block is untouched */
      continue;
    }
    size_t keep = size < b[i].size ? size : b[i].size;
    if (!pat_prefix_ok(q, keep, b[i].size, b[i].seed)) lost++;
    if (!in_range(rg, q, bmm_usable_size(q))) outside++;
    if (b[i].align && !aligned_to(q, b[i].align)) lost_align++;
    b[i].p = q;
    b[i].size = size;
    b[i].seed = check_rand(&r);
    pat_fill(q, size, b[i].seed);
  }
  CHECK_EQ_SZ(wrong_errno, 0);
  CHECK_EQ_SZ(lost, 0);
  CHECK_EQ_SZ(lost_align, 0);
  CHECK_EQ_SZ(outside, 0);
  /* realloc(NULL) in the heap; calloc over freed (patterned) memory. */
  dirty = 0;
  for (size_t i = 0; i < n; i++) {
    if (b[i].p != NULL || rng_below(&r, 4) != 0) continue;
    blk_t x = {NULL, rng_log(&r, 1, max_piece / 4), 0, check_rand(&r)};
    if (rng_below(&r, 2) == 0) {
      x.p = bmm_heap_calloc(h, 1, x.size);
      if (x.p != NULL && !all_zero(x.p, x.size)) dirty++;
    } else {
      x.p = bmm_heap_realloc(h, NULL, x.size);
    }
    if (x.p == NULL) continue;
    pat_fill(x.p, x.size, x.seed);
    b[i] = x;
  }
  CHECK_EQ_SZ(dirty, 0);
  check_layout(rg, b, n, where);
  visit_exact(h, b, n, "after reallocs");
  /* Early stop. */
  size_t live = 0;
  for (size_t i = 0; i < n; i++)
    live += b[i].p != NULL;
  if (live >= 2) {
    visit_log_t log = {NULL, 0, 0, 0, live / 2};
    CHECK(!bmm_heap_visit(h, log_block, &log));
    CHECK_EQ_SZ(log.calls, live / 2);
  }
  CHECK(bmm_heap_check());

  /* Everything freed: the heap is as good as new. */
  for (size_t i = 0; i < n; i++) {
    free_any(b[i].p, &r);
    b[i].p = NULL;
  }
  CHECK_EQ_SZ(visit_count(h), 0);
  CHECK(bmm_heap_visit(h, log_block, &(visit_log_t){NULL, 0, 0, 0, 1}));
  size_t l1 = largest_block(h, rg->size);
  if (l1 != l0) check_print(2, "fixed_heap: %s: largest block %zu, was %zu\n", where, l1, l0);
  CHECK_EQ_SZ(l1, l0);
  bmm_heap_destroy(h);

  /* The range takes a new fixed heap. */
  bmm_heap_t *h2 = bmm_heap_new_fixed(rg->mem, rg->size);
  CHECK(h2 != NULL);
  if (h2 != NULL) {
    CHECK_EQ_SZ(visit_count(h2), 0);
    blk_t x = {bmm_heap_malloc(h2, l0), l0, 0, 7};
    CHECK(x.p != NULL && in_range(rg, x.p, l0));
    if (x.p != NULL) {
      pat_fill(x.p, l0, 7);
      visit_exact(h2, &x, 1, "new heap on the same range");
      bmm_free(x.p);
    }
    bmm_heap_destroy(h2);
  }
  bmm_free(b);
  CHECK(bmm_heap_check());
}

/* ---- args ------------------------------------------------------------------- */

static void test_args(void) {
  static uint8_t buf[64 * KiB] __attribute__((aligned(64)));
  CHECK_ERRNO(bmm_heap_new_fixed(NULL, 4096), EINVAL);
  CHECK_ERRNO(bmm_heap_new_fixed(NULL, 0), EINVAL);
  CHECK_ERRNO(bmm_heap_new_fixed(buf, 0), EINVAL);
  CHECK_ERRNO(bmm_heap_new_fixed(buf, 64), EINVAL);
  CHECK_ERRNO(bmm_heap_new_fixed(buf + 8, 64), EINVAL);
  CHECK_ERRNO(bmm_heap_new_fixed(buf, 1), EINVAL);

  /* A page is plenty for a heap with at least one block. */
  bmm_heap_t *small = bmm_heap_new_fixed(buf, 4096);
  CHECK(small != NULL);
  if (small != NULL) {
    void *p = bmm_heap_malloc(small, 16);
    CHECK(p != NULL && (uint8_t *)p >= buf && (uint8_t *)p + 16 <= buf + 4096);
    bmm_free(p);
    bmm_heap_destroy(small);
  }

  guarded_t g;
  CHECK(guarded_map(&g, 8, 64 * KiB, false));
  const size_t size = g.rg.size;
  bmm_heap_t *h = bmm_heap_new_fixed(g.rg.mem, size);
  CHECK(h != NULL);
  if (h == NULL) return;
  bmm_free(CHECK_ERRNO(bmm_heap_malloc(h, SIZE_MAX), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_heap_malloc(h, SIZE_MAX - 15), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_heap_malloc(h, size), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_heap_malloc(h, 1 * MiB), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_heap_calloc(h, SIZE_MAX / 2 + 1, 2), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_heap_calloc(h, (size_t)1 << 33, (size_t)1 << 33), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_heap_calloc(h, size, 2), ENOMEM));
  /* An alignment no address of the range has (the range starts 8 bytes
   * past a page, so one exists): it cannot be met. */
  uintptr_t lo = (uintptr_t)g.rg.mem, hi = lo + size;
  size_t never = 128 * KiB;
  while ((lo + never - 1) / never * never < hi)
    never *= 2;
  bmm_free(CHECK_ERRNO(bmm_heap_malloc_aligned(h, 100, never), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_heap_malloc_aligned(h, SIZE_MAX - 64, 64), ENOMEM));
  static const size_t bad_aligns[] = {0, 3, 24, 48, 4097, SIZE_MAX};
  for (size_t i = 0; i < sizeof bad_aligns / sizeof *bad_aligns; i++) {
    void *p = CHECK_ERRNO(bmm_heap_malloc_aligned(h, 100, bad_aligns[i]), EINVAL);
    bmm_free(p);
  }
  /* A failed realloc keeps the block. */
  blk_t x = {bmm_heap_malloc(h, 1000), 1000, 0, 3};
  CHECK(x.p != NULL);
  if (x.p != NULL) {
    pat_fill(x.p, 1000, 3);
    CHECK_ERRNO(bmm_heap_realloc(h, x.p, size), ENOMEM);
    CHECK_ERRNO(bmm_realloc(x.p, size), ENOMEM);
    CHECK_ERRNO(bmm_heap_realloc(h, x.p, SIZE_MAX), ENOMEM);
    CHECK(blk_ok(&x));
    visit_exact(h, &x, 1, "after failed reallocs");
    /* Size 0 frees, as bmm_realloc does. */
    void *z = bmm_heap_realloc(h, x.p, 0);
    CHECK(z == NULL);
    CHECK_EQ_SZ(visit_count(h), z == NULL ? 0 : 1);
    bmm_free(z);
  }
  /* Small alignments mean 16. */
  for (size_t a = 1; a <= 16; a *= 2) {
    void *p = bmm_heap_malloc_aligned(h, 10, a);
    CHECK(p != NULL && aligned_to(p, 16));
    bmm_free(p);
  }
  CHECK_EQ_SZ(visit_count(h), 0);
  bmm_heap_destroy(h);
  CHECK(guarded_canary_ok(&g));
  guarded_unmap(&g);
  CHECK(bmm_heap_check());
}

/* ---- guarded ---------------------------------------------------------------- */

static void test_guarded(void) {
  static const struct {
    size_t offset, size;
    bool at_end;
  } layouts[] = {
      {0, 1 * MiB, false},       /* page-aligned start and end */
      {8, 1 * MiB - 24, false},  /* 8 past a page, odd size */
      {0, 1 * MiB - 24, true},   /* ends against the guard, starts 24 past a page */
      {8, 64 * KiB + 8, false},  /* just over 64 KiB */
      {0, 12345, true},          /* odd start and size, end against the guard */
      {0, 4096, false},          /* one page */
      {24, 3 * MiB + 40, false}, /* larger */
  };
  for (size_t i = 0; i < sizeof layouts / sizeof *layouts; i++) {
    guarded_t g;
    CHECK(guarded_map(&g, layouts[i].offset, layouts[i].size, layouts[i].at_end));
    char where[64];
    snprintf(where, sizeof where, "guarded %zu+%zu%s", layouts[i].offset, layouts[i].size,
             layouts[i].at_end ? " at end" : "");
    fixed_workload(&g.rg, 0x6a09e667f3bcc908ull + i, where);
    CHECK(guarded_canary_ok(&g));
    guarded_unmap(&g);
  }
  CHECK(bmm_heap_check());
}

/* ---- in_block --------------------------------------------------------------- */

static void test_in_block(void) {
  static const size_t sizes[] = {3000, 40000, 300000, 17 * MiB};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    for (size_t skew = 0; skew <= 8; skew += 8) {
      uint8_t *buf = bmm_malloc(sizes[i]);
      CHECK(buf != NULL);
      if (buf == NULL) continue;
      size_t usable = bmm_usable_size(buf);
      /* A default-heap neighbour, to see that nothing strays into it. */
      blk_t nb = {bmm_malloc(sizes[i]), sizes[i], 0, 11};
      CHECK(nb.p != NULL);
      if (nb.p != NULL) pat_fill(nb.p, nb.size, nb.seed);
      range_t rg = {buf + skew, sizes[i] - skew};
      char where[64];
      snprintf(where, sizeof where, "in a %zu-byte block +%zu", sizes[i], skew);
      fixed_workload(&rg, 0xbb67ae8584caa73bull + i * 2 + skew, where);
      /* The block is an ordinary default-heap block again. */
      CHECK_EQ_SZ(bmm_usable_size(buf), usable);
      CHECK(nb.p == NULL || blk_ok(&nb));
      void *q = bmm_realloc(buf, sizes[i] * 2);
      CHECK(q != NULL);
      bmm_free(q != NULL ? q : buf);
      bmm_free(nb.p);
    }
  }
  CHECK(bmm_heap_check());
}

/* ---- static ----------------------------------------------------------------- */

static uint8_t static_area[256 * KiB + 8];

static void on_stack(size_t offset) {
  uint8_t area[64 * KiB + 24];
  range_t rg = {area + offset, sizeof area - offset};
  fixed_workload(&rg, 0x3c6ef372fe94f82bull + offset, "stack array");
  /* Keep the array alive (and the compiler from reusing it) to here. */
  __asm__ volatile("" : : "r"(area) : "memory");
}

static void test_static(void) {
  range_t rg = {static_area, sizeof static_area};
  fixed_workload(&rg, 0xa54ff53a5f1d36f1ull, "static array");
  range_t rg8 = {static_area + 8, sizeof static_area - 8};
  fixed_workload(&rg8, 0x510e527fade682d1ull, "static array + 8");
  on_stack(0);
  on_stack(8);
  CHECK(bmm_heap_check());
}

/* ---- misuse ----------------------------------------------------------------- */

typedef enum {
  MISUSE_DOUBLE_FREE,
  MISUSE_INTERIOR,
  MISUSE_REALLOC_FREED,
  MISUSE_DOUBLE_FREE_IN_BLOCK,
  MISUSE_COUNT
} misuse_t;

static const char *const misuse_name[MISUSE_COUNT] = {
    "double free", "free(interior)", "realloc(freed)", "double free in a BrainMM block"};

static uint8_t misuse_area[64 * KiB];

static void misuse_child(void *arg) {
  misuse_t c = (misuse_t)(intptr_t)arg;
  uint8_t *mem = misuse_area;
  if (c == MISUSE_DOUBLE_FREE_IN_BLOCK) mem = bmm_malloc(sizeof misuse_area);
  bmm_heap_t *h = bmm_heap_new_fixed(mem, sizeof misuse_area);
  if (h == NULL) {
    check_print(2, "no heap\n");
    return;
  }
  uint8_t *p = bmm_heap_malloc(h, 100);
  uint8_t *q = bmm_heap_malloc(h, 200);
  (void)q;
  switch (c) {
  case MISUSE_DOUBLE_FREE:
  case MISUSE_DOUBLE_FREE_IN_BLOCK:
    bmm_free(p);
    bmm_free(p);
    break;
  case MISUSE_INTERIOR:
    bmm_free(p + 16);
    break;
  case MISUSE_REALLOC_FREED:
    bmm_free(p);
    if (bmm_heap_realloc(h, p, 300) != NULL) check_print(2, "realloc of a freed block worked\n");
    break;
  default:
    break;
  }
}

/* With abort_on_error=0: the misuse is reported and ignored. */
static void misuse_ignored_child(void *arg) {
  (void)arg;
  CHECK_EQ_LONG(bmm_option_set("abort_on_error", 0), 0);
  range_t rg = {misuse_area, sizeof misuse_area};
  bmm_heap_t *h = bmm_heap_new_fixed(rg.mem, rg.size);
  CHECK(h != NULL);
  if (h == NULL) return;
  size_t l0 = largest_block(h, rg.size);
  blk_t b[20];
  uint64_t r = 0x1b;
  for (int i = 0; i < 10; i++) {
    b[i] = (blk_t){NULL, 32 + rng_below(&r, 300), 0, check_rand(&r)};
    b[i].p = bmm_heap_malloc(h, b[i].size);
    CHECK(b[i].p != NULL);
    if (b[i].p != NULL) pat_fill(b[i].p, b[i].size, b[i].seed);
  }
  for (int i = 10; i < 20; i++)
    b[i].p = NULL;
  void *gone = b[3].p;
  bmm_free(gone);
  b[3].p = NULL;
  CHECK_EQ_SZ(visit_count(h), 9);
  bmm_free(gone); /* double free: one line, ignored */
  CHECK_EQ_SZ(visit_count(h), 9);
  bmm_free((uint8_t *)b[5].p + 16); /* interior pointer: one line, ignored */
  CHECK_EQ_SZ(visit_count(h), 9);
  visit_exact(h, b, 20, "after ignored misuse");
  CHECK_EQ_SZ(count_bad(b, 20), 0);
  check_layout(&rg, b, 20, "after ignored misuse");
  /* The heap goes on working. */
  for (int i = 10; i < 20; i++) {
    b[i] = (blk_t){bmm_heap_malloc(h, 500), 500, 0, check_rand(&r)};
    CHECK(b[i].p != NULL);
    if (b[i].p != NULL) pat_fill(b[i].p, b[i].size, b[i].seed);
  }
  visit_exact(h, b, 20, "after more allocations");
  check_layout(&rg, b, 20, "after more allocations");
  for (int i = 0; i < 20; i++) {
    bmm_free(b[i].p);
    b[i].p = NULL;
  }
  CHECK_EQ_SZ(visit_count(h), 0);
  CHECK_EQ_SZ(largest_block(h, rg.size), l0);
  bmm_heap_destroy(h);
  CHECK(bmm_heap_check());
}

static void test_misuse(void) {
  static char out[8192];
  for (int c = 0; c < MISUSE_COUNT; c++) {
    int lines = 0;
    bool counted = false;
    int status =
        check_child_counted(misuse_child, (void *)(intptr_t)c, out, sizeof out, &lines, &counted);
    bool aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
    if (!aborted || lines != 1) {
      check_print(2, "fixed_heap: misuse %s: status %#x, %d lines:\n", misuse_name[c], status,
                  lines);
      fputs(out, stderr);
    } else if (strstr(out, "double free") == NULL && strstr(out, "not a block") == NULL) {
      check_print(2, "fixed_heap: note: misuse %s reported as: %s", misuse_name[c], out);
    }
    CHECK(aborted);
    CHECK(lines == 1);
  }
  int lines = 0;
  bool counted = false;
  int status = check_child_counted(misuse_ignored_child, NULL, out, sizeof out, &lines, &counted);
  bool exited = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (!exited || !counted || lines != 2) {
    check_print(2, "fixed_heap: misuse with abort_on_error=0: status %#x, %d lines:\n", status,
                lines);
    fputs(out, stderr);
  }
  CHECK(exited && counted);
  CHECK(lines == 2); /* one line per ignored call */
  CHECK(bmm_heap_check());
}

/* ---- threads ---------------------------------------------------------------- */

#define MT_THREADS 4
#define MT_SLOTS 128
#define MT_HEAP (2 * MiB)

typedef struct mt_arg_s {
  bmm_heap_t *h;
  const range_t *rg;
  int index;
  size_t ops;
  mailbox_t *boxes;
  pthread_barrier_t *start;
  size_t full; /* allocations refused with ENOMEM */
  blk_t slots[MT_SLOTS];
} mt_arg_t;

static size_t mailbox_drain(mailbox_t *m, uint64_t *r) {
  size_t bad = 0;
  pthread_mutex_lock(&m->lock);
  for (size_t i = 0; i < m->n; i++) {
    if (!blk_ok(&m->q[i])) bad++;
    free_any(m->q[i].p, r);
  }
  m->n = 0;
  pthread_mutex_unlock(&m->lock);
  return bad;
}

static size_t mt_size(uint64_t *r) {
  return rng_below(r, 100) == 0 ? rng_log(r, 16 * KiB, 256 * KiB) : rng_log(r, 1, 16 * KiB);
}

static void *mt_worker(void *arg) {
  mt_arg_t *a = arg;
  uint64_t r = 0x9b05688c2b3e6c1full + (uint64_t)a->index * 0x9E3779B97F4A7C15ull;
  size_t bad = 0, wrong_errno = 0, outside = 0, misaligned = 0;
  pthread_barrier_wait(a->start);
  for (size_t op = 0; op < a->ops; op++) {
    if (op % 64 == 0) bad += mailbox_drain(&a->boxes[a->index], &r);
    blk_t *s = &a->slots[rng_below(&r, MT_SLOTS)];
    size_t pick = rng_below(&r, 100);
    if (s->p != NULL) {
      if (!blk_ok(s)) bad++;
      if (pick < 25) {
        int to = (a->index + 1 + (int)rng_below(&r, MT_THREADS - 1)) % MT_THREADS;
        if (!mailbox_post(&a->boxes[to], s)) free_any(s->p, &r);
      } else if (pick < 45) {
        size_t size = mt_size(&r);
        errno = 0;
        void *q = pick < 35 ? bmm_heap_realloc(a->h, s->p, size) : bmm_realloc(s->p, size);
        if (q == NULL) {
          if (errno != ENOMEM) wrong_errno++;
          a->full++;
          if (!blk_ok(s)) bad++;
          continue;
        }
        size_t keep = size < s->size ? size : s->size;
        if (!pat_prefix_ok(q, keep, s->size, s->seed)) bad++;
        if (!in_range(a->rg, q, size)) outside++;
        if (s->align && !aligned_to(q, s->align)) misaligned++;
        s->p = q;
        s->size = size;
        s->seed = check_rand(&r);
        pat_fill(q, size, s->seed);
        continue;
      } else {
        free_any(s->p, &r);
      }
      s->p = NULL;
    } else {
      blk_t b = {NULL, mt_size(&r), 0, check_rand(&r)};
      errno = 0;
      if (pick < 15) {
        b.align = (size_t)32 << rng_below(&r, 8);
        b.p = bmm_heap_malloc_aligned(a->h, b.size, b.align);
      } else if (pick < 30) {
        b.p = bmm_heap_calloc(a->h, b.size, 1);
        if (b.p != NULL && !all_zero(b.p, b.size)) bad++;
      } else {
        b.p = bmm_heap_malloc(a->h, b.size);
      }
      if (b.p == NULL) {
        if (errno != ENOMEM) wrong_errno++;
        a->full++;
        continue;
      }
      if (!in_range(a->rg, b.p, b.size)) outside++;
      if (!aligned_to(b.p, b.align ? b.align : 16)) misaligned++;
      pat_fill(b.p, b.size, b.seed);
      *s = b;
    }
  }
  if (bad || wrong_errno || outside || misaligned)
    check_print(2, "fixed_heap: thread %d: %zu bad, %zu wrong errno, %zu outside, %zu misaligned\n",
                a->index, bad, wrong_errno, outside, misaligned);
  CHECK_EQ_SZ(bad, 0);
  CHECK_EQ_SZ(wrong_errno, 0);
  CHECK_EQ_SZ(outside, 0);
  CHECK_EQ_SZ(misaligned, 0);
  return NULL;
}

static void test_threads(void) {
  guarded_t g;
  CHECK(guarded_map(&g, 8, MT_HEAP, false));
  bmm_heap_t *h = bmm_heap_new_fixed(g.rg.mem, g.rg.size);
  CHECK(h != NULL);
  if (h == NULL) return;
  size_t l0 = largest_block(h, g.rg.size);
  static mailbox_t boxes[MT_THREADS];
  static mt_arg_t args[MT_THREADS];
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, MT_THREADS);
  mailboxes_init(boxes, MT_THREADS);
  for (int i = 0; i < MT_THREADS; i++)
    args[i] = (mt_arg_t){
        .h = h, .rg = &g.rg, .index = i, .ops = 40000, .boxes = boxes, .start = &start};
  run_threads(MT_THREADS, mt_worker, args, sizeof args[0]);
  pthread_barrier_destroy(&start);
  size_t n = 0, full = 0;
  blk_t *live = bmm_malloc(MT_THREADS * (MT_SLOTS + MT_BOX) * sizeof *live);
  for (int i = 0; i < MT_THREADS; i++) {
    full += args[i].full;
    for (size_t k = 0; k < MT_SLOTS; k++)
      if (args[i].slots[k].p != NULL) live[n++] = args[i].slots[k];
    for (size_t k = 0; k < boxes[i].n; k++)
      live[n++] = boxes[i].q[k];
    pthread_mutex_destroy(&boxes[i].lock);
  }
  CHECK(n > 0);
  visit_exact(h, live, n, "after the threads");
  check_layout(&g.rg, live, n, "after the threads");
  uint64_t r = 1;
  for (size_t k = 0; k < n; k++)
    free_any(live[k].p, &r);
  CHECK_EQ_SZ(visit_count(h), 0);
  CHECK_EQ_SZ(largest_block(h, g.rg.size), l0);
  bmm_heap_destroy(h);
  CHECK(guarded_canary_ok(&g));
  guarded_unmap(&g);
  bmm_free(live);
  (void)full; /* how often the heap was full varies with the interleaving */
  CHECK(bmm_heap_check());
}

/* ---- Running the cases ----------------------------------------------------- */

static const check_case_t cases[] = {
    {"args", test_args},     {"guarded", test_guarded}, {"in_block", test_in_block},
    {"static", test_static}, {"misuse", test_misuse},   {"threads", test_threads},
};

/* In a child: a block from malloc freed with bmm_free. Silent when malloc
 * is BrainMM's; otherwise bmm_free reports a foreign pointer and aborts. */
static void probe_malloc(void *arg) {
  (void)arg;
  void *p = malloc(64);
  bmm_free(p);
}

int main(int argc, char **argv) {
  {
    char out[1024];
    int lines = 0;
    int status = check_child(probe_malloc, NULL, out, sizeof out, &lines);
    std_is_bmm = WIFEXITED(status) && WEXITSTATUS(status) == 0 && lines == 0;
  }
  if (!std_is_bmm) printf("fixed_heap: malloc is not BrainMM's here: free/realloc not used\n");
  return check_cases_main("fixed_heap", cases, sizeof cases / sizeof *cases, argc, argv);
}
