/* pages.c: the pages API (API section 5). Pages are page-aligned spans of
 * any count (or huge blocks above 16 MiB), so they grow in place into free
 * neighbours on both sides and otherwise move by remapping; they can be
 * freed with bmm_pages_free or plain free. Protection works on any
 * page-aligned memory of the process; a large block whose rights it changed
 * gets read+write back when it is freed, shrunk or resized (see
 * bmm__rights_map in arena.c).
 */
#include "internal.h"
#include "track.h"

BMM_API size_t bmm_page_size(void) {
  return BMM_SPAN_PAGE;
}

/* Fresh pages p (or NULL) handed out as a large block is: counted in the
 * statistics, recorded for the leak report when due, and shown to memory
 * checkers (zeroed: defined). Their frees go through free's large-block
 * path, which counts and forgets them. */
static void *pages_handed_out(void *p) {
  if (p == NULL) return NULL;
  bmm__large_handed_out(p, bmm_usable_size(p));
  bmm__track_zeroed(p, bmm_usable_size(p));
  return p;
}

BMM_API void *bmm_pages_alloc(size_t count) {
  return pages_handed_out(bmm__pages_alloc(count));
}

/* The descriptor of pages from bmm_pages_alloc starting at p, or NULL
 * after reporting misuse. */
static bmm_page_t *pages_of(void *p, const char *call) {
  bmm_page_t *page = bmm__page_of(p);
  if (page != NULL && ((uintptr_t)p & (BMM_SPAN_PAGE - 1)) == 0) {
    uint8_t kind = atomic_load_explicit(&page->kind, memory_order_relaxed);
    if ((kind == BMM_PAGE_SPANS && bmm__span_usable(p, page) != 0) ||
        (kind == BMM_PAGE_HUGE && p == bmm__page_start(page)))
      return page;
  }
  bmm__error(p, call, "not pages from bmm_pages_alloc (or already freed)");
  return NULL;
}

/* Resized pages are read+write, as fresh ones: rights the caller set would
 * not follow the bytes (copied or moved into other pages) anyway, and the
 * copy must read them. So are pages a resize failed for (ENOMEM): the
 * rights they had are not recorded anywhere to be put back. */
static void *pages_resize(void *p, size_t count, bmm_resize_t mode, const char *call) {
  if (p == NULL) return pages_handed_out(bmm__pages_alloc(count));
  bmm_page_t *page = pages_of(p, call);
  if (page == NULL) {
    errno = EINVAL;
    return NULL;
  }
  size_t bytes = atomic_load_explicit(&page->kind, memory_order_relaxed) == BMM_PAGE_SPANS
                     ? bmm__span_usable(p, page)
                     : page->block_size;
  bmm__arena_restore_rights(p, bytes);
  if (bmm_unlikely(bmm__leak)) bmm__leak_moving(p);
  void *q = bmm__pages_resize(p, page, count, mode);
  if (q != NULL) { /* the same block, resized (as realloc's large path) */
    size_t now = bmm_usable_size(q);
    bmm__stats_large_resized(bytes, now);
    bmm__track_resized(p, bytes, q, now);
  }
  if (bmm_unlikely(bmm__leak))
    bmm__leak_moved(p, q != NULL ? q : p, q != NULL ? bmm_usable_size(q) : bytes);
  return q;
}

BMM_API void *bmm_pages_realloc(void *pages, size_t count) {
  return pages_resize(pages, count, BMM_RESIZE_REALLOC, "bmm_pages_realloc");
}

BMM_API void *bmm_pages_reget(void *pages, size_t count) {
  return pages_resize(pages, count, BMM_RESIZE_REGET, "bmm_pages_reget");
}

BMM_API void bmm_pages_free(void *pages) {
  if (pages == NULL) return;
  bmm_page_t *page = pages_of(pages, "bmm_pages_free");
  if (page == NULL) return;
  /* The caller may have changed the rights of some pages: give them back
   * read+write, or their next user would fault. */
  size_t bytes = atomic_load_explicit(&page->kind, memory_order_relaxed) == BMM_PAGE_SPANS
                     ? bmm__span_usable(pages, page)
                     : page->block_size;
  bmm__os_protect(pages, bytes, BMM_PROT_READ | BMM_PROT_WRITE);
  bmm__free_generic(pages, page, "bmm_pages_free");
}

BMM_API int bmm_pages_protect(void *addr, size_t count, int rights) {
  size_t ps = bmm__os_page_size();
  if ((rights & ~(BMM_PROT_READ | BMM_PROT_WRITE | BMM_PROT_EXEC)) != 0 ||
      ((uintptr_t)addr & (ps - 1)) != 0 || count > SIZE_MAX / ps)
    return EINVAL;
  if (count == 0) return 0;
  bmm__arena_note_rights(addr, count * ps); /* before: a free may follow at once */
  return bmm__os_protect(addr, count * ps, rights);
}
