/* aligned.c: aligned allocation (API sections 1 and 2). No
 * over-allocation for alignments up to a unit (64 KiB): blocks sit at
 * multiples of their size from a 64 KiB aligned page start, so a class
 * whose size is a multiple of the alignment gives naturally aligned blocks.
 * Powers of two are classes, so such a class always exists, and the block
 * needs no header to be freed. The block remembers its alignment without a
 * header either: aligned requests use their own page queues, and such a
 * page records its class's natural alignment, which every block of it has
 * and which covers whatever its requests asked (their class size is a
 * multiple of it); large blocks record it in their descriptor or span.
 * Larger alignments are aligned unit runs, aligned huge regions, or exact
 * mappings of their own (256 MiB and up).
 */
#include <string.h>

#include "fastpath.h"

static inline bool is_pow2(size_t x) {
  return x != 0 && (x & (x - 1)) == 0;
}

/* Secure mode's short path for a small aligned request, as malloc has
 * one (bmm__malloc_generic): the queue is found as the inline path finds
 * it (bmm__malloc_aligned_fast), for the request and its canary, and the
 * block popped from the page in front of it when that has one. NULL: take
 * the slow path. */
static void *secure_aligned_short(size_t size, size_t align) {
  size_t need = (size == 0 ? 1 : size) + BMM_CANARY; /* bmm__class_request's, known secure */
  size_t want = bmm__aligned_want(need, align);
  if (want > 256) return NULL;
  bmm_page_t *page = bmm__heap_tls->queues[bmm__aligned_small_queue(want)].first;
  if (page == NULL || page->free == NULL) return NULL;
  return bmm__secure_pop(page);
}

/* align: a power of two. Small and medium requests come from pages of the
 * aligned queues (which record their alignment, so realloc keeps it), in a
 * class whose size is a multiple of `align`. */
void *bmm__malloc_aligned(size_t size, size_t align) {
  if (align <= BMM_ALIGN) return bmm__malloc_fast(size);
  if (bmm_unlikely(size > PTRDIFF_MAX)) {
    errno = ENOMEM;
    return NULL;
  }
  if (align <= BMM_UNIT_SIZE) {
    void *p = align <= 256 ? bmm__malloc_aligned_fast(size, align) : NULL;
    if (bmm_likely(p != NULL)) return p;
    if (bmm_unlikely(bmm__secure_fast) && align <= 256 &&
        (p = secure_aligned_short(size, align)) != NULL)
      return p;
    size_t qi = bmm__aligned_queue(size, align);
    if (qi != SIZE_MAX) {
      bmm_theap_t *heap = bmm__heap_get();
      return heap != NULL ? bmm__heap_alloc_slow(heap, qi) : NULL;
    }
  }
  return bmm__large_handed_out(bmm__large_alloc(size, align), size);
}

/* The aligned queue serving `size` bytes aligned to `align` (a power of
 * two in (16, 64 KiB]): the first class at least that big whose size is a
 * multiple of align. SIZE_MAX when the request is a large block. */
size_t bmm__aligned_queue(size_t size, size_t align) {
  size = bmm__class_request(size);
  size_t want = size < align ? align : (size + align - 1) & ~(align - 1);
  if (want > BMM_MEDIUM_MAX || size > BMM_MEDIUM_MAX) return SIZE_MAX;
  size_t cls = bmm__class_of(want);
  while (bmm__class_size(cls) & (align - 1)) cls++;
  return BMM_CLASS_COUNT + cls;
}

BMM_API void *bmm_malloc_aligned(size_t size, size_t align) {
  if (!is_pow2(align)) {
    errno = EINVAL;
    return NULL;
  }
  return bmm__malloc_aligned(size, align);
}

BMM_API void *bmm_calloc_aligned(size_t count, size_t size, size_t align) {
  size_t total;
  if (!is_pow2(align)) {
    errno = EINVAL;
    return NULL;
  }
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  void *p = bmm__malloc_aligned(total, align);
  if (p != NULL) memset(p, 0, total);
  return p;
}

bmm_noinline int bmm__posix_memalign_slow(void **out, size_t align, size_t size) {
  if (!is_pow2(align) || align < sizeof(void *)) return EINVAL;
  int saved = errno; /* posix_memalign reports through its result only */
  void *p = bmm__malloc_aligned(size, align);
  if (p == NULL) {
    errno = saved;
    return ENOMEM;
  }
  *out = p;
  return 0;
}

BMM_API int bmm_posix_memalign(void **out, size_t align, size_t size) {
  if (bmm_likely(bmm__posix_memalign_fast(out, align, size) == 0)) return 0;
  return bmm__posix_memalign_slow(out, align, size);
}

/* Unlike glibc, which rounds a non-power-of-two alignment up, BrainMM
 * rejects it (API.md, general rules): NULL with errno EINVAL. */
BMM_API void *bmm_aligned_alloc(size_t align, size_t size) {
  if (!is_pow2(align)) {
    errno = EINVAL;
    return NULL;
  }
  return bmm__malloc_aligned(size, align);
}

BMM_API void *bmm_memalign(size_t align, size_t size) {
  return bmm_aligned_alloc(align, size);
}

BMM_API void *bmm_valloc(size_t size) {
  return bmm__malloc_aligned(size, bmm__os_page_size());
}

BMM_API void *bmm_pvalloc(size_t size) {
  size_t ps = bmm__os_page_size();
  if (size > SIZE_MAX - ps) {
    errno = ENOMEM;
    return NULL;
  }
  size = size == 0 ? ps : (size + ps - 1) & ~(ps - 1);
  return bmm__malloc_aligned(size, ps);
}
