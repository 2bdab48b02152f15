/* alloc.c: allocation entry points of API section 1 (malloc, calloc,
 * realloc, reallocarray) and the slow paths behind the inline fast path:
 * first use by a thread and medium sizes; large blocks are large.c's.
 */
#include <string.h>

#include "fastpath.h"
#include "fixed.h"

/* The slow path of every small and medium allocation, plain (qi = the
 * class) or aligned (qi = BMM_CLASS_COUNT + the class): drain the delayed
 * frees, find a page of queue qi with a free block, pop it. */
void *bmm__heap_alloc_slow(bmm_theap_t *heap, size_t qi) {
  /* leak_sample cut this queue's page list and the cut is reached: this is
   * the call to record. (Not merely any slow call: in secure mode every
   * call is one, and recording the next call's block, whatever the draw,
   * gave one of two alternating sites two thirds of the samples.) */
  if (bmm_unlikely(heap->leak_page != NULL) && heap->leak_qi == qi &&
      heap->leak_page->free == NULL)
    bmm__leak_resume(heap, true);
  if (atomic_load_explicit(&heap->delayed_free, memory_order_relaxed) != NULL)
    bmm__heap_process_delayed(heap);
  bmm_page_t *page = heap->queues[qi].first;
  void *block;
  do { /* secure mode drops a block written while free: then another one */
    if (page == NULL || page->free == NULL) {
      page = bmm__heap_find_page(heap, qi);
      if (bmm_unlikely(page == NULL)) {
        errno = ENOMEM;
        return NULL;
      }
    }
    bmm_assert_expensive(bmm__page_is_valid(page));
    block = bmm__secure ? bmm__secure_pop(page) : bmm__page_pop(page, page->free);
  } while (bmm_unlikely(block == NULL));
  if (bmm_unlikely(bmm__leak)) bmm__leak_on_alloc(heap, page, qi, block);
  return block;
}

/* A large block (or NULL) fresh from large.c, `size` bytes asked for:
 * counted for the statistics, shown to memory checkers, and recorded for
 * the leak report when due. */
void *bmm__large_handed_out(void *p, size_t size) {
  if (p == NULL) return NULL;
  size_t usable = bmm_usable_size(p);
  bmm__stats_large(usable, true);
  bmm__track_alloc(p, usable);
  if (bmm_unlikely(bmm__leak) && bmm__leak_want(bmm__heap_tls, size))
    bmm__leak_record(p, usable, NULL);
  return p;
}

/* The heap of the calling thread, set up on its first allocation; NULL
 * (errno ENOMEM) when even that fails. */
bmm_theap_t *bmm__heap_get(void) {
  bmm_theap_t *heap = bmm__heap_tls;
  if (bmm_unlikely(heap == &bmm__heap_empty) && (heap = bmm__heap_init_thread()) == NULL)
    errno = ENOMEM;
  return heap;
}

bmm_noinline void *bmm__malloc_slow(bmm_theap_t *heap, size_t size) {
  if (bmm_unlikely(heap == &bmm__heap_empty) && (heap = bmm__heap_get()) == NULL) return NULL;
  size_t need = bmm__class_request(size);
  if (need > BMM_MEDIUM_MAX) return bmm__large_handed_out(bmm__large_alloc(size, 0), size);
  return bmm__heap_alloc_slow(heap, bmm__class_of(need));
}

/* Where the inline fast path sends everything else. No stack frame: secure
 * mode's short path (a block from the page in front of its class) costs
 * one jump more than its own code. */
bmm_noinline void *bmm__malloc_generic(bmm_theap_t *heap, size_t size) {
  if (bmm_unlikely(bmm__secure_fast)) return bmm__secure_malloc(heap, size);
  return bmm__malloc_slow(heap, size);
}

BMM_API void *bmm_malloc(size_t size) {
  return bmm__malloc_fast(size);
}

static bool mul_overflows(size_t a, size_t b, size_t *out) {
  return __builtin_mul_overflow(a, b, out);
}

BMM_API void *bmm_calloc(size_t count, size_t size) {
  size_t total;
  if (bmm_unlikely(mul_overflows(count, size, &total))) {
    errno = ENOMEM;
    return NULL;
  }
  void *p = bmm__malloc_fast(total);
  if (bmm_likely(p != NULL)) bmm__zero_block(p, total);
  return p;
}

/* Clear the first `size` bytes of the fresh block p (calloc). */
void bmm__zero_block(void *p, size_t size) {
  bmm_page_t *page = bmm__page_of(p);
  /* A huge block on a fresh mapping is zero already (capacity 0: not
   * reused from the huge cache). */
  if (atomic_load_explicit(&page->kind, memory_order_relaxed) != BMM_PAGE_HUGE ||
      page->capacity != 0)
    memset(p, 0, size);
  else
    bmm__track_zeroed(p, size);
}

/* Usable size of the live block at p and the alignment it must keep (0:
 * the usual 16 bytes); 0 when p starts no block of BrainMM's own heaps
 * (after reporting it as misuse if `call` is not NULL). */
size_t bmm__block_info(void *p, const char *call, size_t *align, bmm_page_t **page) {
  *page = bmm__page_of(p);
  *align = 0;
  if (*page == NULL) {
    size_t size = bmm__region_block_size(p, align);
    if (size == 0 && call != NULL) bmm__error(p, call, "pointer was not allocated by BrainMM");
    return size;
  }
  size_t usable = bmm__block_usable(p, *page, call);
  if (usable == 0) return 0;
  uint8_t kind = atomic_load_explicit(&(*page)->kind, memory_order_relaxed);
  if (kind == BMM_PAGE_SMALL || kind == BMM_PAGE_MEDIUM)
    *align = (*page)->align_log ? (size_t)1 << (*page)->align_log : 0;
  else
    *align = bmm__large_align(p, *page);
  return usable;
}

/* The block p (`usable` bytes) in a new block with alignment `align` (0:
 * plain) for `size` bytes, its contents copied unless reget; p is freed.
 * NULL if no memory, p untouched then. */
static void *move_block(void *p, size_t usable, size_t size, size_t align, bmm_resize_t mode,
                        const char *call) {
  size_t want = bmm__realloc_want(size, usable);
  void *q = align ? bmm__malloc_aligned(want, align) : bmm__malloc_fast(want);
  if (bmm_unlikely(q == NULL)) return NULL; /* p stays valid */
  if (mode == BMM_RESIZE_REALLOC) {
    size_t keep = size < usable ? size : usable;
    memcpy(q, p, keep);
    if (keep > BMM_MEDIUM_MAX) bmm__large_count_copied(keep);
  }
  bmm__free_fast(p, call);
  return q;
}

/* realloc, reget and expand: in place when the block allows it (large
 * blocks grow into their neighbours or remap), else a new block with the
 * same alignment, the contents copied unless reget. */
static void *resize_block(void *p, size_t size, bmm_resize_t mode, const char *call) {
  size_t align;
  bmm_page_t *page;
  size_t usable = bmm__block_info(p, NULL, &align, &page);
  if (bmm_unlikely(usable == 0)) {
    bmm_fixed_t *fh = bmm__fixed_find(p); /* wherever its memory lies */
    if (fh != NULL && bmm__fixed_usable(fh, p) != 0) return bmm__fixed_resize(fh, p, size, mode);
    bmm__block_info(p, call, &align, &page); /* reports the misuse */
    errno = EINVAL;
    return NULL;
  }
  uint8_t kind = page != NULL ? atomic_load_explicit(&page->kind, memory_order_relaxed) : 0;
  if ((kind == BMM_PAGE_SMALL || kind == BMM_PAGE_MEDIUM) && bmm_unlikely(bmm__block_freed(page, p))) {
    bmm__error_block(p, call, "pointer to a freed block", page->block_size);
    errno = EINVAL;
    return NULL;
  }
  /* realloc's inline check keeps these already; reget and expand too. */
  if (kind == BMM_PAGE_SPANS && bmm__span_keeps(size, usable)) return p;
  /* A first-class heap tracks its large blocks by their descriptor, which
   * growing in place may move: such a block is moved by copying. */
  if (page != NULL && usable > BMM_MEDIUM_MAX &&
      atomic_load_explicit(&page->heap, memory_order_relaxed) == NULL) {
    if (bmm_unlikely(bmm__leak)) bmm__leak_moving(p);
    void *q = bmm__large_realloc(p, page, size, mode);
    if (q != NULL) {
      size_t now = bmm_usable_size(q);
      bmm__stats_large_resized(usable, now);
      if (bmm_unlikely(bmm__leak)) bmm__leak_moved(p, q, now);
      bmm__track_resized(p, usable, q, now);
      return q;
    }
    if (bmm_unlikely(bmm__leak)) bmm__leak_moved(p, p, usable); /* p stays as it was */
  }
  /* Keep the block when the new size fits and does not waste more than
   * half of it (expand keeps it whenever it fits). */
  if (size <= usable && (size >= usable / 2 || mode == BMM_RESIZE_EXPAND)) {
    if (bmm_unlikely(bmm__secure) && (kind == BMM_PAGE_SMALL || kind == BMM_PAGE_MEDIUM))
      bmm__secure_note_size(page, p, size);
    return p;
  }
  if (mode == BMM_RESIZE_EXPAND) {
    errno = ENOMEM;
    return NULL;
  }
  return move_block(p, usable, size, align, mode, call);
}

BMM_API void *bmm_realloc(void *p, size_t size) {
  if (p == NULL) return bmm__malloc_fast(size);
  if (size == 0) {
    /* As glibc does: free the block and return NULL. */
    bmm__free_fast(p, "realloc");
    return NULL;
  }
  size_t usable;
  void *q = bmm__realloc_in_place(p, size, &usable);
  if (bmm_likely(q != NULL)) return q;
  if (usable != 0) /* a live plain small or medium block moves */
    return move_block(p, usable, size, 0, BMM_RESIZE_REALLOC, "realloc");
  return resize_block(p, size, BMM_RESIZE_REALLOC, "realloc");
}

BMM_API void *bmm_reget(void *p, size_t size) {
  if (p == NULL) return bmm__malloc_fast(size);
  if (size == 0) {
    bmm__free_fast(p, "bmm_reget");
    return NULL;
  }
  return resize_block(p, size, BMM_RESIZE_REGET, "bmm_reget");
}

BMM_API void *bmm_expand(void *p, size_t size) {
  if (p == NULL) {
    errno = EINVAL;
    return NULL;
  }
  return resize_block(p, size, BMM_RESIZE_EXPAND, "bmm_expand");
}

BMM_API void *bmm_reallocarray(void *p, size_t count, size_t size) {
  size_t total;
  if (bmm_unlikely(mul_overflows(count, size, &total))) {
    errno = ENOMEM;
    return NULL;
  }
  return bmm_realloc(p, total);
}
