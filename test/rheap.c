/* rheap.c: the relocatable heap (API section 9, src/rheap.c).
 *
 * Cases, each in a function of its own:
 *   arguments     bad arguments and sizes: EINVAL / ENOMEM, nothing changed
 *   basics        an OS-memory heap: 16-aligned locked pointers, bmm_rsize,
 *                 nested lock counts, EBUSY for freeing a locked handle
 *   compact       fill a heap, free every other block, lock some, compact:
 *                 every block's contents intact, locked blocks where they
 *                 were, the bytes moved exactly what sliding implies, and
 *                 the freed space usable as one block afterwards
 *   ralloc        a fragmented heap whose free space suffices only in sum:
 *                 bmm_ralloc compacts instead of failing
 *   rrealloc      shrink and grow in place (into a hole, into the
 *                 wilderness), grow by moving, a locked block that cannot
 *                 grow in place (ENOMEM, untouched), growth after compaction,
 *                 growth by rotating the blocks after it below it, refused
 *                 while one of them is locked
 *   notify        the low threshold with LATER (no compaction) and NOW
 *                 (compaction), the high one compacting even with LATER,
 *                 one call per upward crossing, re-armed by falling below
 *   misuse        stale handles (freed, entry reused, deleted heap), a
 *                 foreign pointer and unlocking an unlocked handle: in a
 *                 child, one line and SIGABRT; with abort_on_error=0, one
 *                 line each, EINVAL (bmm_rsize 0) and a heap that still
 *                 checks out
 *   guarded       a caller buffer at an odd address between PROT_NONE
 *                 pages: a random workload to exhaustion never faults
 *   threads       4 threads allocating, locking, writing, verifying and
 *                 freeing in one heap while a fifth compacts in a loop
 * White-box: bmm__rheap_counters and bmm__rheap_check from src/rheap.c.
 * Usage: rheap [OPS] (operations per thread in `threads`, default 20000).
 */
#define _GNU_SOURCE
#include <brainmm.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

/* src/rheap.c internals. */
void bmm__rheap_counters(bmm_rheap_t *rh, size_t *used, size_t *capacity, size_t *compactions,
                         size_t *bytes_moved);
bool bmm__rheap_check(bmm_rheap_t *rh);

/* ---- Helpers -------------------------------------------------------------- */

static size_t rng_below(uint64_t *s, size_t n) {
  return (size_t)(check_rand(s) % n);
}

/* Fills [p, p + size) with a pattern derived from seed. */
static void pattern_fill(void *p, size_t size, uint64_t seed) {
  unsigned char *c = p;
  for (size_t i = 0; i < size; i++)
    c[i] = (unsigned char)((seed * 131 + i * 7 + (i >> 8)) ^ (seed >> 8));
}

static bool pattern_ok(const void *p, size_t size, uint64_t seed) {
  const unsigned char *c = p;
  for (size_t i = 0; i < size; i++)
    if (c[i] != (unsigned char)((seed * 131 + i * 7 + (i >> 8)) ^ (seed >> 8))) return false;
  return true;
}

/* Bytes of heap a block of `size` takes: an 8-byte header, rounded up to
 * 16, at least 32 (src/rheap.c). */
static size_t block_bytes(size_t size) {
  size_t b = (size + 8 + 15) & ~(size_t)15;
  return b < 32 ? 32 : b;
}

static void *lock_ptr(bmm_handle_t *h) {
  void *p = NULL;
  if (bmm_rlock(h, &p) != 0) return NULL;
  return p;
}

/* Locks h, fills its first `size` bytes, unlocks. */
static bool write_handle(bmm_handle_t *h, size_t size, uint64_t seed) {
  void *p = lock_ptr(h);
  if (p == NULL) return false;
  pattern_fill(p, size, seed);
  return bmm_runlock(h) == 0;
}

static bool verify_handle(bmm_handle_t *h, size_t size, uint64_t seed) {
  void *p = lock_ptr(h);
  if (p == NULL) return false;
  bool ok = pattern_ok(p, size, seed);
  return bmm_runlock(h) == 0 && ok;
}

static size_t compactions_of(bmm_rheap_t *rh) {
  size_t n = 0;
  bmm__rheap_counters(rh, NULL, NULL, &n, NULL);
  return n;
}

static size_t moved_of(bmm_rheap_t *rh) {
  size_t n = 0;
  bmm__rheap_counters(rh, NULL, NULL, NULL, &n);
  return n;
}

static void *map_bytes(size_t bytes) {
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

/* ---- arguments ---------------------------------------------------------- */

static void test_arguments(void) {
  bmm_handle_t *h = NULL;
  errno = 0;
  CHECK(bmm_rheap_new(NULL, 0) == NULL && errno == EINVAL);
  char small[100];
  errno = 0;
  CHECK(bmm_rheap_new(small, sizeof small) == NULL && errno == EINVAL);
  CHECK(bmm_rheap_new(NULL, SIZE_MAX - 10) == NULL && errno == ENOMEM);
  bmm_rheap_t *rh = bmm_rheap_new(NULL, 65536);
  CHECK(rh != NULL);
  if (rh == NULL) return;
  CHECK_EQ_LONG(bmm_ralloc(NULL, &h, 16), EINVAL);
  CHECK_EQ_LONG(bmm_ralloc(rh, NULL, 16), EINVAL);
  errno = 0;
  CHECK_EQ_LONG(bmm_ralloc(rh, &h, SIZE_MAX), ENOMEM);
  CHECK(errno == ENOMEM);
  CHECK_EQ_LONG(bmm_ralloc(rh, &h, SIZE_MAX - 8), ENOMEM);
  CHECK_EQ_LONG(bmm_ralloc(rh, &h, 65536), ENOMEM); /* more than the heap holds */
  CHECK_EQ_LONG(bmm_rlock(NULL, NULL), EINVAL);
  CHECK_EQ_LONG(bmm_runlock(NULL), EINVAL);
  CHECK_EQ_LONG(bmm_rrealloc(NULL, 10), EINVAL);
  CHECK_EQ_LONG(bmm_rfree(NULL), 0);
  CHECK_EQ_SZ(bmm_rsize(NULL), 0);
  CHECK_EQ_SZ(bmm_rcompact(NULL), 0);
  CHECK_EQ_LONG(bmm_ralloc(rh, &h, 0), 0);
  CHECK_EQ_SZ(bmm_rsize(h), 0);
  void *p = NULL;
  CHECK_EQ_LONG(bmm_rlock(h, NULL), EINVAL);
  CHECK_EQ_LONG(bmm_rlock(h, &p), 0);
  CHECK(p != NULL && ((uintptr_t)p & 15) == 0);
  CHECK_EQ_LONG(bmm_runlock(h), 0);
  CHECK_EQ_LONG(bmm_rrealloc(h, SIZE_MAX), ENOMEM);
  CHECK_EQ_SZ(bmm_rsize(h), 0);
  CHECK_EQ_LONG(bmm_rfree(h), 0);
  CHECK(bmm__rheap_check(rh));
  bmm_rheap_delete(rh);
  bmm_rheap_delete(NULL);
}

/* ---- basics -------------------------------------------------------------- */

static void test_basics(void) {
  bmm_rheap_t *rh = bmm_rheap_new(NULL, 1 << 20);
  CHECK(rh != NULL);
  if (rh == NULL) return;
  enum { N = 200 };
  bmm_handle_t *h[N];
  for (size_t i = 0; i < N; i++) {
    size_t size = 1 + i * 37 % 3000;
    CHECK_EQ_LONG(bmm_ralloc(rh, &h[i], size), 0);
    CHECK_EQ_SZ(bmm_rsize(h[i]), size);
    void *p = lock_ptr(h[i]);
    CHECK(p != NULL && ((uintptr_t)p & 15) == 0);
    if (p) pattern_fill(p, size, i);
    CHECK_EQ_LONG(bmm_runlock(h[i]), 0);
  }
  for (size_t i = 0; i < N; i++)
    CHECK(verify_handle(h[i], 1 + i * 37 % 3000, i));

  /* Nested locks: the block stays put until the last unlock. */
  for (size_t i = 0; i < N; i += 2)
    CHECK_EQ_LONG(bmm_rfree(h[i]), 0);
  void *a = NULL, *b = NULL, *c = NULL;
  CHECK_EQ_LONG(bmm_rlock(h[N - 1], &a), 0);
  CHECK_EQ_LONG(bmm_rlock(h[N - 1], &b), 0);
  CHECK_EQ_LONG(bmm_rlock(h[N - 1], &c), 0);
  CHECK(a == b && b == c);
  CHECK_EQ_LONG(bmm_rfree(h[N - 1]), EBUSY); /* locked: not freed */
  CHECK_EQ_LONG(bmm_runlock(h[N - 1]), 0);
  CHECK(bmm_rcompact(rh) > 0);
  CHECK(lock_ptr(h[N - 1]) == a); /* still locked twice, now three times */
  CHECK_EQ_LONG(bmm_runlock(h[N - 1]), 0);
  CHECK_EQ_LONG(bmm_runlock(h[N - 1]), 0);
  bmm_rcompact(rh);
  CHECK(lock_ptr(h[N - 1]) == a);
  CHECK_EQ_LONG(bmm_runlock(h[N - 1]), 0);
  CHECK_EQ_LONG(bmm_runlock(h[N - 1]), 0); /* count back to 0 */
  bmm_rcompact(rh);
  void *moved = lock_ptr(h[N - 1]);
  CHECK(moved != NULL && moved < a); /* unlocked, it slid down */
  CHECK_EQ_LONG(bmm_runlock(h[N - 1]), 0);
  for (size_t i = 1; i < N; i += 2)
    CHECK(verify_handle(h[i], 1 + i * 37 % 3000, i));
  CHECK(bmm__rheap_check(rh));
  for (size_t i = 1; i < N; i += 2)
    CHECK_EQ_LONG(bmm_rfree(h[i]), 0);
  size_t used = 0;
  bmm__rheap_counters(rh, &used, NULL, NULL, NULL);
  CHECK(used < 2048 + N * 32); /* header, hole bins and the handle table */
  bmm_rheap_delete(rh);
}

/* ---- compact ------------------------------------------------------------- */

static void test_compact(void) {
  size_t bytes = 1 << 20;
  void *buf = map_bytes(bytes);
  CHECK(buf != NULL);
  if (buf == NULL) return;
  bmm_rheap_t *rh = bmm_rheap_new(buf, bytes);
  CHECK(rh != NULL);
  enum { MAX = 40000 };
  static bmm_handle_t *h[MAX];
  static size_t size[MAX];
  static void *pinned_at[MAX];

  /* 1. Equal blocks, every other freed, nothing locked: every survivor
   * after the first hole slides by exactly its block length. */
  size_t n = 0;
  while (n < MAX && bmm_ralloc(rh, &h[n], 100) == 0) {
    size[n] = 100;
    CHECK(write_handle(h[n], 100, n));
    n++;
  }
  CHECK(n > 1000 && n < MAX);
  CHECK(bmm__rheap_check(rh));
  for (size_t i = 0; i < n; i += 2)
    CHECK_EQ_LONG(bmm_rfree(h[i]), 0);
  size_t survivors = n / 2;
  size_t moved = bmm_rcompact(rh);
  CHECK_EQ_SZ(moved, survivors * 112); /* 8-byte header + 100, rounded up to 16 */
  CHECK(bmm__rheap_check(rh));
  for (size_t i = 1; i < n; i += 2)
    CHECK(verify_handle(h[i], 100, i));
  CHECK_EQ_SZ(bmm_rcompact(rh), 0); /* nothing left to move */
  /* The freed half is one free run now. */
  bmm_handle_t *big = NULL;
  CHECK_EQ_LONG(bmm_ralloc(rh, &big, (n - survivors) * 112 - 4096), 0);
  CHECK_EQ_LONG(bmm_rfree(big), 0);
  for (size_t i = 1; i < n; i += 2)
    CHECK_EQ_LONG(bmm_rfree(h[i]), 0);
  CHECK(bmm__rheap_check(rh));

  /* 2. Random sizes, fragmented, every 7th survivor locked. */
  uint64_t s = 12345;
  n = 0;
  size_t asked = 0;
  while (n < MAX) {
    size_t sz = 1 + rng_below(&s, 700);
    if (bmm_ralloc(rh, &h[n], sz) != 0) break;
    size[n] = sz;
    asked += sz;
    CHECK(write_handle(h[n], sz, n * 3 + 1));
    n++;
  }
  CHECK(n > 1000 && n < MAX);
  size_t live = 0;
  for (size_t i = 0; i < n; i++) {
    pinned_at[i] = NULL;
    if (i % 2 == 0) {
      CHECK_EQ_LONG(bmm_rfree(h[i]), 0);
      h[i] = NULL;
    } else {
      live += block_bytes(size[i]);
      if (i % 7 == 1) pinned_at[i] = lock_ptr(h[i]);
    }
  }
  size_t before = moved_of(rh);
  moved = bmm_rcompact(rh);
  CHECK(moved > 0 && moved <= live);
  CHECK_EQ_SZ(moved_of(rh) - before, moved);
  CHECK(bmm__rheap_check(rh));
  for (size_t i = 1; i < n; i += 2) {
    if (pinned_at[i] != NULL) {
      void *p = lock_ptr(h[i]);
      CHECK(p == pinned_at[i]);
      CHECK(pattern_ok(p, size[i], i * 3 + 1));
      CHECK_EQ_LONG(bmm_runlock(h[i]), 0);
    } else {
      CHECK(verify_handle(h[i], size[i], i * 3 + 1));
    }
  }
  /* Unpinned, a second compaction closes the gaps the pins left. */
  for (size_t i = 1; i < n; i += 2)
    if (pinned_at[i] != NULL) CHECK_EQ_LONG(bmm_runlock(h[i]), 0);
  moved = bmm_rcompact(rh);
  CHECK(moved > 0);
  CHECK(bmm__rheap_check(rh));
  for (size_t i = 1; i < n; i += 2)
    CHECK(verify_handle(h[i], size[i], i * 3 + 1));
  /* With nothing locked, everything free is one run: a block of all of it
   * fits (less the 8 bytes the alignment of the run's end may cost). */
  size_t used = 0;
  bmm__rheap_counters(rh, &used, NULL, NULL, NULL);
  CHECK_EQ_LONG(bmm_ralloc(rh, &big, bytes - used - 16), 0);
  CHECK_EQ_LONG(bmm_rfree(big), 0);
  CHECK_EQ_LONG(bmm_ralloc(rh, &big, bytes - used + 1), ENOMEM);
  for (size_t i = 1; i < n; i += 2)
    CHECK_EQ_LONG(bmm_rfree(h[i]), 0);
  CHECK(bmm__rheap_check(rh));
  (void)asked;
  bmm_rheap_delete(rh);
  munmap(buf, bytes);
}

/* ---- ralloc compacts before ENOMEM -------------------------------------- */

static void test_ralloc_compacts(void) {
  bmm_rheap_t *rh = bmm_rheap_new(NULL, 256 << 10);
  CHECK(rh != NULL);
  if (rh == NULL) return;
  enum { MAX = 4096 };
  static bmm_handle_t *h[MAX];
  size_t n = 0;
  while (n < MAX && bmm_ralloc(rh, &h[n], 240) == 0) {
    CHECK(write_handle(h[n], 240, n + 7));
    n++;
  }
  CHECK(n > 100 && n < MAX);
  for (size_t i = 0; i < n; i += 2)
    CHECK_EQ_LONG(bmm_rfree(h[i]), 0);
  /* Holes of 256 bytes each; a request of 8 KiB fits only after compaction. */
  size_t c0 = compactions_of(rh);
  bmm_handle_t *big = NULL;
  CHECK_EQ_LONG(bmm_ralloc(rh, &big, 8192), 0);
  CHECK(compactions_of(rh) == c0 + 1);
  CHECK(write_handle(big, 8192, 99));
  for (size_t i = 1; i < n; i += 2)
    CHECK(verify_handle(h[i], 240, i + 7));
  /* Now more than the free total: ENOMEM after one more compaction. */
  size_t used = 0, capacity = 0;
  bmm__rheap_counters(rh, &used, &capacity, NULL, NULL);
  errno = 0;
  CHECK_EQ_LONG(bmm_ralloc(rh, &big, capacity), ENOMEM);
  CHECK(errno == ENOMEM);
  CHECK(verify_handle(big, 8192, 99));
  CHECK(bmm__rheap_check(rh));
  bmm_rheap_delete(rh);
}

/* ---- rrealloc ----------------------------------------------------------------- */

static void test_rrealloc(void) {
  bmm_rheap_t *rh = bmm_rheap_new(NULL, 1 << 20);
  CHECK(rh != NULL);
  if (rh == NULL) return;
  bmm_handle_t *a, *b, *c, *d;
  CHECK_EQ_LONG(bmm_ralloc(rh, &a, 1000), 0);
  CHECK_EQ_LONG(bmm_ralloc(rh, &b, 1000), 0);
  CHECK_EQ_LONG(bmm_ralloc(rh, &c, 1000), 0);
  CHECK(write_handle(a, 1000, 1) && write_handle(b, 1000, 2) && write_handle(c, 1000, 3));
  void *pa = lock_ptr(a);
  CHECK_EQ_LONG(bmm_runlock(a), 0);
  void *pb = lock_ptr(b);
  CHECK_EQ_LONG(bmm_runlock(b), 0);
  void *pc = lock_ptr(c);
  CHECK_EQ_LONG(bmm_runlock(c), 0);

  /* Shrink in place; the tail becomes a hole. */
  CHECK_EQ_LONG(bmm_rrealloc(a, 200), 0);
  CHECK_EQ_SZ(bmm_rsize(a), 200);
  CHECK(lock_ptr(a) == pa);
  CHECK_EQ_LONG(bmm_runlock(a), 0);
  CHECK(verify_handle(a, 200, 1));
  /* Grow back into that hole, in place. */
  CHECK_EQ_LONG(bmm_rrealloc(a, 900), 0);
  CHECK(lock_ptr(a) == pa);
  CHECK_EQ_LONG(bmm_runlock(a), 0);
  CHECK(verify_handle(a, 200, 1));
  /* The last block grows into the wilderness, in place. */
  CHECK_EQ_LONG(bmm_rrealloc(c, 50000), 0);
  CHECK(lock_ptr(c) == pc);
  CHECK_EQ_LONG(bmm_runlock(c), 0);
  CHECK(verify_handle(c, 1000, 3));
  /* b is between live blocks: growing moves it (while unlocked). */
  CHECK_EQ_LONG(bmm_rrealloc(b, 5000), 0);
  void *pb2 = lock_ptr(b);
  CHECK(pb2 != pb && pb2 != NULL);
  CHECK(pattern_ok(pb2, 1000, 2));
  CHECK_EQ_LONG(bmm_runlock(b), 0);
  CHECK_EQ_SZ(bmm_rsize(b), 5000);
  /* A locked block that cannot grow where it is: ENOMEM, untouched. */
  CHECK_EQ_LONG(bmm_ralloc(rh, &d, 3000), 0); /* after b: keeps it from being last */
  void *pb3 = lock_ptr(b);
  errno = 0;
  CHECK_EQ_LONG(bmm_rrealloc(b, 200000), ENOMEM);
  CHECK(errno == ENOMEM);
  CHECK_EQ_SZ(bmm_rsize(b), 5000);
  CHECK(pb3 == pb2 && pattern_ok(pb3, 1000, 2));
  CHECK_EQ_LONG(bmm_rrealloc(b, 4000), 0); /* shrinking a locked block is fine */
  CHECK_EQ_LONG(bmm_runlock(b), 0);
  CHECK(bmm__rheap_check(rh));
  CHECK_EQ_LONG(bmm_rfree(d), 0);

  /* Growth that needs a compaction first: fill, punch holes, grow. */
  enum { MAX = 4096 };
  static bmm_handle_t *h[MAX];
  size_t n = 0;
  while (n < MAX && bmm_ralloc(rh, &h[n], 480) == 0) {
    CHECK(write_handle(h[n], 480, n + 100));
    n++;
  }
  CHECK(n > 100 && n < MAX);
  for (size_t i = 0; i < n; i += 2)
    CHECK_EQ_LONG(bmm_rfree(h[i]), 0);
  size_t c0 = compactions_of(rh);
  CHECK_EQ_LONG(bmm_rrealloc(h[1], 60000), 0);
  CHECK(compactions_of(rh) == c0 + 1);
  CHECK(verify_handle(h[1], 480, 101));
  for (size_t i = 3; i < n; i += 2)
    CHECK(verify_handle(h[i], 480, i + 100));
  CHECK(verify_handle(a, 200, 1) && verify_handle(b, 1000, 2) && verify_handle(c, 1000, 3));
  CHECK(bmm__rheap_check(rh));
  bmm_rheap_delete(rh);

  /* Growth with too little room to move, nothing to compact, and the
   * block not last: the blocks after it rotate below it. A locked block
   * after it forbids that. */
  rh = bmm_rheap_new(NULL, 1 << 20);
  CHECK(rh != NULL);
  if (rh == NULL) return;
  bmm_handle_t *big;
  CHECK_EQ_LONG(bmm_ralloc(rh, &big, 400000), 0);
  CHECK(write_handle(big, 400000, 5));
  n = 0;
  size_t used = 0, capacity = 0;
  bmm__rheap_counters(rh, &used, &capacity, NULL, NULL);
  while (n < MAX && used < 900000) {
    CHECK_EQ_LONG(bmm_ralloc(rh, &h[n], 200 + n % 300), 0);
    CHECK(write_handle(h[n], 200 + n % 300, n + 1000));
    n++;
    bmm__rheap_counters(rh, &used, NULL, NULL, NULL);
  }
  void *pin = lock_ptr(h[n / 2]);
  errno = 0;
  CHECK_EQ_LONG(bmm_rrealloc(big, 450000), ENOMEM);
  CHECK(errno == ENOMEM);
  CHECK(lock_ptr(h[n / 2]) == pin);
  CHECK(bmm_runlock(h[n / 2]) == 0 && bmm_runlock(h[n / 2]) == 0);
  CHECK_EQ_SZ(bmm_rsize(big), 400000);
  void *before = lock_ptr(big);
  CHECK(bmm_runlock(big) == 0);
  CHECK_EQ_LONG(bmm_rrealloc(big, 450000), 0);
  void *after = lock_ptr(big);
  CHECK(after != NULL && after > before); /* now the last block */
  CHECK(bmm_runlock(big) == 0);
  CHECK(verify_handle(big, 400000, 5));
  for (size_t i = 0; i < n; i++)
    CHECK(verify_handle(h[i], 200 + i % 300, i + 1000));
  CHECK(bmm__rheap_check(rh));
  bmm_rheap_delete(rh);
}

/* ---- notify -------------------------------------------------------------- */

typedef struct notify_state_s {
  int calls[2];
  int answer[2];
  bmm_rheap_t *rh;
  bool bad_heap;
} notify_state_t;

static int on_fullness(bmm_rheap_t *rh, int level, void *arg) {
  notify_state_t *st = arg;
  if (rh != st->rh || (level != BMM_FULLNESS_LOW && level != BMM_FULLNESS_HIGH)) {
    st->bad_heap = true;
    return BMM_COMPACT_LATER;
  }
  st->calls[level]++;
  return st->answer[level];
}

static int reentrant_calls;

/* Allocates, frees and compacts in the heap that called it. */
static int on_fullness_reentrant(bmm_rheap_t *rh, int level, void *arg) {
  (void)arg;
  bmm_handle_t *h = NULL;
  if (level == BMM_FULLNESS_LOW && bmm_ralloc(rh, &h, 64) == 0 && bmm_rsize(h) == 64 &&
      bmm_rfree(h) == 0) {
    bmm_rcompact(rh);
    reentrant_calls++;
  }
  return BMM_COMPACT_LATER;
}

static void test_notify(void) {
  bmm_rheap_t *rh = bmm_rheap_new(NULL, 1 << 20);
  CHECK(rh != NULL);
  if (rh == NULL) return;
  size_t capacity = 0;
  bmm__rheap_counters(rh, NULL, &capacity, NULL, NULL);
  notify_state_t st = {.rh = rh, .answer = {BMM_COMPACT_LATER, BMM_COMPACT_LATER}};
  bmm_rheap_notify(rh, 0.5, 0.8, on_fullness, &st);
  /* Blocks of 1 KiB (1040 with the header) and 8 bytes of table each (a
   * little more with the chunk headers);
   * two small ones at the bottom, whose holes 1 KiB requests cannot fill. */
  enum { MAX = 1024 };
  static bmm_handle_t *h[MAX];
  bmm_handle_t *small[2];
  size_t per = 1040 + 9, n = 0;
  size_t below_low = (size_t)(0.5 * (double)capacity) / per - 4;
  CHECK_EQ_LONG(bmm_ralloc(rh, &small[0], 100), 0);
  CHECK_EQ_LONG(bmm_ralloc(rh, &h[n++], 1024), 0);
  CHECK_EQ_LONG(bmm_ralloc(rh, &small[1], 100), 0);
  while (n < below_low) {
    CHECK_EQ_LONG(bmm_ralloc(rh, &h[n], 1024), 0);
    n++;
  }
  CHECK(st.calls[0] == 0 && st.calls[1] == 0);
  CHECK_EQ_LONG(bmm_rfree(small[0]), 0); /* a hole at the bottom */
  size_t c0 = compactions_of(rh);
  /* Cross low with LATER: one call, no compaction. */
  while (st.calls[0] == 0 && n < MAX) {
    CHECK_EQ_LONG(bmm_ralloc(rh, &h[n], 1024), 0);
    n++;
  }
  CHECK_EQ_LONG(st.calls[0], 1);
  CHECK_EQ_SZ(compactions_of(rh), c0);
  /* Above low: no more calls. */
  CHECK_EQ_LONG(bmm_ralloc(rh, &h[n], 1024), 0);
  n++;
  CHECK_EQ_LONG(st.calls[0], 1);
  CHECK_EQ_SZ(compactions_of(rh), c0);
  /* Fall below low, rise again: armed again; NOW compacts. */
  while (n > below_low) {
    n--;
    CHECK_EQ_LONG(bmm_rfree(h[n]), 0);
  }
  st.answer[0] = BMM_COMPACT_NOW;
  size_t m0 = moved_of(rh);
  while (st.calls[0] == 1 && n < MAX) {
    CHECK_EQ_LONG(bmm_ralloc(rh, &h[n], 1024), 0);
    n++;
  }
  CHECK_EQ_LONG(st.calls[0], 2);
  CHECK_EQ_SZ(compactions_of(rh), c0 + 1);
  CHECK(moved_of(rh) > m0); /* the hole at the bottom was closed */
  /* Cross high with LATER: compacts regardless. Two blocks more first,
   * so that the new hole does not take the fill below low again. */
  for (int k = 0; k < 2; k++) {
    CHECK_EQ_LONG(bmm_ralloc(rh, &h[n], 1024), 0);
    n++;
  }
  st.answer[0] = BMM_COMPACT_LATER;
  CHECK_EQ_LONG(bmm_rfree(small[1]), 0); /* another hole */
  c0 = compactions_of(rh);
  m0 = moved_of(rh);
  while (st.calls[1] == 0 && n < MAX) {
    CHECK_EQ_LONG(bmm_ralloc(rh, &h[n], 1024), 0);
    n++;
  }
  CHECK_EQ_LONG(st.calls[1], 1);
  CHECK_EQ_LONG(st.calls[0], 2);
  CHECK_EQ_SZ(compactions_of(rh), c0 + 1);
  CHECK(moved_of(rh) > m0);
  CHECK(!st.bad_heap);
  /* Growth by rrealloc counts as allocation too: drop below high, regrow. */
  for (int k = 0; k < 20 && n > 3; k++) {
    n--;
    CHECK_EQ_LONG(bmm_rfree(h[n]), 0);
  }
  CHECK_EQ_LONG(bmm_rrealloc(h[n - 1], 200000), 0);
  CHECK_EQ_LONG(st.calls[1], 2);
  /* Thresholds at 1 (clamped from 2) and no callback: no more calls. */
  bmm_rheap_notify(rh, 2.0, 2.0, NULL, NULL);
  CHECK_EQ_LONG(bmm_rrealloc(h[n - 1], 1000), 0);
  CHECK_EQ_LONG(bmm_rrealloc(h[n - 1], 200000), 0);
  CHECK_EQ_LONG(st.calls[1], 2);
  CHECK(bmm__rheap_check(rh));
  /* The callback runs without the heap's lock: it may use the heap. */
  reentrant_calls = 0;
  bmm_rheap_notify(rh, 0.0, 1.0, on_fullness_reentrant, NULL);
  c0 = compactions_of(rh);
  CHECK_EQ_LONG(bmm_ralloc(rh, &h[n], 100), 0);
  CHECK_EQ_LONG(reentrant_calls, 1);
  CHECK_EQ_SZ(compactions_of(rh), c0 + 1); /* the callback's own bmm_rcompact */
  CHECK(bmm__rheap_check(rh));
  bmm_rheap_delete(rh);
}

/* ---- misuse -------------------------------------------------------------- */

typedef enum {
  MIS_DOUBLE_FREE,
  MIS_LOCK_FREED,
  MIS_SIZE_FREED,
  MIS_REUSED_ENTRY,
  MIS_UNLOCK_UNLOCKED,
  MIS_DELETED_HEAP,
  MIS_FOREIGN,
  MIS_COUNT
} misuse_t;

static const char *const mis_call[MIS_COUNT] = {"bmm_rfree(",    "bmm_rlock(",   "bmm_rsize(",
                                                "bmm_rrealloc(", "bmm_runlock(", "bmm_rlock(",
                                                "bmm_rfree("};
static const char *const mis_what[MIS_COUNT] = {"stale handle", "stale handle", "stale handle",
                                                "stale handle", "not locked",   "deleted heap",
                                                "not a handle"};

/* Does misuse c on heap rh (a caller buffer heap); returns the result of
 * the bad call (size for bmm_rsize). */
static long do_misuse(misuse_t c, bmm_rheap_t *rh) {
  bmm_handle_t *h = NULL, *h2 = NULL;
  void *p = NULL;
  long r = -1;
  if (bmm_ralloc(rh, &h, 64) != 0) return -2;
  switch (c) {
  case MIS_DOUBLE_FREE:
    bmm_rfree(h);
    r = bmm_rfree(h);
    break;
  case MIS_LOCK_FREED:
    bmm_rfree(h);
    r = bmm_rlock(h, &p);
    break;
  case MIS_SIZE_FREED:
    bmm_rfree(h);
    r = (long)bmm_rsize(h);
    break;
  case MIS_REUSED_ENTRY: {
    /* Allocate until h's entry comes round again (first in, first out). */
    enum { MAX_TRIES = 300 };
    bmm_handle_t *others[MAX_TRIES];
    size_t n = 0;
    bmm_rfree(h);
    while (n < MAX_TRIES && bmm_ralloc(rh, &others[n], 64) == 0) {
      if (((uintptr_t)others[n] & ~(uintptr_t)7) == ((uintptr_t)h & ~(uintptr_t)7)) {
        h2 = others[n];
        break;
      }
      n++;
    }
    if (h2 == NULL || h2 == h) return -4; /* not reused, or reused with the same tag */
    r = bmm_rrealloc(h, 100);
    if (bmm_rsize(h2) != 64) r = -3; /* the new handle is untouched */
    bmm_rfree(h2);
    for (size_t k = 0; k < n; k++)
      bmm_rfree(others[k]);
    break;
  }
  case MIS_UNLOCK_UNLOCKED:
    bmm_rlock(h, &p);
    bmm_runlock(h);
    r = bmm_runlock(h);
    bmm_rfree(h);
    break;
  case MIS_DELETED_HEAP: {
    /* A second heap in a buffer of its own, deleted, then used. */
    static unsigned char buf2[8192] __attribute__((aligned(64)));
    bmm_rheap_t *rh2 = bmm_rheap_new(buf2, sizeof buf2);
    bmm_rfree(h);
    if (rh2 == NULL || bmm_ralloc(rh2, &h2, 64) != 0) return -2;
    bmm_rheap_delete(rh2);
    r = bmm_rlock(h2, &p);
    break;
  }
  case MIS_FOREIGN: {
    static uint64_t not_a_handle[8] __attribute__((aligned(32))) = {0x1234, 0, 0, 0};
    bmm_rfree(h);
    r = bmm_rfree((bmm_handle_t *)(void *)not_a_handle);
    break;
  }
  default:
    break;
  }
  return r;
}

static void misuse_in_child(void *c) {
  static unsigned char buf[1 << 16] __attribute__((aligned(16)));
  bmm_rheap_t *rh = bmm_rheap_new(buf, sizeof buf);
  if (rh == NULL) _exit(3);
  do_misuse((misuse_t)(intptr_t)c, rh);
}

static void check_aborts(misuse_t c) {
  char out[2048];
  int lines;
  int status = check_child(misuse_in_child, (void *)(intptr_t)c, out, sizeof out, &lines);
  bool ok = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT && lines == 1 &&
            strstr(out, mis_call[c]) != NULL && strstr(out, mis_what[c]) != NULL;
  if (!CHECK(ok))
    check_print(2, "  case %d: status %#x, %d lines: %s\n", (int)c, status, lines, out);
}

/* With abort_on_error=0: each misuse is reported (stderr to a pipe, one
 * line each), returns EINVAL (bmm_rsize 0), and the heap stays sound. */
static void ignored_in_child(void *unused) {
  (void)unused;
  if (bmm_option_set("abort_on_error", 0) != 0) _exit(10);
  static unsigned char buf[1 << 16] __attribute__((aligned(16)));
  bmm_rheap_t *rh = bmm_rheap_new(buf, sizeof buf);
  if (rh == NULL) _exit(11);
  bmm_handle_t *keep = NULL;
  if (bmm_ralloc(rh, &keep, 300) != 0 || !write_handle(keep, 300, 77)) _exit(12);
  for (int c = 0; c < MIS_COUNT; c++) {
    long r = do_misuse((misuse_t)c, rh);
    long want = c == MIS_SIZE_FREED ? 0 : EINVAL;
    if (r != want) _exit(20 + c);
    if (!bmm__rheap_check(rh)) _exit(40 + c);
  }
  if (!verify_handle(keep, 300, 77)) _exit(13);
  bmm_rcompact(rh);
  if (!verify_handle(keep, 300, 77) || bmm_rfree(keep) != 0) _exit(14);
}

static void check_ignored(void) {
  char out[8192];
  int lines;
  int status = check_child(ignored_in_child, NULL, out, sizeof out, &lines);
  bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && lines == MIS_COUNT &&
            strstr(out, "call ignored") != NULL;
  if (!CHECK(ok)) check_print(2, "  ignored: status %#x, %d lines: %s\n", status, lines, out);
}

static void test_misuse(void) {
  for (int c = 0; c < MIS_COUNT; c++)
    check_aborts((misuse_t)c);
  check_ignored();
}

/* ---- guarded caller buffer ------------------------------------------------ */

/* A random workload on rh until `ops` operations are done; every handle's
 * contents are checked before it is freed and at the end. */
static void workload(bmm_rheap_t *rh, uint64_t seed, size_t ops, size_t max_size) {
  enum { SLOTS = 512 };
  bmm_handle_t *h[SLOTS] = {0};
  size_t size[SLOTS] = {0};
  uint64_t tag[SLOTS] = {0};
  void *locked[SLOTS] = {0};
  uint64_t s = seed;
  size_t failures = 0;
  for (size_t op = 0; op < ops; op++) {
    size_t i = rng_below(&s, SLOTS);
    unsigned what = (unsigned)rng_below(&s, 10);
    if (h[i] == NULL) {
      size_t sz = rng_below(&s, 4) == 0 ? rng_below(&s, max_size) : rng_below(&s, 200);
      if (bmm_ralloc(rh, &h[i], sz) != 0) {
        h[i] = NULL;
        failures++;
        continue;
      }
      size[i] = sz;
      tag[i] = op;
      CHECK(write_handle(h[i], sz, op));
    } else if (what < 4) {
      if (locked[i]) {
        CHECK(bmm_runlock(h[i]) == 0);
        locked[i] = NULL;
      }
      CHECK(verify_handle(h[i], size[i], tag[i]));
      CHECK_EQ_LONG(bmm_rfree(h[i]), 0);
      h[i] = NULL;
    } else if (what < 6) {
      size_t sz = rng_below(&s, 2) ? rng_below(&s, max_size) : rng_below(&s, 300);
      int r = bmm_rrealloc(h[i], sz);
      CHECK(r == 0 || r == ENOMEM);
      if (r == 0) {
        size_t keep = sz < size[i] ? sz : size[i];
        CHECK(verify_handle(h[i], keep, tag[i]));
        size[i] = sz;
        tag[i] = op;
        CHECK(write_handle(h[i], sz, op));
      } else {
        failures++;
      }
    } else if (what < 8) {
      if (locked[i] == NULL) {
        locked[i] = lock_ptr(h[i]);
        CHECK(locked[i] != NULL);
      } else {
        CHECK(pattern_ok(locked[i], size[i], tag[i]));
        CHECK(bmm_runlock(h[i]) == 0);
        locked[i] = NULL;
      }
    } else if (what == 8 && rng_below(&s, 20) == 0) {
      bmm_rcompact(rh);
      for (size_t k = 0; k < SLOTS; k++)
        if (locked[k]) CHECK(pattern_ok(locked[k], size[k], tag[k]));
    } else {
      CHECK(verify_handle(h[i], size[i], tag[i]));
    }
  }
  CHECK(bmm__rheap_check(rh));
  for (size_t i = 0; i < SLOTS; i++) {
    if (h[i] == NULL) continue;
    if (locked[i]) CHECK(bmm_runlock(h[i]) == 0);
    CHECK(verify_handle(h[i], size[i], tag[i]));
    CHECK_EQ_LONG(bmm_rfree(h[i]), 0);
  }
  CHECK(bmm__rheap_check(rh));
  CHECK(failures > 0 || max_size < 1000); /* the workloads below do reach full */
}

static void test_guarded(void) {
  size_t ps = (size_t)sysconf(_SC_PAGESIZE), pages = 64;
  unsigned char *m = map_bytes((pages + 2) * ps);
  CHECK(m != NULL);
  if (m == NULL) return;
  CHECK(mprotect(m, ps, PROT_NONE) == 0);
  CHECK(mprotect(m + (pages + 1) * ps, ps, PROT_NONE) == 0);
  unsigned char *mid = m + ps;
  /* The whole middle, then an odd start and length inside it. */
  bmm_rheap_t *rh = bmm_rheap_new(mid, pages * ps);
  CHECK(rh != NULL);
  if (rh) {
    workload(rh, 1, 30000, 16000);
    bmm_rheap_delete(rh);
  }
  rh = bmm_rheap_new(mid + 3, pages * ps - 3 - 5);
  CHECK(rh != NULL);
  if (rh) {
    workload(rh, 2, 30000, 16000);
    bmm_rheap_delete(rh);
  }
  /* Nothing outside [mid + 3, end - 5) was written: the bytes just inside
   * the ends keep the values the workload cannot have put there. */
  memset(mid, 0xA5, 3);
  memset(mid + pages * ps - 5, 0x5A, 5);
  rh = bmm_rheap_new(mid + 3, pages * ps - 3 - 5);
  CHECK(rh != NULL);
  if (rh) {
    workload(rh, 3, 20000, 30000);
    bmm_rheap_delete(rh);
  }
  CHECK(mid[0] == 0xA5 && mid[1] == 0xA5 && mid[2] == 0xA5);
  for (size_t k = 0; k < 5; k++)
    CHECK(mid[pages * ps - 5 + k] == 0x5A);
  munmap(m, (pages + 2) * ps);

  /* An OS-memory heap, the same workload. */
  rh = bmm_rheap_new(NULL, 300000);
  CHECK(rh != NULL);
  if (rh) {
    workload(rh, 4, 30000, 20000);
    bmm_rheap_delete(rh);
  }
}

/* ---- threads ------------------------------------------------------------- */

enum { THREADS = 4, THREAD_SLOTS = 64 };

typedef struct worker_s {
  bmm_rheap_t *rh;
  unsigned id;
  size_t ops;
  pthread_t thread;
} worker_t;

static atomic_int stop_compacting;

static void *worker_main(void *arg) {
  worker_t *w = arg;
  bmm_handle_t *h[THREAD_SLOTS] = {0};
  size_t size[THREAD_SLOTS] = {0};
  uint64_t tag[THREAD_SLOTS] = {0};
  uint64_t s = 0x1234567 + w->id * 7919;
  for (size_t op = 0; op < w->ops; op++) {
    size_t i = rng_below(&s, THREAD_SLOTS);
    uint64_t t = ((uint64_t)w->id << 40) | op;
    if (h[i] == NULL) {
      size_t sz = 1 + rng_below(&s, rng_below(&s, 8) == 0 ? 8000 : 300);
      if (bmm_ralloc(w->rh, &h[i], sz) != 0) {
        h[i] = NULL;
        continue;
      }
      size[i] = sz;
      tag[i] = t;
      CHECK(write_handle(h[i], sz, t));
    } else {
      unsigned what = (unsigned)rng_below(&s, 4);
      CHECK(verify_handle(h[i], size[i], tag[i]));
      if (what == 0) {
        size_t sz = 1 + rng_below(&s, 2000);
        if (bmm_rrealloc(h[i], sz) == 0) {
          size[i] = sz < size[i] ? sz : size[i];
          CHECK(verify_handle(h[i], size[i], tag[i]));
          size[i] = sz;
          CHECK(write_handle(h[i], sz, t));
          tag[i] = t;
        }
      } else if (what == 1) {
        /* Lock, let the compactor run a bit, check the block stayed. */
        void *p = lock_ptr(h[i]);
        CHECK(p != NULL);
        sched_yield();
        void *q = lock_ptr(h[i]);
        CHECK(p == q);
        CHECK(bmm_runlock(h[i]) == 0 && bmm_runlock(h[i]) == 0);
      } else {
        CHECK_EQ_LONG(bmm_rfree(h[i]), 0);
        h[i] = NULL;
      }
    }
  }
  for (size_t i = 0; i < THREAD_SLOTS; i++)
    if (h[i]) {
      CHECK(verify_handle(h[i], size[i], tag[i]));
      CHECK_EQ_LONG(bmm_rfree(h[i]), 0);
    }
  return NULL;
}

static void *compactor_main(void *arg) {
  bmm_rheap_t *rh = arg;
  while (!atomic_load(&stop_compacting)) {
    bmm_rcompact(rh);
    sched_yield();
  }
  return NULL;
}

static void test_threads(size_t ops) {
  bmm_rheap_t *rh = bmm_rheap_new(NULL, 1 << 20);
  CHECK(rh != NULL);
  if (rh == NULL) return;
  worker_t w[THREADS];
  pthread_t compactor;
  atomic_store(&stop_compacting, 0);
  CHECK(pthread_create(&compactor, NULL, compactor_main, rh) == 0);
  for (unsigned k = 0; k < THREADS; k++) {
    w[k] = (worker_t){.rh = rh, .id = k, .ops = ops};
    CHECK(pthread_create(&w[k].thread, NULL, worker_main, &w[k]) == 0);
  }
  for (unsigned k = 0; k < THREADS; k++)
    pthread_join(w[k].thread, NULL);
  atomic_store(&stop_compacting, 1);
  pthread_join(compactor, NULL);
  CHECK(bmm__rheap_check(rh));
  size_t used = 0;
  bmm__rheap_counters(rh, &used, NULL, NULL, NULL);
  CHECK(used < 4096 + THREADS * THREAD_SLOTS * 32); /* only header and table remain */
  CHECK(compactions_of(rh) > 0);
  bmm_rheap_delete(rh);
}

int main(int argc, char **argv) {
  size_t thread_ops = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 20000;
  test_arguments();
  test_basics();
  test_compact();
  test_ralloc_compacts();
  test_rrealloc();
  test_notify();
  test_misuse(); /* forks: before any thread exists */
  test_guarded();
  test_threads(thread_ops);
  return check_done();
}
