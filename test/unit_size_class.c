/* unit_size_class.c: white-box test of the size-class mapping in
 * src/internal.h (bmm__class_of, bmm__class_size). It checks:
 *   - there are exactly BMM_CLASS_COUNT classes, the last one BMM_MEDIUM_MAX;
 *   - every class size is a multiple of BMM_ALIGN (16) and sizes strictly
 *     increase; the first 16 classes are 16..256 in steps of 16;
 *   - round trip: class_of(class_size(c)) == c for every class;
 *   - minimal fit: every request 0..BMM_MEDIUM_MAX maps to a class whose size
 *     is >= the request and whose previous class is < the request;
 *   - the waste bound the comment in types.h states: above 128 B a request
 *     wastes strictly less than 1/9 of its block (so <= 1/8 holds too), and
 *     1/9 is tight (the worst case comes within 1% of it); at 128 B and
 *     below, the waste is under 16 bytes but not bounded by 1/9;
 *   - the direct table of the heap (index (size + 15) / 16) is consistent:
 *     every size of one index maps to the class of index * 16;
 *   - aligned allocation (src/aligned.c): for every power-of-two alignment
 *     a from 32 to 65536 and every size up to BMM_MEDIUM_MAX, the search
 *     "round the size up to a, then step up classes until one is a multiple
 *     of a" ends on a class (never runs past the last one), and that class
 *     fits the request; every power of two from 16 to 64 KiB is a class.
 * Pure arithmetic: no allocation happens.
 */
#include <stdio.h>

#include "../src/internal.h" /* src/ is not on the test targets' include path */
#include "check.h"

static size_t pow2_floor(size_t x) {
  size_t p = 1;
  while (p * 2 <= x)
    p *= 2;
  return p;
}

static void check_class_table(void) {
  CHECK_EQ_SZ(bmm__class_size(BMM_CLASS_COUNT - 1), BMM_MEDIUM_MAX);
  CHECK_EQ_SZ(bmm__class_size(0), BMM_ALIGN);
  /* The class after the last would be larger than BMM_MEDIUM_MAX: the count
   * is exactly where the table should end. */
  CHECK(bmm__class_size(BMM_CLASS_COUNT) > BMM_MEDIUM_MAX);
  CHECK_EQ_SZ(bmm__class_of(BMM_MEDIUM_MAX), BMM_CLASS_COUNT - 1);

  size_t bad_mult = 0, bad_order = 0, bad_trip = 0;
  for (size_t c = 0; c < BMM_CLASS_COUNT; c++) {
    size_t s = bmm__class_size(c);
    if (s % BMM_ALIGN != 0) bad_mult++;
    if (c > 0 && s <= bmm__class_size(c - 1)) bad_order++;
    if (bmm__class_of(s) != c) {
      bad_trip++;
      check_print(2, "round trip: class %zu size %zu maps to class %zu\n", c, s, bmm__class_of(s));
    }
  }
  CHECK_EQ_SZ(bad_mult, 0);
  CHECK_EQ_SZ(bad_order, 0);
  CHECK_EQ_SZ(bad_trip, 0);

  /* The linear part: 16, 32, ..., 256. */
  size_t bad_linear = 0;
  for (size_t c = 0; c < 16; c++)
    if (bmm__class_size(c) != (c + 1) * 16) bad_linear++;
  CHECK_EQ_SZ(bad_linear, 0);

  /* Above 256: 8 classes per doubling, each power of two ends a doubling. */
  size_t bad_doubling = 0;
  for (size_t c = 16; c < BMM_CLASS_COUNT; c++) {
    size_t s = bmm__class_size(c), base = pow2_floor(s - 1);
    if (s - bmm__class_size(c - 1) != base / 8) bad_doubling++;
    if ((c - 16) % 8 == 7 && (s & (s - 1)) != 0) bad_doubling++;
  }
  CHECK_EQ_SZ(bad_doubling, 0);
}

static void check_minimal_fit(void) {
  size_t bad_fit = 0, bad_min = 0, bad_range = 0;
  for (size_t size = 0; size <= BMM_MEDIUM_MAX; size++) {
    size_t c = bmm__class_of(size);
    if (c >= BMM_CLASS_COUNT) {
      if (bad_range++ == 0) check_print(2, "size %zu maps to class %zu\n", size, c);
      continue;
    }
    if (bmm__class_size(c) < size) {
      if (bad_fit++ == 0) check_print(2, "size %zu in class %zu too small\n", size, c);
    }
    /* Minimal: the class below is too small for the request. Size 0 maps
     * to class 0, which has no class below. */
    if (c > 0 && bmm__class_size(c - 1) >= size) {
      if (bad_min++ == 0) check_print(2, "size %zu: class %zu below fits\n", size, c - 1);
    }
  }
  CHECK_EQ_SZ(bad_range, 0);
  CHECK_EQ_SZ(bad_fit, 0);
  CHECK_EQ_SZ(bad_min, 0);
  CHECK_EQ_SZ(bmm__class_of(0), 0);
  CHECK_EQ_SZ(bmm__class_of(1), 0);
  CHECK_EQ_SZ(bmm__class_of(16), 0);
  CHECK_EQ_SZ(bmm__class_of(17), 1);
}

/* Waste (class_size - request) / class_size, compared exactly in integers. */
static void check_waste(void) {
  size_t over_ninth = 0, over_eighth = 0, worst_num = 0, worst_den = 1, worst_size = 0;
  for (size_t size = 129; size <= BMM_MEDIUM_MAX; size++) {
    size_t cs = bmm__class_size(bmm__class_of(size)), waste = cs - size;
    if (waste * 8 > cs) over_eighth++;
    if (waste * 9 >= cs) {
      if (over_ninth++ == 0) check_print(2, "size %zu wastes %zu of %zu\n", size, waste, cs);
    }
    if (waste * worst_den > worst_num * cs) {
      worst_num = waste;
      worst_den = cs;
      worst_size = size;
    }
  }
  CHECK_EQ_SZ(over_eighth, 0); /* the bound the brief asks for */
  CHECK_EQ_SZ(over_ninth, 0);  /* the sharper bound types.h states */
  /* 1/9 is the right constant: the worst case is above 1/9 - 1%. */
  CHECK(worst_num * 900 > worst_den * 99);
  printf("worst waste above 128 B: %zu of %zu bytes (%.4f) at request %zu\n", worst_num, worst_den,
         (double)worst_num / (double)worst_den, worst_size);

  /* At 128 B and below only the 16-byte granularity bounds it: 113 B in a
   * 128 B block wastes 15/128 > 1/9. Documented, so checked. */
  size_t granule_bad = 0;
  for (size_t size = 1; size <= 128; size++)
    if (bmm__class_size(bmm__class_of(size)) - size >= BMM_ALIGN) granule_bad++;
  CHECK_EQ_SZ(granule_bad, 0);
  CHECK((bmm__class_size(bmm__class_of(113)) - 113) * 9 > bmm__class_size(bmm__class_of(113)));
}

/* The direct table maps (size + 15) / 16 to one page: all sizes sharing an
 * index must share a class, the class of index * 16 (what heap.c assumes). */
static void check_direct_index(void) {
  size_t bad = 0;
  for (size_t size = 0; size <= BMM_SMALL_MAX; size++) {
    size_t i = (size + BMM_ALIGN - 1) / BMM_ALIGN;
    if (i >= BMM_DIRECT_COUNT || bmm__class_of(size) != bmm__class_of(i * BMM_ALIGN)) bad++;
  }
  CHECK_EQ_SZ(bad, 0);
  CHECK_EQ_SZ(BMM_DIRECT_COUNT, BMM_SMALL_MAX / BMM_ALIGN + 1);
}

/* The search src/aligned.c does for alignments in (16, 64 KiB]. */
static void check_aligned_classes(void) {
  size_t bad_pow2 = 0;
  for (size_t p = 16; p <= BMM_MEDIUM_MAX; p *= 2)
    if (bmm__class_size(bmm__class_of(p)) != p) bad_pow2++;
  CHECK_EQ_SZ(bad_pow2, 0);

  for (size_t a = 32; a <= 65536; a *= 2) {
    size_t bad = 0;
    for (size_t size = 0; size <= BMM_MEDIUM_MAX; size++) {
      size_t want = size < a ? a : (size + a - 1) & ~(a - 1);
      if (want > BMM_MEDIUM_MAX) continue; /* aligned.c takes the large path */
      size_t c = bmm__class_of(want);
      while (c < BMM_CLASS_COUNT && bmm__class_size(c) % a != 0)
        c++;
      if (c >= BMM_CLASS_COUNT || bmm__class_size(c) < size) {
        if (bad++ == 0) check_print(2, "align %zu size %zu: no class\n", a, size);
      }
    }
    CHECK_EQ_SZ(bad, 0);
    /* "at or above any size": a multiple of a exists above every size up
     * to the largest class. */
    size_t c = BMM_CLASS_COUNT - 1;
    CHECK_EQ_SZ(bmm__class_size(c) % a, 0);
  }
}

int main(void) {
  check_class_table();
  check_minimal_fit();
  check_waste();
  check_direct_index();
  check_aligned_classes();
  return check_done();
}
