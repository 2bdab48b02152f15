/* unit_arena.c: white-box test of the arena layer (src/arena.c) and of
 * bmm__page_of (src/internal.h). It checks:
 *   - bmm__page_of is NULL for addresses that are not ours: NULL, stack,
 *     static data, code, libc malloc (small, and large enough to be mmapped)
 *     and addresses beyond 48 bits, before and after arenas exist;
 *   - bmm__arena_page_alloc of 1, 8, 100 and 1000 units: the descriptor of
 *     the run's first unit has units and start set, and every unit's
 *     descriptor (the first one included) has `first` pointing at the run's
 *     first descriptor; the start is unit aligned,
 *     past the arena header and the run ends inside the region; the used
 *     bits are set and the arena's used_units counts the run;
 *   - bmm__page_of maps the first, middle and last byte of every unit of a
 *     run back to the run's first descriptor;
 *   - align_units 16, 64 and 256 give runs at those unit multiples;
 *   - bad requests (0 units, more than an arena holds) give NULL; a run of
 *     the largest size an arena holds fits in an empty arena;
 *   - filling an arena (big runs, then single units) makes the next claim
 *     land in a second arena; a run freed in the full arena comes back at
 *     the same units when claimed again;
 *   - bmm__arena_purge_all clears the dirty bits of free units only, and
 *     with purge_lazy=0 a purged unit reads zero when it is claimed again;
 *   - bmm__huge_alloc of 40 MiB with alignments 16, 64 MiB and 128 MiB, and
 *     of 300 MiB (more than a region): bmm__page_of finds a HUGE page,
 *     block_size >= size, the pointer is aligned and the first and last
 *     bytes are writable; a region alignment is refused with ENOMEM;
 *     bmm__huge_free makes bmm__page_of NULL again; a foreign mapping in
 *     the unused tail of a huge block's region is not taken for a block;
 *   - several threads claiming and freeing runs at once never get
 *     overlapping units;
 *   - bmm__arena_check_all holds after every step.
 * The test links brainmm_internal (no malloc override), so malloc here is
 * glibc's. Claimed units are never touched except where stated, so filling
 * an arena costs address space, not memory.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "../src/internal.h" /* src/ is not on the test targets' include path */
#include "check.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define USABLE_UNITS (BMM_ARENA_UNITS - BMM_ARENA_HEADER_UNITS)

static int static_object;
static const char static_text[] = "not ours";

static bool unit_used(const bmm_arena_t *arena, size_t u) {
  return atomic_load(&((bmm_arena_t *)arena)->used[u >> 6]) >> (u & 63) & 1;
}

static bool unit_dirty(const bmm_arena_t *arena, size_t u) {
  return atomic_load(&((bmm_arena_t *)arena)->dirty[u >> 6]) >> (u & 63) & 1;
}

static size_t unit_index(const bmm_page_t *page) {
  return (size_t)(page - bmm__arena_of_page(page)->pages);
}

/* Claim a run and mark it LARGE, as bmm__large_alloc does, so that
 * bmm__arena_check_all validates it. */
static bmm_page_t *claim(uint32_t *hint, size_t units, size_t align_units) {
  bmm_page_t *page = bmm__arena_page_alloc(hint, units, align_units, false);
  if (page != NULL) {
    page->block_size = units * BMM_UNIT_SIZE;
    page->reserved = page->used = 1;
    atomic_store_explicit(&page->kind, BMM_PAGE_LARGE, memory_order_relaxed);
  }
  return page;
}

/* Everything a fresh run must satisfy; returns the number of problems. */
static size_t check_run(const bmm_page_t *page, size_t units, size_t align_units) {
  size_t bad = 0;
  if (!CHECK(page != NULL)) return 1;
  bmm_arena_t *arena = bmm__arena_of_page(page);
  size_t first = unit_index(page);
  bad += !CHECK_EQ_SZ(arena->magic, BMM_ARENA_MAGIC);
  bad += !CHECK_EQ_SZ(page->units, units);
  bad += !CHECK(bmm__page_of(bmm__page_start(page)) == page && page->first_delta == 0);
  bad += !CHECK(first >= BMM_ARENA_HEADER_UNITS);
  bad += !CHECK(first + units <= BMM_ARENA_UNITS);
  bad += !CHECK_EQ_SZ(first % align_units, 0);
  bad += !CHECK(bmm__page_start(page) == (uint8_t *)arena + first * BMM_UNIT_SIZE);
  bad += !CHECK_EQ_SZ((uintptr_t)bmm__page_start(page) % (align_units * BMM_UNIT_SIZE), 0);
  bad +=
      !CHECK((uintptr_t)bmm__page_start(page) + units * BMM_UNIT_SIZE <=
             (uintptr_t)arena + BMM_REGION_SIZE);
  size_t bad_offset = 0, bad_bits = 0, bad_lookup = 0;
  for (size_t i = 0; i < units; i++) {
    if (page[i].first_delta != i * sizeof(bmm_page_t)) bad_offset++;
    if (!unit_used(arena, first + i)) bad_bits++;
    const uint8_t *u = bmm__page_start(page) + i * BMM_UNIT_SIZE;
    if (bmm__page_of(u) != page) bad_lookup++;
    if (bmm__page_of(u + BMM_UNIT_SIZE / 2) != page) bad_lookup++;
    if (bmm__page_of(u + BMM_UNIT_SIZE - 1) != page) bad_lookup++;
  }
  bad += !CHECK_EQ_SZ(bad_offset, 0);
  bad += !CHECK_EQ_SZ(bad_bits, 0);
  bad += !CHECK_EQ_SZ(bad_lookup, 0);
  return bad;
}

static void check_foreign(const char *when) {
  int on_stack = 0;
  void *small = malloc(64), *medium = malloc(100 * KiB), *big = malloc(64 * MiB);
  size_t before = check_failed_count();
  void *volatile null_pointer = NULL; /* volatile: see below */
  CHECK(bmm__page_of(null_pointer) == NULL);
  CHECK(bmm__page_of(&on_stack) == NULL);
  CHECK(bmm__page_of(&static_object) == NULL);
  CHECK(bmm__page_of(static_text) == NULL);
  CHECK(bmm__page_of((const void *)(uintptr_t)&check_foreign) == NULL);
  CHECK(small != NULL && bmm__page_of(small) == NULL);
  CHECK(medium != NULL && bmm__page_of(medium) == NULL);
  CHECK(big != NULL && bmm__page_of(big) == NULL);
  if (big != NULL) CHECK(bmm__page_of((char *)big + 64 * MiB - 1) == NULL);
  /* Beyond 48 bits (volatile, so the compiler does not fold the lookup
   * and warn about the region-map index it can no longer see guarded). */
  volatile uintptr_t high1 = (uintptr_t)1 << 48, high2 = UINTPTR_MAX;
  CHECK(bmm__page_of((void *)high1) == NULL);
  CHECK(bmm__page_of((void *)high2) == NULL);
  if (check_failed_count() != before) check_print(2, "  (foreign pointers %s)\n", when);
  free(small);
  free(medium);
  free(big);
}

static void check_basic_runs(void) {
  static const size_t sizes[] = {1, 8, 100, 1000};
  bmm_page_t *runs[4];
  uint32_t hint = 0;
  for (size_t k = 0; k < 4; k++) {
    runs[k] = claim(&hint, sizes[k], 1);
    check_run(runs[k], sizes[k], 1);
    if (runs[k] != NULL) CHECK_EQ_SZ(hint, bmm__arena_of_page(runs[k])->index);
  }
  /* Runs never overlap. */
  size_t overlap = 0;
  for (size_t i = 0; i < 4; i++)
    for (size_t j = 0; j < i; j++)
      if (runs[i] && runs[j] &&
          bmm__page_start(runs[i]) < bmm__page_start(runs[j]) + sizes[j] * BMM_UNIT_SIZE &&
          bmm__page_start(runs[j]) < bmm__page_start(runs[i]) + sizes[i] * BMM_UNIT_SIZE)
        overlap++;
  CHECK_EQ_SZ(overlap, 0);
  CHECK(bmm__arena_check_all());

  /* used_units counts the claimed units (not the header). */
  if (runs[0] && runs[3] && bmm__arena_of_page(runs[0]) == bmm__arena_of_page(runs[3])) {
    bmm_arena_t *arena = bmm__arena_of_page(runs[0]);
    size_t used = atomic_load(&arena->used_units);
    CHECK(used >= 1109);
    bmm__arena_page_free(runs[3]);
    CHECK_EQ_SZ(atomic_load(&arena->used_units), used - 1000);
    CHECK_EQ_LONG(atomic_load(&runs[3]->kind), BMM_PAGE_FREE);
    size_t still = 0;
    for (size_t i = 0; i < 1000; i++)
      still += unit_used(arena, unit_index(runs[3]) + i);
    CHECK_EQ_SZ(still, 0);
    runs[3] = NULL;
  }
  for (size_t k = 0; k < 4; k++)
    if (runs[k]) bmm__arena_page_free(runs[k]);
  CHECK(bmm__arena_check_all());

  /* Bad requests. */
  CHECK(bmm__arena_page_alloc(&hint, 0, 1, false) == NULL);
  CHECK(bmm__arena_page_alloc(&hint, USABLE_UNITS + 1, 1, false) == NULL);
  CHECK(bmm__arena_page_alloc(&hint, BMM_ARENA_UNITS, 1, false) == NULL);
  /* The largest run fits an empty arena (a fresh one if none is empty). */
  bmm_page_t *whole = claim(&hint, USABLE_UNITS, 1);
  check_run(whole, USABLE_UNITS, 1);
  if (whole) CHECK_EQ_SZ(unit_index(whole), BMM_ARENA_HEADER_UNITS);
  CHECK(bmm__arena_check_all());
  if (whole) bmm__arena_page_free(whole);
}

static void check_aligned_runs(void) {
  uint32_t hint = 0;
  bmm_page_t *pad = claim(&hint, 1, 1); /* so that the next free unit is odd */
  bmm_page_t *a16 = claim(&hint, 3, 16);
  bmm_page_t *pad2 = claim(&hint, 5, 1);
  bmm_page_t *a64 = claim(&hint, 5, 64);
  bmm_page_t *a256 = claim(&hint, 1, 256);
  bmm_page_t *a8 = claim(&hint, 8, 8); /* what a medium page could ask */
  check_run(pad, 1, 1);
  check_run(a16, 3, 16);
  check_run(pad2, 5, 1);
  check_run(a64, 5, 64);
  check_run(a256, 1, 256);
  check_run(a8, 8, 8);
  if (a16) CHECK_EQ_SZ((uintptr_t)bmm__page_start(a16) % MiB, 0);
  if (a64) CHECK_EQ_SZ((uintptr_t)bmm__page_start(a64) % (4 * MiB), 0);
  if (a256) CHECK_EQ_SZ((uintptr_t)bmm__page_start(a256) % (16 * MiB), 0);
  CHECK(bmm__arena_check_all());
  bmm_page_t *all[] = {pad, a16, pad2, a64, a256, a8};
  for (size_t i = 0; i < 6; i++)
    if (all[i]) bmm__arena_page_free(all[i]);
  CHECK(bmm__arena_check_all());
}

/* Fill one arena, see the next claim go elsewhere, reclaim freed holes and
 * purge. */
#define MAX_FILL 1024
static bmm_page_t *fill[MAX_FILL];
static size_t nfill;

static void check_fill_reclaim_purge(void) {
  uint32_t hint = 0;
  bmm_page_t *first = claim(&hint, 1, 1);
  if (!CHECK(first != NULL)) return;
  bmm_arena_t *arena = bmm__arena_of_page(first);
  uint32_t home = arena->index;
  fill[nfill++] = first;

  bmm_page_t *elsewhere = NULL;
  for (size_t run = 512; run >= 1 && elsewhere == NULL; run = run > 1 ? run / 8 : 0) {
    for (;;) {
      hint = home;
      bmm_page_t *page = claim(&hint, run, 1);
      if (!CHECK(page != NULL)) return;
      if (bmm__arena_of_page(page) != arena) {
        if (run == 1) {
          elsewhere = page; /* the arena is full: a single unit went elsewhere */
        } else {
          bmm__arena_page_free(page); /* try smaller runs in the home arena */
        }
        break;
      }
      if (!CHECK(nfill < MAX_FILL)) return;
      fill[nfill++] = page;
    }
  }
  if (!CHECK(elsewhere != NULL)) return;
  bmm_arena_t *second = bmm__arena_of_page(elsewhere);
  CHECK(second != arena);
  CHECK_EQ_SZ(second->magic, BMM_ARENA_MAGIC);
  CHECK(hint != home);
  CHECK_EQ_SZ(hint, second->index);
  CHECK_EQ_SZ(atomic_load(&arena->used_units), USABLE_UNITS);
  size_t free_units = 0;
  for (size_t u = 0; u < BMM_ARENA_UNITS; u++)
    free_units += !unit_used(arena, u);
  CHECK_EQ_SZ(free_units, 0);
  CHECK(bmm__arena_check_all());
  printf("filled arena %u with %zu runs; next claim went to arena %u\n", home, nfill,
         second->index);

  /* Reclaim: a run freed in the full arena is the only hole, so the same
   * units come back, whatever the arena's search hint. */
  bmm_page_t *big = NULL, *single = NULL;
  size_t big_i = 0, single_i = 0;
  for (size_t i = 0; i < nfill; i++) {
    if (big == NULL && fill[i]->units == 512) big = fill[i], big_i = i;
    if (fill[i]->units == 1 && i > nfill / 2) single = fill[i], single_i = i;
  }
  if (CHECK(big != NULL && single != NULL)) {
    uint8_t *big_start = bmm__page_start(big), *single_start = bmm__page_start(single);
    bmm__arena_page_free(big);
    CHECK(bmm__arena_check_all());
    hint = home;
    bmm_page_t *r100 = claim(&hint, 100, 1);
    /* The rest of the old run is free, but its descriptors still name the
     * old first unit, which r100 now uses. bmm__page_of may then return a
     * live run that does not contain the address: callers (free.c) must
     * bounds-check, and do. Checked here as the property they rely on. */
    if (r100 != NULL) {
      const uint8_t *stale = big_start + 300 * BMM_UNIT_SIZE;
      bmm_page_t *sp = bmm__page_of(stale);
      CHECK(sp == NULL || atomic_load(&sp->kind) == BMM_PAGE_FREE || stale < bmm__page_start(sp) ||
            stale >= bmm__page_start(sp) + (size_t)sp->units * BMM_UNIT_SIZE);
    }
    hint = home;
    bmm_page_t *r412 = claim(&hint, 412, 1);
    CHECK(r100 != NULL && bmm__page_start(r100) == big_start);
    CHECK(r412 != NULL && bmm__page_start(r412) == big_start + 100 * BMM_UNIT_SIZE);
    check_run(r100, 100, 1);
    check_run(r412, 412, 1);
    hint = home;
    bmm_page_t *over = claim(&hint, 1, 1); /* the hole is used up */
    CHECK(over != NULL && bmm__arena_of_page(over) != arena);
    if (over) bmm__arena_page_free(over);
    fill[big_i] = r100;
    if (CHECK(nfill < MAX_FILL)) fill[nfill++] = r412;

    /* Purge, then reclaim a unit whose memory held a pattern. */
    single_start[0] = 0xAB;
    single_start[BMM_UNIT_SIZE - 1] = 0xCD;
    size_t su = unit_index(single);
    bmm__arena_page_free(single);
    CHECK(unit_dirty(arena, su));
    CHECK(!unit_used(arena, su));
    long saved_lazy = bmm__options[BMM_OPTION_PURGE_LAZY];
    bmm__options[BMM_OPTION_PURGE_LAZY] = 0;
    bmm__arena_purge_all();
    bmm__options[BMM_OPTION_PURGE_LAZY] = saved_lazy;
    CHECK(!unit_dirty(arena, su));
    CHECK(!unit_used(arena, su));                  /* purge gave the claim back */
    CHECK(unit_dirty(arena, unit_index(fill[0]))); /* in use: left alone */
    CHECK(unit_used(arena, unit_index(fill[0])));
    CHECK(bmm__arena_check_all());
    hint = home;
    bmm_page_t *again = claim(&hint, 1, 1);
    CHECK(again != NULL && bmm__page_start(again) == single_start);
    if (again != NULL) {
      CHECK(unit_dirty(arena, su));
      CHECK(bmm__page_start(again)[0] == 0 && bmm__page_start(again)[BMM_UNIT_SIZE - 1] == 0);
      bmm__page_start(again)[0] = 1; /* and it is writable */
      fill[single_i] = again;
    }
  }

  /* No free unit anywhere is left dirty by a purge. */
  for (size_t i = 0; i < nfill; i++)
    bmm__arena_page_free(fill[i]);
  bmm__arena_page_free(elsewhere);
  nfill = 0;
  CHECK_EQ_SZ(atomic_load(&arena->used_units), 0);
  bmm__arena_purge_all();
  size_t dirty_free = 0;
  for (size_t u = BMM_ARENA_HEADER_UNITS; u < BMM_ARENA_UNITS; u++) {
    if (!unit_used(arena, u) && unit_dirty(arena, u)) dirty_free++;
    if (!unit_used(second, u) && unit_dirty(second, u)) dirty_free++;
  }
  CHECK_EQ_SZ(dirty_free, 0);
  /* The header stays claimed. */
  size_t header_free = 0;
  for (size_t u = 0; u < BMM_ARENA_HEADER_UNITS; u++)
    header_free += !unit_used(arena, u);
  CHECK_EQ_SZ(header_free, 0);
  CHECK(bmm__arena_check_all());
}

static void check_huge(void) {
  static const struct {
    size_t size, align;
  } cases[] = {
      {40 * MiB, 16},           {40 * MiB, 64 * MiB}, {40 * MiB, 128 * MiB},
      {40 * MiB + 1, 64 * KiB}, {300 * MiB, 16}, /* larger than a region */
  };
  size_t ps = bmm__os_page_size(), foreign_in_tail = 0, interior_bad = 0;
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    size_t size = cases[k].size, align = cases[k].align;
    uint8_t *p = bmm__huge_alloc(size, align);
    if (!CHECK(p != NULL)) continue;
    CHECK_EQ_SZ((uintptr_t)p % align, 0);
    CHECK_EQ_SZ((uintptr_t)p % BMM_UNIT_SIZE, 0);
    bmm_page_t *page = bmm__page_of(p);
    if (!CHECK(page != NULL)) continue;
    CHECK_EQ_LONG(atomic_load(&page->kind), BMM_PAGE_HUGE);
    CHECK(bmm__page_start(page) == p);
    CHECK(page->block_size >= size);
    CHECK_EQ_SZ(page->block_size, (size + ps - 1) & ~(ps - 1));
    CHECK_EQ_SZ(bmm__arena_of_page(page)->magic, BMM_HUGE_MAGIC);
    p[0] = 1;
    p[size - 1] = 2;
    CHECK(p[0] == 1 && p[size - 1] == 2);
    CHECK(bmm__arena_check_all()); /* huge regions are not in the arena table */
    /* Only the first unit of a huge block has a descriptor (internal.h,
     * bmm__page_of): further in, a unit's own zero descriptor answers (kind
     * FREE), so an interior pointer is never taken for a block start.
     * Within the first unit the block's own descriptor answers. */
    bmm_page_t *inner = bmm__page_of(p + 1 * MiB);
    if (inner == NULL || inner == page || atomic_load(&inner->kind) != BMM_PAGE_FREE)
      interior_bad++;
    if (bmm__page_of(p + 4096) != page) interior_bad++;
    /* Address space in the region past the huge mapping is not ours: map
     * something there (if the kernel agrees) and it must not be taken for a
     * block. */
    uint8_t *region = (uint8_t *)bmm__arena_of_page(page);
    uint8_t *map_end = region + bmm__arena_of_page(page)->map_size;
    if (map_end + 2 * BMM_UNIT_SIZE <= region + BMM_REGION_SIZE) {
      uint8_t *want = map_end + BMM_UNIT_SIZE;
      void *q = mmap(want, ps, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
      if (q == want) {
        bmm_page_t *fp = bmm__page_of(q);
        CHECK(fp == NULL || atomic_load(&fp->kind) == BMM_PAGE_FREE);
        foreign_in_tail++;
      }
      if (q != MAP_FAILED) munmap(q, ps);
    }
    bmm__huge_free(page);
    CHECK(bmm__page_of(p) == NULL);
  }
  CHECK_EQ_SZ(interior_bad, 0);
  CHECK(foreign_in_tail > 0);   /* the tail test above did run */
  /* An alignment of a whole region cannot be placed after the header. */
  errno = 0;
  CHECK(bmm__huge_alloc(40 * MiB, BMM_REGION_SIZE) == NULL);
  CHECK_EQ_LONG(errno, ENOMEM);
  errno = 0;
  CHECK(bmm__huge_alloc(SIZE_MAX - 1000, 16) == NULL);
  CHECK_EQ_LONG(errno, ENOMEM);
}

/* ---- Concurrent claims ----------------------------------------------- */

#define THREADS 4
#define ROUNDS 3000
#define MAX_ARENAS_SEEN 16
/* Who holds each unit: 0 or the thread's number + 1. */
static _Atomic(unsigned) owner[MAX_ARENAS_SEEN][BMM_ARENA_UNITS];
static atomic_ulong overlaps, failures;

static void *claim_thread(void *arg) {
  unsigned me = (unsigned)(uintptr_t)arg + 1;
  uint32_t hint = 0, seed = me * 2654435761u;
  bmm_page_t *held[8] = {0};
  for (int r = 0; r < ROUNDS; r++) {
    seed = seed * 1103515245u + 12345u;
    size_t slot = (seed >> 8) % 8;
    if (held[slot] != NULL) {
      bmm_page_t *page = held[slot];
      size_t a = bmm__arena_of_page(page)->index, first = unit_index(page);
      for (size_t i = 0; i < page->units; i++)
        atomic_store(&owner[a][first + i], 0);
      bmm__arena_page_free(page);
      held[slot] = NULL;
      continue;
    }
    size_t units = 1 + (seed >> 12) % 8, align = (size_t)1 << ((seed >> 20) % 3);
    bmm_page_t *page = bmm__arena_page_alloc(&hint, units, align, false);
    if (page == NULL) {
      atomic_fetch_add(&failures, 1);
      continue;
    }
    size_t a = bmm__arena_of_page(page)->index, first = unit_index(page);
    if (a >= MAX_ARENAS_SEEN || first % align != 0 || page->units != units) {
      atomic_fetch_add(&failures, 1);
      bmm__arena_page_free(page);
      continue;
    }
    for (size_t i = 0; i < units; i++) {
      unsigned expected = 0;
      if (!atomic_compare_exchange_strong(&owner[a][first + i], &expected, me))
        atomic_fetch_add(&overlaps, 1);
      if (page[i].first_delta != i * sizeof(bmm_page_t)) atomic_fetch_add(&failures, 1);
    }
    held[slot] = page;
  }
  for (size_t slot = 0; slot < 8; slot++) {
    bmm_page_t *page = held[slot];
    if (page == NULL) continue;
    size_t a = bmm__arena_of_page(page)->index, first = unit_index(page);
    for (size_t i = 0; i < page->units; i++)
      atomic_store(&owner[a][first + i], 0);
    bmm__arena_page_free(page);
  }
  return NULL;
}

static void check_concurrent(void) {
  pthread_t t[THREADS];
  for (size_t i = 0; i < THREADS; i++)
    CHECK(pthread_create(&t[i], NULL, claim_thread, (void *)(uintptr_t)i) == 0);
  for (size_t i = 0; i < THREADS; i++)
    pthread_join(t[i], NULL);
  CHECK_EQ_SZ(atomic_load(&overlaps), 0);
  CHECK_EQ_SZ(atomic_load(&failures), 0);
  CHECK(bmm__arena_check_all());
}

int main(void) {
  check_foreign("before any arena");
  CHECK(bmm__arena_check_all());
  check_basic_runs();
  check_foreign("with arenas");
  check_aligned_runs();
  /* Its dirty-bit checks must not race the timed sweep: with the 10 ms
   * default, a slow run (TSan, a busy machine) saw a freed unit purged
   * before it looked. Explicit purges only, there. */
  long saved_delay = bmm__options[BMM_OPTION_PURGE_DELAY];
  bmm__options[BMM_OPTION_PURGE_DELAY] = -1;
  check_fill_reclaim_purge();
  bmm__options[BMM_OPTION_PURGE_DELAY] = saved_delay;
  check_huge();
  check_foreign("after huge blocks");
  check_concurrent();
  bmm__arena_purge_all();
  CHECK(bmm__arena_check_all());
  return check_done();
}
