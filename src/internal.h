/* internal.h: what the files of BrainMM share: branch hints, the three
 * assertion tiers, the size-class mapping, and cross-file prototypes grouped
 * by the file that owns them. Nothing here is exported from the library.
 */
#ifndef BMM_INTERNAL_H
#define BMM_INTERNAL_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "brainmm.h"
#include "os/os.h"
#include "types.h"

#define bmm_likely(x) __builtin_expect(!!(x), 1)
#define bmm_unlikely(x) __builtin_expect(!!(x), 0)
#define bmm_noinline __attribute__((noinline))
#define bmm_inline static inline __attribute__((always_inline))
#define bmm_cold __attribute__((cold, noinline))

/* ---- Assertion tiers ------------------------------------------------- */
/* bmm_assert: cheap internal invariants, on in debug builds (BMM_DEBUG>=1).
 * bmm_assert_expensive: whole-structure validators (BMM_DEBUG>=2, the
 * "check" flavour). Misuse checks that stay on in release are not asserts:
 * they report through bmm__error(). Assertion code never allocates. */
#ifndef BMM_DEBUG
#define BMM_DEBUG 0
#endif
#if BMM_DEBUG >= 1
#define bmm_assert(x) \
  ((x) ? (void)0 : bmm__assert_fail(#x, __FILE__, __LINE__, __func__))
#else
#define bmm_assert(x) ((void)0)
#endif
#if BMM_DEBUG >= 2
#define bmm_assert_expensive(x) bmm_assert(x)
#else
#define bmm_assert_expensive(x) ((void)0)
#endif
static const bool bmm__debug = BMM_DEBUG >= 1;

/* Debug builds fill fresh blocks with 0xD0 and freed ones with 0xDF. */
#define BMM_DEBUG_FILL_ALLOC 0xD0
#define BMM_DEBUG_FILL_FREE 0xDF

/* ---- Size classes ---------------------------------------------------- */

/* Class index of a request of `size` bytes (size <= BMM_MEDIUM_MAX). Sizes
 * up to 256 B map linearly (16 B steps, classes 0..15). Above, with w the
 * size in 16-byte words minus one and b its highest bit, the class is the
 * doubling (b) times 8 plus the eighth of that doubling it falls into. */
bmm_inline size_t bmm__class_of(size_t size) {
  size_t w = (size + BMM_ALIGN - 1) / BMM_ALIGN; /* 16-byte words */
  if (w <= 16) return w == 0 ? 0 : w - 1;
  w--;
  size_t b = 63 - (size_t)__builtin_clzll(w); /* w >= 16, so b >= 4 */
  return 16 + ((b - 4) << 3) + ((w >> (b - 3)) & 7);
}

/* Block size of class c (inverse of bmm__class_of). */
bmm_inline size_t bmm__class_size(size_t c) {
  if (c < 16) return (c + 1) * BMM_ALIGN;
  size_t d = (c - 16) >> 3; /* doubling: 0 for 256..512 */
  size_t e = (c - 16) & 7;
  size_t base = (size_t)256 << d;
  return base + (e + 1) * (base >> 3);
}

/* Units a page of class c spans: one up to BMM_SMALL_PAGE_MAX, else a
 * medium page. */
bmm_inline size_t bmm__class_page_units(size_t c) {
  return bmm__class_size(c) <= BMM_SMALL_PAGE_MAX ? 1 : BMM_MEDIUM_PAGE_UNITS;
}

/* ---- Spin locks (lock.c) --------------------------------------------- */

/* A pause for spin loops: lets the other hyperthread run, saves power. */
bmm_inline void bmm__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield" ::: "memory");
#endif
}

void bmm__spin_lock_contended(atomic_int *lock);

/* acquire: the holder's writes before its release are visible to us. */
bmm_inline void bmm__spin_lock(atomic_int *lock) {
  if (bmm_likely(atomic_exchange_explicit(lock, 1, memory_order_acquire) == 0)) return;
  bmm__spin_lock_contended(lock);
}

bmm_inline void bmm__spin_unlock(atomic_int *lock) {
  atomic_store_explicit(lock, 0, memory_order_release);
}

/* ---- Region map and page lookup (arena.c) ----------------------------- */

extern _Atomic(uint8_t) bmm__region_map[BMM_REGION_MAP_SIZE];

/* The page descriptor of the unit p is in, or NULL when p is not in a
 * BrainMM region. A unit that is not part of a live page gives a
 * descriptor of kind FREE (never used: its own; freed: its old page's,
 * which the callers' kind and bounds checks reject); so do the units of a
 * huge block after its first, which are never mapped. Never touches memory
 * outside our own metadata. */
/* True when p lies in a region holding a BrainMM arena or huge block. */
bmm_inline bool bmm__is_ours(const void *p) {
  uintptr_t r = (uintptr_t)p >> BMM_REGION_SHIFT;
  return bmm_likely(r < BMM_REGION_MAP_SIZE) &&
         atomic_load_explicit(&bmm__region_map[r], memory_order_relaxed) == BMM_REGION_ARENA;
}

/* bmm__page_of for a p that bmm__is_ours. The unit's descriptor: region
 * base + offset of pages[] + unit * 128, with unit * 128 taken from the
 * address by one shift and one mask; then back by first_delta. */
bmm_inline bmm_page_t *bmm__page_of_ours(const void *p) {
  _Static_assert(sizeof(bmm_page_t) == 1 << 7, "descriptor indexing assumes 128 bytes");
  uintptr_t a = (uintptr_t)p;
  uintptr_t unit_x128 = (a >> (BMM_UNIT_SHIFT - 7)) & ((BMM_ARENA_UNITS - 1) << 7);
  uintptr_t unit = (a & ~(uintptr_t)BMM_REGION_MASK) + offsetof(bmm_arena_t, pages) + unit_x128;
  return (bmm_page_t *)(unit - ((const bmm_page_t *)unit)->first_delta);
}

bmm_inline bmm_page_t *bmm__page_of(const void *p) {
  return bmm__is_ours(p) ? bmm__page_of_ours(p) : NULL;
}

/* The first byte of a page (or of a large block's run). A valgrind build
 * keeps it disguised, its top bit flipped: memcheck's leak check takes
 * any word in mapped memory that holds a block's address for a pointer to
 * it, and the descriptor would then keep a leaked first block of a page
 * "still reachable". Any other build stores the plain address. */
#if defined(BMM_VALGRIND) && BMM_VALGRIND
#define BMM_START_DISGUISE ((uintptr_t)1 << (sizeof(uintptr_t) * 8 - 1))
#else
#define BMM_START_DISGUISE ((uintptr_t)0)
#endif

bmm_inline uint8_t *bmm__page_start(const bmm_page_t *page) {
  return (uint8_t *)(page->start_word ^ BMM_START_DISGUISE);
}

bmm_inline void bmm__page_set_start(bmm_page_t *page, uint8_t *start) {
  page->start_word = (uintptr_t)start ^ BMM_START_DISGUISE;
}

/* Index of the block p starts in a small/medium page, or a value >=
 * page->reserved when p is not a block start (an interior pointer, or the
 * slack after the last block). No division: with block_size = m * 2^k, m
 * odd, a multiple n of block_size gives n * m^-1 mod 2^32 = (n / block_size)
 * << k exactly, and rotating right by k yields n / block_size; for any
 * other n the rotation leaves high bits set, far above `reserved`. Page
 * offsets are below 2^32, so 32-bit arithmetic is exact. */
bmm_inline uint32_t bmm__page_block_index(const bmm_page_t *page, const void *p) {
  uint32_t n = (uint32_t)((uintptr_t)p - (uintptr_t)bmm__page_start(page)) * page->block_inv;
  uint32_t k = page->block_shift;
  return (n >> k) | (n << ((32 - k) & 31));
}

bmm_inline bmm_arena_t *bmm__arena_of_page(const bmm_page_t *page) {
  return (bmm_arena_t *)((uintptr_t)page & ~(uintptr_t)BMM_REGION_MASK);
}

/* arena.c: claims runs of units for pages and large blocks, lock-free. */
bmm_page_t *bmm__arena_units_alloc(uint32_t *arena_hint, size_t units, size_t align_units,
                                   bool keep_guard);
bmm_page_t *bmm__arena_page_alloc(uint32_t *arena_hint, size_t units, size_t align_units,
                                  bool keep_guard);
void bmm__arena_page_free(bmm_page_t *page);
bool bmm__arena_claim_units(bmm_arena_t *arena, size_t first, size_t units);
void bmm__arena_release_units(bmm_arena_t *arena, size_t first, size_t units);
bool bmm__arena_unit_is_free(bmm_arena_t *arena, size_t unit);
size_t bmm__arena_count(void);
bool bmm__arena_untouched(void);
/* Regions (as in the region map) where bmm_pages_protect changed rights
 * (arena.c). */
extern _Atomic(uint8_t) bmm__rights_map[BMM_REGION_MAP_SIZE];
void bmm__arena_note_rights(const void *addr, size_t bytes);
/* Give [addr, addr+bytes) (memory of a large block going back) read+write
 * if bmm_pages_protect may have changed it: a byte load per region. */
bmm_inline void bmm__arena_restore_rights(void *addr, size_t bytes) {
  if (bytes == 0) return;
  uintptr_t r = (uintptr_t)addr >> BMM_REGION_SHIFT;
  uintptr_t last = ((uintptr_t)addr + bytes - 1) >> BMM_REGION_SHIFT;
  for (; r <= last && r < BMM_REGION_MAP_SIZE; r++) {
    if (bmm_unlikely(atomic_load_explicit(&bmm__rights_map[r], memory_order_relaxed))) {
      bmm__os_protect(addr, bytes, BMM_PROT_READ | BMM_PROT_WRITE);
      return;
    }
  }
}
bmm_arena_t *bmm__arena_get(size_t index);
void bmm__arena_fork_prepare(void);
void bmm__arena_fork_release(void);
void *bmm__huge_alloc(size_t size, size_t align);
void *bmm__huge_resize(bmm_page_t *page, size_t size, bool may_move);
void *bmm__huge_adopt(void *data, size_t have, size_t size);
/* Alignments a huge region's header leaves room for (see huge_offset in
 * arena.c); above, a block is a region block: an exact mapping of its own. */
#define BMM_HUGE_ALIGN_MAX (BMM_REGION_SIZE / 2)
/* Region blocks live at once, all heaps together (arena.c's table). */
#define BMM_REGION_BLOCKS 256
void *bmm__region_block_alloc(size_t size, size_t align, bool guard, uint64_t owner);
size_t bmm__region_block_size(const void *p, size_t *align);
size_t bmm__region_blocks_owned(uint64_t owner, void **out, size_t *sizes, size_t max);
bool bmm__region_block_free(void *p);
void bmm__huge_free(bmm_page_t *page);
void bmm__arena_purge_all(void);
void bmm__arena_purge_marked(void);
void bmm__arena_purge_due(void);
typedef int64_t (*bmm_sweep_fn)(int64_t now);
void bmm__arena_sweep_hook(bmm_sweep_fn fn, int64_t deadline);
bool bmm__arena_stats(size_t index, bmm_mem_stats_t *out);
void bmm__mem_stats(bmm_mem_stats_t *out);
bool bmm__arena_check_all(void);

/* ---- page.c ---------------------------------------------------------- */
void bmm__page_init(bmm_page_t *page, bmm_theap_t *heap, size_t cls);
void bmm__page_extend(bmm_page_t *page);
uint32_t bmm__page_free_count(const bmm_page_t *page, uint32_t most);
uint32_t bmm__page_popped(const bmm_page_t *page);
void bmm__page_collect(bmm_page_t *page);
size_t bmm__page_take_thread_free(bmm_page_t *page);
void bmm__page_set_delayed(bmm_page_t *page, uintptr_t to, unsigned from_mask);
bool bmm__page_is_valid(const bmm_page_t *page);
bool bmm__page_visit(const bmm_page_t *page, const bmm_block_t *more, bmm_visit_fn *fn,
                     void *arg);

/* ---- Modes that take every call through the slow paths (init.c) -------- */
/* Set when the process initialises, before any page exists, for secure
 * mode and for leak tracking of every block: the direct table then stays
 * empty and heap tids carry BMM_TID_SLOW, so the inline fast paths always
 * fall through to the slow paths, where the modes do their work; the
 * default fast paths carry no test for them. */
extern bool bmm__all_slow;

/* ---- secure.c: secure mode --------------------------------------------- */
/* 0 off, 1 on, 2 also whole freed blocks checked; fixed at initialisation
 * and read only by slow paths. */
extern int bmm__secure;
/* Secure mode without leak tracking: the slow paths start with secure
 * mode's own short paths (bmm__secure_malloc, bmm__secure_free). */
extern bool bmm__secure_fast;
/* Bit 1 of a tid: no thread id has it (ids are TCB addresses), so the free
 * fast path's compare always fails: set in every heap's tid when
 * bmm__all_slow, and in a page's tid while it holds a block leak_sample
 * recorded. Bit 0 is in_full (heap.c). */
#define BMM_TID_SLOW ((uintptr_t)2)
#define BMM_TID_FLAGS ((uintptr_t)3)
/* Bytes after each small block's usable size that hold its canary. One
 * keyed word is as hard to forge as two, and a 16-byte canary moved many
 * requests up a size class (Python's 56-byte objects to 80 bytes, not 64):
 * secure python3 with PYTHONMALLOC=malloc ran 8% faster in 13% less
 * memory with 8. In a 16-byte block it shares the mark's word: a live
 * block has the canary there, a free one the mark. */
#define BMM_CANARY 8

bmm_block_t *bmm__secure_next(const bmm_page_t *page, const bmm_block_t *b);
void bmm__secure_set_next(const bmm_page_t *page, bmm_block_t *b, bmm_block_t *next);

/* A free-list link, decoded (and checked) in secure mode. Every list walk
 * outside the inline fast paths goes through these two. */
bmm_inline bmm_block_t *bmm__next(const bmm_page_t *page, const bmm_block_t *b) {
  if (bmm_likely(!bmm__secure)) return b->next;
  return bmm__secure_next(page, b);
}

bmm_inline void bmm__set_next(const bmm_page_t *page, bmm_block_t *b, bmm_block_t *next) {
  if (bmm_likely(!bmm__secure)) b->next = next;
  else bmm__secure_set_next(page, b, next);
}

/* The same for a heap's delayed list, whose blocks are of many pages. */
bmm_block_t *bmm__secure_next_any(const bmm_block_t *b);
void bmm__secure_set_next_any(bmm_block_t *b, bmm_block_t *next);
bmm_inline bmm_block_t *bmm__next_any(const bmm_block_t *b) {
  if (bmm_likely(!bmm__secure)) return b->next;
  return bmm__secure_next_any(b);
}

bmm_inline void bmm__set_next_any(bmm_block_t *b, bmm_block_t *next) {
  if (bmm_likely(!bmm__secure)) b->next = next;
  else bmm__secure_set_next_any(b, next);
}

/* Bytes a small or medium block of `page` gives its caller. */
bmm_inline size_t bmm__page_usable(const bmm_page_t *page) {
  return page->block_size - (bmm__secure ? BMM_CANARY : 0);
}

/* The request size that picks a size class: room for the canary. */
bmm_inline size_t bmm__class_request(size_t size) {
  if (bmm_likely(!bmm__secure)) return size;
  /* At least one usable byte: 0 would read as "not a block". */
  if (size == 0) size = 1;
  return size <= SIZE_MAX - BMM_CANARY ? size + BMM_CANARY : SIZE_MAX;
}

void bmm__secure_init(void);
void bmm__secure_page_init(bmm_page_t *page);
void bmm__secure_extend(bmm_page_t *page, uint8_t *first, size_t n);
/* Secure mode carves 32 KiB at a time, not 4 KiB: 8 streams of one OS
 * page each, interleaved at random (see bmm__secure_extend). A class used
 * for a few objects costs up to 32 KiB of RSS then. */
#define BMM_SECURE_EXTEND_BYTES ((size_t)32768)
void *bmm__secure_pop(bmm_page_t *page);
void *bmm__secure_malloc(bmm_theap_t *heap, size_t size);
bool bmm__secure_free_check(bmm_page_t *page, void *p, const char *call);
void bmm__secure_free(void *p, bmm_page_t *page, const char *call);
bool bmm__secure_is_marked(const bmm_page_t *page, const void *p);
void bmm__secure_guard_tail(bmm_page_t *page);
void bmm__secure_unguard(bmm_page_t *page);
void bmm__secure_check_size(void *p, size_t size, const char *call);
void bmm__secure_note_size(bmm_page_t *page, void *p, size_t size);

/* ---- leak.c: leak reports ------------------------------------------------ */
/* 0 off, 1 every block recorded, 2 sampled (leak_sample bytes); fixed at
 * initialisation. */
extern int bmm__leak;
void bmm__leak_init(void);
void bmm__leak_fork_prepare(void);
void bmm__leak_fork_release(void);
bool bmm__leak_want(bmm_theap_t *heap, size_t bytes);
void bmm__leak_on_alloc(bmm_theap_t *heap, bmm_page_t *page, size_t qi, void *block);
void bmm__leak_resume(bmm_theap_t *heap, bool record);
void bmm__leak_count_page(bmm_theap_t *heap, bmm_page_t *page);
void bmm__leak_record(void *p, size_t size, bmm_page_t *page);
void bmm__leak_forget(void *p, bmm_page_t *page);
void bmm__leak_moving(void *p);
void bmm__leak_moved(void *from, void *to, size_t size);

/* The tid a page of `heap` carries: the heap's, with in_full in bit 0 and
 * BMM_TID_SLOW while it holds a block that leak_sample recorded. */
bmm_inline uintptr_t bmm__page_tid(const bmm_theap_t *heap, const bmm_page_t *page) {
  uintptr_t slow = atomic_load_explicit(&page->sampled, memory_order_relaxed) ? BMM_TID_SLOW : 0;
  return heap->tid | page->in_full | slow;
}

/* page->sampled_at when the page holds more than one recorded block. */
#define BMM_SAMPLED_ANY UINT16_MAX

/* A free of p (of small/medium `page`) must drop a leak record first: with
 * leak_sample, only when the page holds a record, and (the usual case of a
 * single one) only for that block. */
bmm_inline bool bmm__leak_check_free(const bmm_page_t *page, const void *p) {
  if (bmm_likely(!bmm__leak)) return false;
  if (bmm__leak == 1) return true;
  if (atomic_load_explicit(&page->sampled, memory_order_relaxed) == 0) return false;
  uint16_t at = atomic_load_explicit(&page->sampled_at, memory_order_relaxed);
  return at == BMM_SAMPLED_ANY || at == bmm__page_block_index(page, p);
}

/* ---- heap.c ---------------------------------------------------------- */
extern bmm_theap_t bmm__heap_empty;
extern bmm_page_t bmm__page_empty;
extern __thread bmm_theap_t *bmm__heap_tls __attribute__((tls_model("initial-exec")));

bmm_theap_t *bmm__heap_init_thread(void);
bmm_theap_t *bmm__heap_all(void);
void bmm__heap_thread_done(void *heap);
bmm_page_t *bmm__heap_find_page(bmm_theap_t *heap, size_t cls);
void bmm__heap_page_unfull_or_retire(bmm_theap_t *heap, bmm_page_t *page);
void bmm__heap_orphan_freed(bmm_page_t *page, bmm_block_t *block);
/* A page was abandoned, or a block freed into an abandoned page: the next
 * sweep of abandoned pages has work (one relaxed load while it is known). */
extern _Atomic(bool) bmm__heap_sweep_wanted;
bmm_inline void bmm__heap_want_sweep(void) {
  if (!atomic_load_explicit(&bmm__heap_sweep_wanted, memory_order_relaxed))
    atomic_store_explicit(&bmm__heap_sweep_wanted, true, memory_order_relaxed);
}
/* Abandoned pages (with free blocks) a thread short of a class takes over
 * at once. Taking the whole list made the first thread to come hoard every
 * page of the class, and the next ones claim fresh pages: on larson with 4
 * threads (hundreds of thread exits a second) 4 pages at a time cut the
 * peak RSS by a tenth at no cost in time, 2 by a sixth at 8% of the time. */
#define BMM_ADOPT_PAGES 4
void bmm__heap_process_delayed(bmm_theap_t *heap);
void bmm__heap_collect(bmm_theap_t *heap, bool force);
void bmm__heap_deferred_free(bmm_theap_t *heap, bool force);
typedef struct bmm_class_stats_s {
  size_t pages, used, capacity;
  size_t popped;       /* blocks handed out that the shared counts miss */
  int64_t live_change; /* blocks in use now less what the shared counts hold */
} bmm_class_stats_t;
size_t bmm__heap_class_stats(bmm_theap_t *heap, bmm_class_stats_t out[BMM_CLASS_COUNT]);
void bmm__heap_stats_flush(bmm_theap_t *heap);
bool bmm__heap_check(bmm_theap_t *heap);
bmm_theap_t *bmm__heap_view_new(struct bmm_heap *owner);
void bmm__heap_view_release(bmm_theap_t *view);
bool bmm__heap_view_visit(bmm_theap_t *view, bmm_visit_fn *fn, void *arg);
void bmm__heap_fork_child(void);
void bmm__heap_fork_prepare(void);
void bmm__heap_fork_release(void);

/* ---- large.c: blocks above BMM_MEDIUM_MAX ---------------------------- */
/* How a resize may treat the block: realloc keeps the contents and may
 * move it; reget may move it but need not keep the contents; expand must
 * leave it where it is. */
typedef enum bmm_resize_e { BMM_RESIZE_REALLOC, BMM_RESIZE_REGET, BMM_RESIZE_EXPAND } bmm_resize_t;
void *bmm__large_alloc(size_t size, size_t align);
void *bmm__large_unit_run(size_t size, size_t align);
void *bmm__large_realloc(void *p, bmm_page_t *page, size_t size, bmm_resize_t mode);
size_t bmm__large_align(const void *p, const bmm_page_t *page);
void *bmm__pages_alloc(size_t count);
void *bmm__pages_resize(void *p, bmm_page_t *page, size_t count, bmm_resize_t mode);
void bmm__span_free(void *p, bmm_page_t *unit, const char *call);
size_t bmm__span_usable(const void *p, const bmm_page_t *unit);
bool bmm__span_check_all(void);
size_t bmm__large_bytes_copied(void);
void bmm__large_cache_flush(void);
void bmm__large_fork_prepare(void);
void bmm__large_fork_release(void);
void bmm__large_count_copied(size_t bytes);

/* ---- alloc.c / free.c / aligned.c ------------------------------------ */
void *bmm__malloc_generic(bmm_theap_t *heap, size_t size);
void *bmm__malloc_slow(bmm_theap_t *heap, size_t size);
void *bmm__heap_alloc_slow(bmm_theap_t *heap, size_t qi);
bmm_theap_t *bmm__heap_get(void);
void *bmm__malloc_aligned(size_t size, size_t align);
size_t bmm__aligned_queue(size_t size, size_t align);
int bmm__posix_memalign_slow(void **out, size_t align, size_t size);
void bmm__free_generic(void *p, bmm_page_t *page, const char *call);
void bmm__free_slow(void *p, bmm_page_t *page, const char *call);
size_t bmm__usable_size_checked(const void *p, const char *call);
bool bmm__block_freed(const bmm_page_t *page, const void *p);
size_t bmm__block_usable(const void *p, const bmm_page_t *page, const char *call);
size_t bmm__block_info(void *p, const char *call, size_t *align, bmm_page_t **page);
void *bmm__large_handed_out(void *p, size_t size);

/* ---- stats.c ---------------------------------------------------------- */
/* A large block of `bytes` allocated (or freed): atomic counters. */
void bmm__stats_large(size_t bytes, bool allocated);
void bmm__stats_large_resized(size_t old, size_t now);
/* A page of size class cls was claimed (true) or released (false). */
void bmm__stats_class_page(size_t cls, bool claimed);
void bmm__stats_class_live(size_t cls, int64_t delta);
void bmm__zero_block(void *p, size_t size);

/* ---- fheap.c: first-class heaps -------------------------------------- */
void bmm__fheap_large_unlink(bmm_page_t *page);
struct bmm_fixed_s;
void *bmm__fixed_resize(struct bmm_fixed_s *fh, void *p, size_t size, bmm_resize_t mode);

/* ---- init.c ---------------------------------------------------------- */
void bmm__process_init(void);
bool bmm__process_is_initialized(void);
bool bmm__modes_settable(void);
void bmm__modes_init(void);

/* ---- options.c ------------------------------------------------------- */
typedef enum bmm_option_e {
  BMM_OPTION_ABORT_ON_ERROR,
  BMM_OPTION_VERBOSE,
  BMM_OPTION_PURGE_LAZY,
  BMM_OPTION_PURGE_DELAY,
  BMM_OPTION_HUGE_PAGES,
  BMM_OPTION_ARENA_RELEASE,
  BMM_OPTION_SHOW_STATS,
  BMM_OPTION_STATS_JSON,
  BMM_OPTION_SECURE,
  BMM_OPTION_ZERO_ON_FREE,
  BMM_OPTION_LEAK_REPORT,
  BMM_OPTION_LEAK_SAMPLE,
  BMM_OPTION_COUNT
} bmm_option_t;
extern long bmm__options[BMM_OPTION_COUNT];
void bmm__options_init(void);

/* ---- error.c --------------------------------------------------------- */
/* Writes v in decimal ending just before `end` (a buffer of at least 21
 * bytes before it) and returns where the digits start; no libc, so safe
 * anywhere (diagnostics, statistics at exit). */
bmm_inline char *bmm__fmt_dec(char *end, unsigned long long v) {
  do {
    *--end = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0);
  return end;
}

/* One diagnostic line for detected heap misuse, then abort unless
 * abort_on_error=0. `call` names the API function, `what` the problem. */
void bmm__error(const void *p, const char *call, const char *what);
/* The same, naming the size class (block size) of the block concerned. */
void bmm__error_block(const void *p, const char *call, const char *what, size_t block_size);
void bmm__warning(const char *what, const char *detail);
void bmm__verbose(const char *what, size_t value);
_Noreturn void bmm__fatal(const char *what);
_Noreturn void bmm__assert_fail(const char *expr, const char *file, int line,
                                const char *func);

#endif /* BMM_INTERNAL_H */
