/* move16.c: bmm_move16 (API section 6), memmove for regions that are
 * 16-byte aligned and a whole number of 16-byte units long, and the
 * implementations behind it, one per instruction set (move16.h names them
 * for the tests and the benchmark).
 *
 * Algorithm. Both pointers are 16-aligned, so dst - src is a multiple of
 * 16: there are never odd bytes, and a 16-byte unit is either wholly inside
 * the part of the source already overwritten or wholly outside it.
 *   - Short moves (up to 8 vectors) load everything into registers before
 *     storing anything, which is right for any overlap, without a direction
 *     test: a pair of vectors from the two ends (overlapping in the middle
 *     when the length is not a multiple of the vector), four, or eight.
 *   - Longer moves pick a direction: forward when dst is below src or the
 *     regions are disjoint, backward when dst is above src and they overlap
 *     (one unsigned compare of dst - src against the length). Each loop
 *     round loads its whole block before storing it, so a store only ever
 *     clobbers source bytes that have been read.
 *   - With 32- or 64-byte vectors, stores that cross a cache line cost
 *     about twice as much, so the loop stores to 64-aligned addresses; the
 *     unaligned first and last bytes are loaded before the loop and stored
 *     after it (the shape of glibc's memmove-vec-unaligned-erms), which is
 *     also what keeps them right under overlap.
 *   - x86-64 with ERMS: mid-sized forward moves use `rep movsb`, whose
 *     microcode moves whole cache lines (MOVE16_REP_MIN_* says from where).
 *   - Very large moves between far-apart regions use non-temporal stores
 *     (MOVE16_STREAM_MIN says from where).
 *
 * Dispatch. On x86-64 the implementation is chosen on first use from
 * CPUID: AVX-512 where the CPU runs 512-bit moves at full clock, else AVX2,
 * else SSE2 (the x86-64 baseline); "usable" includes the OS saving the
 * registers (XCR0). The AVX code is compiled with target attributes, so
 * the file needs no -mavx flags. bmm_move16 itself moves the commonest
 * short sizes inline (1..2 units with SSE2; 3..8 with AVX-512, 3..4 with
 * AVX2, in assembly) and jumps to the implementation for the rest: in a
 * loop of short moves every branch on the way shows. arm64 always has
 * NEON. Other targets move 64-bit pairs in plain C.
 *
 * Concurrency: the shared state is move16_cpu (CPUID, cached), move16_kind
 * and move16_evex_units (what bmm_move16 does). All start as "not yet
 * known", so bmm_move16 works before any constructor has run. The first
 * callers may race to detect the CPU, but every thread computes and stores
 * the same values, which describe code, not data that needs publishing, so
 * relaxed atomics suffice. bmm__move16_stream_min and bmm__move16_select
 * are for tests and benchmarks only.
 *
 * Nothing here allocates, locks or calls the C library or the OS.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "internal.h"
#include "move16.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

/* A 64-bit word that may alias anything: the portable code reads and
 * writes the caller's memory through it. */
typedef uint64_t move16_word_t __attribute__((may_alias));

/* ---- 16-byte vectors: SSE2, NEON or two words ------------------------ */

#if defined(__x86_64__)
typedef __m128i v16_t;
#define MOVE16_VEC16_NAME "sse2"
/* Aligned loads and stores: on a misaligned pointer (a broken contract)
 * they fault at once instead of moving the wrong bytes. */
bmm_inline v16_t v16_load(const unsigned char *p) {
  return _mm_load_si128((const __m128i *)(const void *)p);
}
bmm_inline void v16_store(unsigned char *p, v16_t v) {
  _mm_store_si128((__m128i *)(void *)p, v);
}
#elif defined(__aarch64__)
typedef uint8x16_t v16_t;
#define MOVE16_VEC16_NAME "neon"
bmm_inline v16_t v16_load(const unsigned char *p) {
  return vld1q_u8(p);
}
bmm_inline void v16_store(unsigned char *p, v16_t v) {
  vst1q_u8(p, v);
}
#else
typedef struct {
  uint64_t lo, hi;
} v16_t;
#define MOVE16_VEC16_NAME "portable"
bmm_inline v16_t v16_load(const unsigned char *p) {
  const move16_word_t *w = (const move16_word_t *)(const void *)p;
  v16_t v = {w[0], w[1]};
  return v;
}
bmm_inline void v16_store(unsigned char *p, v16_t v) {
  move16_word_t *w = (move16_word_t *)(void *)p;
  w[0] = v.lo;
  w[1] = v.hi;
}
#endif

/* Moves n16 <= 2 units: both loads before both stores. */
bmm_inline void move16_upto2(unsigned char *d, const unsigned char *s, size_t n16) {
  if (n16 == 0) return;
  v16_t a = v16_load(s), b = v16_load(s + n16 * 16 - 16);
  v16_store(d, a);
  v16_store(d + n16 * 16 - 16, b);
}

/* Moves n16 <= 8 units with 16-byte vectors, every load before the first
 * store. The loads from the head and from the tail overlap when n16 is not
 * a power of two; storing a unit twice with the same value is harmless. */
bmm_inline void move16_upto8(unsigned char *d, const unsigned char *s, size_t n16) {
  size_t n = n16 * 16;
  if (n16 <= 2) {
    move16_upto2(d, s, n16);
  } else if (n16 <= 4) {
    v16_t a = v16_load(s), b = v16_load(s + 16);
    v16_t c = v16_load(s + n - 32), e = v16_load(s + n - 16);
    v16_store(d, a);
    v16_store(d + 16, b);
    v16_store(d + n - 32, c);
    v16_store(d + n - 16, e);
  } else {
    v16_t a = v16_load(s), b = v16_load(s + 16);
    v16_t c = v16_load(s + 32), e = v16_load(s + 48);
    v16_t f = v16_load(s + n - 64), g = v16_load(s + n - 48);
    v16_t h = v16_load(s + n - 32), k = v16_load(s + n - 16);
    v16_store(d, a);
    v16_store(d + 16, b);
    v16_store(d + 32, c);
    v16_store(d + 48, e);
    v16_store(d + n - 64, f);
    v16_store(d + n - 48, g);
    v16_store(d + n - 32, h);
    v16_store(d + n - 16, k);
  }
}

/* dst - src as an unsigned number: at least n exactly when moving front to
 * back is correct (dst below src, or the regions disjoint), because dst <
 * src wraps around to a huge value. */
bmm_inline size_t move16_ahead(const void *d, const void *s) {
  return (size_t)((uintptr_t)d - (uintptr_t)s);
}

/* ---- Portable: one unit (two words) at a time ------------------------- */

/* The reference implementation: simple enough to be obviously right, and
 * the only one that needs nothing but C. A unit is read whole before it is
 * written, and units go in the safe direction, so overlap is handled. */
static void move16_generic(void *dst, const void *src, size_t count16) {
  move16_word_t *d = dst;
  const move16_word_t *s = src;
  if ((const move16_word_t *)d == s) return;
  if (move16_ahead(dst, src) >= count16 * 16) {
    for (size_t i = 0; i < 2 * count16; i += 2) {
      uint64_t lo = s[i], hi = s[i + 1];
      d[i] = lo;
      d[i + 1] = hi;
    }
  } else {
    for (size_t i = 2 * count16; i > 0; i -= 2) {
      uint64_t lo = s[i - 2], hi = s[i - 1];
      d[i - 2] = lo;
      d[i - 1] = hi;
    }
  }
}

/* ---- 16-byte vectors, 128 bytes a round -------------------------------- */

/* With 16-byte vectors every access is aligned, so no head or tail needs
 * special care: whole 128-byte blocks in the safe direction, then the
 * remaining 0..7 units through move16_upto8. That remainder is read after
 * the blocks were stored, which is fine: going forward (dst below src) the
 * blocks' stores only reach source bytes below the remainder, going
 * backward only bytes above it. */
static void move16_vec16(void *dst, const void *src, size_t count16) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  if (count16 <= 8) {
    move16_upto8(d, s, count16);
    return;
  }
  size_t n = count16 * 16;
  if (bmm_unlikely(d == s)) return;
  if (move16_ahead(d, s) >= n) {
    size_t i = 0;
    for (; n - i >= 128; i += 128) {
      v16_t a = v16_load(s + i), b = v16_load(s + i + 16);
      v16_t c = v16_load(s + i + 32), e = v16_load(s + i + 48);
      v16_t f = v16_load(s + i + 64), g = v16_load(s + i + 80);
      v16_t h = v16_load(s + i + 96), k = v16_load(s + i + 112);
      v16_store(d + i, a);
      v16_store(d + i + 16, b);
      v16_store(d + i + 32, c);
      v16_store(d + i + 48, e);
      v16_store(d + i + 64, f);
      v16_store(d + i + 80, g);
      v16_store(d + i + 96, h);
      v16_store(d + i + 112, k);
    }
    move16_upto8(d + i, s + i, (n - i) / 16);
  } else {
    size_t i = n;
    for (; i >= 128; i -= 128) {
      v16_t a = v16_load(s + i - 16), b = v16_load(s + i - 32);
      v16_t c = v16_load(s + i - 48), e = v16_load(s + i - 64);
      v16_t f = v16_load(s + i - 80), g = v16_load(s + i - 96);
      v16_t h = v16_load(s + i - 112), k = v16_load(s + i - 128);
      v16_store(d + i - 16, a);
      v16_store(d + i - 32, b);
      v16_store(d + i - 48, c);
      v16_store(d + i - 64, e);
      v16_store(d + i - 80, f);
      v16_store(d + i - 96, g);
      v16_store(d + i - 112, h);
      v16_store(d + i - 128, k);
    }
    move16_upto8(d, s, i / 16);
  }
}

/* ---- x86-64: AVX2 and AVX-512 ------------------------------------------ */

/* x86-64: moves of at least this many bytes between regions at least half
 * of it apart use non-temporal (cache-bypassing) stores: the destination lines
 * are then not in the cache from having just been read as source, and a
 * move of twice 48 MiB (source plus destination) outgrows the share of the
 * last-level cache one thread can count on, so writing through the cache
 * would only read every destination line first and evict useful data.
 * Measured on the development machine (Xeon, Sapphire Rapids, VM), copying
 * between disjoint regions: at 32 MiB cached stores still win (13-14 vs
 * 10 GB/s), at 64 MiB streaming wins (10-12 vs 7-8 GB/s). */
#define MOVE16_STREAM_MIN ((size_t)48 << 20)

/* MOVE16_STREAM_MIN, as a variable only so that the test can lower it to
 * reach the streaming loops with small buffers. */
size_t bmm__move16_stream_min = MOVE16_STREAM_MIN;

#if defined(__x86_64__)

/* Forward moves of at least this many bytes use `rep movsb` when the CPU
 * has ERMS (enhanced rep movsb) and the regions are at least 64 bytes apart
 * (below that the microcode falls back to a slow path, as glibc notes in
 * Avoid_Short_Distance_REP_MOVSB). Measured as above: `rep movsb` beats a
 * 32-byte vector loop from about 4 KiB and a 64-byte loop only once the
 * move leaves the L1 cache (about 5% faster in L2), because the microcode
 * handles whole lines. */
#define MOVE16_REP_MIN_AVX2 ((size_t)4 << 10)
#define MOVE16_REP_MIN_AVX512 ((size_t)32 << 10)

/* CPUID bits (Intel SDM vol. 2, CPUID): leaf 1 ECX, leaf 7.0 EBX, leaf
 * 7.1 EAX. Spelled out because GCC's and clang's cpuid.h name some of them
 * differently. */
#define MOVE16_CPUID1_OSXSAVE (1u << 27)
#define MOVE16_CPUID1_AVX (1u << 28)
#define MOVE16_CPUID7_AVX2 (1u << 5)
#define MOVE16_CPUID7_ERMS (1u << 9)
#define MOVE16_CPUID7_AVX512F (1u << 16)
#define MOVE16_CPUID7_AVX512VL (1u << 31)
#define MOVE16_CPUID71_AVX_VNNI (1u << 4)
/* XCR0: SSE and AVX state (bits 1, 2), AVX-512 opmask and ZMM state (5..7) */
#define MOVE16_XCR0_AVX 0x06u
#define MOVE16_XCR0_AVX512 0xe6u

enum {
  MOVE16_CPU_KNOWN = 1,       /* the fields below are filled in */
  MOVE16_CPU_AVX2 = 2,        /* AVX2 usable */
  MOVE16_CPU_AVX512 = 4,      /* AVX-512F and VL usable */
  MOVE16_CPU_AVX512_FAST = 8, /* ... and 512-bit moves do not lower the clock */
  MOVE16_CPU_ERMS = 16,       /* enhanced rep movsb */
};

static _Atomic(unsigned) move16_cpu;

/* What the CPU offers, from CPUID; cached. Plain CPUID rather than
 * __builtin_cpu_supports, which needs libgcc's constructor to have run. */
static unsigned move16_cpu_features(void) {
  unsigned f = atomic_load_explicit(&move16_cpu, memory_order_relaxed);
  if (bmm_likely(f != 0)) return f;
  f = MOVE16_CPU_KNOWN;
  unsigned a, b, c, d;
  unsigned max = __get_cpuid_max(0, NULL);
  if (max >= 7 && __get_cpuid(1, &a, &b, &c, &d)) {
    unsigned xcr0 = 0;
    if (c & MOVE16_CPUID1_OSXSAVE) {
      unsigned hi;
      __asm__ volatile("xgetbv" : "=a"(xcr0), "=d"(hi) : "c"(0));
    }
    bool avx = (c & MOVE16_CPUID1_AVX) && (xcr0 & MOVE16_XCR0_AVX) == MOVE16_XCR0_AVX;
    __cpuid_count(7, 0, a, b, c, d);
    unsigned leaf7_ebx = b, leaf71_eax = 0;
    if (a >= 1) { /* the highest subleaf of leaf 7 */
      __cpuid_count(7, 1, a, b, c, d);
      leaf71_eax = a;
    }
    if (leaf7_ebx & MOVE16_CPUID7_ERMS) f |= MOVE16_CPU_ERMS;
    if (avx && (leaf7_ebx & MOVE16_CPUID7_AVX2)) f |= MOVE16_CPU_AVX2;
    unsigned avx512 = MOVE16_CPUID7_AVX512F | MOVE16_CPUID7_AVX512VL;
    if ((f & MOVE16_CPU_AVX2) && (leaf7_ebx & avx512) == avx512 &&
        (xcr0 & MOVE16_XCR0_AVX512) == MOVE16_XCR0_AVX512) {
      f |= MOVE16_CPU_AVX512;
      /* glibc's rule (sysdeps/x86/cpu-features.c): Intel CPUs that have
       * AVX-VNNI as well run ZMM loads and stores without lowering the
       * clock; on earlier ones (Skylake-SP and such) a 512-bit move can
       * slow down everything else for a while. */
      if (leaf71_eax & MOVE16_CPUID71_AVX_VNNI) f |= MOVE16_CPU_AVX512_FAST;
    }
  }
  atomic_store_explicit(&move16_cpu, f, memory_order_relaxed);
  return f;
}

/* ERMS, for code that only runs after move16_cpu_features: reads the
 * cached answer without the call, which would make the vector code
 * around it realign its stack for spills. */
bmm_inline bool move16_have_erms(void) {
  return (atomic_load_explicit(&move16_cpu, memory_order_relaxed) & MOVE16_CPU_ERMS) != 0;
}

bmm_inline void move16_rep_movsb(unsigned char *d, const unsigned char *s, size_t n) {
  __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
}

#define MOVE16_AVX2_INLINE static inline __attribute__((always_inline, target("avx2")))
#define MOVE16_AVX512_INLINE                                                                       \
  static inline __attribute__((always_inline, target("avx512f,avx512vl")))

MOVE16_AVX2_INLINE __m256i v32_load(const unsigned char *p) {
  return _mm256_loadu_si256((const __m256i *)(const void *)p);
}
MOVE16_AVX2_INLINE void v32_store(unsigned char *p, __m256i v) {
  _mm256_storeu_si256((__m256i *)(void *)p, v);
}
MOVE16_AVX2_INLINE void v32_store_aligned(unsigned char *p, __m256i v) {
  _mm256_store_si256((__m256i *)(void *)p, v);
}
MOVE16_AVX2_INLINE void v32_stream(unsigned char *p, __m256i v) {
  _mm256_stream_si256((__m256i *)(void *)p, v);
}

MOVE16_AVX512_INLINE __m512i v64_load(const unsigned char *p) {
  return _mm512_loadu_si512((const void *)p);
}
MOVE16_AVX512_INLINE void v64_store(unsigned char *p, __m512i v) {
  _mm512_storeu_si512((void *)p, v);
}
MOVE16_AVX512_INLINE void v64_store_aligned(unsigned char *p, __m512i v) {
  _mm512_store_si512((void *)p, v);
}
MOVE16_AVX512_INLINE void v64_stream(unsigned char *p, __m512i v) {
  _mm512_stream_si512((void *)p, v);
}

/* A load waits for an earlier store whose address matches it in the low
 * 12 bits until the store's full address is known ("4K aliasing"). When
 * dst - src modulo 4 KiB is below 256, a forward loop's loads keep matching
 * stores made just before (in this move, or the previous one), so disjoint
 * regions in that relation are moved back to front instead, as glibc does.
 * Measured: 1 KiB between page-aligned regions, 27 TSC cycles forward, 14
 * backward. */
#define MOVE16_ALIAS_MASK ((size_t)4096 - 256)

/* Long moves (more than 8 vectors) with vectors of V = 32 or 64 bytes: the
 * same algorithm for AVX2 and AVX-512, and C has no templates, so this
 * macro writes it out for each. Vector type VEC; LOAD, STORE (unaligned),
 * STOREA (64-aligned), STREAM (non-temporal); REP_MIN as above. It defines
 * NAME_forward, NAME_backward and NAME_long, which picks between them.
 *
 * Forward: the first 64 and the last 4V bytes are loaded first and stored
 * last; in between, rounds of 4V bytes start at the first 64-aligned
 * destination byte past d (16..64 bytes in) and run while they end before
 * the last 4V. Backward mirrors it: the first 4V and the last 64 bytes are
 * kept aside, rounds run down from the last 64-aligned destination byte
 * before d + n. (With V = 64 the two loads of a 64-byte end are the same,
 * and the compiler merges them.) `stream` selects non-temporal stores for
 * the rounds; the fence after them orders them before any later store, as
 * a caller publishing the moved data to another thread with a release
 * store would expect. */

#define MOVE16_WIDE_LONG(NAME, TARGET, VEC, V, LOAD, STORE, STOREA, STREAM, REP_MIN)               \
  static inline __attribute__((always_inline, target(TARGET))) void NAME##_forward(                \
      unsigned char *d, const unsigned char *s, size_t n, bool stream) {                           \
    VEC h0 = LOAD(s), h1 = LOAD(s + 64 - V); /* the first 64 bytes */                              \
    VEC t0 = LOAD(s + n - 4 * V), t1 = LOAD(s + n - 3 * V);                                        \
    VEC t2 = LOAD(s + n - 2 * V), t3 = LOAD(s + n - V);                                            \
    size_t i = 64 - ((uintptr_t)d & 63), end = n - 4 * V;                                          \
    if (stream) {                                                                                  \
      for (; i < end; i += 4 * V) {                                                                \
        VEC a = LOAD(s + i), b = LOAD(s + i + V);                                                  \
        VEC c = LOAD(s + i + 2 * V), e = LOAD(s + i + 3 * V);                                      \
        STREAM(d + i, a);                                                                          \
        STREAM(d + i + V, b);                                                                      \
        STREAM(d + i + 2 * V, c);                                                                  \
        STREAM(d + i + 3 * V, e);                                                                  \
      }                                                                                            \
      _mm_sfence();                                                                                \
    } else {                                                                                       \
      for (; i < end; i += 4 * V) {                                                                \
        VEC a = LOAD(s + i), b = LOAD(s + i + V);                                                  \
        VEC c = LOAD(s + i + 2 * V), e = LOAD(s + i + 3 * V);                                      \
        STOREA(d + i, a);                                                                          \
        STOREA(d + i + V, b);                                                                      \
        STOREA(d + i + 2 * V, c);                                                                  \
        STOREA(d + i + 3 * V, e);                                                                  \
      }                                                                                            \
    }                                                                                              \
    STORE(d + n - 4 * V, t0);                                                                      \
    STORE(d + n - 3 * V, t1);                                                                      \
    STORE(d + n - 2 * V, t2);                                                                      \
    STORE(d + n - V, t3);                                                                          \
    STORE(d, h0);                                                                                  \
    STORE(d + 64 - V, h1);                                                                         \
  }                                                                                                \
                                                                                                   \
  static inline __attribute__((always_inline, target(TARGET))) void NAME##_backward(               \
      unsigned char *d, const unsigned char *s, size_t n, bool stream) {                           \
    VEC h0 = LOAD(s), h1 = LOAD(s + V), h2 = LOAD(s + 2 * V), h3 = LOAD(s + 3 * V);                \
    VEC t0 = LOAD(s + n - 64), t1 = LOAD(s + n - V);    /* the last 64 bytes */                    \
    size_t i = n - (((uintptr_t)(d + n) - 1) & 63) - 1; /* n-64..n-16 */                           \
    if (stream) {                                                                                  \
      for (; i > 4 * V; i -= 4 * V) {                                                              \
        VEC a = LOAD(s + i - V), b = LOAD(s + i - 2 * V);                                          \
        VEC c = LOAD(s + i - 3 * V), e = LOAD(s + i - 4 * V);                                      \
        STREAM(d + i - V, a);                                                                      \
        STREAM(d + i - 2 * V, b);                                                                  \
        STREAM(d + i - 3 * V, c);                                                                  \
        STREAM(d + i - 4 * V, e);                                                                  \
      }                                                                                            \
      _mm_sfence();                                                                                \
    } else {                                                                                       \
      for (; i > 4 * V; i -= 4 * V) {                                                              \
        VEC a = LOAD(s + i - V), b = LOAD(s + i - 2 * V);                                          \
        VEC c = LOAD(s + i - 3 * V), e = LOAD(s + i - 4 * V);                                      \
        STOREA(d + i - V, a);                                                                      \
        STOREA(d + i - 2 * V, b);                                                                  \
        STOREA(d + i - 3 * V, c);                                                                  \
        STOREA(d + i - 4 * V, e);                                                                  \
      }                                                                                            \
    }                                                                                              \
    STORE(d, h0);                                                                                  \
    STORE(d + V, h1);                                                                              \
    STORE(d + 2 * V, h2);                                                                          \
    STORE(d + 3 * V, h3);                                                                          \
    STORE(d + n - 64, t0);                                                                         \
    STORE(d + n - V, t1);                                                                          \
  }                                                                                                \
                                                                                                   \
  static inline __attribute__((always_inline, target(TARGET))) void NAME##_long(                   \
      unsigned char *d, const unsigned char *s, size_t n) {                                        \
    size_t ahead = move16_ahead(d, s);                                                             \
    if (bmm_likely(n < (REP_MIN))) { /* so also below MOVE16_STREAM_MIN */                         \
      if (ahead < n) {                                                                             \
        if (bmm_likely(ahead != 0)) NAME##_backward(d, s, n, false);                               \
      } else if ((ahead & MOVE16_ALIAS_MASK) == 0 && -ahead >= n) {                                \
        NAME##_backward(d, s, n, false);                                                           \
      } else {                                                                                     \
        NAME##_forward(d, s, n, false);                                                            \
      }                                                                                            \
      return;                                                                                      \
    }                                                                                              \
    size_t apart = ahead < -ahead ? ahead : -ahead; /* |dst - src| */                              \
    bool stream = n >= bmm__move16_stream_min && apart >= bmm__move16_stream_min / 2;              \
    if (ahead >= n) {                                                                              \
      if (stream)                                                                                  \
        NAME##_forward(d, s, n, true);                                                             \
      else if (apart >= 64 && move16_have_erms())                                                  \
        move16_rep_movsb(d, s, n);                                                                 \
      else if ((ahead & MOVE16_ALIAS_MASK) == 0 && -ahead >= n)                                    \
        NAME##_backward(d, s, n, false);                                                           \
      else                                                                                         \
        NAME##_forward(d, s, n, false);                                                            \
    } else if (ahead != 0) {                                                                       \
      NAME##_backward(d, s, n, stream);                                                            \
    }                                                                                              \
  }

MOVE16_WIDE_LONG(move16_avx2, "avx2", __m256i, 32, v32_load, v32_store, v32_store_aligned,
                 v32_stream, MOVE16_REP_MIN_AVX2)
MOVE16_WIDE_LONG(move16_avx512, "avx512f,avx512vl", __m512i, 64, v64_load, v64_store,
                 v64_store_aligned, v64_stream, MOVE16_REP_MIN_AVX512)

/* AVX2. Short moves load everything before storing anything: a pair of
 * 16- or 32-byte vectors from both ends up to 64 bytes, then four, then
 * eight 32-byte vectors (up to 256 bytes). Moves above 64 bytes are tested
 * for first: bmm_move16 does the shorter ones itself. */
__attribute__((target("avx2"))) static void move16_avx2(void *dst, const void *src,
                                                        size_t count16) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  size_t n = count16 * 16;
  if (bmm_likely(n > 64)) {
    __m256i a = v32_load(s), b = v32_load(s + 32);
    if (n <= 128) {
      __m256i c = v32_load(s + n - 64), e = v32_load(s + n - 32);
      v32_store(d, a);
      v32_store(d + 32, b);
      v32_store(d + n - 64, c);
      v32_store(d + n - 32, e);
    } else if (n <= 256) {
      __m256i c = v32_load(s + 64), e = v32_load(s + 96);
      __m256i f = v32_load(s + n - 128), g = v32_load(s + n - 96);
      __m256i h = v32_load(s + n - 64), k = v32_load(s + n - 32);
      v32_store(d, a);
      v32_store(d + 32, b);
      v32_store(d + 64, c);
      v32_store(d + 96, e);
      v32_store(d + n - 128, f);
      v32_store(d + n - 96, g);
      v32_store(d + n - 64, h);
      v32_store(d + n - 32, k);
    } else {
      move16_avx2_long(d, s, n);
    }
  } else if (n > 32) {
    __m256i a = v32_load(s), b = v32_load(s + n - 32);
    v32_store(d, a);
    v32_store(d + n - 32, b);
  } else {
    move16_upto2(d, s, count16);
  }
}

/* AVX-512 short moves, written in assembly only to choose the registers:
 * zmm16..zmm31 (and their ymm/xmm halves) exist only with EVEX encoding,
 * and code that leaves ymm0..15 untouched needs no vzeroupper on return,
 * which the compiler adds after any 256/512-bit intrinsic (measured: 0.2
 * to 0.5 of the 2.3 to 3.1 TSC cycles a 64-byte move takes in a loop).
 * glibc's memmove-evex avoids it the same way. Loads all come before the
 * stores, as in every short path. */
#define MOVE16_EVEX_ARGS [d] "r"(d), [s] "r"(s), [n] "r"(n)

#define MOVE16_EVEX_PAIR32                                                                         \
  "vmovdqu64 (%[s]), %%ymm16\n\t"                                                                  \
  "vmovdqu64 -32(%[s],%[n]), %%ymm17\n\t"                                                          \
  "vmovdqu64 %%ymm16, (%[d])\n\t"                                                                  \
  "vmovdqu64 %%ymm17, -32(%[d],%[n])"
#define MOVE16_EVEX_PAIR64                                                                         \
  "vmovdqu64 (%[s]), %%zmm16\n\t"                                                                  \
  "vmovdqu64 -64(%[s],%[n]), %%zmm17\n\t"                                                          \
  "vmovdqu64 %%zmm16, (%[d])\n\t"                                                                  \
  "vmovdqu64 %%zmm17, -64(%[d],%[n])"

MOVE16_AVX512_INLINE void move16_evex_pair32(unsigned char *d, const unsigned char *s, size_t n) {
  __asm__ volatile(MOVE16_EVEX_PAIR32 : : MOVE16_EVEX_ARGS : "memory", "xmm16", "xmm17");
}

MOVE16_AVX512_INLINE void move16_evex_pair64(unsigned char *d, const unsigned char *s, size_t n) {
  __asm__ volatile(MOVE16_EVEX_PAIR64 : : MOVE16_EVEX_ARGS : "memory", "xmm16", "xmm17");
}

/* The same pairs for bmm_move16 itself, which is compiled for the x86-64
 * baseline, to run only once CPUID has said AVX-512 is usable: to the
 * compiler the instructions are just text. Without AVX-512 enabled at
 * compile time the compiler knows no zmm16 or zmm17 and so cannot keep
 * anything there (it also refuses them as clobbers), and the ABI makes
 * every vector register call-clobbered, so using them is safe; built with
 * AVX-512 enabled, the clobbers are declared. */
#if defined(__AVX512F__)
#define MOVE16_EVEX_BASELINE_CLOBBERS "memory", "xmm16", "xmm17"
#else
#define MOVE16_EVEX_BASELINE_CLOBBERS "memory"
#endif

/* The AVX2 counterpart, 48..64 bytes, for bmm_move16 when AVX2 is the best
 * it has: a pair of 32-byte vectors in ymm0 and ymm1, then vzeroupper.
 * That clears the upper halves of all of ymm0..15, so all of them are
 * declared clobbered (nothing is live in them here anyway). */
bmm_inline void move16_ymm_pair_baseline(unsigned char *d, const unsigned char *s, size_t n) {
  __asm__ volatile("vmovdqu (%[s]), %%ymm0\n\t"
                   "vmovdqu -32(%[s],%[n]), %%ymm1\n\t"
                   "vmovdqu %%ymm0, (%[d])\n\t"
                   "vmovdqu %%ymm1, -32(%[d],%[n])\n\t"
                   "vzeroupper"
                   :
                   : MOVE16_EVEX_ARGS
                   : "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
                     "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

/* 48..128 bytes: a pair of 32- or 64-byte vectors. */
bmm_inline void move16_evex_pair_baseline(unsigned char *d, const unsigned char *s, size_t n) {
  if (bmm_likely(n >= 64))
    __asm__ volatile(MOVE16_EVEX_PAIR64 : : MOVE16_EVEX_ARGS : MOVE16_EVEX_BASELINE_CLOBBERS);
  else
    __asm__ volatile(MOVE16_EVEX_PAIR32 : : MOVE16_EVEX_ARGS : MOVE16_EVEX_BASELINE_CLOBBERS);
}

MOVE16_AVX512_INLINE void move16_evex_four64(unsigned char *d, const unsigned char *s, size_t n) {
  __asm__ volatile("vmovdqu64 (%[s]), %%zmm16\n\t"
                   "vmovdqu64 64(%[s]), %%zmm17\n\t"
                   "vmovdqu64 -128(%[s],%[n]), %%zmm18\n\t"
                   "vmovdqu64 -64(%[s],%[n]), %%zmm19\n\t"
                   "vmovdqu64 %%zmm16, (%[d])\n\t"
                   "vmovdqu64 %%zmm17, 64(%[d])\n\t"
                   "vmovdqu64 %%zmm18, -128(%[d],%[n])\n\t"
                   "vmovdqu64 %%zmm19, -64(%[d],%[n])"
                   :
                   : MOVE16_EVEX_ARGS
                   : "memory", "xmm16", "xmm17", "xmm18", "xmm19");
}

MOVE16_AVX512_INLINE void move16_evex_eight64(unsigned char *d, const unsigned char *s, size_t n) {
  __asm__ volatile("vmovdqu64 (%[s]), %%zmm16\n\t"
                   "vmovdqu64 64(%[s]), %%zmm17\n\t"
                   "vmovdqu64 128(%[s]), %%zmm18\n\t"
                   "vmovdqu64 192(%[s]), %%zmm19\n\t"
                   "vmovdqu64 -256(%[s],%[n]), %%zmm20\n\t"
                   "vmovdqu64 -192(%[s],%[n]), %%zmm21\n\t"
                   "vmovdqu64 -128(%[s],%[n]), %%zmm22\n\t"
                   "vmovdqu64 -64(%[s],%[n]), %%zmm23\n\t"
                   "vmovdqu64 %%zmm16, (%[d])\n\t"
                   "vmovdqu64 %%zmm17, 64(%[d])\n\t"
                   "vmovdqu64 %%zmm18, 128(%[d])\n\t"
                   "vmovdqu64 %%zmm19, 192(%[d])\n\t"
                   "vmovdqu64 %%zmm20, -256(%[d],%[n])\n\t"
                   "vmovdqu64 %%zmm21, -192(%[d],%[n])\n\t"
                   "vmovdqu64 %%zmm22, -128(%[d],%[n])\n\t"
                   "vmovdqu64 %%zmm23, -64(%[d],%[n])"
                   :
                   : MOVE16_EVEX_ARGS
                   : "memory", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
                     "xmm23");
}

/* AVX-512: pairs of 16, 32 or 64 bytes up to 128 bytes, then four and
 * eight 64-byte vectors (up to 512 bytes). Moves above 128 bytes are
 * tested for first: bmm_move16 does the shorter ones itself. */
__attribute__((target("avx512f,avx512vl"))) static void move16_avx512(void *dst, const void *src,
                                                                      size_t count16) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  size_t n = count16 * 16;
  if (bmm_likely(n > 128)) {
    if (n <= 256)
      move16_evex_four64(d, s, n);
    else if (n <= 512)
      move16_evex_eight64(d, s, n);
    else
      move16_avx512_long(d, s, n);
  } else if (n >= 64) {
    move16_evex_pair64(d, s, n);
  } else if (n > 32) {
    move16_evex_pair32(d, s, n);
  } else {
    move16_upto2(d, s, count16);
  }
}

#endif /* __x86_64__ */

/* ---- Dispatch --------------------------------------------------------- */

static int move16_detect(void) {
#if defined(__x86_64__)
  unsigned f = move16_cpu_features();
  if (f & MOVE16_CPU_AVX512_FAST) return BMM__MOVE16_AVX512;
  if (f & MOVE16_CPU_AVX2) return BMM__MOVE16_AVX2;
#endif
  return BMM__MOVE16_VEC16;
}

bmm__move16_fn bmm__move16_impl(int kind) {
  switch (kind) {
  case BMM__MOVE16_GENERIC:
    return move16_generic;
  case BMM__MOVE16_VEC16:
    return move16_vec16;
#if defined(__x86_64__)
  case BMM__MOVE16_AVX2:
    return (move16_cpu_features() & MOVE16_CPU_AVX2) ? move16_avx2 : NULL;
  case BMM__MOVE16_AVX512:
    return (move16_cpu_features() & MOVE16_CPU_AVX512) ? move16_avx512 : NULL;
#endif
  default:
    return NULL;
  }
}

const char *bmm__move16_impl_name(int kind) {
  switch (kind) {
  case BMM__MOVE16_GENERIC:
    return "generic";
  case BMM__MOVE16_VEC16:
    return MOVE16_VEC16_NAME;
  case BMM__MOVE16_AVX2:
    return "avx2";
  case BMM__MOVE16_AVX512:
    return "avx512";
  default:
    return "?";
  }
}

int bmm__move16_chosen(void) {
  return move16_detect();
}

#if defined(__x86_64__)
/* The kind bmm_move16 uses, or -1 before the first move that needs one. A
 * compare and a direct jump per kind rather than a function pointer: in
 * a loop of short moves the indirect jump measured half a cycle to a cycle
 * more per call. */
static _Atomic(int) move16_kind = -1;

/* 6 once bmm_move16 uses AVX-512, else 0: count16 - 3 below it means 3..8
 * units, moved inline by a pair of vectors. One compare for "AVX-512 and
 * 48..128 bytes" rather than a test of the kind, a jump into move16_avx512
 * and its tests of the count: in a loop of 64-byte moves that saves up to
 * half a TSC cycle of 2.2-2.6, which puts it level with glibc's memmove
 * (2.2-2.3). */
static _Atomic(size_t) move16_evex_units;

/* Sets the kind and the limit above, which depends on it. A thread may see
 * one of the two stores and not yet the other; every combination is still
 * correct, since each path takes any count it can be given. */
static void move16_set_kind(int kind) {
  atomic_store_explicit(&move16_evex_units, kind == BMM__MOVE16_AVX512 ? 6 : 0,
                        memory_order_relaxed);
  atomic_store_explicit(&move16_kind, kind, memory_order_relaxed);
}

bmm_noinline static void move16_dispatch_first(void *dst, const void *src, size_t count16) {
  int kind = move16_detect();
  move16_set_kind(kind);
  bmm__move16_impl(kind)(dst, src, count16);
}
#endif

int bmm__move16_select(int kind) {
  if (bmm__move16_impl(kind) == NULL) return -1;
#if defined(__x86_64__)
  move16_set_kind(kind);
  return 0;
#else
  return kind == BMM__MOVE16_VEC16 ? 0 : -1;
#endif
}

/* 48..128 bytes inline with AVX-512, 48..64 with AVX2, 16..32 bytes
 * inline with 16-byte vectors, which no wider vector beats; the rest goes
 * to the implementation for this CPU. */
BMM_API void bmm_move16(void *dst, const void *src, size_t count16) {
  bmm_assert(((uintptr_t)dst & 15) == 0 && ((uintptr_t)src & 15) == 0);
#if defined(__x86_64__)
  if (bmm_likely(count16 - 3 < atomic_load_explicit(&move16_evex_units, memory_order_relaxed))) {
    move16_evex_pair_baseline(dst, src, count16 * 16);
    return;
  }
#endif
  if (bmm_unlikely(count16 <= 2)) {
    move16_upto2(dst, src, count16);
    return;
  }
#if defined(__x86_64__)
  int kind = atomic_load_explicit(&move16_kind, memory_order_relaxed);
  if (bmm_likely(kind == BMM__MOVE16_AVX512)) {
    move16_avx512(dst, src, count16);
  } else if (kind == BMM__MOVE16_AVX2) {
    if (count16 <= 4)
      move16_ymm_pair_baseline(dst, src, count16 * 16);
    else
      move16_avx2(dst, src, count16);
  } else if (kind == BMM__MOVE16_VEC16) {
    move16_vec16(dst, src, count16);
  } else if (kind == BMM__MOVE16_GENERIC) { /* only when a test selected it */
    move16_generic(dst, src, count16);
  } else {
    move16_dispatch_first(dst, src, count16);
  }
#else
  move16_vec16(dst, src, count16);
#endif
}
