/* jit.c: the JIT heap (bmm_jit_*), executable memory for generated code.
 *
 * A JIT heap is a set of *chunks* of executable memory taken from the OS
 * layer, never from the arenas: code needs access rights no arena page has,
 * and a heap must be able to give all of it back at once. Two modes:
 *   RWX    one mapping, readable, writable and executable
 *          (bmm__os_alloc_rwx); a block is written at its code address.
 *   split  BMM_JIT_SPLIT, W^X: the same pages mapped twice through a memfd
 *          (bmm__os_dual_map), read+execute at the code address and
 *          read+write at an alias; no address is ever writable and
 *          executable at once.
 * bmm_jit_new(0) maps its first chunk RWX; where the system refuses that
 * (EACCES or EPERM: SELinux execmem, PaX MPROTECT, seccomp policies) the
 * heap switches to split mode for good, and so does a later chunk refused
 * the same way. Every chunk keeps its own writable base, so a heap may hold
 * chunks of both kinds.
 *
 * Blocks. Code is packed in 64-byte granules (JIT_GRANULE says why 64); a
 * block is a run of granules. A chunk holds nothing but code: its metadata
 * is two bitmaps in a mapping of their own, `used` (the granule belongs to
 * a live block) and `end` (the granule is the last of its block), 2 bits
 * per 64 bytes of code. Free runs have no record, so a free merges with
 * both neighbours by clearing bits; a block's length is the distance to its
 * end bit; and a pointer is a block start exactly when its granule is used
 * and the one before is free or ends a block, which lets bmm_jit_free
 * reject foreign and interior pointers and double frees before it changes
 * anything. Fresh OS memory reads as zero, i.e. "all free", so a new chunk
 * costs no metadata writes.
 *
 * Allocation is next-fit: a cursor (chunk `cur`, granule `cursor`) follows
 * the last block handed out, so the common case, a JIT emitting one
 * function after another, tests the bits at the cursor and sets them. A
 * free of the block that ends at the cursor moves the cursor back to the
 * start of the free run the block joins: allocate/free churn, and "free
 * everything, allocate again", reuse the same addresses instead of walking
 * on through the chunk. When the run at the cursor is too short, the chunks
 * are searched in turn, 64 granules per bitmap word, skipping a chunk whose
 * free count is too small or that is known to hold no run that long
 * (`no_run`, learnt from a failed search, forgotten on a free there); when
 * that fails a new chunk is mapped. A search is bounded by the bitmap size
 * (256 words per MiB of code); no list is ever walked block by block.
 *
 * Chunks are 1 MiB at first and double up to 16 MiB; a block larger than
 * the next chunk gets a chunk of its own size. Their descriptors sit in a
 * fixed table inside the heap object (creation order, never moved while
 * the heap lives), and an index of their numbers sorted by code address
 * answers "which chunk holds p" by binary search.
 *
 * Memory for the heap object and for every bitmap comes from
 * bmm__os_reserve_aligned, never from malloc: a JIT heap never recurses
 * into the allocator (which may be the process' malloc).
 *
 * Concurrency. bmm_jit_alloc and bmm_jit_free: the caller serialises all
 * such calls on one heap. bmm_jit_alloc_sync and bmm_jit_free_sync take the
 * heap's spin lock (lock.c: test and test-and-set; on contention pauses
 * that double, then yields: a critical section is a few hundred cycles, so
 * sleeping would cost more than spinning, but on an oversubscribed machine
 * the holder may be descheduled, and then only yielding lets it finish).
 * bmm_jit_writable may run on any thread, alongside allocations and frees
 * of either kind: it reads the sorted index under a sequence lock
 * (index_seq is odd while a writer rewrites the index, and a reader that
 * saw it change retries), and a descriptor is fully written before its
 * number is stored into the index with release, so a reader that loads the
 * number with acquire sees the descriptor's fields. Descriptors change only
 * in bmm_jit_clear and bmm_jit_delete, which no other call on the same
 * heap may overlap; clear also takes the lock, so a racing _sync call sees
 * the heap before or after it, never half cleared. The lock is a leaf: no
 * other lock is taken while it is held. bmm_jit_flush touches no heap.
 *
 * fork: RWX chunks are private memory, copied on write in a child. Split
 * chunks are MAP_SHARED views of one memfd, shared by parent and child: a
 * child must not allocate from or write into a split heap it inherited
 * (it would write into the parent's code); it can make a heap of its own.
 * As with any user lock, a child forked while another thread held a heap's
 * lock finds it held for ever: no _sync call on that heap in the child.
 */
#include <string.h>

#include "internal.h"

/* ---- Geometry and tuning ----------------------------------------------- */

/* Granule: 64 bytes, the cache line of x86-64 and of common arm64 cores,
 * rather than the 16 of BMM_MIN_ALIGN. Then no two blocks share a cache
 * line: writing a new function never stores into a line that another core
 * may be executing from (on x86 such a store makes that core throw away
 * and refetch its pipeline, the cross-modifying-code penalty), the
 * line-wise cache maintenance of bmm_jit_flush on arm64 never touches a
 * neighbour, and every function starts at an instruction-fetch block. The
 * cost is the rest of the line for blocks below 64 bytes; compiled
 * functions and inline-cache stubs are mostly larger. The bitmaps take 2
 * bits per granule, 1/256 of the code size. */
#define JIT_GRANULE_SHIFT 6
#define JIT_GRANULE ((size_t)1 << JIT_GRANULE_SHIFT)

/* Chunk sizes: 1 MiB first (thousands of functions, yet cheap for a
 * process with many small heaps, e.g. one per compiled regex), doubling to
 * 16 MiB so that a big JIT has few chunks. The unused tail of the newest
 * chunk costs address space only: its pages are never touched. Chunk
 * sizes are multiples of 4 KiB, so a chunk has a multiple of 64 granules
 * and its bitmaps end on a word boundary. */
#define JIT_CHUNK_FIRST ((size_t)1 << 20)
#define JIT_CHUNK_MAX ((size_t)16 << 20)
#define JIT_CHUNK_ROUND ((size_t)64 << JIT_GRANULE_SHIFT)

/* At most 1024 chunks: 16 GiB of code and more. The table and the index
 * take about 70 KiB of address space, of which only the used part is ever
 * touched. */
#define JIT_MAX_CHUNKS 1024

/* One block is at most 1 GiB (ENOMEM beyond): no JIT emits that much at
 * once, and the cap keeps size arithmetic far from overflow and one
 * chunk's bitmaps below 4 MiB. */
#define JIT_BLOCK_MAX ((size_t)1 << 30)


/* Debug builds fill fresh and freed blocks with an instruction that traps,
 * instead of the 0xD0/0xDF data patterns: a call into code that was never
 * written, or into freed code, then stops at once. */
static const bool jit_fill_trap = BMM_DEBUG >= 1;
#if defined(__x86_64__) || defined(__i386__)
#define JIT_TRAP_BYTE 0xCC /* int3 */
#else
#define JIT_TRAP_BYTE 0x00 /* arm64: 0x00000000 is udf #0 */
#endif

#define JIT_NONE SIZE_MAX /* "no granule" / "no chunk" */

/* ---- Types ---------------------------------------------------------------- */

typedef struct jit_chunk_s {
  uint8_t *rx;       /* code address of granule 0 */
  uint8_t *rw;       /* where the code is written: rx itself in an RWX chunk */
  size_t size;       /* bytes of code memory, a multiple of JIT_CHUNK_ROUND */
  size_t granules;   /* size / JIT_GRANULE, a multiple of 64 */
  uint64_t *used;    /* bit per granule: part of a live block */
  uint64_t *end;     /* bit per granule: last granule of a live block */
  size_t meta_size;  /* bytes mapped at `used` for both bitmaps */
  size_t free_count; /* granules in no block */
  size_t no_run;     /* no free run of this many granules or more; SIZE_MAX: unknown */
} jit_chunk_t;

/* rx, rw, size, granules, used, end and meta_size are written before the
 * chunk is published in the index and not changed again until clear or
 * delete; the rest is owned by whoever serialises alloc/free (the caller,
 * or the lock for the _sync calls). */
struct bmm_jit {
  atomic_int lock;                         /* the spin lock of the _sync calls */
  bool split;                              /* new chunks are dual-mapped (W^X) */
  size_t struct_size;                      /* bytes mapped for this object */
  size_t next_chunk_size;                  /* size of the next regular chunk */
  size_t cur;                              /* chunk of the allocation cursor */
  size_t cursor;                           /* granule after the last block handed out in `cur` */
  size_t chunk_count;                      /* chunks[0, chunk_count) are mapped */
  _Atomic(uint32_t) index_seq;             /* odd while index[] is rewritten */
  _Atomic(uint32_t) index_count;           /* entries in index[] */
  _Atomic(uint16_t) index[JIT_MAX_CHUNKS]; /* chunk numbers by ascending rx */
  jit_chunk_t chunks[JIT_MAX_CHUNKS];
};

_Static_assert(JIT_MAX_CHUNKS <= UINT16_MAX, "index entries are 16 bits");
_Static_assert(JIT_CHUNK_FIRST % JIT_CHUNK_ROUND == 0, "chunk sizes keep whole bitmap words");

/* ---- Bitmaps -------------------------------------------------------------- */

static inline bool bit_get(const uint64_t *w, size_t i) {
  return (w[i >> 6] >> (i & 63)) & 1;
}

static inline void bit_put(uint64_t *w, size_t i, bool on) {
  uint64_t m = (uint64_t)1 << (i & 63);
  if (on)
    w[i >> 6] |= m;
  else
    w[i >> 6] &= ~m;
}

/* Set (on) or clear bits [i, i+n). */
static void bits_put_range(uint64_t *w, size_t i, size_t n, bool on) {
  while (n > 0) {
    size_t b = i & 63, take = 64 - b < n ? 64 - b : n;
    uint64_t m = (take == 64 ? ~(uint64_t)0 : ((uint64_t)1 << take) - 1) << b;
    if (on)
      w[i >> 6] |= m;
    else
      w[i >> 6] &= ~m;
    i += take;
    n -= take;
  }
}

/* The first set bit at or after i, or `limit`. */
static size_t bits_next_set(const uint64_t *w, size_t i, size_t limit) {
  while (i < limit) {
    uint64_t bits = w[i >> 6] >> (i & 63);
    if (bits != 0) return i + (size_t)__builtin_ctzll(bits);
    i = (i | 63) + 1;
  }
  return limit;
}

/* First granule of a run of n free granules at or after `from`, or
 * JIT_NONE. Works a word at a time: skips used words, then counts the free
 * bits with one count-trailing-zeros per word. */
static size_t chunk_find_run(const jit_chunk_t *c, size_t from, size_t n) {
  size_t g = from, run = 0, start = 0;
  while (g < c->granules) {
    /* Bit 0 is granule g; the shift brings in zeros ("used") at the top. */
    uint64_t free_bits = ~c->used[g >> 6] >> (g & 63);
    if (run == 0) {
      if (free_bits == 0) {
        g = (g | 63) + 1;
        continue;
      }
      size_t z = (size_t)__builtin_ctzll(free_bits);
      g += z;
      free_bits >>= z;
      start = g;
    }
    size_t ones = ~free_bits == 0 ? 64 : (size_t)__builtin_ctzll(~free_bits);
    if (ones == 0) { /* granule g is used: the run so far is too short */
      run = 0;
      continue;
    }
    run += ones;
    g += ones;
    if (run >= n) return start;
  }
  return JIT_NONE;
}

/* First granule of the free run that ends just before granule g (g itself
 * when granule g-1 is used). */
static size_t chunk_free_run_start(const jit_chunk_t *c, size_t g) {
  while (g > 0) {
    size_t b = (g - 1) & 63;
    /* Granule g-1 moves to bit 63; the zeros shifted in at the bottom lie
     * below the highest set bit, so they never count. */
    uint64_t used = c->used[(g - 1) >> 6] << (63 - b);
    if (used != 0) return g - (size_t)__builtin_clzll(used);
    g -= b + 1;
  }
  return 0;
}

/* ---- The spin lock --------------------------------------------------- */

static inline void jit_lock(bmm_jit_t *jit) {
  bmm__spin_lock(&jit->lock);
}

static inline void jit_unlock(bmm_jit_t *jit) {
  bmm__spin_unlock(&jit->lock);
}

/* ---- The chunk index (sequence lock) --------------------------------- */

/* Writers are serialised (caller or lock). They make index_seq odd, fence
 * so that no index store is seen before that, rewrite, and make it even
 * with release. Entries are stored with release after the descriptor they
 * name is complete. */
static uint32_t jit_index_write_begin(bmm_jit_t *jit) {
  uint32_t seq = atomic_load_explicit(&jit->index_seq, memory_order_relaxed);
  atomic_store_explicit(&jit->index_seq, seq + 1, memory_order_relaxed);
  atomic_thread_fence(memory_order_release);
  return seq;
}

static void jit_index_write_end(bmm_jit_t *jit, uint32_t seq) {
  atomic_store_explicit(&jit->index_seq, seq + 2, memory_order_release);
}

/* Insert chunk k, keeping the index sorted by code address. */
static void jit_index_insert(bmm_jit_t *jit, size_t k) {
  uint32_t seq = jit_index_write_begin(jit);
  size_t i = atomic_load_explicit(&jit->index_count, memory_order_relaxed);
  uintptr_t rx = (uintptr_t)jit->chunks[k].rx;
  for (; i > 0; i--) {
    uint16_t prev = atomic_load_explicit(&jit->index[i - 1], memory_order_relaxed);
    if ((uintptr_t)jit->chunks[prev].rx < rx) break;
    atomic_store_explicit(&jit->index[i], prev, memory_order_release);
  }
  atomic_store_explicit(&jit->index[i], (uint16_t)k, memory_order_release);
  atomic_fetch_add_explicit(&jit->index_count, 1, memory_order_release);
  jit_index_write_end(jit, seq);
}

/* The chunk whose code range holds p, or NULL. Safe on any thread while
 * the heap lives (see Concurrency at the top). */
static jit_chunk_t *jit_chunk_of(bmm_jit_t *jit, const void *p) {
  uintptr_t a = (uintptr_t)p;
  for (;;) {
    uint32_t seq = atomic_load_explicit(&jit->index_seq, memory_order_acquire);
    if (bmm_unlikely(seq & 1)) {
      bmm__cpu_relax();
      continue;
    }
    size_t lo = 0, hi = atomic_load_explicit(&jit->index_count, memory_order_acquire);
    if (hi > JIT_MAX_CHUNKS) hi = JIT_MAX_CHUNKS; /* a torn read; retried below */
    jit_chunk_t *below = NULL;                    /* the last chunk that starts at or below p */
    while (lo < hi) {
      size_t mid = lo + (hi - lo) / 2;
      uint16_t k = atomic_load_explicit(&jit->index[mid], memory_order_acquire);
      jit_chunk_t *c = &jit->chunks[k];
      if ((uintptr_t)c->rx <= a) {
        below = c;
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    bool hit = below != NULL && a - (uintptr_t)below->rx < below->size;
    atomic_thread_fence(memory_order_acquire); /* the loads above before the recheck */
    if (atomic_load_explicit(&jit->index_seq, memory_order_relaxed) == seq)
      return hit ? below : NULL;
  }
}

/* ---- Chunks ------------------------------------------------------------ */

static void jit_code_unmap(uint8_t *rw, uint8_t *rx, size_t size) {
  if (rw == rx)
    bmm__os_release(rx, size);
  else
    bmm__os_dual_unmap(rw, rx, size);
}

static void jit_chunk_release(jit_chunk_t *c) {
  jit_code_unmap(c->rw, c->rx, c->size);
  bmm__os_release(c->used, c->meta_size);
}

/* Map a chunk for at least n granules; returns its number, or JIT_NONE
 * with errno ENOMEM. */
static size_t jit_chunk_add(bmm_jit_t *jit, size_t n) {
  size_t k = jit->chunk_count;
  if (k == JIT_MAX_CHUNKS) {
    errno = ENOMEM;
    return JIT_NONE;
  }
  size_t need = n << JIT_GRANULE_SHIFT; /* n <= JIT_BLOCK_MAX / JIT_GRANULE: no overflow */
  bool regular = need <= jit->next_chunk_size;
  size_t size =
      regular ? jit->next_chunk_size : (need + JIT_CHUNK_ROUND - 1) & ~(JIT_CHUNK_ROUND - 1);
  size_t ps = bmm__os_page_size();
  size = (size + ps - 1) & ~(ps - 1);

  void *rw = NULL, *rx = NULL;
  if (!jit->split) {
    rx = bmm__os_alloc_rwx(size);
    if (rx != NULL) {
      rw = rx;
    } else if (errno == EACCES || errno == EPERM) {
      jit->split = true; /* refused by policy, not for want of memory */
      bmm__verbose("jit: RWX memory refused; split (W^X) mode from chunk", k);
    } else {
      errno = ENOMEM;
      return JIT_NONE;
    }
  }
  if (rx == NULL && !bmm__os_dual_map(size, &rw, &rx)) {
    errno = ENOMEM;
    return JIT_NONE;
  }

  size_t granules = size >> JIT_GRANULE_SHIFT;
  size_t words = granules / 64;
  size_t meta_size = (2 * words * sizeof(uint64_t) + ps - 1) & ~(ps - 1);
  uint64_t *meta = bmm__os_reserve_aligned(meta_size, ps, true); /* reads as zero: all free */
  if (meta == NULL) {
    jit_code_unmap(rw, rx, size);
    errno = ENOMEM;
    return JIT_NONE;
  }
  jit->chunks[k] = (jit_chunk_t){.rx = rx,
                                 .rw = rw,
                                 .size = size,
                                 .granules = granules,
                                 .used = meta,
                                 .end = meta + words,
                                 .meta_size = meta_size,
                                 .free_count = granules,
                                 .no_run = SIZE_MAX};
  jit->chunk_count = k + 1;
  jit_index_insert(jit, k);
  if (regular && jit->next_chunk_size < JIT_CHUNK_MAX) jit->next_chunk_size *= 2;
  bmm__verbose("jit: new chunk, bytes", size);
  return k;
}

/* ---- Blocks ---------------------------------------------------------- */

/* Used only by bmm_assert_expensive, which compiles to nothing below
 * BMM_DEBUG=2. */
__attribute__((unused)) static bool jit_check(const bmm_jit_t *jit, const jit_chunk_t *c);

/* Hand out granules [g, g+n) of chunk k and put the cursor after them. */
static void *jit_take(bmm_jit_t *jit, size_t k, size_t g, size_t n) {
  jit_chunk_t *c = &jit->chunks[k];
  bits_put_range(c->used, g, n, true);
  bit_put(c->end, g + n - 1, true);
  c->free_count -= n;
  jit->cur = k;
  jit->cursor = g + n;
  uint8_t *code = c->rx + (g << JIT_GRANULE_SHIFT);
  if (jit_fill_trap) {
    memset(c->rw + (g << JIT_GRANULE_SHIFT), JIT_TRAP_BYTE, n << JIT_GRANULE_SHIFT);
    bmm__os_flush_icache(code, n << JIT_GRANULE_SHIFT);
  }
  bmm_assert_expensive(jit_check(jit, c));
  return code;
}

/* The run at the cursor was too short: search every chunk, then map one. */
static bmm_noinline void *jit_alloc_search(bmm_jit_t *jit, size_t n) {
  size_t count = jit->chunk_count;
  for (size_t i = 1; i <= count; i++) {
    size_t k = (jit->cur + i) % count; /* the cursor's chunk last, from its start */
    jit_chunk_t *c = &jit->chunks[k];
    if (c->free_count < n || n >= c->no_run) continue;
    size_t g = chunk_find_run(c, 0, n);
    if (g != JIT_NONE) return jit_take(jit, k, g, n);
    c->no_run = n; /* below the old bound, or the test above would have skipped */
  }
  size_t k = jit_chunk_add(jit, n);
  return k == JIT_NONE ? NULL : jit_take(jit, k, 0, n);
}

/* Allocation with alloc/free already serialised. */
static void *jit_alloc_serial(bmm_jit_t *jit, size_t size) {
  if (bmm_unlikely(size > JIT_BLOCK_MAX)) {
    errno = ENOMEM;
    return NULL;
  }
  size_t n = size == 0 ? 1 : (size + JIT_GRANULE - 1) >> JIT_GRANULE_SHIFT;
  size_t g = chunk_find_run(&jit->chunks[jit->cur], jit->cursor, n);
  if (bmm_unlikely(g == JIT_NONE)) return jit_alloc_search(jit, n);
  return jit_take(jit, jit->cur, g, n);
}

/* Why `code` is not a code address of this heap (the error path only). */
static bmm_cold const char *jit_foreign_reason(const bmm_jit_t *jit, const void *code) {
  for (size_t k = 0; k < jit->chunk_count; k++) {
    const jit_chunk_t *c = &jit->chunks[k];
    if (c->rw != c->rx && (uintptr_t)code - (uintptr_t)c->rw < c->size)
      return "a writable alias, not a code address of this JIT heap";
  }
  return "not a block of this JIT heap";
}

/* Free with alloc/free already serialised; returns NULL, or why `code`
 * cannot be freed (then nothing was changed). */
static const char *jit_free_serial(bmm_jit_t *jit, void *code) {
  jit_chunk_t *c = jit_chunk_of(jit, code);
  if (bmm_unlikely(c == NULL)) return jit_foreign_reason(jit, code);
  size_t off = (size_t)((uint8_t *)code - c->rx);
  size_t g = off >> JIT_GRANULE_SHIFT;
  if (bmm_unlikely((off & (JIT_GRANULE - 1)) != 0)) return "not the start of a JIT block";
  if (bmm_unlikely(!bit_get(c->used, g))) return "not an allocated JIT block (double free?)";
  if (bmm_unlikely(g > 0 && bit_get(c->used, g - 1) && !bit_get(c->end, g - 1)))
    return "not the start of a JIT block";
  size_t last = bits_next_set(c->end, g, c->granules);
  bmm_assert(last < c->granules);
  size_t n = last + 1 - g;
  if (jit_fill_trap) {
    memset(c->rw + off, JIT_TRAP_BYTE, n << JIT_GRANULE_SHIFT);
    bmm__os_flush_icache(code, n << JIT_GRANULE_SHIFT);
  }
  bits_put_range(c->used, g, n, false);
  bit_put(c->end, last, false);
  c->free_count += n;
  c->no_run = SIZE_MAX; /* a longer run may exist now */
  if (c == &jit->chunks[jit->cur] && last + 1 == jit->cursor)
    jit->cursor = chunk_free_run_start(c, g);
  bmm_assert_expensive(jit_check(jit, c));
  return NULL;
}

/* The expensive validator, after a change to chunk c: the index is sorted
 * and its chunks do not overlap, the cursor lies in a chunk, and in c the
 * bitmaps agree with the free count, every used run ends with an end bit
 * and no end bit lies outside a block. Only c's bitmaps are read, so a
 * check costs one pass over 2 bits per granule of one chunk. */
static bool jit_check(const bmm_jit_t *jit, const jit_chunk_t *c) {
  size_t count = jit->chunk_count;
  if (count == 0 || jit->cur >= count) return false;
  if (jit->cursor > jit->chunks[jit->cur].granules) return false;
  if (atomic_load_explicit(&jit->index_count, memory_order_relaxed) != count) return false;
  uintptr_t prev_end = 0;
  for (size_t i = 0; i < count; i++) {
    uint16_t k = atomic_load_explicit(&jit->index[i], memory_order_relaxed);
    if (k >= count || (uintptr_t)jit->chunks[k].rx < prev_end) return false;
    prev_end = (uintptr_t)jit->chunks[k].rx + jit->chunks[k].size;
  }
  size_t words = c->granules / 64, used = 0;
  for (size_t w = 0; w < words; w++) {
    uint64_t u = c->used[w];
    uint64_t next = (u >> 1) | (w + 1 < words ? (c->used[w + 1] & 1) << 63 : 0);
    if ((c->end[w] & ~u) != 0) return false;         /* an end outside a block */
    if ((u & ~next & ~c->end[w]) != 0) return false; /* a block with no end */
    used += (size_t)__builtin_popcountll(u);
  }
  return used + c->free_count == c->granules;
}

/* ---- The API ------------------------------------------------------------- */

BMM_API bmm_jit_t *bmm_jit_new(int flags) {
  if (flags & ~BMM_JIT_SPLIT) {
    errno = EINVAL;
    return NULL;
  }
  bmm__process_init(); /* options (abort_on_error) come from the environment */
  size_t ps = bmm__os_page_size();
  size_t bytes = (sizeof(bmm_jit_t) + ps - 1) & ~(ps - 1);
  bmm_jit_t *jit = bmm__os_reserve_aligned(bytes, ps, true);
  if (jit == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  /* Fresh memory is zero: cur, cursor, chunk_count and the index are set. */
  atomic_init(&jit->lock, 0);
  atomic_init(&jit->index_seq, 0);
  atomic_init(&jit->index_count, 0);
  jit->split = (flags & BMM_JIT_SPLIT) != 0;
  jit->struct_size = bytes;
  jit->next_chunk_size = JIT_CHUNK_FIRST;
  /* The first chunk now, so that the RWX fallback is decided here and a
   * heap that exists can allocate. */
  if (jit_chunk_add(jit, 1) == JIT_NONE) {
    bmm__os_release(jit, bytes);
    errno = ENOMEM;
    return NULL;
  }
  return jit;
}

BMM_API void bmm_jit_delete(bmm_jit_t *jit) {
  if (jit == NULL) return;
  for (size_t k = 0; k < jit->chunk_count; k++)
    jit_chunk_release(&jit->chunks[k]);
  bmm__os_release(jit, jit->struct_size);
}

BMM_API void bmm_jit_clear(bmm_jit_t *jit) {
  if (jit == NULL) return;
  jit_lock(jit);
  /* Keep the first chunk (the smallest) mapped for reuse; give back the
   * rest, so a heap that once grew big does not hold its peak forever. */
  uint32_t seq = jit_index_write_begin(jit);
  atomic_store_explicit(&jit->index[0], 0, memory_order_release);
  atomic_store_explicit(&jit->index_count, 1, memory_order_release);
  jit_index_write_end(jit, seq);
  for (size_t k = 1; k < jit->chunk_count; k++)
    jit_chunk_release(&jit->chunks[k]);
  jit_chunk_t *c = &jit->chunks[0];
  memset(c->used, 0, c->meta_size); /* both bitmaps */
  c->free_count = c->granules;
  c->no_run = SIZE_MAX;
  if (jit_fill_trap) {
    memset(c->rw, JIT_TRAP_BYTE, c->size);
    bmm__os_flush_icache(c->rx, c->size);
  }
  jit->chunk_count = 1;
  jit->cur = 0;
  jit->cursor = 0;
  jit->next_chunk_size = c->size < JIT_CHUNK_MAX ? 2 * c->size : JIT_CHUNK_MAX;
  bmm_assert_expensive(jit_check(jit, c));
  jit_unlock(jit);
}

/* A NULL heap gives EINVAL, as bmm_jit_new does for unknown flags. */
BMM_API void *bmm_jit_alloc(bmm_jit_t *jit, size_t size) {
  if (bmm_unlikely(jit == NULL)) {
    errno = EINVAL;
    return NULL;
  }
  return jit_alloc_serial(jit, size);
}

BMM_API void bmm_jit_free(bmm_jit_t *jit, void *code) {
  if (code == NULL) return;
  const char *why = jit == NULL ? "no JIT heap given" : jit_free_serial(jit, code);
  if (bmm_unlikely(why != NULL)) bmm__error(code, "bmm_jit_free", why);
}

BMM_API void *bmm_jit_alloc_sync(bmm_jit_t *jit, size_t size) {
  if (bmm_unlikely(jit == NULL)) {
    errno = EINVAL;
    return NULL;
  }
  jit_lock(jit);
  void *code = jit_alloc_serial(jit, size);
  jit_unlock(jit); /* a release store: errno stays as the allocation left it */
  return code;
}

BMM_API void bmm_jit_free_sync(bmm_jit_t *jit, void *code) {
  if (code == NULL) return;
  const char *why = "no JIT heap given";
  if (jit != NULL) {
    jit_lock(jit);
    why = jit_free_serial(jit, code);
    jit_unlock(jit); /* report outside the lock: abort_on_error=0 returns */
  }
  if (bmm_unlikely(why != NULL)) bmm__error(code, "bmm_jit_free_sync", why);
}

/* Any address inside one of the heap's chunks maps to its alias, in a
 * block or not (a JIT may patch code at interior addresses); NULL outside.
 * Lock-free, safe beside alloc/free on other threads (see the top). */
BMM_API void *bmm_jit_writable(bmm_jit_t *jit, void *code) {
  if (jit == NULL || code == NULL) return NULL;
  jit_chunk_t *c = jit_chunk_of(jit, code);
  return c == NULL ? NULL : c->rw + ((uint8_t *)code - c->rx);
}

/* Takes the code address: on arm64 the data cache is cleaned and the
 * instruction cache invalidated by the addresses the code will be fetched
 * from; the data cache is physically tagged, so this also pushes out what
 * was written through the writable alias. */
BMM_API void bmm_jit_flush(void *code, size_t size) {
  if (code == NULL || size == 0) return;
  bmm__os_flush_icache(code, size);
}
