/* fheap.c: first-class heaps (API section 8): pools whose blocks can all
 * go at once, and fixed heaps on caller memory.
 *
 * A heap is a list of views, one per thread that allocated from it. A view
 * is an ordinary thread heap (heap.c) that belongs to the heap: its pages
 * hold the heap's blocks only, so the lock-free paths of the default heap
 * serve it unchanged, and a block goes back with plain free from any
 * thread (the owner thread pushes locally, others onto thread_free). A
 * thread finds its view in a small cache in its default heap, keyed by the
 * heap's id; ids are never reused, so a destroyed heap's entries never
 * match again. Large blocks (above 64 KiB) are unit runs or huge regions
 * whose descriptors the heap links in a list under its lock (they are not
 * spans: a span has no descriptor of its own to link); blocks aligned to
 * more than half a region have no descriptor either: arena.c's table of
 * region blocks names their heap. Destroying a heap gives every page of
 * every view and every large block back: time linear in pages, none spent
 * on small blocks.
 *
 * A fixed heap is a header at the start of the caller's memory followed by
 * fixed.c's allocator on the rest; it takes fixed.c's lock on every call.
 */
#include <string.h>

#include "fastpath.h"
#include "fixed.h"
#include "track.h"

#define BMM_FHEAP_MAGIC 0x50414548u /* "HEAP" */

struct bmm_heap {
  uint32_t magic;     /* BMM_FHEAP_MAGIC while the heap lives */
  atomic_int lock;    /* guards views (pushes) and large */
  uint64_t id;        /* [init] key of the thread caches, never reused */
  bmm_theap_t *views; /* one per thread that allocated here, pushed at the head */
  bmm_page_t *large;  /* descriptors of live large/huge blocks (next/prev) */
  bmm_fixed_t *fixed; /* [init] fixed heaps: the allocator after this header */
};

/* The header of a fixed heap, rounded so that fixed.c's range starts
 * 16-aligned when the caller's memory is. */
#define BMM_FHEAP_HEADER ((sizeof(struct bmm_heap) + 15) & ~(size_t)15)

static _Atomic(uint64_t) heap_next_id = 1; /* 0 marks an empty cache entry */

static bool heap_valid(bmm_heap_t *heap, const char *call) {
  if (bmm_likely(heap != NULL && heap->magic == BMM_FHEAP_MAGIC)) return true;
  if (heap != NULL) bmm__error(heap, call, "not a live heap (destroyed, or never made)");
  errno = EINVAL;
  return false;
}

static inline bool is_pow2(size_t x) {
  return x != 0 && (x & (x - 1)) == 0;
}

/* ---- Views ------------------------------------------------------------ */

/* Find or make the calling thread's view of `heap` and cache it. A view
 * whose thread id is ours but which we did not make belonged to a thread
 * that exited (ids are unique among living threads): we take it over. */
static bmm_noinline bmm_theap_t *heap_view_slow(bmm_heap_t *heap) {
  bmm_theap_t *mine = bmm__heap_get();
  if (mine == NULL) return NULL;
  uintptr_t me = bmm__os_thread_id();
  bmm__spin_lock(&heap->lock);
  bmm_theap_t *view = heap->views;
  while (view != NULL && (view->tid & ~BMM_TID_FLAGS) != me)
    view = view->view_next;
  if (view == NULL && (view = bmm__heap_view_new(heap)) != NULL) {
    view->view_next = heap->views;
    heap->views = view;
  }
  bmm__spin_unlock(&heap->lock);
  if (view == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  uint32_t slot = mine->view_cache_next++ % BMM_VIEW_CACHE;
  mine->view_cache[slot].id = heap->id;
  mine->view_cache[slot].view = view;
  return view;
}

bmm_inline bmm_theap_t *heap_view(bmm_heap_t *heap) {
  bmm_theap_t *mine = bmm__heap_tls;
  for (size_t i = 0; i < BMM_VIEW_CACHE; i++)
    if (mine->view_cache[i].id == heap->id) return mine->view_cache[i].view;
  return heap_view_slow(heap);
}

/* ---- Large blocks ------------------------------------------------------ */

static void *heap_large_alloc(bmm_heap_t *heap, bmm_theap_t *view, size_t size, size_t align) {
  if (bmm_unlikely(size > PTRDIFF_MAX)) {
    errno = ENOMEM;
    return NULL;
  }
  if (align > BMM_HUGE_ALIGN_MAX) { /* no descriptor: the table knows the heap */
    void *p = bmm__region_block_alloc(size, align, bmm__secure != 0, heap->id);
    if (p == NULL) errno = ENOMEM;
    return bmm__large_handed_out(p, size);
  }
  bool huge = size > BMM_LARGE_MAX || align > BMM_LARGE_MAX;
  void *p = huge ? bmm__huge_alloc(size, align) : bmm__large_unit_run(size, align);
  if (p == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  bmm_page_t *page = bmm__page_of_ours(p);
  /* A reused descriptor may hold an old alignment: set it either way. */
  page->align_log = (uint8_t)(align > BMM_ALIGN ? __builtin_ctzll(align) : 0);
  atomic_store_explicit(&page->heap, view, memory_order_relaxed);
  bmm__spin_lock(&heap->lock);
  page->prev = NULL;
  page->next = heap->large;
  if (heap->large != NULL) heap->large->prev = page;
  heap->large = page;
  bmm__spin_unlock(&heap->lock);
  return bmm__large_handed_out(p, size);
}

/* free() of a heap's large block, after it claimed the block (kind FREE). */
void bmm__fheap_large_unlink(bmm_page_t *page) {
  bmm_heap_t *heap = atomic_load_explicit(&page->heap, memory_order_relaxed)->owner;
  bmm__spin_lock(&heap->lock);
  if (page->prev != NULL)
    page->prev->next = page->next;
  else
    heap->large = page->next;
  if (page->next != NULL) page->next->prev = page->prev;
  bmm__spin_unlock(&heap->lock);
  page->next = page->prev = NULL;
  atomic_store_explicit(&page->heap, NULL, memory_order_relaxed);
}

/* ---- Allocation -------------------------------------------------------- */

/* align: a power of two; 16 or less means none beyond the usual. */
static void *heap_alloc(bmm_heap_t *heap, size_t size, size_t align) {
  if (heap->fixed != NULL) {
    void *p = bmm__fixed_alloc(heap->fixed, size, align);
    if (p == NULL) errno = ENOMEM;
    return p;
  }
  bmm_theap_t *view = heap_view(heap);
  if (bmm_unlikely(view == NULL)) return NULL;
  if (align <= BMM_ALIGN) {
    if (bmm_likely(size <= BMM_SMALL_MAX)) {
      void *p = bmm__heap_pop_small(view, size);
      if (bmm_likely(p != NULL)) return p;
    }
    size_t need = bmm__class_request(size);
    if (need <= BMM_MEDIUM_MAX) return bmm__heap_alloc_slow(view, bmm__class_of(need));
  } else if (align <= BMM_UNIT_SIZE) {
    size_t qi = bmm__aligned_queue(size, align);
    if (qi != SIZE_MAX) return bmm__heap_alloc_slow(view, qi);
  }
  return heap_large_alloc(heap, view, size, align);
}

BMM_API void *bmm_heap_malloc(bmm_heap_t *heap, size_t size) {
  return heap_valid(heap, "bmm_heap_malloc") ? heap_alloc(heap, size, 0) : NULL;
}

BMM_API void *bmm_heap_calloc(bmm_heap_t *heap, size_t count, size_t size) {
  if (!heap_valid(heap, "bmm_heap_calloc")) return NULL;
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  void *p = heap_alloc(heap, total, 0);
  if (p == NULL) return NULL;
  if (heap->fixed != NULL)
    memset(p, 0, total);
  else
    bmm__zero_block(p, total);
  return p;
}

BMM_API void *bmm_heap_malloc_aligned(bmm_heap_t *heap, size_t size, size_t align) {
  if (!heap_valid(heap, "bmm_heap_malloc_aligned")) return NULL;
  if (!is_pow2(align)) {
    errno = EINVAL;
    return NULL;
  }
  return heap_alloc(heap, size, align);
}

/* realloc, reget and expand of a fixed heap's block (alloc.c's
 * resize_block comes here for any p a fixed heap owns). */
void *bmm__fixed_resize(bmm_fixed_t *fh, void *p, size_t size, bmm_resize_t mode) {
  if (mode == BMM_RESIZE_EXPAND) {
    if (size <= bmm__fixed_usable(fh, p)) return p;
    errno = ENOMEM; /* fixed.c grows in place inside realloc only */
    return NULL;
  }
  void *q = bmm__fixed_realloc(fh, p, size, bmm__fixed_align(fh, p));
  if (q == NULL) errno = ENOMEM;
  return q;
}

/* Into `heap`: the block stays where it is when it fits (as realloc keeps
 * it, whichever heap it came from), else it moves into `heap` with its
 * alignment and contents. */
BMM_API void *bmm_heap_realloc(bmm_heap_t *heap, void *p, size_t size) {
  if (!heap_valid(heap, "bmm_heap_realloc")) return NULL;
  if (p == NULL) return heap_alloc(heap, size, 0);
  if (size == 0) {
    bmm__free_fast(p, "bmm_heap_realloc");
    return NULL;
  }
  bmm_fixed_t *fh = heap->fixed != NULL ? bmm__fixed_find(p) : NULL;
  if (fh == heap->fixed && fh != NULL && bmm__fixed_usable(fh, p) != 0)
    return bmm__fixed_resize(fh, p, size, BMM_RESIZE_REALLOC);
  size_t align, usable;
  bmm_page_t *page;
  usable = bmm__block_info(p, NULL, &align, &page);
  if (usable == 0 && (fh = bmm__fixed_find(p)) != NULL) {
    usable = bmm__fixed_usable(fh, p);
    align = bmm__fixed_align(fh, p);
  }
  if (bmm_unlikely(usable == 0)) {
    bmm__block_info(p, "bmm_heap_realloc", &align, &page); /* reports it */
    errno = EINVAL;
    return NULL;
  }
  if (size <= usable && size >= usable / 2) return p;
  void *q = heap_alloc(heap, size, align);
  if (q == NULL) return NULL; /* p stays valid */
  memcpy(q, p, size < usable ? size : usable);
  bmm__free_fast(p, "bmm_heap_realloc");
  return q;
}

/* ---- Life cycle --------------------------------------------------------- */

static bmm_heap_t *heap_init(bmm_heap_t *heap) {
  memset(heap, 0, sizeof *heap);
  heap->id = atomic_fetch_add_explicit(&heap_next_id, 1, memory_order_relaxed);
  heap->magic = BMM_FHEAP_MAGIC;
  return heap;
}

BMM_API bmm_heap_t *bmm_heap_new(void) {
  bmm_heap_t *heap = bmm_malloc(sizeof *heap);
  return heap != NULL ? heap_init(heap) : NULL;
}

BMM_API bmm_heap_t *bmm_heap_new_fixed(void *mem, size_t size) {
  uintptr_t start = ((uintptr_t)mem + 15) & ~(uintptr_t)15;
  if (mem == NULL || size < start - (uintptr_t)mem + BMM_FHEAP_HEADER) {
    errno = EINVAL;
    return NULL;
  }
  size -= start - (uintptr_t)mem + BMM_FHEAP_HEADER;
  bmm_fixed_t *fixed = bmm__fixed_init((uint8_t *)start + BMM_FHEAP_HEADER, size);
  if (fixed == NULL) return NULL; /* errno set */
  bmm_heap_t *heap = heap_init((bmm_heap_t *)start);
  heap->fixed = fixed;
  return heap;
}

static bool forget_block(const void *block, size_t usable, void *arg) {
  (void)usable;
  (void)arg;
  bmm__track_free_large((void *)block); /* valgrind: every block goes */
  bmm_page_t *page = bmm__page_of(block);
  if (page == NULL) { /* a region block */
    if (bmm__leak) bmm__leak_forget((void *)block, NULL);
    return true;
  }
  uint8_t kind = atomic_load_explicit(&page->kind, memory_order_relaxed);
  bool small = kind == BMM_PAGE_SMALL || kind == BMM_PAGE_MEDIUM;
  if (bmm__leak && (!small || bmm__leak_check_free(page, block)))
    bmm__leak_forget((void *)block, small ? page : NULL);
  return true;
}

/* Every page of every view and every large block goes back at once; the
 * memory goes back to the OS now rather than after the purge delay. Leak
 * tracking, when on, forgets the heap's blocks one by one first. */
BMM_API void bmm_heap_destroy(bmm_heap_t *heap) {
  if (heap == NULL || !heap_valid(heap, "bmm_heap_destroy")) return;
  if (heap->fixed != NULL) {
    heap->magic = 0;
    bmm__fixed_destroy(heap->fixed); /* the memory is the caller's */
    return;
  }
  if (bmm_unlikely(bmm__leak) || BMM_TRACK_VALGRIND) bmm_heap_visit(heap, forget_block, NULL);
  heap->magic = 0;
  bmm__spin_lock(&heap->lock);
  bmm_theap_t *view = heap->views;
  bmm_page_t *page = heap->large;
  heap->views = NULL;
  heap->large = NULL;
  bmm__spin_unlock(&heap->lock);
  while (view != NULL) {
    bmm_theap_t *next = view->view_next;
    bmm__heap_view_release(view);
    view = next;
  }
  while (page != NULL) {
    bmm_page_t *next = page->next;
    uint8_t kind = atomic_load_explicit(&page->kind, memory_order_relaxed);
    page->next = page->prev = NULL;
    bmm__stats_large(page->block_size, false);
    atomic_store_explicit(&page->heap, NULL, memory_order_relaxed);
    atomic_store_explicit(&page->kind, BMM_PAGE_FREE, memory_order_relaxed);
    if (kind == BMM_PAGE_LARGE)
      bmm__arena_page_free(page);
    else
      bmm__huge_free(page);
    page = next;
  }
  /* Region blocks: the table lists them (a free meanwhile finds the entry
   * gone, and so does this). */
  void *blocks[16];
  size_t sizes[16], n;
  while ((n = bmm__region_blocks_owned(heap->id, blocks, sizes, 16)) != 0) {
    for (size_t i = 0; i < n; i++)
      if (bmm__region_block_free(blocks[i])) bmm__stats_large(sizes[i], false);
  }
  bmm__arena_purge_marked();
  bmm_free(heap);
}

/* Not safe against threads allocating from or freeing into `heap` at the
 * same time; other heaps may be in use meanwhile. */
BMM_API bool bmm_heap_visit(bmm_heap_t *heap, bmm_visit_fn *fn, void *arg) {
  if (!heap_valid(heap, "bmm_heap_visit") || fn == NULL) return false;
  if (heap->fixed != NULL) return bmm__fixed_visit(heap->fixed, fn, arg);
  for (bmm_theap_t *view = heap->views; view != NULL; view = view->view_next)
    if (!bmm__heap_view_visit(view, fn, arg)) return false;
  for (bmm_page_t *page = heap->large; page != NULL; page = page->next)
    if (!fn(bmm__page_start(page), page->block_size, arg)) return false;
  void *blocks[BMM_REGION_BLOCKS];
  size_t sizes[BMM_REGION_BLOCKS];
  size_t n = bmm__region_blocks_owned(heap->id, blocks, sizes, BMM_REGION_BLOCKS);
  for (size_t i = 0; i < n; i++)
    if (!fn(blocks[i], sizes[i], arg)) return false;
  return true;
}
