/* move16.h: the implementations behind bmm_move16 (API section 6), one per
 * instruction set, named so that tests and benchmarks can run each of them
 * directly instead of only the one the run-time dispatch picks. Owned by
 * move16.c; nothing here is exported from the library.
 */
#ifndef BMM_MOVE16_H
#define BMM_MOVE16_H

#include <stddef.h>

/* Every implementation has bmm_move16's full contract: dst and src 16-byte
 * aligned, count16 units of 16 bytes, overlap allowed in either direction,
 * count16 == 0 and dst == src are no-ops. */
typedef void (*bmm__move16_fn)(void *dst, const void *src, size_t count16);

enum bmm__move16_kind {
  BMM__MOVE16_GENERIC, /* plain C, one 16-byte unit at a time: any target */
  BMM__MOVE16_VEC16,   /* 16-byte vectors: SSE2 on x86-64, NEON on arm64 */
  BMM__MOVE16_AVX2,    /* 32-byte vectors, x86-64 with AVX2 only */
  BMM__MOVE16_AVX512,  /* 64-byte vectors, x86-64 with AVX-512F and VL only */
  BMM__MOVE16_KINDS
};

/* The implementation `kind`, or NULL when this build or this CPU lacks it. */
bmm__move16_fn bmm__move16_impl(int kind);

/* A short name for `kind` ("generic", "sse2", "neon", "avx2", ...). */
const char *bmm__move16_impl_name(int kind);

/* The kind bmm_move16 hands moves above its inline short path to on this
 * CPU. */
int bmm__move16_chosen(void);

/* Makes bmm_move16 use `kind` from now on, as if the CPU had chosen it, so
 * that tests and benchmarks can run its dispatch and inline paths with
 * each implementation; bmm__move16_select(bmm__move16_chosen()) goes back.
 * Returns 0, or -1 when `kind` is not available here (on other targets
 * than x86-64 only BMM__MOVE16_VEC16 is). Not for use while other threads
 * move. */
int bmm__move16_select(int kind);

/* Moves of at least this many bytes between regions at least half of it
 * apart use non-temporal stores (x86-64). A test may lower it, while no
 * other thread moves, to reach that code with small buffers. */
extern size_t bmm__move16_stream_min;

#endif /* BMM_MOVE16_H */
