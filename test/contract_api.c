/* contract_api.c - the contract of API.md section 1 ("Standard C / POSIX /
 * glibc") and its general rules, checked through the bmm_ names:
 *
 *   malloc(0) gives unique pointers; free(NULL) is a no-op; every pointer is
 *   16-byte aligned (sizes 0..4096 and big ones); realloc keeps contents while
 *   growing and shrinking across the small, medium and large classes;
 *   realloc(NULL, n) acts as malloc; realloc(p, 0) frees p (NULL or a usable
 *   minimum block); calloc zeroes, also memory reused dirty; calloc and
 *   reallocarray overflow give NULL + ENOMEM and keep the old block; too-big
 *   requests give NULL + ENOMEM; a failed realloc keeps the old block intact;
 *   posix_memalign, aligned_alloc, memalign, valloc and pvalloc alignment and
 *   their EINVAL cases; bmm_usable_size is >= the request and the whole usable
 *   size can be written without touching neighbours; bmm_free_sized and
 *   bmm_free_aligned_sized; blocks never overlap; the option calls; a 1 GiB
 *   block.
 *
 * Where glibc and API.md differ (aligned_alloc or memalign with an alignment
 * that is not a power of two: glibc 2.36 rounds it up, API.md and BrainMM say
 * NULL + EINVAL; pvalloc(0): glibc gives a minimum block, BrainMM one page)
 * this test checks API.md and BrainMM's documented behaviour.
 */
#define _GNU_SOURCE
#include <brainmm.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

#define KiB ((size_t)1024)
#define MiB (KiB * 1024)
#define GiB (MiB * 1024)
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static size_t page_size;

static int is_aligned(const void *p, size_t align) {
  return ((uintptr_t)p & (align - 1)) == 0;
}

static size_t round_up(size_t n, size_t align) {
  return (n + align - 1) & ~(align - 1);
}

/* The byte expected at offset i of a block filled with `seed`. */
static unsigned char pattern_byte(size_t i, unsigned seed) {
  return (unsigned char)(seed * 131u + i * 7u + (i >> 8) * 13u + 1u);
}

static void fill(void *p, size_t from, size_t to, unsigned seed) {
  unsigned char *b = p;
  for (size_t i = from; i < to; i++)
    b[i] = pattern_byte(i, seed);
}

/* Offset of the first byte in [from, to) that does not hold the pattern, or
 * `to` when all do. */
static size_t first_bad(const void *p, size_t from, size_t to, unsigned seed) {
  const unsigned char *b = p;
  for (size_t i = from; i < to; i++)
    if (b[i] != pattern_byte(i, seed))
      return i;
  return to;
}

static int holds_pattern(const void *p, size_t n, unsigned seed) {
  size_t bad = first_bad(p, 0, n, seed);
  if (bad != n)
    fprintf(stderr, "  block %p: byte %zu of %zu is 0x%02x, expected 0x%02x\n", p,
            bad, n, ((const unsigned char *)p)[bad], pattern_byte(bad, seed));
  return bad == n;
}

static int all_bytes(const void *p, size_t n, unsigned char value) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++)
    if (b[i] != value)
      return 0;
  return 1;
}

/* Checks what every general-purpose result must satisfy: non-NULL, 16-byte
 * aligned, usable size >= request. Reads and writes nothing in the block. */
static int check_block(void *p, size_t size) {
  if (!CHECK(p != NULL))
    return 0;
  int ok = CHECK(is_aligned(p, BMM_MIN_ALIGN));
  if (!CHECK(bmm_usable_size(p) >= size)) {
    fprintf(stderr, "  block %p: usable size %zu < requested %zu\n", p,
            bmm_usable_size(p), size);
    ok = 0;
  }
  return ok;
}

/* Writes the first and last byte of a block of `size` bytes. */
static void touch(void *p, size_t size) {
  if (p != NULL && size > 0) {
    ((volatile unsigned char *)p)[0] = 0x5A;
    ((volatile unsigned char *)p)[size - 1] = 0xA5;
  }
}

static int cmp_ptr(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
  return x < y ? -1 : x > y;
}

/* Sorts ptrs and checks that no two blocks (with their usable sizes) overlap. */
static void check_disjoint(void **ptrs, size_t n) {
  qsort(ptrs, n, sizeof *ptrs, cmp_ptr);
  size_t overlaps = 0;
  for (size_t i = 0; i + 1 < n; i++) {
    uintptr_t end = (uintptr_t)ptrs[i] + bmm_usable_size(ptrs[i]);
    if (ptrs[i] == ptrs[i + 1] || end > (uintptr_t)ptrs[i + 1]) {
      if (overlaps++ < 5)
        fprintf(stderr, "  blocks %p (usable %zu) and %p overlap\n", ptrs[i],
                bmm_usable_size(ptrs[i]), ptrs[i + 1]);
    }
  }
  CHECK_EQ_SZ(overlaps, 0);
}

static void *ptrs[60000];

/* ---- malloc(0), free(NULL) --------------------------------------------- */

static void test_malloc_zero_and_free_null(void) {
  enum { N = 1000 };
  for (size_t i = 0; i < N; i++) {
    ptrs[i] = bmm_malloc(0);
    check_block(ptrs[i], 0);
  }
  check_disjoint(ptrs, N);
  for (size_t i = 0; i < N; i++)
    bmm_free(ptrs[i]);

  bmm_free(NULL);
  bmm_free_sized(NULL, 0);
  bmm_free_sized(NULL, 100);
  bmm_free_aligned_sized(NULL, 64, 100);
  CHECK_EQ_SZ(bmm_usable_size(NULL), 0);
  void *p = bmm_malloc(10);
  check_block(p, 10);
  bmm_free(p);
}

/* ---- alignment --------------------------------------------------------- */

static void test_alignment(void) {
  /* sizes 0..4096 all live at once, freed in a scattered order */
  for (size_t n = 0; n <= 4096; n++) {
    ptrs[n] = bmm_malloc(n);
    check_block(ptrs[n], n);
    touch(ptrs[n], n);
  }
  for (size_t k = 0; k <= 4096; k++) {
    size_t n = (k * 1237) % 4097; /* 1237 is coprime with 4097 */
    bmm_free(ptrs[n]);
  }

  static const size_t big[] = {64 * KiB,      64 * KiB + 1, 256 * KiB - 1, MiB,
                               2 * MiB + 3,   16 * MiB,     100 * MiB};
  for (size_t i = 0; i < ARRAY_LEN(big); i++) {
    void *p = bmm_malloc(big[i]);
    check_block(p, big[i]);
    touch(p, big[i]);
    bmm_free(p);
  }
}

/* ---- realloc ------------------------------------------------------------ */

static void test_realloc_contents(void) {
  /* one byte at a time through the small sizes, with neighbours allocated in
   * between so the block sometimes can and sometimes cannot grow in place */
  void *side[80];
  size_t nside = 0;
  unsigned char *p = bmm_realloc(NULL, 1); /* realloc(NULL, n) is malloc(n) */
  check_block(p, 1);
  fill(p, 0, 1, 3);
  int ok = 1;
  for (size_t n = 2; n <= 1100 && p; n++) {
    unsigned char *q = bmm_realloc(p, n);
    if (!CHECK(q != NULL))
      break;
    p = q;
    if (first_bad(p, 0, n - 1, 3) != n - 1)
      ok = 0;
    fill(p, n - 1, n, 3);
    if (n % 16 == 0 && nside < ARRAY_LEN(side))
      side[nside++] = bmm_malloc(n);
  }
  CHECK(ok);
  CHECK(is_aligned(p, BMM_MIN_ALIGN));
  bmm_free(p);
  for (size_t i = 0; i < nside; i++)
    bmm_free(side[i]);

  /* across the classes: up through small, medium and large sizes, then down */
  static const size_t sizes[] = {
      1,        7,         16,           24,        100,        512,
      1024,     1500,      4096,         8000,      32 * KiB,   64 * KiB,
      64 * KiB + 1, 200000, MiB,         3 * MiB,   5 * MiB + 13, 3 * MiB - 7,
      MiB,      70000,     64 * KiB,     40000,     1024,       1000,
      100,      16,        1,            3000,      2 * MiB,    9};
  p = NULL;
  size_t old = 0;
  unsigned seed = 7;
  for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
    size_t n = sizes[i];
    void *neighbour = bmm_malloc(n / 2 + 1);
    unsigned char *q = bmm_realloc(p, n);
    if (!CHECK(q != NULL))
      break;
    check_block(q, 0);
    CHECK(bmm_usable_size(q) >= n);
    size_t kept = old < n ? old : n;
    if (!CHECK(holds_pattern(q, kept, seed)))
      fprintf(stderr, "  realloc %zu -> %zu lost contents\n", old, n);
    seed++;
    fill(q, 0, n, seed);
    p = q;
    old = n;
    bmm_free(neighbour);
  }
  bmm_free(p);

  /* realloc to the same size and to a slightly smaller one keeps everything */
  p = bmm_malloc(777);
  fill(p, 0, 777, 11);
  p = bmm_realloc(p, 777);
  CHECK(p && holds_pattern(p, 777, 11));
  p = bmm_realloc(p, 700);
  CHECK(p && holds_pattern(p, 700, 11));
  bmm_free(p);
}

static void test_realloc_zero(void) {
  /* API.md: realloc(p, 0) frees p and returns either NULL (glibc does) or a
   * unique minimum-size block. Both are accepted; a non-NULL result must be
   * aligned, usable and freeable. The behaviour seen is printed. */
  void *other = bmm_malloc(16);
  void *p = bmm_malloc(100);
  fill(p, 0, 100, 5);
  errno = 0;
  void *q = bmm_realloc(p, 0);
  if (q == NULL) {
    printf("note: realloc(p, 0) returned NULL (glibc behaviour)\n");
  } else {
    printf("note: realloc(p, 0) returned a minimum-size block (usable %zu)\n",
           bmm_usable_size(q));
    check_block(q, 0);
    CHECK(q != other);
    size_t u = bmm_usable_size(q);
    memset(q, 0x77, u);
    CHECK(all_bytes(q, u, 0x77));
    bmm_free(q);
  }
  /* the same from a large block */
  p = bmm_malloc(3 * MiB);
  check_block(p, 3 * MiB);
  q = bmm_realloc(p, 0);
  if (q != NULL) {
    check_block(q, 0);
    bmm_free(q);
  }
  bmm_free(other);
}

/* ---- calloc ------------------------------------------------------------- */

static void test_calloc(void) {
  static const size_t sizes[] = {1,    16,       24,       100,      1000,
                                 4096, 5000,     64 * KiB, 70000,    MiB,
                                 3 * MiB};
  for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
    size_t n = sizes[i];
    int zero = 1;
    for (int round = 0; round < 20; round++) {
      unsigned char *d = bmm_malloc(n);
      if (!CHECK(d != NULL))
        break;
      memset(d, 0xAB, n);
      bmm_free(d);
      /* alternate the shape of the request: (1, n) and (n / 4, 4) */
      unsigned char *z = (round & 1) && n % 4 == 0 ? bmm_calloc(n / 4, 4)
                                                   : bmm_calloc(1, n);
      if (!CHECK(z != NULL))
        break;
      CHECK(is_aligned(z, BMM_MIN_ALIGN));
      zero &= all_bytes(z, n, 0);
      memset(z, 0xCD, n);
      bmm_free(z);
    }
    if (!CHECK(zero))
      fprintf(stderr, "  calloc(%zu) after dirty free was not zeroed\n", n);
  }

  /* many dirty blocks freed, then as many calloc'd */
  enum { N = 256 };
  static const size_t batch_sizes[] = {48, 200, 3000, 20000};
  for (size_t s = 0; s < ARRAY_LEN(batch_sizes); s++) {
    size_t n = batch_sizes[s];
    for (size_t i = 0; i < N; i++) {
      ptrs[i] = bmm_malloc(n);
      if (ptrs[i])
        memset(ptrs[i], 0xAB, n);
    }
    for (size_t i = 0; i < N; i++)
      bmm_free(ptrs[i]);
    int zero = 1;
    for (size_t i = 0; i < N; i++) {
      ptrs[i] = bmm_calloc(n, 1);
      if (!ptrs[i])
        zero = 0;
      else
        zero &= all_bytes(ptrs[i], n, 0);
    }
    CHECK(zero);
    for (size_t i = 0; i < N; i++)
      bmm_free(ptrs[i]);
  }

  /* odd shapes */
  unsigned char *z = bmm_calloc(7, 13);
  check_block(z, 91);
  CHECK(z && all_bytes(z, 91, 0));
  bmm_free(z);

  /* calloc with a zero count or size acts as malloc(0) (glibc: a unique
   * pointer). */
  void *a = bmm_calloc(0, 16), *b = bmm_calloc(16, 0);
  check_block(a, 0);
  check_block(b, 0);
  CHECK(a != b);
  bmm_free(a);
  bmm_free(b);
}

/* ---- overflow and too-big requests ------------------------------------ */

static void test_overflow(void) {
  const size_t half = SIZE_MAX / 2 + 1;
  bmm_free(CHECK_ERRNO(bmm_calloc(half, 2), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_calloc(2, half), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_calloc(SIZE_MAX, SIZE_MAX), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_calloc(SIZE_MAX / 16 + 1, 16), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_calloc(SIZE_MAX / 3 + 1, 3), ENOMEM));
#if SIZE_MAX > 0xFFFFFFFFu
  bmm_free(CHECK_ERRNO(bmm_calloc((size_t)1 << 32, (size_t)1 << 32), ENOMEM));
#endif
  bmm_free(CHECK_ERRNO(bmm_calloc(1, SIZE_MAX), ENOMEM)); /* no overflow, too big */

  bmm_free(CHECK_ERRNO(bmm_reallocarray(NULL, half, 2), ENOMEM));

  /* a failed reallocarray leaves the old block valid and unchanged */
  unsigned char *p = bmm_reallocarray(NULL, 10, 20);
  check_block(p, 200);
  fill(p, 0, 200, 21);
  bmm_free(CHECK_ERRNO(bmm_reallocarray(p, half, 2), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_reallocarray(p, 3, SIZE_MAX / 3 + 1), ENOMEM));
  bmm_free(CHECK_ERRNO(bmm_reallocarray(p, SIZE_MAX, SIZE_MAX), ENOMEM));
  CHECK(holds_pattern(p, 200, 21));
  CHECK(bmm_usable_size(p) >= 200);
  /* and a good one keeps the contents */
  unsigned char *q = bmm_reallocarray(p, 100, 20);
  if (CHECK(q != NULL)) {
    p = q;
    CHECK(holds_pattern(p, 200, 21));
    check_block(p, 2000);
  }
  q = bmm_reallocarray(p, 5, 8);
  if (CHECK(q != NULL)) {
    p = q;
    CHECK(holds_pattern(p, 40, 21));
  }
  bmm_free(p);
}

static void test_too_big(void) {
  const size_t too_big[] = {SIZE_MAX,         SIZE_MAX - 8,
                            SIZE_MAX - 16,    SIZE_MAX - 4095,
                            SIZE_MAX - 65535, (size_t)PTRDIFF_MAX + 1,
                            (size_t)PTRDIFF_MAX};
  for (size_t i = 0; i < ARRAY_LEN(too_big); i++) {
    size_t n = too_big[i];
    bmm_free(CHECK_ERRNO(bmm_malloc(n), ENOMEM));
    bmm_free(CHECK_ERRNO(bmm_realloc(NULL, n), ENOMEM));
    bmm_free(CHECK_ERRNO(bmm_calloc(1, n), ENOMEM));
    bmm_free(CHECK_ERRNO(bmm_valloc(n), ENOMEM));
    bmm_free(CHECK_ERRNO(bmm_pvalloc(n), ENOMEM)); /* rounding n up overflows */
    bmm_free(CHECK_ERRNO(bmm_memalign(64, n), ENOMEM));
    bmm_free(CHECK_ERRNO(bmm_aligned_alloc(4096, n), ENOMEM));

    /* posix_memalign returns the error code; *out is left alone or set to
     * NULL (POSIX allows both). */
    void *sentinel = &sentinel;
    void *out = sentinel;
    CHECK_EQ_LONG(bmm_posix_memalign(&out, 64, n), ENOMEM);
    CHECK(out == sentinel || out == NULL);
  }

  /* An alignment that is a power of two but cannot be satisfied: no memory
   * (ENOMEM); an implementation that caps alignments may call it EINVAL. */
  const size_t huge_align = SIZE_MAX / 2 + 1;
  errno = 0;
  void *p = bmm_aligned_alloc(huge_align, 16);
  CHECK(p == NULL && (errno == ENOMEM || errno == EINVAL));
  bmm_free(p);
  errno = 0;
  p = bmm_memalign(huge_align, 16);
  CHECK(p == NULL && (errno == ENOMEM || errno == EINVAL));
  bmm_free(p);
}

static void test_failed_realloc(void) {
  static const size_t sizes[] = {16, 1000, 100 * KiB, 2 * MiB};
  const size_t too_big[] = {SIZE_MAX, SIZE_MAX - 8, SIZE_MAX - 4095,
                            (size_t)PTRDIFF_MAX + 1};
  for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
    size_t n = sizes[i];
    unsigned char *p = bmm_malloc(n);
    if (!check_block(p, n))
      continue;
    fill(p, 0, n, (unsigned)i + 40);
    size_t usable = bmm_usable_size(p);
    for (size_t k = 0; k < ARRAY_LEN(too_big); k++)
      bmm_free(CHECK_ERRNO(bmm_realloc(p, too_big[k]), ENOMEM));
    CHECK(holds_pattern(p, n, (unsigned)i + 40));
    CHECK_EQ_SZ(bmm_usable_size(p), usable);
    /* still a normal block: it can grow and be freed */
    unsigned char *q = bmm_realloc(p, n * 2);
    if (CHECK(q != NULL)) {
      p = q;
      CHECK(holds_pattern(p, n, (unsigned)i + 40));
    }
    bmm_free(p);
  }
}

/* ---- aligned allocation ------------------------------------------------- */

static void test_posix_memalign(void) {
  for (size_t a = sizeof(void *); a <= 64 * MiB; a <<= 1) {
    const size_t sizes[] = {1, 24, a, a + 1, 3 * a / 2};
    for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
      size_t n = sizes[i];
      void *p = NULL;
      int rc = bmm_posix_memalign(&p, a, n);
      if (!CHECK_EQ_LONG(rc, 0)) {
        fprintf(stderr, "  posix_memalign(align %zu, size %zu)\n", a, n);
        continue;
      }
      if (!CHECK(is_aligned(p, a)))
        fprintf(stderr, "  posix_memalign(align %zu, size %zu) = %p\n", a, n, p);
      check_block(p, n);
      touch(p, n);
      bmm_free(p);
    }
  }
  /* size 0: success, and a NULL or unique pointer that free accepts */
  void *p = NULL;
  CHECK_EQ_LONG(bmm_posix_memalign(&p, 64, 0), 0);
  CHECK(is_aligned(p, 64));
  bmm_free(p);

  /* bad alignments: EINVAL and *out untouched */
  const size_t bad[] = {0, 1, 2, 3, 4, sizeof(void *) / 2 + 1, 24, 48, 100,
                        sizeof(void *) + 1, 4097, SIZE_MAX};
  for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
    void *sentinel = &sentinel;
    void *out = sentinel;
    if (!CHECK_EQ_LONG(bmm_posix_memalign(&out, bad[i], 64), EINVAL))
      fprintf(stderr, "  posix_memalign(align %zu)\n", bad[i]);
    CHECK(out == sentinel);
    if (out != sentinel)
      bmm_free(out);
  }
}

static void test_aligned_alloc_and_memalign(void) {
  /* small powers of two are valid alignments; the general rule still gives
   * 16-byte alignment */
  for (size_t a = 1; a < 16; a <<= 1) {
    void *p = bmm_aligned_alloc(a, 10);
    check_block(p, 10);
    bmm_free(p);
    p = bmm_memalign(a, 10);
    check_block(p, 10);
    bmm_free(p);
  }
  for (size_t a = 16; a <= MiB; a <<= 1) {
    const size_t sizes[] = {a, 2 * a, 3 * a, 1, 100, a + 1, a / 2 + 3};
    for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
      size_t n = sizes[i];
      void *p = bmm_aligned_alloc(a, n);
      if (!CHECK(p != NULL && is_aligned(p, a)))
        fprintf(stderr, "  aligned_alloc(%zu, %zu) = %p\n", a, n, p);
      check_block(p, n);
      touch(p, n);
      /* every other block goes back through free_aligned_sized */
      if (i & 1)
        bmm_free_aligned_sized(p, a, n);
      else
        bmm_free(p);

      p = bmm_memalign(a, n);
      if (!CHECK(p != NULL && is_aligned(p, a)))
        fprintf(stderr, "  memalign(%zu, %zu) = %p\n", a, n, p);
      check_block(p, n);
      touch(p, n);
      bmm_free(p);
    }
  }

  /* aligned_alloc with an alignment that is not a power of two: API.md says
   * NULL + EINVAL (glibc before 2.38 rounds the alignment up instead). Zero is
   * not a power of two either. */
  const size_t bad[] = {0, 3, 24, 48, 96, 1000, 4097, MiB + 16};
  for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
    void *p = CHECK_ERRNO(bmm_aligned_alloc(bad[i], 96), EINVAL);
    if (p != NULL) {
      fprintf(stderr, "  aligned_alloc(%zu, 96) = %p did not fail\n", bad[i], p);
      bmm_free(p);
    }
  }

  /* memalign with an alignment that is not a power of two: glibc rounds it up
   * to the next power of two (and takes 0 as the minimum); BrainMM's memalign
   * is its aligned_alloc (src/aligned.c) and rejects it like aligned_alloc:
   * NULL + EINVAL. That documented behaviour is what is checked. */
  for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
    void *p = CHECK_ERRNO(bmm_memalign(bad[i], 96), EINVAL);
    if (p != NULL) {
      fprintf(stderr, "  memalign(%zu, 96) = %p did not fail\n", bad[i], p);
      bmm_free(p);
    }
  }
}

static void test_valloc_pvalloc(void) {
  const size_t sizes[] = {0,     1,       100,     4095,    4096,
                          4097,  10000,   MiB,     MiB + 1, 3 * MiB};
  for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
    size_t n = sizes[i];
    void *p = bmm_valloc(n);
    if (!CHECK(p != NULL && is_aligned(p, page_size)))
      fprintf(stderr, "  valloc(%zu) = %p\n", n, p);
    check_block(p, n);
    touch(p, n);
    bmm_free(p);

    /* pvalloc rounds the size up to whole pages; pvalloc(0) is one page */
    size_t rounded = n == 0 ? page_size : round_up(n, page_size);
    p = bmm_pvalloc(n);
    if (!CHECK(p != NULL && is_aligned(p, page_size)))
      fprintf(stderr, "  pvalloc(%zu) = %p\n", n, p);
    if (check_block(p, rounded)) {
      memset(p, 0x3C, rounded);
      CHECK(all_bytes(p, rounded, 0x3C));
    }
    bmm_free(p);
  }
}

/* ---- usable size, neighbours, free_sized, disjoint blocks -------------- */

static void test_usable_size(void) {
  /* sizes 1..2048, all live; each fills its whole usable size, then every
   * block is verified, so an overlap with a neighbour shows up */
  enum { N = 2048 };
  int ok = 1;
  for (size_t i = 0; i < N; i++) {
    size_t n = i + 1;
    ptrs[i] = bmm_malloc(n);
    if (!ptrs[i] || bmm_usable_size(ptrs[i]) < n)
      ok = 0;
  }
  CHECK(ok);
  for (size_t i = 0; i < N; i++)
    if (ptrs[i])
      fill(ptrs[i], 0, bmm_usable_size(ptrs[i]), (unsigned)i);
  ok = 1;
  for (size_t i = 0; i < N; i++)
    if (ptrs[i])
      ok &= holds_pattern(ptrs[i], bmm_usable_size(ptrs[i]), (unsigned)i);
  CHECK(ok);
  for (size_t i = 0; i < N; i++)
    bmm_free(ptrs[i]);

  /* runs of one size (neighbours in the same page), with holes refilled */
  static const size_t sizes[] = {16,   17,    32,     48,       100,
                                 128,  500,   1000,   1024,     2000,
                                 4096, 5000,  10000,  64 * KiB, 100000,
                                 300000, MiB + 5};
  for (size_t s = 0; s < ARRAY_LEN(sizes); s++) {
    size_t n = sizes[s];
    size_t count = 4 * MiB / n;
    if (count > 64)
      count = 64;
    if (count < 4)
      count = 4;
    for (size_t i = 0; i < count; i++) {
      ptrs[i] = bmm_malloc(n);
      check_block(ptrs[i], n);
      if (ptrs[i])
        fill(ptrs[i], 0, bmm_usable_size(ptrs[i]), (unsigned)(i + s));
    }
    for (size_t i = 0; i < count; i += 2) {
      bmm_free(ptrs[i]);
      ptrs[i] = bmm_malloc(n);
      check_block(ptrs[i], n);
      if (ptrs[i])
        fill(ptrs[i], 0, bmm_usable_size(ptrs[i]), (unsigned)(i + s));
    }
    ok = 1;
    for (size_t i = 0; i < count; i++)
      if (ptrs[i])
        ok &= holds_pattern(ptrs[i], bmm_usable_size(ptrs[i]), (unsigned)(i + s));
    if (!CHECK(ok))
      fprintf(stderr, "  size %zu: writing the usable size hit a neighbour\n", n);
    for (size_t i = 0; i < count; i++)
      bmm_free(ptrs[i]);
  }
}

static void test_free_sized(void) {
  static const size_t sizes[] = {1, 16, 100, 1024, 5000, 64 * KiB, 300000, 3 * MiB};
  for (int round = 0; round < 3; round++) {
    for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
      size_t n = sizes[i];
      void *p = bmm_malloc(n);
      check_block(p, n);
      bmm_free_sized(p, n);

      p = bmm_calloc(n, 1);
      check_block(p, n);
      bmm_free_sized(p, n);

      p = bmm_malloc(n);
      void *q = bmm_realloc(p, n * 2 + 1);
      if (CHECK(q != NULL))
        p = q;
      check_block(p, n * 2 + 1);
      touch(p, q ? n * 2 + 1 : n);
      bmm_free_sized(p, q ? n * 2 + 1 : n);

      for (size_t a = 16; a <= 64 * KiB; a <<= 4) {
        p = bmm_aligned_alloc(a, n);
        check_block(p, n);
        CHECK(is_aligned(p, a));
        bmm_free_aligned_sized(p, a, n);
      }
    }
  }
  /* the allocator still works after all of that */
  void *p = bmm_malloc(100);
  check_block(p, 100);
  bmm_free(p);
}

static void test_disjoint(void) {
  static const struct {
    size_t size, count;
  } runs[] = {{1, 20000},   {16, 10000},   {48, 10000}, {100, 10000},
              {1000, 5000}, {5000, 1000},  {70000, 200}, {MiB, 20}};
  size_t n = 0;
  int ok = 1;
  for (size_t r = 0; r < ARRAY_LEN(runs); r++) {
    for (size_t i = 0; i < runs[r].count && n < ARRAY_LEN(ptrs); i++) {
      void *p = bmm_malloc(runs[r].size);
      if (!p) {
        ok = 0;
        continue;
      }
      ok &= is_aligned(p, BMM_MIN_ALIGN) && bmm_usable_size(p) >= runs[r].size;
      ptrs[n++] = p;
    }
  }
  CHECK(ok);
  check_disjoint(ptrs, n);
  for (size_t i = 0; i < n; i++)
    bmm_free(ptrs[i]);
}

/* ---- options, huge blocks ---------------------------------------------- */

static void test_options(void) {
  /* the default, unless the environment says otherwise */
  if (getenv("BMM_ABORT_ON_ERROR") == NULL && getenv("BMM_OPTIONS") == NULL)
    CHECK_EQ_LONG(bmm_option_get("abort_on_error"), 1);
  CHECK_EQ_LONG(bmm_option_get("no_such_option"), -1);
  CHECK_EQ_LONG(bmm_option_set("no_such_option", 1), EINVAL);
}

static void test_huge(void) {
  unsigned char *p = bmm_malloc(GiB);
  if (check_block(p, GiB)) {
    p[0] = 1;
    p[GiB - 1] = 2;
    CHECK(p[0] == 1 && p[GiB - 1] == 2);
  }
  bmm_free(p);
}

int main(void) {
  long ps = sysconf(_SC_PAGESIZE);
  page_size = ps > 0 ? (size_t)ps : 4096;

  test_malloc_zero_and_free_null();
  test_alignment();
  test_realloc_contents();
  test_realloc_zero();
  test_calloc();
  test_overflow();
  test_too_big();
  test_failed_realloc();
  test_posix_memalign();
  test_aligned_alloc_and_memalign();
  test_valloc_pvalloc();
  test_usable_size();
  test_free_sized();
  test_disjoint();
  test_options();
  test_huge();
  CHECK(bmm_heap_check());
  return check_done();
}
