/* secure.c: secure mode (option `secure`), chosen once when the process
 * initialises, so the default fast paths carry none of it: in secure mode
 * the direct table stays empty and every page's tid has BMM_TID_SLOW set,
 * so malloc and free always fall through to the slow paths, which call
 * here first (bmm__secure_free; bmm__secure_pop on the page the heap's
 * secure direct table names). What it adds, per small or medium block
 * (no header is added):
 *   - free-list links encoded with the page's secret key and the link's
 *     own address, and checked when decoded (a forged or overwritten link
 *     is reported, not followed);
 *   - a mark word in every free block (second word, keyed): a free that
 *     finds it is a double free; an allocation that does not find it saw a
 *     write after free; secure=2 also fills and checks the whole block;
 *   - an 8-byte canary after the usable size, written when the block is
 *     handed out and checked when it is freed (overflows past the end);
 *   - blocks carved onto the free list in random order;
 *   - the last 4 KiB of every page, and a page after every large block,
 *     made inaccessible (guard pages);
 *   - sized frees checked against the block; optional zeroing on free.
 */
#include <string.h>

#include "fastpath.h"

int bmm__secure;
bool bmm__secure_fast;
static uint64_t secret; /* [init] the per-page keys derive from it */
/* [init] Canaries are keyed with the page key xor this, so that the word
 * right after a live block (what an over-read of a few bytes shows, say a
 * string read past its end) does not give away the key of the page's
 * links. What it does not protect: a read of a free block, whose mark is
 * keyed with the page key alone and whose link gives that key away to one
 * who can guess where it points; with that key, one canary of the page
 * gives this secret, and then every canary its page's key. Keeping them
 * apart would take a second key per page, and the page descriptor has no
 * room for one. */
static uint64_t canary_secret;
/* [init] zero_on_free: freed blocks are cleared (and, at level 2,
 * checked for zero rather than for the free fill). Fixed with the mode: a
 * block freed under one fill must be checked against that fill. */
static bool zero_on_free;
static bool fill_freed;

/* A bijective 64-bit mix (the splitmix64 finaliser constants). */
static inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static inline uint64_t rotl(uint64_t x, unsigned r) {
  return (x << (r & 63)) | (x >> ((64 - r) & 63));
}

void bmm__secure_init(void) {
  bmm__secure = (int)bmm__options[BMM_OPTION_SECURE];
  if (!bmm__secure) return;
  zero_on_free = bmm__options[BMM_OPTION_ZERO_ON_FREE] != 0;
  fill_freed = zero_on_free || bmm__secure >= 2;
  /* Without the kernel's randomness, mix what differs between runs
   * (time, address-space layout); weaker, but never a fixed key. */
  if (!bmm__os_random(&secret, sizeof secret))
    secret = mix64((uint64_t)bmm__os_now_ms() ^ (uintptr_t)&secret ^ bmm__os_thread_id());
  if (!bmm__os_random(&canary_secret, sizeof canary_secret))
    canary_secret = mix64(secret + 0x9e3779b97f4a7c15ull);
}

/* ---- Keys, links and marks ---------------------------------------------- */

/* Both words are keyed and differ per block; a mixing function would add
 * nothing (anyone who reads a mark can undo a public mix) and costs ten
 * instructions on every malloc and free. */
static inline uint64_t free_mark(const bmm_page_t *page, const void *b) {
  return rotl(page->key ^ (uintptr_t)b, 23);
}

static inline uint64_t canary(const bmm_page_t *page, const void *b) {
  return ~(page->key ^ canary_secret) ^ (uintptr_t)b;
}

/* What a free block above 16 bytes holds in its canary word instead: a
 * free that finds it there is of a free block whose mark was overwritten
 * (`free(o); o->field = x; free(o)`), which the mark alone let through.
 * (In a 16-byte block that word is the mark's.) */
static inline uint64_t freed_canary(const bmm_page_t *page, const void *b) {
  return ~canary(page, b);
}

/* What a live block that bmm_expand shrank below half of itself holds
 * instead of its canary, and a sized free of it may then name any size the
 * block holds (see bmm__secure_check_size). It differs from the canary by
 * a keyed word (odd: never zero; never all ones, the freed canary's, but
 * for a chance of 2^-63), so that an overflow cannot turn one into the
 * other by a known change (canary ^ 1 let `buf[len] ^= 1` pass). Slow
 * paths only: the mix costs nothing there. It mixes the canary's key: one
 * who reads both words learns no more than the canary told. */
static inline uint64_t shrunk_canary(const bmm_page_t *page, const void *b) {
  return canary(page, b) ^ (mix64(page->key ^ canary_secret) | 1);
}

static inline uint64_t *canary_word(const bmm_page_t *page, const void *b) {
  return (uint64_t *)((uint8_t *)b + page->block_size - BMM_CANARY);
}

/* p lies among the page's carved blocks, 16-aligned: its first 16 bytes
 * (link and mark) are the page's. What malloc's short path tests before
 * it reads p's mark; a p that does not start a block fails that mark (no
 * writer without the key can forge it) and goes to the checking pop,
 * whose link_ok tests the block start too. */
static inline bool in_page(const bmm_page_t *page, const void *p) {
  uintptr_t off = (uintptr_t)p - (uintptr_t)bmm__page_start(page);
  return off < (size_t)page->capacity * page->block_size && (off & (BMM_ALIGN - 1)) == 0;
}

/* A link is the next block's address xor the key, rotated by key bits,
 * xor the link's own address: reading one link reveals neither the key
 * nor how another block's link is written, unless the reader can guess
 * where it points (see canary_secret). */
static inline void set_next(const bmm_page_t *page, bmm_block_t *b, bmm_block_t *next) {
  uint64_t enc = rotl((uintptr_t)next ^ page->key, (unsigned)(page->key >> 58)) ^ (uintptr_t)b;
  b->next = (bmm_block_t *)(uintptr_t)enc;
}

void bmm__secure_set_next(const bmm_page_t *page, bmm_block_t *b, bmm_block_t *next) {
  set_next(page, b, next);
}

static bmm_noinline bmm_block_t *bad_link(const bmm_page_t *page, const bmm_block_t *b) {
  bmm__error_block(b, "malloc", "free list corrupted: a freed block was written to",
                   page->block_size);
  return NULL;
}

/* b's link, decoded. */
static inline bmm_block_t *decode(const bmm_page_t *page, const bmm_block_t *b) {
  uint64_t enc = (uintptr_t)b->next ^ (uintptr_t)b;
  unsigned r = (unsigned)(page->key >> 58);
  return (bmm_block_t *)(uintptr_t)(rotl(enc, 64 - r) ^ page->key);
}

/* A decoded link the list may follow: the end, or a block the page carved. */
static inline bool link_ok(const bmm_page_t *page, const bmm_block_t *next) {
  return next == NULL ||
         (in_page(page, next) && bmm__page_block_index(page, next) < page->capacity);
}

/* Decoded link of b; a link that leads outside the page's blocks was
 * overwritten (a write after free): reported, and the walk ends here (the
 * blocks after it are lost rather than trusted). */
static inline bmm_block_t *next_of(const bmm_page_t *page, const bmm_block_t *b) {
  bmm_block_t *next = decode(page, b);
  if (bmm_likely(link_ok(page, next))) return next;
  return bad_link(page, b);
}

bmm_block_t *bmm__secure_next(const bmm_page_t *page, const bmm_block_t *b) {
  return next_of(page, b);
}

/* Links of a heap's delayed list (blocks of many pages): keyed with the
 * process secret; a decoded link must at least lead into BrainMM memory. */
void bmm__secure_set_next_any(bmm_block_t *b, bmm_block_t *next) {
  uint64_t enc = rotl((uintptr_t)next ^ secret, (unsigned)(secret >> 58)) ^ (uintptr_t)b;
  b->next = (bmm_block_t *)(uintptr_t)enc;
}

bmm_block_t *bmm__secure_next_any(const bmm_block_t *b) {
  uint64_t enc = (uintptr_t)b->next ^ (uintptr_t)b;
  unsigned r = (unsigned)(secret >> 58);
  bmm_block_t *next = (bmm_block_t *)(uintptr_t)(rotl(enc, 64 - r) ^ secret);
  if (bmm_likely(next == NULL || (bmm__is_ours(next) && ((uintptr_t)next & 15) == 0))) return next;
  bmm__error(b, "free", "delayed free list corrupted: a freed block was written to");
  return NULL;
}

/* ---- Pages -------------------------------------------------------------- */

void bmm__secure_page_init(bmm_page_t *page) {
  page->key = mix64(secret ^ (uintptr_t)bmm__page_start(page));
  bmm__secure_guard_tail(page);
  size_t room = (size_t)page->units * BMM_UNIT_SIZE - (page->guarded ? BMM_SPAN_PAGE : 0);
  page->reserved = (uint16_t)(room / page->block_size);
}

/* Make the last 4 KiB of the page's units inaccessible (it may be so
 * already: the arena keeps a one-unit page's guard for the next one).
 * Without it (the kernel refused, e.g. out of mappings) the page simply
 * has no guard. */
void bmm__secure_guard_tail(bmm_page_t *page) {
  if (page->guarded) return;
  uint8_t *end = bmm__page_start(page) + (size_t)page->units * BMM_UNIT_SIZE;
  page->guarded = bmm__os_protect(end - BMM_SPAN_PAGE, BMM_SPAN_PAGE, BMM_PROT_NONE) == 0;
}

/* Before the units go back to the arena. */
void bmm__secure_unguard(bmm_page_t *page) {
  uint8_t *end = bmm__page_start(page) + (size_t)page->units * BMM_UNIT_SIZE;
  bmm__os_protect(end - BMM_SPAN_PAGE, BMM_SPAN_PAGE, BMM_PROT_READ | BMM_PROT_WRITE);
  page->guarded = 0;
}

/* Blocks are multiples of 16 bytes: a 16-byte one is its link and mark
 * only; a bigger one ends with the freed canary, and what lies between is
 * filled (fill_freed, out of line: level 1 does without). */
static bmm_noinline void fill_free(const bmm_page_t *page, void *p) {
  memset((uint64_t *)p + 2, zero_on_free ? 0 : BMM_DEBUG_FILL_FREE,
         page->block_size - 2 * sizeof(uint64_t) - BMM_CANARY);
}

/* The two words every free block carries: its mark, and (above 16 bytes)
 * its freed canary. */
static inline void mark_words(const bmm_page_t *page, void *p) {
  if (page->block_size > 2 * sizeof(uint64_t)) *canary_word(page, p) = freed_canary(page, p);
  ((uint64_t *)p)[1] = free_mark(page, p);
}

static inline void mark_free(const bmm_page_t *page, void *p) {
  if (bmm_unlikely(fill_freed) && page->block_size > 2 * sizeof(uint64_t)) fill_free(page, p);
  mark_words(page, p);
}

/* n fresh blocks from `first` onto the page's free list in random order:
 * a program cannot predict which block follows which. Not a full shuffle:
 * the blocks are cut into streams, one per 4 KiB of them, and the list
 * takes each next block from a random stream, whose blocks it takes in
 * address order. A shuffle of every block made each step of a walk over
 * the blocks in allocation order a cache miss no prefetcher could see
 * coming (Python's garbage collector walks its objects so: the secure
 * python3 row with PYTHONMALLOC=malloc took 1.7x the default's time, its
 * collector 3x); a stream per OS page still moves forward in each page, as
 * the prefetchers want. What an overflow reaches: the next block handed
 * out lies right after the last one with a chance of one in the number
 * of streams (BMM_SECURE_EXTEND_BYTES / 4 KiB of them), not of blocks. */
#define BMM_SECURE_STREAMS_MAX (BMM_SECURE_EXTEND_BYTES / BMM_SPAN_PAGE)

void bmm__secure_extend(bmm_page_t *page, uint8_t *first, size_t n) {
  size_t bs = page->block_size;
  size_t k = n * bs / BMM_SPAN_PAGE;
  if (k > BMM_SECURE_STREAMS_MAX) k = BMM_SECURE_STREAMS_MAX;
  if (k > n) k = n; /* a medium page's few big blocks */
  if (k < 2) k = n < 2 ? 1 : 2; /* a page's last blocks, below 8 KiB: still two */
  size_t at[BMM_SECURE_STREAMS_MAX], end[BMM_SECURE_STREAMS_MAX];
  for (size_t j = 0; j < k; j++) {
    at[j] = j * n / k;
    end[j] = (j + 1) * n / k;
  }
  uint64_t rng = mix64(page->key ^ page->capacity);
  bmm_block_t *head = NULL, *prev = NULL;
  for (size_t i = 0; i < n; i++) {
    if (i % 8 == 0) rng = mix64(rng + 0x9e3779b97f4a7c15ull);
    size_t j = (size_t)(rng >> (8 * (i % 8)) & 0xff) * k >> 8; /* a byte scaled to [0, k) */
    while (at[j] == end[j]) /* that stream is done: the next one that is not */
      j = j + 1 == k ? 0 : j + 1;
    bmm_block_t *b = (bmm_block_t *)(first + at[j]++ * bs);
    mark_free(page, b);
    bmm__track_carve(b, bs);
    if (prev != NULL) set_next(page, prev, b);
    else head = b;
    prev = b;
  }
  set_next(page, prev, page->free);
  page->free = head;
}

/* ---- Allocation and free -------------------------------------------------- */

/* A block that was written while free (its mark, or at level 2 its
 * fill, changed) is reported and dropped: never handed out, for it may be
 * in use already (a double free that got past the checks puts a block on
 * the list twice). It counts as in use, by nobody: the page keeps it (and
 * stays) for good, rather than hand out what may be someone's. */
static bmm_noinline void drop_written(bmm_page_t *page, bmm_block_t *b) {
  bmm__error_block(b, "malloc", "a freed block was written to (use after free)",
                   page->block_size);
  page->used++;
}

/* Level 2: the whole of free block b still holds the fill and its freed
 * canary. Word by word: blocks are multiples of 16 bytes. */
static bmm_noinline bool fill_intact(const bmm_page_t *page, const bmm_block_t *b) {
  const uint64_t *w = (const uint64_t *)b;
  size_t bs = page->block_size;
  if (bs <= 2 * sizeof *w) return true;
  uint64_t fill = zero_on_free ? 0 : 0x0101010101010101ull * BMM_DEBUG_FILL_FREE;
  uint64_t diff = *canary_word(page, b) ^ freed_canary(page, b);
  for (size_t i = 2; i < (bs - BMM_CANARY) / sizeof *w; i++) diff |= w[i] ^ fill;
  return diff == 0;
}

/* The free list's first block b has a link that leads nowhere: reported,
 * and the list ends at b. The blocks after it are lost rather than trusted,
 * and counted as in use, by nobody (as drop_written's): every block not on
 * local_free is in use once b is popped, so that used + |free| +
 * |local_free| == capacity holds again (bmm__page_free_count relies on it;
 * the page stays for good). */
static bmm_noinline void cut_free_list(bmm_page_t *page, const bmm_block_t *b) {
  bad_link(page, b);
  uint32_t local = 0;
  for (const bmm_block_t *l = page->local_free; l != NULL && local < page->capacity;
       l = next_of(page, l))
    local++;
  page->used = page->capacity - local - 1; /* b's pop adds one */
}

/* Hand out b, taken off `page`'s free list: no link or mark leaks to the
 * program, and its canary is armed. */
static inline void *hand_out(bmm_page_t *page, bmm_block_t *b) {
  uint64_t *w = (uint64_t *)b;
  w[0] = w[1] = 0;
  *canary_word(page, b) = canary(page, b);
  page->used++;
  bmm__track_alloc(b, page->block_size - BMM_CANARY);
  return b;
}

/* Pop the first free block of `page` (which has one), checking that it
 * was not written while free, and arm its canary. NULL when that block
 * was dropped (see drop_written). */
static inline void *pop(bmm_page_t *page) {
  bmm_block_t *b = page->free;
  uint64_t *w = (uint64_t *)b;
  bmm__track_internal(b, page->block_size); /* its fill and canary are read and written */
  bmm_block_t *next = decode(page, b);
  if (bmm_unlikely(!link_ok(page, next))) {
    cut_free_list(page, b);
    next = NULL;
  }
  page->free = next;
  if (bmm_unlikely(w[1] != free_mark(page, b) || (bmm__secure >= 2 && !fill_intact(page, b)))) {
    drop_written(page, b);
    return NULL;
  }
  return hand_out(page, b);
}

void *bmm__secure_pop(bmm_page_t *page) {
  return pop(page);
}

/* secure_malloc's way when the first block of `page` is not plainly
 * intact: pop it with every check and report; a dropped block sends the
 * call to the slow path. */
static bmm_noinline void *malloc_checked(bmm_theap_t *heap, size_t size, bmm_page_t *page) {
  void *p = pop(page);
  return p != NULL ? p : bmm__malloc_slow(heap, size);
}

/* malloc in secure mode (bmm__malloc_generic sends every call here): a
 * small or medium block from the page the heap's secure table (or, above
 * BMM_SMALL_MAX, its class queue) puts first, when its link decodes into
 * the page and its mark is intact; the rest by jumps to functions that
 * check and report (pop) or do everything else (the slow path), so that
 * this path needs no stack frame. */
void *bmm__secure_malloc(bmm_theap_t *heap, size_t size) {
  if (bmm_likely(size <= BMM_MEDIUM_MAX - BMM_CANARY)) {
    size_t need = (size == 0 ? 1 : size) + BMM_CANARY; /* bmm__class_request's */
    bmm_page_t *page = need <= BMM_SMALL_MAX ? heap->sdirect[(need + BMM_ALIGN - 1) / BMM_ALIGN]
                                             : heap->queues[bmm__class_of(need)].first;
    if (bmm_likely(page != NULL && page->free != NULL)) {
      bmm_block_t *b = page->free;
      uint64_t *w = (uint64_t *)b;
      bmm__track_internal(b, page->block_size);
      bmm_block_t *next = decode(page, b);
      if (bmm_unlikely((next != NULL && !in_page(page, next)) || w[1] != free_mark(page, b) ||
                       fill_freed))
        return malloc_checked(heap, size, page);
      page->free = next;
      return hand_out(page, b);
    }
  }
  return bmm__malloc_slow(heap, size);
}

/* p (a block start of `page`) carries the mark of a free block. */
bool bmm__secure_is_marked(const bmm_page_t *page, const void *p) {
  bmm__track_mark_read(p);
  return ((const uint64_t *)p)[1] == free_mark(page, p);
}

/* Checks a block that is being freed (by any thread): false when it must
 * not be freed, reported: free already (its mark, or its freed canary when
 * a write after free took the mark), or its canary overwritten (an
 * overflow, or no block that was handed out: its neighbour or contents
 * may be damaged, so it is left alone, as the report says). */
bool bmm__secure_free_check(bmm_page_t *page, void *p, const char *call) {
  uint64_t *w = p;
  size_t bs = page->block_size;
  bmm__track_mark_read(p);
  bool freed = w[1] == free_mark(page, p);
  uint64_t c = 0;
  if (!freed) { /* a free block's canary word is off limits to checkers */
    bmm__track_internal(canary_word(page, p), BMM_CANARY);
    c = *canary_word(page, p);
    freed = bs > 2 * sizeof *w && c == freed_canary(page, p);
  }
  if (bmm_unlikely(freed)) {
    bmm__error_block(p, call, "double free", bs);
    return false;
  }
  if (bmm_unlikely(c != canary(page, p) && c != shrunk_canary(page, p))) {
    bmm__error_block(p, call, "heap buffer overflow: the canary after the block was overwritten",
                     bs);
    return false;
  }
  mark_free(page, p);
  return true;
}

/* bmm_expand kept the small or medium block p (of `page`, live) for
 * `size` bytes: below half of it, a sized free may name that size. */
void bmm__secure_note_size(bmm_page_t *page, void *p, size_t size) {
  if (size >= bmm__page_usable(page) / 2) return;
  uint64_t *c = canary_word(page, p);
  bmm__track_internal(c, BMM_CANARY);
  if (*c == canary(page, p)) *c = shrunk_canary(page, p); /* else free reports it */
}

/* free_sized and sized delete: the size must be one the block could have
 * been allocated for: one of its size class, or (realloc keeps a block
 * that shrinks to half of it or more) at least half of it, or any it
 * holds after bmm_expand shrank it below half. */
void bmm__secure_check_size(void *p, size_t size, const char *call) {
  bmm_page_t *page = bmm__page_of(p);
  size_t usable = bmm__usable_size_checked(p, NULL);
  if (page == NULL || usable == 0) return; /* free reports it */
  bool ok = size <= usable;
  uint8_t kind = atomic_load_explicit(&page->kind, memory_order_relaxed);
  if ((kind == BMM_PAGE_SMALL || kind == BMM_PAGE_MEDIUM) && page->align_log == 0 && ok &&
      bmm__class_of(bmm__class_request(size)) != page->class_idx && size < usable / 2) {
    uint64_t *c = canary_word(page, p);
    if (bmm__secure_is_marked(page, p)) return; /* a double free: free reports it */
    bmm__track_internal(c, BMM_CANARY);
    if (*c != canary(page, p) && *c != shrunk_canary(page, p)) return; /* free reports it */
    ok = *c == shrunk_canary(page, p);
  }
  if (bmm_unlikely(!ok))
    bmm__error_block(p, call, "size does not match the block being freed",
                     kind == BMM_PAGE_SMALL || kind == BMM_PAGE_MEDIUM ? page->block_size : usable);
}

/* ---- Fast paths ----------------------------------------------------------- */
/* bmm__free_local, knowing the mode: p (marked free) onto the local list
 * of its page, which the calling thread owns. Its own copy so that the
 * link is encoded inline (bmm__free_local calls out for it, which costs
 * the short path a stack frame). */
static inline void push_local(bmm_page_t *page, void *p) {
  bmm__track_free(p, page->block_size);
  set_next(page, p, page->local_free);
  page->local_free = p;
  if (bmm_unlikely(--page->used == 0 || page->in_full))
    bmm__heap_page_unfull_or_retire(atomic_load_explicit(&page->heap, memory_order_relaxed),
                                    page);
}

/* bmm__secure_free's way for level 2 and zero_on_free: out of line, so
 * that the common path needs no stack frame for the fill. */
static bmm_noinline void free_filled(bmm_page_t *page, void *p) {
  mark_free(page, p);
  push_local(page, p);
}

/* Secure mode's free (bmm__free_generic sends it every pointer of BrainMM's
 * regions). The common case is handled here: a block the page has carved,
 * of a page the calling thread owns and that is not full (its tid is
 * exactly the heap's, BMM_TID_SLOW included), intact. That skips free_slow's dispatch on the
 * page kind: only small and medium pages carry a thread's tid. Anything
 * else (another thread's page, a double free, a broken canary, an interior
 * pointer) goes to bmm__free_slow, which checks and reports it. */
void bmm__secure_free(void *p, bmm_page_t *page, const char *call) {
  if (atomic_load_explicit(&page->tid, memory_order_relaxed) ==
          (bmm__os_thread_id() | BMM_TID_SLOW) &&
      bmm__page_block_index(page, p) < page->capacity) {
    const uint64_t *w = p;
    /* The program need not have written the mark's word; a free block's
     * canary word is off limits to checkers (one whose mark was
     * overwritten gets it opened: the slow path reports it). */
    bmm__track_mark_read(p);
    if (bmm_likely(w[1] != free_mark(page, p))) {
      bmm__track_internal(canary_word(page, p), BMM_CANARY);
      if (bmm_likely(*canary_word(page, p) == canary(page, p))) {
        if (bmm_unlikely(fill_freed)) {
          free_filled(page, p);
          return;
        }
        mark_words(page, p);
        push_local(page, p);
        return;
      }
    }
  }
  bmm__free_slow(p, page, call);
}
