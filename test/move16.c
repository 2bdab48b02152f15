/* move16.c: bmm_move16 (API section 6) against the C library's memmove.
 *
 * Runs bmm_move16 as dispatched for this CPU, then every implementation
 * this build and CPU offer (move16.h: generic, sse2 or neon, avx2, avx512)
 * both directly and as bmm_move16's choice (bmm__move16_select), which
 * exercises its inline short paths with each. Each case fills a window of
 * a buffer and a copy of it with the same random words, moves with memmove
 * in the copy and with the function under test in the buffer, and compares
 * the whole window, which includes GUARD bytes on either side of both
 * regions: the destination must match and nothing else may change (a
 * stray store shows up as a guard byte that differs).
 *
 * Cases:
 *   - exact edges: counts 0..9, 15..17, 31..33, 63..65, 127..129, 255..257
 *     and a few odd larger ones, with dst - src = 0, +-16, +-32, +-48, +-64,
 *     +-128, +-256, +-(length - 16), +-length, +-(length + 16) and far
 *     apart, at each 16-byte position within a 64-byte line (the AVX code
 *     aligns its stores to 64 and treats the ends apart);
 *   - disjoint regions whose distance is a small amount past a multiple of
 *     4096 (the page-offset aliasing case);
 *   - random counts up to 64 KiB, random overlap in both directions or
 *     none, random line positions;
 *   - a few moves of several MiB, disjoint and overlapping either way;
 *   - the non-temporal (streaming) loops, with their threshold lowered
 *     through bmm__move16_stream_min so that small buffers reach them.
 *
 * Usage: move16 [RANDOM_CASES [SEED]]
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "../src/move16.h" /* src/ is not on the test targets' include path */
#include "brainmm.h"
#include "check.h"

#define GUARD 256 /* bytes checked on either side of the moved regions */
#define MIB ((size_t)1 << 20)

/* The largest case: two disjoint 20 MiB regions with a gap between them
 * and the guards, which must fit in one buffer. */
#define BUFFER_SIZE (44 * MIB)

static unsigned char *buf; /* moved by the implementation under test */
static unsigned char *ref; /* moved by memmove */

/* ---- random numbers: splitmix64 ---------------------------------------- */

static uint64_t rng_state;

static uint64_t rng_next(void) {
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Uniform in [0, n), n > 0; the modulo bias is irrelevant here. */
static size_t rng_below(size_t n) {
  return (size_t)(rng_next() % n);
}

/* ---- one case ---------------------------------------------------------- */

struct impl {
  const char *name;
  bmm__move16_fn fn;
};

/* Moves count16 units from window offset src_off to dst_off (both
 * multiples of 16) with `im` in buf and with memmove in ref, where the
 * window starts `line` bytes (0, 16, 32 or 48) past a 64-byte boundary;
 * checks that the window and its guards agree afterwards. */
static void run_case(const struct impl *im, size_t count16, size_t src_off, size_t dst_off,
                     size_t line) {
  size_t len = count16 * 16;
  size_t span = (src_off > dst_off ? src_off : dst_off) + len;
  size_t window = GUARD + line; /* offset of the window in the buffers */
  size_t total = span + 2 * GUARD;
  if (window + total > BUFFER_SIZE) {
    check_print(2, "case too large for the buffer: span %zu\n", span);
    CHECK(0);
    return;
  }
  /* Random words, distinct everywhere, so a unit that lands in the wrong
   * place cannot look right by accident. */
  uint64_t seed = rng_next();
  for (size_t i = 0; i < total; i += 8) {
    uint64_t w = seed + i * 0x9E3779B97F4A7C15ull;
    w = (w ^ (w >> 31)) * 0xD6E8FEB86659FD93ull;
    memcpy(buf + window - GUARD + i, &w, 8);
  }
  memcpy(ref + window - GUARD, buf + window - GUARD, total);

  memmove(ref + window + dst_off, ref + window + src_off, len);
  im->fn(buf + window + dst_off, buf + window + src_off, count16);

  unsigned char *b = buf + window - GUARD, *r = ref + window - GUARD;
  if (!CHECK(memcmp(b, r, total) == 0)) {
    size_t first = 0;
    while (b[first] == r[first])
      first++;
    long at = (long)first - GUARD - (long)dst_off;
    check_print(2,
                "  %s: count16=%zu src=+%zu dst=+%zu line=%zu: first difference at byte %ld "
                "of the destination (%s)\n",
                im->name, count16, src_off, dst_off, line, at,
                at < 0 || (size_t)at >= len ? "outside it" : "inside it");
  }
}

/* A case given as a signed distance dst - src (a multiple of 16). */
static void run_delta(const struct impl *im, size_t count16, long delta, size_t line) {
  if (delta >= 0)
    run_case(im, count16, 0, (size_t)delta, line);
  else
    run_case(im, count16, (size_t)-delta, 0, line);
}

/* ---- the case families --------------------------------------------------- */

static void test_edges(const struct impl *im) {
  static const size_t counts[] = {0,   1,   2,   3,   4,   5,   6,   7,   8,    9,   15,
                                  16,  17,  18,  31,  32,  33,  63,  64,  65,   127, 128,
                                  129, 255, 256, 257, 300, 511, 512, 513, 1000, 4099};
  for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
    size_t n = counts[c];
    long len = (long)n * 16;
    long deltas[] = {0,        16,   32,       48,          64,   128,         256,
                     len - 16, len,  len + 16, len + 4096,  -16,  -32,         -48,
                     -64,      -128, -256,     -(len - 16), -len, -(len + 16), -(len + 4096)};
    for (size_t k = 0; k < sizeof deltas / sizeof deltas[0]; k++)
      for (size_t line = 0; line < 64; line += 16)
        run_delta(im, n, deltas[k], line);
  }
}

/* Disjoint regions whose page offsets differ by a little: where a forward
 * loop's loads would wait for unrelated stores that match in their low 12
 * address bits. Any direction may be used, the result must not change. */
static void test_page_aliasing(const struct impl *im) {
  static const size_t counts[] = {17, 100, 256, 300, 1024, 2000};
  static const long offs[] = {0, 16, 48, 128, 240, 256, 272, -16, -128, -256};
  for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
    long len = (long)counts[c] * 16;
    long pages = (len + 4095) / 4096 * 4096;
    for (size_t k = 0; k < sizeof offs / sizeof offs[0]; k++) {
      long dist = pages + 4096 + offs[k];
      run_delta(im, counts[c], dist, 16);
      run_delta(im, counts[c], -dist, 32);
    }
  }
}

static void test_random(const struct impl *im, unsigned cases) {
  for (unsigned i = 0; i < cases; i++) {
    size_t n;
    switch (rng_below(4)) { /* mostly short and medium moves */
    case 0:
      n = rng_below(20);
      break;
    case 1:
      n = rng_below(300);
      break;
    default:
      n = rng_below(4097); /* up to 64 KiB */
    }
    long delta;
    if (rng_below(4) == 0) /* disjoint */
      delta = (long)(n + 1 + rng_below(64)) * 16;
    else /* overlapping, or touching */
      delta = (long)rng_below(n + 1) * 16;
    if (rng_below(2)) delta = -delta;
    run_delta(im, n, delta, rng_below(4) * 16);
  }
}

static void test_large(const struct impl *im) {
  static const size_t sizes[] = {MIB + 48, 3 * MIB + 16, 9 * MIB - 16, 20 * MIB};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    size_t n = sizes[i] / 16;
    long len = (long)sizes[i];
    run_delta(im, n, len + 4096 + 64, 0);        /* disjoint, dst above */
    run_delta(im, n, -(len + 8192 + 16), 16);    /* disjoint, dst below */
    run_delta(im, n, 4096 + 32, 48);             /* overlapping, dst above: backward */
    run_delta(im, n, -(len / 32 * 16 + 16), 32); /* overlapping, dst below: forward */
  }
}

/* The non-temporal loops, reached with small buffers by lowering the
 * threshold: moves from 64 KiB up, disjoint or at least 32 KiB apart, in
 * both directions and at every 16-byte position within a line. */
static void test_streaming(const struct impl *im) {
  size_t saved = bmm__move16_stream_min;
  bmm__move16_stream_min = 64 * 1024;
  static const size_t sizes[] = {64 * 1024, 64 * 1024 + 16, 100 * 1024 + 48, 300 * 1024 + 32};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    size_t n = sizes[i] / 16;
    long len = (long)sizes[i];
    for (size_t line = 0; line < 64; line += 16) {
      run_delta(im, n, len + 4096 + 16, line);   /* disjoint, dst above */
      run_delta(im, n, -(len + 64), line);       /* disjoint, dst below */
      run_delta(im, n, 32 * 1024 + 16, line);    /* overlapping, 32 KiB apart: backward */
      run_delta(im, n, -(40 * 1024 + 48), line); /* overlapping, 40 KiB apart: forward */
      run_delta(im, n, 16 * 1024, line);         /* too close to stream */
    }
  }
  bmm__move16_stream_min = saved;
}

static void run_all(const struct impl *im, uint64_t seed, unsigned cases) {
  unsigned long failed_before = check_failed_count();
  rng_state = seed;
  test_edges(im);
  test_page_aliasing(im);
  test_random(im, cases);
  test_large(im);
  test_streaming(im);
  printf("%-18s %s\n", im->name, check_failed_count() == failed_before ? "ok" : "FAILED");
}

int main(int argc, char **argv) {
  unsigned cases = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 0) : 3000;
  uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 0) : 0x6d6f76653136ull;
  buf = mmap(NULL, BUFFER_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ref = mmap(NULL, BUFFER_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (!CHECK(buf != MAP_FAILED && ref != MAP_FAILED)) return check_done();

  /* bmm_move16 as the CPU dispatches it, before anything was selected. */
  int chosen = bmm__move16_chosen();
  printf("bmm_move16 dispatches to %s here\n", bmm__move16_impl_name(chosen));
  run_all(&(struct impl){"bmm_move16", bmm_move16}, seed, cases);

  /* Each implementation directly, and bmm_move16 (its inline short paths
   * and its dispatch) with that implementation selected. */
  for (int k = 0; k < BMM__MOVE16_KINDS; k++) {
    const char *name = bmm__move16_impl_name(k);
    bmm__move16_fn fn = bmm__move16_impl(k);
    if (fn == NULL) {
      printf("%-18s not available here, skipped\n", name);
      continue;
    }
    run_all(&(struct impl){name, fn}, seed, cases);
    if (bmm__move16_select(k) == 0) {
      char label[40];
      snprintf(label, sizeof label, "bmm_move16/%s", name);
      run_all(&(struct impl){label, bmm_move16}, seed, cases);
    }
  }
  CHECK(bmm__move16_select(chosen) == 0);

  munmap(buf, BUFFER_SIZE);
  munmap(ref, BUFFER_SIZE);
  return check_done();
}
