/* heap.c: per-thread heaps. A heap owns pages: one queue per size class of
 * pages that may have free blocks, and a direct table from small sizes to
 * the page malloc tries first. Full pages leave the heap (orphans, placed
 * by the next free into them; a first-class heap's view keeps them in a
 * full queue instead).
 *
 * Concurrency: a heap is touched only by its owning thread, except
 * delayed_free, which remote threads push onto (see BMM_DF_* in types.h).
 * When a thread exits its pages are abandoned: every page's delayed state is
 * set to NEVER first (waiting out remote threads in FREEING, who may be
 * reading page->heap), then the delayed list is drained, then each page is
 * freed if empty or pushed on a global per-class abandoned list, from which
 * a thread short of pages adopts them. The heap struct itself is recycled,
 * never unmapped. No locks.
 */
#include <limits.h>
#include <string.h>

#include "internal.h"

bmm_page_t bmm__page_empty; /* free == NULL: the fast path falls through */

/* The heap of a thread that has not allocated yet: every direct entry
 * points at the empty page, so the first malloc takes the slow path. */
bmm_theap_t bmm__heap_empty = {
    .direct = {[0 ... BMM_DIRECT_COUNT - 1] = &bmm__page_empty},
};

__thread bmm_theap_t *bmm__heap_tls __attribute__((tls_model("initial-exec"))) =
    &bmm__heap_empty;

/* Free blocks a page keeps in circulation while it can still carve more
 * (see bmm__heap_find_page): 8 cuts malloc's slow-path calls on 1 KiB
 * blocks by half. At most 8 KiB of them, though: blocks of several KiB
 * circulating through 8 slots send a program's writes to cold memory (a
 * string grown by realloc to 64 KiB ran 10% slower, and its RSS doubled). */
#define BMM_PAGE_MIN_SLACK 8
#define BMM_PAGE_SLACK_BYTES 8192

static _Atomic(bmm_theap_t *) heap_pool;                   /* recycled heaps */
static _Atomic(bmm_page_t *) abandoned[BMM_CLASS_COUNT]; /* per size class */
/* An abandoned list may hold a page whose blocks are all free (see
 * heap_sweep_abandoned); the last sweep's time. */
_Atomic(bool) bmm__heap_sweep_wanted;
static _Atomic(int64_t) sweep_last;
/* Threads holding pages they took off an abandoned list (adopting or
 * sweeping): a fork waits until none does, or the child would have those
 * pages on no list, and none starts while a fork is pending. Both seq_cst:
 * a holder counts itself before it looks at the flag, the fork sets the
 * flag before it looks at the count, so one of them sees the other. */
static atomic_int list_holders;
static atomic_bool fork_pending;

static bool lists_enter(void) {
  atomic_fetch_add(&list_holders, 1);
  if (!atomic_load(&fork_pending)) return true;
  atomic_fetch_sub(&list_holders, 1);
  return false;
}

static void lists_leave(void) {
  atomic_fetch_sub(&list_holders, 1);
}
#define BMM_QUEUE_COUNT (2 * BMM_CLASS_COUNT)

/* Every queue a heap's pages can be in, for walks over all of them: the
 * class queues, then (at i == BMM_QUEUE_COUNT) the full queue. */
#define BMM_ALL_QUEUES (BMM_QUEUE_COUNT + 1)
static inline bmm_page_queue_t *heap_queue_at(bmm_theap_t *heap, size_t i) {
  return i < BMM_QUEUE_COUNT ? &heap->queues[i] : &heap->full;
}

/* ---- Queues and the direct table ------------------------------------- */

/* Point the direct entries of class `cls` at its queue's first page (the
 * direct table serves plain requests only: nothing for aligned queues).
 * bmm__all_slow keeps the table empty: every malloc takes the slow path,
 * where secure mode (without leak tracking) has its own table, of the
 * same layout (it is indexed by the request plus its canary). */
static void heap_direct_update(bmm_theap_t *heap, size_t cls) {
  if (cls >= BMM_CLASS_COUNT || (bmm__all_slow && !bmm__secure_fast)) return;
  size_t size = bmm__class_size(cls);
  if (size > BMM_SMALL_MAX) return;
  bmm_page_t **table = bmm__secure_fast ? heap->sdirect : heap->direct;
  bmm_page_t *page = heap->queues[cls].first;
  if (page == NULL && !bmm__secure_fast) page = &bmm__page_empty;
  size_t lo = cls == 0 ? 0 : bmm__class_size(cls - 1) / BMM_ALIGN + 1;
  for (size_t i = lo; i <= size / BMM_ALIGN; i++) table[i] = page;
}

static void queue_remove(bmm_page_queue_t *q, bmm_page_t *page) {
  if (page->prev) page->prev->next = page->next;
  else q->first = page->next;
  if (page->next) page->next->prev = page->prev;
  else q->last = page->prev;
  page->next = page->prev = NULL;
}

static void queue_push_front(bmm_page_queue_t *q, bmm_page_t *page) {
  page->prev = NULL;
  page->next = q->first;
  if (q->first) q->first->prev = page;
  else q->last = page;
  q->first = page;
}

/* The queue a page belongs in: by class, aligned pages apart. */
static inline size_t page_queue_index(const bmm_page_t *page) {
  return page->class_idx + (page->align_log ? BMM_CLASS_COUNT : 0);
}

static inline bmm_page_queue_t *page_queue(bmm_theap_t *heap, const bmm_page_t *page) {
  return &heap->queues[page_queue_index(page)];
}

static void heap_queue_remove(bmm_theap_t *heap, bmm_page_t *page) {
  bmm_page_queue_t *q = page_queue(heap, page);
  bool was_first = q->first == page;
  queue_remove(q, page);
  if (was_first) heap_direct_update(heap, page_queue_index(page));
}

static void heap_queue_push_front(bmm_theap_t *heap, bmm_page_t *page) {
  queue_push_front(page_queue(heap, page), page);
  heap_direct_update(heap, page_queue_index(page));
}

static void heap_queue_push_back(bmm_theap_t *heap, bmm_page_t *page) {
  bmm_page_queue_t *q = page_queue(heap, page);
  page->next = NULL;
  page->prev = q->last;
  if (q->last) q->last->next = page;
  else q->first = page;
  q->last = page;
  if (q->first == page) heap_direct_update(heap, page_queue_index(page));
}

static void heap_page_unfull(bmm_theap_t *heap, bmm_page_t *page);
static bool heap_page_park_full(bmm_theap_t *heap, bmm_page_t *page);
static void heap_abandon_page(bmm_page_t *page);
static void abandoned_put_back(size_t c, bmm_page_t *first);
static void heap_sweep_abandoned(bmm_theap_t *heap);

/* The statistics' count of blocks of class `cls` handed out, kept by each
 * heap (its owner writes, bmm_stats_print adds them all up). */
static void heap_count_allocs(bmm_theap_t *heap, size_t cls, uint32_t n) {
  _Atomic(uint64_t) *count = &heap->class_allocs[cls];
  atomic_store_explicit(count, atomic_load_explicit(count, memory_order_relaxed) + n,
                        memory_order_relaxed);
}

/* Count to `heap` the blocks the page's free list handed out since they
 * were last counted; `installed` keeps the blocks still there. */
static void heap_count_popped(bmm_theap_t *heap, bmm_page_t *page) {
  if (page->installed == 0) return;
  uint32_t popped = bmm__page_popped(page);
  heap_count_allocs(heap, page->class_idx, popped);
  page->installed = (uint16_t)(page->installed - popped);
}

/* Give a small or medium page back to the arena (its blocks all free, or a
 * destroyed view's), its last allocations counted to `heap` first. */
static void heap_page_release(bmm_theap_t *heap, bmm_page_t *page) {
  heap_count_popped(heap, page);
  bmm__arena_page_free(page);
}

/* in_full is mirrored in bit 0 of page->tid (thread ids are TCB addresses,
 * so that bit is free): the owner's free fast path compares tid with its
 * own id, so a full page fails that compare and takes the slow path, and
 * the fast path needs no in_full test of its own. */
static void page_set_full(bmm_theap_t *heap, bmm_page_t *page, bool full) {
  page->in_full = full;
  atomic_store_explicit(&page->tid, bmm__page_tid(heap, page), memory_order_relaxed);
}

/* An orphan that has free blocks on one of its lists joins `heap`, at the
 * back of its queue (see heap_page_unfull). The calling thread took it
 * (delayed state NORMAL, no heap): nobody else touches its lists. */
static void heap_page_take(bmm_theap_t *heap, bmm_page_t *page) {
  atomic_store_explicit(&page->heap, heap, memory_order_relaxed);
  atomic_store_explicit(&page->tid, bmm__page_tid(heap, page), memory_order_relaxed);
  bmm__page_collect(page);
  heap_queue_push_back(heap, page);
}

/* Full pages of a thread's heap belong to no heap: a thread that stops
 * allocating (say, main after building the data its workers free) would
 * otherwise keep every page it filled, however empty other threads make
 * them, since only its own slow path collects them. An orphan carries no
 * tid, so every free into it takes the slow path, and the first one places
 * it (bmm__heap_orphan_freed): the owner's back into its heap, as the full
 * queue did; another thread's onto the abandoned list, where any thread
 * short of pages of the class adopts it. First-class heaps' views keep a
 * full queue: their pages must hold their owner's blocks only. Returns
 * whether the page is in `heap` after all (a free raced in); when not, the
 * caller must not touch it again: the next free may place it at once, and
 * another thread may even return it to the arena. */
static bool heap_page_orphan(bmm_theap_t *heap, bmm_page_t *page) {
  page->orphan_of = heap;
  atomic_store_explicit(&page->tid, 0, memory_order_relaxed);
  atomic_store_explicit(&page->heap, NULL, memory_order_relaxed);
  /* release (acq_rel CAS): a free that sees USE sees the fields above and
   * the page's lists as we leave them. */
  bmm__page_set_delayed(page, BMM_DF_USE, 1u << BMM_DF_NORMAL);
  /* A remote free that landed after our last collect but before USE was
   * set did not notify: take the page back, unless a free since then has
   * (it then moved the state on from USE, and the page is its to place). */
  uintptr_t tf = atomic_load_explicit(&page->thread_free, memory_order_acquire);
  while ((tf & ~(uintptr_t)BMM_DF_MASK) != 0 && (tf & BMM_DF_MASK) == BMM_DF_USE) {
    if (atomic_compare_exchange_weak_explicit(&page->thread_free, &tf,
                                              (tf & ~(uintptr_t)BMM_DF_MASK) | BMM_DF_NORMAL,
                                              memory_order_acq_rel, memory_order_acquire)) {
      heap_page_take(heap, page);
      return true;
    }
  }
  return false;
}

/* `block` was freed into an orphaned page (free.c's free_remote) by the
 * calling thread, which holds the page's FREEING state: nobody else
 * touches the page's lists until it leaves that state. */
void bmm__heap_orphan_freed(bmm_page_t *page, bmm_block_t *block) {
  bmm__set_next(page, block, page->local_free);
  page->local_free = block;
  page->used--;
  bmm_theap_t *heap = bmm__heap_tls;
  bool home = page->orphan_of == heap && heap != &bmm__heap_empty;
  uintptr_t to = home ? BMM_DF_NORMAL : BMM_DF_NEVER;
  /* release: the lists written above, for the next owner. */
  uintptr_t tf = atomic_load_explicit(&page->thread_free, memory_order_relaxed);
  while (!atomic_compare_exchange_weak_explicit(&page->thread_free, &tf,
                                                (tf & ~(uintptr_t)BMM_DF_MASK) | to,
                                                memory_order_acq_rel, memory_order_relaxed)) {
  }
  if (home) {
    heap_page_take(heap, page);
    bmm__heap_page_unfull_or_retire(heap, page);
  } else {
    heap_abandon_page(page);
  }
}

/* A page with no free block, in no queue, leaves the search path: a
 * thread heap orphans it; a view puts it in its full queue, and from then
 * on the first remote free into it notifies the view (delayed state USE).
 * (leak_sample may hold a page's free blocks aside, on the heap: its pages
 * stay in their heap.) Returns whether the page is still the heap's, as
 * heap_page_orphan says. */
static bool heap_page_park_full(bmm_theap_t *heap, bmm_page_t *page) {
  if (heap->owner == NULL && !bmm__leak) return heap_page_orphan(heap, page);
  queue_push_front(&heap->full, page);
  page_set_full(heap, page, true);
  bmm__page_set_delayed(page, BMM_DF_USE, 1u << BMM_DF_NORMAL);
  /* A remote free that landed after our last collect but before USE was
   * set did not notify us: look once more, or it would sit unused. */
  if (atomic_load_explicit(&page->thread_free, memory_order_relaxed) & ~(uintptr_t)BMM_DF_MASK) {
    bmm__page_collect(page);
    if (page->free != NULL) heap_page_unfull(heap, page);
  }
  return true;
}

static void heap_page_to_full(bmm_theap_t *heap, bmm_page_t *page) {
  heap_queue_remove(heap, page);
  heap_page_park_full(heap, page);
}

/* A page that got a block back goes to the back of its queue: malloc keeps
 * using the page it is on, and this one gathers more free blocks before
 * its turn, instead of two pages trading places with a block or two each. */
static void heap_page_unfull(bmm_theap_t *heap, bmm_page_t *page) {
  queue_remove(&heap->full, page);
  page_set_full(heap, page, false);
  bmm__page_set_delayed(page, BMM_DF_NORMAL, 1u << BMM_DF_USE);
  heap_queue_push_back(heap, page);
}

/* An empty page stays in its heap when it is its class's first page, so
 * that an alloc/free cycle at a page boundary does not claim and release a
 * page every time, or its second of one unit: a class whose blocks in use
 * hover around a page's worth fills its first page and empties the other
 * over and over (`micro small`'s 1 KiB classes claimed, carved and
 * released a page every 3,000 operations). Not a second medium page: an
 * idle thread would keep 512 KiB more per class (a pool of 8 threads that
 * had used classes of 2-64 KiB kept 170 MB instead of 57), while such a
 * class's churn costs a page claim per 130 operations at worst (a window
 * of 100 blocks of 2-64 KiB), and ran 1.35x faster with it kept. */
static inline bool page_stays_empty(bmm_theap_t *heap, const bmm_page_t *page) {
  const bmm_page_t *first = page_queue(heap, page)->first;
  return first == page || (first->next == page && page->units == 1);
}

/* Called by the owner's free when a page was full or became empty. An empty
 * page goes back to the arena unless page_stays_empty. */
static bmm_noinline void heap_page_unfull_or_retire(bmm_theap_t *heap, bmm_page_t *page) {
  if (page->in_full) heap_page_unfull(heap, page);
  if (page->used == 0 && !page_stays_empty(heap, page)) {
    heap_queue_remove(heap, page);
    heap_page_release(heap, page);
  }
}

void bmm__heap_page_unfull_or_retire(bmm_theap_t *heap, bmm_page_t *page) {
  /* The common call, a malloc/free pair emptying the class's first page,
   * returns here without a stack frame. */
  if (bmm_likely(!page->in_full) && (page->used != 0 || page_queue(heap, page)->first == page))
    return;
  heap_page_unfull_or_retire(heap, page);
}

/* Free the blocks remote threads handed to us because their pages were
 * full. Every block's page is still ours: abandonment drains this list
 * after the last remote thread left FREEING. */
void bmm__heap_process_delayed(bmm_theap_t *heap) {
  bmm_block_t *b = atomic_exchange_explicit(&heap->delayed_free, NULL, memory_order_acquire);
  while (b != NULL) {
    bmm_block_t *next = bmm__next_any(b);
    bmm_page_t *page = bmm__page_of(b);
    bmm__set_next(page, b, page->local_free);
    page->local_free = b;
    page->used--;
    bmm__heap_page_unfull_or_retire(heap, page);
    b = next;
  }
}

/* ---- Getting a page with free blocks --------------------------------- */

/* Take an abandoned page into `heap`. Returns false when it was full and
 * left again at once (orphaned): it is not ours to touch any more. */
static bool heap_adopt_page(bmm_theap_t *heap, bmm_page_t *page) {
  atomic_store_explicit(&page->heap, heap, memory_order_relaxed);
  atomic_store_explicit(&page->tid, bmm__page_tid(heap, page), memory_order_relaxed);
  bmm__page_set_delayed(page, BMM_DF_NORMAL, 1u << BMM_DF_NEVER);
  bmm__page_collect(page);
  if (page->free == NULL && page->capacity < page->reserved) bmm__page_extend(page);
  if (page->free == NULL) return heap_page_park_full(heap, page);
  heap_queue_push_front(heap, page);
  return true;
}

/* Take over abandoned pages of the class of queue `qi` (plain and aligned
 * pages alike; each goes to its own queue) until `wanted` pages of queue
 * `qi` with free blocks are ours; returns the first of them, first in its
 * queue, or NULL. Empty pages beyond that one go back to the arena; the
 * pages not reached go back to the list. */
static bmm_page_t *heap_adopt_class(bmm_theap_t *heap, size_t qi, int wanted) {
  size_t cls = qi % BMM_CLASS_COUNT;
  /* Not into a view: its pages must hold its owner's blocks only. */
  if (heap->owner != NULL) return NULL;
  if (atomic_load_explicit(&abandoned[cls], memory_order_relaxed) == NULL) return NULL;
  if (!lists_enter()) return NULL; /* a fork is pending */
  /* Taking the whole list with one exchange has no ABA problem. acquire:
   * pairs with the abandoning thread's release push, so its writes to the
   * page's lists are visible. */
  bmm_page_t *page = atomic_exchange_explicit(&abandoned[cls], NULL, memory_order_acquire);
  bmm_page_t *found = NULL;
  while (page != NULL && wanted > 0) {
    bmm_page_t *next = page->abandoned_next;
    page->abandoned_next = NULL;
    if (!heap_adopt_page(heap, page)) { /* orphaned: another free may own it by now */
      page = next;
      continue;
    }
    bool mine = page_queue_index(page) == qi;
    if (page->used == 0 && (found != NULL || !mine)) {
      heap_queue_remove(heap, page);
      heap_page_release(heap, page);
    } else if (mine && page->free != NULL) {
      wanted--;
      if (found == NULL) found = page;
    }
    page = next;
  }
  if (page != NULL) abandoned_put_back(cls, page);
  lists_leave();
  if (found != NULL && heap->queues[qi].first != found) {
    heap_queue_remove(heap, found);
    heap_queue_push_front(heap, found);
  }
  return found;
}

static bmm_page_t *heap_page_fresh(bmm_theap_t *heap, size_t qi) {
  size_t cls = qi % BMM_CLASS_COUNT;
  size_t units = bmm__class_page_units(cls);
  bmm_page_t *page = bmm__arena_page_alloc(&heap->arena_hint, units, 1, true);
  if (page == NULL) return NULL;
  bmm__page_init(page, heap, cls);
  /* An aligned page records the natural alignment of its class (the
   * largest power of two dividing the block size, pages start on 64 KiB):
   * every block has it, so aligned requests need not raise the record,
   * and realloc keeps at least what any of them asked (aligned requests
   * use a class whose size is a multiple of their alignment). */
  if (qi >= BMM_CLASS_COUNT) {
    unsigned natural = (unsigned)__builtin_ctzll(page->block_size);
    page->align_log = (uint8_t)(natural < BMM_UNIT_SHIFT ? natural : BMM_UNIT_SHIFT);
  }
  bmm__page_extend(page);
  heap_queue_push_front(heap, page);
  return page;
}

/* The program's deferred-free hook (bmm_register_deferred_free). Its
 * function and argument change together under a sequence count, odd while
 * a registration writes them, so that no thread calls one hook with
 * another's argument (or with NULL, the argument of "none"). A reader
 * never waits for a writer: it may be the very frame a signal handler
 * interrupted, or (fork) a thread that does not exist in the child. */
static _Atomic(bmm_deferred_free_fn *) deferred_fn;
static _Atomic(void *) deferred_arg;
static _Atomic(unsigned) deferred_seq;

/* The odd count this thread's registration holds (0: none). Set before
 * the count is taken, so that a signal handler that interrupts the
 * registration and registers too knows the odd count is its own thread's. */
static __thread unsigned deferred_mine;

BMM_API void bmm_register_deferred_free(bmm_deferred_free_fn *fn, void *arg) {
  /* Writers wait for each other (a registration is a few stores). */
  unsigned s = atomic_load_explicit(&deferred_seq, memory_order_relaxed);
  for (;;) {
    if (s & 1) {
      /* A handler inside this thread's own registration: that one
       * completes when the handler returns, and decides (as if this call
       * came just before it). Waiting would never end. */
      if (s == deferred_mine) return;
      bmm__cpu_relax();
      s = atomic_load_explicit(&deferred_seq, memory_order_relaxed);
      continue;
    }
    deferred_mine = s + 1;
    if (atomic_compare_exchange_weak_explicit(&deferred_seq, &s, s + 1, memory_order_relaxed,
                                              memory_order_relaxed))
      break;
    deferred_mine = 0;
  }
  /* A reader that sees a store below sees the odd count too. */
  atomic_thread_fence(memory_order_release);
  atomic_store_explicit(&deferred_fn, fn, memory_order_relaxed);
  atomic_store_explicit(&deferred_arg, arg, memory_order_relaxed);
  atomic_store_explicit(&deferred_seq, s + 2, memory_order_release);
  deferred_mine = 0;
}

/* The hook and its argument as one registration left them, or NULL while
 * one is being written (the hook skips a beat then). */
static bmm_deferred_free_fn *deferred_read(void **arg) {
  for (int tries = 0; tries < 4; tries++) {
    unsigned s = atomic_load_explicit(&deferred_seq, memory_order_acquire);
    if (s & 1) return NULL;
    bmm_deferred_free_fn *fn = atomic_load_explicit(&deferred_fn, memory_order_relaxed);
    *arg = atomic_load_explicit(&deferred_arg, memory_order_relaxed);
    /* The loads above before the count's second load. */
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&deferred_seq, memory_order_relaxed) == s) return fn;
  }
  return NULL;
}

/* fork child: a registration another thread was writing is gone with it
 * (the count stays odd otherwise, and every later registration waits).
 * One this thread was writing (fork from a signal handler) completes when
 * the handler returns. */
static void deferred_fork_child(void) {
  unsigned s = atomic_load_explicit(&deferred_seq, memory_order_relaxed);
  if (!(s & 1) || s == deferred_mine) return;
  atomic_store_explicit(&deferred_fn, NULL, memory_order_relaxed);
  atomic_store_explicit(&deferred_arg, NULL, memory_order_relaxed);
  atomic_store_explicit(&deferred_seq, s + 1, memory_order_release);
}

/* Per thread, not per heap struct: a thread's default heap and its views
 * of first-class heaps all lead here, and the hook must not run inside
 * itself (it may allocate and free), nor see its heartbeat go back. */
static __thread bool deferred_running;
static __thread unsigned long long deferred_beats; /* this thread's visits */

void bmm__heap_deferred_free(bmm_theap_t *heap, bool force) {
  deferred_beats++;
  if (heap == &bmm__heap_empty || deferred_running) return;
  void *arg;
  bmm_deferred_free_fn *fn = deferred_read(&arg);
  if (fn == NULL) return;
  deferred_running = true;
  fn(force, deferred_beats, arg);
  deferred_running = false;
}

/* Changes in blocks in use pass to the shared counts in batches: one
 * atomic add per 64 blocks of a class rather than per page visit (larson
 * with 4 threads measured 10% slower with an add per visit). */
#define BMM_LIVE_BATCH 64

static void heap_live_flush(bmm_theap_t *heap, size_t cls) {
  if (heap->live_pending[cls] != 0) bmm__stats_class_live(cls, heap->live_pending[cls]);
  heap->live_pending[cls] = 0;
}

/* The heap's count of blocks in use of the page's class catches up with
 * the page (its owner calls this after collecting its frees). */
static inline void heap_count_live(bmm_theap_t *heap, bmm_page_t *page) {
  int32_t change = (int32_t)page->used - page->live_acct;
  if (change == 0) return;
  page->live_acct = (uint16_t)page->used;
  int32_t pending = heap->live_pending[page->class_idx] += change;
  if (pending >= BMM_LIVE_BATCH || pending <= -BMM_LIVE_BATCH)
    heap_live_flush(heap, page->class_idx);
}

/* The slow path of malloc: find a page of queue `qi` (its class, plain or
 * aligned) with a free block, collecting frees as it goes and parking
 * exhausted pages (orphans, or a view's full queue), then adopting
 * abandoned pages, then claiming a fresh page. */
bmm_page_t *bmm__heap_find_page(bmm_theap_t *heap, size_t qi) {
  /* The heartbeat: the split free lists bring every thread here at least
   * once per page's worth of allocations, so the hook runs regularly. */
  heap->heartbeat++;
  /* The first page's list is used up: its blocks were handed out. */
  bmm_page_t *used_up = heap->queues[qi].first;
  if (used_up != NULL && used_up->installed != 0) {
    heap_count_allocs(heap, used_up->class_idx, used_up->installed);
    if (bmm__leak == 2) bmm__leak_count_page(heap, used_up);
    used_up->installed = 0;
  }
  /* The check build validates this thread's whole heap every 256th visit
   * (here it is consistent; other threads' state cannot be checked without
   * stopping them). */
  bmm_assert_expensive((heap->heartbeat & 255) != 0 || bmm__heap_check(heap));
  bmm__heap_deferred_free(heap, false);
  bmm_page_t *page = heap->queues[qi].first;
  while (page != NULL) {
    bmm_page_t *next = page->next;
    bmm__page_collect(page);
    heap_count_live(heap, page);
    /* Keep a few free blocks in circulation while the page has uncarved
     * room: with only the blocks freed since the last visit, a page of
     * large blocks would send malloc here every few calls. */
    uint32_t slack = page->capacity - page->used;
    if (page->capacity < page->reserved &&
        (page->free == NULL || (slack < BMM_PAGE_MIN_SLACK &&
                                (size_t)slack * page->block_size < BMM_PAGE_SLACK_BYTES)))
      bmm__page_extend(page);
    if (page->free != NULL) {
      if (heap->queues[qi].first != page) {
        heap_queue_remove(heap, page);
        heap_queue_push_front(heap, page);
      }
      return page;
    }
    heap_page_to_full(heap, page);
    page = next;
  }
  /* Once per page exhausted: a good beat for delayed purging, so that a
   * program that only allocates small blocks after freeing big ones still
   * gives the memory back (one atomic load while nothing is pending). */
  bmm__arena_purge_due();
  heap_sweep_abandoned(heap);
  page = heap_adopt_class(heap, qi, BMM_ADOPT_PAGES);
  if (page != NULL) return page;
  return heap_page_fresh(heap, qi);
}

/* ---- Thread start and exit ------------------------------------------- */

static void heap_pool_push_list(bmm_theap_t *first, bmm_theap_t *last) {
  bmm_theap_t *old = atomic_load_explicit(&heap_pool, memory_order_relaxed);
  do {
    last->pool_next = old;
  } while (!atomic_compare_exchange_weak_explicit(&heap_pool, &old, first,
                                                  memory_order_release, memory_order_relaxed));
}

static bmm_theap_t *heap_pool_pop(void) {
  /* Take all, keep one, give the rest back: no ABA window. */
  bmm_theap_t *all = atomic_exchange_explicit(&heap_pool, NULL, memory_order_acquire);
  if (all == NULL) return NULL;
  bmm_theap_t *rest = all->pool_next;
  if (rest != NULL) {
    bmm_theap_t *last = rest;
    while (last->pool_next != NULL) last = last->pool_next;
    heap_pool_push_list(rest, last);
  }
  return all;
}

/* Every heap struct ever made (they are never unmapped): the statistics
 * add up their allocation counts. */
static _Atomic(bmm_theap_t *) heap_all;

bmm_theap_t *bmm__heap_all(void) {
  return atomic_load_explicit(&heap_all, memory_order_acquire);
}

/* An empty heap owned by the calling thread, from the pool or the OS. */
static bmm_theap_t *heap_make(void) {
  bmm_theap_t *heap = heap_pool_pop();
  if (heap == NULL) {
    heap = bmm__os_reserve_aligned(sizeof(bmm_theap_t), bmm__os_page_size(), true);
    if (heap == NULL) return NULL;
    bmm_theap_t *old = atomic_load_explicit(&heap_all, memory_order_relaxed);
    do {
      heap->all_next = old;
    } while (!atomic_compare_exchange_weak_explicit(&heap_all, &old, heap, memory_order_release,
                                                    memory_order_relaxed));
  }
  memset(heap, 0, offsetof(bmm_theap_t, class_allocs)); /* counts carry on */
  for (size_t i = 0; i < BMM_DIRECT_COUNT; i++) heap->direct[i] = &bmm__page_empty;
  /* Pages carry their heap's tid: with bmm__all_slow, one that the free
   * fast path never matches. */
  heap->tid = bmm__os_thread_id() | (bmm__all_slow ? BMM_TID_SLOW : 0);
  heap->leak_left = (int64_t)bmm__options[BMM_OPTION_LEAK_SAMPLE];
  /* Spread threads over arenas so their page claims touch different
   * bitmap words; the hint is corrected on the first claim. */
  heap->arena_hint = (uint32_t)((heap->tid >> 12) & 3);
  return heap;
}

bmm_theap_t *bmm__heap_init_thread(void) {
  bmm__process_init();
  /* process init may have allocated (and so set up this thread's heap)
   * through a library call: use that heap rather than make a second. */
  if (bmm__heap_tls != &bmm__heap_empty) return bmm__heap_tls;
  bmm_theap_t *heap = heap_make();
  if (heap == NULL) return NULL;
  bmm__heap_tls = heap;
  bmm__os_thread_exit_hook_arm(heap);
  return heap;
}

/* ---- Views of first-class heaps (fheap.c owns the heaps) ---------------- */

/* The calling thread's view of `owner`: an ordinary heap that fheap.c
 * links into the owner. It is not abandoned when the thread exits (its
 * pages keep taking remote frees, and a later thread with the same id
 * takes the view over); bmm__heap_view_release ends it. */
bmm_theap_t *bmm__heap_view_new(struct bmm_heap *owner) {
  bmm_theap_t *view = heap_make();
  if (view != NULL) view->owner = owner;
  return view;
}

/* Give every page of `view` back to the arena, whatever it holds, and the
 * view to the pool: time linear in its pages, none in its live blocks
 * (a page's last free list is walked to count what it handed out). Blocks
 * on delayed_free are dropped with their pages. No thread may use the view
 * or free into its pages meanwhile (bmm_heap_destroy's contract). */
void bmm__heap_view_release(bmm_theap_t *view) {
  /* A cut list goes back on its page first, so that counting what the
   * page handed out does not count the cut blocks. */
  if (view->leak_page != NULL) bmm__leak_resume(view, false);
  for (size_t c = 0; c < BMM_CLASS_COUNT; c++) heap_live_flush(view, c);
  for (size_t c = 0; c < BMM_ALL_QUEUES; c++) {
    bmm_page_queue_t *q = heap_queue_at(view, c);
    bmm_page_t *page;
    while ((page = q->first) != NULL) {
      queue_remove(q, page);
      heap_page_release(view, page);
    }
  }
  view->owner = NULL;
  heap_pool_push_list(view, view);
}

/* Every live block of the view's pages. Blocks are live unless they sit on
 * one of their page's free lists or on the view's delayed list. */
bool bmm__heap_view_visit(bmm_theap_t *view, bmm_visit_fn *fn, void *arg) {
  /* A free list leak_sample cut short holds free blocks on no list: put
   * them back (its sample is lost; nobody uses the view meanwhile). */
  if (view->leak_page != NULL) bmm__leak_resume(view, false);
  bmm_block_t *delayed = atomic_load_explicit(&view->delayed_free, memory_order_acquire);
  for (size_t c = 0; c < BMM_ALL_QUEUES; c++) {
    for (bmm_page_t *page = heap_queue_at(view, c)->first; page != NULL; page = page->next)
      if (!bmm__page_visit(page, delayed, fn, arg)) return false;
  }
  return true;
}

/* Push the chain first..last (linked by abandoned_next) on class c's
 * abandoned list. release: the pages' state, for whoever takes the list. */
static void abandoned_push(size_t c, bmm_page_t *first, bmm_page_t *last) {
  bmm_page_t *old = atomic_load_explicit(&abandoned[c], memory_order_relaxed);
  do {
    last->abandoned_next = old;
  } while (!atomic_compare_exchange_weak_explicit(&abandoned[c], &old, first,
                                                  memory_order_release, memory_order_relaxed));
}

/* Put back a list taken from class c's abandoned list, unread: in place
 * while the list is still empty, else with what was pushed meanwhile (a
 * few pages, whose end is found by a short walk) in front of it. */
static void abandoned_put_back(size_t c, bmm_page_t *first) {
  for (;;) {
    bmm_page_t *empty = NULL;
    if (atomic_compare_exchange_strong_explicit(&abandoned[c], &empty, first, memory_order_release,
                                                memory_order_relaxed))
      return;
    bmm_page_t *more = atomic_exchange_explicit(&abandoned[c], NULL, memory_order_acquire);
    if (more == NULL) continue;
    bmm_page_t *end = more;
    while (end->abandoned_next != NULL) end = end->abandoned_next;
    end->abandoned_next = first;
    first = more;
  }
}

static void heap_abandon_page(bmm_page_t *page) {
  page->in_full = 0;
  page->next = page->prev = NULL;
  atomic_store_explicit(&page->heap, NULL, memory_order_relaxed);
  atomic_store_explicit(&page->tid, 0, memory_order_relaxed);
  abandoned_push(page->class_idx, page, page);
  bmm__heap_want_sweep();
}

/* Abandoned pages wait for a thread short of pages of their class, which
 * adopts a few (returning the empty ones it meets to the arena). When no
 * thread allocates that class again (the blocks of an exited thread, or of
 * an idle one's orphans, freed by others), or the empty pages lie behind
 * those adopted, they would hold their memory for good: here, at most once
 * per purge_delay (1 ms at least) and only after a page was abandoned or
 * freed into since the last time, every page whose blocks are all free
 * (on its thread_free list: `used` counts them still) goes back to the
 * arena, which purges it. A list is taken by an exchange, as adoption
 * does, so nobody else touches its pages meanwhile; with all its blocks
 * free, no free can come into a page. (On a weakly ordered CPU a page
 * abandoned as the flag is cleared may wait for the next sweep: that costs
 * memory for a while, nothing else.) */
static void heap_sweep_abandoned(bmm_theap_t *heap) {
  enum { BUDGET = 1024 }; /* pages per sweep: a few descriptor misses each */
  static _Atomic(size_t) cursor; /* class to start at: a long walk is resumed */
  if (!atomic_load_explicit(&bmm__heap_sweep_wanted, memory_order_relaxed)) return;
  long delay = bmm__options[BMM_OPTION_PURGE_DELAY];
  if (delay < 0) return; /* memory is never returned */
  int64_t now = bmm__os_now_ms();
  int64_t last = atomic_load_explicit(&sweep_last, memory_order_relaxed);
  if (now - last < (delay > 0 ? delay : 1) ||
      !atomic_compare_exchange_strong_explicit(&sweep_last, &last, now, memory_order_relaxed,
                                               memory_order_relaxed))
    return;
  /* sweep_last lets one thread in per delay; two sweeps that overlap
   * anyway take lists by exchange, as adopters do. */
  if (!lists_enter()) return; /* a fork is pending */
  atomic_store_explicit(&bmm__heap_sweep_wanted, false, memory_order_relaxed);
  size_t seen = 0, c = atomic_load_explicit(&cursor, memory_order_relaxed);
  for (size_t k = 0; k < BMM_CLASS_COUNT; k++, c = (c + 1) % BMM_CLASS_COUNT) {
    if (atomic_load_explicit(&abandoned[c], memory_order_relaxed) == NULL) continue;
    /* acquire: the writes to the pages (used) of whoever pushed them. */
    bmm_page_t *page = atomic_exchange_explicit(&abandoned[c], NULL, memory_order_acquire);
    bmm_page_t *keep = NULL, *keep_last = NULL;
    for (bmm_page_t *next; page != NULL && seen < BUDGET; page = next, seen++) {
      next = page->abandoned_next;
      uintptr_t tf = atomic_load_explicit(&page->thread_free, memory_order_acquire);
      if (page->used == bmm__tf_count(tf)) {
        heap_page_release(heap, page);
        continue;
      }
      page->abandoned_next = keep;
      keep = page;
      if (keep_last == NULL) keep_last = page;
    }
    if (page != NULL) abandoned_put_back(c, page); /* the budget ran out */
    if (keep != NULL) abandoned_push(c, keep, keep_last);
    if (seen >= BUDGET) { /* the rest next time, from this class */
      bmm__heap_want_sweep();
      break;
    }
  }
  atomic_store_explicit(&cursor, c, memory_order_relaxed);
  lists_leave();
}

/* fork: let the threads that hold abandoned pages (adopters, a sweep)
 * finish, and start none until the fork is over. First among the fork
 * handlers: they may take the locks the arena's handler takes next, so
 * wait holding none. */
void bmm__heap_fork_prepare(void) {
  atomic_store(&fork_pending, true);
  while (atomic_load(&list_holders) != 0) bmm__os_yield();
}

void bmm__heap_fork_release(void) {
  atomic_store(&fork_pending, false);
}

static void heap_set_all_delayed(bmm_theap_t *heap, uintptr_t to, unsigned from_mask) {
  for (size_t c = 0; c < BMM_ALL_QUEUES; c++) {
    bmm_page_queue_t *q = heap_queue_at(heap, c);
    for (bmm_page_t *page = q->first; page != NULL; page = page->next)
      bmm__page_set_delayed(page, to, from_mask);
  }
}

/* Thread exit (the OS layer's hook): give every page away. */
void bmm__heap_thread_done(void *arg) {
  bmm_theap_t *heap = arg;
  if (heap == NULL || heap == &bmm__heap_empty ||
      (heap->tid & ~BMM_TID_FLAGS) != bmm__os_thread_id())
    return;
  if (heap->leak_page != NULL) bmm__leak_resume(heap, false);
  heap_set_all_delayed(heap, BMM_DF_NEVER, 0xF);
  bmm__heap_process_delayed(heap);
  for (size_t c = 0; c < BMM_ALL_QUEUES; c++) {
    bmm_page_queue_t *q = heap_queue_at(heap, c);
    bmm_page_t *page;
    while ((page = q->first) != NULL) {
      queue_remove(q, page);
      bmm__page_collect(page);
      heap_count_live(heap, page);
      heap_count_popped(heap, page); /* whoever adopts the page counts the rest */
      if (page->used == 0) bmm__arena_page_free(page);
      else heap_abandon_page(page);
    }
  }
  for (size_t c = 0; c < BMM_CLASS_COUNT; c++) heap_live_flush(heap, c);
  bmm__heap_tls = &bmm__heap_empty;
  heap_pool_push_list(heap, heap);
}

/* In a forked child only the forking thread lives. A thread that was in the
 * middle of a delayed free into one of our pages will never finish it:
 * release its FREEING state so that nothing waits for it forever. Our pages
 * are those of every heap with our id: the default heap and our views of
 * first-class heaps. */
void bmm__heap_fork_child(void) {
  deferred_fork_child();
  uintptr_t me = bmm__os_thread_id();
  for (bmm_theap_t *h = bmm__heap_all(); h != NULL; h = h->all_next) {
    if ((h->tid & ~BMM_TID_FLAGS) != me) continue;
    for (size_t c = 0; c < BMM_ALL_QUEUES; c++) {
      bmm_page_queue_t *q = heap_queue_at(h, c);
      for (bmm_page_t *page = q->first; page != NULL; page = page->next) {
        uintptr_t tf = atomic_load_explicit(&page->thread_free, memory_order_relaxed);
        if ((tf & BMM_DF_MASK) == BMM_DF_FREEING)
          atomic_store_explicit(&page->thread_free,
                                (tf & ~(uintptr_t)BMM_DF_MASK) | BMM_DF_NORMAL,
                                memory_order_relaxed);
      }
    }
  }
}

/* Return what this heap holds but does not use: empty pages go back to the
 * arena; with `force`, abandoned pages of dead threads are adopted (and
 * freed when empty) too. */
void bmm__heap_collect(bmm_theap_t *heap, bool force) {
  if (heap == &bmm__heap_empty) return;
  bmm__heap_process_delayed(heap);
  for (size_t c = 0; c < BMM_QUEUE_COUNT; c++) {
    if (force) heap_adopt_class(heap, c, INT_MAX); /* all of them */
    bmm_page_t *page = heap->queues[c].first;
    while (page != NULL) {
      bmm_page_t *next = page->next;
      bmm__page_collect(page);
      if (page->used == 0) {
        heap_queue_remove(heap, page);
        heap_page_release(heap, page);
      }
      page = next;
    }
  }
  for (bmm_page_t *page = heap->full.first, *next; page != NULL; page = next) {
    next = page->next;
    bmm__page_collect(page);
    if (page->free != NULL) heap_page_unfull(heap, page);
  }
}

/* The invariants of a heap's queues and direct tables. Orphaned and
 * abandoned pages belong to no heap and are not seen here (bmm_heap_check's
 * arena walk still checks where every page descriptor says its page is). */
bool bmm__heap_check(bmm_theap_t *heap) {
  if (heap == &bmm__heap_empty) return true;
  for (size_t c = 0; c < BMM_ALL_QUEUES; c++) {
    bmm_page_queue_t *q = heap_queue_at(heap, c);
    bmm_page_t *prev = NULL;
    for (bmm_page_t *page = q->first; page != NULL; prev = page, page = page->next) {
      if (page->prev != prev || !bmm__page_is_valid(page)) return false;
      if (atomic_load_explicit(&page->heap, memory_order_relaxed) != heap) return false;
      /* leak_sample sets BMM_TID_SLOW as it records, clears it lazily. */
      uintptr_t tid = atomic_load_explicit(&page->tid, memory_order_relaxed);
      uintptr_t lax = bmm__leak == 2 ? BMM_TID_SLOW : 0;
      if ((tid | lax) != (heap->tid | page->in_full | lax)) return false;
      if (c < BMM_QUEUE_COUNT ? (page_queue_index(page) != c || page->in_full) : !page->in_full)
        return false;
    }
    if (q->last != prev) return false;
  }
  for (size_t i = 0; i < BMM_DIRECT_COUNT; i++) {
    size_t cls = bmm__class_of(i * BMM_ALIGN);
    bmm_page_t *want = heap->queues[cls].first ? heap->queues[cls].first : &bmm__page_empty;
    if (heap->direct[i] != (bmm__all_slow ? &bmm__page_empty : want)) return false;
    if (heap->sdirect[i] != (bmm__secure_fast ? heap->queues[cls].first : NULL)) return false;
  }
  return true;
}

/* What `page` of `heap` changed since the shared counts last saw it:
 * blocks popped from its free list (its `installed` blocks less those
 * still there) and the change in blocks in use. Blocks on thread_free are
 * counted in used still, and so are those leak_sample cut from the free
 * list (bmm__leak_on_alloc), which were not handed out either. */
static void page_uncounted(const bmm_theap_t *heap, const bmm_page_t *page, uint32_t *popped,
                           int64_t *live_change) {
  *popped = bmm__page_popped(page);
  uint32_t aside = bmm__tf_count(atomic_load_explicit(&page->thread_free, memory_order_relaxed));
  if (page == heap->leak_page) {
    *popped = *popped > heap->leak_rest_n ? *popped - heap->leak_rest_n : 0;
    aside += heap->leak_rest_n;
  }
  *live_change = (int64_t)page->used - aside - page->live_acct;
}

/* Pages, blocks in use and capacity per size class of `heap` (plain and
 * aligned queues and the full queue together), and what its pages changed
 * since the shared counts last saw them (page_uncounted). Its owner calls
 * this; returns BMM_CLASS_COUNT. */
size_t bmm__heap_class_stats(bmm_theap_t *heap, bmm_class_stats_t out[BMM_CLASS_COUNT]) {
  memset(out, 0, sizeof(bmm_class_stats_t) * BMM_CLASS_COUNT);
  if (heap == &bmm__heap_empty) return BMM_CLASS_COUNT;
  for (size_t c = 0; c < BMM_ALL_QUEUES; c++) {
    bmm_page_queue_t *q = heap_queue_at(heap, c);
    for (bmm_page_t *page = q->first; page != NULL; page = page->next) {
      bmm_class_stats_t *cs = &out[page->class_idx];
      cs->pages++;
      cs->used += page->used;
      cs->capacity += page->reserved;
      uint32_t popped;
      int64_t live_change;
      page_uncounted(heap, page, &popped, &live_change);
      cs->popped += popped;
      cs->live_change += live_change;
    }
  }
  for (size_t c = 0; c < BMM_CLASS_COUNT; c++) out[c].live_change += heap->live_pending[c];
  return BMM_CLASS_COUNT;
}

/* Pass what `heap` (the caller's) has not told the shared counts yet to
 * them now (bmm_stats_reset: the base it takes must not depend on which
 * thread prints later; another thread cannot see this one's share). */
void bmm__heap_stats_flush(bmm_theap_t *heap) {
  if (heap == &bmm__heap_empty) return;
  for (size_t c = 0; c < BMM_ALL_QUEUES; c++) {
    bmm_page_queue_t *q = heap_queue_at(heap, c);
    for (bmm_page_t *page = q->first; page != NULL; page = page->next) {
      uint32_t popped;
      int64_t live_change;
      page_uncounted(heap, page, &popped, &live_change);
      heap_count_allocs(heap, page->class_idx, popped);
      page->installed = (uint16_t)(page->installed - popped);
      page->live_acct = (uint16_t)(page->live_acct + live_change);
      heap->live_pending[page->class_idx] += (int32_t)live_change;
    }
  }
  for (size_t c = 0; c < BMM_CLASS_COUNT; c++) heap_live_flush(heap, c);
}
