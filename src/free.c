/* free.c: freeing and the usable size. The fast path (fastpath.h) handles a
 * block of a page the calling thread owns; this file handles the rest:
 * NULL, frees into other threads' pages (lock-free push on the page's
 * thread_free list, or on the owning heap's delayed list when the page is
 * full), large and huge blocks, and misuse: foreign pointers, interior
 * pointers and double frees of large blocks are reported, never acted on.
 */
#include "fastpath.h"
#include "fixed.h"

/* Push a block onto another thread's page. If the page is full (state
 * USE), hand the block to the page's heap instead so the owner notices the
 * page has room again, or, for an orphaned page, place the page; see
 * BMM_DF_* in types.h. */
static void free_remote(bmm_page_t *page, bmm_block_t *block) {
  bmm__track_free(block, page->block_size); /* before the owner can see it */
  if (!bmm__secure) bmm__mark_free(page, block); /* secure mode's check marked it */
  uintptr_t tf = atomic_load_explicit(&page->thread_free, memory_order_relaxed);
  uintptr_t next;
  bool notify;
  do {
    notify = (tf & BMM_DF_MASK) == BMM_DF_USE;
    if (bmm_unlikely(notify)) {
      next = (tf & ~(uintptr_t)BMM_DF_MASK) | BMM_DF_FREEING;
    } else { /* block in front, one more counted, the state kept */
      bmm__set_next(page, block, bmm__tf_head(tf));
      next = (uintptr_t)block | ((tf & ~BMM_TF_HEAD_MASK) + BMM_TF_ONE);
    }
    /* release: block->next is visible to the owner that takes the list;
     * acquire: when we see USE we also see the page->heap the owner
     * stored before it set USE. */
  } while (!atomic_compare_exchange_weak_explicit(&page->thread_free, &tf, next,
                                                  memory_order_acq_rel, memory_order_relaxed));
  if (bmm_likely(!notify)) {
    if ((next & BMM_DF_MASK) == BMM_DF_NEVER) bmm__heap_want_sweep(); /* it may be empty now */
    return;
  }

  /* We hold FREEING: the owner cannot abandon the page (it waits for us),
   * so page->heap stays valid until we leave that state. */
  bmm_theap_t *heap = atomic_load_explicit(&page->heap, memory_order_relaxed);
  if (heap == NULL) { /* an orphan: ours to place */
    bmm__heap_orphan_freed(page, block);
    return;
  }
  bmm_block_t *old = atomic_load_explicit(&heap->delayed_free, memory_order_relaxed);
  do {
    bmm__set_next_any(block, old);
  } while (!atomic_compare_exchange_weak_explicit(&heap->delayed_free, &old, block,
                                                  memory_order_release, memory_order_relaxed));
  /* Leave FREEING. Later remote frees go to thread_free directly: the owner
   * will move the page out of the full queue when it drains delayed_free. */
  tf = atomic_load_explicit(&page->thread_free, memory_order_relaxed);
  while (!atomic_compare_exchange_weak_explicit(
      &page->thread_free, &tf, (tf & ~(uintptr_t)BMM_DF_MASK) | BMM_DF_NORMAL,
      memory_order_release, memory_order_relaxed)) {
  }
}

/* Whether p is on a free list of `page` or in its heap's delayed frees.
 * The calling thread owns the page: nobody else takes from these lists
 * while we look, and remote threads only push in front of the shared
 * ones. A list longer than the page's blocks has a cycle, which only a
 * double free makes: p counts as free then. */
static bool block_is_free(const bmm_page_t *page, const void *p) {
  bmm_theap_t *heap = atomic_load_explicit(&page->heap, memory_order_relaxed);
  uintptr_t tf = atomic_load_explicit(&page->thread_free, memory_order_acquire);
  bmm_block_t *lists[] = {page->free, page->local_free, bmm__tf_head(tf),
                          heap != NULL && heap->leak_page == page ? heap->leak_rest : NULL};
  for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
    uint32_t n = 0;
    for (const bmm_block_t *b = lists[i]; b != NULL; b = bmm__next(page, b))
      if (b == p || ++n > page->reserved) return true;
  }
  if (heap == NULL) return false;
  size_t n = 0; /* blocks of every page of the heap: bounded generously */
  for (const bmm_block_t *b = atomic_load_explicit(&heap->delayed_free, memory_order_acquire);
       b != NULL && n < ((size_t)1 << 24); b = bmm__next_any(b), n++)
    if (b == p) return true;
  return false;
}

/* p carries the free mark of the default mode: is it free? The owner
 * confirms it on the page's lists. Another thread cannot read them, and
 * the owner takes remote frees without walking them, so for it the mark
 * alone tells: every block handed out has it cleared, and the program
 * never sees a page descriptor's address. */
static bool marked_block_freed(const bmm_page_t *page, const void *p) {
  uintptr_t tid = atomic_load_explicit(&page->tid, memory_order_relaxed);
  return (tid & ~BMM_TID_FLAGS) != bmm__os_thread_id() || block_is_free(page, p);
}

/* p, the start of a block of small or medium `page`, is free, as far as
 * the calling thread can tell: secure mode trusts its keyed mark, the
 * default mode its mark as marked_block_freed says. */
bool bmm__block_freed(const bmm_page_t *page, const void *p) {
  if (bmm__secure) return bmm__secure_is_marked(page, p);
  return bmm__is_marked_free(page, p) && marked_block_freed(page, p);
}

/* p starts no block of BrainMM's own heaps: it is a fixed heap's block
 * (whose memory may lie anywhere, in a BrainMM block too), or misuse. */
static void free_other(void *p, const char *call, const char *what) {
  bmm_fixed_t *fh = bmm__fixed_find(p);
  if (fh == NULL) bmm__error(p, call, what);
  else if (!bmm__fixed_free(fh, p))
    bmm__error(p, call, "double free, or pointer into a block, of a fixed heap");
}

bmm_noinline void bmm__free_slow(void *p, bmm_page_t *page, const char *call) {
  if (p == NULL) return;
  if (bmm_unlikely(page == NULL)) {
    if (bmm_unlikely(bmm__leak)) bmm__leak_forget(p, NULL);
    size_t region_bytes = bmm__region_block_size(p, NULL);
    if (region_bytes != 0) {
      bmm__track_free_large(p);
      bmm__stats_large(region_bytes, false);
    }
    if (!bmm__region_block_free(p)) free_other(p, call, "pointer was not allocated by BrainMM");
    return;
  }
  uint8_t kind = atomic_load_explicit(&page->kind, memory_order_relaxed);
  switch (kind) {
  case BMM_PAGE_SMALL:
  case BMM_PAGE_MEDIUM:
    if (bmm_unlikely(!bmm__is_block_start(page, p))) {
      free_other(p, call, "pointer into the middle of a block");
      return;
    }
    if (bmm_unlikely(!bmm__is_carved_block(page, p))) {
      free_other(p, call, "pointer to a block never allocated");
      return;
    }
    if (bmm_unlikely(bmm__secure) && !bmm__secure_free_check(page, p, call)) return;
    if (bmm_unlikely(!bmm__secure && bmm__is_marked_free(page, p)) && marked_block_freed(page, p)) {
      bmm__error_block(p, call, "double free", page->block_size);
      return;
    }
    if (bmm__leak_check_free(page, p)) bmm__leak_forget(p, page);
    uintptr_t tid = atomic_load_explicit(&page->tid, memory_order_relaxed);
    if ((tid & ~BMM_TID_FLAGS) == bmm__os_thread_id()) { /* our page, full (tid bit 0) or not */
      /* leak_sample: the owner gives a page whose recorded blocks are all
       * gone its fast frees back. */
      if (bmm_unlikely(bmm__leak == 2) && (tid & BMM_TID_SLOW) &&
          atomic_load_explicit(&page->sampled, memory_order_relaxed) == 0)
        atomic_store_explicit(
            &page->tid,
            bmm__page_tid(atomic_load_explicit(&page->heap, memory_order_relaxed), page),
            memory_order_relaxed);
      bmm__free_local(page, p);
    } else {
      free_remote(page, (bmm_block_t *)p);
    }
    return;
  case BMM_PAGE_SPANS: {
    size_t usable = bmm__span_usable(p, page);
    if (bmm_unlikely(usable == 0)) { /* span_free reports it, unless it is a fixed heap's */
      bmm_fixed_t *fh = bmm__fixed_find(p);
      if (fh != NULL && bmm__fixed_free(fh, p)) return;
    } else {
      if (bmm_unlikely(bmm__leak)) bmm__leak_forget(p, NULL);
      bmm__track_free_large(p);
      bmm__stats_large(usable, false);
    }
    bmm__span_free(p, page, call);
    return;
  }
  case BMM_PAGE_LARGE:
  case BMM_PAGE_HUGE:
    if (bmm_unlikely(p != bmm__page_start(page))) {
      free_other(p, call, "pointer into the middle of a block");
      return;
    }
    /* The kind goes to FREE exactly once: a second free of the same block
     * (even a racing one) finds FREE and is reported. */
    if (bmm_unlikely(!atomic_compare_exchange_strong_explicit(
            &page->kind, &kind, BMM_PAGE_FREE, memory_order_acq_rel, memory_order_relaxed))) {
      bmm__error(p, call, "double free of a large block");
      return;
    }
    if (bmm_unlikely(bmm__leak)) bmm__leak_forget(p, NULL);
    bmm__track_free_large(p);
    bmm__stats_large(page->block_size, false);
    if (atomic_load_explicit(&page->heap, memory_order_relaxed) != NULL)
      bmm__fheap_large_unlink(page);
    if (kind == BMM_PAGE_LARGE) bmm__arena_page_free(page);
    else bmm__huge_free(page);
    return;
  default:
    free_other(p, call, "double free, or pointer not allocated by BrainMM");
    return;
  }
}

/* Where the inline fast path sends everything else. No stack frame before
 * the tests: free(NULL) comes here, and some programs call it a lot (the
 * python3 trace of bench/: about a million times). */
bmm_noinline void bmm__free_generic(void *p, bmm_page_t *page, const char *call) {
  if (p == NULL) return;
  if (bmm_unlikely(bmm__secure_fast) && page != NULL) bmm__secure_free(p, page, call);
  else bmm__free_slow(p, page, call);
}

BMM_API void bmm_free(void *p) {
  bmm__free_fast(p, "free");
}

/* The size is a hint that secure mode verifies. */
BMM_API void bmm_free_sized(void *p, size_t size) {
  if (bmm_unlikely(bmm__secure) && p != NULL) bmm__secure_check_size(p, size, "free_sized");
  bmm__free_fast(p, "free_sized");
}

BMM_API void bmm_free_aligned_sized(void *p, size_t align, size_t size) {
  (void)align;
  if (bmm_unlikely(bmm__secure) && p != NULL)
    bmm__secure_check_size(p, size, "free_aligned_sized");
  bmm__free_fast(p, "free_aligned_sized");
}

/* Usable size of a live block; 0 (after reporting, with `call` non-NULL)
 * when p is not the start of one. */
size_t bmm__usable_size_checked(const void *p, const char *call) {
  return bmm__block_usable(p, bmm__page_of(p), call);
}

/* The same, for a caller that has looked up p's page already. */
size_t bmm__block_usable(const void *p, const bmm_page_t *page, const char *call) {
  const char *what = "pointer was not allocated by BrainMM";
  if (page != NULL) {
    switch (atomic_load_explicit(&page->kind, memory_order_relaxed)) {
    case BMM_PAGE_SMALL:
    case BMM_PAGE_MEDIUM:
      if (bmm__is_carved_block(page, p)) return bmm__page_usable(page);
      what = bmm__is_block_start(page, p) ? "pointer to a block never allocated"
                                          : "pointer into the middle of a block";
      break;
    case BMM_PAGE_SPANS: {
      size_t usable = bmm__span_usable(p, page);
      if (usable != 0) return usable;
      what = "pointer into the middle of a large block, or to a freed one";
      break;
    }
    case BMM_PAGE_LARGE:
    case BMM_PAGE_HUGE:
      if (p == bmm__page_start(page)) return page->block_size;
      what = "pointer into the middle of a block";
      break;
    default:
      what = "pointer to a freed block";
      break;
    }
  }
  if (call != NULL) bmm__error(p, call, what);
  return 0;
}

BMM_API size_t bmm_usable_size(const void *p) {
  if (p == NULL) return 0;
  size_t size = bmm__is_ours(p) ? bmm__usable_size_checked(p, NULL)
                                : bmm__region_block_size(p, NULL);
  if (size == 0) { /* a fixed heap's block, wherever its memory lies? */
    bmm_fixed_t *fh = bmm__fixed_find(p);
    if (fh != NULL) size = bmm__fixed_usable(fh, p);
  }
  return size;
}
