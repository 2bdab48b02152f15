/* growth.c: large-block behaviour of an allocator (run it under any of
 * them through LD_PRELOAD).
 *
 *   growth step [MAX_MB]    realloc one block from 4 KiB to MAX_MB (default
 *                           64) in +64 KiB steps, writing the new tail each
 *                           time (vector-style growth)
 *   growth double [MAX_MB]  the same by doubling, to MAX_MB (default 1024)
 *   growth rss [DELAY_MS]   allocate 1 GiB as 8 MiB blocks, touch them, free
 *                           them, wait DELAY_MS (default 300: BrainMM's
 *                           purge delay is 10) and make one small call;
 *                           report RSS before, at the peak and after
 *   growth cycle [ITERS]    allocate, touch and free the same 8 MiB block
 *                           ITERS times (default 200): page faults per
 *                           iteration show whether the allocator gives the
 *                           memory back and takes it again every time
 *
 * Each prints one RESULT line. The step and double modes move the block
 * whenever the allocator cannot grow it where it stands; how many bytes
 * that copies is the allocator's business, but the time shows it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define KiB ((size_t)1024)
#define MiB (KiB * 1024)

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t rss_kb(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long size = 0, resident = 0;
  if (f != NULL) {
    if (fscanf(f, "%lu %lu", &size, &resident) != 2) resident = 0;
    fclose(f);
  }
  return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE) / KiB;
}

static long minor_faults(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

/* Which library's malloc this process uses (the driver checks it). */
static const char *malloc_from(void) {
  Dl_info info;
  void *(*fn)(size_t) = malloc;
  if (dladdr((void *)fn, &info) == 0 || info.dli_fname == NULL) return "unknown";
  const char *slash = strrchr(info.dli_fname, '/');
  return slash ? slash + 1 : info.dli_fname;
}

static void die(const char *what) {
  fprintf(stderr, "growth: %s\n", what);
  exit(1);
}

/* Grow one block to `max` bytes, by +64 KiB steps or by doubling. */
static int run_growth(const char *mode, size_t max, int doubling) {
  size_t size = 4 * KiB;
  unsigned char *p = malloc(size);
  if (p == NULL) die("malloc failed");
  memset(p, 1, size);
  size_t steps = 0;
  uint64_t sum = 0;
  double t0 = now();
  while (size < max) {
    size_t next = doubling ? size * 2 : size + 64 * KiB;
    if (next > max) next = max;
    unsigned char *q = realloc(p, next);
    if (q == NULL) die("realloc failed");
    sum += q[size - 1]; /* the old contents came along */
    /* Touch the new part a page at a time, as a vector filling up would. */
    for (size_t i = size; i < next; i += 4096) q[i] = (unsigned char)i;
    p = q;
    size = next;
    steps++;
  }
  double t = now() - t0;
  free(p);
  printf("RESULT workload=growth-%s max_mb=%zu steps=%zu seconds=%.4f mops=%.4f checksum=%llu "
         "malloc_from=%s\n",
         mode, max / MiB, steps, t, (double)steps / t / 1e6, (unsigned long long)sum,
         malloc_from());
  return 0;
}

static int run_rss(long delay_ms) {
  enum { N = 128 };
  static unsigned char *b[N];
  size_t before = rss_kb();
  for (int i = 0; i < N; i++) {
    b[i] = malloc(8 * MiB);
    if (b[i] == NULL) die("malloc failed");
    for (size_t k = 0; k < 8 * MiB; k += 4096) b[i][k] = 1;
  }
  size_t peak = rss_kb();
  for (int i = 0; i < N; i++) free(b[i]);
  size_t at_free = rss_kb();
  usleep((useconds_t)delay_ms * 1000);
  /* One small call: an allocator without a background thread does its
   * delayed work on the next call. (volatile: a compiler may delete a
   * malloc/free pair whose block is never used.) */
  void *volatile probe = malloc(100 * KiB);
  free(probe);
  size_t later = rss_kb();
  printf("RESULT workload=growth-rss rss_before_kb=%zu rss_peak_kb=%zu rss_at_free_kb=%zu "
         "rss_after_delay_kb=%zu delay_ms=%ld rss_mb=%.1f checksum=na malloc_from=%s\n",
         before, peak, at_free, later, delay_ms,
         later > before ? (double)(later - before) * 1024 / 1e6 : 0.0, malloc_from());
  return 0;
}

static int run_cycle(long iters) {
  long f0 = minor_faults();
  double t0 = now();
  for (long i = 0; i < iters; i++) {
    unsigned char *p = malloc(8 * MiB);
    if (p == NULL) die("malloc failed");
    for (size_t k = 0; k < 8 * MiB; k += 4096) p[k] = (unsigned char)i;
    free(p);
  }
  double t = now() - t0;
  long faults = minor_faults() - f0;
  printf("RESULT workload=growth-cycle iters=%ld seconds=%.4f mops=%.4f faults_per_iter=%.1f "
         "checksum=na malloc_from=%s\n",
         iters, t, (double)iters / t / 1e6, (double)faults / (double)iters, malloc_from());
  return 0;
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "double";
  long arg = argc > 2 ? strtol(argv[2], NULL, 10) : 0;
  if (strcmp(mode, "step") == 0) return run_growth("step", (size_t)(arg ? arg : 64) * MiB, 0);
  if (strcmp(mode, "double") == 0)
    return run_growth("double", (size_t)(arg ? arg : 1024) * MiB, 1);
  if (strcmp(mode, "rss") == 0) return run_rss(arg ? arg : 300);
  if (strcmp(mode, "cycle") == 0) return run_cycle(arg ? arg : 200);
  fprintf(stderr, "usage: growth step|double|rss|cycle [N]\n");
  return 2;
}
