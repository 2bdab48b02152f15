/* unit_heap.c: white-box test of the heap layer (src/heap.c) through the
 * public bmm_ API, looking at the heap's internals after each step. It
 * checks:
 *   - bmm__heap_tls is &bmm__heap_empty in a thread (and in main) before its
 *     first allocation, and a heap of its own with its thread id after;
 *   - the direct table: for every size 0..1024 the entry (size + 15) / 16
 *     points to the first page of the queue of the size's class, and that
 *     is the page the allocation came from;
 *   - 48-byte blocks filling several pages: every exhausted page is
 *     orphaned (no heap, tid 0, delayed state USE, in no queue); a free by
 *     the owner into it moves it back to the back of its queue (state
 *     NORMAL);
 *   - a free from another thread into an orphan puts it on the abandoned
 *     list (state NEVER; the next such free goes to the page's thread_free
 *     list); bmm_collect(true), or the owner's malloc slow path once its
 *     queue runs dry, adopts it;
 *   - freeing everything retires all pages but the first of the queue, and
 *     bmm_collect(true) returns that one too (kind BMM_PAGE_FREE);
 *   - thread exit abandons pages that still hold blocks (tid 0, heap NULL,
 *     delayed state NEVER), frees into them still work, and a new thread
 *     allocating the same class adopts them (tid and heap become its own);
 *     once all their blocks are freed, bmm_collect(true) returns them;
 *   - a thread that fills pages and idles does not keep them: once another
 *     thread frees their blocks, its allocations reuse them; the owner and
 *     another thread freeing into the same orphans at once leave every page
 *     placed once and, all blocks freed, back in the arena; a thread that
 *     adopts an exactly full abandoned page orphans it and leaves it to
 *     the next free (another thread's, here);
 *   - pages of an exited thread whose blocks others freed go back to the
 *     arena, though no thread allocates their class again;
 *   - an alloc/free cycle carves at most 8 blocks or 8 KiB beyond the one
 *     in use (1 KiB blocks: 9 in all; 8 and 16 KiB blocks: 1);
 *   - aligned requests: alignments 32 B..64 KiB come from a heap page whose
 *     class is a multiple of the alignment; larger ones from aligned unit
 *     runs or huge regions, for size 0 too;
 *   - bmm_heap_check() after every step, in every thread.
 * The test links brainmm_internal (no malloc override): bmm_malloc is only
 * called directly.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <time.h>

#include "../src/internal.h" /* src/ is not on the test targets' include path */
#include "check.h"

#define HEAP_OK() CHECK(bmm_heap_check())

static uintptr_t df_state(bmm_page_t *page) {
  return atomic_load(&page->thread_free) & BMM_DF_MASK;
}

static uintptr_t df_list(bmm_page_t *page) {
  return (uintptr_t)bmm__tf_head(atomic_load(&page->thread_free));
}

static bool in_queue(const bmm_page_queue_t *q, const bmm_page_t *page) {
  for (const bmm_page_t *p = q->first; p != NULL; p = p->next)
    if (p == page) return true;
  return false;
}

static size_t count_class(const bmm_page_queue_t *q, size_t cls) {
  size_t n = 0;
  for (const bmm_page_t *p = q->first; p != NULL; p = p->next)
    n += p->class_idx == cls;
  return n;
}

static bool page_listed(bmm_page_t *const *pages, size_t n, const bmm_page_t *page) {
  for (size_t k = 0; k < n; k++)
    if (pages[k] == page) return true;
  return false;
}

#define MAX_LISTED 16
/* The distinct pages of blocks[0..n) into pages[MAX_LISTED]; their count. */
static size_t list_pages(void *const *blocks, size_t n, bmm_page_t **pages) {
  size_t npages = 0;
  for (size_t i = 0; i < n; i++) {
    bmm_page_t *page = bmm__page_of(blocks[i]);
    if (!page_listed(pages, npages, page) && CHECK(npages < MAX_LISTED)) pages[npages++] = page;
  }
  return npages;
}

/* Run fn(arg) in a new thread and wait for it. */
static void in_thread(void *(*fn)(void *), void *arg) {
  pthread_t t;
  if (CHECK(pthread_create(&t, NULL, fn, arg) == 0)) pthread_join(t, NULL);
}

/* ---- First allocation of a thread ------------------------------------ */

static void *first_alloc_thread(void *arg) {
  (void)arg;
  CHECK(bmm__heap_tls == &bmm__heap_empty);
  HEAP_OK(); /* the empty heap is trivially fine */
  void *p = bmm_malloc(1);
  CHECK(p != NULL);
  bmm_theap_t *heap = bmm__heap_tls;
  CHECK(heap != &bmm__heap_empty);
  CHECK_EQ_SZ(heap->tid, bmm__os_thread_id());
  bmm_page_t *page = bmm__page_of(p);
  CHECK(page != NULL && atomic_load(&page->heap) == heap);
  CHECK(page != NULL && atomic_load(&page->tid) == bmm__os_thread_id());
  HEAP_OK();
  bmm_free(p);
  HEAP_OK();
  return NULL;
}

/* ---- Direct table ---------------------------------------------------- */

static void check_direct(void) {
  static void *blocks[BMM_DIRECT_COUNT];
  for (size_t i = 0; i < BMM_DIRECT_COUNT; i++) {
    blocks[i] = bmm_malloc(i * BMM_ALIGN);
    CHECK(blocks[i] != NULL);
  }
  HEAP_OK();
  bmm_theap_t *heap = bmm__heap_tls;
  size_t bad_entry = 0, bad_source = 0, bad_size = 0;
  for (size_t i = 0; i < BMM_DIRECT_COUNT; i++) {
    size_t cls = bmm__class_of(i * BMM_ALIGN);
    bmm_page_t *first = heap->queues[cls].first;
    if (first == NULL || heap->direct[i] != first) bad_entry++;
    if (bmm__page_of(blocks[i]) != first) bad_source++;
  }
  for (size_t size = 0; size <= BMM_SMALL_MAX; size++) {
    bmm_page_t *page = heap->direct[(size + BMM_ALIGN - 1) / BMM_ALIGN];
    if (page->block_size < size || page->block_size != bmm__class_size(bmm__class_of(size)))
      bad_size++;
  }
  CHECK_EQ_SZ(bad_entry, 0);
  CHECK_EQ_SZ(bad_source, 0);
  CHECK_EQ_SZ(bad_size, 0);
  for (size_t i = 0; i < BMM_DIRECT_COUNT; i++)
    bmm_free(blocks[i]);
  HEAP_OK();
  /* Each class keeps its (now empty) first page: the entries still point
   * there, so the next allocation is a fast one. */
  bad_entry = 0;
  for (size_t i = 0; i < BMM_DIRECT_COUNT; i++)
    if (heap->direct[i] == &bmm__page_empty) bad_entry++;
  CHECK_EQ_SZ(bad_entry, 0);
}

/* ---- Full pages and delayed frees ------------------------------------ */

#define MAX48 (6 * (BMM_UNIT_SIZE / 48))
static void *b48[MAX48];
static bool b48_freed[MAX48];
static size_t n48;

/* Index in b48 of a live block of `page`, or SIZE_MAX. */
static size_t block_of(const bmm_page_t *page) {
  for (size_t i = 0; i < n48; i++)
    if (!b48_freed[i] && bmm__page_of(b48[i]) == page) return i;
  return SIZE_MAX;
}

static void *remote_free_thread(void *arg) {
  bmm_free(arg);
  return NULL;
}

/* The n-th orphaned full page of class cls among the pages of b48's live
 * blocks: in no queue of `heap`, owned by no heap, that heap recorded. */
static bmm_page_t *orphan_page(bmm_theap_t *heap, size_t nth) {
  bmm_page_t *pages[MAX_LISTED];
  size_t npages = list_pages(b48, n48, pages);
  for (size_t k = 0; k < npages; k++) {
    bmm_page_t *p = pages[k];
    if (atomic_load(&p->heap) == NULL && df_state(p) == BMM_DF_USE && p->orphan_of == heap &&
        nth-- == 0)
      return p;
  }
  return NULL;
}

static void check_full_and_orphans(void) {
  bmm_theap_t *heap = bmm__heap_tls;
  size_t cls = bmm__class_of(48);
  size_t per_page = BMM_UNIT_SIZE / 48;
  n48 = 4 * per_page + 10;
  for (size_t i = 0; i < n48; i++) {
    b48[i] = bmm_malloc(48);
    if (!CHECK(b48[i] != NULL)) return;
  }
  HEAP_OK();
  /* Thread heaps keep no full queue: every exhausted page is an orphan
   * (no heap, no tid, state USE), in none of the heap's queues. */
  CHECK_EQ_SZ(count_class(&heap->full, cls), 0);
  size_t norphans = 0, bad_orphan = 0;
  for (bmm_page_t *p; (p = orphan_page(heap, norphans)) != NULL; norphans++) {
    if (p->in_full || p->free != NULL || p->used != p->reserved || p->capacity != p->reserved ||
        atomic_load(&p->tid) != 0 || in_queue(&heap->queues[p->class_idx], p))
      bad_orphan++;
  }
  CHECK(norphans >= 3);
  CHECK_EQ_SZ(bad_orphan, 0);
  bmm_page_t *current = heap->queues[cls].first;
  CHECK(current != NULL && !current->in_full && current->free != NULL);
  CHECK(heap->direct[3] == current);

  /* The owner frees into an orphan: the page comes back to the back of its
   * queue (malloc stays on the current page), its own again. */
  bmm_page_t *p1 = orphan_page(heap, 0);
  size_t i1 = block_of(p1);
  if (CHECK(p1 != NULL && i1 != SIZE_MAX)) {
    bmm_free(b48[i1]);
    b48_freed[i1] = true;
    CHECK(atomic_load(&p1->heap) == heap);
    CHECK_EQ_SZ(atomic_load(&p1->tid), bmm__os_thread_id());
    CHECK(heap->queues[cls].last == p1 && in_queue(&heap->queues[cls], p1));
    CHECK(heap->queues[cls].first == current);
    CHECK_EQ_SZ(df_state(p1), BMM_DF_NORMAL);
    CHECK_EQ_SZ(p1->used, p1->reserved - 1);
    CHECK(heap->direct[3] == current);
    HEAP_OK();
  }

  /* Another thread frees into an orphan: the page goes to the abandoned
   * list (state USE -> FREEING -> NEVER, no heap), its block on the page's
   * own list; a second remote free goes to its thread_free list. The
   * owner's bmm_collect(true) adopts it back. */
  bmm_page_t *p2 = orphan_page(heap, 0);
  size_t i2 = block_of(p2);
  if (CHECK(p2 != NULL && i2 != SIZE_MAX)) {
    in_thread(remote_free_thread, b48[i2]);
    b48_freed[i2] = true;
    CHECK(atomic_load(&heap->delayed_free) == NULL);
    CHECK_EQ_SZ(df_state(p2), BMM_DF_NEVER);
    CHECK(atomic_load(&p2->heap) == NULL && atomic_load(&p2->tid) == 0);
    CHECK_EQ_SZ(p2->used, p2->reserved - 1);
    CHECK(!in_queue(&heap->queues[cls], p2));
    HEAP_OK();
    size_t j2 = block_of(p2);
    if (CHECK(j2 != SIZE_MAX)) {
      in_thread(remote_free_thread, b48[j2]);
      b48_freed[j2] = true;
      CHECK(df_list(p2) == (uintptr_t)b48[j2]);
      CHECK_EQ_SZ(df_state(p2), BMM_DF_NEVER);
    }
    HEAP_OK();
    bmm_collect(true); /* adopts abandoned pages */
    CHECK(atomic_load(&p2->heap) == heap);
    CHECK(in_queue(&heap->queues[cls], p2));
    CHECK_EQ_SZ(df_list(p2), 0);
    CHECK_EQ_SZ(df_state(p2), BMM_DF_NORMAL);
    CHECK_EQ_SZ(p2->used, p2->reserved - 2);
    HEAP_OK();
  }

  /* The same through the malloc slow path: a page abandoned by a remote
   * free is adopted once the class's queue runs dry. */
  bmm_page_t *p3 = orphan_page(heap, 0);
  size_t i3 = block_of(p3);
  if (CHECK(p3 != NULL && i3 != SIZE_MAX)) {
    in_thread(remote_free_thread, b48[i3]);
    b48_freed[i3] = true;
    CHECK_EQ_SZ(df_state(p3), BMM_DF_NEVER);
    static void *more[MAX48];
    size_t nmore = 0;
    bool from_p3 = false;
    while (!from_p3 && nmore < MAX48) {
      more[nmore] = bmm_malloc(48);
      if (!CHECK(more[nmore] != NULL)) break;
      from_p3 = bmm__page_of(more[nmore++]) == p3;
    }
    CHECK(from_p3);
    CHECK(atomic_load(&p3->heap) == heap);
    HEAP_OK();
    for (size_t k = 0; k < nmore; k++)
      bmm_free(more[k]);
    HEAP_OK();
  }

  /* Free everything: emptied pages go back to the arena, except the first
   * two pages of the class queue, which are kept (page_stays_empty). */
  bmm_page_t *pages[8];
  size_t npages = 0;
  for (size_t i = 0; i < n48; i++) {
    bmm_page_t *p = bmm__page_of(b48[i]);
    bool seen = false;
    for (size_t k = 0; k < npages; k++)
      seen |= pages[k] == p;
    if (!seen && npages < 8) pages[npages++] = p;
  }
  CHECK(npages >= 4);
  for (size_t i = 0; i < n48; i++) {
    if (!b48_freed[i]) bmm_free(b48[i]);
    b48_freed[i] = true;
  }
  HEAP_OK();
  CHECK_EQ_SZ(count_class(&heap->full, cls), 0);
  bmm_page_t *kept = heap->queues[cls].first;
  bmm_page_t *kept2 = kept != NULL ? kept->next : NULL;
  CHECK(kept != NULL && kept->used == 0);
  CHECK(kept2 == NULL || (kept2->next == NULL && kept2->used == 0));
  size_t still_small = 0;
  for (size_t k = 0; k < npages; k++)
    if (pages[k] != kept && pages[k] != kept2 && atomic_load(&pages[k]->kind) != BMM_PAGE_FREE)
      still_small++;
  CHECK_EQ_SZ(still_small, 0);

  /* bmm_collect(true) returns the kept pages as well. */
  bmm_collect(true);
  CHECK(heap->queues[cls].first == NULL);
  CHECK(heap->direct[3] == &bmm__page_empty);
  if (kept != NULL) CHECK_EQ_LONG(atomic_load(&kept->kind), BMM_PAGE_FREE);
  if (kept2 != NULL) CHECK_EQ_LONG(atomic_load(&kept2->kind), BMM_PAGE_FREE);
  HEAP_OK();
}

/* ---- Abandonment and adoption ---------------------------------------- */

#define ABANDON_SIZE 416 /* a class no other part of the test uses */
#define ABANDON_COUNT 400
static void *ab_blocks[ABANDON_COUNT];
static bool ab_freed[ABANDON_COUNT];
static bmm_page_t *ab_pages[16];
static size_t ab_npages;

static void *abandoning_thread(void *arg) {
  (void)arg;
  CHECK(bmm__heap_tls == &bmm__heap_empty);
  for (size_t i = 0; i < ABANDON_COUNT; i++) {
    ab_blocks[i] = bmm_malloc(ABANDON_SIZE);
    if (!CHECK(ab_blocks[i] != NULL)) return NULL;
    bmm_page_t *p = bmm__page_of(ab_blocks[i]);
    bool seen = false;
    for (size_t k = 0; k < ab_npages; k++)
      seen |= ab_pages[k] == p;
    if (!seen && CHECK(ab_npages < 16)) ab_pages[ab_npages++] = p;
  }
  /* Free some, so that every page has room but none is empty. */
  for (size_t i = 0; i < ABANDON_COUNT; i += 10) {
    bmm_free(ab_blocks[i]);
    ab_freed[i] = true;
  }
  HEAP_OK();
  return NULL; /* the exit hook abandons the pages */
}

static void *adopting_thread(void *arg) {
  uintptr_t *adopted_by = arg;
  CHECK(bmm__heap_tls == &bmm__heap_empty);
  void *p = bmm_malloc(ABANDON_SIZE);
  CHECK(p != NULL);
  bmm_theap_t *heap = bmm__heap_tls;
  uintptr_t me = bmm__os_thread_id();
  *adopted_by = me;
  bool from_adopted = false;
  size_t bad_owner = 0;
  for (size_t k = 0; k < ab_npages; k++) {
    bmm_page_t *page = ab_pages[k];
    from_adopted |= bmm__page_of(p) == page;
    /* tid carries in_full in bit 0 */
    if (atomic_load(&page->tid) != (me | page->in_full) || atomic_load(&page->heap) != heap)
      bad_owner++;
    if (df_list(page) != 0) bad_owner++; /* adoption collected the remote frees */
    if (df_state(page) != BMM_DF_NORMAL && df_state(page) != BMM_DF_USE) bad_owner++;
  }
  CHECK(from_adopted); /* an adopted page served the request, not a fresh one */
  CHECK_EQ_SZ(bad_owner, 0);
  HEAP_OK();
  bmm_free(p);
  HEAP_OK();
  return NULL; /* exit: the pages are abandoned again */
}

static void check_abandon_adopt(void) {
  size_t cls = bmm__class_of(ABANDON_SIZE);
  in_thread(abandoning_thread, NULL);
  CHECK(ab_npages >= 3);
  size_t bad = 0;
  for (size_t k = 0; k < ab_npages; k++) {
    bmm_page_t *page = ab_pages[k];
    if (atomic_load(&page->tid) != 0 || atomic_load(&page->heap) != NULL) bad++;
    if (atomic_load(&page->kind) != BMM_PAGE_SMALL || page->class_idx != cls) bad++;
    if (df_state(page) != BMM_DF_NEVER || page->in_full || page->used == 0) bad++;
  }
  CHECK_EQ_SZ(bad, 0);
  HEAP_OK();

  /* A free into an abandoned page goes to its thread_free list. */
  bmm_page_t *target = bmm__page_of(ab_blocks[1]);
  bmm_free(ab_blocks[1]);
  ab_freed[1] = true;
  CHECK(df_list(target) == (uintptr_t)ab_blocks[1]);
  CHECK_EQ_SZ(df_state(target), BMM_DF_NEVER);
  HEAP_OK();

  uintptr_t adopted_by = 0;
  in_thread(adopting_thread, &adopted_by);
  CHECK(adopted_by != 0 && adopted_by != bmm__os_thread_id());
  /* That thread exited too: abandoned again. */
  bad = 0;
  for (size_t k = 0; k < ab_npages; k++) {
    bmm_page_t *page = ab_pages[k];
    if (atomic_load(&page->tid) != 0 || atomic_load(&page->heap) != NULL) bad++;
    if (atomic_load(&page->kind) != BMM_PAGE_SMALL || df_state(page) != BMM_DF_NEVER) bad++;
  }
  CHECK_EQ_SZ(bad, 0);

  /* Free every block remotely, then let this thread collect: it adopts the
   * empty pages and returns them to the arena. */
  for (size_t i = 0; i < ABANDON_COUNT; i++)
    if (!ab_freed[i]) bmm_free(ab_blocks[i]), ab_freed[i] = true;
  HEAP_OK();
  bmm_collect(true);
  HEAP_OK();
  size_t not_free = 0;
  for (size_t k = 0; k < ab_npages; k++)
    if (atomic_load(&ab_pages[k]->kind) != BMM_PAGE_FREE) not_free++;
  CHECK_EQ_SZ(not_free, 0);
  CHECK(bmm__heap_tls->queues[cls].first == NULL);
}

/* ---- Orphans: an idle owner, and racing frees ------------------------- */

#define ORPHAN_SIZE 96 /* a class no other part of the test uses */
#define ORPHAN_COUNT (3 * (BMM_UNIT_SIZE / ORPHAN_SIZE) + 7)
static void *or_blocks[ORPHAN_COUNT];
static pthread_barrier_t or_filled, or_done;
static bmm_theap_t *idle_heap;

/* Fills pages, then stays alive without allocating again until told. */
static void *idle_owner_thread(void *arg) {
  (void)arg;
  for (size_t i = 0; i < ORPHAN_COUNT; i++)
    CHECK((or_blocks[i] = bmm_malloc(ORPHAN_SIZE)) != NULL);
  idle_heap = bmm__heap_tls;
  pthread_barrier_wait(&or_filled);
  pthread_barrier_wait(&or_done);
  return NULL;
}

/* A thread that fills pages and then idles does not keep them: once other
 * threads free their blocks, a thread allocating the class gets them (the
 * idle heap's full pages are orphans, abandoned by the first remote free),
 * instead of fresh pages. */
static void check_idle_owner(void) {
  pthread_t t;
  pthread_barrier_init(&or_filled, NULL, 2);
  pthread_barrier_init(&or_done, NULL, 2);
  if (!CHECK(pthread_create(&t, NULL, idle_owner_thread, NULL) == 0)) return;
  pthread_barrier_wait(&or_filled);
  static bmm_page_t *pages[MAX_LISTED];
  size_t npages = list_pages(or_blocks, ORPHAN_COUNT, pages);
  CHECK(npages >= 4);
  for (size_t i = 0; i < ORPHAN_COUNT; i++)
    bmm_free(or_blocks[i]);
  HEAP_OK();
  /* The idle heap holds only its current page now (never full): the full
   * ones wait on the abandoned list, no heap's, their blocks all free. */
  size_t idle_holds = 0, abandoned_free = 0;
  for (size_t k = 0; k < npages; k++) {
    if (atomic_load(&pages[k]->heap) == idle_heap) idle_holds++;
    else if (atomic_load(&pages[k]->heap) == NULL && df_state(pages[k]) == BMM_DF_NEVER &&
             pages[k]->used - bmm__tf_count(atomic_load(&pages[k]->thread_free)) == 0)
      abandoned_free++;
  }
  CHECK_EQ_SZ(idle_holds, 1);
  CHECK_EQ_SZ(abandoned_free, npages - 1);
  size_t from_idle = 0;
  for (size_t i = 0; i < ORPHAN_COUNT; i++) {
    or_blocks[i] = bmm_malloc(ORPHAN_SIZE);
    if (CHECK(or_blocks[i] != NULL))
      from_idle += page_listed(pages, npages, bmm__page_of(or_blocks[i]));
  }
  /* All but the idle heap's current page (never full, so never given up):
   * at least the blocks of the three full pages came back. */
  CHECK(from_idle >= 3 * (BMM_UNIT_SIZE / ORPHAN_SIZE));
  HEAP_OK();
  for (size_t i = 0; i < ORPHAN_COUNT; i++)
    bmm_free(or_blocks[i]);
  pthread_barrier_wait(&or_done);
  pthread_join(t, NULL);
  pthread_barrier_destroy(&or_filled);
  pthread_barrier_destroy(&or_done);
  bmm_collect(true);
  HEAP_OK();
}

/* An abandoned page that is exactly full: the thread adopting it orphans
 * it at once, and a free from a third thread may place it meanwhile. The
 * adopter must leave it alone from then on (it did not: it went on to
 * read the page, and could queue it in its heap while another heap had
 * it; the TSan build reports that read). */
#define FULL_ADOPT_SIZE 112 /* a class no other part of the test uses */
static void *fa_blocks[BMM_UNIT_SIZE / FULL_ADOPT_SIZE];
static size_t fa_count;
static bmm_page_t *fa_page;
static pthread_barrier_t fa_placed;
/* Relaxed on purpose: no happens-before between the adopter's malloc and
 * the other thread's free but what the allocator itself makes, so that the
 * TSan build sees any access of the adopter to the page after it let go. */
static _Atomic int fa_adopted;

static void *fill_one_page_thread(void *arg) {
  (void)arg;
  fa_blocks[0] = bmm_malloc(FULL_ADOPT_SIZE);
  if (!CHECK(fa_blocks[0] != NULL)) return NULL;
  fa_page = bmm__page_of(fa_blocks[0]);
  for (fa_count = 1; fa_count < fa_page->reserved; fa_count++) {
    fa_blocks[fa_count] = bmm_malloc(FULL_ADOPT_SIZE);
    if (!CHECK(fa_blocks[fa_count] != NULL && bmm__page_of(fa_blocks[fa_count]) == fa_page))
      return NULL;
  }
  CHECK(fa_page->free == NULL && fa_page->used == fa_page->reserved);
  return NULL; /* exit: the page is abandoned with every block out */
}

static void *adopt_full_thread(void *arg) {
  (void)arg;
  void *p = bmm_malloc(FULL_ADOPT_SIZE); /* adopts the full page, orphans it */
  CHECK(p != NULL && bmm__page_of(p) != fa_page);
  atomic_store_explicit(&fa_adopted, 1, memory_order_relaxed);
  pthread_barrier_wait(&fa_placed); /* the other thread's free placed the page */
  HEAP_OK();
  bmm_free(p);
  HEAP_OK();
  return NULL;
}

static void *free_into_full_thread(void *arg) {
  (void)arg;
  while (atomic_load_explicit(&fa_adopted, memory_order_relaxed) == 0)
    sched_yield();
  bmm_free(fa_blocks[0]); /* first free into the orphan: places it */
  pthread_barrier_wait(&fa_placed);
  return NULL;
}

static void check_adopt_full(void) {
  in_thread(fill_one_page_thread, NULL);
  if (!CHECK(fa_page != NULL && fa_count == fa_page->reserved)) return;
  pthread_barrier_init(&fa_placed, NULL, 2);
  pthread_t a, r;
  if (!CHECK(pthread_create(&r, NULL, free_into_full_thread, NULL) == 0)) return;
  if (!CHECK(pthread_create(&a, NULL, adopt_full_thread, NULL) == 0)) return;
  pthread_join(a, NULL);
  pthread_join(r, NULL);
  pthread_barrier_destroy(&fa_placed);
  /* The freeing thread has no heap: the page went back to the abandoned
   * list, one block free. */
  CHECK(atomic_load(&fa_page->heap) == NULL);
  CHECK_EQ_SZ(df_state(fa_page), BMM_DF_NEVER);
  CHECK_EQ_SZ(fa_page->used, fa_page->reserved - 1);
  for (size_t i = 1; i < fa_count; i++)
    bmm_free(fa_blocks[i]);
  bmm_collect(true); /* adopts it, empty: back to the arena */
  CHECK_EQ_LONG(atomic_load(&fa_page->kind), BMM_PAGE_FREE);
  HEAP_OK();
}

static pthread_barrier_t race_start;

/* Frees the odd-numbered blocks while the owner frees the even ones. */
static void *race_free_thread(void *arg) {
  size_t n = (size_t)(uintptr_t)arg;
  pthread_barrier_wait(&race_start);
  for (size_t i = 1; i < n; i += 2)
    bmm_free(or_blocks[i]);
  return NULL;
}

/* The owner and another thread free into the same orphans at once: each
 * orphan is placed once, by whichever free comes first (back home, or on
 * the abandoned list), the other free goes to its lists, and in the end
 * every page is empty and goes back to the arena. */
static void check_orphan_race(void) {
  pthread_barrier_init(&race_start, NULL, 2);
  size_t bad_heap = 0, not_free = 0;
  for (int round = 0; round < 40; round++) {
    size_t n = ORPHAN_COUNT;
    for (size_t i = 0; i < n; i++)
      if (!CHECK((or_blocks[i] = bmm_malloc(ORPHAN_SIZE)) != NULL)) return;
    static bmm_page_t *pages[MAX_LISTED];
    size_t npages = list_pages(or_blocks, n, pages);
    pthread_t t;
    if (!CHECK(pthread_create(&t, NULL, race_free_thread, (void *)(uintptr_t)n) == 0)) return;
    pthread_barrier_wait(&race_start);
    for (size_t i = 0; i < n; i += 2)
      bmm_free(or_blocks[i]);
    pthread_join(t, NULL);
    if (!bmm_heap_check()) bad_heap++;
    bmm_collect(true);
    if (!bmm_heap_check()) bad_heap++;
    for (size_t k = 0; k < npages; k++)
      if (atomic_load(&pages[k]->kind) != BMM_PAGE_FREE) not_free++;
  }
  CHECK_EQ_SZ(bad_heap, 0);
  CHECK_EQ_SZ(not_free, 0);
  pthread_barrier_destroy(&race_start);
}

/* ---- Abandoned pages nobody adopts ------------------------------------ */

/* A thread exits holding pages; other threads free every block in them and
 * nobody allocates that class again. The sweep in the malloc slow path
 * (at most once per purge_delay, 0 here) returns those pages to the arena
 * all the same, instead of leaving them on the abandoned list for good. */
#define SWEEP_SIZE 176 /* a class no other part of the test uses */
#define SWEEP_COUNT (3 * (BMM_UNIT_SIZE / SWEEP_SIZE) + 5)
static void *sw_blocks[SWEEP_COUNT];

static void *sweep_filler_thread(void *arg) {
  (void)arg;
  for (size_t i = 0; i < SWEEP_COUNT; i++)
    CHECK((sw_blocks[i] = bmm_malloc(SWEEP_SIZE)) != NULL);
  return NULL; /* exit: its pages are abandoned, every block live */
}

static void check_sweep(void) {
  size_t cls = bmm__class_of(SWEEP_SIZE);
  in_thread(sweep_filler_thread, NULL);
  static bmm_page_t *pages[MAX_LISTED];
  size_t npages = list_pages(sw_blocks, SWEEP_COUNT, pages);
  CHECK(npages >= 4);
  size_t no_heap = 0; /* the full ones orphaned, the last one abandoned */
  for (size_t k = 0; k < npages; k++)
    no_heap += atomic_load(&pages[k]->heap) == NULL;
  CHECK_EQ_SZ(no_heap, npages);
  CHECK(bmm_option_set("purge_delay", 0) == 0);
  for (size_t i = 0; i < SWEEP_COUNT; i++)
    bmm_free(sw_blocks[i]); /* each page abandoned, the blocks on its thread_free list */
  /* A malloc slow path of another class (a medium one this thread has no
   * page of) sweeps, 1 ms at least after the last sweep (by a clock that
   * may tick every 10 ms). */
  struct timespec wait = {0, 25 * 1000000};
  nanosleep(&wait, NULL);
  void *p = bmm_malloc(3000);
  CHECK(p != NULL);
  size_t kept = 0;
  for (size_t k = 0; k < npages; k++) /* freed (or reused since, as another class) */
    kept += atomic_load(&pages[k]->kind) != BMM_PAGE_FREE && pages[k]->class_idx == cls;
  CHECK_EQ_SZ(kept, 0);
  bmm_free(p);
  CHECK(bmm_option_set("purge_delay", 10) == 0);
  HEAP_OK();
}

/* A thread short of a class adopts BMM_ADOPT_PAGES abandoned pages with
 * free blocks, not all (the first thread to come took every one, and the
 * next ones claimed fresh pages); bmm_collect(true) takes all of them. */
#define ADOPT_SIZE 1792 /* a class no other part of the test uses: 36 a page */
#define ADOPT_PAGES 8
#define ADOPT_COUNT (ADOPT_PAGES * (BMM_UNIT_SIZE / ADOPT_SIZE))
static void *ad_blocks[ADOPT_COUNT];

static void *adopt_filler_thread(void *arg) {
  (void)arg;
  for (size_t i = 0; i < ADOPT_COUNT; i++)
    CHECK((ad_blocks[i] = bmm_malloc(ADOPT_SIZE)) != NULL);
  /* A free block in every page (the first of each): none full, none empty. */
  for (size_t i = 0; i < ADOPT_COUNT; i += BMM_UNIT_SIZE / ADOPT_SIZE) bmm_free(ad_blocks[i]);
  return NULL; /* exit: its pages are abandoned */
}

/* Pages of `pages` owned by heap `heap` (NULL: by none). */
static size_t pages_of_heap(bmm_page_t *const *pages, size_t n, const bmm_theap_t *heap) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++) k += atomic_load(&pages[i]->heap) == heap;
  return k;
}

static void *adopt_check_thread(void *arg) {
  const size_t *npages = arg;
  static bmm_page_t *pages[MAX_LISTED];
  CHECK_EQ_SZ(list_pages(ad_blocks, ADOPT_COUNT, pages), *npages);
  void *p = bmm_malloc(ADOPT_SIZE);
  CHECK(p != NULL);
  CHECK_EQ_SZ(pages_of_heap(pages, *npages, bmm__heap_tls), BMM_ADOPT_PAGES);
  CHECK_EQ_SZ(pages_of_heap(pages, *npages, NULL), *npages - BMM_ADOPT_PAGES);
  HEAP_OK();
  bmm_free(p);
  return NULL;
}

static void check_adopt_some(void) {
  size_t cls = bmm__class_of(ADOPT_SIZE);
  in_thread(adopt_filler_thread, NULL);
  static bmm_page_t *pages[MAX_LISTED];
  size_t npages = list_pages(ad_blocks, ADOPT_COUNT, pages);
  CHECK_EQ_SZ(npages, ADOPT_PAGES);
  CHECK_EQ_SZ(pages_of_heap(pages, npages, NULL), npages);
  in_thread(adopt_check_thread, &npages);
  /* That thread exited: all abandoned again. bmm_collect(true) adopts
   * them all; once this thread has freed every block, it returns them to
   * the arena. */
  CHECK_EQ_SZ(pages_of_heap(pages, npages, NULL), npages);
  bmm_collect(true);
  CHECK_EQ_SZ(pages_of_heap(pages, npages, bmm__heap_tls), npages);
  for (size_t i = 0; i < ADOPT_COUNT; i++)
    if (i % (BMM_UNIT_SIZE / ADOPT_SIZE) != 0) bmm_free(ad_blocks[i]);
  bmm_collect(true);
  size_t kept = 0;
  for (size_t k = 0; k < npages; k++) /* freed (or reused since, as another class) */
    kept += atomic_load(&pages[k]->kind) != BMM_PAGE_FREE && pages[k]->class_idx == cls;
  CHECK_EQ_SZ(kept, 0);
  HEAP_OK();
}

/* ---- Free blocks kept in circulation --------------------------------- */

/* A page carves more blocks while few of its carved ones are free, but
 * keeps at most 8 blocks or 8 KiB of them: an alloc/free cycle of one
 * 1 KiB block circulates through 8 or 9 blocks (fewer slow-path calls), of
 * one 8 KiB block through 1 (the block just freed comes back, in cache). */
static void check_slack(void) {
  static const size_t sizes[] = {1024, 8192, 16384};
  static const uint32_t most[] = {9, 1, 1};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    void *first = bmm_malloc(sizes[k]);
    if (!CHECK(first != NULL)) return;
    bmm_page_t *page = bmm__page_of(first);
    bmm_free(first);
    size_t other_page = 0;
    for (int i = 0; i < 1000; i++) {
      void *p = bmm_malloc(sizes[k]);
      if (!CHECK(p != NULL)) return;
      if (bmm__page_of(p) != page) other_page++;
      bmm_free(p);
    }
    CHECK_EQ_SZ(other_page, 0);
    if (!CHECK(page->capacity <= most[k]))
      fprintf(stderr, "  %zu-byte blocks: %u carved\n", sizes[k], page->capacity);
  }
  HEAP_OK();
}

/* ---- Aligned requests ------------------------------------------------ */

/* src/aligned.c serves alignments up to 64 KiB from a size class that is a
 * multiple of the alignment (blocks sit at multiples of their size from a
 * unit-aligned page start), larger ones from aligned unit runs. */
static void check_aligned(void) {
  static const size_t sizes[] = {0, 1, 16, 100, 1000, 5000, 40000, 65536};
  size_t bad_align = 0, bad_class = 0, bad_kind = 0, failed = 0;
  for (size_t a = 32; a <= 65536; a *= 2) {
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
      void *p = bmm_aligned_alloc(a, sizes[k]);
      if (p == NULL) {
        failed++;
        continue;
      }
      bmm_page_t *page = bmm__page_of(p);
      uint8_t kind = atomic_load(&page->kind);
      if ((uintptr_t)p % a != 0) bad_align++;
      if (page->block_size < sizes[k]) bad_class++;
      if (kind == BMM_PAGE_SMALL || kind == BMM_PAGE_MEDIUM) {
        if (page->block_size % a != 0 || atomic_load(&page->heap) != bmm__heap_tls) bad_class++;
      } else if (kind != BMM_PAGE_LARGE || sizes[k] + a <= BMM_MEDIUM_MAX) {
        bad_kind++; /* only requests that round up past 64 KiB may be large */
      }
      bmm_free(p);
    }
  }
  CHECK_EQ_SZ(failed, 0);
  CHECK_EQ_SZ(bad_align, 0);
  CHECK_EQ_SZ(bad_class, 0);
  CHECK_EQ_SZ(bad_kind, 0);
  HEAP_OK();

  /* Alignments above a unit: aligned unit runs (up to 16 MiB) or huge
   * regions, for size 0 too (one unit, as glibc gives a unique block). */
  size_t size0_failed = 0;
  for (size_t a = 128 * 1024; a <= ((size_t)32 << 20); a *= 2) {
    for (size_t size = 0; size <= 1; size++) {
      errno = 0;
      void *p = bmm_aligned_alloc(a, size);
      if (p == NULL) {
        if (size == 0)
          size0_failed++;
        else
          failed++;
        continue;
      }
      if ((uintptr_t)p % a != 0) bad_align++;
      bmm_page_t *page = bmm__page_of(p);
      uint8_t kind = page ? atomic_load(&page->kind) : BMM_PAGE_FREE;
      if (kind != BMM_PAGE_LARGE && kind != BMM_PAGE_HUGE) bad_kind++;
      bmm_free(p);
    }
  }
  CHECK_EQ_SZ(failed, 0);
  CHECK_EQ_SZ(bad_align, 0);
  CHECK_EQ_SZ(bad_kind, 0);
  CHECK_EQ_SZ(size0_failed, 0);
  HEAP_OK();
}

/* ---- A class whose blocks in use hover around a page's worth ---------- */

#define EDGE_SMALL 1536   /* classes no other part of the test uses: */
#define EDGE_MEDIUM 40960 /* 42 blocks to a one-unit page, 12 to a medium one */
#define EDGE_MAX 160
static void *edge_blocks[EDGE_MAX];

/* Page A full, page B holding a few blocks, A orphaned (full). A gets a
 * block back and goes behind B; B fills, and the next block comes from A
 * (B orphaned, A full again). Then B's blocks are all freed: B comes back
 * behind A and empties there, the class's second page. A one-unit page
 * stays (page_stays_empty): the next block comes from B, rather than from
 * a page claimed and carved anew, as while an emptied second page went
 * back to the arena (`micro small`: a page every 3,000 operations). A
 * medium page goes back: an idle thread would keep 512 KiB a class. */
static void check_page_edge(size_t size) {
  bmm_theap_t *heap = bmm__heap_tls;
  size_t n = 0;
  bmm_page_t *a = NULL, *b = NULL;
  while (n < EDGE_MAX) { /* fill A, and the first few blocks of B */
    void *p = bmm_malloc(size);
    if (!CHECK(p != NULL)) return;
    edge_blocks[n++] = p;
    bmm_page_t *page = bmm__page_of(p);
    if (a == NULL) a = page;
    else if (page != a && b == NULL) b = page;
    if (b != NULL && page == b && b->used == 4) break;
  }
  if (!CHECK(a != NULL && b != NULL && a != b)) return;
  bool kept = b->units == 1;
  size_t first_b = n - 4; /* edge_blocks[first_b..n) are B's */
  bmm_free(edge_blocks[0]); /* A has room again, behind B */
  void *from_a = NULL;
  while (from_a == NULL && n < EDGE_MAX) { /* B's blocks until B is full, then A's */
    void *p = bmm_malloc(size);
    if (!CHECK(p != NULL)) return;
    if (bmm__page_of(p) == b) edge_blocks[n++] = p;
    else from_a = p;
  }
  if (!CHECK(from_a != NULL && bmm__page_of(from_a) == a)) return;
  edge_blocks[0] = from_a;
  CHECK_EQ_SZ(b->used, b->reserved);
  for (size_t i = first_b; i < n; i++) bmm_free(edge_blocks[i]); /* B empties */
  n = first_b;
  CHECK(heap->queues[a->class_idx].first == a);
  if (kept) {
    CHECK_EQ_LONG(atomic_load(&b->kind), BMM_PAGE_SMALL);
    CHECK(atomic_load(&b->heap) == heap && b->used == 0);
  } else {
    CHECK_EQ_LONG(atomic_load(&b->kind), BMM_PAGE_FREE);
    CHECK(a->next == NULL);
  }
  HEAP_OK();
  void *q = bmm_malloc(size); /* A is full: from B, or a new page */
  CHECK(q != NULL && bmm__page_of(q) != a);
  if (kept) CHECK(bmm__page_of(q) == b);
  bmm_free(q);
  for (size_t i = 0; i < n; i++) bmm_free(edge_blocks[i]);
  HEAP_OK();
}

int main(void) {
  CHECK(bmm__heap_tls == &bmm__heap_empty); /* nothing allocated yet */
  in_thread(first_alloc_thread, NULL);
  CHECK(bmm__heap_tls == &bmm__heap_empty); /* another thread's heap is not ours */
  void *p = bmm_malloc(100);
  CHECK(p != NULL && bmm__heap_tls != &bmm__heap_empty);
  CHECK_EQ_SZ(bmm__heap_tls->tid, bmm__os_thread_id());
  bmm_free(p);
  HEAP_OK();

  check_direct();
  HEAP_OK();
  check_full_and_orphans();
  HEAP_OK();
  check_abandon_adopt();
  HEAP_OK();
  check_idle_owner();
  HEAP_OK();
  check_orphan_race();
  HEAP_OK();
  check_adopt_full();
  HEAP_OK();
  check_sweep();
  HEAP_OK();
  check_adopt_some();
  HEAP_OK();
  check_slack();
  HEAP_OK();
  check_page_edge(EDGE_SMALL);
  HEAP_OK();
  check_page_edge(EDGE_MEDIUM);
  HEAP_OK();
  check_aligned();
  return check_done();
}
