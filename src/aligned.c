/* aligned.c: aligned allocation. No over-allocation for alignments up to
 * a unit (64 KiB): blocks sit at multiples of their size from a 64 KiB
 * aligned page start, so a class whose size is a multiple of the alignment
 * gives naturally aligned blocks. Powers of two are classes, so such a
 * class always exists, and the block needs no header to be freed. Larger
 * alignments are aligned unit runs or aligned huge regions.
 */
#include "fastpath.h"

static inline bool is_pow2(size_t x) {
  return x != 0 && (x & (x - 1)) == 0;
}

/* align: a power of two. */
void *bmm__malloc_aligned(size_t size, size_t align) {
  if (align <= BMM_ALIGN) return bmm__malloc_fast(size);
  if (bmm_unlikely(size > PTRDIFF_MAX)) {
    errno = ENOMEM;
    return NULL;
  }
  if (align <= BMM_UNIT_SIZE) {
    size_t want = size < align ? align : (size + align - 1) & ~(align - 1);
    if (want <= BMM_MEDIUM_MAX) {
      size_t cls = bmm__class_of(want);
      while (bmm__class_size(cls) % align != 0) cls++;
      return bmm__malloc_fast(bmm__class_size(cls));
    }
  }
  bmm_heap_t *heap = bmm__heap_tls;
  if (bmm_unlikely(heap == &bmm__heap_empty) && bmm__heap_init_thread() == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  return bmm__large_alloc(size, align);
}

BMM_API int bmm_posix_memalign(void **out, size_t align, size_t size) {
  if (!is_pow2(align) || align < sizeof(void *)) return EINVAL;
  int saved = errno;
  void *p = bmm__malloc_aligned(size, align);
  if (p == NULL) {
    errno = saved; /* posix_memalign reports through its result only */
    return ENOMEM;
  }
  *out = p;
  return 0;
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
