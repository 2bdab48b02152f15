/* large.c: blocks above the medium limit (64 KiB).
 *
 * Up to BMM_LARGE_MAX a block is a *span*: a run of 4 KiB pages inside
 * arena units that are carved into spans ("span units"). Every page of a
 * span unit belongs to exactly one span, used or free. Each span has
 * boundary tags in the arena's span table (length and a free bit at its
 * first and last page, zero everywhere else), so a freed span finds its
 * neighbours in O(1) and merges with them: no two free spans are ever
 * adjacent. Free spans sit in 144 size bins (exact up to 64 pages, then 8
 * per doubling) with a bitmap of non-empty bins, so allocation is an O(1)
 * good fit. Whole units inside a free span go back to the arena's unit
 * bitmap (and are purged after purge_delay), so memory flows between small
 * pages and spans.
 *
 * realloc grows a span in place: first into the free span and free units
 * on its right, then into those on its left, moving the data left only as
 * far as needed (with mremap page moves rather than copying when the block
 * is big), and shrinks it in place. Alignments above a page use plain unit
 * runs (BMM_PAGE_LARGE); blocks above BMM_LARGE_MAX get a region of their
 * own (BMM_PAGE_HUGE) that grows with mremap.
 *
 * Secure mode: the last page of every span in use is a guard page
 * (PROT_NONE), counted in the span's tags but not in its usable size. It
 * moves when the span is resized and is made accessible again before the
 * page can join a free span: a free span never holds a guard. A freed span
 * first waits in a small cache with its guard up, so that a block of about
 * its size takes it without a system call (see "Guarded span cache").
 *
 * Concurrency: each arena's span table and bins are guarded by its
 * span_lock (lock.c). Blocks this large are rare next to
 * the memcpy and page faults they cost, so one lock per arena is cheap; the
 * lock is never held while data moves. Unit claims stay lock-free.
 */
#include <string.h>

#include "internal.h"
#include "track.h"

static _Atomic(size_t) bytes_copied; /* realloc accounting */

size_t bmm__large_bytes_copied(void) {
  return atomic_load_explicit(&bytes_copied, memory_order_relaxed);
}

void bmm__large_count_copied(size_t bytes) {
  atomic_fetch_add_explicit(&bytes_copied, bytes, memory_order_relaxed);
}

/* ---- Lock and geometry ------------------------------------------------ */

static void span_lock(bmm_arena_t *a) {
  bmm__spin_lock(&a->span_lock);
}

static void span_unlock(bmm_arena_t *a) {
  bmm__spin_unlock(&a->span_lock);
}

static inline size_t page_index(const bmm_arena_t *a, const void *p) {
  return ((uintptr_t)p - (uintptr_t)a) >> BMM_SPAN_SHIFT;
}

static inline uint8_t *page_addr(bmm_arena_t *a, size_t pg) {
  return (uint8_t *)a + (pg << BMM_SPAN_SHIFT);
}

static inline bool page_in_spans(const bmm_arena_t *a, size_t pg) {
  return pg < BMM_ARENA_PAGES &&
         atomic_load_explicit(&a->pages[pg / BMM_UNIT_PAGES].kind, memory_order_relaxed) ==
             BMM_PAGE_SPANS;
}

static inline size_t pages_for(size_t size) {
  size_t n = (size + BMM_SPAN_PAGE - 1) >> BMM_SPAN_SHIFT;
  return n == 0 ? 1 : n;
}

/* ---- Boundary tags and bins -------------------------------------------- */

static void span_set(bmm_arena_t *a, size_t pg, size_t len, bool free) {
  a->spans[pg].head = (uint32_t)(len << 1 | free);
  a->spans[pg + len - 1].tail = (uint32_t)(len << 1 | free);
}

/* A span handed out: used, and no alignment recorded (yet; its unused
 * free-list link holds the alignment asked, see bmm__large_alloc). */
static void span_set_used(bmm_arena_t *a, size_t pg, size_t len) {
  span_set(a, pg, len, false);
  a->spans[pg].next = 0;
}

/* Forget a span's tags: only live boundaries are ever non-zero, which is
 * what lets free() tell a span start from an interior page. */
static void span_clear(bmm_arena_t *a, size_t pg, size_t len) {
  a->spans[pg].head = 0;
  a->spans[pg + len - 1].tail = 0;
}

/* The bin holding free spans of `len` pages. */
static size_t bin_of(size_t len) {
  if (len <= 64) return len - 1;
  size_t b = 63 - (size_t)__builtin_clzll(len); /* >= 6 */
  return 64 + (b - 6) * 8 + ((len >> (b - 3)) & 7);
}

/* Smallest span length that bin `bin` holds. */
static size_t bin_min(size_t bin) {
  if (bin < 64) return bin + 1;
  size_t b = 6 + (bin - 64) / 8, e = (bin - 64) % 8;
  return (8 + e) << (b - 3);
}

static void bin_insert(bmm_arena_t *a, size_t pg, size_t len) {
  size_t bin = bin_of(len);
  span_set(a, pg, len, true);
  uint32_t head = a->span_bin_head[bin];
  a->spans[pg].next = head;
  a->spans[pg].prev = 0;
  if (head) a->spans[head - 1].prev = (uint32_t)(pg + 1);
  a->span_bin_head[bin] = (uint32_t)(pg + 1);
  atomic_fetch_or_explicit(&a->span_bin_map[bin / 64], (uint64_t)1 << (bin % 64),
                           memory_order_relaxed);
}

static void bin_remove(bmm_arena_t *a, size_t pg) {
  size_t len = a->spans[pg].head >> 1, bin = bin_of(len);
  uint32_t next = a->spans[pg].next, prev = a->spans[pg].prev;
  if (prev) a->spans[prev - 1].next = next;
  else a->span_bin_head[bin] = next;
  if (next) a->spans[next - 1].prev = prev;
  if (a->span_bin_head[bin] == 0)
    atomic_fetch_and_explicit(&a->span_bin_map[bin / 64], ~((uint64_t)1 << (bin % 64)),
                              memory_order_relaxed);
  span_clear(a, pg, len);
}

/* The first non-empty bin whose every span holds `len` pages, or SIZE_MAX.
 * Relaxed reads: without the lock it is a peek (to skip the lock of
 * arenas that cannot serve), under it the truth. */
static size_t bin_fitting(bmm_arena_t *a, size_t len) {
  size_t bin = bin_of(len);
  if (bin_min(bin) < len) bin++; /* every span in the next bin fits */
  for (size_t w = bin / 64; w < (BMM_SPAN_BINS + 63) / 64; w++) {
    uint64_t m = atomic_load_explicit(&a->span_bin_map[w], memory_order_relaxed);
    if (w == bin / 64) m &= ~(uint64_t)0 << (bin % 64);
    if (m != 0) return w * 64 + (size_t)__builtin_ctzll(m);
  }
  return SIZE_MAX;
}

/* First page of a free span of at least `len` pages, taken out of its bin
 * (its length in *got), or SIZE_MAX. Lock held. */
static size_t bin_take(bmm_arena_t *a, size_t len, size_t *got) {
  size_t bin = bin_fitting(a, len);
  if (bin == SIZE_MAX) return SIZE_MAX;
  size_t pg = a->span_bin_head[bin] - 1;
  *got = a->spans[pg].head >> 1;
  bin_remove(a, pg);
  return pg;
}

/* ---- Span units ---------------------------------------------------------- */

static void units_to_spans(bmm_arena_t *a, size_t unit, size_t n) {
  for (size_t i = 0; i < n; i++) {
    bmm_page_t *d = &a->pages[unit + i];
    d->first_delta = 0;
    d->units = 1;
    bmm__page_set_start(d, (uint8_t *)a + (unit + i) * BMM_UNIT_SIZE);
    d->block_size = 0;
    d->reserved = d->used = 0;
    atomic_store_explicit(&d->tid, 0, memory_order_relaxed);
    atomic_store_explicit(&d->kind, BMM_PAGE_SPANS, memory_order_relaxed);
  }
}

static void units_release(bmm_arena_t *a, size_t unit, size_t n) {
  for (size_t i = 0; i < n; i++)
    atomic_store_explicit(&a->pages[unit + i].kind, BMM_PAGE_FREE, memory_order_relaxed);
  bmm__arena_release_units(a, unit, n);
}

/* Make [pg, pg+len) free: merge it with free neighbours, give the whole
 * units inside back to the arena, bin the rest. Lock held; the range's own
 * tags are already cleared. */
static void span_make_free(bmm_arena_t *a, size_t pg, size_t len) {
  size_t end = pg + len;
  if (page_in_spans(a, end) && (a->spans[end].head & 1)) {
    len += a->spans[end].head >> 1;
    bin_remove(a, end);
  }
  if (pg > 0 && page_in_spans(a, pg - 1) && (a->spans[pg - 1].tail & 1)) {
    size_t left = a->spans[pg - 1].tail >> 1;
    bin_remove(a, pg - left);
    pg -= left;
    len += left;
  }
  size_t u0 = (pg + BMM_UNIT_PAGES - 1) / BMM_UNIT_PAGES, u1 = (pg + len) / BMM_UNIT_PAGES;
  if (u1 > u0) {
    if (u0 * BMM_UNIT_PAGES > pg) bin_insert(a, pg, u0 * BMM_UNIT_PAGES - pg);
    if (pg + len > u1 * BMM_UNIT_PAGES)
      bin_insert(a, u1 * BMM_UNIT_PAGES, pg + len - u1 * BMM_UNIT_PAGES);
    units_release(a, u0, u1 - u0);
  } else {
    bin_insert(a, pg, len);
  }
}

/* ---- Guard pages (secure mode) ------------------------------------------ */

static inline size_t guard_pages(void) {
  return bmm__secure ? 1 : 0;
}

/* Make page pg of `a` a guard page (on) or an ordinary one again. A guard
 * the kernel refuses (out of mappings) is simply missing. */
static void guard_set(bmm_arena_t *a, size_t pg, bool on) {
  bmm__os_protect(page_addr(a, pg), BMM_SPAN_PAGE,
                  on ? BMM_PROT_NONE : BMM_PROT_READ | BMM_PROT_WRITE);
}

/* ---- Allocation and free ------------------------------------------------- */

static void *span_take(size_t n) {
  bmm_theap_t *heap = bmm__heap_tls;
  size_t count = bmm__arena_count();
  size_t start = heap->arena_hint < count ? heap->arena_hint : 0;
  for (size_t k = 0; k < count; k++) {
    bmm_arena_t *a = bmm__arena_get((start + k) % count);
    if (a == NULL || bin_fitting(a, n) == SIZE_MAX) continue; /* peek */
    span_lock(a);
    size_t len, pg = bin_take(a, n, &len);
    if (pg != SIZE_MAX) {
      span_set_used(a, pg, n);
      if (len > n) bin_insert(a, pg + n, len - n); /* neighbours are used: no merge */
      span_unlock(a);
      return page_addr(a, pg);
    }
    span_unlock(a);
  }
  /* No free span fits: carve fresh units. */
  size_t units = (n + BMM_UNIT_PAGES - 1) / BMM_UNIT_PAGES;
  uint32_t hint = heap->arena_hint;
  /* Whole units; units_to_spans sets each one's descriptor. */
  bmm_page_t *first = bmm__arena_units_alloc(&hint, units, 1, false);
  if (first == NULL) return NULL;
  if (heap != &bmm__heap_empty) heap->arena_hint = hint;
  bmm_arena_t *a = bmm__arena_of_page(first);
  size_t unit = (size_t)(first - a->pages), pg = unit * BMM_UNIT_PAGES;
  span_lock(a);
  units_to_spans(a, unit, units);
  span_set_used(a, pg, n);
  if (units * BMM_UNIT_PAGES > n) span_make_free(a, pg + n, units * BMM_UNIT_PAGES - n);
  span_unlock(a);
  return page_addr(a, pg);
}

/* ---- Guarded span cache (secure mode) ------------------------------------
 * Putting a guard page up and taking it down are mprotect calls, which
 * split and merge the process's mappings under the kernel's mmap lock
 * (and split a transparent huge page): two per large block made secure mode
 * 3x slower than the default on large blocks, 7x with two threads. So a
 * freed span keeps its guard, in this cache, for purge_delay. A block of
 * n pages takes the smallest cached span that holds it: whole when it has
 * at most 2n usable pages (the usable size grows, the guard still ends
 * the block), else cut: the front gets a new guard (one call), the rest
 * keeps the old one and stays cached. Only a span that leaves the cache
 * unused loses its guard and joins the free spans: evicted (the oldest
 * goes when 32 entries or 128 MiB are held), expired (its memory is given
 * back then, so that it is not held for two delays), or flushed
 * (bmm_collect(true), or a span allocation that found no room). Sizes and
 * slack come from w_large (8 live blocks of 64 KiB-32 MiB): 16 entries
 * taken whole up to 1.25n made 1.3 calls a block, 32 up to 2n 0.02 (0.2
 * when capped at 64 MiB).
 * The slack holds memory only where it was written (by this block or an
 * earlier one). purge_delay=0 (give memory back at once) caches nothing.
 *
 * A cached span keeps used tags (its neighbours cannot merge with it)
 * with BMM_SPAN_CACHED in its link field, which span_pages reads as "no
 * live span here": free, realloc and usable_size report it as freed.
 * Locks: a thread never waits for the cache lock while it holds a span
 * lock or the other way round, and the arena's sweep (which calls
 * span_cache_expire) runs with no lock held; fork takes the cache lock,
 * then the span locks. */
#define BMM_SPAN_CACHE 32
#define BMM_SPAN_CACHE_PAGES ((size_t)128 << (20 - BMM_SPAN_SHIFT))
#define BMM_SPAN_CACHED UINT32_MAX

typedef struct span_cached_s {
  bmm_arena_t *a;   /* NULL: empty slot */
  uint32_t pg, len; /* the span, its guard included */
  int64_t expires;  /* ms */
  uint64_t seq;     /* age: the smallest is evicted first */
} span_cached_t;

/* All under span_cache_lock. */
static span_cached_t span_cache[BMM_SPAN_CACHE];
static size_t span_cache_pages;
static uint64_t span_cache_seq;
static atomic_int span_cache_lock;

static bool span_cache_on(void) {
  return guard_pages() && bmm__options[BMM_OPTION_PURGE_DELAY] != 0;
}

/* Take entry i out (lock held), into *out. */
static void span_cache_remove(size_t i, span_cached_t *out) {
  *out = span_cache[i];
  span_cache_pages -= span_cache[i].len;
  span_cache[i].a = NULL;
}

/* Give a span that left the cache up: guard down, its memory back to the
 * OS if `purge`, then free (merged, binned, whole units to the arena). */
static void span_cache_drop(const span_cached_t *e, bool purge) {
  guard_set(e->a, e->pg + e->len - 1, false);
  if (purge) bmm__os_reset(page_addr(e->a, e->pg), (size_t)e->len << BMM_SPAN_SHIFT);
  span_lock(e->a);
  span_clear(e->a, e->pg, e->len);
  span_make_free(e->a, e->pg, e->len);
  span_unlock(e->a);
}

static int64_t span_cache_expire(int64_t now);

/* Cache the span [pg, pg+len) of `a`, already marked BMM_SPAN_CACHED,
 * evicting the oldest entries while the cache is full. */
static void span_cache_put(bmm_arena_t *a, size_t pg, size_t len) {
  long delay = bmm__options[BMM_OPTION_PURGE_DELAY];
  int64_t expires = delay < 0 ? INT64_MAX : bmm__os_now_ms() + delay;
  span_cached_t out[BMM_SPAN_CACHE];
  size_t n_out = 0, slot;
  bmm__spin_lock(&span_cache_lock);
  for (;;) {
    size_t oldest = BMM_SPAN_CACHE;
    slot = BMM_SPAN_CACHE;
    for (size_t i = 0; i < BMM_SPAN_CACHE; i++) {
      if (span_cache[i].a == NULL) {
        if (slot == BMM_SPAN_CACHE) slot = i;
      } else if (oldest == BMM_SPAN_CACHE || span_cache[i].seq < span_cache[oldest].seq) {
        oldest = i;
      }
    }
    bool room = span_cache_pages + len <= BMM_SPAN_CACHE_PAGES || oldest == BMM_SPAN_CACHE;
    if (slot != BMM_SPAN_CACHE && room) break;
    span_cache_remove(oldest, &out[n_out++]);
  }
  span_cache[slot] = (span_cached_t){a, (uint32_t)pg, (uint32_t)len, expires, ++span_cache_seq};
  span_cache_pages += len;
  bmm__spin_unlock(&span_cache_lock);
  for (size_t i = 0; i < n_out; i++)
    span_cache_drop(&out[i], false);
  if (expires != INT64_MAX) bmm__arena_sweep_hook(span_cache_expire, expires);
}

/* Give up the entries due by `now` (all with -1), memory included; the
 * next deadline, or 0 for none. The arena's sweep calls it (its hook). */
static int64_t span_cache_expire(int64_t now) {
  span_cached_t out[BMM_SPAN_CACHE];
  size_t n_out = 0;
  int64_t next = 0;
  bmm__spin_lock(&span_cache_lock);
  for (size_t i = 0; i < BMM_SPAN_CACHE; i++) {
    if (span_cache[i].a == NULL) continue;
    int64_t due = span_cache[i].expires;
    if (now < 0 || due <= now) span_cache_remove(i, &out[n_out++]);
    else if (due != INT64_MAX && (next == 0 || due < next)) next = due;
  }
  bmm__spin_unlock(&span_cache_lock);
  for (size_t i = 0; i < n_out; i++)
    span_cache_drop(&out[i], true);
  return next;
}

void bmm__large_cache_flush(void) {
  if (guard_pages()) span_cache_expire(-1);
}

void bmm__large_fork_prepare(void) {
  bmm__spin_lock(&span_cache_lock);
}

void bmm__large_fork_release(void) {
  bmm__spin_unlock(&span_cache_lock);
}

/* A cached span for n usable pages (n + 1 with the guard), marked used;
 * with `exact`, only one of exactly that size. NULL if none fits. */
static void *span_cache_take(size_t n, bool exact) {
  size_t want = n + 1, best = BMM_SPAN_CACHE;
  bmm__spin_lock(&span_cache_lock);
  for (size_t i = 0; i < BMM_SPAN_CACHE; i++) {
    size_t len = span_cache[i].len;
    if (span_cache[i].a == NULL || len < want || (exact && len != want)) continue;
    if (best == BMM_SPAN_CACHE || len < span_cache[best].len) best = i;
  }
  span_cached_t e;
  if (best != BMM_SPAN_CACHE) span_cache_remove(best, &e);
  bmm__spin_unlock(&span_cache_lock);
  if (best == BMM_SPAN_CACHE) return NULL;
  bmm_arena_t *a = e.a;
  size_t pg = e.pg, len = e.len;
  /* Whole, when the rest would be small (or only a guard with no page). */
  bool cut = len - want >= 2 && len - want > n;
  span_lock(a);
  if (cut) {
    span_set_used(a, pg, want);
    span_set(a, pg + want, len - want, false);
    a->spans[pg + want].next = BMM_SPAN_CACHED;
  } else {
    a->spans[pg].next = 0;
  }
  span_unlock(a);
  if (cut) {
    guard_set(a, pg + n, true);
    span_cache_put(a, pg + want, len - want);
  }
  return page_addr(a, pg);
}

/* A span of n usable pages, with its guard page in secure mode (the
 * pages API asks for an `exact` size: its blocks are counted in pages). */
static void *span_alloc(size_t n, bool exact) {
  size_t g = guard_pages();
  if (span_cache_on()) {
    void *c = span_cache_take(n, exact);
    if (c != NULL) return c;
  }
  uint8_t *p = span_take(n + g);
  if (p == NULL && g) { /* the room may be in the cache */
    span_cache_expire(-1);
    p = span_take(n + g);
  }
  if (p != NULL && g) {
    bmm_arena_t *a = bmm__arena_of_page(bmm__page_of(p));
    guard_set(a, page_index(a, p) + n, true);
  }
  return p;
}

/* Alignments above a page, and the large blocks of first-class heaps
 * (which link the run's descriptor into their heap): a run of units
 * aligned as asked (no spans). */
void *bmm__large_unit_run(size_t size, size_t align) {
  size_t guard = bmm__secure ? BMM_SPAN_PAGE : 0; /* a guard page after the block */
  size_t units = (size + guard + BMM_UNIT_SIZE - 1) >> BMM_UNIT_SHIFT;
  if (units == 0) units = 1;
  size_t align_units = align > BMM_UNIT_SIZE ? align >> BMM_UNIT_SHIFT : 1;
  bmm_theap_t *heap = bmm__heap_tls;
  uint32_t hint = heap->arena_hint;
  bmm_page_t *page = bmm__arena_page_alloc(&hint, units, align_units, true);
  if (page == NULL) return NULL;
  if (heap != &bmm__heap_empty) heap->arena_hint = hint;
  page->block_size = units << BMM_UNIT_SHIFT;
  page->reserved = page->used = 1;
  if (guard) {
    bmm__secure_guard_tail(page);
    if (page->guarded) page->block_size -= guard;
  }
  atomic_store_explicit(&page->kind, BMM_PAGE_LARGE, memory_order_relaxed);
  return bmm__page_start(page);
}

void *bmm__large_alloc(size_t size, size_t align) {
  if (bmm_unlikely(size > PTRDIFF_MAX)) {
    errno = ENOMEM;
    return NULL;
  }
  bmm__arena_purge_due(); /* a free span may serve this: no arena call */
  void *p;
  if (align > BMM_HUGE_ALIGN_MAX) {
    p = bmm__region_block_alloc(size, align, bmm__secure != 0, 0);
  } else if (size > BMM_LARGE_MAX || align > BMM_LARGE_MAX) {
    p = bmm__huge_alloc(size, align);
  } else if (align > BMM_SPAN_PAGE) {
    p = bmm__large_unit_run(size, align);
    if (p != NULL)
      bmm__page_of(p)->align_log = (uint8_t)(align > BMM_ALIGN ? __builtin_ctzll(align) : 0);
  } else {
    p = span_alloc(pages_for(size), false);
    /* A used span keeps the alignment it was asked for in its (unused)
     * free-list link, so realloc below the span range can keep it. */
    if (p != NULL && align > BMM_ALIGN) {
      bmm_arena_t *a = bmm__arena_of_page(bmm__page_of(p));
      a->spans[page_index(a, p)].next = (uint32_t)__builtin_ctzll(align);
    }
  }
  if (p == NULL) errno = ENOMEM;
  return p;
}

/* The alignment a large block must keep when it is resized (0: none
 * beyond the usual 16 bytes). */
size_t bmm__large_align(const void *p, const bmm_page_t *page) {
  size_t lg = 0;
  switch (atomic_load_explicit(&page->kind, memory_order_relaxed)) {
  case BMM_PAGE_SPANS: {
    bmm_arena_t *a = bmm__arena_of_page(page);
    lg = a->spans[page_index(a, p)].next;
    break;
  }
  case BMM_PAGE_LARGE:
  case BMM_PAGE_HUGE:
    lg = page->align_log;
    break;
  default:
    break;
  }
  return lg ? (size_t)1 << lg : 0;
}

/* `count` zeroed pages, page aligned, as a span (any count: the pages API
 * wants in-place growth for small counts too) or a huge block. */
void *bmm__pages_alloc(size_t count) {
  if (count == 0) count = 1;
  if (count > (SIZE_MAX >> BMM_SPAN_SHIFT) - 1 || count << BMM_SPAN_SHIFT > PTRDIFF_MAX) {
    errno = ENOMEM;
    return NULL;
  }
  size_t bytes = count << BMM_SPAN_SHIFT;
  if (bytes > BMM_LARGE_MAX) {
    uint8_t *p = bmm__large_alloc(bytes, BMM_SPAN_PAGE);
    /* A fresh mapping is zero; one the huge-block cache handed out again
     * (capacity 1) drops its pages, which then read back as zero. */
    if (p != NULL && bmm__page_of(p)->capacity != 0 && !bmm__os_reset(p, bytes))
      memset(p, 0, bytes);
    return p;
  }
  bmm__arena_purge_due();
  uint8_t *p = span_alloc(count, true);
  if (p == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  /* A reused span may hold old data: small ones are cleared by hand, big
   * ones by dropping their pages (they read back as zero). */
  if (bytes <= 16 * BMM_SPAN_PAGE || !bmm__os_reset(p, bytes)) memset(p, 0, bytes);
  return p;
}

/* Pages of the live span starting at p, or 0 if p starts none. Lock-free:
 * a live span's tags change only through its owner's calls. */
static size_t span_pages(bmm_arena_t *a, const void *p) {
  if ((uintptr_t)p & (BMM_SPAN_PAGE - 1)) return 0;
  const bmm_span_slot_t *t = &a->spans[page_index(a, p)];
  return (t->head & 1) || t->next == BMM_SPAN_CACHED ? 0 : t->head >> 1;
}

/* The same without its guard page. */
static size_t span_usable_pages(bmm_arena_t *a, const void *p) {
  size_t len = span_pages(a, p);
  return len ? len - guard_pages() : 0;
}

size_t bmm__span_usable(const void *p, const bmm_page_t *unit) {
  return span_usable_pages(bmm__arena_of_page(unit), p) << BMM_SPAN_SHIFT;
}

void bmm__span_free(void *p, bmm_page_t *unit, const char *call) {
  bmm_arena_t *a = bmm__arena_of_page(unit);
  bmm__arena_restore_rights(p, span_usable_pages(a, p) << BMM_SPAN_SHIFT);
  span_lock(a);
  size_t len = span_pages(a, p);
  if (bmm_unlikely(len == 0)) {
    span_unlock(a);
    bmm__error(p, call, "double free of a large block, or pointer into one");
    return;
  }
  size_t pg = page_index(a, p);
  if (span_cache_on()) { /* into the cache, guard and all */
    a->spans[pg].next = BMM_SPAN_CACHED;
    span_unlock(a);
    span_cache_put(a, pg, len);
  } else {
    /* The guard goes before the span can be merged and handed out. */
    if (guard_pages()) guard_set(a, pg + len - 1, false);
    span_clear(a, pg, len);
    span_make_free(a, pg, len);
    span_unlock(a);
  }
  bmm__arena_purge_due();
}

/* ---- Resizing ------------------------------------------------------------ */

/* Pages move by bmm__os_move, which leaves no hole: the range they left
 * stays mapped, as fresh pages the arena hands out again. Only where
 * commit is a no-op (with strict commit accounting a moved range's charge
 * and rights would have to follow it); copy otherwise. */
static bool remap_ok(void) {
  return bmm__os_commit_keeps_rights();
}

/* Move `bytes` of data from src down to dst (dst < src, both page
 * aligned). Big blocks move by remapping chunks of (src - dst) bytes, each
 * over the range the previous one left, when that takes few system calls.
 * Otherwise memmove. */
static void move_down(uint8_t *dst, uint8_t *src, size_t bytes) {
  size_t shift = (size_t)(src - dst);
  /* The pages on the left were free: memory checkers see them as off
   * limits until the realloc is done (bmm__track_resized). */
  bmm__track_internal(dst, shift < bytes ? shift : bytes);
  if (bytes >= ((size_t)1 << 20) && bytes / shift <= 64 && remap_ok()) {
    size_t off = 0;
    while (off < bytes) {
      size_t chunk = bytes - off < shift ? bytes - off : shift;
      if (!bmm__os_move(src + off, chunk, dst + off)) break;
      off += chunk;
    }
    if (off == bytes) return; /* else the rest is copied the ordinary way */
    memmove(dst + off, src + off, bytes - off);
    bmm__large_count_copied(bytes - off);
    return;
  }
  memmove(dst, src, bytes);
  bmm__large_count_copied(bytes);
}

/* Count free units from `unit` upwards (dir +1) or downwards (dir -1),
 * stopping once `enough` are found. */
static size_t free_units(bmm_arena_t *a, size_t unit, int dir, size_t enough) {
  size_t n = 0;
  while (n < enough && bmm__arena_unit_is_free(a, unit)) {
    n++;
    if (dir < 0 && unit == 0) break;
    unit += (size_t)(ptrdiff_t)dir;
  }
  return n;
}

static void *span_resize_tags(void *p, bmm_page_t *unit, size_t n, bmm_resize_t mode);

/* Resize to n usable pages; in secure mode the guard page moves to the new
 * end. A shrinking span drops its guard first (that page may become
 * free); a growing one keeps it until the new guard is up (the old one is
 * inside the block then). */
static void *span_resize(void *p, bmm_page_t *unit, size_t n, bmm_resize_t mode) {
  size_t g = guard_pages();
  if (!g) return span_resize_tags(p, unit, n, mode);
  bmm_arena_t *a = bmm__arena_of_page(unit);
  size_t pg = page_index(a, p), len = span_pages(a, p);
  if (n + g == len) return p;
  if (n + g < len) guard_set(a, pg + len - 1, false);
  uint8_t *q = span_resize_tags(p, unit, n + g, mode);
  if (q == NULL) return NULL; /* only growth fails: the old guard stands */
  size_t old_guard = pg + len - 1, new_guard = page_index(a, q) + n;
  if (new_guard != old_guard) {
    guard_set(a, new_guard, true);
    if (n + g > len) guard_set(a, old_guard, false);
  }
  return q;
}

/* Resize the span at p to `n` pages (its guard included) where it stands,
 * taking free space on the right first, then on the left. Returns the
 * block's new address, or NULL when the neighbours cannot give enough
 * (nothing changed then). */
static void *span_resize_tags(void *p, bmm_page_t *unit, size_t n, bmm_resize_t mode) {
  bmm_arena_t *a = bmm__arena_of_page(unit);
  size_t pg = page_index(a, p);
  span_lock(a);
  size_t len = span_pages(a, p);
  uint32_t align_slot = a->spans[pg].next;
  if (n <= len) {
    if (n < len) {
      bmm__arena_restore_rights(page_addr(a, pg + n), (len - n) << BMM_SPAN_SHIFT);
      span_clear(a, pg, len);
      span_set(a, pg, n, false);
      span_make_free(a, pg + n, len - n);
    }
    span_unlock(a);
    return p;
  }
  size_t need = n - len, end = pg + len;
  /* Right: a free span, then (from a unit boundary) free units. */
  size_t r_span = page_in_spans(a, end) && (a->spans[end].head & 1) ? a->spans[end].head >> 1 : 0;
  size_t after = end + r_span, r_units = 0;
  if (r_span < need && after % BMM_UNIT_PAGES == 0)
    r_units = free_units(a, after / BMM_UNIT_PAGES, +1,
                         (need - r_span + BMM_UNIT_PAGES - 1) / BMM_UNIT_PAGES);
  size_t right = r_span + r_units * BMM_UNIT_PAGES;
  if (right > need) right = need;
  size_t left = need - right;
  if (left > 0 && mode == BMM_RESIZE_EXPAND) { /* may not move */
    span_unlock(a);
    return NULL;
  }
  /* Left, only for what the right cannot give. */
  size_t l_span = 0, before = pg, l_units = 0;
  if (left > 0) {
    if (pg > 0 && page_in_spans(a, pg - 1) && (a->spans[pg - 1].tail & 1))
      l_span = a->spans[pg - 1].tail >> 1;
    before = pg - l_span;
    if (l_span < left && before % BMM_UNIT_PAGES == 0 && before > 0)
      l_units = free_units(a, before / BMM_UNIT_PAGES - 1, -1,
                           (left - l_span + BMM_UNIT_PAGES - 1) / BMM_UNIT_PAGES);
    if (l_span + l_units * BMM_UNIT_PAGES < left) {
      span_unlock(a);
      return NULL;
    }
  }
  /* Claim only the units needed; give up if another thread got them. */
  size_t r_claim = right > r_span ? (right - r_span + BMM_UNIT_PAGES - 1) / BMM_UNIT_PAGES : 0;
  size_t l_claim = left > l_span ? (left - l_span + BMM_UNIT_PAGES - 1) / BMM_UNIT_PAGES : 0;
  if (r_claim && !bmm__arena_claim_units(a, after / BMM_UNIT_PAGES, r_claim)) {
    span_unlock(a);
    return NULL;
  }
  size_t l_first = before / BMM_UNIT_PAGES - l_claim;
  if (l_claim && !bmm__arena_claim_units(a, l_first, l_claim)) {
    if (r_claim) bmm__arena_release_units(a, after / BMM_UNIT_PAGES, r_claim);
    span_unlock(a);
    return NULL;
  }
  if (r_claim) units_to_spans(a, after / BMM_UNIT_PAGES, r_claim);
  if (l_claim) units_to_spans(a, l_first, l_claim);
  if (r_span) bin_remove(a, end);
  if (left > 0 && l_span) bin_remove(a, before);
  size_t new_pg = pg - left;
  span_clear(a, pg, len);
  span_set(a, new_pg, n, false);
  a->spans[new_pg].next = align_slot;
  size_t r_free = end + right, r_end = after + r_claim * BMM_UNIT_PAGES;
  if (r_end > r_free) span_make_free(a, r_free, r_end - r_free);
  if (left > 0) {
    size_t l_start = before - l_claim * BMM_UNIT_PAGES;
    if (new_pg > l_start) span_make_free(a, l_start, new_pg - l_start);
  }
  span_unlock(a);
  /* The whole new span is ours now: move the data outside the lock. */
  if (left > 0 && mode == BMM_RESIZE_REALLOC) /* the data, not the guard */
    move_down(page_addr(a, new_pg), page_addr(a, pg), (len - guard_pages()) << BMM_SPAN_SHIFT);
  return page_addr(a, new_pg);
}

/* A span grown past BMM_LARGE_MAX becomes huge; a big one moves its pages
 * into the new mapping instead of copying them. */
static void *span_to_huge(void *p, bmm_page_t *unit, size_t size) {
  bmm_arena_t *a = bmm__arena_of_page(unit);
  size_t bytes = span_usable_pages(a, p) << BMM_SPAN_SHIFT;
  /* Remapped pages keep their rights, in a region with no flag for them. */
  bmm__arena_restore_rights(p, bytes);
  uint8_t *q = bytes >= ((size_t)1 << 20) && remap_ok() ? bmm__huge_adopt(p, bytes, size) : NULL;
  if (q == NULL) {
    q = bmm__huge_alloc(size, 0);
    if (q == NULL) return NULL;
    memcpy(q, p, bytes);
    bmm__large_count_copied(bytes);
  }
  bmm__span_free(p, unit, "realloc");
  return q;
}

/* Resize a large or huge block without copying where possible: returns
 * the (possibly moved) block, or NULL when the caller has to allocate,
 * copy (unless reget) and free; the block is untouched then. */
void *bmm__large_realloc(void *p, bmm_page_t *page, size_t size, bmm_resize_t mode) {
  uint8_t kind = atomic_load_explicit(&page->kind, memory_order_relaxed);
  if (size <= BMM_MEDIUM_MAX) return NULL; /* small blocks live elsewhere */
  if (kind == BMM_PAGE_SPANS) {
    if (size <= BMM_LARGE_MAX) return span_resize(p, page, pages_for(size), mode);
    if (mode == BMM_RESIZE_EXPAND) return NULL;
    if (mode == BMM_RESIZE_REALLOC) return span_to_huge(p, page, size);
    void *q = bmm__huge_alloc(size, 0);
    if (q != NULL) bmm__span_free(p, page, "bmm_reget");
    return q;
  }
  if (kind == BMM_PAGE_HUGE && size > BMM_LARGE_MAX)
    return bmm__huge_resize(page, size, mode != BMM_RESIZE_EXPAND);
  return NULL;
}

/* ---- The pages API's resize --------------------------------------------- */

/* Resize pages from bmm__pages_alloc to `count` pages: in place where the
 * neighbours allow (both sides), else into new pages, moving big contents
 * by remapping them rather than copying (not at all with reget). */
void *bmm__pages_resize(void *p, bmm_page_t *page, size_t count, bmm_resize_t mode) {
  if (count == 0) count = 1;
  if (count > (SIZE_MAX >> BMM_SPAN_SHIFT) - 1 || count << BMM_SPAN_SHIFT > PTRDIFF_MAX) {
    errno = ENOMEM;
    return NULL;
  }
  size_t bytes = count << BMM_SPAN_SHIFT;
  uint8_t kind = atomic_load_explicit(&page->kind, memory_order_relaxed);
  if (kind == BMM_PAGE_HUGE) {
    void *q = bmm__huge_resize(page, bytes, true);
    if (q == NULL) errno = ENOMEM;
    return q;
  }
  if (bytes > BMM_LARGE_MAX) {
    void *q = mode == BMM_RESIZE_REALLOC ? span_to_huge(p, page, bytes)
                                         : bmm__large_realloc(p, page, bytes, mode);
    if (q == NULL) errno = ENOMEM;
    return q;
  }
  void *q = span_resize(p, page, count, mode);
  if (q != NULL) return q;
  /* Neighbours are taken: new pages, contents moved over. */
  bmm_arena_t *a = bmm__arena_of_page(page);
  size_t old_bytes = span_usable_pages(a, p) << BMM_SPAN_SHIFT;
  uint8_t *n = span_alloc(count, true);
  if (n == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  if (mode == BMM_RESIZE_REALLOC) {
    size_t keep = old_bytes < bytes ? old_bytes : bytes;
    if (keep < ((size_t)1 << 20) || !remap_ok() || !bmm__os_move(p, keep, n)) {
      memcpy(n, p, keep);
      bmm__large_count_copied(keep);
    }
  }
  bmm__span_free(p, page, "bmm_pages_realloc");
  return n;
}

/* ---- Checks -------------------------------------------------------------- */

/* Walk every span unit of every arena: spans tile the span units, tags at
 * both ends agree, no two free spans touch, and every free span is in the
 * bin its length says. */
static bool span_check_arena(bmm_arena_t *a) {
  span_lock(a);
  bool ok = true;
  size_t free_count = 0, binned = 0;
  bool prev_free = false;
  for (size_t u = BMM_ARENA_HEADER_UNITS; u < BMM_ARENA_UNITS && ok;) {
    if (!page_in_spans(a, u * BMM_UNIT_PAGES)) {
      u++;
      prev_free = false;
      continue;
    }
    size_t pg = u * BMM_UNIT_PAGES;
    /* A span unit run: walk spans until the run ends at a non-span unit. */
    while (ok && page_in_spans(a, pg)) {
      uint32_t head = a->spans[pg].head;
      size_t len = head >> 1;
      if (len == 0 || pg + len > BMM_ARENA_PAGES) {
        ok = false;
        break;
      }
      if (a->spans[pg + len - 1].tail != head) ok = false;
      for (size_t q = pg; q < pg + len; q += BMM_UNIT_PAGES - (q % BMM_UNIT_PAGES))
        if (!page_in_spans(a, q)) ok = false;
      if (head & 1) {
        if (prev_free) ok = false;
        free_count++;
      }
      prev_free = head & 1;
      pg += len;
    }
    u = (pg + BMM_UNIT_PAGES - 1) / BMM_UNIT_PAGES;
    if (pg % BMM_UNIT_PAGES != 0) ok = false; /* a run ends on a unit boundary */
    prev_free = false;
  }
  for (size_t b = 0; b < BMM_SPAN_BINS && ok; b++) {
    bool nonempty = a->span_bin_head[b] != 0;
    if (nonempty != ((atomic_load(&a->span_bin_map[b / 64]) >> (b % 64)) & 1)) ok = false;
    uint32_t prev = 0;
    for (uint32_t i = a->span_bin_head[b]; i != 0 && ok; i = a->spans[i - 1].next) {
      uint32_t head = a->spans[i - 1].head;
      if (!(head & 1) || bin_of(head >> 1) != b || a->spans[i - 1].prev != prev) ok = false;
      if (++binned > free_count) ok = false; /* a cycle, or a span not in a unit */
      prev = i;
    }
  }
  if (binned != free_count) ok = false;
  span_unlock(a);
  return ok;
}

bool bmm__span_check_all(void) {
  size_t count = bmm__arena_count();
  for (size_t i = 0; i < count; i++) {
    bmm_arena_t *a = bmm__arena_get(i);
    if (a != NULL && !span_check_arena(a)) return false;
  }
  return true;
}
