/* page.c: a page is a run of units holding blocks of one size class. This
 * file owns its three free lists and their invariants:
 *   free        [owner] what malloc pops;
 *   local_free  [owner] what the owner's free pushes (kept apart so that
 *               malloc's list is not lengthened under it, and so collection
 *               is a pointer swap);
 *   thread_free [atomic] what other threads push, taken by the owner all
 *               at once.
 * used counts blocks handed out and not yet collected back, so
 * used + |free| + |local_free| == capacity holds between calls, with the
 * blocks on thread_free still counted in used.
 */
#include <string.h>

#include "internal.h"
#include "track.h"

/* Blocks are carved lazily, about one OS page's worth at a time, so a size
 * class used for a handful of objects costs 4 KiB of RSS, not 64 KiB. */
#define BMM_PAGE_EXTEND_BYTES 4096

/* Inverse of an odd m modulo 2^32, by Newton's iteration (each step
 * doubles the correct low bits; m * m == 1 mod 8 gives 3 to start). */
static uint32_t odd_inverse(uint32_t m) {
  uint32_t x = m;
  for (int i = 0; i < 4; i++) x *= 2 - m * x;
  return x;
}

/* used, reserved, installed and live_acct count a page's blocks in 16 bits. */
_Static_assert(BMM_UNIT_SIZE / BMM_ALIGN <= UINT16_MAX &&
                   BMM_MEDIUM_PAGE_UNITS * BMM_UNIT_SIZE / BMM_SMALL_PAGE_MAX <= UINT16_MAX,
               "a page holds at most 65535 blocks");

void bmm__page_init(bmm_page_t *page, bmm_theap_t *heap, size_t cls) {
  size_t bs = bmm__class_size(cls);
  /* The units may have held anything (spans, freed large blocks). */
  bmm__track_internal(bmm__page_start(page), (size_t)page->units * BMM_UNIT_SIZE);
  page->class_idx = (uint16_t)cls;
  page->align_log = 0;
  page->block_size = bs;
  page->block_shift = (uint8_t)__builtin_ctzll(bs);
  page->block_inv = odd_inverse((uint32_t)(bs >> page->block_shift));
  page->reserved = (uint16_t)(page->units * BMM_UNIT_SIZE / bs);
  __atomic_store_n(&page->capacity, 0, __ATOMIC_RELAXED); /* see bmm__is_carved_block */
  page->used = page->live_acct = 0;
  page->free = page->local_free = NULL;
  page->in_full = 0;
  page->installed = 0;
  atomic_store_explicit(&page->sampled_at, 0, memory_order_relaxed);
  atomic_store_explicit(&page->sampled, 0, memory_order_relaxed);
  page->next = page->prev = NULL;
  atomic_store_explicit(&page->thread_free, BMM_DF_NORMAL, memory_order_relaxed);
  atomic_store_explicit(&page->heap, heap, memory_order_relaxed);
  atomic_store_explicit(&page->tid, heap->tid, memory_order_relaxed);
  atomic_store_explicit(&page->kind, page->units == 1 ? BMM_PAGE_SMALL : BMM_PAGE_MEDIUM,
                        memory_order_relaxed);
  if (bmm__secure) bmm__secure_page_init(page);
  bmm__stats_class_page(cls, true);
}

/* Carve the next blocks of the page onto the front of its free list. */
void bmm__page_extend(bmm_page_t *page) {
  bmm_assert(page->capacity < page->reserved);
  size_t bs = page->block_size;
  size_t n = (bmm__secure ? BMM_SECURE_EXTEND_BYTES : BMM_PAGE_EXTEND_BYTES) / bs;
  if (n == 0) n = 1;
  if (n > page->reserved - page->capacity) n = page->reserved - page->capacity;
  uint8_t *first = bmm__page_start(page) + (size_t)page->capacity * bs;
  page->installed = (uint16_t)(page->installed + n); /* read and reset before it can wrap */
  if (bmm__secure) {
    bmm__secure_extend(page, first, n);
    __atomic_store_n(&page->capacity, (uint32_t)(page->capacity + n), __ATOMIC_RELAXED);
    return;
  }
  /* Each block carries the free mark (fastpath.h) as any free block does:
   * a free of one not handed out yet is caught as a double free. */
  uint8_t *p = first;
  for (size_t i = 1; i < n; i++, p += bs) {
    bmm__track_carve(p, bs);
    ((bmm_block_t *)p)->next = (bmm_block_t *)(p + bs);
    ((bmm_page_t **)p)[1] = page; /* bmm__mark_free */
  }
  bmm__track_carve(p, bs);
  ((bmm_block_t *)p)->next = page->free;
  ((bmm_page_t **)p)[1] = page; /* bmm__mark_free */
  page->free = (bmm_block_t *)first;
  __atomic_store_n(&page->capacity, (uint32_t)(page->capacity + n), __ATOMIC_RELAXED);
}

/* Take the blocks other threads freed into the page; returns how many. */
size_t bmm__page_take_thread_free(bmm_page_t *page) {
  uintptr_t tf = atomic_load_explicit(&page->thread_free, memory_order_relaxed);
  if (bmm__tf_head(tf) == NULL) return 0;
  /* acquire: pairs with the release of each remote push, so the next
   * pointers written by the freeing threads are visible to us. */
  while (!atomic_compare_exchange_weak_explicit(&page->thread_free, &tf,
                                                tf & BMM_DF_MASK, memory_order_acquire,
                                                memory_order_relaxed)) {
  }
  bmm_block_t *head = bmm__tf_head(tf);
  uint32_t count = bmm__tf_count(tf);
  /* More blocks back than out: one was freed twice. free_slow catches
   * most double frees by their mark; this is for what gets past it (two
   * threads freeing the same block at once). */
  if (bmm_unlikely(count > page->used || count == 0)) {
    bmm__error(head, "free", "double free detected (block freed twice from other threads)");
    return 0; /* drop the list rather than corrupt the page */
  }
  if (page->local_free == NULL) {
    page->local_free = head; /* the common case with remote frees: no walk */
  } else {
    /* Splice: the list's tail is found by walking it, its length known. */
    bmm_block_t *tail = head;
    for (uint32_t i = 1; i < count && tail != NULL; i++) tail = bmm__next(page, tail);
    if (bmm_unlikely(tail == NULL || bmm__next(page, tail) != NULL)) {
      bmm__error(head, "free", "double free detected (block freed twice from other threads)");
      return 0;
    }
    bmm__set_next(page, tail, page->local_free);
    page->local_free = head;
  }
  page->used -= count;
  return count;
}

/* Gather everything freed into the page so that `free` is refilled. */
void bmm__page_collect(bmm_page_t *page) {
  bmm__page_take_thread_free(page);
  if (page->free == NULL) {
    page->installed = (uint16_t)(page->installed + page->capacity - page->used); /* |local_free| */
    page->free = page->local_free;
    page->local_free = NULL;
  }
}

/* Blocks on the page's free list, counting up to `most` at most. The
 * page's owner calls this. Every carved block is in use (counted in
 * `used`: those on thread_free too, until they are taken) or on `free` or
 * `local_free`: the two lists are walked in step until the shorter ends,
 * whose length gives the other's (with local_free empty: no walk). The
 * free list alone was long on a secure page (32 KiB extensions), and a
 * thread's exit counts every page's: that walk took 3.7% of larson's
 * instructions in secure mode, 2.7% in step. */
uint32_t bmm__page_free_count(const bmm_page_t *page, uint32_t most) {
  uint32_t both = page->capacity - page->used; /* |free| + |local_free| */
  const bmm_block_t *f = page->free, *l = page->local_free;
  uint32_t steps = 0;
  while (f != NULL && l != NULL && steps < both) { /* bounded: a cycle ends too */
    f = bmm__next(page, f);
    l = bmm__next(page, l);
    steps++;
  }
  uint32_t listed = f == NULL ? steps : (both >= steps ? both - steps : 0);
  return listed < most ? listed : most;
}

/* Blocks the page's free list handed out since its `installed` count was
 * last taken: those put on it less those still there. Only pops take
 * blocks off the list, so it holds at most `installed` of them: the walk
 * is that long at most. */
uint32_t bmm__page_popped(const bmm_page_t *page) {
  return page->installed - bmm__page_free_count(page, page->installed);
}

/* Move the page's delayed-free state to `to`, but only if it is now one of
 * the states in `from_mask` (bits 1 << BMM_DF_*). A remote thread in
 * FREEING is always waited out: it is about to write the state itself and
 * it may be touching the owning heap. */
void bmm__page_set_delayed(bmm_page_t *page, uintptr_t to, unsigned from_mask) {
  uintptr_t tf = atomic_load_explicit(&page->thread_free, memory_order_acquire);
  for (unsigned spins = 0;; spins++) {
    uintptr_t cur = tf & BMM_DF_MASK;
    if (cur == BMM_DF_FREEING) {
      if (spins > 64) bmm__os_yield();
      tf = atomic_load_explicit(&page->thread_free, memory_order_acquire);
      continue;
    }
    if (cur == to || !(from_mask & (1u << cur))) return;
    if (atomic_compare_exchange_weak_explicit(&page->thread_free, &tf,
                                              (tf & ~(uintptr_t)BMM_DF_MASK) | to,
                                              memory_order_acq_rel, memory_order_acquire))
      return;
  }
}

/* Calls fn for every carved block of the page that is on none of its free
 * lists nor on `more` (a list that may hold blocks of other pages too),
 * in address order; false when fn stopped the walk. The page's owner must
 * not run meanwhile; remote threads may push onto thread_free (a block
 * pushed during the walk may be reported live). */
bool bmm__page_visit(const bmm_page_t *page, const bmm_block_t *more, bmm_visit_fn *fn,
                     void *arg) {
  /* One bit per block: a small page holds at most 64 KiB / 16 blocks. */
  uint64_t freed[BMM_UNIT_SIZE / BMM_ALIGN / 64];
  _Static_assert(BMM_MEDIUM_PAGE_UNITS * BMM_UNIT_SIZE / BMM_SMALL_PAGE_MAX <=
                     BMM_UNIT_SIZE / BMM_ALIGN,
                 "medium pages hold fewer blocks than small ones");
  size_t cap = page->capacity, words = (cap + 63) / 64;
  memset(freed, 0, words * sizeof freed[0]);
  uintptr_t tf = atomic_load_explicit(&page->thread_free, memory_order_acquire);
  const bmm_block_t *lists[4] = {page->free, page->local_free,
                                 bmm__tf_head(tf), more};
  uintptr_t lo = (uintptr_t)bmm__page_start(page), span = (uintptr_t)cap * page->block_size;
  for (int l = 0; l < 4; l++) {
    size_t steps = 0;
    for (const bmm_block_t *b = lists[l]; b != NULL && steps <= cap + 1;
         b = l < 3 ? bmm__next(page, b) : bmm__next_any(b)) {
      if (l < 3) steps++; /* a cycle (a double free) must not hang us */
      uintptr_t off = (uintptr_t)b - lo;
      if (off >= span) continue; /* `more`: another page's block */
      size_t i = off / page->block_size;
      freed[i / 64] |= (uint64_t)1 << (i % 64);
    }
  }
  for (size_t i = 0; i < cap; i++)
    if (!(freed[i / 64] >> (i % 64) & 1) &&
        !fn(bmm__page_start(page) + i * page->block_size, bmm__page_usable(page), arg))
      return false;
  return true;
}

/* Full validation of an owned page (the expensive assertion tier). */
bool bmm__page_is_valid(const bmm_page_t *page) {
  uint8_t kind = atomic_load_explicit(&page->kind, memory_order_relaxed);
  if (kind != BMM_PAGE_SMALL && kind != BMM_PAGE_MEDIUM) return false;
  if (page->block_size != bmm__class_size(page->class_idx)) return false;
  if (page->capacity > page->reserved || page->used > page->capacity) return false;
  if ((size_t)page->reserved * page->block_size > (size_t)page->units * BMM_UNIT_SIZE)
    return false;
  size_t count = 0;
  const bmm_block_t *lists[2] = {page->free, page->local_free};
  for (int l = 0; l < 2; l++) {
    for (const bmm_block_t *b = lists[l]; b != NULL; b = bmm__next(page, b)) {
      uintptr_t off = (uintptr_t)b - (uintptr_t)bmm__page_start(page);
      if ((uintptr_t)b < (uintptr_t)bmm__page_start(page) || off % page->block_size != 0 ||
          off / page->block_size >= page->capacity)
        return false;
      if (++count > page->capacity) return false; /* a cycle */
    }
  }
  return page->used + count == page->capacity;
}
