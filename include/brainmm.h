/* BrainMM public API.
 *
 * The contract is ../shared/API.md; this header declares the parts that are
 * implemented in this release. Every public symbol starts with bmm_.
 * General rules: failure to get memory returns NULL with errno == ENOMEM and
 * disturbs nothing already allocated; every pointer from a general-purpose
 * call is aligned to at least 16 bytes.
 */
#ifndef BRAINMM_H
#define BRAINMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define BMM_API __attribute__((visibility("default")))
#define BMM_MALLOC_ATTR __attribute__((malloc, warn_unused_result))
#else
#define BMM_API
#define BMM_MALLOC_ATTR
#endif

#define BMM_VERSION_MAJOR 0
#define BMM_VERSION_MINOR 1
#define BMM_VERSION_PATCH 0

/* Every block is aligned to at least this many bytes. */
#define BMM_MIN_ALIGN 16

/* ---- 1. Standard C / POSIX / glibc ------------------------------------ */

BMM_API BMM_MALLOC_ATTR void *bmm_malloc(size_t size);
BMM_API BMM_MALLOC_ATTR void *bmm_calloc(size_t count, size_t size);
BMM_API void *bmm_realloc(void *p, size_t size);
BMM_API void bmm_free(void *p);
BMM_API void *bmm_reallocarray(void *p, size_t count, size_t size);
BMM_API int bmm_posix_memalign(void **out, size_t align, size_t size);
BMM_API BMM_MALLOC_ATTR void *bmm_aligned_alloc(size_t align, size_t size);
BMM_API BMM_MALLOC_ATTR void *bmm_memalign(size_t align, size_t size);
BMM_API BMM_MALLOC_ATTR void *bmm_valloc(size_t size);
BMM_API BMM_MALLOC_ATTR void *bmm_pvalloc(size_t size);
BMM_API size_t bmm_usable_size(const void *p);
BMM_API void bmm_free_sized(void *p, size_t size);
BMM_API void bmm_free_aligned_sized(void *p, size_t align, size_t size);

/* ---- 10. Introspection and control (the parts implemented so far) ----- */

/* Return free memory held by this thread's heap and the arenas to the OS. */
BMM_API void bmm_collect(bool force);

/* Options: see the table in src/options.c. Each one can be set from the
 * environment as BMM_<NAME>=value, or all at once with
 * BMM_OPTIONS="name=value,name=value". bmm_option_get returns -1 for an
 * unknown name; bmm_option_set returns 0, or EINVAL for an unknown name or a
 * value out of range. */
BMM_API long bmm_option_get(const char *name);
BMM_API int bmm_option_set(const char *name, long value);

/* Walks every arena and every page of the calling thread's heap and checks
 * their invariants; true when all hold. */
BMM_API bool bmm_heap_check(void);

#ifdef __cplusplus
}
#endif

#endif /* BRAINMM_H */
