/* fixed.h: the allocator of fixed heaps (API section 8,
 * bmm_heap_new_fixed): blocks carved from one caller-supplied range of
 * memory that holds all of its metadata too and never grows. fheap.c puts
 * the public heap API on top; free.c and alloc.c find a block's fixed heap
 * through the registry here when the block is not in a BrainMM region (or
 * lies inside a BrainMM block the caller handed over as the heap's memory).
 *
 * Thread safety: every call takes the heap's own spin lock, except the
 * registry lookup, which is lock-free.
 */
#ifndef BMM_FIXED_H
#define BMM_FIXED_H

#include <stdbool.h>
#include <stddef.h>

#include "brainmm.h"

typedef struct bmm_fixed_s bmm_fixed_t;

/* Lays a heap out in [mem, mem + size) and registers it; NULL (errno
 * EINVAL) when the range cannot hold the header and one smallest block, or
 * (ENOMEM) when the registry is full. Touches no byte outside the range. */
bmm_fixed_t *bmm__fixed_init(void *mem, size_t size);
/* Unregisters the heap; its memory belongs to the caller again. */
void bmm__fixed_destroy(bmm_fixed_t *fh);
/* The live fixed heap whose range holds p, or NULL. Lock-free. */
bmm_fixed_t *bmm__fixed_find(const void *p);

/* A block of at least `size` bytes aligned to `align` (a power of two;
 * every block is at least 16-aligned), or NULL when the heap has no room
 * (errno is left to the caller). */
void *bmm__fixed_alloc(bmm_fixed_t *fh, size_t size, size_t align);
/* false when p is not the start of a live block (a double free, an
 * interior pointer): nothing is changed then. */
bool bmm__fixed_free(bmm_fixed_t *fh, void *p);
/* Usable size of the live block p, or 0 when p starts none. */
size_t bmm__fixed_usable(bmm_fixed_t *fh, const void *p);
/* Resizes in place when it can (shrinking, or growing into a free
 * neighbour), else allocates, copies and frees; keeps `align`. NULL when
 * there is no room: p is unchanged then. p must be a live block. */
void *bmm__fixed_realloc(bmm_fixed_t *fh, void *p, size_t size, size_t align);
/* The alignment p was allocated with (16 or more). */
size_t bmm__fixed_align(bmm_fixed_t *fh, const void *p);
/* Every live block, in address order, until fn returns false. */
bool bmm__fixed_visit(bmm_fixed_t *fh, bmm_visit_fn *fn, void *arg);
/* Walks every block and free list; true when all invariants hold. */
bool bmm__fixed_check(bmm_fixed_t *fh);
/* Bytes the heap can hand out at most, and bytes in live blocks now. */
void bmm__fixed_usage(bmm_fixed_t *fh, size_t *capacity, size_t *live);

#endif /* BMM_FIXED_H */
