/* types.h: every core struct of BrainMM and the constants that shape them.
 *
 * Ownership legend used below:
 *   [owner]  read and written only by the thread that owns the page/heap;
 *   [atomic] shared, accessed only with C11 atomics (the order is given at
 *            each use and explained there);
 *   [init]   written once before the object is published, read-only after.
 */
#ifndef BMM_TYPES_H
#define BMM_TYPES_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Geometry -------------------------------------------------------- */

/* The unit: arenas hand out memory in 64 KiB units. 64 KiB is the smallest
 * size that (a) keeps the per-unit descriptor (128 B) at 0.2% overhead,
 * (b) holds 64 blocks of the largest small class (1 KiB) so a small page is
 * worth its slow path, and (c) is what Windows' allocation granularity is,
 * so the same arena code ports unchanged. */
#define BMM_UNIT_SHIFT 16
#define BMM_UNIT_SIZE ((size_t)1 << BMM_UNIT_SHIFT)

/* A region is the address-space granule that the region map knows about and
 * that a pointer is masked to: 256 MiB, aligned to 256 MiB. A region holds
 * one arena (4096 units), or one huge block. 256 MiB keeps the region map
 * small (1 MiB of lazily touched BSS covers 2^48 bytes) and still lets a
 * 256 MiB memory block (API section 4) be an arena run in later work. */
#define BMM_REGION_SHIFT 28
#define BMM_REGION_SIZE ((size_t)1 << BMM_REGION_SHIFT)
#define BMM_REGION_MASK (BMM_REGION_SIZE - 1)
#define BMM_ARENA_UNITS (BMM_REGION_SIZE / BMM_UNIT_SIZE) /* 4096 */
#define BMM_ARENA_WORDS (BMM_ARENA_UNITS / 64)

/* User space addresses on x86-64 and arm64 (4-level tables) fit in 48 bits. */
#define BMM_ADDRESS_BITS 48
#define BMM_REGION_MAP_SIZE ((size_t)1 << (BMM_ADDRESS_BITS - BMM_REGION_SHIFT))

/* ---- Size classes ---------------------------------------------------- */

/* Every block is a multiple of 16 bytes and 16-aligned. Classes are 16 B
 * apart up to 256 B, then 8 classes per doubling (spacing 12.5% of the
 * power of two), so a request never wastes more than 1/9 of its block once
 * it is above 128 B; below that, 16-byte granularity is what bounds it. */
#define BMM_ALIGN 16
#define BMM_SMALL_MAX 1024    /* the direct table covers sizes up to this */
#define BMM_SMALL_PAGE_MAX 2048 /* classes up to this live in 64 KiB pages */
#define BMM_MEDIUM_MAX ((size_t)64 * 1024) /* classes end here; larger is "large" */
#define BMM_MEDIUM_PAGE_UNITS 8 /* a medium page: 512 KiB, >= 8 blocks of 64 KiB */
#define BMM_DIRECT_COUNT (BMM_SMALL_MAX / BMM_ALIGN + 1)
#define BMM_CLASS_COUNT 80 /* 16 linear (16..256) + 8 doublings x 8 (..64 KiB) */

/* Large blocks (above BMM_MEDIUM_MAX) are page-granular spans inside an
 * arena up to this size; beyond it a block gets a region of its own
 * ("huge") that grows with mremap. 16 MiB: below it, an arena serves a
 * block with no system call and keeps freed memory for reuse until the
 * purge delay; above it, mapping costs little next to faulting in 4096+
 * pages, and an arena (256 MiB) would fragment under a few such blocks. */
#define BMM_LARGE_MAX ((size_t)16 * 1024 * 1024)

/* Spans are counted in 4 KiB pages (the x86-64 page; the span tables
 * assume it). */
#define BMM_SPAN_SHIFT 12
#define BMM_SPAN_PAGE ((size_t)1 << BMM_SPAN_SHIFT)
#define BMM_ARENA_PAGES (BMM_REGION_SIZE / BMM_SPAN_PAGE) /* 65536 */
#define BMM_UNIT_PAGES (BMM_UNIT_SIZE / BMM_SPAN_PAGE)    /* 16 */
/* Free-span bins: exact for 1..64 pages, then 8 per doubling up to the
 * arena size: an O(1) good fit with at most 12.5% slack. */
#define BMM_SPAN_BINS (64 + 10 * 8)

/* ---- Blocks and pages ------------------------------------------------ */

typedef struct bmm_block_s {
  struct bmm_block_s *next;
} bmm_block_t;

typedef struct bmm_theap_s bmm_theap_t;
typedef struct bmm_page_s bmm_page_t;
typedef struct bmm_arena_s bmm_arena_t;

typedef enum bmm_page_kind_e {
  BMM_PAGE_FREE = 0, /* unit not in use (or a header unit) */
  BMM_PAGE_SMALL,    /* one 64 KiB unit of one size class */
  BMM_PAGE_MEDIUM,   /* BMM_MEDIUM_PAGE_UNITS units of one size class */
  BMM_PAGE_LARGE,    /* a run of units holding one block */
  BMM_PAGE_HUGE,     /* the single block of a huge region */
  BMM_PAGE_SPANS,    /* a unit carved into page-granular large spans */
} bmm_page_kind_t;

/* Delayed-free state, kept in the low 2 bits of page->thread_free (blocks
 * are 16-aligned, so those bits are free). It lets a thread that frees into
 * another thread's *full* page tell the owner, without a lock:
 *   NORMAL  remote frees just push onto thread_free;
 *   USE     the page is full. In a first-class heap's view it sits in the
 *           view's full queue, and the next remote free pushes its block
 *           onto the view's delayed_free list instead. A thread heap's
 *           full page belongs to no heap (it is orphaned, page->heap NULL:
 *           see heap_page_orphan in heap.c), and the next free, by any
 *           thread, places it: back into the heap that gave it up when the
 *           freeing thread owns that heap, else on the abandoned list;
 *   FREEING a thread is doing that right now (the heap must not go away
 *           under it: abandonment waits for this state to clear; and an
 *           orphan's lists are the freeing thread's alone meanwhile);
 *   NEVER   the page is abandoned (no heap): always push onto thread_free. */
enum {
  BMM_DF_NORMAL = 0,
  BMM_DF_USE = 1,
  BMM_DF_FREEING = 2,
  BMM_DF_NEVER = 3,
  BMM_DF_MASK = 3,
};

/* page->thread_free packs three things into one word, changed together by
 * one CAS: the delayed-free state (bits 0-1), the list head (blocks are
 * 16-aligned and lie below 2^BMM_ADDRESS_BITS) and, above that, how many
 * blocks the list holds (a page has at most 4096), so that the owner can
 * take the list without walking it: each block there was written by
 * another thread, and walking them costs a cache miss apiece. */
#define BMM_TF_COUNT_SHIFT BMM_ADDRESS_BITS
#define BMM_TF_ONE ((uintptr_t)1 << BMM_TF_COUNT_SHIFT)
#define BMM_TF_HEAD_MASK ((BMM_TF_ONE - 1) & ~(uintptr_t)BMM_DF_MASK)
_Static_assert(sizeof(uintptr_t) == 8, "thread_free needs spare pointer bits for its count");

static inline bmm_block_t *bmm__tf_head(uintptr_t tf) {
  return (bmm_block_t *)(tf & BMM_TF_HEAD_MASK);
}
static inline uint32_t bmm__tf_count(uintptr_t tf) {
  return (uint32_t)(tf >> BMM_TF_COUNT_SHIFT);
}

/* One descriptor per unit, kept in the arena header (never in the page
 * itself, so blocks start at offset 0 and power-of-two classes come out
 * naturally aligned). A page spanning several units uses the descriptor of
 * its first unit; every unit's first_delta says how far back that is, so
 * free() finds it with one load, and a unit never used (zero memory) leads
 * to itself: a descriptor of kind FREE owned by no thread. 128 bytes. */
struct bmm_page_s {
  /* First cache line: what the malloc and free fast paths read, and the key
   * secure mode's short paths read with them (secure larson ran 1.11x
   * faster with it here than on the second line). */
  uintptr_t first_delta;      /* [init] bytes back to its page's first descriptor */
  _Atomic(uintptr_t) tid;     /* [atomic] owning thread (| 1 when in_full), 0 if none */
  bmm_block_t *local_free;    /* [owner] blocks freed by the owner */
  uintptr_t start_word;       /* [init] first byte of the page: bmm__page_start */
  uint16_t used;              /* [owner] blocks out, including thread_free (at most 4096) */
  /* On this line for the free path's test of an emptied page (its queue:
   * page_queue_index). */
  uint16_t class_idx;         /* [init] size class, small/medium pages */
  /* 32 bits where the free fast path compares it with a block index: one
   * instruction (reserved, which it no longer reads, has 16). */
  uint32_t capacity;          /* [owner] blocks carved so far (stored atomically) */
  uint32_t block_inv;         /* [init] inverse of block_size's odd part mod 2^32 */
  uint8_t in_full;            /* [owner] page sits in heap->full (also tid bit 0) */
  _Atomic(uint8_t) kind;      /* [atomic] bmm_page_kind_t */
  uint8_t block_shift;        /* [init] trailing zero bits of block_size */
  uint8_t align_log;          /* [init] aligned pages: the class's natural alignment, log2 */
  bmm_block_t *free;          /* [owner] blocks ready to hand out */
  uint64_t key;               /* [init] secure mode: encodes links, canaries */
  /* Second cache line: slow paths, and block_size. */
  uint32_t units;             /* [init] units the page spans */
  uint16_t installed;         /* [owner] blocks put on `free` since the slow path last looked */
  _Atomic(uint16_t) sampled_at; /* [atomic] leak_sample: the recorded block's index, or ANY */
  size_t block_size;          /* [init] bytes per block (usable size) */
  _Atomic(uintptr_t) thread_free; /* [atomic] remote frees | BMM_DF_* */
  _Atomic(bmm_theap_t *) heap; /* [atomic] owning heap, NULL when abandoned */
  bmm_page_t *next;           /* [owner] heap queue links */
  bmm_page_t *prev;
  union {
    bmm_page_t *abandoned_next; /* link in the global abandoned list */
    /* An orphaned full page: the heap that gave it up. Only compared, never
     * followed (that heap may belong to another thread by now). */
    const bmm_theap_t *orphan_of;
  };
  uint16_t reserved;          /* [init] blocks that fit in the page */
  uint16_t live_acct;         /* [owner] `used` as last added to the class's live count */
  uint8_t guarded;            /* [init] secure mode: the page's last 4 KiB are PROT_NONE */
  _Atomic(uint8_t) sampled;   /* [atomic] leak_sample: live recorded blocks (255: sticky) */
};

/* ---- Arenas ---------------------------------------------------------- */

typedef enum bmm_region_kind_e {
  BMM_REGION_NONE = 0,
  BMM_REGION_ARENA = 1, /* a region with a bmm_arena_t at its start */
  BMM_REGION_BLOCK = 2, /* a block aligned to a region or more, no header:
                           found in the region-block registry (arena.c) */
} bmm_region_kind_t;

/* Boundary tags and free-list links of the span at each page of an arena,
 * kept out of band so that free memory is never touched. Only a span's
 * first page (head) and last page (tail) entries are meaningful. */
typedef struct bmm_span_slot_s {
  uint32_t head; /* at a span's first page: pages << 1 | free */
  uint32_t tail; /* at a span's last page: pages << 1 | free */
  uint32_t next; /* free spans: bin list, first page + 1 (0: none) */
  uint32_t prev;
} bmm_span_slot_t;

/* An arena is one region: this header, then units. A huge block uses the
 * same header layout so that free() finds its descriptor the same way, but
 * only the one descriptor is ever touched. */
struct bmm_arena_s {
  uint32_t magic;        /* [init] BMM_ARENA_MAGIC or BMM_HUGE_MAGIC */
  uint32_t index;        /* [init] slot in the arena table */
  size_t map_size;       /* [init] bytes mapped from the OS for this region */
  uint8_t *map_base;     /* [init] start of that mapping */
  _Atomic(size_t) hint;  /* [atomic] lowest word that may have a free unit */
  _Atomic(size_t) used_units; /* [atomic] accounting */
  _Atomic(uint64_t) used[BMM_ARENA_WORDS];  /* [atomic] 1 = unit claimed */
  _Atomic(uint64_t) dirty[BMM_ARENA_WORDS]; /* [atomic] 1 = may hold committed memory */
  _Atomic(uint64_t) purge[BMM_ARENA_WORDS]; /* [atomic] 1 = freed, purge when due */
  _Atomic(int64_t) purge_deadline; /* [atomic] ms when marked units go, 0 if none */
  _Atomic(size_t) purged_bytes;    /* [atomic] accounting: decommitted so far */
  atomic_int released; /* [atomic] BMM_ARENA_LIVE, _RELEASED, _REVIVING, _RETIRED */
  /* Large spans: everything below is guarded by span_lock. */
  atomic_int span_lock;
  uint32_t span_bin_head[BMM_SPAN_BINS]; /* first page + 1 of a free span, 0: none */
  /* Written under span_lock; read without it (relaxed) to skip arenas
   * whose bins cannot serve a request. */
  _Atomic(uint64_t) span_bin_map[(BMM_SPAN_BINS + 63) / 64];
  bmm_span_slot_t spans[BMM_ARENA_PAGES];
  bmm_page_t pages[BMM_ARENA_UNITS] __attribute__((aligned(128)));
};

/* An arena whose units are all free gives its data range back to the OS
 * (RELEASED): all its unit bits stay set so nobody claims there, and its
 * region leaves the region map (other mappings may land in the range); the
 * header stays mapped for the arena table's scans. It is mapped
 * again (REVIVING, then LIVE) before a new arena is reserved, unless
 * someone else mapped the range meanwhile (RETIRED for good). */
enum { BMM_ARENA_LIVE, BMM_ARENA_RELEASED, BMM_ARENA_REVIVING, BMM_ARENA_RETIRED };

#define BMM_ARENA_MAGIC 0x41524e41u /* "ARNA" */
#define BMM_HUGE_MAGIC 0x45475548u  /* "HUGE" */
#define BMM_ARENA_HEADER_UNITS \
  ((sizeof(bmm_arena_t) + BMM_UNIT_SIZE - 1) / BMM_UNIT_SIZE)

/* Memory accounting, for one arena or for the whole process. */
typedef struct bmm_mem_stats_s {
  size_t reserved;  /* address space taken from the OS */
  size_t committed; /* of that, what may be backed by memory */
  size_t used;      /* of that, what pages and blocks use now */
  size_t purged;    /* bytes given back to the OS so far (cumulative) */
} bmm_mem_stats_t;

/* ---- Heaps ----------------------------------------------------------- */

/* Views of first-class heaps a thread finds without a lock (fheap.c). */
#define BMM_VIEW_CACHE 4

typedef struct bmm_page_queue_s {
  bmm_page_t *first;
  bmm_page_t *last;
} bmm_page_queue_t;

/* A thread's heap. Everything here is [owner] except delayed_free. Heaps are
 * recycled, never unmapped: a remote thread in BMM_DF_FREEING may still be
 * reading page->heap while the owner abandons (abandonment waits for it). */
struct bmm_theap_s {
  bmm_page_t *direct[BMM_DIRECT_COUNT]; /* (size+15)/16 -> page to try first */
  /* queues[c]: pages of class c for plain requests; queues[BMM_CLASS_COUNT
   * + c]: pages of class c that serve aligned requests (align_log != 0), so
   * that realloc knows which blocks must stay aligned. */
  bmm_page_queue_t queues[2 * BMM_CLASS_COUNT];
  bmm_page_queue_t full; /* pages with no free block, out of the search */
  _Atomic(bmm_block_t *) delayed_free; /* [atomic] blocks freed into full pages */
  uintptr_t tid;
  uint64_t heartbeat;  /* slow-path visits (paces the check build's heap checks) */
  uint32_t arena_hint; /* arena to claim fresh pages from first */
  /* Changes in blocks in use per size class not yet added to the shared
   * counts (stats.c): added BMM_LIVE_BATCH at a time, so that threads
   * working in one class do not contend for its counter. */
  int32_t live_pending[BMM_CLASS_COUNT];
  bmm_theap_t *pool_next; /* link in the recycled-heap pool */
  /* A thread's view of a first-class heap (fheap.c) has an owner; a
   * thread's default heap has none. Views are linked under the owner's
   * lock and never adopt abandoned pages: every page of a view holds
   * blocks of its owner only, which bmm_heap_destroy relies on. */
  struct bmm_heap *owner;
  bmm_theap_t *view_next;
  /* Default heaps only: the views this thread used last, by heap id (ids
   * are never reused, so an entry of a destroyed heap never matches). */
  struct {
    uint64_t id;
    bmm_theap_t *view;
  } view_cache[BMM_VIEW_CACHE];
  uint32_t view_cache_next;
  /* leak_sample (leak.c): bytes to go before the next record, and a cut
   * free list: the allocation that finds page leak_page's list empty is
   * the one to record; leak_rest (leak_rest_n blocks, counted as used
   * meanwhile) is then put back. */
  int64_t leak_left;
  uint64_t leak_rng;
  bmm_page_t *leak_page;
  bmm_block_t *leak_rest;
  uint32_t leak_rest_n;
  uint32_t leak_qi;
  bool leak_record_next;
  /* Secure mode's (bmm__secure_fast) own direct table, by the request with
   * its canary: (size+BMM_CANARY+15)/16 -> page, NULL for none. `direct` stays
   * empty then, so that the inline fast path never pops a secure list.
   * Kept away from the fields the default mode's fast paths and page
   * queues use, which stay where they were (micro fixed 64 measured 5%
   * slower with this table between them). */
  bmm_page_t *sdirect[BMM_DIRECT_COUNT];
  /* Kept when the struct is recycled (heap_make clears what is above):
   * blocks handed out per size class, counted a used-up free list at a
   * time by the slow path (the owner writes, bmm_stats_print reads), and
   * the link in the list of every heap struct ever made. */
  _Atomic(uint64_t) class_allocs[BMM_CLASS_COUNT];
  /* Large blocks this thread allocated and freed: counts and bytes. */
  _Atomic(uint64_t) large_stats[2][2]; /* [allocated, freed][count, bytes] */
  bmm_theap_t *all_next;
};

#endif /* BMM_TYPES_H */
