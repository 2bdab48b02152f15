/* rheap.c: the relocatable heap (API section 9): blocks reached through
 * handles, which compaction may move while they are unlocked.
 *
 * Owns: bmm_rheap_new/delete, bmm_ralloc, bmm_rrealloc, bmm_rlock,
 * bmm_runlock, bmm_rfree, bmm_rsize, bmm_rcompact, bmm_rheap_notify, and two
 * internal calls for tests and the replayer (bmm__rheap_counters,
 * bmm__rheap_check).
 *
 * Memory. Everything lives inside the heap's memory: the caller's buffer
 * (any address and length, not one byte outside it is touched), or `size`
 * bytes of OS memory (rounded up to pages) when mem is NULL. Nothing here
 * calls malloc. Layout, low to high addresses:
 *
 *   [header, hole lists | blocks ... top | wilderness | table_lo ... table]
 *
 * The header (struct bmm_rheap, at the first 16-aligned byte) and the heads
 * of the hole lists come first; blocks grow upwards from `base` to `top`;
 * the handle table grows downwards from the last 512-aligned byte, a chunk
 * of 512 bytes at a time, into the wilderness between `top` and
 * `table_lo`. At most 64 GiB (block offsets and sizes are 32-bit counts of
 * 16 bytes) and 2^30 handles.
 *
 * Overhead. Every byte of header and table is memory the program cannot
 * use, and real programs hold many small objects (python3 at its peak:
 * 660,000 objects of 63 bytes on average), so a handle costs 8 bytes of
 * table and a block 8 bytes of header: 16 bytes and the rounding to 16 in
 * all, what a first-fit heap spends on its 16-byte headers alone. (A first
 * version had 16-byte headers and 32-byte entries; replaying python3 into
 * it needed 1.85 times the live bytes, a first-fit heap 1.35.)
 *
 * Blocks. A block is a multiple of 16 bytes, at least 32, and starts 8
 * bytes before a 16-aligned address: the 8-byte header (the block's length
 * in 16-byte units, a FREE and a PREV_FREE flag, and for a live block the
 * index of its handle, so that compaction, which walks the blocks in
 * address order, can update the handle of every block it moves) is
 * followed by the payload, 16-aligned. A live block is exactly as long as
 * its request needs (8 + the size rounded up to 16, at least 32); the
 * size asked for is the block length less a tail (0 to 24 bytes) kept in
 * the handle. A free block of 32 bytes or more (a *hole*) is on a list
 * (32-bit links, offsets from `base`) and ends in a footer (its length),
 * so that freeing its right neighbour (whose PREV_FREE flag is set) merges
 * with it in O(1). A free block of 16 bytes (a *sliver*, left over when a
 * request takes all but 16 bytes of a hole) has a header and a footer and
 * no list: nothing fits into it, but it merges like a hole, and compaction
 * removes it. Two free blocks are never adjacent, and none touches the
 * wilderness: a free merges at once.
 *
 * Allocation is segregated fit: holes are kept in lists by size class
 * (exact for sizes below 1 KiB, eight classes per doubling above) with a
 * bitmap of non-empty lists. A request takes a hole of exactly its class
 * (below 1 KiB), or the first of a few in its own class that is large
 * enough, or any hole of the next non-empty larger class, splitting off the
 * rest; failing that it takes the lowest bytes of the wilderness (bump
 * allocation). When neither has room, the heap is compacted and the request
 * tried once more before ENOMEM.
 *
 * Compaction is one pass over the blocks in address order, from the lowest
 * free block (`first_hole`, a block boundary at or below every free block)
 * to `top`: each unlocked block slides down to the cursor; a locked block
 * stays and the cursor jumps over it, leaving a gap below it. Until the
 * next locked block, later blocks that fit into that gap go there instead
 * of to the cursor, so the gap is filled in address order; what is left of
 * it becomes a hole or a sliver. All moves go downwards (a block's new
 * place lies below its old one, in space already passed), so memmove
 * semantics suffice. The pass costs O(blocks above first_hole + bytes
 * moved), and afterwards every free byte is in the wilderness except the
 * leftovers of the gaps below locked blocks. Handles never move, so they
 * stay valid.
 *
 * Handles. A bmm_handle_t * is the address of the handle's 8-byte table
 * entry plus a 3-bit tag, the entry's generation when it was handed out.
 * The generation is bumped when the handle is freed, so a freed handle is
 * always refused until its entry is reused, and after that 7 times in 8
 * (its generation then matches again only every 8th reuse; entries are
 * reused first in, first out, so a freed entry waits behind all other free
 * ones). The handle also leads to its heap, since the API passes handles
 * without one: table chunks are 512-aligned, and each begins with two words,
 * `link` (heap ^ chunk ^ a key whose top bits are set) and `check` (link ^
 * a second key). Masking a handle gives its chunk, which lies in the same
 * page as the handle, so checking it reads nothing but memory the handle
 * itself is in; a pointer that was never a handle fails the pair (or
 * decodes to a non-canonical or misaligned heap address) before the heap's
 * magic number is read; then, under the heap's lock, the chunk must be in
 * the heap's table and the entry live with the handle's tag.
 *
 * Detected misuse (a stale or foreign handle, unlocking a handle that is
 * not locked, a heap pointer that is not a live heap) is reported with one
 * line by bmm__error, which aborts unless abort_on_error=0; then the call
 * returns EINVAL (bmm_rsize 0) having changed nothing. A handle of a
 * deleted heap is detected while the heap's memory still holds the heap's
 * header (bmm_rheap_delete marks it dead): for a caller buffer, until the
 * caller reuses it. Once an OS heap is unmapped, using its handles faults.
 * A new heap built in the same buffer may take an old handle for one of
 * its own when the tags match (the tags of a new heap start from a
 * process-wide counter). A wild pointer into unreadable memory faults, as
 * free() of one may.
 *
 * Rules the API leaves open, decided here:
 *  - bmm_rsize gives the size last asked for (ralloc/rrealloc).
 *  - bmm_rfree of a locked handle returns EBUSY and frees nothing: the
 *    pointers the locks gave out are still in use. bmm_rfree(NULL) is a
 *    no-op returning 0, like free(NULL); the other calls return EINVAL for
 *    a NULL handle or heap without a diagnostic.
 *  - bmm_rrealloc grows in place into a following free block or the
 *    wilderness; otherwise it moves the block, which a locked block cannot:
 *    ENOMEM (errno ENOMEM), block untouched. An unlocked block moves to a
 *    free block large enough; failing that, the heap is compacted, and if
 *    the block still cannot grow or move, the blocks after it (none of
 *    them locked) are rotated below it so that it ends the heap and grows
 *    into the wilderness: growth fails only when the free bytes in all are
 *    fewer than it needs, or a locked block is in the way.
 *  - Lock counts go up to 2^24 - 2 (then EOVERFLOW).
 *  - Size 0 is a valid request (a 32-byte block). A request that overflows
 *    the size arithmetic or exceeds the heap is ENOMEM at once.
 *
 * Fullness. fill = (bytes of live blocks + bytes of the handle table) /
 * (bytes from `base` to the end of the table): the part of the heap that
 * compaction cannot give back. bmm_rheap_notify(rh, low, high, fn, arg)
 * (thresholds clamped to [0, 1], low to at most high) arms both. After an
 * allocation (bmm_ralloc, or a bmm_rrealloc that grew the block) that finds
 * fill >= low while the low threshold is armed, fn(rh, BMM_FULLNESS_LOW,
 * arg) is called; it returns BMM_COMPACT_NOW to have the heap compacted at
 * once (any other value: later). Likewise fill >= high calls fn(rh,
 * BMM_FULLNESS_HIGH, arg) and then compacts whatever fn returns. A call
 * disarms its threshold, which is armed again when a free or shrink takes
 * the fill below it: one call per upward crossing, however long the fill
 * stays above. An allocation that crosses both calls LOW, then HIGH, and
 * compacts once. fn runs in the allocating thread after the heap's lock is
 * released, before bmm_ralloc returns (the new block is unlocked, and may
 * move); it may call any function of this heap. fn NULL: no calls, but
 * crossing `high` still compacts. A new heap has no thresholds;
 * bmm_rheap_notify arms both whatever the fill is.
 *
 * Concurrency. One spin lock per heap (lock.c: test and test-and-set,
 * pausing rounds that double, then yielding), taken by every call, rlock and
 * runlock included, and never held while fn runs. Why one lock: compaction
 * may move any unlocked block and rewrite its handle, so every call that
 * reads a block's address (rlock) or changes the set of blocks must exclude
 * it, and a lock-free rlock would need a protocol with every move anyway.
 * The critical sections are short (a list operation, a few stores), except
 * compaction, which is linear in the blocks above the lowest free block and
 * the bytes it moves, and which the program controls through the
 * thresholds and bmm_rcompact. No other lock is taken while it is held
 * (bmm__error runs after it is released). Chunk headers are written once,
 * before any of their entries is handed out, and read without the lock
 * (atomically, relaxed: each word is checked by its own value). The
 * pointer from bmm_rlock may be used on any thread until the matching
 * bmm_runlock. bmm_rheap_delete must not overlap any other call on the same
 * heap. As with any lock, a child forked while another thread held it finds
 * it held for ever.
 */
#include <string.h>

#include "internal.h"

/* ---- Geometry and tuning ------------------------------------------------ */

/* Blocks: 16-byte units, the payload 16-aligned (BMM_MIN_ALIGN) after an
 * 8-byte header. */
#define RH_UNIT ((size_t)16)
#define RH_HEADER ((size_t)8)
/* Smallest block: a hole needs its header, two links and a footer. */
#define RH_MIN_BLOCK ((size_t)32)
/* A free block too short for the lists: header and footer only. */
#define RH_SLIVER ((size_t)16)

/* Block header `info`: flags and, for a live block, its handle's index. */
#define RH_FREE UINT32_C(0x80000000)
#define RH_PREV_FREE UINT32_C(0x40000000)
#define RH_INDEX_MASK UINT32_C(0x3FFFFFFF)
#define RH_NONE UINT32_MAX /* no hole / no entry */

/* Handle table chunks: 512 bytes, 512-aligned, 64 slots of 8 bytes of
 * which the first two hold the chunk header (link, check). 512 bytes keeps
 * the table's growth steps small for small heaps and the header's cost at
 * 1/32 of the table. Entry index = chunk number << 6 | slot. */
#define RH_CHUNK ((size_t)512)
#define RH_CHUNK_SHIFT 6
#define RH_CHUNK_SLOTS ((uint32_t)1 << RH_CHUNK_SHIFT)
#define RH_FIRST_SLOT 2
#define RH_MAX_CHUNKS ((size_t)1 << (30 - RH_CHUNK_SHIFT))

/* Entry `state`: lock count (24 bits; all ones for a free entry), tag (3
 * bits) and tail (5 bits: block length - header - size asked for, 0..24). */
#define RH_LOCKS_MASK UINT32_C(0x00FFFFFF)
#define RH_ENTRY_FREE RH_LOCKS_MASK
#define RH_LOCKS_MAX (RH_LOCKS_MASK - 1)
#define RH_TAG_SHIFT 24
#define RH_TAG_MASK UINT32_C(7)
#define RH_TAIL_SHIFT 27

/* Hole classes: sizes in 16-byte units u; u < 64 (below 1 KiB) one class
 * per size, where objects are most common and an exact fit costs one list
 * head; above, 8 classes per doubling (a class spans 1/8 of its sizes).
 * The largest u (2^32 - 1) is class 263. */
#define RH_EXACT_UNITS 64
#define RH_CLASS_MAX 272
#define RH_CLASS_WORDS ((RH_CLASS_MAX + 63) / 64)
/* Holes looked at in a request's own (inexact) class before it moves on
 * to the next non-empty class, where every hole is large enough. */
#define RH_FIT_SCAN 8

/* Chunk link = heap ^ chunk ^ RH_LINK_KEY; check = link ^ RH_CHECK_KEY.
 * The link key's top bits are set, so a word holding a user-space address
 * or a small number decodes to a non-canonical heap address; the check
 * rejects any other pair of words but one in 2^64. */
#define RH_LINK_KEY ((uintptr_t)0xB5AD4ECE9D3A7F60ULL)
#define RH_CHECK_KEY ((uintptr_t)0x3C6EF372FE94F82BULL)
#define RH_MAGIC ((uint64_t)0x7268656170524832ULL) /* "rheapRH2" */
#define RH_DEAD ((uint64_t)0x6465616472686561ULL)  /* "deadrhea" */


/* Debug builds fill fresh payloads with 0xD0 and freed ones with 0xDF. */
static const bool rh_debug_fill = BMM_DEBUG >= 1;

/* ---- Types ---------------------------------------------------------------- */

/* The header of every block. */
typedef struct rh_block_s {
  uint32_t units; /* length / 16 */
  uint32_t info;  /* RH_FREE | RH_PREV_FREE | handle index (live) */
} rh_block_t;

/* A hole: the header, then its list links; its last 4 bytes are `units`
 * again (the footer). A sliver has the header and the footer only. */
typedef struct rh_hole_s {
  uint32_t units;
  uint32_t info;
  uint32_t next; /* offsets from base in units; RH_NONE ends the list */
  uint32_t prev;
} rh_hole_t;

/* A handle table entry. Owned by the heap's lock. */
typedef struct rh_entry_s {
  uint32_t block; /* live: the block's offset from base in units; free: next free index */
  uint32_t state; /* locks | tag << 24 | tail << 27 */
} rh_entry_t;

/* The first two slots of every table chunk. Written once when the chunk
 * is made, read without the lock. */
typedef struct rh_chunk_s {
  _Atomic(uintptr_t) link;
  _Atomic(uintptr_t) check;
} rh_chunk_t;

_Static_assert(sizeof(rh_block_t) == RH_HEADER, "block header");
_Static_assert(sizeof(rh_hole_t) + sizeof(uint32_t) <= RH_MIN_BLOCK, "a hole holds its links");
_Static_assert(sizeof(rh_entry_t) == 8, "8-byte entries: 3 bits of tag");
_Static_assert(sizeof(rh_chunk_t) == RH_FIRST_SLOT * sizeof(rh_entry_t), "chunk header");
_Static_assert(RH_CHUNK == RH_CHUNK_SLOTS * sizeof(rh_entry_t), "chunk geometry");
_Static_assert(RH_CHUNK <= 4096, "a chunk never spans pages: a handle's chunk is in its page");

/* What a bmm_handle_t * points at: a byte of the entry (entry + tag). The
 * type has alignment 1, so every tagged value is a valid pointer to it. */
struct bmm_handle {
  unsigned char opaque;
};

struct bmm_rheap {
  _Atomic(uint64_t) magic; /* RH_MAGIC; RH_DEAD after delete */
  atomic_int lock;
  bool os_memory; /* mem came from bmm__os_reserve_aligned */
  void *mem;      /* what bmm_rheap_new was given (or mapped) */
  size_t mem_size;
  unsigned char *base;       /* first block; 8 below a 16-aligned address */
  unsigned char *top;        /* end of the last block; the wilderness starts here */
  unsigned char *first_hole; /* a block boundary (or top) at or below every free block */
  unsigned char *table_lo;   /* lowest table chunk */
  unsigned char *table_end;  /* end of the table, 512-aligned: the end of the heap */
  uint32_t free_head;        /* FIFO of free entries, by index */
  uint32_t free_tail;
  uint32_t tag_seed; /* tag of the entries of a new chunk */
  size_t capacity;   /* bytes from base to table_end */
  size_t live_bytes; /* bytes of live blocks, headers included */
  size_t live_blocks;
  size_t hole_count; /* listed holes (slivers are not listed) */
  /* Fullness notification (see the top). */
  size_t low_bytes, high_bytes; /* SIZE_MAX: off */
  bool low_armed, high_armed;
  bmm_fullness_fn *fn;
  void *fn_arg;
  /* Counters, for bmm__rheap_counters. */
  size_t compactions, bytes_moved;
  /* Hole lists by class: heads right after this header. */
  size_t nclasses;
  uint64_t class_map[RH_CLASS_WORDS];
  uint32_t *bins;
};

/* Internal calls for tests and tools/bmm-replay.c (their prototypes belong
 * in internal.h, under rheap.c). */
void bmm__rheap_counters(bmm_rheap_t *rh, size_t *used, size_t *capacity, size_t *compactions,
                         size_t *bytes_moved);
bool bmm__rheap_check(bmm_rheap_t *rh);

/* Process-wide source of tag seeds: handles of a deleted heap do not carry
 * the tags of a new heap made in the same buffer (up to the 3 bits). */
static _Atomic(uint32_t) rh_seed_counter;

/* ---- Small helpers ------------------------------------------------------- */

static inline unsigned char *rh_bytes(void *p) {
  return (unsigned char *)p;
}

static inline rh_block_t *rh_block_at(unsigned char *p) {
  return (rh_block_t *)(void *)p;
}

static inline size_t rh_size(const rh_block_t *b) {
  return (size_t)b->units * RH_UNIT;
}

static inline bool rh_is_free(const rh_block_t *b) {
  return (b->info & RH_FREE) != 0;
}

static inline uint32_t rh_off(const bmm_rheap_t *rh, const unsigned char *p) {
  return (uint32_t)((size_t)(p - rh->base) / RH_UNIT);
}

static inline unsigned char *rh_at(const bmm_rheap_t *rh, uint32_t off) {
  return rh->base + (size_t)off * RH_UNIT;
}

static inline rh_hole_t *rh_hole_at(const bmm_rheap_t *rh, uint32_t off) {
  return (rh_hole_t *)(void *)rh_at(rh, off);
}

/* Block bytes for a request of `size`: the header, the size rounded up to
 * 16, at least RH_MIN_BLOCK; 0 when that overflows. */
static inline size_t rh_need(size_t size) {
  if (size > SIZE_MAX - RH_HEADER - RH_UNIT) return 0;
  size_t need = (size + RH_HEADER + RH_UNIT - 1) & ~(RH_UNIT - 1);
  return need < RH_MIN_BLOCK ? RH_MIN_BLOCK : need;
}

static inline size_t rh_used(const bmm_rheap_t *rh) {
  return rh->live_bytes + (size_t)(rh->table_end - rh->table_lo);
}

static inline uint32_t rh_footer(const unsigned char *end) {
  uint32_t v;
  memcpy(&v, end - sizeof v, sizeof v);
  return v;
}

static inline void rh_set_footer(unsigned char *end, uint32_t units) {
  memcpy(end - sizeof units, &units, sizeof units);
}

/* ---- Entries ---------------------------------------------------------------- */

static inline rh_entry_t *rh_entry_at(const bmm_rheap_t *rh, uint32_t index) {
  unsigned char *chunk = rh->table_end - ((size_t)(index >> RH_CHUNK_SHIFT) + 1) * RH_CHUNK;
  return (rh_entry_t *)(void *)(chunk + (index & (RH_CHUNK_SLOTS - 1)) * sizeof(rh_entry_t));
}

static inline uint32_t rh_entry_index(const bmm_rheap_t *rh, const rh_entry_t *e) {
  uintptr_t a = (uintptr_t)e, chunk = a & ~(uintptr_t)(RH_CHUNK - 1);
  size_t k = (size_t)((uintptr_t)rh->table_end - chunk) / RH_CHUNK - 1;
  return (uint32_t)(k << RH_CHUNK_SHIFT) | (uint32_t)((a - chunk) / sizeof(rh_entry_t));
}

static inline uint32_t rh_locks(const rh_entry_t *e) {
  return e->state & RH_LOCKS_MASK;
}

static inline uint32_t rh_tag(const rh_entry_t *e) {
  return (e->state >> RH_TAG_SHIFT) & RH_TAG_MASK;
}

static inline uint32_t rh_tail(const rh_entry_t *e) {
  return e->state >> RH_TAIL_SHIFT;
}

static inline void rh_set_state(rh_entry_t *e, uint32_t locks, uint32_t tag, uint32_t tail) {
  e->state = locks | (tag & RH_TAG_MASK) << RH_TAG_SHIFT | tail << RH_TAIL_SHIFT;
}

static inline rh_block_t *rh_entry_block(const bmm_rheap_t *rh, const rh_entry_t *e) {
  return rh_block_at(rh_at(rh, e->block));
}

/* The size asked for: block length less header and tail. */
static inline size_t rh_entry_size(const bmm_rheap_t *rh, const rh_entry_t *e) {
  return rh_size(rh_entry_block(rh, e)) - RH_HEADER - rh_tail(e);
}

static inline bmm_handle_t *rh_handle_of(rh_entry_t *e) {
  return (bmm_handle_t *)(void *)(rh_bytes(e) + rh_tag(e));
}

/* ---- The spin lock ------------------------------------------------------ */

static inline void rh_lock(bmm_rheap_t *rh) {
  bmm__spin_lock(&rh->lock);
}

static inline void rh_unlock(bmm_rheap_t *rh) {
  bmm__spin_unlock(&rh->lock);
}

/* ---- Free blocks ---------------------------------------------------------- */

static inline size_t rh_class_of(size_t units) {
  if (units < RH_EXACT_UNITS) return units;
  size_t b = 63 - (size_t)__builtin_clzll((unsigned long long)units); /* >= 6 */
  return RH_EXACT_UNITS + ((b - 6) << 3) + ((units >> (b - 3)) & 7);
}

/* The first non-empty class at or above c, or nclasses. */
static size_t rh_class_next(const bmm_rheap_t *rh, size_t c) {
  while (c < rh->nclasses) {
    uint64_t w = rh->class_map[c >> 6] >> (c & 63);
    if (w != 0) return c + (size_t)__builtin_ctzll(w);
    c = (c | 63) + 1;
  }
  return rh->nclasses;
}

/* Makes [p, p + size) a free block: a listed hole, or a sliver. Its left
 * neighbour is live (or it is the first block), so PREV_FREE is clear; the
 * caller sets its right neighbour's PREV_FREE. */
static void rh_free_block_make(bmm_rheap_t *rh, unsigned char *p, size_t size) {
  rh_hole_t *h = (rh_hole_t *)(void *)p;
  h->units = (uint32_t)(size / RH_UNIT);
  h->info = RH_FREE;
  rh_set_footer(p + size, h->units);
  if (p < rh->first_hole) rh->first_hole = p;
  if (size < RH_MIN_BLOCK) return; /* a sliver: no list */
  size_t c = rh_class_of(h->units);
  bmm_assert(c < rh->nclasses);
  uint32_t off = rh_off(rh, p);
  h->prev = RH_NONE;
  h->next = rh->bins[c];
  if (h->next != RH_NONE) rh_hole_at(rh, h->next)->prev = off;
  rh->bins[c] = off;
  rh->class_map[c >> 6] |= (uint64_t)1 << (c & 63);
  rh->hole_count++;
}

/* Takes free block p off its list (a sliver is on none). */
static void rh_free_block_unlink(bmm_rheap_t *rh, unsigned char *p) {
  rh_hole_t *h = (rh_hole_t *)(void *)p;
  if ((size_t)h->units * RH_UNIT < RH_MIN_BLOCK) return;
  size_t c = rh_class_of(h->units);
  if (h->prev != RH_NONE)
    rh_hole_at(rh, h->prev)->next = h->next;
  else
    rh->bins[c] = h->next;
  if (h->next != RH_NONE) rh_hole_at(rh, h->next)->prev = h->prev;
  if (rh->bins[c] == RH_NONE) rh->class_map[c >> 6] &= ~((uint64_t)1 << (c & 63));
  rh->hole_count--;
}

/* A hole of at least `need` bytes, or NULL. */
static rh_hole_t *rh_hole_find(bmm_rheap_t *rh, size_t need) {
  size_t c = rh_class_of(need / RH_UNIT);
  if (c >= rh->nclasses) return NULL;
  uint32_t off = rh->bins[c];
  if (c < RH_EXACT_UNITS) {
    if (off != RH_NONE) return rh_hole_at(rh, off); /* all of this class have this size */
  } else {
    for (unsigned i = 0; off != RH_NONE && i < RH_FIT_SCAN; i++) {
      rh_hole_t *h = rh_hole_at(rh, off);
      if ((size_t)h->units * RH_UNIT >= need) return h;
      off = h->next;
    }
  }
  c = rh_class_next(rh, c + 1);
  return c < rh->nclasses ? rh_hole_at(rh, rh->bins[c]) : NULL;
}

/* Frees [p, p + size), merging with a free block before it (prev_free), a
 * free block after it, or the wilderness. */
static void rh_release(bmm_rheap_t *rh, unsigned char *p, size_t size, bool prev_free) {
  if (rh_debug_fill) memset(p + RH_HEADER, BMM_DEBUG_FILL_FREE, size - RH_HEADER);
  unsigned char *end = p + size;
  if (prev_free) {
    size_t prev_size = (size_t)rh_footer(p) * RH_UNIT;
    p -= prev_size;
    size += prev_size;
    rh_free_block_unlink(rh, p);
  }
  if (end == rh->top) {
    rh->top = p; /* into the wilderness */
    if (rh->first_hole > p) rh->first_hole = p;
    return;
  }
  rh_block_t *next = rh_block_at(end);
  if (rh_is_free(next)) {
    size += rh_size(next);
    rh_free_block_unlink(rh, end);
  } else {
    next->info |= RH_PREV_FREE;
  }
  rh_free_block_make(rh, p, size);
}

/* Live block b is longer than `need`: the rest is freed. */
static void rh_trim(bmm_rheap_t *rh, rh_block_t *b, size_t need) {
  size_t size = rh_size(b);
  if (size == need) return;
  b->units = (uint32_t)(need / RH_UNIT);
  rh->live_bytes -= size - need;
  rh_release(rh, rh_bytes(b) + need, size - need, false);
}

/* ---- Handle table ------------------------------------------------------- */

/* Adds a table chunk below the table (512 bytes of the wilderness), its
 * entries appended to the free list; false when there is no room. */
static bool rh_chunk_add(bmm_rheap_t *rh) {
  if ((size_t)(rh->table_lo - rh->top) < RH_CHUNK) return false;
  size_t k = (size_t)(rh->table_end - rh->table_lo) / RH_CHUNK;
  if (k >= RH_MAX_CHUNKS) return false;
  unsigned char *chunk = rh->table_lo - RH_CHUNK;
  rh_chunk_t *c = (rh_chunk_t *)(void *)chunk;
  uintptr_t link = (uintptr_t)rh ^ (uintptr_t)chunk ^ RH_LINK_KEY;
  atomic_store_explicit(&c->link, link, memory_order_relaxed);
  atomic_store_explicit(&c->check, link ^ RH_CHECK_KEY, memory_order_relaxed);
  rh->table_lo = chunk;
  uint32_t first = (uint32_t)(k << RH_CHUNK_SHIFT);
  for (uint32_t j = RH_FIRST_SLOT; j < RH_CHUNK_SLOTS; j++) {
    rh_entry_t *e = rh_entry_at(rh, first | j);
    rh_set_state(e, RH_ENTRY_FREE, rh->tag_seed, 0);
    e->block = j + 1 < RH_CHUNK_SLOTS ? (first | (j + 1)) : RH_NONE;
  }
  if (rh->free_tail != RH_NONE)
    rh_entry_at(rh, rh->free_tail)->block = first | RH_FIRST_SLOT;
  else
    rh->free_head = first | RH_FIRST_SLOT;
  rh->free_tail = first | (RH_CHUNK_SLOTS - 1);
  return true;
}

/* The oldest free entry (one must exist). */
static uint32_t rh_entry_take(bmm_rheap_t *rh) {
  uint32_t i = rh->free_head;
  rh_entry_t *e = rh_entry_at(rh, i);
  rh->free_head = e->block;
  if (rh->free_head == RH_NONE) rh->free_tail = RH_NONE;
  return i;
}

/* A freed entry goes to the tail: reused last. */
static void rh_entry_put(bmm_rheap_t *rh, uint32_t i) {
  rh_entry_t *e = rh_entry_at(rh, i);
  rh_set_state(e, RH_ENTRY_FREE, rh_tag(e) + 1, 0);
  e->block = RH_NONE;
  if (rh->free_tail != RH_NONE)
    rh_entry_at(rh, rh->free_tail)->block = i;
  else
    rh->free_head = i;
  rh->free_tail = i;
}

/* ---- Validation ------------------------------------------------------------ */

/* rh itself if it is a live heap, else NULL with *why set. Reads only the
 * magic. */
static bmm_rheap_t *rh_checked_heap(bmm_rheap_t *rh, const char **why) {
  if (((uintptr_t)rh & (RH_UNIT - 1)) != 0) {
    *why = "not a relocatable heap";
    return NULL;
  }
  uint64_t magic = atomic_load_explicit(&rh->magic, memory_order_relaxed);
  if (magic == RH_MAGIC) return rh;
  *why = magic == RH_DEAD ? "relocatable heap already deleted" : "not a relocatable heap";
  return NULL;
}

/* The heap a handle leads to, found without the lock, or NULL with *why
 * set. Reads the two words at the start of the handle's 512-byte block
 * (in the handle's own page), then the heap's magic. */
static bmm_rheap_t *rh_heap_of_handle(const bmm_handle_t *h, const char **why) {
  uintptr_t v = (uintptr_t)h, chunk = v & ~(uintptr_t)(RH_CHUNK - 1);
  *why = "not a handle";
  if (v - chunk < RH_FIRST_SLOT * sizeof(rh_entry_t)) return NULL; /* the chunk header */
  const rh_chunk_t *c = (const rh_chunk_t *)chunk;
  uintptr_t link = atomic_load_explicit(&c->link, memory_order_relaxed);
  if (atomic_load_explicit(&c->check, memory_order_relaxed) != (link ^ RH_CHECK_KEY)) return NULL;
  uintptr_t rh = link ^ chunk ^ RH_LINK_KEY;
  /* The header is 16-aligned, below its table, at a user-space address
   * (below 2^56 even with 57-bit virtual addresses). */
  if ((rh & (RH_UNIT - 1)) != 0 || rh >= chunk || (rh >> 56) != 0) return NULL;
  uint64_t magic = atomic_load_explicit(&((bmm_rheap_t *)rh)->magic, memory_order_relaxed);
  if (magic == RH_MAGIC) return (bmm_rheap_t *)rh;
  if (magic == RH_DEAD) *why = "handle of a deleted heap";
  return NULL;
}

/* Under the heap's lock: the index of h's live entry, or RH_NONE with *why
 * set. */
static uint32_t rh_entry_of_handle(bmm_rheap_t *rh, const bmm_handle_t *h, const char **why) {
  uintptr_t v = (uintptr_t)h, chunk = v & ~(uintptr_t)(RH_CHUNK - 1);
  if (chunk < (uintptr_t)rh->table_lo || chunk >= (uintptr_t)rh->table_end) {
    *why = "not a handle";
    return RH_NONE;
  }
  const rh_entry_t *e = (const rh_entry_t *)(v & ~(uintptr_t)RH_TAG_MASK);
  if (rh_locks(e) == RH_ENTRY_FREE || rh_tag(e) != (v & RH_TAG_MASK)) {
    *why = "stale handle";
    return RH_NONE;
  }
  return rh_entry_index(rh, e);
}

/* Locks the heap of h and finds h's entry; NULL after reporting the misuse
 * (the lock is then not held). The common prologue of the handle calls. */
static rh_entry_t *rh_enter(const bmm_handle_t *h, const char *call, bmm_rheap_t **out) {
  if (h == NULL) { /* not misuse to report: just EINVAL */
    errno = EINVAL;
    return NULL;
  }
  const char *why = NULL;
  bmm_rheap_t *rh = rh_heap_of_handle(h, &why);
  uint32_t i = RH_NONE;
  if (rh != NULL) {
    rh_lock(rh);
    i = rh_entry_of_handle(rh, h, &why);
    if (i == RH_NONE) rh_unlock(rh);
  }
  if (i == RH_NONE) {
    bmm__error(h, call, why);
    errno = EINVAL;
    return NULL;
  }
  *out = rh;
  return rh_entry_at(rh, i);
}

/* ---- Fullness ------------------------------------------------------------- */

enum { RH_FIRE_LOW = 1, RH_FIRE_HIGH = 2 };

/* After an allocation, under the lock: the thresholds it crossed. */
static unsigned rh_fullness_up(bmm_rheap_t *rh) {
  size_t used = rh_used(rh);
  unsigned fire = 0;
  if (rh->low_armed && used >= rh->low_bytes) {
    rh->low_armed = false;
    fire |= RH_FIRE_LOW;
  }
  if (rh->high_armed && used >= rh->high_bytes) {
    rh->high_armed = false;
    fire |= RH_FIRE_HIGH;
  }
  return fire;
}

/* After a free or shrink, under the lock: re-arm what the fill fell below. */
static void rh_fullness_down(bmm_rheap_t *rh) {
  size_t used = rh_used(rh);
  if (!rh->high_armed && rh->high_bytes != SIZE_MAX && used < rh->high_bytes) rh->high_armed = true;
  if (!rh->low_armed && rh->low_bytes != SIZE_MAX && used < rh->low_bytes) rh->low_armed = true;
}

static size_t rh_compact_locked(bmm_rheap_t *rh);

/* Called without the lock, with what rh_fullness_up returned and the
 * callback it saw under the lock. */
static void rh_fullness_fire(bmm_rheap_t *rh, unsigned fire, bmm_fullness_fn *fn, void *arg) {
  bool compact = (fire & RH_FIRE_HIGH) != 0;
  if ((fire & RH_FIRE_LOW) && fn != NULL && fn(rh, BMM_FULLNESS_LOW, arg) == BMM_COMPACT_NOW)
    compact = true;
  if ((fire & RH_FIRE_HIGH) && fn != NULL) (void)fn(rh, BMM_FULLNESS_HIGH, arg);
  if (compact) {
    rh_lock(rh);
    rh_compact_locked(rh);
    rh_unlock(rh);
  }
}

/* Ends a call that allocated or grew a block, returning 0: notes under the
 * lock the thresholds the fill crossed, unlocks, and only then runs the
 * callback, which may call back into the heap. */
static int rh_unlock_grown(bmm_rheap_t *rh) {
  unsigned fire = rh_fullness_up(rh);
  bmm_fullness_fn *fn = rh->fn;
  void *arg = rh->fn_arg;
  bmm_assert_expensive(bmm__rheap_check(rh));
  rh_unlock(rh);
  if (bmm_unlikely(fire != 0)) rh_fullness_fire(rh, fire, fn, arg);
  return 0;
}

/* Ends a call that found no room. */
static int rh_unlock_nomem(bmm_rheap_t *rh) {
  rh_unlock(rh);
  errno = ENOMEM;
  return ENOMEM;
}

/* ---- Compaction ---------------------------------------------------------- */

/* Closes the gap [at, locked) below a locked block: what is left of it
 * becomes a free block. */
static void rh_gap_close(bmm_rheap_t *rh, unsigned char *at, unsigned char *locked) {
  rh_block_t *b = rh_block_at(locked);
  if (at == locked) {
    b->info &= ~RH_PREV_FREE;
  } else {
    rh_free_block_make(rh, at, (size_t)(locked - at));
    b->info |= RH_PREV_FREE;
  }
}

static size_t rh_compact_locked(bmm_rheap_t *rh) {
  unsigned char *p = rh->first_hole, *top = rh->top, *dst = p;
  rh->compactions++;
  if (p >= top) return 0; /* nothing free below top: nothing can move */
  /* Every free block lies at or above first_hole: all are rebuilt. */
  memset(rh->bins, 0xFF, rh->nclasses * sizeof *rh->bins); /* RH_NONE */
  memset(rh->class_map, 0, sizeof rh->class_map);
  rh->hole_count = 0;
  rh->first_hole = top;                       /* lowered again by what the gaps leave */
  unsigned char *gap = NULL, *gap_end = NULL; /* the open gap, below a locked block */
  size_t moved = 0;
  while (p < top) {
    rh_block_t *b = rh_block_at(p);
    size_t size = rh_size(b);
    unsigned char *next = p + size;
    if (rh_is_free(b)) {
      p = next;
      continue;
    }
    rh_entry_t *e = rh_entry_at(rh, b->info & RH_INDEX_MASK);
    if (rh_locks(e) != 0) {
      /* Pinned: it stays. The space below it is the new open gap. */
      if (gap != NULL) rh_gap_close(rh, gap, gap_end);
      gap = NULL;
      if (dst != p) {
        gap = dst;
        gap_end = p;
      } else {
        b->info &= ~RH_PREV_FREE;
      }
      dst = next;
      p = next;
      continue;
    }
    unsigned char *to;
    if (gap != NULL && size <= (size_t)(gap_end - gap)) {
      to = gap;
      gap += size;
    } else {
      to = dst;
      dst += size;
    }
    if (to != p) {
      /* Downwards, into bytes already passed: memmove semantics. (Not
       * bmm_move16: a block spans whole units from 8 bytes below one
       * 16-aligned address to 8 below another.) */
      memmove(to, p, size);
      moved += size;
      e->block = rh_off(rh, to);
    }
    rh_block_at(to)->info &= ~RH_PREV_FREE;
    p = next;
  }
  if (gap != NULL) rh_gap_close(rh, gap, gap_end);
  rh->top = dst;
  if (rh->first_hole > dst) rh->first_hole = dst;
  rh->bytes_moved += moved;
  bmm_assert_expensive(bmm__rheap_check(rh));
  return moved;
}

/* ---- Allocation ----------------------------------------------------------- */

/* A block of `need` bytes from a hole or the wilderness, or NULL. The
 * wilderness must keep `reserve` bytes (for a table chunk). */
static rh_block_t *rh_block_take(bmm_rheap_t *rh, size_t need, size_t reserve) {
  rh_hole_t *h = rh_hole_find(rh, need);
  if (h != NULL) {
    unsigned char *p = rh_bytes(h);
    size_t size = (size_t)h->units * RH_UNIT;
    rh_free_block_unlink(rh, p);
    if (size > need) {
      rh_free_block_make(rh, p + need, size - need); /* the right neighbour keeps PREV_FREE */
    } else {
      rh_block_at(p + size)->info &= ~RH_PREV_FREE; /* no free block ends at top */
    }
    rh_block_t *b = rh_block_at(p);
    b->units = (uint32_t)(need / RH_UNIT);
    b->info = 0;
    rh->live_bytes += need;
    return b;
  }
  size_t room = (size_t)(rh->table_lo - rh->top);
  if (room < reserve || room - reserve < need) return NULL;
  rh_block_t *b = rh_block_at(rh->top);
  if (rh->first_hole == rh->top) rh->first_hole += need; /* no free block below */
  rh->top += need;
  b->units = (uint32_t)(need / RH_UNIT);
  b->info = 0;
  rh->live_bytes += need;
  return b;
}

/* One attempt at a new handle for `size` bytes (a block of `need`); NULL
 * when the heap lacks the room (nothing changed then). */
static rh_entry_t *rh_alloc_locked(bmm_rheap_t *rh, size_t need, size_t size) {
  size_t reserve = rh->free_head == RH_NONE ? RH_CHUNK : 0;
  if ((size_t)(rh->table_lo - rh->top) < reserve) return NULL; /* no room for entries */
  if (rh_hole_find(rh, need) == NULL && (size_t)(rh->table_lo - rh->top) - reserve < need)
    return NULL;
  if (reserve != 0 && !rh_chunk_add(rh)) return NULL; /* at the table's size limit */
  rh_block_t *b = rh_block_take(rh, need, 0);
  bmm_assert(b != NULL);
  uint32_t i = rh_entry_take(rh);
  rh_entry_t *e = rh_entry_at(rh, i);
  b->info = i;
  e->block = rh_off(rh, rh_bytes(b));
  rh_set_state(e, 0, rh_tag(e), (uint32_t)(need - RH_HEADER - size));
  rh->live_blocks++;
  if (rh_debug_fill) memset(rh_bytes(b) + RH_HEADER, BMM_DEBUG_FILL_ALLOC, need - RH_HEADER);
  return e;
}

/* Grows live block b to `need` bytes where it stands; false if it cannot. */
static bool rh_grow_in_place(bmm_rheap_t *rh, rh_block_t *b, size_t need) {
  size_t cur = rh_size(b);
  unsigned char *end = rh_bytes(b) + cur;
  if (end == rh->top) {
    if ((size_t)(rh->table_lo - rh_bytes(b)) < need) return false;
    rh->top = rh_bytes(b) + need;
    if (rh->first_hole == end) rh->first_hole = rh->top; /* nothing free above b */
    b->units = (uint32_t)(need / RH_UNIT);
    rh->live_bytes += need - cur;
    return true;
  }
  rh_block_t *next = rh_block_at(end);
  if (!rh_is_free(next) || cur + rh_size(next) < need) return false;
  size_t grown = cur + rh_size(next);
  rh_free_block_unlink(rh, end);
  rh_block_at(rh_bytes(b) + grown)->info &= ~RH_PREV_FREE;
  b->units = (uint32_t)(grown / RH_UNIT);
  rh->live_bytes += grown - cur;
  /* The free block's start is no longer a block boundary. */
  if (rh->first_hole > rh_bytes(b)) rh->first_hole = rh_bytes(b);
  rh_trim(rh, b, need);
  return true;
}

/* Moves unlocked entry e's block to a new block of `need` bytes (longer
 * than the old one); false if there is no room for it. */
static bool rh_move_grow(bmm_rheap_t *rh, rh_entry_t *e, size_t need) {
  rh_block_t *b = rh_block_take(rh, need, 0);
  if (b == NULL) return false;
  rh_block_t *old = rh_entry_block(rh, e); /* after the take, which may clear its PREV_FREE */
  size_t old_size = rh_size(old);
  memcpy(rh_bytes(b) + RH_HEADER, rh_bytes(old) + RH_HEADER, old_size - RH_HEADER);
  if (rh_debug_fill) memset(rh_bytes(b) + old_size, BMM_DEBUG_FILL_ALLOC, need - old_size);
  b->info = old->info & RH_INDEX_MASK;
  e->block = rh_off(rh, rh_bytes(b));
  rh->live_bytes -= old_size;
  rh_release(rh, rh_bytes(old), old_size, (old->info & RH_PREV_FREE) != 0);
  return true;
}

/* Reverses the order of the 16-byte units in [lo, lo + 16 * n), each
 * unit's bytes kept in order (lo is 8 below a 16-aligned address). */
static void rh_reverse_units(unsigned char *lo, size_t n) {
  for (size_t i = 0, j = n; i + 1 < j; i++) {
    j--;
    unsigned char a[RH_UNIT], b[RH_UNIT];
    memcpy(a, lo + i * RH_UNIT, RH_UNIT);
    memcpy(b, lo + j * RH_UNIT, RH_UNIT);
    memcpy(lo + i * RH_UNIT, b, RH_UNIT);
    memcpy(lo + j * RH_UNIT, a, RH_UNIT);
  }
}

/* After a compaction, for an unlocked block e that must grow to `need`
 * but is neither last nor movable (the heap lacks room for old and new at
 * once): rotates [block, top) so that the blocks after it slide down by
 * its length and it becomes the last block, which can then grow into the
 * wilderness. Three reversals of the 16-byte units ([A R] -> [R A]) need
 * no buffer, and cost O(bytes after the block). False, with nothing
 * changed, when a locked block follows it or the wilderness would still
 * be too short. */
static bool rh_rotate_last(bmm_rheap_t *rh, rh_entry_t *e, size_t need) {
  unsigned char *p = rh_at(rh, e->block);
  size_t size = rh_size(rh_block_at(p));
  unsigned char *end = p + size;
  if (end == rh->top) return true;
  if ((size_t)(rh->table_lo - rh->top) < need - size) return false;
  for (unsigned char *q = end; q < rh->top; q += rh_size(rh_block_at(q))) {
    rh_block_t *b = rh_block_at(q);
    /* After a compaction a free block lies only below a locked one. */
    if (rh_is_free(b) || rh_locks(rh_entry_at(rh, b->info & RH_INDEX_MASK)) != 0) return false;
  }
  size_t rest = (size_t)(rh->top - end);
  rh_reverse_units(p, size / RH_UNIT);
  rh_reverse_units(end, rest / RH_UNIT);
  rh_reverse_units(p, (size + rest) / RH_UNIT);
  for (unsigned char *q = p; q < p + rest; q += rh_size(rh_block_at(q)))
    rh_entry_at(rh, rh_block_at(q)->info & RH_INDEX_MASK)->block = rh_off(rh, q);
  e->block = rh_off(rh, p + rest);
  rh->bytes_moved += size + rest;
  return true;
}

/* ---- The API ------------------------------------------------------------- */

BMM_API bmm_rheap_t *bmm_rheap_new(void *mem, size_t size) {
  bmm__process_init(); /* options (abort_on_error) come from the environment */
  bool os_memory = mem == NULL;
  if (size == 0) {
    errno = EINVAL;
    return NULL;
  }
  if (os_memory) {
    size_t ps = bmm__os_page_size();
    if (size > SIZE_MAX - ps) {
      errno = ENOMEM;
      return NULL;
    }
    size = (size + ps - 1) & ~(ps - 1);
    mem = bmm__os_reserve_aligned(size, ps, true);
    if (mem == NULL) {
      errno = ENOMEM;
      return NULL;
    }
  }
  uintptr_t lo = ((uintptr_t)mem + RH_UNIT - 1) & ~(uintptr_t)(RH_UNIT - 1);
  uintptr_t hi = (uintptr_t)mem + size;
  if (hi < (uintptr_t)mem) hi = UINTPTR_MAX; /* a buffer that wraps: stop at the top */
  hi &= ~(uintptr_t)(RH_CHUNK - 1);
  /* Header and bins: as many classes as the largest possible hole needs;
   * base 8 bytes below a 16-aligned address. A heap must hold a table
   * chunk and a block; at most 2^32 units. */
  size_t nclasses = 0, header = 0;
  if (hi > lo && hi - lo > sizeof(bmm_rheap_t) + RH_CHUNK + RH_MIN_BLOCK + RH_UNIT) {
    size_t units = (size_t)(hi - lo) / RH_UNIT;
    if (units <= UINT32_MAX) {
      nclasses = rh_class_of(units) + 1;
      header =
          ((sizeof(bmm_rheap_t) + nclasses * sizeof(uint32_t) + RH_UNIT - 1) & ~(RH_UNIT - 1)) +
          RH_HEADER;
    }
  }
  if (nclasses == 0 || hi - lo < header + RH_CHUNK + RH_MIN_BLOCK) {
    if (os_memory) bmm__os_release(mem, size);
    errno = EINVAL; /* too small a buffer, or beyond 64 GiB */
    return NULL;
  }
  bmm_rheap_t *rh = (bmm_rheap_t *)lo;
  memset(rh, 0, sizeof *rh);
  atomic_init(&rh->lock, 0);
  rh->os_memory = os_memory;
  rh->mem = mem;
  rh->mem_size = size;
  rh->bins = (uint32_t *)(void *)(rh + 1);
  memset(rh->bins, 0xFF, nclasses * sizeof *rh->bins); /* RH_NONE */
  rh->nclasses = nclasses;
  rh->base = rh_bytes(rh) + header;
  rh->top = rh->base;
  rh->first_hole = rh->base;
  rh->table_end = (unsigned char *)hi;
  rh->table_lo = rh->table_end;
  rh->free_head = rh->free_tail = RH_NONE;
  rh->capacity = (size_t)(hi - (uintptr_t)rh->base);
  rh->low_bytes = rh->high_bytes = SIZE_MAX;
  rh->tag_seed = atomic_fetch_add_explicit(&rh_seed_counter, 3, memory_order_relaxed);
  atomic_store_explicit(&rh->magic, RH_MAGIC, memory_order_relaxed);
  return rh;
}

BMM_API void bmm_rheap_delete(bmm_rheap_t *rh) {
  if (rh == NULL) return;
  const char *why = NULL;
  if (rh_checked_heap(rh, &why) == NULL) {
    bmm__error(rh, "bmm_rheap_delete", why);
    return;
  }
  atomic_store_explicit(&rh->magic, RH_DEAD, memory_order_relaxed);
  if (rh->os_memory) bmm__os_release(rh->mem, rh->mem_size);
}

BMM_API int bmm_ralloc(bmm_rheap_t *rh, bmm_handle_t **h, size_t size) {
  if (rh == NULL || h == NULL) {
    errno = EINVAL;
    return EINVAL;
  }
  const char *why = NULL;
  if (rh_checked_heap(rh, &why) == NULL) {
    bmm__error(rh, "bmm_ralloc", why);
    errno = EINVAL;
    return EINVAL;
  }
  size_t need = rh_need(size);
  if (need == 0 || need > rh->capacity) {
    errno = ENOMEM;
    return ENOMEM;
  }
  rh_lock(rh);
  rh_entry_t *e = rh_alloc_locked(rh, need, size);
  if (e == NULL) {
    rh_compact_locked(rh);
    e = rh_alloc_locked(rh, need, size);
  }
  if (e == NULL) return rh_unlock_nomem(rh);
  *h = rh_handle_of(e);
  return rh_unlock_grown(rh);
}

BMM_API int bmm_rrealloc(bmm_handle_t *h, size_t size) {
  bmm_rheap_t *rh;
  rh_entry_t *e = rh_enter(h, "bmm_rrealloc", &rh);
  if (e == NULL) return EINVAL; /* errno set */
  size_t need = rh_need(size);
  if (need == 0 || need > rh->capacity) return rh_unlock_nomem(rh);
  rh_block_t *b = rh_entry_block(rh, e);
  size_t cur = rh_size(b);
  uint32_t tail = (uint32_t)(need - RH_HEADER - size);
  if (need <= cur) {
    rh_trim(rh, b, need);
    rh_set_state(e, rh_locks(e), rh_tag(e), tail);
    rh_fullness_down(rh);
    bmm_assert_expensive(bmm__rheap_check(rh));
    rh_unlock(rh);
    return 0;
  }
  bool done = rh_grow_in_place(rh, b, need);
  if (!done && rh_locks(e) == 0) {
    done = rh_move_grow(rh, e, need);
    if (!done) {
      rh_compact_locked(rh);
      done = rh_grow_in_place(rh, rh_entry_block(rh, e), need) || rh_move_grow(rh, e, need) ||
             (rh_rotate_last(rh, e, need) && rh_grow_in_place(rh, rh_entry_block(rh, e), need));
    }
  }
  if (!done) return rh_unlock_nomem(rh);
  if (rh_debug_fill && b == rh_entry_block(rh, e)) /* grown in place */
    memset(rh_bytes(b) + cur, BMM_DEBUG_FILL_ALLOC, need - cur);
  rh_set_state(e, rh_locks(e), rh_tag(e), tail);
  return rh_unlock_grown(rh);
}

BMM_API int bmm_rlock(bmm_handle_t *h, void **ptr) {
  if (h == NULL || ptr == NULL) {
    errno = EINVAL;
    return EINVAL;
  }
  bmm_rheap_t *rh;
  rh_entry_t *e = rh_enter(h, "bmm_rlock", &rh);
  if (e == NULL) return EINVAL; /* errno set */
  if (rh_locks(e) == RH_LOCKS_MAX) {
    rh_unlock(rh);
    errno = EOVERFLOW;
    return EOVERFLOW;
  }
  e->state++; /* the lock count is the low field */
  *ptr = rh_bytes(rh_entry_block(rh, e)) + RH_HEADER;
  rh_unlock(rh);
  return 0;
}

BMM_API int bmm_runlock(bmm_handle_t *h) {
  bmm_rheap_t *rh;
  rh_entry_t *e = rh_enter(h, "bmm_runlock", &rh);
  if (e == NULL) return EINVAL; /* errno set */
  if (rh_locks(e) == 0) {
    rh_unlock(rh);
    bmm__error(h, "bmm_runlock", "handle is not locked");
    errno = EINVAL;
    return EINVAL;
  }
  e->state--;
  rh_unlock(rh);
  return 0;
}

BMM_API int bmm_rfree(bmm_handle_t *h) {
  if (h == NULL) return 0;
  bmm_rheap_t *rh;
  rh_entry_t *e = rh_enter(h, "bmm_rfree", &rh);
  if (e == NULL) return EINVAL; /* errno set */
  if (rh_locks(e) != 0) {
    rh_unlock(rh);
    errno = EBUSY;
    return EBUSY;
  }
  rh_block_t *b = rh_entry_block(rh, e);
  size_t size = rh_size(b);
  rh->live_bytes -= size;
  rh->live_blocks--;
  rh_entry_put(rh, b->info & RH_INDEX_MASK);
  rh_release(rh, rh_bytes(b), size, (b->info & RH_PREV_FREE) != 0);
  rh_fullness_down(rh);
  bmm_assert_expensive(bmm__rheap_check(rh));
  rh_unlock(rh);
  return 0;
}

BMM_API size_t bmm_rsize(const bmm_handle_t *h) {
  if (h == NULL) return 0;
  bmm_rheap_t *rh;
  rh_entry_t *e = rh_enter(h, "bmm_rsize", &rh);
  if (e == NULL) return 0;
  size_t size = rh_entry_size(rh, e);
  rh_unlock(rh);
  return size;
}

BMM_API size_t bmm_rcompact(bmm_rheap_t *rh) {
  if (rh == NULL) return 0;
  const char *why = NULL;
  if (rh_checked_heap(rh, &why) == NULL) {
    bmm__error(rh, "bmm_rcompact", why);
    return 0;
  }
  rh_lock(rh);
  size_t moved = rh_compact_locked(rh);
  rh_unlock(rh);
  return moved;
}

static size_t rh_threshold_bytes(double fill, size_t capacity) {
  if (!(fill > 0.0)) return 0; /* NaN and negatives count as 0 */
  if (fill >= 1.0) return capacity;
  return (size_t)(fill * (double)capacity);
}

BMM_API void bmm_rheap_notify(bmm_rheap_t *rh, double low, double high, bmm_fullness_fn *fn,
                              void *arg) {
  if (rh == NULL) return;
  const char *why = NULL;
  if (rh_checked_heap(rh, &why) == NULL) {
    bmm__error(rh, "bmm_rheap_notify", why);
    return;
  }
  rh_lock(rh);
  rh->high_bytes = rh_threshold_bytes(high, rh->capacity);
  rh->low_bytes = rh_threshold_bytes(low, rh->capacity);
  if (rh->low_bytes > rh->high_bytes) rh->low_bytes = rh->high_bytes;
  rh->low_armed = rh->high_armed = true;
  rh->fn = fn;
  rh->fn_arg = arg;
  rh_unlock(rh);
}

/* ---- Internal: counters and the heap check -------------------------------- */

/* What the heap holds, for tests and the replayer; NULL pointers skip.
 * used: every byte of the heap's memory not free for blocks, the header
 * and the bytes before it included. */
void bmm__rheap_counters(bmm_rheap_t *rh, size_t *used, size_t *capacity, size_t *compactions,
                         size_t *bytes_moved) {
  rh_lock(rh);
  if (used)
    *used = rh_used(rh) + (size_t)(rh->base - rh_bytes(rh->mem)) +
            (size_t)(rh_bytes(rh->mem) + rh->mem_size - rh->table_end);
  if (capacity) *capacity = rh->capacity;
  if (compactions) *compactions = rh->compactions;
  if (bytes_moved) *bytes_moved = rh->bytes_moved;
  rh_unlock(rh);
}

static bool rh_bad(const char *what) {
  bmm__warning("rheap check", what);
  return false;
}

/* Walks blocks, free lists and the table; true when every invariant holds.
 * The caller holds the heap's lock (or no other thread uses the heap). */
bool bmm__rheap_check(bmm_rheap_t *rh) {
  if (atomic_load_explicit(&rh->magic, memory_order_relaxed) != RH_MAGIC)
    return rh_bad("bad magic");
  if (rh->top < rh->base || rh->table_lo < rh->top || rh->table_lo > rh->table_end ||
      (size_t)(rh->table_end - rh->table_lo) % RH_CHUNK != 0)
    return rh_bad("top or table out of order");
  if (rh->first_hole < rh->base || rh->first_hole > rh->top) return rh_bad("first_hole");
  size_t live = 0, blocks = 0, holes = 0;
  bool prev_free = false;
  unsigned char *p = rh->base;
  while (p < rh->top) {
    rh_block_t *b = rh_block_at(p);
    size_t size = rh_size(b);
    bool is_free = rh_is_free(b);
    if (size < RH_SLIVER || size > (size_t)(rh->top - p) || (!is_free && size < RH_MIN_BLOCK))
      return rh_bad("block size");
    if (((b->info & RH_PREV_FREE) != 0) != prev_free) return rh_bad("PREV_FREE flag");
    if (is_free) {
      if (prev_free) return rh_bad("two adjacent free blocks");
      if (p < rh->first_hole) return rh_bad("a free block below first_hole");
      if (rh_footer(p + size) != b->units) return rh_bad("free block footer");
      if (p + size == rh->top) return rh_bad("a free block next to the wilderness");
      if (size >= RH_MIN_BLOCK) holes++;
    } else {
      uint32_t i = b->info & RH_INDEX_MASK;
      if ((i & (RH_CHUNK_SLOTS - 1)) < RH_FIRST_SLOT ||
          (size_t)(i >> RH_CHUNK_SHIFT) >= (size_t)(rh->table_end - rh->table_lo) / RH_CHUNK)
        return rh_bad("block's handle index");
      rh_entry_t *e = rh_entry_at(rh, i);
      if (rh_locks(e) == RH_ENTRY_FREE) return rh_bad("live block of a free handle");
      if (rh_at(rh, e->block) != p) return rh_bad("handle does not lead to its block");
      if (size - RH_HEADER < rh_tail(e) || rh_need(size - RH_HEADER - rh_tail(e)) != size)
        return rh_bad("block length and size asked for disagree");
      live += size;
      blocks++;
    }
    prev_free = is_free;
    p += size;
  }
  if (p != rh->top) return rh_bad("blocks overrun top");
  if (live != rh->live_bytes || blocks != rh->live_blocks) return rh_bad("live bytes or blocks");
  size_t listed = 0;
  for (size_t c = 0; c < rh->nclasses; c++) {
    bool mapped = (rh->class_map[c >> 6] >> (c & 63)) & 1;
    if (mapped != (rh->bins[c] != RH_NONE)) return rh_bad("class map");
    uint32_t prev = RH_NONE;
    for (uint32_t off = rh->bins[c]; off != RH_NONE;) {
      unsigned char *hp = rh_at(rh, off);
      if (hp < rh->base || hp >= rh->top) return rh_bad("listed hole out of the heap");
      rh_hole_t *h = (rh_hole_t *)(void *)hp;
      if (!(h->info & RH_FREE) || h->units < RH_MIN_BLOCK / RH_UNIT) return rh_bad("listed hole");
      if (rh_class_of(h->units) != c) return rh_bad("hole in the wrong class");
      if (h->prev != prev) return rh_bad("hole links");
      if (++listed > holes) return rh_bad("more listed holes than holes");
      prev = off;
      off = h->next;
    }
  }
  if (listed != holes || holes != rh->hole_count) return rh_bad("hole count");
  size_t chunks = (size_t)(rh->table_end - rh->table_lo) / RH_CHUNK;
  size_t live_entries = 0, free_entries = 0, reachable = 0;
  for (size_t k = 0; k < chunks; k++) {
    unsigned char *chunk = rh->table_end - (k + 1) * RH_CHUNK;
    rh_chunk_t *c = (rh_chunk_t *)(void *)chunk;
    uintptr_t link = atomic_load_explicit(&c->link, memory_order_relaxed);
    if ((link ^ (uintptr_t)chunk ^ RH_LINK_KEY) != (uintptr_t)rh ||
        atomic_load_explicit(&c->check, memory_order_relaxed) != (link ^ RH_CHECK_KEY))
      return rh_bad("table chunk header");
    for (uint32_t j = RH_FIRST_SLOT; j < RH_CHUNK_SLOTS; j++) {
      if (rh_locks(rh_entry_at(rh, (uint32_t)(k << RH_CHUNK_SHIFT) | j)) == RH_ENTRY_FREE)
        free_entries++;
      else
        live_entries++;
    }
  }
  for (uint32_t i = rh->free_head; i != RH_NONE;) {
    if ((i & (RH_CHUNK_SLOTS - 1)) < RH_FIRST_SLOT || (size_t)(i >> RH_CHUNK_SHIFT) >= chunks)
      return rh_bad("free handle list");
    rh_entry_t *e = rh_entry_at(rh, i);
    if (rh_locks(e) != RH_ENTRY_FREE) return rh_bad("live handle on the free list");
    if (++reachable > free_entries) return rh_bad("free handle list loops");
    if (e->block == RH_NONE && i != rh->free_tail) return rh_bad("free handle list tail");
    i = e->block;
  }
  if (reachable != free_entries || live_entries != blocks) return rh_bad("handle counts");
  return true;
}
