/* move16.c: bmm_move16 (API section 6) against the C library's memmove on
 * 16-byte aligned data, sizes 64 B to 64 MiB.
 *
 * Unlike the w_*.c workloads this program is linked with brainmm_static and
 * calls bmm_move16 directly; it is not run under LD_PRELOAD. It measures
 * three layouts:
 *   copy  disjoint regions, both page-aligned (dst starts one page past the
 *         room for the largest size);
 *   down  overlapping, dst = src - shift (a forward move);
 *   up    overlapping, dst = src + shift (a backward move);
 * where shift is half the size rounded down to 16 bytes (at least 16).
 *
 * Method. Both functions are called by name, the way programs call them:
 * memmove through the PLT into the variant glibc picked for this CPU,
 * bmm_move16 directly (static library) into its own dispatch. For each
 * size the number of calls per timed block is calibrated to about --ms
 * milliseconds; then each of --rounds rounds times one block of memmove
 * and one of bmm_move16, alternating which goes first, and each function's
 * figure is the median of its blocks. Pages are touched before timing.
 * GB/s is bytes moved (the size, once per call) per nanosecond.
 *
 * Output: a table, then one line per layout and size
 *   RESULT workload=move16 mode=M size=N memmove_gbps=X move16_gbps=Y ratio=Z
 * with ratio = move16_gbps / memmove_gbps (above 1: bmm_move16 is faster).
 *
 * Usage: move16 [--data FILE] [--ms N] [--rounds N] [--mode copy|down|up|all]
 *               [--impl dispatch|generic|sse2|neon|avx2|avx512] [--sizes N,N,...]
 *   --ms N       milliseconds per timed block (default 5);
 *   --rounds N   rounds per size (default 5, at most 101);
 *   --data FILE  also write a gnuplot data file: one block per layout
 *                (blocks separated by two blank lines, so `index 0` is
 *                copy), columns size, memmove GB/s, move16 GB/s, ratio;
 *   --impl NAME  make bmm_move16 use this implementation from
 *                src/move16.h instead of the one it picks for the CPU
 *                (default: dispatch, its own choice);
 *   --sizes      sizes in bytes (k/M suffixes: KiB, MiB), multiples of 16.
 *
 * The chart: save these lines as move16.gp and run
 *   gnuplot -e "datafile='move16.dat'; outfile='move16.png'" move16.gp
 * for GB/s against size (log-log, top) and the ratio (bottom), one column
 * per layout.
 *
 *   set terminal pngcairo noenhanced size 1500,800
 *   set output outfile
 *   set multiplot layout 2,3 title "bmm_move16 vs memmove, 16-byte aligned"
 *   set logscale x 2
 *   set xrange [48:100663296]
 *   set xtics ("64" 64, "1K" 1024, "16K" 16384, "256K" 262144, "4M" 4194304, "64M" 67108864)
 *   set grid
 *   do for [i=0:2] {
 *     set title word("copy down up", i+1)
 *     set logscale y 2
 *     set ylabel "GB/s"
 *     plot datafile index i using 1:2 with linespoints lw 2 title "memmove", \
 *          datafile index i using 1:3 with linespoints lw 2 title "bmm_move16"
 *   }
 *   do for [i=0:2] {
 *     set title word("copy down up", i+1)." ratio"
 *     unset logscale y
 *     set ylabel "bmm_move16 / memmove"
 *     plot datafile index i using 1:4 with linespoints lw 2 notitle, 1 notitle dt 2
 *   }
 *   unset multiplot
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "../src/move16.h" /* bmm__move16_select, for --impl */
#include "brainmm.h"

#define MAX_ROUNDS 101
#define MAX_SIZES 64
#define PAGE 4096

static const size_t default_sizes[] = {64,     256,     1024,    4096,     16384,   65536,
                                       262144, 1048576, 4194304, 16777216, 67108864};

enum { MODE_COPY, MODE_DOWN, MODE_UP, MODES };
static const char *const mode_names[MODES] = {"copy", "down", "up"};

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* The compiler must make every call: the empty asm claims to read and
 * write all memory (the program is also built with -fno-builtin, so
 * memmove is an ordinary external call, made through the PLT as in any
 * program). */
#define BENCH_OPAQUE() __asm__ volatile("" : : : "memory")

/* One timed block of `reps` calls; returns nanoseconds. */
static double time_memmove(unsigned char *dst, const unsigned char *src, size_t size, long reps) {
  double t0 = now_ns();
  for (long i = 0; i < reps; i++) {
    memmove(dst, src, size);
    BENCH_OPAQUE();
  }
  return now_ns() - t0;
}

static double time_move16(unsigned char *dst, const unsigned char *src, size_t size, long reps) {
  size_t count16 = size / 16;
  double t0 = now_ns();
  for (long i = 0; i < reps; i++) {
    bmm_move16(dst, src, count16);
    BENCH_OPAQUE();
  }
  return now_ns() - t0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return v[n / 2];
}

/* Calls per block so that one block of the slower function takes about
 * block_ns: doubles a trial count until it takes a tenth of that. */
static long calibrate(unsigned char *dst, const unsigned char *src, size_t size, double block_ns) {
  long reps = 1;
  for (;;) {
    double t = time_memmove(dst, src, size, reps);
    double u = time_move16(dst, src, size, reps);
    if (u > t) t = u;
    if (t >= block_ns / 10 || reps >= (1L << 40)) {
      double per_call = t / (double)reps;
      long r = (long)(block_ns / per_call);
      return r < 1 ? 1 : r;
    }
    reps *= 2;
  }
}

static size_t parse_size(const char *s) {
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  if (*end == 'k' || *end == 'K') v <<= 10;
  if (*end == 'm' || *end == 'M') v <<= 20;
  return (size_t)v;
}

static void usage(void) {
  fprintf(stderr, "usage: move16 [--data FILE] [--ms N] [--rounds N] [--mode copy|down|up|all]\n"
                  "              [--impl dispatch|generic|sse2|neon|avx2|avx512] "
                  "[--sizes N,N,...]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *data_path = NULL;
  double block_ms = 5;
  int rounds = 5;
  int mode_first = 0, mode_last = MODES - 1;
  const char *impl_name = "dispatch";
  size_t sizes[MAX_SIZES];
  size_t nsizes = 0;
  for (size_t i = 0; i < sizeof default_sizes / sizeof default_sizes[0]; i++)
    sizes[nsizes++] = default_sizes[i];

  for (int i = 1; i < argc; i++) {
    if (i + 1 >= argc) usage();
    if (strcmp(argv[i], "--data") == 0) {
      data_path = argv[++i];
    } else if (strcmp(argv[i], "--ms") == 0) {
      block_ms = atof(argv[++i]);
    } else if (strcmp(argv[i], "--rounds") == 0) {
      rounds = atoi(argv[++i]);
      if (rounds < 1 || rounds > MAX_ROUNDS) usage();
    } else if (strcmp(argv[i], "--mode") == 0) {
      const char *m = argv[++i];
      if (strcmp(m, "all") != 0) {
        int k = 0;
        while (k < MODES && strcmp(m, mode_names[k]) != 0)
          k++;
        if (k == MODES) usage();
        mode_first = mode_last = k;
      }
    } else if (strcmp(argv[i], "--impl") == 0) {
      impl_name = argv[++i];
    } else if (strcmp(argv[i], "--sizes") == 0) {
      nsizes = 0;
      for (char *tok = strtok(argv[++i], ","); tok != NULL && nsizes < MAX_SIZES;
           tok = strtok(NULL, ","))
        sizes[nsizes++] = parse_size(tok);
    } else {
      usage();
    }
  }

  if (strcmp(impl_name, "dispatch") != 0) {
    int k = 0;
    while (k < BMM__MOVE16_KINDS && strcmp(impl_name, bmm__move16_impl_name(k)) != 0)
      k++;
    if (k == BMM__MOVE16_KINDS || bmm__move16_select(k) != 0) {
      fprintf(stderr, "move16: implementation %s is not available here\n", impl_name);
      return 2;
    }
  } else {
    impl_name = bmm__move16_impl_name(bmm__move16_chosen());
  }

  size_t max_size = 0;
  for (size_t i = 0; i < nsizes; i++) {
    if (sizes[i] == 0 || sizes[i] % 16 != 0) {
      fprintf(stderr, "move16: size %zu is not a positive multiple of 16\n", sizes[i]);
      return 2;
    }
    if (sizes[i] > max_size) max_size = sizes[i];
  }
  /* Room for the disjoint layout: src, a gap of at least one page, dst. */
  size_t region = (max_size + PAGE - 1) / PAGE * PAGE;
  size_t map_size = 2 * region + 2 * PAGE;
  unsigned char *base =
      mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  for (size_t i = 0; i < map_size; i++)
    base[i] = (unsigned char)(i * 131 + 7);

  FILE *data = NULL;
  if (data_path != NULL) {
    data = fopen(data_path, "w");
    if (data == NULL) {
      perror(data_path);
      return 1;
    }
    fprintf(data, "# bmm_move16 (%s) vs memmove, median GB/s of %d rounds\n", impl_name, rounds);
  }

  printf("bmm_move16 (%s) vs memmove, aligned, median of %d rounds of ~%g ms each\n", impl_name,
         rounds, block_ms);
  printf("%-5s %10s %14s %14s %7s\n", "mode", "size", "memmove GB/s", "move16 GB/s", "ratio");

  static char result_lines[MODES * MAX_SIZES][160];
  size_t nresults = 0;
  for (int mode = mode_first; mode <= mode_last; mode++) {
    if (data != NULL)
      fprintf(data, "%s# mode %s\n# size memmove_gbps move16_gbps ratio\n",
              mode == mode_first ? "" : "\n\n", mode_names[mode]);
    for (size_t si = 0; si < nsizes; si++) {
      size_t size = sizes[si];
      size_t shift = size / 2 / 16 * 16;
      if (shift < 16) shift = 16;
      unsigned char *src, *dst;
      if (mode == MODE_COPY) {
        src = base;
        dst = base + region + PAGE;
      } else if (mode == MODE_DOWN) {
        dst = base;
        src = base + shift;
      } else {
        src = base;
        dst = base + shift;
      }
      long reps = calibrate(dst, src, size, block_ms * 1e6);
      double mm[MAX_ROUNDS], mv[MAX_ROUNDS];
      for (int r = 0; r < rounds; r++) {
        if (r % 2 == 0) {
          mm[r] = time_memmove(dst, src, size, reps);
          mv[r] = time_move16(dst, src, size, reps);
        } else {
          mv[r] = time_move16(dst, src, size, reps);
          mm[r] = time_memmove(dst, src, size, reps);
        }
      }
      double bytes = (double)size * (double)reps;
      double mm_gbps = bytes / median(mm, rounds);
      double mv_gbps = bytes / median(mv, rounds);
      double ratio = mv_gbps / mm_gbps;
      printf("%-5s %10zu %14.2f %14.2f %7.3f\n", mode_names[mode], size, mm_gbps, mv_gbps, ratio);
      fflush(stdout);
      snprintf(result_lines[nresults++], sizeof result_lines[0],
               "RESULT workload=move16 mode=%s size=%zu memmove_gbps=%.3f move16_gbps=%.3f "
               "ratio=%.3f",
               mode_names[mode], size, mm_gbps, mv_gbps, ratio);
      if (data != NULL) fprintf(data, "%zu %.3f %.3f %.4f\n", size, mm_gbps, mv_gbps, ratio);
    }
  }
  for (size_t i = 0; i < nresults; i++)
    puts(result_lines[i]);
  if (data != NULL) fclose(data);
  munmap(base, map_size);
  return 0;
}
