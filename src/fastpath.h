/* fastpath.h: the malloc and free fast paths, inline, shared by the bmm_
 * API (alloc.c, free.c) and the standard names (override/malloc.c) so that
 * both compile to the same few instructions with no extra call.
 *
 * malloc: one TLS load, one table load, pop the page's free list, clear
 *         the block's free mark.
 * free:   one region-map byte, the page descriptor, a thread-id compare,
 *         the block's free mark, push on the page's local list. Everything
 *         else is a noinline slow path in alloc.c / free.c / heap.c.
 */
#ifndef BMM_FASTPATH_H
#define BMM_FASTPATH_H

#include <string.h>

#include "internal.h"
#include "track.h"

/* Double frees by the owning thread. A block on a free list holds its
 * page descriptor's address in its second word (every block has 16 bytes),
 * and a block handed out has that word cleared: a free that finds it there
 * is almost surely of a free block, and the slow path walks the page's
 * lists to be sure (the program never gets that value from us, but it may
 * copy a free block's words). It costs the fast paths a store in malloc
 * and a compare and a store in free, on a line they touch anyway. Secure
 * mode keeps a keyed mark in the same word instead. */
bmm_inline void bmm__mark_free(bmm_page_t *page, void *p) {
  ((bmm_page_t **)p)[1] = page;
}
bmm_inline bool bmm__is_marked_free(const bmm_page_t *page, const void *p) {
  bmm__track_mark_read(p);
  return ((bmm_page_t *const *)p)[1] == page;
}
bmm_inline void bmm__unmark(void *p) {
  ((bmm_page_t **)p)[1] = NULL;
}

/* Hand out `block`, the first of `page`'s free list (default mode: secure
 * mode pops with bmm__secure_pop). */
bmm_inline void *bmm__page_pop(bmm_page_t *page, bmm_block_t *block) {
  page->free = block->next;
  page->used++;
  bmm__unmark(block);
  bmm__track_alloc(block, page->block_size);
  if (bmm__debug) memset(block, BMM_DEBUG_FILL_ALLOC, page->block_size);
  return block;
}

/* Pop a block of `size` (at most BMM_SMALL_MAX) from the page the direct
 * table of `heap` names, or NULL when that page has none ready. */
bmm_inline void *bmm__heap_pop_small(bmm_theap_t *heap, size_t size) {
  bmm_page_t *page = heap->direct[(size + BMM_ALIGN - 1) / BMM_ALIGN];
  bmm_block_t *block = page->free;
  return bmm_likely(block != NULL) ? bmm__page_pop(page, block) : NULL;
}

bmm_inline void *bmm__malloc_fast(size_t size) {
  bmm_theap_t *heap = bmm__heap_tls;
  if (bmm_likely(size <= BMM_SMALL_MAX)) {
    void *p = bmm__heap_pop_small(heap, size);
    if (bmm_likely(p != NULL)) return p;
  }
  return bmm__malloc_generic(heap, size);
}

/* The size an aligned request of `size` bytes (or, in secure mode, of
 * them and the canary) takes: a multiple of align (a power of two). Up to
 * 256 every multiple of 16 is a class, whose blocks all have it; its
 * aligned queue is bmm__aligned_small_queue(want). */
bmm_inline size_t bmm__aligned_want(size_t size, size_t align) {
  return (size < align ? align : size + align - 1) & ~(align - 1);
}
bmm_inline size_t bmm__aligned_small_queue(size_t want) {
  return BMM_CLASS_COUNT + want / BMM_ALIGN - 1;
}

/* The aligned fast path, for align a power of two in (16, 256] and blocks
 * of at most 256 bytes: every multiple of 16 up to 256 is a class, so the
 * class of max(size, align) rounded up to align is found without a search,
 * and all its blocks are aligned. Pops from the aligned queue of that
 * class. NULL means "take the slow path"; errno is not touched. */
bmm_inline void *bmm__malloc_aligned_fast(size_t size, size_t align) {
  size_t want = bmm__aligned_want(size, align);
  /* bmm__all_slow: every allocation takes the slow path. The one inline
   * path that pays a test for it (a load that stays cached). */
  if (bmm_unlikely(want > 256 || size > 256 || bmm__all_slow)) return NULL;
  bmm_page_t *page = bmm__heap_tls->queues[bmm__aligned_small_queue(want)].first;
  if (bmm_unlikely(page == NULL)) return NULL;
  bmm_block_t *block = page->free;
  if (bmm_unlikely(block == NULL)) return NULL;
  return bmm__page_pop(page, block); /* the page's align_log covers `align` already */
}

/* posix_memalign's fast path (shared by bmm_posix_memalign and the
 * exported posix_memalign): 0 and *out set, or -1 for "take the slow
 * path" (validation, errno save, everything else). */
bmm_inline int bmm__posix_memalign_fast(void **out, size_t align, size_t size) {
  if (bmm_likely(align > BMM_ALIGN && align <= 256 && (align & (align - 1)) == 0)) {
    void *p = bmm__malloc_aligned_fast(size, align);
    if (bmm_likely(p != NULL)) {
      *out = p;
      return 0;
    }
  }
  return -1;
}

/* True if p is the start of a block of small/medium `page`, the page
 * bmm__page_of(p) found: p lies in its units then, and the block index
 * alone tells. */
bmm_inline bool bmm__is_block_start(const bmm_page_t *page, const void *p) {
  return bmm__page_block_index(page, p) < page->reserved;
}

/* The same, and p is among the blocks carved so far. A free of a block past
 * them (never allocated) would put it on a list while the page carves it
 * again later: the same block twice. (A carved block not handed out yet
 * is on a free list with its free mark: a free of it is a double free.)
 * Any thread may ask: capacity only grows while the page has a block in
 * use, and the owner raised it before the block could reach anyone. */
bmm_inline bool bmm__is_carved_block(const bmm_page_t *page, const void *p) {
  return bmm__page_block_index(page, p) <
         __atomic_load_n(&page->capacity, __ATOMIC_RELAXED);
}

/* What realloc allocates to move a block of `usable` bytes to `size`: a
 * small block that outgrows itself is likely to grow again (a string
 * appended to, a buffer filled): it gets a quarter more than it had, so
 * that growth by small steps moves it once per 25% rather than once per
 * size class (12.5% apart), and its copying stays linear in its size. */
bmm_inline size_t bmm__realloc_want(size_t size, size_t usable) {
  if (size > usable && usable <= BMM_MEDIUM_MAX && size < usable + usable / 4)
    return usable + usable / 4;
  return size;
}

/* realloc keeps a span of `usable` bytes for `size` bytes where it is
 * when its page count stays: nothing to do (no span lock, no tags). */
bmm_inline bool bmm__span_keeps(size_t size, size_t usable) {
  return size <= usable && size > usable - BMM_SPAN_PAGE;
}

/* realloc's common cases, in a few instructions. p stays when it is a
 * small or medium block that holds `size` bytes already without wasting
 * half of itself (resize_block's rule for keeping a block), or a span
 * whose page count stays: returns p. A live plain small or medium block
 * that must move: returns NULL with *move = its usable size (the caller
 * moves it). Anything else (other large blocks, aligned blocks, other
 * pointers, misuse): NULL with *move = 0, for the slow path,
 * which sorts them out and reports. */
bmm_inline void *bmm__realloc_in_place(void *p, size_t size, size_t *move) {
  *move = 0;
  if (bmm_unlikely(!bmm__is_ours(p))) return NULL;
  bmm_page_t *page = bmm__page_of_ours(p);
  uint8_t kind = atomic_load_explicit(&page->kind, memory_order_relaxed);
  if (kind == BMM_PAGE_SPANS) { /* a live span that keeps its page count */
    size_t usable = bmm__span_usable(p, page);
    return usable != 0 && bmm__span_keeps(size, usable) ? p : NULL;
  }
  if (kind != BMM_PAGE_SMALL && kind != BMM_PAGE_MEDIUM) return NULL;
  /* A freed block goes to the slow path, which reports a realloc of it.
   * Secure mode marks free blocks its own way, and keeps a canary after
   * the usable bytes. */
  if (!bmm__is_carved_block(page, p)) return NULL;
  size_t usable = page->block_size;
  if (bmm_unlikely(bmm__secure)) {
    if (bmm__secure_is_marked(page, p)) return NULL;
    usable -= BMM_CANARY;
  } else if (bmm__is_marked_free(page, p)) {
    return NULL;
  }
  if (size <= usable && size >= usable / 2) return p;
  if (page->align_log == 0) *move = usable; /* an aligned one keeps its alignment: slow */
  return NULL;
}

/* Pushes p on the local free list of its page, which the calling thread
 * owns; true when that was the page's last block in use. `slow` (a
 * constant): the caller is a slow path, which secure mode may take, so
 * the link may have to be encoded; the fast path never sees secure mode. */
bmm_inline bool bmm__push_local(bmm_page_t *page, void *p, bool slow) {
  bmm_block_t *block = (bmm_block_t *)p;
  bool secure = slow && bmm_unlikely(bmm__secure); /* it keeps marks in the block */
  if (bmm__debug && !secure) memset(block, BMM_DEBUG_FILL_FREE, page->block_size);
  bmm__track_free(block, page->block_size);
  if (secure) {
    bmm__secure_set_next(page, block, page->local_free);
  } else {
    bmm__mark_free(page, block);
    block->next = page->local_free;
  }
  page->local_free = block;
  return --page->used == 0;
}

/* Free a block of a page the calling thread owns. */
bmm_inline void bmm__free_local(bmm_page_t *page, void *p) {
  if (bmm_unlikely(bmm__push_local(page, p, true) || page->in_full))
    bmm__heap_page_unfull_or_retire(
        atomic_load_explicit(&page->heap, memory_order_relaxed), page);
}

/* The fast path takes a block of a page this thread owns and that is not
 * full: page->tid equals our id exactly only then (a full page has bit 0
 * set, see page_set_full in heap.c). It also checks that p starts a block
 * the page has carved (three arithmetic instructions, see
 * bmm__page_block_index, and the owner's capacity): an interior pointer,
 * or a block never handed out, pushed on a free list would hand the same
 * bytes out twice; and that it is not marked free (a double free, which
 * the slow path confirms and reports). */
bmm_inline void bmm__free_fast(void *p, const char *call) {
  if (bmm_unlikely(!bmm__is_ours(p))) { /* NULL, foreign */
    bmm__free_generic(p, NULL, call);
    return;
  }
  bmm_page_t *page = bmm__page_of_ours(p);
  if (bmm_likely(atomic_load_explicit(&page->tid, memory_order_relaxed) == bmm__os_thread_id() &&
                 bmm__page_block_index(page, p) < page->capacity &&
                 !bmm__is_marked_free(page, p))) {
    if (bmm_unlikely(bmm__push_local(page, p, false)))
      bmm__heap_page_unfull_or_retire(
          atomic_load_explicit(&page->heap, memory_order_relaxed), page);
  } else {
    bmm__free_generic(p, page, call);
  }
}

#endif /* BMM_FASTPATH_H */
