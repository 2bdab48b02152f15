/* override/malloc.c: the standard allocation names, exported so that
 * LD_PRELOAD=libbrainmm.so or linking -lbrainmm replaces the system
 * allocator for the whole process. malloc and free inline the same fast
 * paths as bmm_malloc and bmm_free (fastpath.h); the rest forward.
 */
#include "../fastpath.h"

#define BMM_EXPORT __attribute__((visibility("default")))

BMM_EXPORT void *malloc(size_t size) {
  return bmm__malloc_fast(size);
}

BMM_EXPORT void free(void *p) {
  bmm__free_fast(p, "free");
}

BMM_EXPORT void *calloc(size_t count, size_t size) {
  return bmm_calloc(count, size);
}

BMM_EXPORT void *realloc(void *p, size_t size) {
  return bmm_realloc(p, size);
}

BMM_EXPORT void *reallocarray(void *p, size_t count, size_t size) {
  return bmm_reallocarray(p, count, size);
}

BMM_EXPORT int posix_memalign(void **out, size_t align, size_t size) {
  if (bmm_likely(bmm__posix_memalign_fast(out, align, size) == 0)) return 0;
  return bmm__posix_memalign_slow(out, align, size);
}

BMM_EXPORT void *aligned_alloc(size_t align, size_t size) {
  return bmm_aligned_alloc(align, size);
}

BMM_EXPORT void *memalign(size_t align, size_t size) {
  return bmm_memalign(align, size);
}

BMM_EXPORT void *valloc(size_t size) {
  return bmm_valloc(size);
}

BMM_EXPORT void *pvalloc(size_t size) {
  return bmm_pvalloc(size);
}

BMM_EXPORT size_t malloc_usable_size(void *p) {
  return bmm_usable_size(p);
}

BMM_EXPORT void free_sized(void *p, size_t size) {
  bmm_free_sized(p, size);
}

BMM_EXPORT void free_aligned_sized(void *p, size_t align, size_t size) {
  bmm_free_aligned_sized(p, align, size);
}
