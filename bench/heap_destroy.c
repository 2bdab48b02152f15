/* heap_destroy.c: what freeing a whole first-class heap at once costs
 * (API section 8, bmm_heap_destroy), against the floor of giving the same
 * amount of touched memory back to the kernel, and what allocating from a
 * first-class heap costs against the default heap.
 *
 * Each repeat measures:
 *   destroy  bmm_heap_new, BLOCKS bmm_heap_malloc(SIZE) each written end to
 *            end (not timed), then bmm_heap_destroy (timed)
 *   munmap   mmap of BLOCKS * SIZE bytes, every page written (not timed),
 *            then munmap (timed)
 *   alloc    BLOCKS bmm_heap_malloc(SIZE) into a fresh heap, and BLOCKS
 *            bmm_malloc(SIZE) from the default heap (timed each, one byte
 *            written per block in both), then the default heap's blocks
 *            freed with bmm_free (timed too; the heap is destroyed untimed)
 *
 * Usage: heap_destroy [BLOCKS] [SIZE] [REPEATS]   (defaults 1000000 64 5;
 * k/M/G suffixes: powers of 1000 for BLOCKS and REPEATS, 1024 for SIZE)
 *
 * Output: one line per result, medians over the repeats:
 *
 *   RESULT workload=heap_destroy blocks=N size=S repeats=R destroy_ms=X
 *          munmap_ms=Y rss_full_kb=A rss_destroyed_kb=B
 *   RESULT workload=heap_destroy ratio_destroy_munmap=Z
 *   RESULT workload=heap_alloc blocks=N size=S repeats=R heap_malloc_ns=X
 *          default_malloc_ns=Y default_free_ns=F ratio_heap_default=Z
 *
 * rss_full_kb and rss_destroyed_kb are the resident set just before and
 * just after bmm_heap_destroy (destroy returns the heap's memory at once,
 * so the second is close to what the process held before the heap).
 * It links the static library: it calls the bmm_ API directly.
 */
#include "bench_common.h" /* first: it defines _GNU_SOURCE */

#include <brainmm.h>

#define MAX_REPEATS 1000

/* "1000000", "1M", "64", "4K"; unit 1000 or 1024. */
static uint64_t parse_arg(int argc, char **argv, int i, uint64_t def, const char *what,
                          double unit) {
  if (argc <= i || bc_is_default(argv[i])) return def;
  return bc_parse_num(argv[i], what, unit);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, size_t n) {
  qsort(v, n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Writes every byte of each block, as a program filling its objects would. */
static double time_destroy(size_t blocks, size_t size, long *rss_full, long *rss_after) {
  bmm_heap_t *h = bmm_heap_new();
  if (h == NULL) bc_die("bmm_heap_new failed");
  for (size_t i = 0; i < blocks; i++) {
    unsigned char *p = bmm_heap_malloc(h, size);
    if (p == NULL) bc_oom(size);
    memset(p, (int)(i & 0xff), size);
    bc_sink = p;
  }
  *rss_full = bc_rss_kb();
  double t0 = bc_now();
  bmm_heap_destroy(h);
  double t1 = bc_now();
  *rss_after = bc_rss_kb();
  return t1 - t0;
}

static double time_munmap(size_t bytes) {
  size_t ps = (size_t)sysconf(_SC_PAGESIZE);
  unsigned char *m = bc_map(bytes);
  for (size_t off = 0; off < bytes; off += ps)
    m[off] = (unsigned char)off | 1;
  double t0 = bc_now();
  bc_unmap(m, bytes);
  return bc_now() - t0;
}

/* Seconds for `blocks` allocations in a fresh heap (the heap is destroyed
 * untimed). */
static double time_heap_malloc(size_t blocks, size_t size) {
  bmm_heap_t *h = bmm_heap_new();
  if (h == NULL) bc_die("bmm_heap_new failed");
  double t0 = bc_now();
  for (size_t i = 0; i < blocks; i++) {
    unsigned char *p = bmm_heap_malloc(h, size);
    if (p == NULL) bc_oom(size);
    p[0] = (unsigned char)i;
    bc_sink = p;
  }
  double t1 = bc_now();
  bmm_heap_destroy(h);
  return t1 - t0;
}

/* Seconds for `blocks` default-heap allocations, and in *free_secs for
 * freeing them again. */
static double time_default_malloc(size_t blocks, size_t size, void **ptrs, double *free_secs) {
  double t0 = bc_now();
  for (size_t i = 0; i < blocks; i++) {
    unsigned char *p = bmm_malloc(size);
    if (p == NULL) bc_oom(size);
    p[0] = (unsigned char)i;
    ptrs[i] = p;
  }
  double t1 = bc_now();
  for (size_t i = 0; i < blocks; i++)
    bmm_free(ptrs[i]);
  *free_secs = bc_now() - t1;
  return t1 - t0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, bc_stdout_buf, _IOLBF, sizeof bc_stdout_buf);
  bc_prog = "heap_destroy";
  if (argc > 1 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
    fprintf(stderr, "usage: heap_destroy [BLOCKS] [SIZE] [REPEATS]   (defaults 1000000 64 5; "
                    "'-' = default)\n");
    return 0;
  }
  if (argc > 4) bc_die("usage: heap_destroy [BLOCKS] [SIZE] [REPEATS]");
  size_t blocks = (size_t)parse_arg(argc, argv, 1, 1000000, "block count", 1000);
  size_t size = (size_t)parse_arg(argc, argv, 2, 64, "size", 1024);
  size_t repeats = (size_t)parse_arg(argc, argv, 3, 5, "repeat count", 1000);
  if (repeats > MAX_REPEATS) bc_die("at most %d repeats", MAX_REPEATS);
  if (size > ((size_t)1 << 40) / blocks) bc_die("BLOCKS * SIZE is too large");

  static double destroy_s[MAX_REPEATS], munmap_s[MAX_REPEATS], heap_s[MAX_REPEATS],
      dflt_s[MAX_REPEATS], free_s[MAX_REPEATS], rss_full[MAX_REPEATS], rss_after[MAX_REPEATS];
  void **ptrs = bc_map(blocks * sizeof *ptrs);
  for (size_t r = 0; r < repeats; r++) {
    long full = 0, after = 0;
    destroy_s[r] = time_destroy(blocks, size, &full, &after);
    rss_full[r] = (double)full;
    rss_after[r] = (double)after;
    munmap_s[r] = time_munmap(blocks * size);
    /* Alternate which allocator goes first, so neither always gets the
     * warmer caches. */
    if (r % 2 == 0) {
      heap_s[r] = time_heap_malloc(blocks, size);
      dflt_s[r] = time_default_malloc(blocks, size, ptrs, &free_s[r]);
    } else {
      dflt_s[r] = time_default_malloc(blocks, size, ptrs, &free_s[r]);
      heap_s[r] = time_heap_malloc(blocks, size);
    }
  }
  bc_unmap(ptrs, blocks * sizeof *ptrs);

  double destroy = median(destroy_s, repeats), unmap = median(munmap_s, repeats);
  double heap = median(heap_s, repeats), dflt = median(dflt_s, repeats);
  double frees = median(free_s, repeats);
  printf("RESULT workload=heap_destroy blocks=%zu size=%zu repeats=%zu destroy_ms=%.3f "
         "munmap_ms=%.3f rss_full_kb=%.0f rss_destroyed_kb=%.0f\n",
         blocks, size, repeats, destroy * 1e3, unmap * 1e3, median(rss_full, repeats),
         median(rss_after, repeats));
  printf("RESULT workload=heap_destroy ratio_destroy_munmap=%.3f\n",
         unmap > 0 ? destroy / unmap : 0.0);
  printf("RESULT workload=heap_alloc blocks=%zu size=%zu repeats=%zu heap_malloc_ns=%.2f "
         "default_malloc_ns=%.2f default_free_ns=%.2f ratio_heap_default=%.3f\n",
         blocks, size, repeats, heap * 1e9 / (double)blocks, dflt * 1e9 / (double)blocks,
         frees * 1e9 / (double)blocks, dflt > 0 ? heap / dflt : 0.0);
  fflush(stdout);
  return 0;
}
