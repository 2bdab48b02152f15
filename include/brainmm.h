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

/* ---- 2. Aligned memory that stays aligned ----------------------------- */

/* align: any power of two (16 .. 1 GiB and beyond; smaller means 16). The
 * block remembers it: bmm_realloc, bmm_reget and bmm_expand keep it. Not a
 * power of two: NULL with errno EINVAL. */
BMM_API BMM_MALLOC_ATTR void *bmm_malloc_aligned(size_t size, size_t align);
BMM_API BMM_MALLOC_ATTR void *bmm_calloc_aligned(size_t count, size_t size, size_t align);

/* ---- 3. Resizing without copying -------------------------------------- */

/* Like realloc, but the contents are NOT kept (no copy when the block
 * moves). bmm_reget(p, 0) frees p and returns NULL. */
BMM_API void *bmm_reget(void *p, size_t size);
/* Grow or shrink in place only: p when the block now has at least `size`
 * usable bytes where it stands; NULL (errno ENOMEM, p untouched and still
 * valid) when it cannot. */
BMM_API void *bmm_expand(void *p, size_t size);

/* ---- 4. Memory blocks: fixed size, aligned to their size --------------- */

typedef enum bmm_block_size {
  BMM_BLOCK_4K,
  BMM_BLOCK_16K,
  BMM_BLOCK_64K,
  BMM_BLOCK_256K,
  BMM_BLOCK_1M,
  BMM_BLOCK_4M,
  BMM_BLOCK_16M,
  BMM_BLOCK_64M,
  BMM_BLOCK_256M
} bmm_block_size_t;
#define BMM_BLOCK_BYTES(bs) ((size_t)4096 << (2 * (bs)))
#define BMM_BLOCK_OF(p, bs) \
  ((void *)((uintptr_t)(p) & ~(uintptr_t)(BMM_BLOCK_BYTES(bs) - 1)))
BMM_API void *bmm_block_alloc(bmm_block_size_t bs); /* NULL + EINVAL for an unknown size */
BMM_API void bmm_block_free(void *block);

/* ---- 5. Pages ----------------------------------------------------------- */

enum { BMM_PROT_NONE = 0, BMM_PROT_READ = 1, BMM_PROT_WRITE = 2, BMM_PROT_EXEC = 4 };
BMM_API size_t bmm_page_size(void);
BMM_API void *bmm_pages_alloc(size_t count);                /* zeroed, page aligned */
BMM_API void *bmm_pages_realloc(void *pages, size_t count); /* contents kept */
BMM_API void *bmm_pages_reget(void *pages, size_t count);   /* contents not kept */
BMM_API void bmm_pages_free(void *pages);
/* Any page-aligned memory of the process; returns 0 or an errno value. */
BMM_API int bmm_pages_protect(void *addr, size_t count, int rights);

/* ---- 6. Fast aligned move --------------------------------------------- */

/* Move count16 units of 16 bytes from src to dst, both 16-byte aligned;
 * the regions may overlap (memmove semantics). */
BMM_API void bmm_move16(void *dst, const void *src, size_t count16);

/* ---- 7. JIT heap: executable memory ----------------------------------- */

typedef struct bmm_jit bmm_jit_t;
enum { BMM_JIT_SPLIT = 1 }; /* W^X: write through a second mapping */

BMM_API bmm_jit_t *bmm_jit_new(int flags);
BMM_API void bmm_jit_delete(bmm_jit_t *jit);
BMM_API void bmm_jit_clear(bmm_jit_t *jit); /* frees every block at once */
BMM_API void *bmm_jit_alloc(bmm_jit_t *jit, size_t size); /* caller serializes */
BMM_API void bmm_jit_free(bmm_jit_t *jit, void *code);
BMM_API void *bmm_jit_alloc_sync(bmm_jit_t *jit, size_t size); /* internally locked */
BMM_API void bmm_jit_free_sync(bmm_jit_t *jit, void *code);
BMM_API void *bmm_jit_writable(bmm_jit_t *jit, void *code); /* where to write the code */
BMM_API void bmm_jit_flush(void *code, size_t size);        /* make new code visible */

/* ---- 8. Heaps: pools that are freed at once ---------------------------- */

/* A heap may be used from any number of threads at once (each thread
 * allocates from its own view of it, without locks). Its blocks are freed
 * with plain bmm_free/free from any thread, or all at once by
 * bmm_heap_destroy, which may run on any thread but not while another
 * thread allocates from, frees into or visits the same heap. Plain
 * bmm_realloc keeps a heap's block in place when it fits and otherwise
 * moves it to the calling thread's default heap; bmm_heap_realloc moves it
 * into the heap it names. A fixed heap lives inside [mem, mem + size),
 * metadata included, never grows, and is guarded by a lock of its own; its
 * blocks stay in it under bmm_realloc too. */
typedef struct bmm_heap bmm_heap_t;
BMM_API bmm_heap_t *bmm_heap_new(void);
BMM_API bmm_heap_t *bmm_heap_new_fixed(void *mem, size_t size); /* never grows past mem */
BMM_API void bmm_heap_destroy(bmm_heap_t *heap); /* frees every block of the heap */
BMM_API void *bmm_heap_malloc(bmm_heap_t *heap, size_t size);
BMM_API void *bmm_heap_calloc(bmm_heap_t *heap, size_t count, size_t size);
BMM_API void *bmm_heap_realloc(bmm_heap_t *heap, void *p, size_t size);
BMM_API void *bmm_heap_malloc_aligned(bmm_heap_t *heap, size_t size, size_t align);
typedef bool bmm_visit_fn(const void *block, size_t usable, void *arg);
/* Calls fn for every live block of the heap, once each, until fn returns
 * false; returns false then, true after the last block. */
BMM_API bool bmm_heap_visit(bmm_heap_t *heap, bmm_visit_fn *fn, void *arg);

/* ---- 9. Relocatable heap: handles and compaction ---------------------- */

typedef struct bmm_rheap bmm_rheap_t;
typedef struct bmm_handle bmm_handle_t;
/* mem NULL: the heap's memory (size bytes) comes from the OS. */
BMM_API bmm_rheap_t *bmm_rheap_new(void *mem, size_t size);
BMM_API void bmm_rheap_delete(bmm_rheap_t *rh);
BMM_API int bmm_ralloc(bmm_rheap_t *rh, bmm_handle_t **h, size_t size); /* 0 or ENOMEM */
BMM_API int bmm_rrealloc(bmm_handle_t *h, size_t size);
BMM_API int bmm_rlock(bmm_handle_t *h, void **ptr); /* pins the block, gives its address */
BMM_API int bmm_runlock(bmm_handle_t *h);
BMM_API int bmm_rfree(bmm_handle_t *h);
BMM_API size_t bmm_rsize(const bmm_handle_t *h);
BMM_API size_t bmm_rcompact(bmm_rheap_t *rh); /* returns bytes moved */
enum { BMM_COMPACT_NOW, BMM_COMPACT_LATER };
enum { BMM_FULLNESS_LOW, BMM_FULLNESS_HIGH };
typedef int bmm_fullness_fn(bmm_rheap_t *rh, int level, void *arg);
BMM_API void bmm_rheap_notify(bmm_rheap_t *rh, double low, double high, bmm_fullness_fn *fn,
                              void *arg);

/* ---- 10. Introspection and control -------------------------------------- */

/* Statistics: the memory accounting of every arena (reserved, committed,
 * in use, purged), the calling thread's pages per size class, the process's
 * RSS, page faults and times; a table, or JSON with option stats_json=1.
 * out NULL: standard error. BMM_SHOW_STATS=1 prints them at exit. */
typedef void bmm_output_fn(const char *text, void *arg);
BMM_API void bmm_stats_print(bmm_output_fn *out, void *arg);
/* Start the counters that accumulate (elapsed and CPU time, page faults,
 * bytes purged) again from zero; the peak RSS is the kernel's, since start. */
BMM_API void bmm_stats_reset(void);

/* With option leak_report=1 (BMM_LEAK_REPORT=1, before the first
 * allocation): the live blocks grouped by the call stack that allocated
 * them, most bytes first, symbolised; also printed at exit. With
 * leak_sample=N only about one block per N bytes allocated is recorded (and
 * the fast paths keep their speed); 0 records every block. Returns the
 * number of recorded blocks live; out NULL: standard error. */
BMM_API size_t bmm_leak_report(bmm_output_fn *out, void *arg);

/* Return free memory held by this thread's heap and the arenas to the OS;
 * with force, at once (no purge delay) and adopting dead threads' pages. */
BMM_API void bmm_collect(bool force);

/* A hook the allocator calls regularly from its slow path (at least once per
 * page's worth of allocations on each thread), with a per-thread heartbeat
 * count, and with force=true from bmm_collect(true): a place to free memory
 * the program keeps for later (caches, deferred reference counts). It may
 * allocate and free; it is not called again while it runs on that thread.
 * NULL unregisters. */
typedef void bmm_deferred_free_fn(bool force, unsigned long long heartbeat, void *arg);
BMM_API void bmm_register_deferred_free(bmm_deferred_free_fn *fn, void *arg);

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
