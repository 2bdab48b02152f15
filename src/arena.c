/* arena.c: owns the address space. An arena is a 256 MiB region, aligned to
 * its size, reserved from the OS and handed out in runs of 64 KiB units;
 * a huge block is a region of its own with the same header layout. The
 * region map says which regions are ours, so any pointer is classified with
 * one byte load before any of its metadata is read.
 *
 * Concurrency: no locks. A unit run is claimed by setting its bits in
 * arena->used with compare-and-swap, word by word, rolling back on
 * conflict; the claimer then owns the run's descriptors until it clears the
 * bits again (release order, so the next claimer sees the reset
 * descriptors). Arenas are published by storing them in the table with
 * release order after their header is written, and never unmapped while the
 * process lives (their units are decommitted instead).
 */
#include <string.h>

#include "internal.h"
#include "track.h"

_Atomic(uint8_t) bmm__region_map[BMM_REGION_MAP_SIZE];

/* 4096 arenas of 256 MiB: 1 TiB of small, medium and large blocks. */
#define BMM_MAX_ARENAS 4096
static _Atomic(bmm_arena_t *) arena_table[BMM_MAX_ARENAS];
static atomic_size_t arena_count;
/* Held while an arena takes its slot and is published, so that fork's
 * handlers see a fixed set of arenas, every one of them in the table (see
 * bmm__arena_fork_prepare, which holds it outermost). Nothing takes it
 * while holding another lock of ours. */
static atomic_int arena_grow_lock;
static size_t arenas_forked; /* [fork] arenas whose span locks fork took */

_Static_assert(sizeof(bmm_page_t) == 128, "page descriptors are 128 bytes");
_Static_assert(BMM_ARENA_HEADER_UNITS < BMM_ARENA_UNITS / 64,
               "the arena header must stay a small fraction of the arena");

static void arena_schedule_purge(bmm_arena_t *arena, size_t first, size_t units);
static void purge_next_lower(int64_t deadline);
static void huge_cache_expire(int64_t now);
static int64_t huge_cache_earliest(int64_t now, int64_t earliest);
static void huge_unmap(bmm_arena_t *h);

/* The huge-block cache (see "The huge-block cache" below). */
#define BMM_HUGE_CACHE 8
static struct {
  bmm_arena_t *h;
  int64_t expires; /* ms */
} huge_cache[BMM_HUGE_CACHE];
static atomic_int huge_cache_lock;
static atomic_int huge_cache_count; /* entries in use: lets empty checks skip the lock */

/* Delayed work of a layer beside this one (large.c's guarded-span cache),
 * run by every sweep; see bmm__arena_sweep_hook. */
static _Atomic(bmm_sweep_fn) sweep_hook;

static void region_map_set(const void *region, uint8_t kind) {
  atomic_store_explicit(&bmm__region_map[(uintptr_t)region >> BMM_REGION_SHIFT], kind,
                        memory_order_release);
}

/* ---- Bitmaps of units ----------------------------------------------- */

static inline uint64_t bits_mask(size_t bit, size_t count) {
  return count >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << count) - 1) << bit;
}

/* Set or clear `count` bits from `first`, word by word. Clearing releases
 * (a unit given back: its reset descriptor is visible to the next claimer,
 * whose CAS acquires); setting the dirty/purge marks needs no order. */
static void bits_update(_Atomic(uint64_t) *words, size_t first, size_t count, bool set) {
  while (count > 0) {
    size_t bit = first & 63, n = 64 - bit < count ? 64 - bit : count;
    if (set) atomic_fetch_or_explicit(&words[first >> 6], bits_mask(bit, n), memory_order_relaxed);
    else atomic_fetch_and_explicit(&words[first >> 6], ~bits_mask(bit, n), memory_order_release);
    first += n;
    count -= n;
  }
}

static void bits_clear(_Atomic(uint64_t) *words, size_t first, size_t count) {
  bits_update(words, first, count, false);
}

static void bits_set(_Atomic(uint64_t) *words, size_t first, size_t count) {
  bits_update(words, first, count, true);
}

/* Set `count` clear bits from `first`, all or none. */
static bool bits_try_claim(_Atomic(uint64_t) *words, size_t first, size_t count) {
  size_t done = 0;
  while (done < count) {
    size_t i = first + done, bit = i & 63;
    size_t n = 64 - bit < count - done ? 64 - bit : count - done;
    uint64_t mask = bits_mask(bit, n);
    uint64_t old = atomic_load_explicit(&words[i >> 6], memory_order_relaxed);
    for (;;) {
      if (old & mask) {
        if (done) bits_clear(words, first, done);
        return false;
      }
      /* acquire: the previous owner's release of these units happens
       * before we reuse their descriptors and memory. */
      if (atomic_compare_exchange_weak_explicit(&words[i >> 6], &old, old | mask,
                                                memory_order_acquire, memory_order_relaxed))
        break;
    }
    done += n;
  }
  return true;
}

/* Length of the run of set bits at the bottom of v (64 if all set). */
static inline size_t ones_at_bottom(uint64_t v) {
  return ~v == 0 ? 64 : (size_t)__builtin_ctzll(~v);
}

/* Find `count` clear bits starting at a multiple of `align`, first from
 * word `start_word` to the end, then from the start. Returns the first bit
 * or SIZE_MAX. Reads are relaxed: the claim re-checks with a CAS. */
static size_t bits_find_run(_Atomic(uint64_t) *words, size_t nwords, size_t start_word,
                            size_t count, size_t align) {
  size_t nbits = nwords * 64;
  for (size_t i = start_word * 64, pass = 0; pass < 2; i = 0, pass++) {
    i = (i + align - 1) & ~(align - 1);
    while (i + count <= nbits) {
      /* Walk the clear bits from i; stop at the first set bit j. */
      size_t j = i;
      while (j < i + count) {
        size_t shift = j & 63;
        uint64_t v = atomic_load_explicit(&words[j >> 6], memory_order_relaxed) >> shift;
        size_t avail = 64 - shift;
        size_t zeros = v == 0 ? avail : (size_t)__builtin_ctzll(v);
        j += zeros < avail ? zeros : avail;
        if (zeros < avail) break;
      }
      if (j >= i + count) return i;
      /* Skip the set bits from j. */
      while (j < nbits) {
        size_t shift = j & 63;
        uint64_t v = atomic_load_explicit(&words[j >> 6], memory_order_relaxed) >> shift;
        size_t avail = 64 - shift;
        size_t ones = ones_at_bottom(v); /* the shifted-in top bits are 0 */
        j += ones < avail ? ones : avail;
        if (ones < avail) break;
      }
      i = (j + align - 1) & ~(align - 1);
    }
  }
  return SIZE_MAX;
}

/* ---- Arenas ---------------------------------------------------------- */

static bmm_arena_t *arena_new(void) {
  bmm_arena_t *arena = bmm__os_reserve_aligned(BMM_REGION_SIZE, BMM_REGION_SIZE, false);
  if (arena == NULL) return NULL;
  size_t header = BMM_ARENA_HEADER_UNITS * BMM_UNIT_SIZE;
  if (!bmm__os_commit(arena, header)) {
    bmm__os_release(arena, BMM_REGION_SIZE);
    return NULL;
  }
  /* Fresh mappings read as zero: only the non-zero fields are written. */
  arena->magic = BMM_ARENA_MAGIC;
  arena->map_base = (uint8_t *)arena;
  arena->map_size = BMM_REGION_SIZE;
  bits_set(arena->used, 0, BMM_ARENA_HEADER_UNITS);
  atomic_store_explicit(&arena->hint, BMM_ARENA_HEADER_UNITS / 64, memory_order_relaxed);
  if (bmm__options[BMM_OPTION_HUGE_PAGES])
    bmm__os_huge_hint((uint8_t *)arena + header, BMM_REGION_SIZE - header, true);
  bmm__spin_lock(&arena_grow_lock);
  size_t idx = atomic_fetch_add_explicit(&arena_count, 1, memory_order_relaxed);
  if (idx >= BMM_MAX_ARENAS) {
    atomic_fetch_sub_explicit(&arena_count, 1, memory_order_relaxed);
    bmm__spin_unlock(&arena_grow_lock);
    bmm__os_release(arena, BMM_REGION_SIZE);
    return NULL;
  }
  arena->index = (uint32_t)idx;
  region_map_set(arena, BMM_REGION_ARENA);
  atomic_store_explicit(&arena_table[idx], arena, memory_order_release);
  bmm__spin_unlock(&arena_grow_lock);
  bmm__verbose("reserved arena", idx);
  return arena;
}

static bmm_arena_t *arena_at(size_t i);

static uint8_t *arena_data(bmm_arena_t *arena) {
  return (uint8_t *)arena + BMM_ARENA_HEADER_UNITS * BMM_UNIT_SIZE;
}
#define BMM_ARENA_DATA_UNITS (BMM_ARENA_UNITS - BMM_ARENA_HEADER_UNITS)

/* Map a released arena's data range again; NULL if there is none (or the
 * range was taken by another mapping meanwhile). */
static bmm_arena_t *arena_revive(void) {
  size_t count = atomic_load_explicit(&arena_count, memory_order_acquire);
  for (size_t a = 0; a < count; a++) {
    bmm_arena_t *arena = arena_at(a);
    int expected = BMM_ARENA_RELEASED;
    if (arena == NULL ||
        !atomic_compare_exchange_strong_explicit(&arena->released, &expected,
                                                 BMM_ARENA_REVIVING, memory_order_acquire,
                                                 memory_order_relaxed))
      continue;
    if (!bmm__os_reserve_at(arena_data(arena), BMM_ARENA_DATA_UNITS * BMM_UNIT_SIZE)) {
      atomic_store_explicit(&arena->released, BMM_ARENA_RETIRED, memory_order_release);
      continue;
    }
    if (bmm__options[BMM_OPTION_HUGE_PAGES])
      bmm__os_huge_hint(arena_data(arena), BMM_ARENA_DATA_UNITS * BMM_UNIT_SIZE, true);
    atomic_store_explicit(&arena->released, BMM_ARENA_LIVE, memory_order_release);
    atomic_store_explicit(&arena->hint, BMM_ARENA_HEADER_UNITS / 64, memory_order_relaxed);
    region_map_set(arena, BMM_REGION_ARENA);
    bits_clear(arena->used, BMM_ARENA_HEADER_UNITS, BMM_ARENA_DATA_UNITS);
    bmm__verbose("revived arena", a);
    return arena;
  }
  return NULL;
}

/* Give the data range of an arena with nothing in use back to the OS. The
 * first arena is kept (a process that allocates at all will again). */
static void arena_release(bmm_arena_t *arena) {
  if (arena->index == 0 || !bmm__options[BMM_OPTION_ARENA_RELEASE] ||
      atomic_load_explicit(&arena->used_units, memory_order_relaxed) != 0)
    return;
  /* Holding every unit bit, nobody can claim here while we unmap. */
  if (!bits_try_claim(arena->used, BMM_ARENA_HEADER_UNITS, BMM_ARENA_DATA_UNITS)) return;
  /* The kernel may put other mappings in the range we give back: from now
   * on no pointer in this region is ours (the header stays mapped for the
   * arena table's scans, which find every unit claimed). */
  region_map_set(arena, BMM_REGION_NONE);
  size_t dirty = 0;
  for (size_t w = 0; w < BMM_ARENA_WORDS; w++) {
    uint64_t data_mask = w * 64 + 64 <= BMM_ARENA_HEADER_UNITS ? 0
                         : w * 64 >= BMM_ARENA_HEADER_UNITS
                             ? ~(uint64_t)0
                             : ~(uint64_t)0 << (BMM_ARENA_HEADER_UNITS - w * 64);
    dirty += (size_t)__builtin_popcountll(
        atomic_fetch_and_explicit(&arena->dirty[w], ~data_mask, memory_order_relaxed) & data_mask);
    atomic_fetch_and_explicit(&arena->purge[w], ~data_mask, memory_order_relaxed);
  }
  bmm__os_release(arena_data(arena), BMM_ARENA_DATA_UNITS * BMM_UNIT_SIZE);
  /* The descriptors and span tables of free units are all zero or stale;
   * drop their pages (they stay mapped: revival reuses them). */
  size_t ps = bmm__os_page_size();
  uintptr_t from = ((uintptr_t)arena->spans + ps - 1) & ~(uintptr_t)(ps - 1);
  if (!bmm__os_reset((void *)from, (uintptr_t)arena_data(arena) - from)) {
    /* The descriptors stay as they were: no unit of the fresh mapping a
     * revival makes has secure mode's guard, whatever a flag says. */
    for (size_t u = BMM_ARENA_HEADER_UNITS; u < BMM_ARENA_UNITS; u++)
      if (arena->pages[u].guarded) arena->pages[u].guarded = 0;
  }
  atomic_fetch_add_explicit(&arena->purged_bytes, dirty * BMM_UNIT_SIZE, memory_order_relaxed);
  atomic_store_explicit(&arena->released, BMM_ARENA_RELEASED, memory_order_release);
  bmm__verbose("released arena", arena->index);
}

static bool arena_claim(bmm_arena_t *arena, size_t units, size_t align_units, size_t *out) {
  for (int attempt = 0; attempt < 4; attempt++) {
    size_t hint = atomic_load_explicit(&arena->hint, memory_order_relaxed);
    size_t first = bits_find_run(arena->used, BMM_ARENA_WORDS, hint, units, align_units);
    if (first == SIZE_MAX) return false;
    if (bits_try_claim(arena->used, first, units)) {
      /* Move the hint past the words that are now full, no further. */
      size_t h = hint;
      while (h < BMM_ARENA_WORDS &&
             atomic_load_explicit(&arena->used[h], memory_order_relaxed) == ~(uint64_t)0)
        h++;
      if (h != hint)
        atomic_compare_exchange_strong_explicit(&arena->hint, &hint, h, memory_order_relaxed,
                                                memory_order_relaxed);
      *out = first;
      return true;
    }
  }
  return false;
}

/* Secure mode keeps the guard of a released one-unit page (its last 4 KiB,
 * PROT_NONE; see bmm__arena_page_free) for the next one-unit page, small
 * or a large block's unit run, which guards the same 4 KiB: two mprotect
 * calls saved (w_larson 4 2M 1024 made 8,770, strace -c). A claim
 * with `keep_guard` false, or of several units, gets its units whole: any
 * guard in them comes down. */
static void arena_claimed_guards(bmm_arena_t *arena, size_t first, size_t units, bool keep_guard) {
  /* Only secure mode guards pages: without it, no descriptor to visit
   * (a 16 MiB span claims 256 units). */
  if (!bmm__secure) return;
  bool kept = bmm__os_commit_keeps_rights(); /* else commit made the units read-write */
  for (size_t u = first; u < first + units; u++) {
    bmm_page_t *page = &arena->pages[u];
    if (!page->guarded || (keep_guard && units == 1 && kept)) continue;
    if (kept)
      bmm__os_protect((uint8_t *)arena + (u + 1) * BMM_UNIT_SIZE - BMM_SPAN_PAGE, BMM_SPAN_PAGE,
                      BMM_PROT_READ | BMM_PROT_WRITE);
    page->guarded = 0;
  }
}

/* Make claimed units usable; on failure give them back. */
static bool arena_commit_claimed(bmm_arena_t *arena, size_t first, size_t units, bool keep_guard) {
  uint8_t *addr = (uint8_t *)arena + first * BMM_UNIT_SIZE;
  if (!bmm__os_commit(addr, units * BMM_UNIT_SIZE)) {
    bits_clear(arena->used, first, units);
    return false;
  }
  arena_claimed_guards(arena, first, units, keep_guard);
  bits_set(arena->dirty, first, units);
  bits_clear(arena->purge, first, units); /* in use again: nothing to purge */
  atomic_fetch_add_explicit(&arena->used_units, units, memory_order_relaxed);
  return true;
}

/* Claim the units [first, first+units) of `arena` exactly, or nothing. */
bool bmm__arena_claim_units(bmm_arena_t *arena, size_t first, size_t units) {
  if (first < BMM_ARENA_HEADER_UNITS || first + units > BMM_ARENA_UNITS) return false;
  if (!bits_try_claim(arena->used, first, units)) return false;
  return arena_commit_claimed(arena, first, units, false);
}

/* Whether the claim bit of `unit` is set. */
static bool unit_claimed(bmm_arena_t *arena, size_t unit) {
  return atomic_load_explicit(&arena->used[unit >> 6], memory_order_relaxed) >> (unit & 63) & 1;
}

bool bmm__arena_unit_is_free(bmm_arena_t *arena, size_t unit) {
  if (unit < BMM_ARENA_HEADER_UNITS || unit >= BMM_ARENA_UNITS) return false;
  return !unit_claimed(arena, unit);
}

/* Claim and commit `units` units aligned to `align_units` from any arena,
 * preferring *arena_hint; the descriptor of the run's first unit, none of
 * whose fields is set (the caller owns the run's descriptors). With
 * `keep_guard`, a single unit may come with secure mode's guard over its
 * last 4 KiB still up (page->guarded set). */
bmm_page_t *bmm__arena_units_alloc(uint32_t *arena_hint, size_t units, size_t align_units,
                                   bool keep_guard) {
  if (units == 0 || units > BMM_ARENA_UNITS - BMM_ARENA_HEADER_UNITS) return NULL;
  bmm__arena_purge_due();
  size_t count = atomic_load_explicit(&arena_count, memory_order_acquire);
  size_t start = *arena_hint < count ? *arena_hint : 0;
  for (size_t k = 0;; k++) {
    bmm_arena_t *arena;
    if (k < count) {
      arena = atomic_load_explicit(&arena_table[(start + k) % count], memory_order_acquire);
      if (arena == NULL) continue; /* being published by another thread */
    } else {
      arena = arena_revive();
      if (arena == NULL) arena = arena_new();
      if (arena == NULL) return NULL;
    }
    size_t first;
    if (!arena_claim(arena, units, align_units, &first)) {
      if (k >= count) return NULL; /* a fresh arena that cannot fit it */
      continue;
    }
    if (!arena_commit_claimed(arena, first, units, keep_guard)) return NULL;
    *arena_hint = arena->index;
    return &arena->pages[first];
  }
}

/* bmm__arena_units_alloc for one page of `units` units: the descriptor of
 * its first unit with first_delta, units and start set (every unit's
 * first_delta leads back to it); the caller sets the rest. */
bmm_page_t *bmm__arena_page_alloc(uint32_t *arena_hint, size_t units, size_t align_units,
                                  bool keep_guard) {
  bmm_page_t *page = bmm__arena_units_alloc(arena_hint, units, align_units, keep_guard);
  if (page == NULL) return NULL;
  for (size_t i = 0; i < units; i++) page[i].first_delta = i * sizeof(bmm_page_t);
  page->units = (uint32_t)units;
  bmm_arena_t *arena = bmm__arena_of_page(page);
  bmm__page_set_start(page, (uint8_t *)arena + (size_t)(page - arena->pages) * BMM_UNIT_SIZE);
  return page;
}

/* Give back units whose descriptors the caller has reset to FREE. No
 * sweep here: large.c calls this under a span lock, and a sweep takes
 * locks (the caches'; the hook's span locks), which fork takes in the
 * other order. The callers sweep once they hold no lock. */
void bmm__arena_release_units(bmm_arena_t *arena, size_t first, size_t units) {
  atomic_fetch_sub_explicit(&arena->used_units, units, memory_order_relaxed);
  bits_clear(arena->used, first, units); /* release: descriptors reset first */
  arena_schedule_purge(arena, first, units);
  size_t w = first >> 6, h = atomic_load_explicit(&arena->hint, memory_order_relaxed);
  while (w < h && !atomic_compare_exchange_weak_explicit(&arena->hint, &h, w,
                                                         memory_order_relaxed,
                                                         memory_order_relaxed)) {
  }
}

/* bmm_pages_protect is about to change the rights of [addr, addr+bytes):
 * flag its regions. A flag beside the region map, not in an arena's
 * header: the memory may be anyone's (a huge block's later regions are in
 * no map; a header may be unmapped by another thread at any time). Only a
 * huge block's free clears its regions' flags (they are its own); a stale
 * flag costs an mprotect per large block freed there. */
_Atomic(uint8_t) bmm__rights_map[BMM_REGION_MAP_SIZE];

/* Set the flag of the regions [addr, addr+bytes) touches to `on`
 * (stored only where it differs: the map's lines stay clean). */
static void rights_flag(const void *addr, size_t bytes, uint8_t on) {
  if (bytes == 0) return;
  uintptr_t first = (uintptr_t)addr >> BMM_REGION_SHIFT;
  uintptr_t last = ((uintptr_t)addr + bytes - 1) >> BMM_REGION_SHIFT;
  for (uintptr_t r = first; r <= last && r < BMM_REGION_MAP_SIZE; r++)
    if (atomic_load_explicit(&bmm__rights_map[r], memory_order_relaxed) != on)
      atomic_store_explicit(&bmm__rights_map[r], on, memory_order_relaxed);
}

void bmm__arena_note_rights(const void *addr, size_t bytes) {
  rights_flag(addr, bytes, 1);
}

size_t bmm__arena_count(void) {
  return atomic_load_explicit(&arena_count, memory_order_acquire);
}

bmm_arena_t *bmm__arena_get(size_t index) {
  return index < bmm__arena_count() ? atomic_load_explicit(&arena_table[index],
                                                           memory_order_acquire)
                                    : NULL;
}

void bmm__arena_page_free(bmm_page_t *page) {
  bmm_arena_t *arena = bmm__arena_of_page(page);
  size_t first = (size_t)(page - arena->pages), units = page->units;
  uint8_t kind = atomic_load_explicit(&page->kind, memory_order_relaxed);
  if (kind == BMM_PAGE_SMALL || kind == BMM_PAGE_MEDIUM) {
    bmm__stats_class_page(page->class_idx, false);
    if (page->live_acct != 0) bmm__stats_class_live(page->class_idx, -(int64_t)page->live_acct);
  }
  /* The units may become anything: a guard comes down, but a single
   * unit's stays up until a claim that wants the unit whole (see
   * arena_claimed_guards). */
  if (page->guarded && units != 1) bmm__secure_unguard(page);
  /* A large unit run comes here with its kind FREE already (its free
   * claimed it): the caller may have changed its rights. */
  if (kind != BMM_PAGE_SMALL && kind != BMM_PAGE_MEDIUM)
    bmm__arena_restore_rights(bmm__page_start(page), page->block_size);
  bmm__track_internal(bmm__page_start(page), (size_t)units * BMM_UNIT_SIZE);
  page->free = page->local_free = NULL;
  page->used = page->reserved = 0;
  __atomic_store_n(&page->capacity, 0, __ATOMIC_RELAXED); /* see bmm__is_carved_block */
  page->block_size = 0;
  page->in_full = 0;
  atomic_store_explicit(&page->thread_free, 0, memory_order_relaxed);
  atomic_store_explicit(&page->heap, NULL, memory_order_relaxed);
  atomic_store_explicit(&page->tid, 0, memory_order_relaxed);
  atomic_store_explicit(&page->kind, BMM_PAGE_FREE, memory_order_relaxed);
  /* Claims search from the hint, which release keeps at the lowest word
   * with a free unit: freed (still committed) units are reused before
   * untouched ones and the footprint stays compact. */
  bmm__arena_release_units(arena, first, units);
  bmm__arena_purge_due();
}

/* ---- Purging ---------------------------------------------------------- */

/* Freed units stay committed for purge_delay ms (a program that frees and
 * allocates the same sizes again reuses them without a page fault), then
 * go back to the OS. Each arena keeps the units marked for purging and one
 * deadline, set by the first free after the last purge; purge_next is the
 * earliest deadline of all arenas, checked on the arena slow paths. */
static _Atomic(int64_t) purge_next;

/* Decommit the free units of `arena` that are dirty and, unless `all`,
 * marked for purging. Each run is claimed while it is decommitted, so no
 * thread can hand it out meanwhile. */
/* Returns whether a run was left because it could not be claimed whole
 * (another thread claims there, or a claim that failed rolled back): its
 * free units still want purging. */
static bool arena_purge(bmm_arena_t *arena, bool all) {
  bool lazy = bmm__options[BMM_OPTION_PURGE_LAZY] != 0;
  bool left = false;
  for (size_t w = 0; w < BMM_ARENA_WORDS; w++) {
    uint64_t cand = atomic_load_explicit(&arena->dirty[w], memory_order_relaxed) &
                    ~atomic_load_explicit(&arena->used[w], memory_order_relaxed);
    if (!all) cand &= atomic_load_explicit(&arena->purge[w], memory_order_relaxed);
    while (cand) {
      size_t bit = (size_t)__builtin_ctzll(cand);
      size_t n = ones_at_bottom(cand >> bit);
      cand &= ~bits_mask(bit, n);
      size_t first = w * 64 + bit;
      if (!bits_try_claim(arena->used, first, n)) {
        left = true;
        continue;
      }
      bmm__os_decommit((uint8_t *)arena + first * BMM_UNIT_SIZE, n * BMM_UNIT_SIZE, lazy);
      atomic_fetch_and_explicit(&arena->dirty[w], ~bits_mask(bit, n), memory_order_relaxed);
      atomic_fetch_and_explicit(&arena->purge[w], ~bits_mask(bit, n), memory_order_relaxed);
      atomic_fetch_add_explicit(&arena->purged_bytes, n * BMM_UNIT_SIZE, memory_order_relaxed);
      bits_clear(arena->used, first, n);
    }
  }
  return left;
}

static bmm_arena_t *arena_at(size_t i) {
  return atomic_load_explicit(&arena_table[i], memory_order_acquire);
}

/* Purge every arena whose deadline has passed; recompute purge_next. Never
 * called with a lock of ours held (see bmm__arena_release_units). */
void bmm__arena_purge_due(void) {
  int64_t next = atomic_load_explicit(&purge_next, memory_order_relaxed);
  if (next == 0) return;
  int64_t now = bmm__os_now_ms();
  if (now < next) return;
  /* One thread does the sweep; the others go on with their work. */
  if (!atomic_compare_exchange_strong_explicit(&purge_next, &next, 0, memory_order_relaxed,
                                               memory_order_relaxed))
    return;
  huge_cache_expire(now);
  size_t count = atomic_load_explicit(&arena_count, memory_order_acquire);
  int64_t earliest = 0;
  bmm_sweep_fn hook = atomic_load_explicit(&sweep_hook, memory_order_acquire);
  if (hook != NULL) earliest = hook(now);
  earliest = huge_cache_earliest(now, earliest);
  for (size_t a = 0; a < count; a++) {
    bmm_arena_t *arena = arena_at(a);
    if (arena == NULL) continue;
    int64_t d = atomic_load_explicit(&arena->purge_deadline, memory_order_relaxed);
    if (d == 0) continue;
    if (d <= now && atomic_compare_exchange_strong_explicit(&arena->purge_deadline, &d, 0,
                                                            memory_order_relaxed,
                                                            memory_order_relaxed)) {
      if (arena_purge(arena, false)) { /* what was left: the next sweep */
        int64_t again = now + 1, none = 0;
        if (atomic_compare_exchange_strong_explicit(&arena->purge_deadline, &none, again,
                                                    memory_order_relaxed, memory_order_relaxed) &&
            (earliest == 0 || again < earliest))
          earliest = again;
      }
      arena_release(arena);
    } else if (d > now && (earliest == 0 || d < earliest)) {
      earliest = d;
    }
  }
  /* Deadlines set during the sweep lowered purge_next themselves. */
  if (earliest != 0) {
    int64_t cur = 0;
    if (!atomic_compare_exchange_strong_explicit(&purge_next, &cur, earliest,
                                                 memory_order_relaxed, memory_order_relaxed) &&
        cur > earliest)
      atomic_store_explicit(&purge_next, earliest, memory_order_relaxed);
  }
}

/* Have `fn` called by every sweep from now on, and a sweep come by
 * `deadline` (ms, bmm__os_now_ms) at the latest. fn(now) does what is due
 * and returns its next deadline (0: none). One hook: the caller is the
 * only layer with delayed work of its own. */
void bmm__arena_sweep_hook(bmm_sweep_fn fn, int64_t deadline) {
  atomic_store_explicit(&sweep_hook, fn, memory_order_release);
  purge_next_lower(deadline);
}

/* Mark freed units for purging according to the purge_delay option. */
static void arena_schedule_purge(bmm_arena_t *arena, size_t first, size_t units) {
  long delay = bmm__options[BMM_OPTION_PURGE_DELAY];
  if (delay < 0) return;
  bits_set(arena->purge, first, units);
  if (delay == 0) {
    if (!arena_purge(arena, false)) return;
    delay = 1; /* a run was left (see arena_purge): the next sweep */
  }
  /* A deadline already set stays (the sweep takes these units with it):
   * no clock read on every free of a large block. */
  if (atomic_load_explicit(&arena->purge_deadline, memory_order_relaxed) != 0) return;
  int64_t deadline = bmm__os_now_ms() + delay, none = 0;
  if (atomic_compare_exchange_strong_explicit(&arena->purge_deadline, &none, deadline,
                                              memory_order_relaxed, memory_order_relaxed))
    purge_next_lower(deadline);
}

/* Make the sweep come by `deadline` at the latest. */
static void purge_next_lower(int64_t deadline) {
  int64_t next = atomic_load_explicit(&purge_next, memory_order_relaxed);
  while ((next == 0 || deadline < next) &&
         !atomic_compare_exchange_weak_explicit(&purge_next, &next, deadline,
                                                memory_order_relaxed, memory_order_relaxed)) {
  }
}

static void purge_arenas(bool all) {
  size_t count = atomic_load_explicit(&arena_count, memory_order_acquire);
  for (size_t a = 0; a < count; a++) {
    bmm_arena_t *arena = arena_at(a);
    if (arena == NULL) continue;
    atomic_store_explicit(&arena->purge_deadline, 0, memory_order_relaxed);
    arena_purge(arena, all);
    arena_release(arena);
  }
}

/* Decommit every free unit that may still hold memory, now. */
void bmm__arena_purge_all(void) {
  huge_cache_expire(-1);
  purge_arenas(true);
}

/* Decommit the units freed since the last purge now, without waiting for
 * their deadline (bmm_heap_destroy: the program said it is done with
 * them). */
void bmm__arena_purge_marked(void) {
  purge_arenas(false);
}

/* ---- Accounting -------------------------------------------------------- */

static _Atomic(size_t) huge_bytes;  /* mapped for huge blocks */
static _Atomic(size_t) huge_cached; /* of it, in the huge-block cache (freed) */
static _Atomic(size_t) huge_purged; /* returned by freeing huge blocks */

/* No arena, huge block or region block was ever made: nothing has been
 * allocated (besides the heaps' own structs). */
bool bmm__arena_untouched(void) {
  return atomic_load_explicit(&arena_count, memory_order_acquire) == 0 &&
         atomic_load_explicit(&huge_bytes, memory_order_relaxed) == 0;
}

static size_t bits_count(_Atomic(uint64_t) *words) {
  size_t n = 0;
  for (size_t w = 0; w < BMM_ARENA_WORDS; w++)
    n += (size_t)__builtin_popcountll(atomic_load_explicit(&words[w], memory_order_relaxed));
  return n;
}

/* Accounting of arena `index`; false when there is no such arena. The
 * header counts as committed and used. Figures are a snapshot taken
 * without stopping other threads. */
bool bmm__arena_stats(size_t index, bmm_mem_stats_t *out) {
  if (index >= atomic_load_explicit(&arena_count, memory_order_acquire)) return false;
  bmm_arena_t *arena = arena_at(index);
  if (arena == NULL) return false;
  size_t header = BMM_ARENA_HEADER_UNITS * BMM_UNIT_SIZE;
  bool live = atomic_load_explicit(&arena->released, memory_order_relaxed) == BMM_ARENA_LIVE;
  out->reserved = live ? BMM_REGION_SIZE : header;
  out->committed = header + bits_count(arena->dirty) * BMM_UNIT_SIZE;
  out->used = (live ? atomic_load_explicit(&arena->used_units, memory_order_relaxed) : 0) *
                  BMM_UNIT_SIZE +
              header;
  out->purged = atomic_load_explicit(&arena->purged_bytes, memory_order_relaxed);
  return true;
}

/* Totals over every arena and huge block. */
void bmm__mem_stats(bmm_mem_stats_t *out) {
  size_t huge = atomic_load_explicit(&huge_bytes, memory_order_relaxed);
  out->reserved = out->committed = huge;
  /* A cached huge block was freed: mapped (and committed) still, not used. */
  size_t cached = atomic_load_explicit(&huge_cached, memory_order_relaxed);
  out->used = huge > cached ? huge - cached : 0;
  out->purged = atomic_load_explicit(&huge_purged, memory_order_relaxed);
  bmm_mem_stats_t a;
  size_t count = atomic_load_explicit(&arena_count, memory_order_acquire);
  for (size_t i = 0; i < count; i++) {
    if (!bmm__arena_stats(i, &a)) continue;
    out->reserved += a.reserved;
    out->committed += a.committed;
    out->used += a.used;
    out->purged += a.purged;
  }
}

/* ---- Huge blocks ----------------------------------------------------- */

/* A huge block gets a region of its own: the arena header layout, then the
 * block at the first unit boundary past the header that satisfies `align`.
 * Only the header's first page and the block's one descriptor are touched.
 *
 * Secure mode: the mapping's last page is a guard page (PROT_NONE), counted
 * in map_size but not in the block. The address space after a mapping is
 * free, and the kernel may put anything there later: only a guard of our
 * own stops an overflow from running into it. */

static inline size_t huge_guard(void) {
  return bmm__secure ? bmm__os_page_size() : 0;
}

/* Put the guard at the end of h's mapping up, or take it down (resizing:
 * mremap wants one mapping, and the guard is a mapping of its own). A
 * guard the kernel refuses (out of mappings) is simply missing. */
static void huge_guard_set(bmm_arena_t *h, bool on) {
  size_t g = huge_guard();
  if (g)
    bmm__os_protect((uint8_t *)h + h->map_size - g, g,
                    on ? BMM_PROT_NONE : BMM_PROT_READ | BMM_PROT_WRITE);
}

/* ---- The huge-block cache --------------------------------------------- */

/* A freed huge block keeps its mapping (and its memory) for purge_delay
 * ms: a program that allocates and frees blocks of tens of MiB in turn then
 * pays neither the aligned mmap/trim nor the page faults each time. Only a
 * few are kept, found by size; the purge sweep unmaps the expired ones. */

static void huge_cache_acquire(void) {
  bmm__spin_lock(&huge_cache_lock);
}

static void huge_cache_release(void) {
  bmm__spin_unlock(&huge_cache_lock);
}

static bool huge_cache_put(bmm_arena_t *h) {
  long delay = bmm__options[BMM_OPTION_PURGE_DELAY];
  if (delay == 0) return false;
  int64_t expires = delay < 0 ? INT64_MAX : bmm__os_now_ms() + delay;
  bool kept = false;
  huge_cache_acquire();
  for (size_t i = 0; i < BMM_HUGE_CACHE && !kept; i++) {
    if (huge_cache[i].h == NULL) {
      huge_cache[i].h = h;
      huge_cache[i].expires = expires;
      atomic_fetch_add_explicit(&huge_cache_count, 1, memory_order_relaxed);
      atomic_fetch_add_explicit(&huge_cached, h->map_size, memory_order_relaxed);
      kept = true;
    }
  }
  huge_cache_release();
  if (kept && delay > 0) purge_next_lower(expires);
  return kept;
}

/* A cached mapping whose block starts at `offset`, resized to hold `total`
 * bytes, or NULL. The best one by this order: a mapping at most a quarter
 * bigger, taken as it is (the block is then bigger than asked); a smaller
 * one (at least half), grown where it stands; a bigger one (at most
 * twice), shrunk. Shrinking unmaps the tail, which in a threaded process
 * costs a TLB shootdown on every CPU (w_large 2: 30% of the time when
 * every reuse was cut to size). Taking a mapping much bigger as it is
 * would not: but the pages that earlier blocks touched stay resident in
 * the slack, and with sizes that vary they pile up (twice the RSS with a
 * 2x slack). The system call runs outside the cache's lock. */
static bmm_arena_t *huge_cache_take(size_t offset, size_t total) {
  if (atomic_load_explicit(&huge_cache_count, memory_order_relaxed) == 0) return NULL;
  enum { AS_IS, GROW, SHRINK, NONE };
  int best_rank = NONE;
  size_t best = 0, best_slack = SIZE_MAX;
  huge_cache_acquire();
  for (size_t i = 0; i < BMM_HUGE_CACHE; i++) {
    bmm_arena_t *h = huge_cache[i].h;
    if (h == NULL || bmm__page_start(&h->pages[offset >> BMM_UNIT_SHIFT]) != (uint8_t *)h + offset)
      continue;
    size_t m = h->map_size;
    if (m > 2 * total || 2 * m < total) continue;
    int rank = m < total ? GROW : m - total <= total / 4 ? AS_IS : SHRINK;
    /* Secure mode: resizing would move the guard (two more system calls,
     * each splitting mappings); up to twice the size is taken as it is. */
    if (huge_guard() && rank != AS_IS) rank = rank == SHRINK ? AS_IS : NONE;
    if (rank == NONE) continue;
    size_t slack = m < total ? total - m : m - total;
    if (rank < best_rank || (rank == best_rank && slack < best_slack)) {
      best_rank = rank;
      best = i;
      best_slack = slack;
    }
  }
  bmm_arena_t *h = NULL;
  if (best_rank != NONE) {
    h = huge_cache[best].h;
    huge_cache[best].h = NULL;
    atomic_fetch_sub_explicit(&huge_cache_count, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&huge_cached, h->map_size, memory_order_relaxed);
  }
  huge_cache_release();
  if (h == NULL) return NULL;
  if (best_rank == AS_IS) {
    total = h->map_size;
  } else if (bmm__os_remap(h, h->map_size, total, NULL) != (void *)h) {
    if (!huge_cache_put(h)) huge_unmap(h); /* the range next to it is taken */
    return NULL;
  }
  atomic_fetch_add_explicit(&huge_bytes, total, memory_order_relaxed);
  atomic_fetch_sub_explicit(&huge_bytes, h->map_size, memory_order_relaxed);
  h->map_size = total;
  return h;
}

/* Unmap cached mappings that expired by `now` (all with now < 0). */
static void huge_cache_expire(int64_t now) {
  if (atomic_load_explicit(&huge_cache_count, memory_order_relaxed) == 0) return;
  bmm_arena_t *drop[BMM_HUGE_CACHE];
  size_t n = 0;
  huge_cache_acquire();
  for (size_t i = 0; i < BMM_HUGE_CACHE; i++) {
    if (huge_cache[i].h != NULL && (now < 0 || huge_cache[i].expires <= now)) {
      drop[n++] = huge_cache[i].h;
      atomic_fetch_sub_explicit(&huge_cached, huge_cache[i].h->map_size, memory_order_relaxed);
      huge_cache[i].h = NULL;
      atomic_fetch_sub_explicit(&huge_cache_count, 1, memory_order_relaxed);
    }
  }
  huge_cache_release();
  for (size_t i = 0; i < n; i++) huge_unmap(drop[i]);
}

/* The earlier of `earliest` (0: none) and the first expiry after `now` of
 * a cached mapping. Under the lock: other threads put and take entries
 * meanwhile (a peek without it was a data race that TSan reported). */
static int64_t huge_cache_earliest(int64_t now, int64_t earliest) {
  if (atomic_load_explicit(&huge_cache_count, memory_order_relaxed) == 0) return earliest;
  huge_cache_acquire();
  for (size_t i = 0; i < BMM_HUGE_CACHE; i++) {
    int64_t e = huge_cache[i].h != NULL ? huge_cache[i].expires : 0;
    if (e > now && e != INT64_MAX && (earliest == 0 || e < earliest)) earliest = e;
  }
  huge_cache_release();
  return earliest;
}

/* Offset of a huge block's data from its region start for `align`, or 0
 * when the alignment cannot be served (a whole region or more). */
static size_t huge_offset(size_t align) {
  size_t offset = BMM_ARENA_HEADER_UNITS * BMM_UNIT_SIZE;
  if (align > BMM_UNIT_SIZE) offset = (offset + align - 1) & ~(align - 1);
  return offset < BMM_REGION_SIZE ? offset : 0;
}

/* Write the header of a huge region at h whose block starts at offset. */
static bmm_page_t *huge_init(bmm_arena_t *h, size_t offset, size_t total) {
  h->magic = BMM_HUGE_MAGIC;
  h->map_base = (uint8_t *)h;
  h->map_size = total;
  h->index = UINT32_MAX;
  bmm_page_t *page = &h->pages[offset >> BMM_UNIT_SHIFT];
  page->first_delta = 0;
  page->block_size = total - offset - huge_guard();
  page->units = (uint32_t)((page->block_size + BMM_UNIT_SIZE - 1) >> BMM_UNIT_SHIFT);
  bmm__page_set_start(page, (uint8_t *)h + offset);
  page->reserved = page->used = 1;
  page->capacity = 0;
  page->next = page->prev = NULL; /* a cached region's may be stale */
  atomic_store_explicit(&page->heap, NULL, memory_order_relaxed);
  atomic_store_explicit(&page->kind, BMM_PAGE_HUGE, memory_order_relaxed);
  atomic_fetch_add_explicit(&huge_bytes, total, memory_order_relaxed);
  region_map_set(h, BMM_REGION_ARENA);
  return page;
}

void *bmm__huge_alloc(size_t size, size_t align) {
  size_t ps = bmm__os_page_size();
  size_t offset = huge_offset(align);
  if (offset == 0 || size > SIZE_MAX - offset - ps) {
    errno = ENOMEM; /* alignments of a region or more are not supported */
    return NULL;
  }
  size_t g = huge_guard();
  if (size > SIZE_MAX - offset - ps - g) {
    errno = ENOMEM;
    return NULL;
  }
  size_t total = ((offset + size + ps - 1) & ~(ps - 1)) + g;
  bmm_arena_t *h = huge_cache_take(offset, total);
  bool fresh = h == NULL;
  if (!fresh) total = h->map_size; /* it may be bigger */
  if (fresh) h = bmm__os_reserve_aligned(total, BMM_REGION_SIZE, true);
  if (h == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  if (fresh && g) {
    h->map_size = total; /* for huge_guard_set; huge_init sets it too */
    huge_guard_set(h, true);
  }
  if (!fresh) atomic_fetch_sub_explicit(&huge_bytes, total, memory_order_relaxed); /* re-added */
  bmm_page_t *page = huge_init(h, offset, total);
  page->capacity = !fresh; /* 1: reused memory, not known to be zero */
  page->align_log = (uint8_t)(align > BMM_ALIGN ? __builtin_ctzll(align) : 0);
  return bmm__page_start(page);
}

/* A huge block of `size` bytes whose first `have` bytes are the pages at
 * `data` (moved there, not copied: mremap moves page tables; `data` stays
 * mapped, see bmm__os_move). The data and its guard must be one mapping
 * of their own, so that they can later grow with mremap; moved pages do
 * not merge with the reservation around them, so the range after them is
 * given back and the moved mapping grows over it. Another thread's mmap
 * may take that range meanwhile: then the pages go back to `data` and
 * nothing of that range is touched. NULL (`data` as it was) on failure. */
void *bmm__huge_adopt(void *data, size_t have, size_t size) {
  size_t ps = bmm__os_page_size(), offset = huge_offset(0), g = huge_guard();
  if (size > SIZE_MAX - offset - ps - g) return NULL;
  size_t bytes = (size + ps - 1) & ~(ps - 1);
  if (have > bytes || (have & (ps - 1)) != 0) return NULL;
  bmm_arena_t *h = bmm__os_reserve_aligned(offset + bytes + g, BMM_REGION_SIZE, true);
  if (h == NULL) return NULL;
  uint8_t *d = (uint8_t *)h + offset;
  int saved = errno; /* a failure here ends in a copy: the call succeeds */
  size_t grown = bytes + g; /* the guard too: it must be of the same mapping */
  if (grown > have) bmm__os_release(d + have, grown - have);
  bool moved = bmm__os_move(data, have, d);
  if (moved && grown > have && bmm__os_remap(d, have, grown, NULL) != d) {
    /* Not ours any more: leave it alone, and put the pages back. */
    if (!bmm__os_move(d, have, data))
      bmm__fatal("could not move a large block's pages back (out of mappings?)");
    moved = false;
  }
  if (!moved) {
    bmm__os_release(h, offset + have);
    errno = saved;
    return NULL;
  }
  bmm_page_t *page = huge_init(h, offset, offset + bytes + g);
  huge_guard_set(h, true);
  return bmm__page_start(page);
}

/* Resize the mapping of a huge block to `bytes` past the block's start
 * (its guard included) without copying: it shrinks or grows where it
 * stands, or else header and data move to a fresh region-aligned range
 * (page tables move, bytes do not). Returns the block's (possibly new)
 * descriptor, or NULL with the block untouched. */
static bmm_page_t *huge_remap(bmm_page_t *page, size_t bytes, bool may_move) {
  bmm_arena_t *h = bmm__arena_of_page(page);
  size_t offset = (size_t)(bmm__page_start(page) - (uint8_t *)h);
  size_t old_bytes = h->map_size - offset;
  if (bytes == old_bytes) return page;
  if (bmm__os_remap(bmm__page_start(page), old_bytes, bytes, NULL) == bmm__page_start(page)) {
    h->map_size = offset + bytes;
  } else {
    if (bytes < old_bytes || !may_move) return NULL;
    bmm_arena_t *n = bmm__os_reserve_aligned(offset + bytes, BMM_REGION_SIZE, false);
    if (n == NULL) return NULL;
    /* The header may have to be copied (below): its range must be
     * writable, which a reservation under strict commit accounting is not.
     * Settled before any data moves. */
    if (!bmm__os_commit(n, offset)) {
      bmm__os_release(n, offset + bytes);
      return NULL;
    }
    if (bmm__os_remap(bmm__page_start(page), old_bytes, bytes, (uint8_t *)n + offset) == NULL) {
      bmm__os_release(n, offset + bytes);
      return NULL;
    }
    /* The data moved; now the header. If its pages cannot move, copy the
     * part that is ever written (the fields and the block's descriptor). */
    if (bmm__os_remap(h, offset, offset, n) == NULL) {
      memcpy(n, h, offsetof(bmm_arena_t, pages));
      memcpy(&n->pages[offset >> BMM_UNIT_SHIFT], page, sizeof *page);
      bmm__os_release(h, offset);
    }
    region_map_set(n, BMM_REGION_ARENA);
    region_map_set(h, BMM_REGION_NONE);
    page = &n->pages[offset >> BMM_UNIT_SHIFT];
    n->map_base = (uint8_t *)n;
    n->map_size = offset + bytes;
    bmm__page_set_start(page, (uint8_t *)n + offset);
  }
  if (bytes > old_bytes)
    atomic_fetch_add_explicit(&huge_bytes, bytes - old_bytes, memory_order_relaxed);
  else
    atomic_fetch_sub_explicit(&huge_bytes, old_bytes - bytes, memory_order_relaxed);
  return page;
}

/* Resize a huge block to hold `size` bytes without copying (see
 * huge_remap); in secure mode its guard page comes down for the remap and
 * goes up at the new end. Returns the block's (possibly new) address, or
 * NULL with the block untouched. */
void *bmm__huge_resize(bmm_page_t *page, size_t size, bool may_move) {
  bmm_arena_t *h = bmm__arena_of_page(page);
  size_t ps = bmm__os_page_size(), g = huge_guard();
  size_t offset = (size_t)(bmm__page_start(page) - (uint8_t *)h);
  if (size > SIZE_MAX - offset - ps - g) return NULL;
  size_t bytes = (size + ps - 1) & ~(ps - 1);
  if (bytes == page->block_size) return bmm__page_start(page);
  huge_guard_set(h, false);
  bmm_page_t *q = huge_remap(page, bytes + g, may_move);
  huge_guard_set(q != NULL ? bmm__arena_of_page(q) : h, true);
  if (q == NULL) return NULL;
  q->block_size = bytes;
  q->units = (uint32_t)((bytes + BMM_UNIT_SIZE - 1) >> BMM_UNIT_SHIFT);
  return bmm__page_start(q);
}

static void huge_unmap(bmm_arena_t *h) {
  atomic_fetch_sub_explicit(&huge_bytes, h->map_size, memory_order_relaxed);
  atomic_fetch_add_explicit(&huge_purged, h->map_size, memory_order_relaxed);
  bmm__os_release(h->map_base, h->map_size);
}

void bmm__huge_free(bmm_page_t *page) {
  bmm_arena_t *h = bmm__arena_of_page(page);
  bmm__arena_restore_rights(bmm__page_start(page), page->block_size); /* the guard stays */
  rights_flag(h, h->map_size, 0); /* its regions are its own: their flags go with it */
  region_map_set(h, BMM_REGION_NONE); /* a stale pointer is foreign now */
  if (!huge_cache_put(h)) huge_unmap(h);
}

/* ---- Region blocks ---------------------------------------------------- */

/* Blocks aligned to a region or more (a 256 MiB memory block, an
 * alignment of 256 MiB .. 1 GiB and up) cannot keep a header in their own
 * region: they are exact mappings (reserved with alignment, trimmed, so no
 * address space is stranded), marked BMM_REGION_BLOCK in the region map and
 * listed here. Rare and huge, so a small table under a spin lock. They have
 * no descriptor for a first-class heap to link: each entry names the heap
 * it belongs to instead (its id, never reused; 0: the default heap), which
 * finds its blocks here to visit or destroy them. */
static struct {
  uintptr_t base;
  size_t size;    /* usable bytes */
  size_t mapped;  /* the mapping: size and a guard page in secure mode */
  size_t align;
  uint64_t owner; /* a first-class heap's id, or 0 */
} region_blocks[BMM_REGION_BLOCKS];
static atomic_int region_blocks_lock;

static void region_blocks_acquire(void) {
  bmm__spin_lock(&region_blocks_lock);
}

static void region_blocks_release(void) {
  bmm__spin_unlock(&region_blocks_lock);
}

/* `guard`: secure mode's inaccessible page after the block (without it if
 * the kernel refuses: the block is good all the same). `owner`: see above. */
void *bmm__region_block_alloc(size_t size, size_t align, bool guard, uint64_t owner) {
  size_t ps = bmm__os_page_size();
  if (align < BMM_REGION_SIZE) align = BMM_REGION_SIZE;
  if (size > SIZE_MAX - align - 2 * ps) return NULL;
  size = size == 0 ? ps : (size + ps - 1) & ~(ps - 1);
  size_t mapped = size + (guard ? ps : 0);
  uint8_t *p = bmm__os_reserve_aligned(mapped, align, true);
  if (p == NULL) return NULL;
  if (guard) bmm__os_protect(p + size, ps, BMM_PROT_NONE);
  region_blocks_acquire();
  size_t i = 0;
  while (i < BMM_REGION_BLOCKS && region_blocks[i].base != 0) i++;
  if (i == BMM_REGION_BLOCKS) {
    region_blocks_release();
    bmm__os_release(p, mapped);
    return NULL;
  }
  region_blocks[i].base = (uintptr_t)p;
  region_blocks[i].size = size;
  region_blocks[i].mapped = mapped;
  region_blocks[i].align = align;
  region_blocks[i].owner = owner;
  region_map_set(p, BMM_REGION_BLOCK);
  region_blocks_release();
  atomic_fetch_add_explicit(&huge_bytes, mapped, memory_order_relaxed);
  return p;
}

/* Size of the region block starting at p, or 0; its alignment in *align
 * (if not NULL). */
size_t bmm__region_block_size(const void *p, size_t *align) {
  uintptr_t r = (uintptr_t)p >> BMM_REGION_SHIFT;
  if (r >= BMM_REGION_MAP_SIZE ||
      atomic_load_explicit(&bmm__region_map[r], memory_order_acquire) != BMM_REGION_BLOCK)
    return 0;
  size_t size = 0;
  region_blocks_acquire();
  for (size_t i = 0; i < BMM_REGION_BLOCKS; i++) {
    if (region_blocks[i].base == (uintptr_t)p) {
      size = region_blocks[i].size;
      if (align != NULL) *align = region_blocks[i].align;
    }
  }
  region_blocks_release();
  return size;
}

/* The live region blocks of `owner` (at most max: there are at most
 * BMM_REGION_BLOCKS): their starts in out[], usable sizes in sizes[]; how
 * many. A snapshot: any of them may be freed once the lock is dropped. */
size_t bmm__region_blocks_owned(uint64_t owner, void **out, size_t *sizes, size_t max) {
  size_t n = 0;
  region_blocks_acquire();
  for (size_t i = 0; i < BMM_REGION_BLOCKS && n < max; i++) {
    if (region_blocks[i].base != 0 && region_blocks[i].owner == owner) {
      out[n] = (void *)region_blocks[i].base;
      sizes[n++] = region_blocks[i].size;
    }
  }
  region_blocks_release();
  return n;
}

/* Free the region block starting at p; false if there is none. The region
 * map answers for most pointers without the lock (fixed heaps' blocks
 * outside our regions come this way on every free). */
bool bmm__region_block_free(void *p) {
  uintptr_t r = (uintptr_t)p >> BMM_REGION_SHIFT;
  if (r >= BMM_REGION_MAP_SIZE ||
      atomic_load_explicit(&bmm__region_map[r], memory_order_acquire) != BMM_REGION_BLOCK)
    return false;
  size_t size = 0;
  region_blocks_acquire();
  for (size_t i = 0; i < BMM_REGION_BLOCKS; i++) {
    if (region_blocks[i].base == (uintptr_t)p && p != NULL) {
      size = region_blocks[i].mapped;
      region_blocks[i].base = 0;
      region_map_set(p, BMM_REGION_NONE);
      break;
    }
  }
  region_blocks_release();
  if (size == 0) return false;
  atomic_fetch_sub_explicit(&huge_bytes, size, memory_order_relaxed);
  atomic_fetch_add_explicit(&huge_purged, size, memory_order_relaxed);
  bmm__os_release(p, size);
  return true;
}

/* ---- Checks ---------------------------------------------------------- */

/* The units a page of `kind` at unit u of `arena` spans when its
 * descriptors and the arena's claim bits agree (each unit leads back to
 * it, is claimed, and the run lies in the arena), else 0. */
static size_t page_check(bmm_arena_t *arena, size_t u, uint8_t kind) {
  bmm_page_t *page = &arena->pages[u];
  size_t units = page->units;
  if (page->first_delta != 0 || units == 0 || u + units > BMM_ARENA_UNITS) return 0;
  if (kind == BMM_PAGE_SPANS && units != 1) return 0;
  if (bmm__page_start(page) != (uint8_t *)arena + u * BMM_UNIT_SIZE) return 0;
  for (size_t i = 0; i < units; i++) {
    if (page[i].first_delta != i * sizeof(bmm_page_t)) return 0;
    if (!unit_claimed(arena, u + i)) return 0;
  }
  return units;
}

/* Other threads claim and free pages while we look, without a lock: a
 * page freed between the load of its kind and that of its claim bits
 * looks torn (test/stress saw it in about 1 check of 20,000). A
 * page that fails is looked at again, after a yield, from its kind on:
 * only a failure that persists is believed. */
#define BMM_CHECK_TRIES 8

static bool arena_check(bmm_arena_t *arena) {
  if (arena->magic != BMM_ARENA_MAGIC) return false;
  for (size_t u = 0; u < BMM_ARENA_HEADER_UNITS; u++)
    if (!unit_claimed(arena, u)) return false;
  for (size_t u = BMM_ARENA_HEADER_UNITS; u < BMM_ARENA_UNITS;) {
    size_t units = 0;
    for (int t = 0; t < BMM_CHECK_TRIES && units == 0; t++) {
      if (t > 0) bmm__os_yield();
      uint8_t kind = atomic_load_explicit(&arena->pages[u].kind, memory_order_acquire);
      units = kind == BMM_PAGE_FREE ? 1 : page_check(arena, u, kind);
    }
    if (units == 0) return false;
    u += units;
  }
  return true;
}

bool bmm__arena_check_all(void) {
  size_t count = atomic_load_explicit(&arena_count, memory_order_acquire);
  for (size_t a = 0; a < count; a++) {
    bmm_arena_t *arena = atomic_load_explicit(&arena_table[a], memory_order_acquire);
    if (arena != NULL && !arena_check(arena)) return false;
  }
  return true;
}

/* fork: no lock of ours may be held across fork(), or the child would find
 * it taken forever. Take them all before (the huge cache, the region-block
 * registry, every arena's span lock, always in that order), release them
 * after, in parent and child. */
/* With the grow lock held no arena appears, and every slot below the count
 * holds its arena: fork locks the span locks of exactly those, and the
 * release unlocks exactly those (an arena made between the two, whose span
 * lock another thread held, had it unlocked under it). */
void bmm__arena_fork_prepare(void) {
  bmm__spin_lock(&arena_grow_lock);
  huge_cache_acquire();
  region_blocks_acquire();
  arenas_forked = bmm__arena_count();
  for (size_t a = 0; a < arenas_forked; a++) bmm__spin_lock(&arena_at(a)->span_lock);
}

void bmm__arena_fork_release(void) {
  for (size_t a = 0; a < arenas_forked; a++) bmm__spin_unlock(&arena_at(a)->span_lock);
  region_blocks_release();
  huge_cache_release();
  bmm__spin_unlock(&arena_grow_lock);
}
