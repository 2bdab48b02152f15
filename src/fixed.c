/* fixed.c: the allocator of fixed heaps (fixed.h, API section 8,
 * bmm_heap_new_fixed): blocks carved from one caller-supplied range that
 * also holds every byte of metadata, never grows, and never touches a byte
 * outside [mem, mem + size).
 *
 * Owns: bmm__fixed_* (fixed.h) and the registry of live fixed heaps.
 *
 * Layout, low to high addresses:
 *
 *   [pad | bmm_fixed_t, bin heads | block | block | ... | sentinel | pad]
 *
 * The heap header sits at the first 16-aligned byte; its bin-head array
 * has only as many entries as the largest block the range can hold needs.
 * A block starts 8 bytes before a 16-aligned address: an 8-byte header,
 * then the payload, 16-aligned. Blocks are multiples of 16 bytes, at least
 * 32, and tile the range exactly up to the sentinel, an 8-byte header of
 * size 0 marked used, so every block has a right neighbour to look at.
 *
 *   header = units << 24 | check << 8 | alog << 2 | PREV_USED | USED
 *
 * units is the block length in 16-byte units (40 bits: blocks up to
 * 16 TiB), alog is log2 of the alignment the block was asked for minus 4,
 * check is 16 bits of a keyed hash of the header's address, units and alog
 * (see hdr_check). A live block costs 8 bytes: its payload runs up to the
 * next header, so a request of n bytes takes round16(n + 8), at least 32
 * (malloc(0) gets 24 usable bytes). A free block keeps two list links
 * after its header and its length in a footer, its last 8 bytes, which the
 * right neighbour (whose PREV_USED is clear) reads to merge with it in
 * O(1). Two free blocks are never adjacent: a free merges at once.
 *
 * Allocation is segregated good fit, TLSF-like: free blocks sit in
 * doubly linked lists by size, one per 16-byte size below 512 B (exact),
 * then eight per doubling (12.5% apart), with a bitmap of non-empty lists.
 * A request takes the best of the first FIT_SCAN_OWN blocks of its own
 * list (an exact list: its head), else the smallest of the first
 * FIT_SCAN_ABOVE of the next non-empty larger list, where every block fits;
 * a rest of 32 bytes or more is split off and put back. Only when that
 * finds nothing and a list scan was cut short is the request's own list
 * scanned in full, so a request fails only when no free block fits.
 *
 * Aligned blocks take a free block with room for the size after the first
 * aligned payload address; the gap before it (0, or at least 32 bytes)
 * becomes a free block of its own. A gap of 16 cannot stand alone (a free
 * block is at least 32 bytes, and the block before is live, and without a
 * footer we cannot find its start to widen it), so then the next aligned
 * address is used.
 *
 * Misuse. free, usable and align accept p only when it is 16-aligned inside
 * the range, its header is marked used, its length stays inside the range,
 * its check matches and its right neighbour's header is valid with
 * PREV_USED set. A double free always fails (the header of a free block has
 * USED clear, and the header of a block merged into a neighbour is zeroed,
 * so no stale used header is ever left behind); an interior pointer passes
 * only if the 8 bytes before it forge two keyed 16-bit checks.
 *
 * Concurrency. Every call on a heap takes its spin lock (heap->lock). The
 * registry (a table of FIXED_SLOTS ranges) is written under registry_lock
 * and read lock-free: each slot is a seqlock, so bmm__fixed_find never
 * reads a half-written range and never dereferences a heap (a heap being
 * destroyed elsewhere may already be unmapped). Lock order: registry_lock,
 * then a heap lock (destroy only). visit releases the heap lock around the
 * callback, so fn may allocate from or free into the same heap.
 *
 * Nothing here allocates or calls the OS.
 */
#include <string.h>

#include "internal.h"

#include "fixed.h"

/* ---- Geometry -------------------------------------------------------- */

#define UNIT 16     /* block granule and payload alignment */
#define MIN_UNITS 2 /* header + 2 links + footer = 32 bytes */
#define HDR_SIZE 8
#define UNITS_SHIFT 24
#define UNITS_BITS 40
#define MAX_UNITS (((uint64_t)1 << UNITS_BITS) - 1)
#define CHECK_SHIFT 8
#define CHECK_MASK 0xffffu
#define ALOG_SHIFT 2
#define ALOG_MASK 0x3fu
#define F_USED ((uint64_t)1)
#define F_PREV ((uint64_t)2) /* the block to the left is live (or there is none) */

/* Lists: exact for 2..31 units (32..496 bytes, where most requests are and
 * 16 bytes of slack is a lot), then 8 per doubling up to MAX_UNITS. */
#define EXACT_LIMIT 32 /* units below this have exact lists */
#define EXACT_BINS (EXACT_LIMIT - MIN_UNITS)
#define MAX_BINS (EXACT_BINS + (UNITS_BITS - 5) * 8)
#define BITMAP_WORDS ((MAX_BINS + 63) / 64)
#define NO_BIN ((size_t)-1)

/* How many blocks a request looks at: in its own (inexact) list, where
 * some may be too small and the best fit wins; and in a larger list, where
 * all fit and the smallest of a few keeps the split-off rests small. */
#define FIT_SCAN_OWN 16
#define FIT_SCAN_ABOVE 4

/* Registry slots: fixed heaps live at once (one per caller-supplied
 * buffer). 64 proved too few for a program that keeps one per object
 * (found by a helper's test); a free or realloc of a pointer that is not
 * BrainMM's scans the slots in use, so they stay in one table (32 bytes
 * each, untouched until used). */
#define FIXED_SLOTS 4096

#define FIXED_MAGIC ((uintptr_t)0x46697865644d4d21u) /* "FixedMM!", xor heap */

/* A block, seen from its header; next/prev exist only while it is free. */
typedef struct fblock_s {
  uint64_t head;
  struct fblock_s *next, *prev;
} fblock_t;

struct bmm_fixed_s {
  atomic_int lock;
  uint32_t slot;                 /* [init] registry slot */
  uintptr_t magic;               /* FIXED_MAGIC ^ heap while the heap is live */
  uint64_t secret;               /* [init] key of the header checks */
  char *first;                   /* [init] first block */
  fblock_t *end;                 /* [init] the sentinel header; blocks tile [first, end) */
  size_t live;                   /* usable bytes of live blocks */
  size_t blocks;                 /* live blocks */
  uint64_t epoch;                /* bumped by every change of the block structure */
  uint32_t nbins;                /* [init] entries of heads[] */
  uint64_t bitmap[BITMAP_WORDS]; /* bit i: heads[i] != NULL */
  fblock_t *heads[];
};

/* ---- Headers ----------------------------------------------------------- */

/* 16 bits of a keyed hash of where the header is and what it says (but not
 * USED or PREV_USED, which change without the block changing): a copy of a
 * header elsewhere, or user data before an interior pointer, matches only
 * by a 1 in 65536 chance. */
static inline uint64_t hdr_check(const bmm_fixed_t *fh, const fblock_t *b, uint64_t units,
                                 uint64_t alog) {
  uint64_t x = ((uint64_t)(uintptr_t)b ^ fh->secret) + (units << 6 | alog) * 0x9e3779b97f4a7c15u;
  x ^= x >> 32;
  x *= 0xd6e8feb86659fd93u;
  x ^= x >> 32;
  return x >> 48;
}

static inline uint64_t hdr_make(const bmm_fixed_t *fh, const fblock_t *b, uint64_t units,
                                uint64_t alog, uint64_t flags) {
  return units << UNITS_SHIFT | hdr_check(fh, b, units, alog) << CHECK_SHIFT | alog << ALOG_SHIFT |
         flags;
}

static inline uint64_t hdr_units(uint64_t h) {
  return h >> UNITS_SHIFT;
}
static inline uint64_t hdr_alog(uint64_t h) {
  return (h >> ALOG_SHIFT) & ALOG_MASK;
}

static inline bool hdr_valid(const bmm_fixed_t *fh, const fblock_t *b, uint64_t h) {
  return ((h >> CHECK_SHIFT) & CHECK_MASK) == hdr_check(fh, b, hdr_units(h), hdr_alog(h));
}

static inline size_t bsize(const fblock_t *b) {
  return (size_t)hdr_units(b->head) * UNIT;
}
static inline bool is_used(const fblock_t *b) {
  return (b->head & F_USED) != 0;
}
static inline fblock_t *at(const void *b, size_t off) {
  return (fblock_t *)((char *)b + off);
}
static inline fblock_t *bnext(const fblock_t *b) {
  return at(b, bsize(b));
}
static inline void *payload(fblock_t *b) {
  return (char *)b + HDR_SIZE;
}

static inline void set_footer(fblock_t *b, size_t size) {
  *(uint64_t *)((char *)b + size - HDR_SIZE) = size;
}

/* The free block left of b (b's PREV_USED is clear): its footer ends at b. */
static inline fblock_t *bprev_free(const fblock_t *b) {
  uint64_t size = ((const uint64_t *)b)[-1];
  return (fblock_t *)((char *)b - size);
}

/* ---- Lists ------------------------------------------------------------- */

static inline size_t bin_of(uint64_t units) {
  if (units < EXACT_LIMIT) return (size_t)units - MIN_UNITS;
  size_t b = 63 - (size_t)__builtin_clzll(units); /* >= 5 */
  return EXACT_BINS + ((b - 5) << 3) + (size_t)((units >> (b - 3)) & 7);
}

/* The smallest block (in units) list i holds. */
static inline uint64_t bin_min(size_t i) {
  if (i < EXACT_BINS) return i + MIN_UNITS;
  size_t d = (i - EXACT_BINS) >> 3, e = (i - EXACT_BINS) & 7;
  return (uint64_t)(8 + e) << (d + 2);
}

/* The first non-empty list at or above i, or NO_BIN. */
static size_t bins_next(const bmm_fixed_t *fh, size_t i) {
  size_t w = i / 64;
  if (w >= BITMAP_WORDS) return NO_BIN;
  uint64_t m = fh->bitmap[w] & (~(uint64_t)0 << (i % 64));
  while (m == 0) {
    if (++w == BITMAP_WORDS) return NO_BIN;
    m = fh->bitmap[w];
  }
  return w * 64 + (size_t)__builtin_ctzll(m);
}

static void bin_insert(bmm_fixed_t *fh, fblock_t *b) {
  size_t i = bin_of(hdr_units(b->head));
  bmm_assert(i < fh->nbins);
  b->next = fh->heads[i];
  b->prev = NULL;
  if (b->next != NULL)
    b->next->prev = b;
  else
    fh->bitmap[i / 64] |= (uint64_t)1 << (i % 64);
  fh->heads[i] = b;
}

static void bin_remove(bmm_fixed_t *fh, fblock_t *b) {
  size_t i = bin_of(hdr_units(b->head));
  bmm_assert(!is_used(b) && i < fh->nbins);
  if (b->prev != NULL)
    b->prev->next = b->next;
  else
    fh->heads[i] = b->next;
  if (b->next != NULL) b->next->prev = b->prev;
  if (fh->heads[i] == NULL) fh->bitmap[i / 64] &= ~((uint64_t)1 << (i % 64));
}

/* ---- Blocks ------------------------------------------------------------ */

/* Makes [b, b + size) a free block on its list. Its left neighbour is live
 * (free blocks are never adjacent) or absent; its right one learns that b
 * is free. */
static void make_free(bmm_fixed_t *fh, fblock_t *b, size_t size) {
  bmm_assert(size >= MIN_UNITS * UNIT && size % UNIT == 0);
  b->head = hdr_make(fh, b, size / UNIT, 0, F_PREV);
  set_footer(b, size);
  at(b, size)->head &= ~F_PREV;
  bin_insert(fh, b);
}

static void make_used(bmm_fixed_t *fh, fblock_t *b, size_t size, uint64_t alog,
                      uint64_t prev_flag) {
  b->head = hdr_make(fh, b, size / UNIT, alog, F_USED | prev_flag);
  at(b, size)->head |= F_PREV;
}

/* Gives the bytes of b beyond `size` (when they make a block) back to the
 * lists, merged with a free right neighbour. b is live. */
static void shrink_to(bmm_fixed_t *fh, fblock_t *b, size_t size) {
  size_t have = bsize(b);
  if (have - size < MIN_UNITS * UNIT) return;
  fblock_t *tail = at(b, size), *n = at(b, have);
  size_t tail_size = have - size;
  if (!is_used(n)) {
    bin_remove(fh, n);
    tail_size += bsize(n);
    n->head = 0; /* no stale header inside a block */
  }
  b->head = hdr_make(fh, b, size / UNIT, hdr_alog(b->head), b->head & (F_USED | F_PREV));
  fh->live -= have - size;
  /* n's bytes were filled when n was freed: a large free neighbour must not
   * cost a fill on every shrink */
  if (bmm__debug) memset(payload(tail), BMM_DEBUG_FILL_FREE, have - size - HDR_SIZE);
  make_free(fh, tail, tail_size);
}

/* Turns the free block b into a live block of `size` bytes whose payload
 * starts `gap` bytes later (the gap becomes a free block) and returns the
 * payload. */
static void *take(bmm_fixed_t *fh, fblock_t *b, size_t gap, size_t size, uint64_t alog) {
  bin_remove(fh, b);
  size_t have = bsize(b);
  uint64_t prev_flag = F_PREV; /* a free block's left neighbour is live */
  if (gap != 0) {
    make_free(fh, b, gap);
    b = at(b, gap);
    have -= gap;
    prev_flag = 0;
  }
  if (have - size < MIN_UNITS * UNIT)
    size = have;
  else
    make_free(fh, at(b, size), have - size);
  make_used(fh, b, size, alog, prev_flag);
  fh->live += size - HDR_SIZE;
  fh->blocks++;
  fh->epoch++;
  if (bmm__debug) memset(payload(b), BMM_DEBUG_FILL_ALLOC, size - HDR_SIZE);
  return payload(b);
}

/* Frees the live block b, merging it with free neighbours. */
static void release(bmm_fixed_t *fh, fblock_t *b) {
  size_t size = bsize(b);
  fblock_t *start = b, *n = at(b, size);
  fh->live -= size - HDR_SIZE;
  fh->blocks--;
  fh->epoch++;
  if (bmm__debug) memset(payload(b), BMM_DEBUG_FILL_FREE, size - HDR_SIZE);
  if (!(b->head & F_PREV)) {
    start = bprev_free(b);
    bin_remove(fh, start);
    size += bsize(start);
    b->head = 0; /* a double free of b must find no used header here */
  }
  if (!is_used(n)) {
    bin_remove(fh, n);
    size += bsize(n);
    n->head = 0;
  }
  make_free(fh, start, size);
}

/* ---- Finding a free block ---------------------------------------------- */

typedef struct fit_s {
  fblock_t *b;
  size_t gap;
} fit_t;

/* Bytes from b's payload to the first payload address aligned to `align`
 * that can start a block (a gap is 0 or at least a block), or SIZE_MAX when
 * `size` bytes do not fit behind that gap. */
static size_t fit_gap(const fblock_t *b, size_t size, size_t align) {
  uintptr_t p = (uintptr_t)b + HDR_SIZE;
  size_t gap = (size_t)(((p + align - 1) & ~(uintptr_t)(align - 1)) - p);
  if (gap == UNIT) gap += align; /* too small to be a free block */
  return bsize(b) >= size && bsize(b) - size >= gap ? gap : SIZE_MAX;
}

/* The smallest of the first `limit` blocks of list i that fit, into *best;
 * *cut is set when the list was longer than `limit` and nothing fit. */
static bool scan_bin(const bmm_fixed_t *fh, size_t i, size_t size, size_t align, size_t limit,
                     fit_t *best, bool *cut) {
  size_t n = 0, best_size = SIZE_MAX;
  for (fblock_t *b = fh->heads[i]; b != NULL; b = b->next) {
    if (n++ == limit) {
      *cut = best->b == NULL;
      break;
    }
    size_t gap = fit_gap(b, size, align);
    if (gap == SIZE_MAX || bsize(b) >= best_size) continue;
    best->b = b;
    best->gap = gap;
    best_size = bsize(b);
    if (best_size - gap - size < MIN_UNITS * UNIT) break; /* nothing to split off */
  }
  return best->b != NULL;
}

/* A free block for `size` bytes (a multiple of 16, header included) at
 * `align`: lists from the request's own upwards; once a list holds only
 * blocks that surely fit, a few of it are enough. */
static fit_t find_fit(const bmm_fixed_t *fh, size_t size, size_t align, size_t limit, bool *cut) {
  fit_t best = {NULL, 0};
  uint64_t units = size / UNIT;
  uint64_t sure = align == UNIT ? units : units + (align + UNIT) / UNIT;
  *cut = false;
  for (size_t i = bins_next(fh, bin_of(units)); i != NO_BIN; i = bins_next(fh, i + 1)) {
    bool all_fit = bin_min(i) >= sure;
    if (scan_bin(fh, i, size, align, all_fit ? FIT_SCAN_ABOVE : limit, &best, cut)) break;
  }
  return best;
}

/* ---- Requests ---------------------------------------------------------- */

static size_t capacity_of(const bmm_fixed_t *fh) {
  return (size_t)((char *)fh->end - fh->first) - HDR_SIZE;
}

/* Block bytes for a request of n payload bytes; 0 when it cannot fit. */
static size_t block_size_for(const bmm_fixed_t *fh, size_t n) {
  if (bmm_unlikely(n > capacity_of(fh))) return 0; /* also keeps n + 23 from overflowing */
  size_t size = (n + HDR_SIZE + UNIT - 1) & ~(size_t)(UNIT - 1);
  return size < MIN_UNITS * UNIT ? MIN_UNITS * UNIT : size;
}

static uint64_t align_log(size_t align) {
  return (uint64_t)__builtin_ctzll(align) - 4;
}

static void *alloc_locked(bmm_fixed_t *fh, size_t n, size_t align) {
  size_t size = block_size_for(fh, n);
  if (bmm_unlikely(size == 0)) return NULL;
  bool cut;
  fit_t fit = find_fit(fh, size, align, FIT_SCAN_OWN, &cut);
  if (fit.b == NULL && cut) fit = find_fit(fh, size, align, SIZE_MAX, &cut);
  if (fit.b == NULL) return NULL;
  return take(fh, fit.b, fit.gap, size, align_log(align));
}

/* 16 for 0..16; 0 for a bad alignment (not a power of two, or so large
 * that address arithmetic could overflow). */
static size_t align_norm(size_t align) {
  if (align <= UNIT) return UNIT;
  if (bmm_unlikely((align & (align - 1)) != 0 || align > (SIZE_MAX >> 2))) return 0;
  return align;
}

/* The block p is the payload of when p is a live block of fh, else NULL.
 * Reads only headers inside the range. */
static fblock_t *block_of(const bmm_fixed_t *fh, const void *p) {
  uintptr_t lo = (uintptr_t)fh->first + HDR_SIZE, a = (uintptr_t)p;
  if (bmm_unlikely(a - lo >= (uintptr_t)fh->end - lo || a % UNIT != 0)) return NULL;
  fblock_t *b = (fblock_t *)(a - HDR_SIZE);
  uint64_t h = b->head, units = hdr_units(h);
  if (bmm_unlikely(!(h & F_USED) || units < MIN_UNITS)) return NULL;
  if (bmm_unlikely(units > (uint64_t)((uintptr_t)fh->end - (uintptr_t)b) / UNIT)) return NULL;
  if (bmm_unlikely(!hdr_valid(fh, b, h))) return NULL;
  fblock_t *n = at(b, units * UNIT);
  return n->head & F_PREV && hdr_valid(fh, n, n->head) ? b : NULL;
}

static void check_heap_arg(const bmm_fixed_t *fh) {
  (void)fh;
  bmm_assert(fh != NULL && fh->magic == (FIXED_MAGIC ^ (uintptr_t)fh));
}

void *bmm__fixed_alloc(bmm_fixed_t *fh, size_t size, size_t align) {
  check_heap_arg(fh);
  align = align_norm(align);
  if (bmm_unlikely(align == 0)) return NULL;
  bmm__spin_lock(&fh->lock);
  void *p = alloc_locked(fh, size, align);
  bmm__spin_unlock(&fh->lock);
  return p;
}

bool bmm__fixed_free(bmm_fixed_t *fh, void *p) {
  check_heap_arg(fh);
  bmm__spin_lock(&fh->lock);
  fblock_t *b = block_of(fh, p);
  if (b != NULL) release(fh, b);
  bmm__spin_unlock(&fh->lock);
  return b != NULL;
}

size_t bmm__fixed_usable(bmm_fixed_t *fh, const void *p) {
  check_heap_arg(fh);
  bmm__spin_lock(&fh->lock);
  fblock_t *b = block_of(fh, p);
  size_t usable = b != NULL ? bsize(b) - HDR_SIZE : 0;
  bmm__spin_unlock(&fh->lock);
  return usable;
}

/* 0 when p is not a live block. */
size_t bmm__fixed_align(bmm_fixed_t *fh, const void *p) {
  check_heap_arg(fh);
  bmm__spin_lock(&fh->lock);
  fblock_t *b = block_of(fh, p);
  size_t align = b != NULL ? (size_t)UNIT << hdr_alog(b->head) : 0;
  bmm__spin_unlock(&fh->lock);
  return align;
}

/* ---- Resizing ---------------------------------------------------------- */

/* Grows the live block b in place into a free right neighbour, when the two
 * hold `size` bytes. */
static bool grow_right(bmm_fixed_t *fh, fblock_t *b, size_t size, uint64_t alog) {
  size_t have = bsize(b);
  fblock_t *n = at(b, have);
  if (is_used(n) || have + bsize(n) < size) return false;
  size_t total = have + bsize(n);
  bin_remove(fh, n);
  n->head = 0;
  make_used(fh, b, total, alog, b->head & F_PREV);
  fh->live += total - have;
  shrink_to(fh, b, size);
  if (bmm__debug) memset((char *)b + have, BMM_DEBUG_FILL_ALLOC, bsize(b) - have);
  return true;
}

/* Moves the live block b down into its free left neighbour (and takes a
 * free right neighbour too), when together they hold `size` bytes and the
 * left block's payload has the alignment. Returns the new payload. */
static void *grow_left(bmm_fixed_t *fh, fblock_t *b, size_t size, size_t align) {
  if (b->head & F_PREV) return NULL;
  fblock_t *l = bprev_free(b), *n = bnext(b);
  size_t have = bsize(b), total = bsize(l) + have + (is_used(n) ? 0 : bsize(n));
  if (total < size || (uintptr_t)payload(l) % align != 0) return NULL;
  bin_remove(fh, l);
  if (!is_used(n)) {
    bin_remove(fh, n);
    n->head = 0;
  }
  b->head = 0; /* before the move, which may or may not overwrite it */
  memmove(payload(l), payload(b), have - HDR_SIZE);
  make_used(fh, l, total, align_log(align), F_PREV);
  fh->live += total - have;
  shrink_to(fh, l, size);
  if (bmm__debug) memset((char *)l + have, BMM_DEBUG_FILL_ALLOC, bsize(l) - have);
  return payload(l);
}

static void *realloc_locked(bmm_fixed_t *fh, fblock_t *b, size_t n, size_t align) {
  size_t size = block_size_for(fh, n), have = bsize(b);
  if (bmm_unlikely(size == 0)) return NULL;
  fh->epoch++;
  if ((uintptr_t)payload(b) % align == 0) {
    uint64_t alog = align_log(align);
    if (size <= have) {
      make_used(fh, b, have, alog, b->head & F_PREV); /* the alignment may be new */
      shrink_to(fh, b, size);
      return payload(b);
    }
    if (grow_right(fh, b, size, alog)) return payload(b);
    void *p = grow_left(fh, b, size, align);
    if (p != NULL) return p;
  }
  void *q = alloc_locked(fh, n, align);
  if (q == NULL) return NULL;
  size_t keep = have - HDR_SIZE;
  memcpy(q, payload(b), keep < n ? keep : n);
  release(fh, b);
  return q;
}

void *bmm__fixed_realloc(bmm_fixed_t *fh, void *p, size_t size, size_t align) {
  check_heap_arg(fh);
  align = align_norm(align);
  if (bmm_unlikely(align == 0)) return NULL;
  bmm__spin_lock(&fh->lock);
  void *q = NULL;
  fblock_t *b = block_of(fh, p); /* the caller checked p; NULL, changing nothing, if not */
  if (b != NULL) {
    size_t had = (size_t)UNIT << hdr_alog(b->head);
    q = realloc_locked(fh, b, size, align > had ? align : had);
  }
  bmm__spin_unlock(&fh->lock);
  return q;
}

/* ---- Walking ----------------------------------------------------------- */

/* b, or the block after it when b is free (free blocks are never
 * adjacent, but a loop costs nothing and survives a corrupt heap). */
static fblock_t *live_from(const bmm_fixed_t *fh, fblock_t *b) {
  while (b != fh->end && !is_used(b))
    b = bnext(b);
  return b;
}

/* The first live block (or the sentinel) that starts after v. */
static fblock_t *live_after(const bmm_fixed_t *fh, const fblock_t *v) {
  fblock_t *b = (fblock_t *)fh->first;
  while ((char *)b <= (const char *)v)
    b = bnext(b);
  return live_from(fh, b);
}

/* The lock is released around fn, so fn may use the heap. The walk then
 * resumes at the block it would have visited next, w, when nothing changed
 * or w's header is still the same live header (a header of a live block
 * is either that block's or gone: merges zero the headers they swallow);
 * else it re-walks to the first block after the one just visited. */
bool bmm__fixed_visit(bmm_fixed_t *fh, bmm_visit_fn *fn, void *arg) {
  check_heap_arg(fh);
  bmm__spin_lock(&fh->lock);
  fblock_t *b = live_from(fh, (fblock_t *)fh->first);
  while (b != fh->end) {
    size_t usable = bsize(b) - HDR_SIZE;
    fblock_t *w = live_from(fh, bnext(b));
    uint64_t w_head = w->head & ~F_PREV, epoch = fh->epoch;
    bmm__spin_unlock(&fh->lock);
    if (!fn(payload(b), usable, arg)) return false;
    bmm__spin_lock(&fh->lock);
    if (fh->epoch == epoch || (w->head & ~F_PREV) == w_head)
      b = w;
    else
      b = live_after(fh, b);
  }
  bmm__spin_unlock(&fh->lock);
  return true;
}

void bmm__fixed_usage(bmm_fixed_t *fh, size_t *capacity, size_t *live) {
  check_heap_arg(fh);
  bmm__spin_lock(&fh->lock);
  if (capacity != NULL) *capacity = capacity_of(fh);
  if (live != NULL) *live = fh->live;
  bmm__spin_unlock(&fh->lock);
}

/* ---- Validation -------------------------------------------------------- */

/* One block of the walk: its header, footer and flags against its left
 * neighbour (prev_used). */
static bool check_block(const bmm_fixed_t *fh, const fblock_t *b, bool prev_used) {
  uint64_t h = b->head, units = hdr_units(h);
  if (!hdr_valid(fh, b, h) || ((h & F_PREV) != 0) != prev_used) return false;
  if (units < MIN_UNITS || units > (uint64_t)((char *)fh->end - (const char *)b) / UNIT)
    return false;
  if (h & F_USED) return true;
  /* free: not next to another free block, footer right, no alignment */
  return prev_used && hdr_alog(h) == 0 && ((const uint64_t *)bnext(b))[-1] == units * UNIT;
}

/* Walks every block: they tile [first, end) exactly; counts the free ones
 * and checks the live totals. */
static bool check_blocks(const bmm_fixed_t *fh, size_t *free_count) {
  const fblock_t *b = (const fblock_t *)fh->first;
  bool prev_used = true;
  size_t live = 0, blocks = 0, frees = 0;
  while (b < fh->end) {
    if (!check_block(fh, b, prev_used)) return false;
    prev_used = is_used(b);
    if (prev_used) {
      live += bsize(b) - HDR_SIZE;
      blocks++;
    } else {
      frees++;
    }
    b = bnext(b);
  }
  uint64_t h = fh->end->head;
  *free_count = frees;
  return b == fh->end && hdr_units(h) == 0 && (h & F_USED) && ((h & F_PREV) != 0) == prev_used &&
         hdr_valid(fh, b, h) && live == fh->live && blocks == fh->blocks;
}

/* Every list: its entries are free blocks of its size range inside the
 * heap, back links agree, the bitmap says which are non-empty, and the
 * lists hold as many blocks as the walk found free. */
static bool check_bins(const bmm_fixed_t *fh, size_t free_count) {
  size_t listed = 0;
  uintptr_t lo = (uintptr_t)fh->first, hi = (uintptr_t)fh->end;
  for (size_t i = 0; i < BITMAP_WORDS * 64; i++) {
    bool bit = fh->bitmap[i / 64] >> (i % 64) & 1;
    if (i >= fh->nbins) {
      if (bit) return false;
      continue;
    }
    if (bit != (fh->heads[i] != NULL)) return false;
    const fblock_t *prev = NULL;
    for (const fblock_t *b = fh->heads[i]; b != NULL; prev = b, b = b->next) {
      uintptr_t a = (uintptr_t)b;
      if (++listed > free_count || a < lo || a >= hi || a % UNIT != HDR_SIZE) return false;
      if (is_used(b) || !hdr_valid(fh, b, b->head) || b->prev != prev) return false;
      if (bin_of(hdr_units(b->head)) != i || bsize(b) > hi - a) return false;
      if (((const uint64_t *)bnext(b))[-1] != bsize(b)) return false;
    }
  }
  return listed == free_count;
}

bool bmm__fixed_check(bmm_fixed_t *fh) {
  if (fh == NULL || fh->magic != (FIXED_MAGIC ^ (uintptr_t)fh)) return false;
  bmm__spin_lock(&fh->lock);
  size_t free_count = 0;
  bool ok = check_blocks(fh, &free_count) && check_bins(fh, free_count);
  bmm__spin_unlock(&fh->lock);
  return ok;
}

/* ---- Registry ---------------------------------------------------------- */

/* A slot is a seqlock: seq is odd while a writer (holding registry_lock)
 * changes lo, hi and heap. A reader that finds seq odd takes the slot as
 * empty (its heap is being created or destroyed: not live), so it never
 * waits for a writer; it retries only when a write completed while it
 * read. */
typedef struct slot_s {
  atomic_uint seq;
  _Atomic(uintptr_t) lo, hi;
  _Atomic(bmm_fixed_t *) heap;
} slot_t;

static slot_t registry[FIXED_SLOTS];
static atomic_int registry_lock;
static atomic_uint registry_top; /* slots at and above this are empty */
static atomic_uint_fast64_t registry_seed;

static void slot_write(slot_t *s, uintptr_t lo, uintptr_t hi, bmm_fixed_t *heap) {
  unsigned seq = atomic_load_explicit(&s->seq, memory_order_relaxed);
  atomic_store_explicit(&s->seq, seq + 1, memory_order_relaxed);
  atomic_thread_fence(memory_order_release); /* odd seq before the new data */
  atomic_store_explicit(&s->lo, lo, memory_order_relaxed);
  atomic_store_explicit(&s->hi, hi, memory_order_relaxed);
  atomic_store_explicit(&s->heap, heap, memory_order_relaxed);
  atomic_store_explicit(&s->seq, seq + 2, memory_order_release);
}

static bmm_fixed_t *slot_read(slot_t *s, uintptr_t *lo, uintptr_t *hi) {
  for (;;) {
    unsigned seq = atomic_load_explicit(&s->seq, memory_order_acquire);
    if (seq & 1) return NULL;
    *lo = atomic_load_explicit(&s->lo, memory_order_relaxed);
    *hi = atomic_load_explicit(&s->hi, memory_order_relaxed);
    bmm_fixed_t *heap = atomic_load_explicit(&s->heap, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire); /* the data before the second seq */
    if (atomic_load_explicit(&s->seq, memory_order_relaxed) == seq) return heap;
  }
}

/* Ranges may nest (a fixed heap inside a block of another): the innermost
 * one owns p. */
bmm_fixed_t *bmm__fixed_find(const void *p) {
  unsigned top = atomic_load_explicit(&registry_top, memory_order_acquire);
  bmm_fixed_t *found = NULL;
  uintptr_t a = (uintptr_t)p, found_span = UINTPTR_MAX;
  for (unsigned i = 0; i < top; i++) {
    uintptr_t lo, hi;
    bmm_fixed_t *heap = slot_read(&registry[i], &lo, &hi);
    if (heap != NULL && a >= lo && a < hi && hi - lo < found_span) {
      found = heap;
      found_span = hi - lo;
    }
  }
  return found;
}

/* A free slot, or FIXED_SLOTS. Under registry_lock. */
static unsigned registry_free_slot(void) {
  for (unsigned i = 0; i < FIXED_SLOTS; i++)
    if (atomic_load_explicit(&registry[i].heap, memory_order_relaxed) == NULL) return i;
  return FIXED_SLOTS;
}

/* ---- Heap setup -------------------------------------------------------- */

/* Where the heap's parts go in [lo, hi): offsets from the header h (the
 * first 16-aligned byte) of the first block and of the sentinel, and the
 * lists needed. False when the range cannot hold one smallest block. */
typedef struct layout_s {
  uintptr_t h;
  size_t first, end, nbins;
} layout_t;

static bool layout_plan(uintptr_t lo, uintptr_t hi, layout_t *l) {
  l->h = (lo + UNIT - 1) & ~(uintptr_t)(UNIT - 1);
  if (l->h < lo || l->h >= hi) return false;
  size_t room = hi - l->h;
  uint64_t max_units = room / UNIT;
  if (max_units > MAX_UNITS) max_units = MAX_UNITS;
  l->nbins = bin_of(max_units < MIN_UNITS ? MIN_UNITS : max_units) + 1;
  size_t head = offsetof(bmm_fixed_t, heads) + l->nbins * sizeof(fblock_t *);
  l->first = ((head + HDR_SIZE + UNIT - 1) & ~(size_t)(UNIT - 1)) - HDR_SIZE;
  if (room < l->first + MIN_UNITS * UNIT + HDR_SIZE) return false;
  l->end = (room & ~(size_t)(UNIT - 1)) - HDR_SIZE;
  if ((l->end - l->first) / UNIT > MAX_UNITS) l->end = l->first + (size_t)MAX_UNITS * UNIT;
  return true;
}

/* A key for the header checks that differs between heaps and runs:
 * addresses (ASLR), the size and a counter, through a mixing function. */
static uint64_t heap_secret(const void *h, size_t size) {
  uint64_t x = atomic_fetch_add_explicit(&registry_seed, 0x9e3779b97f4a7c15u, memory_order_relaxed);
  x ^= (uint64_t)(uintptr_t)h * 0xbf58476d1ce4e5b9u ^ (uint64_t)size;
  x ^= (uint64_t)(uintptr_t)&x; /* the stack address */
  x ^= x >> 31;
  x *= 0x94d049bb133111ebu;
  return x ^ x >> 29;
}

static bmm_fixed_t *layout_apply(const layout_t *l, unsigned slot, size_t size) {
  bmm_fixed_t *fh = (bmm_fixed_t *)l->h;
  atomic_init(&fh->lock, 0);
  fh->slot = slot;
  fh->magic = FIXED_MAGIC ^ (uintptr_t)fh;
  fh->secret = heap_secret(fh, size);
  fh->first = (char *)l->h + l->first;
  fh->end = at(fh, l->end);
  fh->live = fh->blocks = 0;
  fh->epoch = 0;
  fh->nbins = (uint32_t)l->nbins;
  memset(fh->bitmap, 0, sizeof fh->bitmap);
  memset(fh->heads, 0, l->nbins * sizeof fh->heads[0]);
  fh->end->head = hdr_make(fh, fh->end, 0, 0, F_USED);
  make_free(fh, (fblock_t *)fh->first, l->end - l->first);
  return fh;
}

bmm_fixed_t *bmm__fixed_init(void *mem, size_t size) {
  uintptr_t lo = (uintptr_t)mem;
  layout_t l;
  if (bmm_unlikely(mem == NULL || size > UINTPTR_MAX - lo || !layout_plan(lo, lo + size, &l))) {
    errno = EINVAL;
    return NULL;
  }
  bmm__spin_lock(&registry_lock);
  unsigned slot = registry_free_slot();
  if (bmm_unlikely(slot == FIXED_SLOTS)) {
    bmm__spin_unlock(&registry_lock);
    errno = ENOMEM;
    return NULL;
  }
  bmm_fixed_t *fh = layout_apply(&l, slot, size);
  slot_write(&registry[slot], lo, lo + size, fh);
  if (slot >= atomic_load_explicit(&registry_top, memory_order_relaxed))
    atomic_store_explicit(&registry_top, slot + 1, memory_order_release);
  bmm__spin_unlock(&registry_lock);
  return fh;
}

void bmm__fixed_destroy(bmm_fixed_t *fh) {
  check_heap_arg(fh);
  bmm__spin_lock(&registry_lock);
  slot_write(&registry[fh->slot], 0, 0, NULL);
  unsigned top = atomic_load_explicit(&registry_top, memory_order_relaxed);
  while (top > 0 && atomic_load_explicit(&registry[top - 1].heap, memory_order_relaxed) == NULL)
    top--;
  atomic_store_explicit(&registry_top, top, memory_order_release);
  bmm__spin_lock(&fh->lock); /* waits out a call still inside the heap */
  fh->magic = 0;
  bmm__spin_unlock(&fh->lock);
  bmm__spin_unlock(&registry_lock);
}
