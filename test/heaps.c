/* heaps.c: first-class heaps (API section 8: bmm_heap_new, bmm_heap_destroy,
 * bmm_heap_malloc/calloc/realloc/malloc_aligned, bmm_heap_visit), through
 * the public API only.
 *
 * Cases, each in a function of its own:
 *   basic        malloc for sizes 0 .. 20 MiB (small, medium, large, huge):
 *                16-aligned, bmm_usable_size >= size, the usable bytes
 *                writable without harming a neighbour; calloc zeroes reused
 *                memory, count * size overflow gives ENOMEM; realloc(NULL)
 *                allocates in the heap, grow and shrink across every size
 *                range keep the contents, a failed realloc leaves the block,
 *                realloc(p, 0) frees it as bmm_realloc does, an aligned
 *                block stays aligned; malloc_aligned 16 B .. 1 MiB, EINVAL
 *                for 0 and non-powers of two
 *   visit        random blocks of every kind in two heaps and the default
 *                heap, a random subset freed: bmm_heap_visit reports exactly
 *                the live blocks of the heap visited, once each, with the
 *                right usable size; it stops after k calls when fn returns
 *                false (and then returns false)
 *   threads      4 threads allocating from one heap at once, freeing their
 *                own blocks and blocks handed over by other threads, every
 *                block's pattern checked before its free; then visit from
 *                the main thread and destroy with blocks still live
 *   remote       blocks of a heap freed by other threads (remote frees
 *                pending), then visited and destroyed by a thread that never
 *                allocated from it
 *   destroy_live destroying a heap with live blocks leaves the default heap
 *                and another heap intact and working (a new heap possibly
 *                reusing the old one's memory included)
 *   many         200 heaps created, used and destroyed: resident and virtual
 *                memory stay bounded
 *   rss          64 MiB of 64-byte blocks: destroy gives the memory back at
 *                once (RSS drops by at least half of it)
 *   thread_exit  a thread that allocated from a heap exits; the heap goes on
 *                working from other threads (old and new) and is destroyed
 *   reuse        a thread that allocated from a heap stays alive while the
 *                heap is destroyed and a new one (maybe at the same address)
 *                is created: its allocations go to the new heap
 *   region_align blocks aligned to 128 MiB, 256 MiB and 1 GiB (the last two
 *                are region blocks, with no descriptor to link): visited,
 *                kept aligned by bmm_heap_realloc, freed with free, and
 *                given back by destroy; another heap's and the default
 *                heap's such blocks stay
 * Every case ends with bmm_heap_check(). Each runs in a child process so an
 * abort in one does not hide the others; `heaps CASE` runs one case in this
 * process instead (for a debugger).
 */
#define _GNU_SOURCE
#include <brainmm.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "pattern.h"

#define KiB ((size_t)1024)
#define MiB (KiB * 1024)

/* ---- Helpers -------------------------------------------------------------- */

/* Allocates b->size bytes in h (aligned when b->align), fills the pattern.
 * false (and b->p NULL) on failure or a misaligned pointer. */
static bool blk_alloc(bmm_heap_t *h, blk_t *b) {
  b->p = b->align ? bmm_heap_malloc_aligned(h, b->size, b->align) : bmm_heap_malloc(h, b->size);
  if (b->p == NULL) return false;
  if (!aligned_to(b->p, 16) || (b->align && !aligned_to(b->p, b->align))) return false;
  pat_fill(b->p, b->size, b->seed);
  return true;
}

/* Fields 0 and 1 of /proc/self/statm (pages): virtual and resident size,
 * in bytes. Plain system calls: no stdio buffer. */
static bool statm(size_t *vsize, size_t *rss) {
  char buf[256];
  int fd = open("/proc/self/statm", O_RDONLY);
  if (fd < 0) return false;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return false;
  buf[n] = 0;
  char *end;
  unsigned long long v = strtoull(buf, &end, 10);
  unsigned long long r = strtoull(end, NULL, 10);
  size_t ps = (size_t)sysconf(_SC_PAGESIZE);
  if (vsize) *vsize = (size_t)v * ps;
  if (rss) *rss = (size_t)r * ps;
  return true;
}

static size_t rss_now(void) {
  size_t r = 0;
  statm(NULL, &r);
  return r;
}

/* Number of blocks bmm_heap_visit reports. */
static size_t count_bad(const blk_t *b, size_t n) {
  size_t bad = 0;
  for (size_t i = 0; i < n; i++)
    if (b[i].p != NULL && !blk_ok(&b[i])) bad++;
  return bad;
}

static void free_all(blk_t *b, size_t n) {
  for (size_t i = 0; i < n; i++) {
    bmm_free(b[i].p);
    b[i].p = NULL;
  }
}

/* A random size: mostly small, some medium, a few large (> 64 KiB). */
static size_t mixed_size(uint64_t *r) {
  size_t pick = rng_below(r, 1000);
  if (pick < 650) return rng_below(r, 1025);
  if (pick < 950) return rng_log(r, 1025, 64 * KiB);
  return rng_log(r, 64 * KiB + 1, 512 * KiB);
}

/* ---- basic ------------------------------------------------------------------ */

static const size_t basic_sizes[] = {0,      1,       8,           15,      16,      17,    24,
                                     100,    255,     256,         1000,    1024,    1025,  2048,
                                     4000,   8192,    20000,       65535,   65536,   65537, 100000,
                                     300000, 1 * MiB, 1 * MiB + 1, 4 * MiB, 20 * MiB};
#define BASIC_COUNT (sizeof basic_sizes / sizeof *basic_sizes)

static void basic_malloc(bmm_heap_t *h) {
  blk_t b[BASIC_COUNT];
  size_t failed = 0, misaligned = 0, too_small = 0;
  for (size_t i = 0; i < BASIC_COUNT; i++) {
    b[i] = (blk_t){NULL, basic_sizes[i], 0, 0x1234 + i};
    b[i].p = bmm_heap_malloc(h, b[i].size);
    if (b[i].p == NULL) {
      failed++;
      continue;
    }
    if (!aligned_to(b[i].p, 16)) misaligned++;
    size_t u = bmm_usable_size(b[i].p);
    if (u < b[i].size) too_small++;
    /* Every usable byte is the caller's: write them all (sparsely above
     * 64 KiB), then the pattern over the requested bytes. */
    if (u <= 64 * KiB)
      memset(b[i].p, 0xEE, u);
    else
      for (size_t k = 0; k < u; k += 4096)
        ((uint8_t *)b[i].p)[k] = 0xEE;
    if (u > 0) ((uint8_t *)b[i].p)[u - 1] = 0xEE;
    pat_fill(b[i].p, b[i].size, b[i].seed);
  }
  CHECK_EQ_SZ(failed, 0);
  CHECK_EQ_SZ(misaligned, 0);
  CHECK_EQ_SZ(too_small, 0);
  CHECK_EQ_SZ(count_bad(b, BASIC_COUNT), 0);
  /* malloc(0) gives unique pointers. */
  void *z1 = bmm_heap_malloc(h, 0), *z2 = bmm_heap_malloc(h, 0);
  CHECK(z1 != NULL && z2 != NULL && z1 != z2);
  blk_t all[BASIC_COUNT + 2];
  memcpy(all, b, sizeof b);
  all[BASIC_COUNT] = (blk_t){z1, 0, 0, 0};
  all[BASIC_COUNT + 1] = (blk_t){z2, 0, 0, 0};
  visit_exact(h, all, BASIC_COUNT + 2, "basic malloc");
  free_all(all, BASIC_COUNT + 2);
  CHECK_EQ_SZ(visit_count(h), 0);

  bmm_free(CHECK_ERRNO(bmm_heap_malloc(h, SIZE_MAX), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_heap_malloc(h, SIZE_MAX - 4096), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_heap_malloc(h, (size_t)1 << 62), ENOMEM));
  CHECK_EQ_SZ(visit_count(h), 0);
}

static void basic_calloc(bmm_heap_t *h) {
  static const size_t sizes[] = {1, 16, 100, 1000, 5000, 40000, 65536, 70000, 1 * MiB, 5 * MiB};
  size_t failed = 0, dirty = 0;
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    /* Dirty memory of this size first, so calloc may get it back. */
    for (int round = 0; round < 2; round++) {
      void *d = bmm_heap_malloc(h, sizes[i]);
      if (d != NULL) memset(d, 0xA5, sizes[i]);
      bmm_free(d);
      size_t count = round == 0 ? 1 : sizes[i] / 8 + 1;
      size_t size = round == 0 ? sizes[i] : 8;
      uint8_t *c = bmm_heap_calloc(h, count, size);
      if (c == NULL) {
        failed++;
        continue;
      }
      if (!aligned_to(c, 16)) failed++;
      for (size_t k = 0; k < count * size; k++)
        if (c[k] != 0) {
          dirty++;
          break;
        }
      blk_t one = {c, count * size, 0, 0};
      if (i % 3 == 0) visit_exact(h, &one, 1, "calloc");
      bmm_free(c);
    }
  }
  CHECK_EQ_SZ(failed, 0);
  CHECK_EQ_SZ(dirty, 0);
  bmm_free(CHECK_ERRNO(bmm_heap_calloc(h, SIZE_MAX / 2 + 1, 2), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_heap_calloc(h, (size_t)1 << 33, (size_t)1 << 33), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_heap_calloc(h, 3, SIZE_MAX / 2), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_heap_calloc(h, SIZE_MAX, SIZE_MAX), ENOMEM));
  void *c0 = bmm_heap_calloc(h, 0, 100);
  CHECK(c0 != NULL);
  bmm_free(c0);
  CHECK_EQ_SZ(visit_count(h), 0);
}

static void basic_realloc(bmm_heap_t *h) {
  /* realloc(NULL) allocates in the heap. */
  blk_t b = {bmm_heap_realloc(h, NULL, 100), 100, 0, 77};
  CHECK(b.p != NULL && aligned_to(b.p, 16));
  if (b.p == NULL) return;
  pat_fill(b.p, b.size, b.seed);
  visit_exact(h, &b, 1, "realloc(NULL)");

  /* Grow and shrink through every size range; the prefix survives. */
  static const size_t chain[] = {5000,  70000, 2 * MiB, 20 * MiB, 21 * MiB, 3 * MiB,  3 * MiB - 1,
                                 50000, 1000,  40,      1,        65537,    17 * MiB, 64};
  size_t lost = 0, misaligned = 0, failed = 0;
  for (size_t i = 0; i < sizeof chain / sizeof *chain; i++) {
    void *q = bmm_heap_realloc(h, b.p, chain[i]);
    if (q == NULL) {
      failed++;
      continue;
    }
    if (!aligned_to(q, 16)) misaligned++;
    size_t keep = b.size < chain[i] ? b.size : chain[i];
    if (!pat_prefix_ok(q, keep, b.size, b.seed)) lost++;
    b.p = q;
    b.size = chain[i];
    b.seed++;
    pat_fill(b.p, b.size, b.seed);
    if (i % 4 == 3) visit_exact(h, &b, 1, "realloc chain");
  }
  CHECK_EQ_SZ(failed, 0);
  CHECK_EQ_SZ(misaligned, 0);
  CHECK_EQ_SZ(lost, 0);
  visit_exact(h, &b, 1, "realloc chain end");

  /* A failed realloc leaves the block as it was. */
  CHECK_ERRNO(bmm_heap_realloc(h, b.p, SIZE_MAX), ENOMEM);
  CHECK_ERRNO(bmm_heap_realloc(h, b.p, SIZE_MAX - 100), ENOMEM);
  CHECK(blk_ok(&b));
  visit_exact(h, &b, 1, "after failed realloc");

  /* Size 0 does what bmm_realloc does: frees the block, returns NULL. */
  void *ref = bmm_malloc(10);
  void *ref0 = bmm_realloc(ref, 0);
  void *z = bmm_heap_realloc(h, b.p, 0);
  CHECK(z == ref0);
  if (z == NULL) {
    CHECK_EQ_SZ(visit_count(h), 0);
  } else {
    blk_t zb = {z, 0, 0, 0};
    visit_exact(h, &zb, 1, "realloc(p, 0)");
    bmm_free(z);
  }
  bmm_free(ref0);

  /* An aligned block stays aligned through its reallocations. */
  static const size_t aligns[] = {64, 4096, 65536, 1 * MiB};
  static const size_t steps[] = {100000, 5, 3 * MiB, 2000, 20 * MiB, 100};
  size_t lost_align = 0;
  lost = failed = 0;
  for (size_t a = 0; a < sizeof aligns / sizeof *aligns; a++) {
    blk_t x = {NULL, 100, aligns[a], 900 + a};
    if (!blk_alloc(h, &x)) {
      failed++;
      bmm_free(x.p);
      continue;
    }
    for (size_t s = 0; s < sizeof steps / sizeof *steps; s++) {
      void *q = bmm_heap_realloc(h, x.p, steps[s]);
      if (q == NULL) {
        failed++;
        continue;
      }
      if (!aligned_to(q, aligns[a])) lost_align++;
      size_t keep = x.size < steps[s] ? x.size : steps[s];
      if (!pat_prefix_ok(q, keep, x.size, x.seed)) lost++;
      x.p = q;
      x.size = steps[s];
      pat_fill(x.p, x.size, x.seed);
    }
    visit_exact(h, &x, 1, "aligned realloc");
    bmm_free(x.p);
  }
  CHECK_EQ_SZ(failed, 0);
  CHECK_EQ_SZ(lost, 0);
  CHECK_EQ_SZ(lost_align, 0);
  CHECK_EQ_SZ(visit_count(h), 0);
}

static void basic_aligned(bmm_heap_t *h) {
  static const size_t sizes[] = {0, 1, 24, 100, 1000, 5000, 65536, 70000, 1 * MiB, 4 * MiB};
  size_t failed = 0, misaligned = 0, too_small = 0, bad = 0;
  blk_t keep[64];
  size_t kept = 0;
  for (size_t align = 16; align <= 1 * MiB; align *= 2) {
    for (size_t s = 0; s <= sizeof sizes / sizeof *sizes; s++) {
      size_t size = s < sizeof sizes / sizeof *sizes ? sizes[s] : 20 * MiB;
      if (size == 20 * MiB && align != 16 && align != 4096 && align != 1 * MiB) continue;
      blk_t x = {NULL, size, align, align * 31 + s};
      if (!blk_alloc(h, &x)) {
        if (x.p == NULL)
          failed++;
        else
          misaligned++;
        bmm_free(x.p);
        continue;
      }
      if (bmm_usable_size(x.p) < size) too_small++;
      if (!blk_ok(&x)) bad++;
      /* Keep a few, small enough, for the visit below. */
      if (size <= 70000 && (align + s) % 3 == 0 && kept < 64)
        keep[kept++] = x;
      else
        bmm_free(x.p);
    }
  }
  /* Alignments below 16 (powers of two) mean 16. */
  for (size_t align = 1; align < 16; align *= 2) {
    void *p = bmm_heap_malloc_aligned(h, 40, align);
    if (p == NULL || !aligned_to(p, 16)) failed++;
    if (p != NULL && kept < 64) keep[kept++] = (blk_t){p, 40, 0, 0};
    pat_fill(p, p ? 40 : 0, 0);
  }
  CHECK_EQ_SZ(failed, 0);
  CHECK_EQ_SZ(misaligned, 0);
  CHECK_EQ_SZ(too_small, 0);
  CHECK_EQ_SZ(bad, 0);
  CHECK_EQ_SZ(count_bad(keep, kept), 0);
  visit_exact(h, keep, kept, "aligned");
  free_all(keep, kept);

  static const size_t bad_aligns[] = {0, 3, 24, 48, 100, 4097, ((size_t)1 << 20) + 16, SIZE_MAX};
  for (size_t i = 0; i < sizeof bad_aligns / sizeof *bad_aligns; i++) {
    void *p = CHECK_ERRNO(bmm_heap_malloc_aligned(h, 100, bad_aligns[i]), EINVAL);
    bmm_free(p);
  }
  bmm_free(CHECK_ERRNO(bmm_heap_malloc_aligned(h, SIZE_MAX - 100, 64), ENOMEM));
  CHECK_EQ_SZ(visit_count(h), 0);
}

static void test_basic(void) {
  bmm_heap_t *h = bmm_heap_new();
  CHECK(h != NULL);
  if (h == NULL) return;
  CHECK_EQ_SZ(visit_count(h), 0);
  CHECK(bmm_heap_visit(h, log_block, &(visit_log_t){NULL, 0, 0, 0, 0})); /* empty: true */
  basic_malloc(h);
  CHECK(bmm_heap_check());
  basic_calloc(h);
  CHECK(bmm_heap_check());
  basic_realloc(h);
  CHECK(bmm_heap_check());
  basic_aligned(h);
  CHECK(bmm_heap_check());
  /* Destroying an empty heap, and a heap with nothing ever allocated. */
  bmm_heap_destroy(h);
  bmm_heap_t *e = bmm_heap_new();
  CHECK(e != NULL);
  if (e != NULL) bmm_heap_destroy(e);
  CHECK(bmm_heap_check());
}

/* ---- visit ------------------------------------------------------------------ */

#define VISIT_BLOCKS 3000

static void test_visit(void) {
  uint64_t r = 0x5eed0001;
  bmm_heap_t *h = bmm_heap_new(), *other = bmm_heap_new();
  CHECK(h != NULL && other != NULL);
  if (h == NULL || other == NULL) return;
  blk_t *mine = bmm_calloc(VISIT_BLOCKS, sizeof *mine);
  blk_t *theirs = bmm_calloc(VISIT_BLOCKS, sizeof *theirs);
  blk_t *dflt = bmm_calloc(VISIT_BLOCKS, sizeof *dflt);
  size_t failed = 0;
  for (size_t i = 0; i < VISIT_BLOCKS; i++) {
    size_t pick = rng_below(&r, 100);
    blk_t b = {NULL, mixed_size(&r), 0, check_rand(&r)};
    if (pick < 8) b.align = (size_t)32 << rng_below(&r, 12); /* 32 .. 64 KiB */
    if (i == VISIT_BLOCKS / 2) b.size = 20 * MiB + 12345;    /* one huge block */
    if (!blk_alloc(h, &b)) failed++;
    mine[i] = b;
    /* Interleaved: blocks of another heap and of the default heap. */
    blk_t o = {NULL, mixed_size(&r), 0, check_rand(&r)};
    if (!blk_alloc(other, &o)) failed++;
    theirs[i] = o;
    if (i % 2 == 0) {
      blk_t d = {bmm_malloc(b.size % 5000), b.size % 5000, 0, check_rand(&r)};
      if (d.p == NULL) failed++;
      pat_fill(d.p, d.p ? d.size : 0, d.seed);
      dflt[i] = d;
    }
  }
  CHECK_EQ_SZ(failed, 0);
  visit_exact(h, mine, VISIT_BLOCKS, "all allocated");
  visit_exact(other, theirs, VISIT_BLOCKS, "other heap");

  /* Free a random subset, resize some others (in the heap). */
  size_t live = VISIT_BLOCKS;
  for (size_t i = 0; i < VISIT_BLOCKS; i++) {
    size_t pick = rng_below(&r, 100);
    if (pick < 45 && i != VISIT_BLOCKS / 2) {
      CHECK(blk_ok(&mine[i]));
      bmm_free(mine[i].p);
      mine[i].p = NULL;
      live--;
    } else if (pick < 55 && i != VISIT_BLOCKS / 2) {
      size_t size = mixed_size(&r);
      void *q = bmm_heap_realloc(h, mine[i].p, size);
      if (q == NULL && size > 0) {
        failed++;
        continue;
      }
      if (q == NULL) live--; /* realloc(p, 0) freed it */
      size_t keep = size < mine[i].size ? size : mine[i].size;
      if (!pat_prefix_ok(q, keep, mine[i].size, mine[i].seed)) failed++;
      mine[i].p = q;
      mine[i].size = size;
      pat_fill(q, size, mine[i].seed);
    }
    if (pick % 3 == 0 && theirs[i].p != NULL) {
      bmm_free(theirs[i].p);
      theirs[i].p = NULL;
    }
  }
  CHECK_EQ_SZ(failed, 0);
  CHECK(bmm_heap_check());
  visit_exact(h, mine, VISIT_BLOCKS, "after frees");
  visit_exact(other, theirs, VISIT_BLOCKS, "other heap after frees");
  CHECK_EQ_SZ(count_bad(mine, VISIT_BLOCKS), 0);
  CHECK_EQ_SZ(count_bad(theirs, VISIT_BLOCKS), 0);
  CHECK_EQ_SZ(count_bad(dflt, VISIT_BLOCKS), 0);

  /* Early stop: false on call k ends the walk after exactly k calls. */
  size_t stops[] = {1, 2, live / 2, live - 1, live};
  for (size_t s = 0; s < sizeof stops / sizeof *stops; s++) {
    visit_log_t log = {NULL, 0, 0, 0, stops[s]};
    bool ret = bmm_heap_visit(h, log_block, &log);
    CHECK(!ret);
    CHECK_EQ_SZ(log.calls, stops[s]);
  }
  visit_log_t all = {NULL, 0, 0, 0, live + 1}; /* never reached: true */
  CHECK(bmm_heap_visit(h, log_block, &all));
  CHECK_EQ_SZ(all.calls, live);

  /* A heap whose blocks are all freed reports nothing. */
  free_all(theirs, VISIT_BLOCKS);
  CHECK_EQ_SZ(visit_count(other), 0);
  visit_exact(h, mine, VISIT_BLOCKS, "after the other heap emptied");
  bmm_heap_destroy(other);
  visit_exact(h, mine, VISIT_BLOCKS, "after the other heap destroyed");
  CHECK_EQ_SZ(count_bad(mine, VISIT_BLOCKS), 0);
  CHECK_EQ_SZ(count_bad(dflt, VISIT_BLOCKS), 0);
  bmm_heap_destroy(h); /* blocks still live */
  CHECK_EQ_SZ(count_bad(dflt, VISIT_BLOCKS), 0);
  free_all(dflt, VISIT_BLOCKS);
  bmm_free(mine);
  bmm_free(theirs);
  bmm_free(dflt);
  CHECK(bmm_heap_check());
}

/* ---- threads ---------------------------------------------------------------- */

#define MT_THREADS 4
#define MT_SLOTS 256

typedef struct mt_arg_s {
  bmm_heap_t *h;
  int index;
  size_t ops;
  mailbox_t *boxes; /* MT_THREADS of them */
  pthread_barrier_t *start;
  blk_t slots[MT_SLOTS];
} mt_arg_t;

/* Checks and frees every block posted to m; returns how many were bad. */
static size_t mailbox_drain(mailbox_t *m) {
  size_t bad = 0;
  pthread_mutex_lock(&m->lock);
  for (size_t i = 0; i < m->n; i++) {
    if (!blk_ok(&m->q[i])) bad++;
    bmm_free(m->q[i].p);
  }
  m->n = 0;
  pthread_mutex_unlock(&m->lock);
  return bad;
}

static size_t mt_size(uint64_t *r) {
  size_t pick = rng_below(r, 1000);
  if (pick < 800) return rng_below(r, 1025);
  if (pick < 990) return rng_log(r, 1025, 64 * KiB);
  return rng_log(r, 64 * KiB + 1, 300 * KiB);
}

static void *mt_worker(void *arg) {
  mt_arg_t *a = arg;
  uint64_t r = 0xabcdef12345ull + (uint64_t)a->index * 0x9E3779B97F4A7C15ull;
  size_t bad = 0, failed = 0;
  pthread_barrier_wait(a->start);
  for (size_t op = 0; op < a->ops; op++) {
    if (op % 64 == 0) bad += mailbox_drain(&a->boxes[a->index]);
    blk_t *s = &a->slots[rng_below(&r, MT_SLOTS)];
    size_t pick = rng_below(&r, 100);
    if (s->p != NULL) {
      if (!blk_ok(s)) bad++;
      if (pick < 25) { /* hand it to another thread, which frees it */
        int to = (a->index + 1 + (int)rng_below(&r, MT_THREADS - 1)) % MT_THREADS;
        if (!mailbox_post(&a->boxes[to], s)) bmm_free(s->p);
      } else if (pick < 40) { /* resize it */
        size_t size = mt_size(&r);
        void *q = bmm_heap_realloc(a->h, s->p, size);
        if (q == NULL && size > 0) {
          failed++;
          continue;
        }
        size_t keep = size < s->size ? size : s->size;
        if (q != NULL && !pat_prefix_ok(q, keep, s->size, s->seed)) bad++;
        s->p = q;
        s->size = size;
        s->seed = check_rand(&r);
        pat_fill(q, q ? size : 0, s->seed);
        continue;
      } else {
        bmm_free(s->p);
      }
      s->p = NULL;
    } else {
      blk_t b = {NULL, mt_size(&r), 0, check_rand(&r)};
      if (pick < 10) {
        b.align = (size_t)32 << rng_below(&r, 8);
      } else if (pick < 20) {
        uint8_t *c = bmm_heap_calloc(a->h, 1, b.size);
        if (c == NULL) {
          failed++;
          continue;
        }
        for (size_t k = 0; k < b.size; k += 61)
          if (c[k] != 0) {
            bad++;
            break;
          }
        b.p = c;
        pat_fill(c, b.size, b.seed);
        *s = b;
        continue;
      }
      if (!blk_alloc(a->h, &b)) failed++;
      *s = b;
    }
  }
  if (bad || failed)
    check_print(2, "heaps: thread %d: %zu bad blocks, %zu failed calls\n", a->index, bad, failed);
  CHECK_EQ_SZ(bad, 0);
  CHECK_EQ_SZ(failed, 0);
  return NULL;
}

static void test_threads(void) {
  bmm_heap_t *h = bmm_heap_new();
  CHECK(h != NULL);
  if (h == NULL) return;
  static mailbox_t boxes[MT_THREADS];
  static mt_arg_t args[MT_THREADS];
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, MT_THREADS);
  mailboxes_init(boxes, MT_THREADS);
  for (int i = 0; i < MT_THREADS; i++)
    args[i] = (mt_arg_t){.h = h, .index = i, .ops = 40000, .boxes = boxes, .start = &start};
  run_threads(MT_THREADS, mt_worker, args, sizeof args[0]);
  pthread_barrier_destroy(&start);

  /* Every block still live: the threads' slots and the undelivered mail. */
  size_t n = 0;
  blk_t *live = bmm_malloc((MT_THREADS * (MT_SLOTS + MT_BOX)) * sizeof *live);
  for (int i = 0; i < MT_THREADS; i++) {
    for (size_t k = 0; k < MT_SLOTS; k++)
      if (args[i].slots[k].p != NULL) live[n++] = args[i].slots[k];
    for (size_t k = 0; k < boxes[i].n; k++)
      live[n++] = boxes[i].q[k];
  }
  CHECK(n > 0);
  visit_exact(h, live, n, "after the threads");
  CHECK_EQ_SZ(count_bad(live, n), 0);
  /* Free a third of them from here, visit again, then destroy with the
   * rest live. */
  for (size_t k = 0; k < n; k += 3) {
    bmm_free(live[k].p);
    live[k].p = NULL;
  }
  visit_exact(h, live, n, "after main freed some");
  CHECK(bmm_heap_check());
  bmm_heap_destroy(h);
  for (int i = 0; i < MT_THREADS; i++)
    pthread_mutex_destroy(&boxes[i].lock);
  bmm_free(live);
  /* The default heap and a new heap still work. */
  bmm_heap_t *h2 = bmm_heap_new();
  CHECK(h2 != NULL);
  blk_t b[100];
  uint64_t r = 99;
  size_t failed = 0;
  for (int i = 0; i < 100; i++) {
    b[i] = (blk_t){NULL, mt_size(&r), 0, check_rand(&r)};
    if (!blk_alloc(h2, &b[i])) failed++;
  }
  CHECK_EQ_SZ(failed, 0);
  visit_exact(h2, b, 100, "new heap after destroy");
  CHECK_EQ_SZ(count_bad(b, 100), 0);
  bmm_heap_destroy(h2);
  CHECK(bmm_heap_check());
}

/* ---- remote ----------------------------------------------------------------- */

#define REMOTE_BLOCKS 8000
#define REMOTE_THREADS 4

typedef struct remote_arg_s {
  bmm_heap_t *h;
  blk_t *blocks;
  size_t n;
  int index;
} remote_arg_t;

/* Frees three blocks out of every four of its share. */
static void *remote_freer(void *arg) {
  remote_arg_t *a = arg;
  size_t bad = 0;
  for (size_t i = (size_t)a->index; i < a->n; i += REMOTE_THREADS) {
    if (i % 4 == 3) continue;
    if (!blk_ok(&a->blocks[i])) bad++;
    bmm_free(a->blocks[i].p);
    a->blocks[i].p = NULL;
  }
  CHECK_EQ_SZ(bad, 0);
  return NULL;
}

/* Visits and destroys a heap it never allocated from. */
static void *remote_destroyer(void *arg) {
  remote_arg_t *a = arg;
  visit_exact(a->h, a->blocks, a->n, "remote frees pending, from a fresh thread");
  CHECK_EQ_SZ(count_bad(a->blocks, a->n), 0);
  bmm_heap_destroy(a->h);
  CHECK(bmm_heap_check());
  return NULL;
}

static void test_remote(void) {
  for (int round = 0; round < 2; round++) {
    bmm_heap_t *h = bmm_heap_new();
    CHECK(h != NULL);
    if (h == NULL) return;
    blk_t *blocks = bmm_calloc(REMOTE_BLOCKS, sizeof *blocks);
    uint64_t r = 0x7e307e + (uint64_t)round;
    size_t failed = 0;
    for (size_t i = 0; i < REMOTE_BLOCKS; i++) {
      /* Round 1: all small, so that whole pages empty through remote frees. */
      blocks[i] =
          (blk_t){NULL, round == 0 ? mt_size(&r) : 16 + rng_below(&r, 200), 0, check_rand(&r)};
      if (!blk_alloc(h, &blocks[i])) failed++;
    }
    CHECK_EQ_SZ(failed, 0);
    remote_arg_t args[REMOTE_THREADS];
    for (int i = 0; i < REMOTE_THREADS; i++) args[i] = (remote_arg_t){h, blocks, REMOTE_BLOCKS, i};
    run_threads(REMOTE_THREADS, remote_freer, args, sizeof args[0]);
    /* This thread has neither allocated nor freed since: the remote frees
     * are still pending in its view of the heap. */
    remote_arg_t d = {h, blocks, REMOTE_BLOCKS, 0};
    pthread_t destroyer;
    CHECK(pthread_create(&destroyer, NULL, remote_destroyer, &d) == 0);
    pthread_join(destroyer, NULL);
    bmm_free(blocks);
    CHECK(bmm_heap_check());
  }
  /* The allocating thread goes on with the default heap and a new heap. */
  bmm_heap_t *h2 = bmm_heap_new();
  blk_t b[500];
  uint64_t r = 5;
  size_t failed = 0;
  for (int i = 0; i < 500; i++) {
    b[i] = (blk_t){NULL, mt_size(&r), 0, check_rand(&r)};
    if (i % 2 == 0 ? !blk_alloc(h2, &b[i]) : (b[i].p = bmm_malloc(b[i].size)) == NULL) failed++;
    if (i % 2 == 1 && b[i].p != NULL) pat_fill(b[i].p, b[i].size, b[i].seed);
  }
  CHECK_EQ_SZ(failed, 0);
  CHECK_EQ_SZ(count_bad(b, 500), 0);
  CHECK_EQ_SZ(visit_count(h2), 250);
  free_all(b, 500);
  CHECK_EQ_SZ(visit_count(h2), 0);
  bmm_heap_destroy(h2);
  CHECK(bmm_heap_check());
}

/* ---- destroy_live ----------------------------------------------------------- */

#define DL_BLOCKS 1500

static void fill_blocks(bmm_heap_t *h, blk_t *b, size_t n, uint64_t *r) {
  size_t failed = 0;
  for (size_t i = 0; i < n; i++) {
    b[i] = (blk_t){NULL, mixed_size(r), i % 10 == 0 ? (size_t)64 << rng_below(r, 8) : 0,
                   check_rand(r)};
    if (h != NULL) {
      if (!blk_alloc(h, &b[i])) failed++;
    } else {
      b[i].p = b[i].align ? bmm_malloc_aligned(b[i].size, b[i].align) : bmm_malloc(b[i].size);
      if (b[i].p == NULL)
        failed++;
      else
        pat_fill(b[i].p, b[i].size, b[i].seed);
    }
  }
  CHECK_EQ_SZ(failed, 0);
}

/* Random frees and allocations in h (or the default heap when h is NULL). */
static void churn(bmm_heap_t *h, blk_t *b, size_t n, size_t ops, uint64_t *r) {
  size_t bad = 0, failed = 0;
  for (size_t op = 0; op < ops; op++) {
    blk_t *s = &b[rng_below(r, n)];
    if (s->p != NULL) {
      if (!blk_ok(s)) bad++;
      bmm_free(s->p);
      s->p = NULL;
      continue;
    }
    *s = (blk_t){NULL, mixed_size(r), 0, check_rand(r)};
    if (h != NULL) {
      if (!blk_alloc(h, s)) failed++;
    } else if ((s->p = bmm_malloc(s->size)) == NULL) {
      failed++;
    } else {
      pat_fill(s->p, s->size, s->seed);
    }
  }
  CHECK_EQ_SZ(bad, 0);
  CHECK_EQ_SZ(failed, 0);
}

static void test_destroy_live(void) {
  uint64_t r = 0xde57;
  bmm_heap_t *h1 = bmm_heap_new(), *h2 = bmm_heap_new();
  CHECK(h1 != NULL && h2 != NULL);
  if (h1 == NULL || h2 == NULL) return;
  blk_t *b1 = bmm_calloc(DL_BLOCKS, sizeof *b1);
  blk_t *b2 = bmm_calloc(DL_BLOCKS, sizeof *b2);
  blk_t *bd = bmm_calloc(DL_BLOCKS, sizeof *bd);
  blk_t *b3 = bmm_calloc(DL_BLOCKS, sizeof *b3);
  fill_blocks(h1, b1, DL_BLOCKS, &r);
  fill_blocks(h2, b2, DL_BLOCKS, &r);
  fill_blocks(NULL, bd, DL_BLOCKS, &r);
  void *huge1 = bmm_heap_malloc(h1, 20 * MiB);
  CHECK(huge1 != NULL);
  /* Some of h1's blocks freed by now, some of h2's too. */
  for (size_t i = 0; i < DL_BLOCKS; i += 3) {
    bmm_free(b1[i].p);
    b1[i].p = NULL;
    bmm_free(b2[i + 1 < DL_BLOCKS ? i + 1 : i].p);
    b2[i + 1 < DL_BLOCKS ? i + 1 : i].p = NULL;
  }
  CHECK(bmm_heap_check());
  bmm_heap_destroy(h1);
  CHECK(bmm_heap_check());
  CHECK_EQ_SZ(count_bad(b2, DL_BLOCKS), 0);
  CHECK_EQ_SZ(count_bad(bd, DL_BLOCKS), 0);
  visit_exact(h2, b2, DL_BLOCKS, "other heap after a destroy");

  /* A new heap (which may reuse h1's memory) next to the survivors. */
  bmm_heap_t *h3 = bmm_heap_new();
  CHECK(h3 != NULL);
  if (h3 != NULL) fill_blocks(h3, b3, DL_BLOCKS, &r);
  CHECK_EQ_SZ(count_bad(b2, DL_BLOCKS), 0);
  CHECK_EQ_SZ(count_bad(bd, DL_BLOCKS), 0);

  /* Lots of work in each. */
  churn(h2, b2, DL_BLOCKS, 30000, &r);
  churn(NULL, bd, DL_BLOCKS, 30000, &r);
  if (h3 != NULL) churn(h3, b3, DL_BLOCKS, 30000, &r);
  CHECK_EQ_SZ(count_bad(b2, DL_BLOCKS), 0);
  CHECK_EQ_SZ(count_bad(bd, DL_BLOCKS), 0);
  CHECK_EQ_SZ(count_bad(b3, DL_BLOCKS), 0);
  visit_exact(h2, b2, DL_BLOCKS, "h2 after churn");
  if (h3 != NULL) visit_exact(h3, b3, DL_BLOCKS, "h3 after churn");
  CHECK(bmm_heap_check());
  bmm_heap_destroy(h2);
  CHECK_EQ_SZ(count_bad(bd, DL_BLOCKS), 0);
  CHECK_EQ_SZ(count_bad(b3, DL_BLOCKS), 0);
  if (h3 != NULL) visit_exact(h3, b3, DL_BLOCKS, "h3 after h2 destroyed");
  free_all(bd, DL_BLOCKS);
  if (h3 != NULL) bmm_heap_destroy(h3);
  bmm_free(b1);
  bmm_free(b2);
  bmm_free(b3);
  bmm_free(bd);
  CHECK(bmm_heap_check());
}

/* ---- many ------------------------------------------------------------------- */

#define MANY_HEAPS 200
#define MANY_BLOCKS 300

static void many_round(int round, uint64_t *r) {
  bmm_heap_t *h = bmm_heap_new();
  CHECK(h != NULL);
  if (h == NULL) return;
  blk_t b[MANY_BLOCKS + 2];
  size_t failed = 0;
  for (size_t i = 0; i < MANY_BLOCKS; i++) {
    b[i] = (blk_t){NULL, rng_log(r, 1, 8192), 0, check_rand(r)};
    if (!blk_alloc(h, &b[i])) failed++;
  }
  b[MANY_BLOCKS] = (blk_t){NULL, 200 * KiB, 0, 1};
  if (!blk_alloc(h, &b[MANY_BLOCKS])) failed++;
  b[MANY_BLOCKS + 1] = (blk_t){NULL, round % 10 == 0 ? 20 * MiB : 3000, 4096, 2};
  if (!blk_alloc(h, &b[MANY_BLOCKS + 1])) failed++;
  CHECK_EQ_SZ(failed, 0);
  for (size_t i = 0; i < MANY_BLOCKS; i += 2) {
    bmm_free(b[i].p);
    b[i].p = NULL;
  }
  if (round % 20 == 0) {
    visit_exact(h, b, MANY_BLOCKS + 2, "many");
    CHECK_EQ_SZ(count_bad(b, MANY_BLOCKS + 2), 0);
  }
  bmm_heap_destroy(h);
}

static void test_many(void) {
  uint64_t r = 0x3a7;
  /* A few rounds first, so that one-time costs are in the baseline. */
  for (int i = 0; i < 5; i++)
    many_round(i + 1, &r);
  size_t v0 = 0, r0 = 0, v1 = 0, r1 = 0;
  CHECK(statm(&v0, &r0));
  for (int i = 0; i < MANY_HEAPS; i++)
    many_round(i, &r);
  CHECK(statm(&v1, &r1));
  size_t rss_growth = r1 > r0 ? r1 - r0 : 0, vm_growth = v1 > v0 ? v1 - v0 : 0;
  if ((CHECK_RSS_SHOWS_PURGE && rss_growth > 64 * MiB) || vm_growth > 8192 * MiB)
    check_print(2, "heaps: many: RSS %zu -> %zu KiB, virtual %zu -> %zu MiB\n", r0 / KiB, r1 / KiB,
                v0 / MiB, v1 / MiB);
  if (CHECK_RSS_SHOWS_PURGE) CHECK(rss_growth <= 64 * MiB);
  CHECK(vm_growth <= 8192 * MiB); /* destroyed heaps' address space comes back */
  CHECK(bmm_heap_check());
  /* Many heaps alive at once, destroyed in another order. */
  bmm_heap_t *hs[64];
  size_t failed = 0;
  for (int i = 0; i < 64; i++) {
    hs[i] = bmm_heap_new();
    if (hs[i] == NULL || bmm_heap_malloc(hs[i], 100 + (size_t)i) == NULL) failed++;
  }
  CHECK_EQ_SZ(failed, 0);
  for (int i = 0; i < 64; i++)
    if (hs[i] != NULL) CHECK_EQ_SZ(visit_count(hs[i]), 1);
  /* Round robin over more heaps than a thread is likely to cache views of:
   * each allocation finds this thread's view of its heap again. */
  for (int round = 0; round < 3; round++)
    for (int i = 0; i < 64; i++)
      if (hs[i] != NULL && bmm_heap_malloc(hs[i], 5000 * (size_t)round + 16) == NULL) failed++;
  CHECK_EQ_SZ(failed, 0);
  size_t wrong = 0;
  for (int i = 0; i < 64; i++)
    if (hs[i] != NULL && visit_count(hs[i]) != 4) wrong++;
  CHECK_EQ_SZ(wrong, 0);
  for (int i = 1; i < 64; i += 2)
    if (hs[i] != NULL) bmm_heap_destroy(hs[i]);
  for (int i = 0; i < 64; i += 2)
    if (hs[i] != NULL) bmm_heap_destroy(hs[i]);
  CHECK(bmm_heap_check());
}

/* ---- rss -------------------------------------------------------------------- */

static void test_rss(void) {
  const size_t total = 64 * MiB, size = 64;
  bmm_heap_t *h = bmm_heap_new();
  CHECK(h != NULL);
  if (h == NULL) return;
  size_t before = rss_now(), failed = 0;
  for (size_t i = 0; i < total / size; i++) {
    void *p = bmm_heap_malloc(h, size);
    if (p == NULL) {
      failed++;
      continue;
    }
    memset(p, (int)(i & 0xff) | 1, size);
  }
  CHECK_EQ_SZ(failed, 0);
  size_t full = rss_now();
  CHECK(full >= before + total / 2); /* the blocks really are resident */
  bmm_heap_destroy(h);
  size_t after = rss_now();
  size_t dropped = full > after ? full - after : 0;
  if (dropped < total / 2)
    check_print(2, "heaps: rss: %zu KiB before, %zu KiB full, %zu KiB after destroy\n",
                before / KiB, full / KiB, after / KiB);
  CHECK(dropped >= total / 2);
  CHECK(bmm_heap_check());
  /* And the memory is usable again. */
  bmm_heap_t *h2 = bmm_heap_new();
  CHECK(h2 != NULL);
  void *p = h2 ? bmm_heap_malloc(h2, 64) : NULL;
  CHECK(p != NULL);
  if (h2 != NULL) bmm_heap_destroy(h2);
}

/* ---- thread_exit ------------------------------------------------------------ */

#define TE_BLOCKS 2000

typedef struct te_arg_s {
  bmm_heap_t *h;
  blk_t *blocks; /* the blocks this thread allocates */
  size_t n;
  blk_t *frees; /* blocks of others it frees, every other one */
  size_t nfrees;
  uint64_t seed;
} te_arg_t;

static void *te_worker(void *arg) {
  te_arg_t *a = arg;
  uint64_t r = a->seed;
  size_t failed = 0, bad = 0;
  for (size_t i = 0; i < a->n; i++) {
    a->blocks[i] = (blk_t){NULL, mt_size(&r), i % 16 == 0 ? 256 : 0, check_rand(&r)};
    if (!blk_alloc(a->h, &a->blocks[i])) failed++;
  }
  /* Frees a quarter of its own blocks before exiting. */
  for (size_t i = 0; i < a->n; i += 4) {
    if (!blk_ok(&a->blocks[i])) bad++;
    bmm_free(a->blocks[i].p);
    a->blocks[i].p = NULL;
  }
  for (size_t i = 0; i < a->nfrees; i += 2) {
    if (a->frees[i].p == NULL) continue;
    if (!blk_ok(&a->frees[i])) bad++;
    bmm_free(a->frees[i].p);
    a->frees[i].p = NULL;
  }
  CHECK_EQ_SZ(failed, 0);
  CHECK_EQ_SZ(bad, 0);
  return NULL;
}

static void test_thread_exit(void) {
  bmm_heap_t *h = bmm_heap_new();
  CHECK(h != NULL);
  if (h == NULL) return;
  /* all[0 .. TE) thread A's, [TE .. 2TE) main's, [2TE .. 3TE) thread B's. */
  blk_t *all = bmm_calloc(3 * TE_BLOCKS, sizeof *all);
  blk_t *a_blocks = all, *m_blocks = all + TE_BLOCKS, *b_blocks = all + 2 * TE_BLOCKS;
  te_arg_t a = {h, a_blocks, TE_BLOCKS, NULL, 0, 0xaaaa};
  pthread_t t;
  CHECK(pthread_create(&t, NULL, te_worker, &a) == 0);
  pthread_join(t, NULL); /* A has exited with three quarters of its blocks live */
  visit_exact(h, all, 3 * TE_BLOCKS, "after thread A exited");
  CHECK_EQ_SZ(count_bad(all, 3 * TE_BLOCKS), 0);

  /* The main thread frees some of A's blocks and allocates its own. */
  uint64_t r = 0xbbbb;
  for (size_t i = 1; i < TE_BLOCKS; i += 4) {
    bmm_free(a_blocks[i].p);
    a_blocks[i].p = NULL;
  }
  size_t failed = 0;
  for (size_t i = 0; i < TE_BLOCKS; i++) {
    m_blocks[i] = (blk_t){NULL, mt_size(&r), 0, check_rand(&r)};
    if (!blk_alloc(h, &m_blocks[i])) failed++;
  }
  CHECK_EQ_SZ(failed, 0);
  visit_exact(h, all, 3 * TE_BLOCKS, "main allocated");
  CHECK(bmm_heap_check());

  /* A new thread B allocates from the heap and frees some of A's blocks
   * (and with them, memory whose owner is gone), then exits too. */
  te_arg_t b = {h, b_blocks, TE_BLOCKS, a_blocks, TE_BLOCKS, 0xcccc};
  CHECK(pthread_create(&t, NULL, te_worker, &b) == 0);
  pthread_join(t, NULL);
  visit_exact(h, all, 3 * TE_BLOCKS, "after thread B exited");
  CHECK_EQ_SZ(count_bad(all, 3 * TE_BLOCKS), 0);

  /* Main frees most of the rest and allocates again (into freed space). */
  for (size_t i = 0; i < 3 * TE_BLOCKS; i++)
    if (i % 5 != 0) {
      bmm_free(all[i].p);
      all[i].p = NULL;
    }
  for (size_t i = 0; i < TE_BLOCKS; i += 5) {
    if (m_blocks[i + 1].p != NULL) continue;
    m_blocks[i + 1] = (blk_t){NULL, mt_size(&r), 0, check_rand(&r)};
    if (!blk_alloc(h, &m_blocks[i + 1])) failed++;
  }
  CHECK_EQ_SZ(failed, 0);
  visit_exact(h, all, 3 * TE_BLOCKS, "after main's second round");
  CHECK_EQ_SZ(count_bad(all, 3 * TE_BLOCKS), 0);
  CHECK(bmm_heap_check());
  bmm_heap_destroy(h);
  bmm_free(all);
  CHECK(bmm_heap_check());
}

/* ---- reuse ------------------------------------------------------------------ */

typedef struct reuse_arg_s {
  bmm_heap_t *volatile h;
  pthread_barrier_t step;
  blk_t blocks[2][200];
} reuse_arg_t;

static void *reuse_worker(void *arg) {
  reuse_arg_t *a = arg;
  uint64_t r = 0x4e05e;
  size_t failed = 0;
  for (int round = 0; round < 2; round++) {
    pthread_barrier_wait(&a->step); /* a heap is ready */
    for (int i = 0; i < 200; i++) {
      a->blocks[round][i] = (blk_t){NULL, mt_size(&r), 0, check_rand(&r)};
      if (!blk_alloc(a->h, &a->blocks[round][i])) failed++;
    }
    /* Free some right away so the thread's view has free space cached. */
    for (int i = 0; i < 200; i += 3) {
      bmm_free(a->blocks[round][i].p);
      a->blocks[round][i].p = NULL;
    }
    pthread_barrier_wait(&a->step); /* done with it */
  }
  CHECK_EQ_SZ(failed, 0);
  return NULL;
}

static void test_reuse(void) {
  static reuse_arg_t a;
  memset(&a, 0, sizeof a);
  pthread_barrier_init(&a.step, NULL, 2);
  pthread_t t;
  CHECK(pthread_create(&t, NULL, reuse_worker, &a) == 0);
  bmm_heap_t *h1 = bmm_heap_new();
  CHECK(h1 != NULL);
  a.h = h1;
  pthread_barrier_wait(&a.step);
  pthread_barrier_wait(&a.step);
  visit_exact(h1, a.blocks[0], 200, "worker's blocks in h1");
  bmm_heap_destroy(h1); /* the worker is still alive and has a view of h1 */
  bmm_heap_t *h2 = bmm_heap_new();
  CHECK(h2 != NULL);
  a.h = h2;
  pthread_barrier_wait(&a.step);
  pthread_barrier_wait(&a.step);
  pthread_join(t, NULL);
  visit_exact(h2, a.blocks[1], 200, "worker's blocks in a new heap");
  CHECK_EQ_SZ(count_bad(a.blocks[1], 200), 0);
  free_all(a.blocks[1], 200);
  CHECK_EQ_SZ(visit_count(h2), 0);
  bmm_heap_destroy(h2);
  pthread_barrier_destroy(&a.step);
  CHECK(bmm_heap_check());
}

static void test_region_align(void) {
  bmm_heap_t *h = bmm_heap_new(), *other = bmm_heap_new();
  if (!CHECK(h != NULL && other != NULL)) return;
  static const size_t aligns[] = {(size_t)128 << 20, (size_t)256 << 20, (size_t)1 << 30};
  blk_t b[3], o = {NULL, 5000, (size_t)256 << 20, 40};
  size_t got = 0;
  for (size_t i = 0; i < 3; i++) {
    b[i] = (blk_t){NULL, 1000 + i, aligns[i], 30 + i};
    got += CHECK(blk_alloc(h, &b[i]));
  }
  CHECK(blk_alloc(other, &o));
  void *mine = bmm_malloc_aligned(3000, (size_t)256 << 20); /* the default heap's */
  CHECK(mine != NULL && aligned_to(mine, (size_t)256 << 20));
  if (got == 3) {
    visit_exact(h, b, 3, "region aligned");
    visit_exact(other, &o, 1, "the other heap's region block");
    /* Grown past its usable size: it moves within the heap, aligned. */
    size_t grow = bmm_usable_size(b[1].p) + 1;
    void *q = bmm_heap_realloc(h, b[1].p, grow);
    CHECK(q != NULL && aligned_to(q, aligns[1]));
    if (q != NULL) {
      CHECK(pat_prefix_ok(q, b[1].size, b[1].size, b[1].seed));
      b[1].p = q;
      b[1].size = grow;
      pat_fill(q, grow, b[1].seed);
    }
    visit_exact(h, b, 3, "region aligned, after bmm_heap_realloc");
    bmm_free(b[0].p);
    b[0].p = NULL;
    visit_exact(h, b, 3, "region aligned, one freed");
    CHECK(blk_ok(&b[1]) && blk_ok(&b[2]));
  }
  bmm_heap_destroy(h);
  /* Destroy gave the heap's region blocks back (they are no block now),
   * and left the others'. */
  for (size_t i = 1; i < 3; i++)
    if (b[i].p != NULL) CHECK_EQ_SZ(bmm_usable_size(b[i].p), 0);
  CHECK(blk_ok(&o));
  visit_exact(other, &o, 1, "the other heap's region block, after destroy");
  CHECK(mine != NULL && bmm_usable_size(mine) >= 3000);
  bmm_free(mine);
  bmm_heap_destroy(other);
  CHECK(bmm_heap_check());
}

/* ---- Running the cases ----------------------------------------------------- */

static const check_case_t cases[] = {
    {"basic", test_basic},
    {"visit", test_visit},
    {"threads", test_threads},
    {"remote", test_remote},
    {"destroy_live", test_destroy_live},
    {"many", test_many},
    {"rss", test_rss},
    {"thread_exit", test_thread_exit},
    {"reuse", test_reuse},
    {"region_align", test_region_align},
};

int main(int argc, char **argv) {
  return check_cases_main("heaps", cases, sizeof cases / sizeof *cases, argc, argv);
}
