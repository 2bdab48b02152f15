/* unit_page.c: white-box test of the page layer (src/page.c), driving pages
 * directly with a fake heap (no bmm_malloc involved). It checks:
 *   - bmm__page_init for small classes (one 64 KiB unit) and medium classes
 *     (BMM_MEDIUM_PAGE_UNITS units): kind, class, block size, reserved ==
 *     units * 64 KiB / block_size, empty lists, owner heap and tid, delayed
 *     state NORMAL;
 *   - bmm__page_extend until capacity == reserved: each call carves about
 *     4 KiB worth of blocks (at least one), in address order, right after
 *     the previous ones, 16-aligned (and naturally aligned for powers of
 *     two), never past the page's end;
 *   - popping blocks as the malloc fast path does (page->free, used++) and
 *     pushing them back on local_free as the owner's free does (used--);
 *   - blocks pushed on thread_free by other threads as free.c does in the
 *     NORMAL state: bmm__page_take_thread_free returns exactly how many were
 *     pushed, moves them to local_free, lowers used and keeps the delayed
 *     bits; also with several threads pushing while the owner takes;
 *   - bmm__page_collect: refills an empty free list from local_free and the
 *     thread-free list, leaves a non-empty free list alone;
 *   - bmm__page_is_valid before and after every step, and false for a used
 *     count, a cycle, a block outside the carved part, a misaligned block, a
 *     wrong block size or a page that is not a small/medium page;
 *   - bmm__page_set_delayed: NORMAL->USE only from NORMAL, USE->NORMAL only
 *     from USE, anything->NEVER with mask 0xF, NEVER->NORMAL (adoption);
 *     the list pointer in thread_free survives every transition; a thread
 *     in FREEING is waited out.
 * The "double free detected" path of bmm__page_take_thread_free aborts and
 * is never triggered here: every block is pushed at most once.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "../src/internal.h" /* src/ is not on the test targets' include path */
#include "../src/track.h"
#include "check.h"

static bmm_theap_t fake_heap; /* zeroed, only tid is set: page.c reads no more */
static uint32_t arena_hint;

static size_t list_len(const bmm_block_t *b, size_t limit) {
  size_t n = 0;
  for (; b != NULL && n <= limit; b = b->next)
    n++;
  return n;
}

static uintptr_t df_state(bmm_page_t *page) {
  return atomic_load(&page->thread_free) & BMM_DF_MASK;
}

/* thread_free without the state: the list head and its count. */
static uintptr_t df_list(bmm_page_t *page) {
  return atomic_load(&page->thread_free) & ~(uintptr_t)BMM_DF_MASK;
}

/* The fast path's pop (fastpath.h), without the debug fill. */
static void *pop(bmm_page_t *page) {
  bmm_block_t *b = page->free;
  if (b == NULL) return NULL;
  page->free = b->next;
  page->used++;
  bmm__track_alloc(b, page->block_size); /* ASan builds: carved blocks are poisoned */
  return b;
}

/* The owner's free (bmm__free_local) without the heap bookkeeping. */
static void push_local(bmm_page_t *page, void *p) {
  bmm_block_t *b = p;
  b->next = page->local_free;
  page->local_free = b;
  page->used--;
}

/* A remote free as free.c does it while the page is not in state USE:
 * push on thread_free keeping the delayed bits, release order. */
static void push_remote(bmm_page_t *page, void *p) {
  bmm_block_t *block = p;
  uintptr_t tf = atomic_load_explicit(&page->thread_free, memory_order_relaxed);
  do {
    block->next = bmm__tf_head(tf);
  } while (!atomic_compare_exchange_weak_explicit(&page->thread_free, &tf,
                                                  (uintptr_t)block |
                                                      ((tf & ~BMM_TF_HEAD_MASK) + BMM_TF_ONE),
                                                  memory_order_release, memory_order_relaxed));
}

static size_t units_for(size_t cls) {
  return bmm__class_size(cls) <= BMM_SMALL_PAGE_MAX ? 1 : BMM_MEDIUM_PAGE_UNITS;
}

static bmm_page_t *new_page(size_t cls) {
  bmm_page_t *page = bmm__arena_page_alloc(&arena_hint, units_for(cls), 1, true);
  if (page != NULL) bmm__page_init(page, &fake_heap, cls);
  return page;
}

/* ---- Remote pushers -------------------------------------------------- */

typedef struct pusher_s {
  bmm_page_t *page;
  void **blocks;
  size_t count;
} pusher_t;

static void *pusher_thread(void *arg) {
  pusher_t *job = arg;
  for (size_t i = 0; i < job->count; i++)
    push_remote(job->page, job->blocks[i]);
  return NULL;
}

/* ---- One class, end to end ------------------------------------------- */

static void *blocks[BMM_UNIT_SIZE / BMM_ALIGN];
static void *remote[BMM_UNIT_SIZE / BMM_ALIGN];

static void check_class(size_t cls) {
  size_t bs = bmm__class_size(cls), units = units_for(cls);
  size_t before = check_failed_count();
  bmm_page_t *page = new_page(cls);
  if (!CHECK(page != NULL)) return;

  /* Init. */
  CHECK_EQ_LONG(atomic_load(&page->kind), units == 1 ? BMM_PAGE_SMALL : BMM_PAGE_MEDIUM);
  CHECK_EQ_SZ(page->units, units);
  CHECK_EQ_SZ(page->class_idx, cls);
  CHECK_EQ_SZ(page->block_size, bs);
  CHECK_EQ_SZ(page->reserved, units * BMM_UNIT_SIZE / bs);
  CHECK(page->reserved >= 1);
  CHECK_EQ_SZ(page->capacity, 0);
  CHECK_EQ_SZ(page->used, 0);
  CHECK(page->free == NULL && page->local_free == NULL && page->in_full == 0);
  CHECK_EQ_SZ(atomic_load(&page->thread_free), BMM_DF_NORMAL);
  CHECK(atomic_load(&page->heap) == &fake_heap);
  CHECK_EQ_SZ(atomic_load(&page->tid), fake_heap.tid);
  CHECK(bmm__page_is_valid(page));
  CHECK(bmm__page_of(bmm__page_start(page)) == page);
  CHECK(bmm__page_of(bmm__page_start(page) + units * BMM_UNIT_SIZE - 1) == page);

  /* Extend until every block is carved, popping each batch as malloc does. */
  size_t step = 4096 / bs ? 4096 / bs : 1, n = 0, bad_order = 0, bad_align = 0, bad_step = 0;
  size_t bad_valid = 0;
  while (page->capacity < page->reserved) {
    size_t cap = page->capacity, want = page->reserved - cap < step ? page->reserved - cap : step;
    if (page->free != NULL) break; /* extend requires an empty free list */
    bmm__page_extend(page);
    if (page->capacity - cap != want || list_len(page->free, want + 1) != want) bad_step++;
    if (!bmm__page_is_valid(page)) bad_valid++;
    void *b;
    while ((b = pop(page)) != NULL) {
      if (b != bmm__page_start(page) + n * bs) bad_order++;
      if ((uintptr_t)b % BMM_ALIGN != 0) bad_align++;
      if ((bs & (bs - 1)) == 0 && (uintptr_t)b % bs != 0) bad_align++;
      blocks[n++] = b;
    }
    if (!bmm__page_is_valid(page)) bad_valid++;
  }
  CHECK_EQ_SZ(bad_step, 0);
  CHECK_EQ_SZ(bad_order, 0);
  CHECK_EQ_SZ(bad_align, 0);
  CHECK_EQ_SZ(bad_valid, 0);
  CHECK_EQ_SZ(n, page->reserved);
  CHECK_EQ_SZ(page->capacity, page->reserved);
  CHECK_EQ_SZ(page->used, page->reserved);
  CHECK(page->free == NULL);
  CHECK((uint8_t *)blocks[n - 1] + bs <= bmm__page_start(page) + units * BMM_UNIT_SIZE);
  /* The blocks are usable memory. */
  memset(blocks[0], 0x5A, bs);
  memset(blocks[n - 1], 0xA5, bs);

  /* Nothing to take yet. */
  CHECK_EQ_SZ(bmm__page_take_thread_free(page), 0);

  /* Owner frees every third block, another thread every third + 1. */
  size_t nlocal = 0, nremote = 0;
  for (size_t i = 0; i < n; i++) {
    if (i % 3 == 0)
      push_local(page, blocks[i]), nlocal++;
    else if (i % 3 == 1)
      remote[nremote++] = blocks[i];
  }
  CHECK_EQ_SZ(page->used, n - nlocal);
  CHECK(bmm__page_is_valid(page));
  pusher_t job = {page, remote, nremote};
  pthread_t t;
  if (nremote > 0 && CHECK(pthread_create(&t, NULL, pusher_thread, &job) == 0))
    pthread_join(t, NULL);
  CHECK_EQ_SZ(df_state(page), BMM_DF_NORMAL);
  CHECK(nremote == 0 || df_list(page) != 0);
  CHECK_EQ_SZ(page->used, n - nlocal); /* remote frees stay counted */
  CHECK(bmm__page_is_valid(page));
  CHECK_EQ_SZ(bmm__page_take_thread_free(page), nremote);
  CHECK_EQ_SZ(atomic_load(&page->thread_free), BMM_DF_NORMAL);
  CHECK_EQ_SZ(page->used, n - nlocal - nremote);
  CHECK_EQ_SZ(list_len(page->local_free, n), nlocal + nremote);
  CHECK(bmm__page_is_valid(page));

  /* Collect with an empty free list: local_free becomes the free list. */
  bmm__page_collect(page);
  CHECK_EQ_SZ(list_len(page->free, n), nlocal + nremote);
  CHECK(page->local_free == NULL);
  CHECK(bmm__page_is_valid(page));

  /* Collect with a non-empty free list: free stays, remote frees go to
   * local_free. */
  size_t rest = 0;
  for (size_t i = 2; i < n; i += 3)
    remote[rest++] = blocks[i]; /* still out */
  if (rest > 0) {
    bmm_block_t *free_before = page->free;
    push_local(page, remote[0]);
    for (size_t i = 1; i < rest; i++)
      push_remote(page, remote[i]);
    bmm__page_collect(page);
    CHECK(page->free == free_before);
    CHECK_EQ_SZ(list_len(page->local_free, n), rest);
    CHECK_EQ_SZ(page->used, 0);
    CHECK(bmm__page_is_valid(page));
  }
  CHECK_EQ_SZ(list_len(page->free, n) + list_len(page->local_free, n), n);

  bmm__arena_page_free(page);
  CHECK_EQ_LONG(atomic_load(&page->kind), BMM_PAGE_FREE);
  CHECK(!bmm__page_is_valid(page)); /* no longer a small/medium page */
  if (check_failed_count() != before)
    check_print(2, "  (in class %zu, block size %zu, %zu units)\n", cls, bs, units);
}

/* ---- Several threads push while the owner takes ---------------------- */

#define PUSHERS 4

static void check_concurrent_take(void) {
  size_t cls = bmm__class_of(48);
  bmm_page_t *page = new_page(cls);
  if (!CHECK(page != NULL)) return;
  size_t n = 0;
  while (page->capacity < page->reserved) {
    bmm__page_extend(page);
    void *b;
    while ((b = pop(page)) != NULL)
      blocks[n++] = b;
  }
  CHECK_EQ_SZ(n, page->reserved);
  /* Blocks are dealt round-robin to the pushers. */
  static void *dealt[PUSHERS][BMM_UNIT_SIZE / BMM_ALIGN];
  pusher_t jobs[PUSHERS];
  for (size_t k = 0; k < PUSHERS; k++)
    jobs[k] = (pusher_t){page, dealt[k], 0};
  for (size_t i = 0; i < n; i++) {
    pusher_t *j = &jobs[i % PUSHERS];
    j->blocks[j->count++] = blocks[i];
  }
  pthread_t t[PUSHERS];
  for (size_t k = 0; k < PUSHERS; k++)
    CHECK(pthread_create(&t[k], NULL, pusher_thread, &jobs[k]) == 0);
  size_t taken = 0, rounds = 0, nonzero = 0;
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  while (taken < n) {
    size_t got = bmm__page_take_thread_free(page);
    taken += got;
    nonzero += got != 0;
    rounds++;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - start.tv_sec > 3) break; /* lost blocks: fail, don't hang */
  }
  for (size_t k = 0; k < PUSHERS; k++)
    pthread_join(t[k], NULL);
  taken += bmm__page_take_thread_free(page);
  CHECK_EQ_SZ(taken, n);
  CHECK_EQ_SZ(page->used, 0);
  CHECK_EQ_SZ(list_len(page->local_free, n + 1), n);
  CHECK_EQ_SZ(atomic_load(&page->thread_free), BMM_DF_NORMAL);
  CHECK(bmm__page_is_valid(page));
  printf("concurrent take: %zu blocks in %zu takes (%zu non-empty)\n", n, rounds, nonzero);
  bmm__arena_page_free(page);
}

/* ---- The validator rejects broken pages ------------------------------ */

static void check_validator(void) {
  size_t cls = bmm__class_of(64);
  bmm_page_t *page = new_page(cls);
  if (!CHECK(page != NULL)) return;
  bmm__page_extend(page);
  uint8_t *a = pop(page), *b = pop(page);
  CHECK(a != NULL && b != NULL);
  CHECK(page->capacity < page->reserved);
  CHECK(bmm__page_is_valid(page));

  page->used++; /* a block counted twice */
  CHECK(!bmm__page_is_valid(page));
  page->used--;
  CHECK(bmm__page_is_valid(page));

  /* A cycle on local_free. */
  push_local(page, a);
  CHECK(bmm__page_is_valid(page));
  ((bmm_block_t *)a)->next = (bmm_block_t *)a;
  CHECK(!bmm__page_is_valid(page));
  ((bmm_block_t *)a)->next = NULL;
  CHECK(bmm__page_is_valid(page));

  /* Blocks that are not blocks of the carved part. */
  bmm_block_t *saved = page->local_free;
  bmm_block_t *uncarved =
      (bmm_block_t *)(bmm__page_start(page) + (size_t)page->capacity * page->block_size);
  bmm_block_t *misaligned = (bmm_block_t *)(b + 16);
  bmm_block_t *below = (bmm_block_t *)(bmm__page_start(page) - page->block_size);
  bmm_block_t *bad[] = {uncarved, misaligned, below};
  for (size_t i = 0; i < 3; i++) {
    page->local_free = bad[i];
    page->used--; /* keep the count right so only the address is wrong */
    /* (the validator rejects the address before it reads bad[i]->next) */
    CHECK(!bmm__page_is_valid(page));
    page->local_free = saved;
    page->used++;
  }
  CHECK(bmm__page_is_valid(page));

  /* Wrong block size for the class; wrong kind. */
  page->block_size += 16;
  CHECK(!bmm__page_is_valid(page));
  page->block_size -= 16;
  atomic_store(&page->kind, BMM_PAGE_LARGE);
  CHECK(!bmm__page_is_valid(page));
  atomic_store(&page->kind, BMM_PAGE_SMALL);
  CHECK(bmm__page_is_valid(page));
  bmm__arena_page_free(page);
}

/* ---- Delayed-free states --------------------------------------------- */

typedef struct waiter_s {
  bmm_page_t *page;
  uintptr_t to;
  unsigned from_mask;
  atomic_bool done;
} waiter_t;

static void *waiter_thread(void *arg) {
  waiter_t *w = arg;
  bmm__page_set_delayed(w->page, w->to, w->from_mask); /* must wait out FREEING */
  atomic_store(&w->done, true);
  return NULL;
}

/* Put the page in FREEING (keeping its list), start a thread that asks for
 * to/from_mask, check it is still waiting after 50 ms, then leave FREEING
 * for `release_to` as free.c would, and return the final state word. */
static uintptr_t freeing_waited_out(bmm_page_t *page, uintptr_t to, unsigned from_mask,
                                    uintptr_t release_to) {
  uintptr_t list = df_list(page);
  atomic_store(&page->thread_free, list | BMM_DF_FREEING);
  waiter_t w = {page, to, from_mask, false};
  pthread_t t;
  if (!CHECK(pthread_create(&t, NULL, waiter_thread, &w) == 0)) return UINTPTR_MAX;
  struct timespec pause = {0, 50 * 1000 * 1000};
  nanosleep(&pause, NULL);
  CHECK(!atomic_load(&w.done)); /* still waiting */
  CHECK_EQ_SZ(atomic_load(&page->thread_free), list | BMM_DF_FREEING);
  atomic_store_explicit(&page->thread_free, list | release_to, memory_order_release);
  pthread_join(t, NULL);
  CHECK(atomic_load(&w.done));
  uintptr_t tf = atomic_load(&page->thread_free);
  CHECK_EQ_SZ(tf & ~(uintptr_t)BMM_DF_MASK, list);
  return tf;
}

static void check_delayed(void) {
  size_t cls = bmm__class_of(32);
  bmm_page_t *page = new_page(cls);
  if (!CHECK(page != NULL)) return;
  bmm__page_extend(page);
  void *a = pop(page), *b = pop(page);
  /* A list on thread_free whose pointer must survive every transition. */
  push_remote(page, a);
  push_remote(page, b);
  uintptr_t list = df_list(page); /* head and count */
  CHECK(bmm__tf_head(list) == b && bmm__tf_count(list) == 2);

  const unsigned from_normal = 1u << BMM_DF_NORMAL, from_use = 1u << BMM_DF_USE,
                 from_never = 1u << BMM_DF_NEVER;
  CHECK_EQ_SZ(df_state(page), BMM_DF_NORMAL);
  bmm__page_set_delayed(page, BMM_DF_NORMAL, from_use); /* USE->NORMAL from NORMAL: no-op */
  CHECK_EQ_SZ(df_state(page), BMM_DF_NORMAL);
  bmm__page_set_delayed(page, BMM_DF_USE, from_normal); /* NORMAL->USE */
  CHECK_EQ_SZ(df_state(page), BMM_DF_USE);
  CHECK_EQ_SZ(df_list(page), list);
  bmm__page_set_delayed(page, BMM_DF_USE, from_normal); /* already USE */
  CHECK_EQ_SZ(df_state(page), BMM_DF_USE);
  bmm__page_set_delayed(page, BMM_DF_NEVER, from_normal); /* not from USE */
  CHECK_EQ_SZ(df_state(page), BMM_DF_USE);
  bmm__page_set_delayed(page, BMM_DF_NORMAL, from_use); /* USE->NORMAL */
  CHECK_EQ_SZ(df_state(page), BMM_DF_NORMAL);
  CHECK_EQ_SZ(df_list(page), list);

  bmm__page_set_delayed(page, BMM_DF_NEVER, 0xF); /* NORMAL->NEVER */
  CHECK_EQ_SZ(df_state(page), BMM_DF_NEVER);
  bmm__page_set_delayed(page, BMM_DF_USE, from_normal); /* not from NEVER */
  CHECK_EQ_SZ(df_state(page), BMM_DF_NEVER);
  bmm__page_set_delayed(page, BMM_DF_NORMAL, from_use); /* not from NEVER */
  CHECK_EQ_SZ(df_state(page), BMM_DF_NEVER);
  CHECK_EQ_SZ(df_list(page), list);
  bmm__page_set_delayed(page, BMM_DF_NORMAL, from_never); /* adoption */
  CHECK_EQ_SZ(df_state(page), BMM_DF_NORMAL);
  bmm__page_set_delayed(page, BMM_DF_USE, from_normal);
  bmm__page_set_delayed(page, BMM_DF_NEVER, 0xF); /* USE->NEVER */
  CHECK_EQ_SZ(df_state(page), BMM_DF_NEVER);
  CHECK_EQ_SZ(df_list(page), list);

  /* Remote frees in NEVER still push on thread_free; taking keeps NEVER. */
  void *c = pop(page);
  push_remote(page, c);
  CHECK_EQ_SZ(df_state(page), BMM_DF_NEVER);
  CHECK_EQ_SZ(bmm__page_take_thread_free(page), 3);
  CHECK_EQ_SZ(atomic_load(&page->thread_free), BMM_DF_NEVER);
  CHECK(bmm__page_is_valid(page));
  bmm__page_set_delayed(page, BMM_DF_NORMAL, from_never);
  CHECK_EQ_SZ(atomic_load(&page->thread_free), BMM_DF_NORMAL);

  /* FREEING: a remote thread is handing a block to the heap. A transition
   * waits until it leaves that state (free.c then stores NORMAL). */
  void *d = pop(page);
  push_remote(page, d);
  list = df_list(page);
  CHECK_EQ_SZ(freeing_waited_out(page, BMM_DF_NEVER, 0xF, BMM_DF_NORMAL), list | BMM_DF_NEVER);
  bmm__page_set_delayed(page, BMM_DF_NORMAL, from_never);
  /* The waiter decides on the state the remote thread left: NORMAL->USE
   * applies after FREEING->NORMAL ... */
  CHECK_EQ_SZ(freeing_waited_out(page, BMM_DF_USE, from_normal, BMM_DF_NORMAL), list | BMM_DF_USE);
  /* ... and USE->NORMAL is then a no-op (the state already is NORMAL). */
  CHECK_EQ_SZ(freeing_waited_out(page, BMM_DF_NORMAL, from_use, BMM_DF_NORMAL),
              list | BMM_DF_NORMAL);
  CHECK_EQ_SZ(bmm__page_take_thread_free(page), 1);
  CHECK(bmm__page_is_valid(page));
  bmm__arena_page_free(page);
}

int main(void) {
  fake_heap.tid = bmm__os_thread_id();
  /* Small classes of every kind (linear, first doublings, the direct-table
   * limit, the small-page limit), then medium ones up to the last class. */
  const size_t sizes[] = {16,   32,   48,   112,  256,   288,   512,  1024,
                          1152, 2048, 2304, 4096, 20480, 36864, 65536};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    size_t cls = bmm__class_of(sizes[i]);
    if (!CHECK_EQ_SZ(bmm__class_size(cls), sizes[i])) continue;
    check_class(cls);
  }
  /* Every class: reserved == units * 64 KiB / block_size, and the waste at
   * the end of the page is less than one block. */
  size_t bad_reserved = 0;
  for (size_t cls = 0; cls < BMM_CLASS_COUNT; cls++) {
    bmm_page_t *page = new_page(cls);
    if (page == NULL) {
      bad_reserved++;
      continue;
    }
    size_t bs = bmm__class_size(cls), space = page->units * BMM_UNIT_SIZE;
    if (page->reserved != space / bs || space - page->reserved * bs >= bs) bad_reserved++;
    if (page->units != (bs <= BMM_SMALL_PAGE_MAX ? 1 : BMM_MEDIUM_PAGE_UNITS)) bad_reserved++;
    if (page->reserved < (bs <= BMM_SMALL_PAGE_MAX ? 32 : 8)) bad_reserved++;
    bmm__arena_page_free(page);
  }
  CHECK_EQ_SZ(bad_reserved, 0);
  check_concurrent_take();
  check_validator();
  check_delayed();
  CHECK(bmm__arena_check_all());
  return check_done();
}
