/* large.c: large and huge blocks (issue 3), white-box where layout matters.
 *   - growth in place to the right, to the left and on both sides (the
 *     "---0000XX000---" case: 4 free units left, 2 used, 3 free right),
 *     contents verified, and shrinking in place;
 *   - coalescing after frees in every order of three neighbours: the span
 *     table stays sound and the units go back to the arena;
 *   - a block doubled from 1 MiB to 1 GiB copies no byte (spans grow in
 *     place, the move to a huge region remaps pages, huge regions grow
 *     with mremap);
 *   - freed memory leaves RSS after purge_delay, at once with
 *     bmm_collect(true), and never with purge_delay=-1 until collected;
 *   - an arena with nothing in use gives its address space back and is
 *     mapped again when needed;
 *   - exhausting RLIMIT_AS gives NULL + ENOMEM and a heap that still works;
 *   - freed huge blocks are reused from the cache as they are when at most
 *     a quarter too big, grown or shrunk to size otherwise, with contents
 *     and usable sizes right every time.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/internal.h"
#include "check.h"

#define KiB ((size_t)1024)
#define MiB (KiB * 1024)
#define UNIT BMM_UNIT_SIZE

static void fill(uint8_t *p, size_t n, uint8_t seed) {
  for (size_t i = 0; i < n; i += 512) p[i] = (uint8_t)(seed + i / 512);
  p[n - 1] = seed;
}

static bool intact(const uint8_t *p, size_t n, uint8_t seed) {
  for (size_t i = 0; i < n; i += 512)
    if (p[i] != (uint8_t)(seed + i / 512)) return false;
  return p[n - 1] == seed;
}

/* Allocate `count` blocks of the given sizes that lie next to each other
 * in one arena (retrying past whatever free space the arena has). Blocks
 * taken to skip such space are kept (leaked into `skip`) until the end. */
static void *skip[64];
static int nskip;

static bool alloc_adjacent_bytes(uint8_t **out, const size_t *bytes, int count) {
  for (int attempt = 0; attempt < 16; attempt++) {
    bool ok = true;
    for (int i = 0; i < count; i++) out[i] = bmm_malloc(bytes[i]);
    for (int i = 1; i < count; i++) ok &= out[i] == out[i - 1] + bytes[i - 1];
    if (ok) return true;
    for (int i = 0; i < count; i++) bmm_free(out[i]);
    /* Fill the free space that got in the way, then try again. */
    if (nskip < 64) skip[nskip++] = bmm_malloc(bytes[0]);
  }
  return false;
}

static bool alloc_adjacent(uint8_t **out, const size_t *units, int count) {
  size_t bytes[8];
  for (int i = 0; i < count; i++) bytes[i] = units[i] * UNIT;
  return alloc_adjacent_bytes(out, bytes, count);
}

static void test_grow_in_place(void) {
  /* [A 4][X 2][B 3][C 1]: free A and B, then grow X. */
  size_t units[4] = {4, 2, 3, 1};
  uint8_t *b[4];
  if (!CHECK(alloc_adjacent(b, units, 4))) return;
  uint8_t *a = b[0], *x = b[1], *r = b[2], *c = b[3];
  fill(x, 2 * UNIT, 7);
  bmm_free(a);
  bmm_free(r);
  CHECK(bmm_heap_check());
  size_t copied = bmm__large_bytes_copied();

  /* Right only: 2 -> 5 units, same address. */
  uint8_t *y = bmm_realloc(x, 5 * UNIT);
  CHECK(y == x);
  CHECK(intact(y, 2 * UNIT, 7));
  CHECK(bmm_usable_size(y) >= 5 * UNIT);
  CHECK(bmm__large_bytes_copied() == copied); /* nothing moved */
  CHECK(bmm_heap_check());

  /* Shrink back in place: the tail returns as free space on the right. */
  y = bmm_realloc(y, 2 * UNIT);
  CHECK(y == x);
  CHECK(bmm_usable_size(y) == 2 * UNIT);
  CHECK(bmm_heap_check());

  /* Both sides: 2 -> 9 units takes the 3 on the right and 4 on the left,
   * so the block starts where A did, its data moved down. */
  y = bmm_realloc(y, 9 * UNIT);
  CHECK(y == a);
  CHECK(intact(y, 2 * UNIT, 7));
  CHECK(bmm_usable_size(y) >= 9 * UNIT);
  CHECK(bmm_heap_check());

  /* 6, 7, 8 units also fit; 10 does not fit between A's start and C. */
  y = bmm_realloc(y, 2 * UNIT); /* back to 2 at A's place: 7 free on the right */
  CHECK(y == a && intact(y, 2 * UNIT, 7));
  uint8_t *z = bmm_realloc(y, 10 * UNIT);
  CHECK(z != NULL && intact(z, 2 * UNIT, 7));
  CHECK(z != a); /* C is in the way: moved */
  bmm_free(z);
  bmm_free(c);
  CHECK(bmm_heap_check());
}

static void test_grow_left_pages(void) {
  /* Page granularity, from a fresh heap (this runs first): L takes 2 whole
   * units, X 4 units and shrinks in place to 17 pages (its last 2 units go
   * back to the arena, 15 free pages stay after it), and R (47 pages) takes
   * fresh units right after those 15 pages. Free L, grow X by 20 pages: it
   * takes the 15 free pages on the right and only 5 on the left (claiming
   * one of L's units), so its data moves down by 5 pages, not 16 or 32. */
  uint8_t *l = bmm_malloc(32 * BMM_SPAN_PAGE);
  uint8_t *x = bmm_malloc(64 * BMM_SPAN_PAGE);
  CHECK(bmm_realloc(x, 17 * BMM_SPAN_PAGE) == x);
  uint8_t *r = bmm_malloc(47 * BMM_SPAN_PAGE);
  if (!CHECK(x == l + 32 * BMM_SPAN_PAGE && r == x + 32 * BMM_SPAN_PAGE)) return;
  fill(x, 17 * BMM_SPAN_PAGE, 3);
  bmm_free(l);
  CHECK(bmm_heap_check());
  uint8_t *y = bmm_realloc(x, 37 * BMM_SPAN_PAGE);
  CHECK(y == x - 5 * BMM_SPAN_PAGE);
  CHECK(intact(y, 17 * BMM_SPAN_PAGE, 3));
  CHECK(bmm_usable_size(y) == 37 * BMM_SPAN_PAGE);
  CHECK(bmm_heap_check());
  bmm_free(y);
  bmm_free(r);
  CHECK(bmm_heap_check());
}

static void test_coalesce(void) {
  static const int orders[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2},
                                   {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
  bmm_mem_stats_t before, after;
  for (int o = 0; o < 6; o++) {
    size_t units[3] = {2, 3, 2};
    uint8_t *b[3];
    bmm__mem_stats(&before);
    if (!CHECK(alloc_adjacent(b, units, 3))) continue;
    for (int i = 0; i < 3; i++) {
      bmm_free(b[orders[o][i]]);
      CHECK(bmm_heap_check()); /* no two free spans ever touch */
    }
    /* The three blocks merged into whole units, given back to the arena. */
    bmm__mem_stats(&after);
    CHECK(after.used <= before.used);
  }
  /* Odd page counts leave partial units: they merge too. */
  uint8_t *p[5];
  for (int i = 0; i < 5; i++) p[i] = bmm_malloc((17 + (size_t)i * 5) * BMM_SPAN_PAGE);
  for (int i = 0; i < 5; i += 2) bmm_free(p[i]);
  CHECK(bmm_heap_check());
  for (int i = 1; i < 5; i += 2) bmm_free(p[i]);
  CHECK(bmm_heap_check());
}

static void test_doubling_copies_nothing(void) {
  size_t copied = bmm__large_bytes_copied();
  size_t size = 1 * MiB;
  uint8_t *p = bmm_malloc(size);
  if (!CHECK(p != NULL)) return;
  p[0] = 0x5A;
  p[size - 1] = 0xA5;
  for (; size < 1024 * MiB; size *= 2) {
    uint8_t *q = bmm_realloc(p, size * 2);
    if (!CHECK(q != NULL)) break;
    CHECK(q[0] == 0x5A && q[size - 1] == 0xA5);
    q[2 * size - 1] = 0xA5;
    p = q;
  }
  size_t moved = bmm__large_bytes_copied() - copied;
  if (moved != 0) fprintf(stderr, "large: doubling to 1 GiB copied %zu bytes\n", moved);
  CHECK(moved == 0);
  CHECK(bmm_usable_size(p) >= 1024 * MiB);
  CHECK(bmm_heap_check());
  /* And back down: a huge block shrinks in place. */
  uint8_t *q = bmm_realloc(p, 100 * MiB);
  CHECK(q == p && q[0] == 0x5A);
  bmm_free(q);
}

static size_t rss(void) {
  return bmm__os_rss();
}

static size_t committed(void) {
  bmm_mem_stats_t st;
  bmm__mem_stats(&st);
  return st.committed;
}

/* Memory given back: RSS back near `base`, and the allocator's committed
 * bytes back near `base_committed`. */
static bool returned(size_t base, size_t base_committed) {
  return committed() <= base_committed + 8 * MiB && (!CHECK_RSS_SHOWS_PURGE || rss() <= base + 8 * MiB);
}

static void test_purge(void) {
  enum { N = 16 };
  uint8_t *b[N];
  CHECK(bmm_option_set("purge_delay", 50) == 0);
  bmm_collect(true);
  size_t base = rss(), base_committed = committed();
  for (int i = 0; i < N; i++) {
    b[i] = bmm_malloc(4 * MiB);
    memset(b[i], 1, 4 * MiB);
  }
  size_t full = rss();
  CHECK(full > base + 48 * MiB);
  CHECK(committed() > base_committed + 48 * MiB);
  for (int i = 0; i < N; i++) bmm_free(b[i]);
  usleep(120 * 1000);
  bmm_collect(false); /* any arena call after the delay purges */
  size_t later = rss();
  if (!returned(base, base_committed))
    fprintf(stderr, "large: RSS base %zu KiB, full %zu KiB, after delay %zu KiB\n", base / KiB,
            full / KiB, later / KiB);
  CHECK(returned(base, base_committed));

  /* Never purged with -1, until bmm_collect(true). */
  CHECK(bmm_option_set("purge_delay", -1) == 0);
  for (int i = 0; i < N; i++) {
    b[i] = bmm_malloc(4 * MiB);
    memset(b[i], 1, 4 * MiB);
  }
  for (int i = 0; i < N; i++) bmm_free(b[i]);
  usleep(60 * 1000);
  bmm_collect(false);
  CHECK(rss() > base + 48 * MiB);
  CHECK(committed() > base_committed + 48 * MiB);
  bmm_collect(true);
  CHECK(returned(base, base_committed));

  /* A loop that frees and reallocates the same sizes reuses the memory
   * before the delay: nothing is purged meanwhile. */
  CHECK(bmm_option_set("purge_delay", 1000) == 0);
  bmm_mem_stats_t s0, s1;
  bmm__mem_stats(&s0);
  for (int r = 0; r < 50; r++) {
    uint8_t *p = bmm_malloc(8 * MiB);
    p[0] = 1;
    bmm_free(p);
  }
  bmm__mem_stats(&s1);
  CHECK(s1.purged == s0.purged);
  CHECK(bmm_option_set("purge_delay", 100) == 0);
  CHECK(bmm_heap_check());
}

/* An arena whose blocks are all freed gives its address space back, and
 * is mapped again when blocks are needed. */
static void test_arena_release(void) {
  enum { N = 24 };
  uint8_t *b[N];
  for (int i = 0; i < N; i++) {
    b[i] = bmm_malloc(15 * MiB); /* 360 MiB of spans: at least two arenas */
    if (!CHECK(b[i] != NULL)) return;
    b[i][0] = 1;
  }
  size_t arenas = bmm__arena_count();
  CHECK(arenas >= 2);
  for (int i = 0; i < N; i++) bmm_free(b[i]);
  bmm_collect(true);
  size_t header = BMM_ARENA_HEADER_UNITS * BMM_UNIT_SIZE, released = 0;
  bmm_mem_stats_t st;
  for (size_t i = 1; i < arenas; i++)
    if (bmm__arena_stats(i, &st) && st.reserved == header) released++;
  CHECK(released >= 1);
  CHECK(bmm_heap_check());
  /* Needed again: revived (or new), usable, and the count did not grow. */
  for (int i = 0; i < N; i++) {
    b[i] = bmm_malloc(15 * MiB);
    if (!CHECK(b[i] != NULL)) return;
    b[i][15 * MiB - 1] = 2;
  }
  CHECK(bmm__arena_count() == arenas);
  for (int i = 0; i < N; i++) bmm_free(b[i]);
  CHECK(bmm_heap_check());
}

/* In a child: cap the address space, allocate until it fails. */
static void test_rlimit(void) {
  pid_t pid = fork();
  if (pid == 0) {
    struct rlimit rl;
    getrlimit(RLIMIT_AS, &rl);
    /* What the process maps now, plus 1.5 GiB. */
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (f == NULL || fscanf(f, "%lu", &pages) != 1) _exit(3);
    fclose(f);
    rl.rlim_cur = pages * 4096 + 1536 * MiB;
    if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(3);
    static void *blocks[4096];
    size_t n = 0;
    int failed_errno = 0;
    for (; n < 4096; n++) {
      errno = 0;
      blocks[n] = bmm_malloc((n % 2) ? 3 * MiB : 40 * MiB);
      if (blocks[n] == NULL) {
        failed_errno = errno;
        break;
      }
    }
    if (n == 4096 || failed_errno != ENOMEM) _exit(4);
    /* Small and medium allocations still work, and nothing was hurt. */
    void *s = bmm_malloc(100), *m = bmm_malloc(20000);
    if (s == NULL || m == NULL) _exit(5);
    bmm_free(s);
    bmm_free(m);
    for (size_t i = 0; i < n; i++) bmm_free(blocks[i]);
    if (!bmm_heap_check()) _exit(6);
    void *again = bmm_malloc(40 * MiB);
    if (again == NULL) _exit(7);
    bmm_free(again);
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fprintf(stderr, "large: rlimit child status %#x\n", status);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* The huge-block cache (arena.c): a freed huge block is reused for the
 * next request it suits. Within purge_delay (1 s here) the cached mapping
 * is found; its block must hold the request and be at most a quarter too
 * big, or resized to it. */
static void test_huge_cache(void) {
  CHECK(bmm_option_set("purge_delay", 1000) == 0);
  bmm_collect(true); /* an empty cache */
  static const size_t sizes[] = {20 * MiB, 18 * MiB, 30 * MiB, 17 * MiB, 40 * MiB, 20 * MiB};
  uint8_t *prev = NULL;
  size_t reused = 0;
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    uint8_t *p = bmm_malloc(sizes[i]);
    if (!CHECK(p != NULL)) return;
    size_t usable = bmm_usable_size(p);
    CHECK(usable >= sizes[i] && usable <= sizes[i] + sizes[i] / 4 + BMM_UNIT_SIZE);
    fill(p, usable, (uint8_t)i);
    CHECK(intact(p, usable, (uint8_t)i));
    reused += p == prev;
    prev = p;
    bmm_free(p);
  }
  CHECK(reused >= 2); /* from the cache: the same region (3 of 5 here) */
  CHECK(bmm_heap_check());
  bmm_collect(true);
  CHECK(bmm_option_set("purge_delay", 100) == 0);
}

int main(void) {
  CHECK(bmm_option_set("purge_delay", 100) == 0);
  test_grow_left_pages(); /* first: it needs a heap with no free spans */
  test_grow_in_place();
  test_coalesce();
  test_doubling_copies_nothing();
  test_purge();
  test_arena_release();
  test_rlimit();
  test_huge_cache();
  for (int i = 0; i < nskip; i++) bmm_free(skip[i]);
  CHECK(bmm_heap_check());
  return check_done();
}
