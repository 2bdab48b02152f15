/* pattern.h: for the heap tests (heaps.c, fixed_heap.c): blocks filled
 * with a checkable pattern, random sizes, and the exact check of what
 * bmm_heap_visit reports. A block's bytes depend only on a
 * seed and their offset: every byte of the first 2 KiB, then every 509th,
 * and the last byte, so a prefix of a resized block checks out against the
 * old seed. Header-only; needs check.h first.
 */
#ifndef BRAINMM_TEST_PATTERN_H
#define BRAINMM_TEST_PATTERN_H

#include <brainmm.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct blk_s {
  void *p;
  size_t size;   /* bytes requested (the pattern covers them) */
  size_t align;  /* requested alignment, 0 for none */
  uint64_t seed; /* pattern seed */
} blk_t;

static inline size_t rng_below(uint64_t *s, size_t n) {
  return (size_t)(check_rand(s) % n);
}

/* Roughly log-uniform in [lo, hi]. */
static inline size_t rng_log(uint64_t *s, size_t lo, size_t hi) {
  if (lo < 1) lo = 1;
  if (hi <= lo) return lo;
  unsigned lo_bits = 63u - (unsigned)__builtin_clzll(lo);
  unsigned hi_bits = 63u - (unsigned)__builtin_clzll(hi);
  unsigned e = lo_bits + (unsigned)rng_below(s, hi_bits - lo_bits + 1);
  size_t band_lo = (size_t)1 << e, band_hi = ((size_t)2 << e) - 1;
  if (band_lo < lo) band_lo = lo;
  if (band_hi > hi) band_hi = hi;
  return band_lo + rng_below(s, band_hi - band_lo + 1);
}

static inline bool aligned_to(const void *p, size_t a) {
  return ((uintptr_t)p & (a - 1)) == 0;
}

/* A mailbox through which test threads hand blocks to each other. */
#define MT_BOX 512
typedef struct mailbox_s {
  pthread_mutex_t lock;
  size_t n;
  blk_t q[MT_BOX];
} mailbox_t;

static inline void mailboxes_init(mailbox_t *boxes, int n) {
  for (int i = 0; i < n; i++) {
    pthread_mutex_init(&boxes[i].lock, NULL);
    boxes[i].n = 0;
  }
}

/* Runs fn on each of the n arguments args[i] (elements of `size` bytes)
 * in a thread of its own and waits for them all. */
static inline void run_threads(int n, void *(*fn)(void *), void *args, size_t size) {
  pthread_t tid[n];
  for (int i = 0; i < n; i++)
    CHECK(pthread_create(&tid[i], NULL, fn, (char *)args + (size_t)i * size) == 0);
  for (int i = 0; i < n; i++) pthread_join(tid[i], NULL);
}

static inline bool mailbox_post(mailbox_t *m, const blk_t *b) {
  pthread_mutex_lock(&m->lock);
  bool ok = m->n < MT_BOX;
  if (ok) m->q[m->n++] = *b;
  pthread_mutex_unlock(&m->lock);
  return ok;
}

static inline size_t pat_next(size_t i) {
  return i < 2048 ? i + 1 : i + 509;
}

static inline uint8_t pat_byte(uint64_t seed, size_t i) {
  return (uint8_t)((seed >> ((i & 7) * 8)) + i * 131 + (i >> 11));
}

static inline void pat_fill(void *p, size_t n, uint64_t seed) {
  uint8_t *c = p;
  for (size_t i = 0; i < n; i = pat_next(i))
    c[i] = pat_byte(seed, i);
  if (n > 0) c[n - 1] = pat_byte(seed, n - 1);
}

/* Checks the first `keep` bytes of a block filled with n bytes of the
 * pattern (keep <= n). */
static inline bool pat_prefix_ok(const void *p, size_t keep, size_t n, uint64_t seed) {
  const uint8_t *c = p;
  for (size_t i = 0; i < keep; i = pat_next(i))
    if (c[i] != pat_byte(seed, i)) return false;
  return keep < n || n == 0 || c[n - 1] == pat_byte(seed, n - 1);
}

static inline bool pat_ok(const void *p, size_t n, uint64_t seed) {
  return pat_prefix_ok(p, n, n, seed);
}

static inline bool blk_ok(const blk_t *b) {
  return pat_ok(b->p, b->size, b->seed);
}

/* ---- Visiting --------------------------------------------------------------- */

typedef struct seen_s {
  const void *p;
  size_t usable;
} seen_t;

typedef struct visit_log_s {
  seen_t *seen;
  size_t cap, n; /* entries recorded (at most cap) */
  size_t calls;
  size_t stop_at; /* return false on this call (1-based); 0: never */
} visit_log_t;

static inline bool log_block(const void *block, size_t usable, void *arg) {
  visit_log_t *v = arg;
  v->calls++;
  if (v->n < v->cap) v->seen[v->n++] = (seen_t){block, usable};
  return v->stop_at == 0 || v->calls < v->stop_at;
}

static inline int cmp_seen(const void *a, const void *b) {
  uintptr_t x = (uintptr_t)((const seen_t *)a)->p, y = (uintptr_t)((const seen_t *)b)->p;
  return x < y ? -1 : x > y;
}

static inline int cmp_blk(const void *a, const void *b) {
  uintptr_t x = (uintptr_t)((const blk_t *)a)->p, y = (uintptr_t)((const blk_t *)b)->p;
  return x < y ? -1 : x > y;
}

/* Visits h and checks that it reports exactly the n blocks of want (in any
 * order; NULL entries are skipped), each once, with usable >= the size asked
 * for and == bmm_usable_size. Returns true when everything matched. */
static inline size_t visit_count(bmm_heap_t *h) {
  visit_log_t log = {NULL, 0, 0, 0, 0};
  bmm_heap_visit(h, log_block, &log);
  return log.calls;
}

static inline bool visit_exact(bmm_heap_t *h, const blk_t *want, size_t n, const char *where) {
  size_t live = 0;
  for (size_t i = 0; i < n; i++)
    live += want[i].p != NULL;
  blk_t *w = bmm_malloc((live + 1) * sizeof *w);
  size_t cap = live + 64;
  visit_log_t log = {bmm_malloc(cap * sizeof(seen_t)), cap, 0, 0, 0};
  if (w == NULL || log.seen == NULL) {
    CHECK(!"out of memory for the visit arrays");
    bmm_free(w);
    bmm_free(log.seen);
    return false;
  }
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (want[i].p != NULL) w[k++] = want[i];
  bool ret = bmm_heap_visit(h, log_block, &log);
  qsort(w, live, sizeof *w, cmp_blk);
  qsort(log.seen, log.n, sizeof *log.seen, cmp_seen);
  size_t missing = 0, extra = 0, twice = 0, small = 0, usable_differs = 0;
  size_t i = 0, j = 0;
  while (i < live || j < log.n) {
    if (j < log.n && j > 0 && log.seen[j].p == log.seen[j - 1].p) {
      twice++;
      j++;
      continue;
    }
    if (j == log.n || (i < live && (uintptr_t)w[i].p < (uintptr_t)log.seen[j].p)) {
      missing++;
      i++;
    } else if (i == live || (uintptr_t)log.seen[j].p < (uintptr_t)w[i].p) {
      extra++;
      j++;
    } else {
      if (log.seen[j].usable < w[i].size) small++;
      if (log.seen[j].usable != bmm_usable_size(w[i].p)) usable_differs++;
      i++;
      j++;
    }
  }
  bool ok = ret && log.calls == live && missing == 0 && extra == 0 && twice == 0 && small == 0 &&
            usable_differs == 0;
  if (!ok)
    check_print(2,
                "visit (%s): returned %d, %zu calls for %zu live blocks: %zu missing, "
                "%zu extra, %zu twice, %zu too small, %zu usable != bmm_usable_size\n",
                where, (int)ret, log.calls, live, missing, extra, twice, small, usable_differs);
  CHECK(ret);
  CHECK_EQ_SZ(log.calls, live);
  CHECK_EQ_SZ(missing, 0);
  CHECK_EQ_SZ(extra, 0);
  CHECK_EQ_SZ(twice, 0);
  CHECK_EQ_SZ(small, 0);
  CHECK_EQ_SZ(usable_differs, 0);
  bmm_free(w);
  bmm_free(log.seen);
  return ok;
}

#endif /* BRAINMM_TEST_PATTERN_H */
