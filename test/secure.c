/* secure.c: secure mode (option `secure`, API section 10). Secure mode is
 * fixed when the process initialises, so main re-executes itself through
 * /proc/self/exe with BMM_SECURE=1 in the environment (argv kept), and that
 * process runs the tests. It checks:
 *   - bmm_option_get("secure") reports the level in effect, and
 *     bmm_option_set("secure", 0) after allocations fails with EBUSY and
 *     leaves it on;
 *   - misuse, each case in a child that must print exactly one line
 *     "brainmm: error: CALL(...): ..." naming the call and what was wrong,
 *     then die of SIGABRT: a one-byte overflow past the usable size of
 *     small, medium and aligned blocks ("overflow", "size class"); double
 *     frees of small, medium and large blocks, by one thread or by two
 *     (either order); writes to a freed block, to its mark word ("use after
 *     free") or to its free-list link ("corrupted"), found when the block
 *     is handed out again; free of an interior pointer ("middle"), of a
 *     stack pointer and of an mmap'd page ("not allocated"); free_sized
 *     with a wrong size ("size does not match");
 *   - sized frees with the right size (malloc, calloc, realloc, aligned)
 *     are not reported;
 *   - one byte past a large block faults (its guard page); cached spans
 *     keep theirs; a huge block's mapping ends in a guard page, also after
 *     realloc and when reused from the huge-block cache, and so does a
 *     block aligned beyond a region;
 *   - allocations are 16-aligned (or as asked), usable_size >= request,
 *     realloc keeps contents and alignment, calloc zeroes; a randomized
 *     churn of 100k operations with pattern checks, then 4 threads
 *     exchanging blocks (remote frees), each followed by bmm_heap_check();
 *   - fresh blocks of a size class are handed out in a random order;
 *   - abort_on_error=0: overflow, double free, write after free and a
 *     wrong free_sized are each reported in one line and the program goes
 *     on; the heap stays sound and the double-freed block is not handed out
 *     twice.
 * Then it runs itself again (fork + exec, exit status checked):
 *   --level2       BMM_SECURE=2: a write into the middle of a freed block is
 *                  found when the block is handed out again; a churn shows
 *                  no false reports;
 *   --zero         BMM_SECURE=1 BMM_ZERO_ON_FREE=1: a freed block reads as
 *                  zeros (but for its first 16 bytes: link and mark);
 *   --level2-zero  both: zero fill, checked on reuse, no false reports.
 *   --leak-sampled with leak sampling too: a free list cut at a corrupted
 *                  link (abort_on_error=0) is walked no further than its end.
 */
#define _GNU_SOURCE
#include <brainmm.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

#define KiB ((size_t)1024)
#define MiB (KiB * 1024)

extern char **environ;

/* ---- Running a case in a child ------------------------------------------ */

/* fn(arg) in a child must print one "brainmm: error: " line naming `call`
 * and containing `want` (or `want_alt`) and `also` (unless NULL), then die
 * of SIGABRT. */
static void expect_abort(const char *name, void (*fn)(void *), void *arg, const char *call,
                         const char *want, const char *want_alt, const char *also) {
  char buf[2048];
  int lines;
  int status = check_child(fn, arg, buf, sizeof buf, &lines);
  char called[32];
  snprintf(called, sizeof called, "%s(", call);
  int aborted = status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
  int prefix = strncmp(buf, "brainmm: error: ", 16) == 0;
  int named = strstr(buf, called) != NULL && strstr(buf, "0x") != NULL;
  int what = strstr(buf, want) != NULL || (want_alt != NULL && strstr(buf, want_alt) != NULL);
  int extra = also == NULL || strstr(buf, also) != NULL;
  if (!aborted || lines != 1 || !prefix || !named || !what || !extra)
    check_print(2, "secure: %s: status %#x, %d lines: %s\n", name, (unsigned)status, lines, buf);
  CHECK(aborted);
  CHECK(lines == 1);
  CHECK(prefix && named);
  CHECK(what && extra);
}

/* fn(arg) in a child must die of signal `sig` (any output). A sanitizer
 * catches SIGSEGV itself and exits with its report instead: that counts. */
static void expect_signal(const char *name, void (*fn)(void *), void *arg, int sig) {
  char buf[2048];
  int lines;
  int status = check_child(fn, arg, buf, sizeof buf, &lines);
  int ok = status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == sig;
  if (sig == SIGSEGV && status != -1 && WIFEXITED(status) && WEXITSTATUS(status) != 0 &&
      strstr(buf, "Sanitizer: SEGV") != NULL)
    ok = 1;
  if (!ok)
    check_print(2, "secure: %s: status %#x (wanted signal %d), %d lines: %s\n", name,
                (unsigned)status, sig, lines, buf);
  CHECK(ok);
}

/* fn(NULL) in a child must be stopped by AddressSanitizer's report of a
 * use of poisoned (free) memory. */
static void expect_asan(const char *name, void (*fn)(void *)) {
  char buf[4096];
  int lines;
  int status = check_child(fn, NULL, buf, sizeof buf, &lines);
  int ok = status != -1 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0) &&
           strstr(buf, "use-after-poison") != NULL;
  if (!ok) check_print(2, "secure: %s: status %#x: %.300s\n", name, (unsigned)status, buf);
  CHECK(ok);
}

/* fn(arg) in a child must return (exit 0) and print nothing. */
static void expect_clean(const char *name, void (*fn)(void *), void *arg) {
  char buf[2048];
  int lines;
  int status = check_child(fn, arg, buf, sizeof buf, &lines);
  int ok = status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0 && buf[0] == 0;
  if (!ok)
    check_print(2, "secure: %s: status %#x, %d lines (wanted none): %s\n", name, (unsigned)status,
                lines, buf);
  CHECK(ok);
}

/* Hides a pointer's origin from the compiler (free of a non-heap object). */
static void *launder(void *p) {
  void *volatile v = p;
  return v;
}

/* ---- Misuse cases (run in children) --------------------------------------- */

/* 1. One byte past the usable size of a small or medium block: the byte
 * is read and flipped, so the canary surely changes. */
static void overflow_block(void *arg) {
  size_t size = (uintptr_t)arg;
  volatile unsigned char *p = bmm_malloc(size);
  size_t usable = bmm_usable_size((void *)p);
  p[usable] ^= 0xff;
  bmm_free((void *)p);
}

/* 1b. One bit of it: every bit counts. */
static void overflow_one_bit(void *arg) {
  (void)arg;
  volatile unsigned char *p = bmm_malloc(40);
  size_t usable = bmm_usable_size((void *)p);
  p[usable] ^= 1;
  bmm_free((void *)p);
}

static void overflow_aligned(void *arg) {
  (void)arg;
  volatile unsigned char *p = bmm_malloc_aligned(100, 64);
  size_t usable = bmm_usable_size((void *)p);
  p[usable] ^= 0xff;
  bmm_free((void *)p);
}

/* 2. */
static void double_free_same_thread(void *arg) {
  void *p = bmm_malloc((uintptr_t)arg);
  bmm_free(p);
  bmm_free(p);
}

/* 3. */
static void *free_on_thread(void *p) {
  bmm_free(p);
  return NULL;
}

static void double_free_thread_first(void *arg) {
  void *p = bmm_malloc((uintptr_t)arg);
  pthread_t t;
  if (pthread_create(&t, NULL, free_on_thread, p) != 0) _exit(3);
  pthread_join(t, NULL);
  bmm_free(p);
}

static void double_free_thread_second(void *arg) {
  void *p = bmm_malloc((uintptr_t)arg);
  bmm_free(p);
  pthread_t t;
  if (pthread_create(&t, NULL, free_on_thread, p) != 0) _exit(3);
  pthread_join(t, NULL);
}

/* 4. double_free_same_thread with a large size. */

/* 5. Write after free, then allocate the same size until the block comes
 * back. The writes to freed memory are the point of the test. */
#define REUSE_COUNT 10000
static void *reuse_blocks[REUSE_COUNT];

static void write_after_free_mark(void *arg) {
  (void)arg;
  volatile unsigned char *p = bmm_malloc(64);
  bmm_free((void *)p);
  for (int i = 8; i < 16; i++)
    p[i] = 0x5a;
  for (int i = 0; i < REUSE_COUNT; i++)
    reuse_blocks[i] = bmm_malloc(64);
}

/* The mark overwritten after the free (free(o); o->field = x; free(o)):
 * the freed canary still tells. */
static void double_free_after_write(void *arg) {
  size_t size = (uintptr_t)arg;
  volatile uint64_t *p = bmm_malloc(size);
  bmm_free((void *)p);
  p[1] = 0;
  bmm_free((void *)p);
}

/* A block start its page never handed out (past the carved ones). */
static void free_never_allocated(void *arg) {
  (void)arg;
  char *p = bmm_malloc(100);
  size_t stride = bmm_usable_size(p) + 8; /* the block: usable size and canary */
  bmm_free((char *)((uintptr_t)p & ~(uintptr_t)0xffff) + 400 * stride);
}

static void write_after_free_link(void *arg) {
  (void)arg;
  volatile unsigned char *p = bmm_malloc(64);
  bmm_free((void *)p);
  for (int i = 0; i < 8; i++)
    p[i] = 0x41;
  for (int i = 0; i < REUSE_COUNT; i++)
    reuse_blocks[i] = bmm_malloc(64);
}

/* 6. */
static void free_interior(void *arg) {
  size_t size = (uintptr_t)arg;
  char *p = bmm_malloc(size);
  bmm_free(p + 16);
}

/* 7. */
static void free_stack(void *arg) {
  (void)arg;
  char on_stack[64];
  memset(on_stack, 1, sizeof on_stack);
  bmm_free(launder(on_stack));
}

static void free_mmap(void *arg) {
  (void)arg;
  void *m = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) _exit(3);
  bmm_free(m);
}

/* 8. */
static void free_sized_wrong(void *arg) {
  (void)arg;
  void *p = bmm_malloc(24);
  bmm_free_sized(p, 200);
}

static const size_t sized_sizes[] = {0,    1,    8,    16,    24,    100,   250,    256,
                                     1000, 1024, 5000, 40000, 65520, 65536, 100000, 1 << 20};
#define NSIZED (sizeof sized_sizes / sizeof sized_sizes[0])

static void free_sized_right(void *arg) {
  (void)arg;
  for (size_t i = 0; i < NSIZED; i++)
    bmm_free_sized(bmm_malloc(sized_sizes[i]), sized_sizes[i]);
  for (size_t n = 1; n <= 64; n *= 4)
    for (size_t m = 1; m <= 4096; m *= 8)
      bmm_free_sized(bmm_calloc(n, m), n * m);
}

static void free_aligned_sized_right(void *arg) {
  (void)arg;
  for (size_t align = 32; align <= 4096; align *= 2)
    for (size_t i = 0; i < NSIZED; i++) {
      bmm_free_aligned_sized(bmm_malloc_aligned(sized_sizes[i], align), align, sized_sizes[i]);
      bmm_free_aligned_sized(bmm_aligned_alloc(align, sized_sizes[i]), align, sized_sizes[i]);
    }
}

/* C23: the size of a block from realloc is the size realloc was given,
 * whether or not the block moved. */
static void free_sized_after_realloc(void *arg) {
  (void)arg;
  static const size_t from[] = {100, 100, 1000, 1000, 5000, 40000, 200000};
  static const size_t to[] = {110, 60, 900, 600, 3000, 30000, 150000};
  for (size_t i = 0; i < sizeof from / sizeof from[0]; i++) {
    void *p = bmm_realloc(bmm_malloc(from[i]), to[i]);
    bmm_free_sized(p, to[i]);
  }
}

/* bmm_expand may shrink a block in place below half of it; a sized free
 * then names the size it was given. An overflow past the usable size is
 * still caught after it (overflow_after_expand). */
static void free_sized_after_expand(void *arg) {
  (void)arg;
  static const size_t from[] = {1000, 1000, 200, 5000, 40000, 24};
  static const size_t to[] = {10, 100, 50, 1000, 8, 1};
  for (size_t i = 0; i < sizeof from / sizeof from[0]; i++) {
    void *p = bmm_malloc(from[i]);
    CHECK(bmm_expand(p, to[i]) == p);
    bmm_free_sized(p, to[i]);
  }
}

static void free_sized_small_wrong(void *arg) {
  (void)arg;
  bmm_free_sized(bmm_malloc(1000), 10);
}

static void overflow_after_expand(void *arg) {
  (void)arg;
  unsigned char *p = bmm_malloc(1000);
  if (bmm_expand(p, 10) != p) _exit(3);
  size_t usable = bmm_usable_size(p);
  p[usable] ^= 1; /* one bit of the canary: any change is caught */
  bmm_free_sized(p, 10);
}

/* 9. One byte past a large block: its guard page. */
static void overflow_large(void *arg) {
  size_t size = (uintptr_t)arg;
  volatile unsigned char *p = bmm_malloc(size);
  size_t usable = bmm_usable_size((void *)p);
  p[usable - 1] = 1;
  p[usable] = 1;
}

/* 9b. The same after realloc grew the block where it stands (a fresh
 * arena has free pages after it) and then shrank it: the guard page
 * moved to each new end, and the old ones are ordinary pages again. */
static void overflow_large_resized(void *arg) {
  (void)arg;
  unsigned char *p = bmm_malloc(200000);
  unsigned char *q = bmm_realloc(p, 600000);
  CHECK(q != NULL);
  memset(q, 7, 600000); /* the old guard page is inside now */
  q = bmm_realloc(q, 300000);
  CHECK(q != NULL && q[299999] == 7);
  volatile unsigned char *v = q;
  size_t usable = bmm_usable_size(q);
  v[usable - 1] = 1;
  v[usable] = 1;
}

/* 9c. A freed span waits in a cache with its guard page up. A block
 * that takes it whole gets its usable size, and the guard ends that. */
static void overflow_large_cached(void *arg) {
  (void)arg;
  unsigned char *p = bmm_malloc(MiB);
  bmm_free(p);
  volatile unsigned char *q = bmm_malloc(600000);
  CHECK(q == p && bmm_usable_size((void *)q) >= 600000);
  size_t usable = bmm_usable_size((void *)q);
  q[usable - 1] = 1;
  q[usable] = 1;
}

/* 9d. A much smaller block cuts the front off a cached span and puts a
 * new guard after it; the rest keeps the old guard and serves the next
 * block (arg 1: overflow that one instead). */
static void overflow_large_cut(void *arg) {
  unsigned char *p = bmm_malloc(8 * MiB);
  bmm_free(p);
  volatile unsigned char *q = bmm_malloc(200000);
  size_t usable = bmm_usable_size((void *)q);
  CHECK(q == p && usable >= 200000 && usable < 300000);
  if ((uintptr_t)arg == 1) {
    volatile unsigned char *r = bmm_malloc(6 * MiB);
    CHECK(r == q + usable + 4096);
    q = r;
    usable = bmm_usable_size((void *)q);
    CHECK(usable >= 6 * MiB);
  }
  q[usable - 1] = 1;
  q[usable] = 1;
}

/* 9e. Large blocks of every size through the cache, each written whole
 * and checked before it is freed; then the cache is emptied. */
static void large_cache_churn(void *arg) {
  (void)arg;
  enum { LIVE = 12 };
  unsigned char *live[LIVE] = {0}, tag[LIVE] = {0};
  size_t size[LIVE] = {0};
  uint64_t rng = 99;
  for (int i = 0; i < 3000; i++) {
    int s = (int)(check_rand(&rng) % LIVE);
    if (live[s] != NULL) {
      int ok = 1;
      for (size_t k = 0; k < size[s]; k += 4093)
        ok &= live[s][k] == tag[s];
      CHECK(ok && live[s][size[s] - 1] == tag[s]);
      bmm_free(live[s]);
    }
    size[s] = 64 * KiB + 1 + check_rand(&rng) % (4 * MiB);
    tag[s] = (unsigned char)(i + 1);
    live[s] = bmm_malloc(size[s]);
    CHECK(live[s] != NULL && bmm_usable_size(live[s]) >= size[s]);
    memset(live[s], tag[s], bmm_usable_size(live[s])); /* all of it is ours */
    if (i % 500 == 0) CHECK(bmm_heap_check());
  }
  for (int s = 0; s < LIVE; s++)
    bmm_free(live[s]);
  bmm_collect(true);
  CHECK(bmm_heap_check());
}

/* 9f. Memory held by the span cache serves a block that needs it: with
 * the address space capped, the arena full and two neighbouring 8 MiB
 * blocks freed (each cached on its own), 12 MiB still comes. */
static void large_room_in_cache(void *arg) {
  (void)arg;
  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long vm_pages = 0;
  CHECK(f != NULL && fscanf(f, "%lu", &vm_pages) == 1);
  if (f != NULL) fclose(f);
  struct rlimit lim;
  lim.rlim_cur = lim.rlim_max = vm_pages * (unsigned long)sysconf(_SC_PAGESIZE) + 64 * MiB;
  CHECK(setrlimit(RLIMIT_AS, &lim) == 0);
  enum { MAX = 64 };
  unsigned char *b[MAX];
  int n = 0;
  while (n < MAX && (b[n] = bmm_malloc(8 * MiB)) != NULL) n++;
  CHECK(n >= 3 && n < MAX); /* the arena filled up */
  int k = -1;
  for (int i = 0; i + 1 < n && k < 0; i++)
    if (b[i + 1] > b[i] && (size_t)(b[i + 1] - b[i]) <= 8 * MiB + 64 * KiB) k = i;
  if (!CHECK(k >= 0)) return;
  bmm_free(b[k]);
  bmm_free(b[k + 1]);
  void *p = bmm_malloc(12 * MiB);
  CHECK(p != NULL);
}

/* 9g. A freed large block is reported, not handed to realloc. */
static void realloc_freed_large(void *arg) {
  (void)arg;
  void *p = bmm_malloc(300000);
  bmm_free(p);
  bmm_realloc(launder(p), 400000);
}

/* 10 (secure=2). A write into the middle of a freed block. */
static void write_after_free_middle(void *arg) {
  (void)arg;
  volatile unsigned char *p = bmm_malloc(256);
  bmm_free((void *)p);
  p[100] = 0x77;
  for (int i = 0; i < REUSE_COUNT; i++)
    reuse_blocks[i] = bmm_malloc(256);
}

static void run_misuse_cases(void) {
  static const size_t small[] = {1, 24, 100, 1000, 5000, 40000};
  char name[96];
  for (size_t i = 0; i < sizeof small / sizeof small[0]; i++) {
    snprintf(name, sizeof name, "overflow of a %zu-byte block", small[i]);
    expect_abort(name, overflow_block, (void *)(uintptr_t)small[i], "free", "overflow", NULL,
                 "size class");
  }
  expect_abort("overflow that flips one bit", overflow_one_bit, NULL, "free", "overflow", NULL,
               NULL);
  expect_abort("overflow of an aligned block", overflow_aligned, NULL, "free", "overflow", NULL,
               "size class");
  static const size_t dbl[] = {24, 40000};
  for (size_t i = 0; i < 2; i++) {
    void *arg = (void *)(uintptr_t)dbl[i];
    snprintf(name, sizeof name, "double free of a %zu-byte block", dbl[i]);
    expect_abort(name, double_free_same_thread, arg, "free", "double free", NULL, NULL);
    snprintf(name, sizeof name, "double free of %zu bytes, first on a thread", dbl[i]);
    expect_abort(name, double_free_thread_first, arg, "free", "double free", NULL, NULL);
    snprintf(name, sizeof name, "double free of %zu bytes, second on a thread", dbl[i]);
    expect_abort(name, double_free_thread_second, arg, "free", "double free", NULL, NULL);
  }
  expect_abort("double free of a 1 MiB block", double_free_same_thread, (void *)(uintptr_t)MiB,
               "free", "double free", NULL, NULL);
  expect_abort("double free of a 100000-byte block", double_free_same_thread,
               (void *)(uintptr_t)100000, "free", "double free", NULL, NULL);
  expect_abort("double free after a write to the freed block (64 B)", double_free_after_write,
               (void *)(uintptr_t)64, "free", "double free", NULL, NULL);
  expect_abort("double free after a write to the freed block (5000 B)", double_free_after_write,
               (void *)(uintptr_t)5000, "free", "double free", NULL, NULL);
  expect_abort("free of a block never allocated", free_never_allocated, NULL, "free",
               "never allocated", NULL, NULL);
  expect_abort("write after free (mark word)", write_after_free_mark, NULL, "malloc",
               "use after free", "written", NULL);
  expect_abort("write after free (link)", write_after_free_link, NULL, "malloc", "corrupted",
               "written", NULL);
  expect_abort("free of an interior pointer (small)", free_interior, (void *)(uintptr_t)100, "free",
               "middle", NULL, NULL);
  expect_abort("free of an interior pointer (medium)", free_interior, (void *)(uintptr_t)20000,
               "free", "middle", NULL, NULL);
  expect_abort("free of a stack pointer", free_stack, NULL, "free", "not allocated", NULL, NULL);
  expect_abort("free of an mmap'd page", free_mmap, NULL, "free", "not allocated", NULL, NULL);
  expect_abort("free_sized with a wrong size", free_sized_wrong, NULL, "free_sized",
               "size does not match", NULL, NULL);
  expect_clean("free_sized with the right sizes", free_sized_right, NULL);
  expect_clean("free_aligned_sized with the right sizes", free_aligned_sized_right, NULL);
  expect_clean("free_sized with the size given to realloc", free_sized_after_realloc, NULL);
  expect_clean("free_sized with the size given to bmm_expand", free_sized_after_expand, NULL);
  expect_abort("free_sized with a size of another class", free_sized_small_wrong, NULL,
               "free_sized", "size does not match", NULL, NULL);
  expect_abort("overflow after bmm_expand shrank the block", overflow_after_expand, NULL,
               "free_sized", "heap buffer overflow", NULL, NULL);
  expect_signal("one byte past a 100000-byte block", overflow_large, (void *)(uintptr_t)100000,
                SIGSEGV);
  expect_signal("one byte past a 1 MiB block", overflow_large, (void *)(uintptr_t)MiB, SIGSEGV);
  expect_signal("one byte past a large block grown and shrunk in place", overflow_large_resized,
                NULL, SIGSEGV);
  expect_signal("one byte past a block that took a cached span whole", overflow_large_cached,
                NULL, SIGSEGV);
  expect_signal("one byte past a block cut from a cached span", overflow_large_cut, NULL,
                SIGSEGV);
  expect_signal("one byte past the rest of a cut cached span", overflow_large_cut,
                (void *)(uintptr_t)1, SIGSEGV);
  expect_clean("large blocks through the span cache", large_cache_churn, NULL);
  expect_clean("room in the span cache serves a bigger block", large_room_in_cache, NULL);
  expect_abort("realloc of a freed large block", realloc_freed_large, NULL, "realloc", "free",
               NULL, NULL);
}

/* ---- Guards after huge blocks ---------------------------------------------- */

/* The address is in a mapping of this process without any access (a
 * guard), rather than in another mapping or in none (where the kernel may
 * put anything later). */
static int is_guard(const void *addr) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (f == NULL) return 0;
  char line[512];
  int found = 0;
  while (fgets(line, sizeof line, f) != NULL) {
    unsigned long lo, hi;
    char perms[8];
    if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3) continue;
    if ((uintptr_t)addr >= lo && (uintptr_t)addr < hi) {
      found = strncmp(perms, "---", 3) == 0;
      break;
    }
  }
  fclose(f);
  return found;
}

/* Blocks above 16 MiB are mappings of their own: each ends in a guard
 * page, also after realloc grew or shrank it (in place or moved) and when
 * the mapping is reused from the huge-block cache. */
static void check_huge_guards(void) {
  unsigned char *p = bmm_malloc(20 * MiB);
  CHECK(p != NULL && is_guard(p + bmm_usable_size(p)));
  CHECK(!is_guard(p + bmm_usable_size(p) - 1));
  memset(p, 0x5a, bmm_usable_size(p));
  p = bmm_realloc(p, 40 * MiB);
  CHECK(p != NULL && p[20 * MiB - 1] == 0x5a && is_guard(p + bmm_usable_size(p)));
  memset(p, 0x6b, bmm_usable_size(p));
  p = bmm_realloc(p, 17 * MiB + 5);
  CHECK(p != NULL && p[17 * MiB] == 0x6b && is_guard(p + bmm_usable_size(p)));
  CHECK(bmm_usable_size(p) >= 17 * MiB + 5 && bmm_usable_size(p) < 17 * MiB + 8192);
  memset(p, 0x7c, bmm_usable_size(p));
  bmm_free(p);
  unsigned char *q = bmm_malloc(17 * MiB - 5000); /* the cached mapping, as it is */
  CHECK(q != NULL && is_guard(q + bmm_usable_size(q)));
  memset(q, 1, bmm_usable_size(q));
  bmm_free(q);
  /* A block aligned beyond a region (256 MiB) is an exact mapping of its
   * own, with a guard page too. */
  unsigned char *r = bmm_malloc_aligned(MiB + 5, 512 * MiB);
  CHECK(r != NULL && ((uintptr_t)r & (512 * MiB - 1)) == 0);
  if (r != NULL) {
    CHECK(bmm_usable_size(r) >= MiB + 5 && is_guard(r + bmm_usable_size(r)));
    memset(r, 1, bmm_usable_size(r));
    bmm_free(r);
  }
  CHECK(bmm_heap_check());
}

/* A small page's last 4 KiB is a guard. A released one-unit page keeps
 * it up for the next one-unit page (which guards the same place), but a
 * unit that becomes large spans is whole again: every byte of those
 * blocks can be written. */
#define UNIT (64 * KiB)
/* Distinct small pages of blocks[0..n) (allocated in a row), in *pages,
 * and how many of them end in a guard. */
static size_t guarded_pages(unsigned char *const *blocks, int n, size_t *pages) {
  size_t guarded = 0;
  *pages = 0;
  for (int i = 0; i < n; i++) {
    uintptr_t start = (uintptr_t)blocks[i] & ~(uintptr_t)(UNIT - 1);
    if (i > 0 && start == ((uintptr_t)blocks[i - 1] & ~(uintptr_t)(UNIT - 1))) continue;
    (*pages)++;
    guarded += is_guard((void *)(start + UNIT - 4 * KiB));
  }
  return guarded;
}

static void check_page_guards(void) {
  enum { N = 2000 }; /* 880-byte blocks (the 896 class with the canary): 27 pages */
  static unsigned char *small[N];
  for (int i = 0; i < N; i++) small[i] = bmm_malloc(880);
  size_t pages, guarded = guarded_pages(small, N, &pages);
  CHECK(pages >= 20 && guarded == pages);
  for (int i = 0; i < N; i++) bmm_free(small[i]);
  bmm_collect(true); /* the empty pages go back to the arena, guards up */
  /* Large blocks carved from fresh units (perhaps those), written whole. */
  enum { L = 24 };
  static unsigned char *large[L];
  for (int i = 0; i < L; i++) {
    large[i] = bmm_malloc(200 * KiB);
    if (CHECK(large[i] != NULL)) memset(large[i], 0x3c, bmm_usable_size(large[i]));
  }
  /* Small pages again: each has its guard. */
  for (int i = 0; i < N; i++) small[i] = bmm_malloc(700);
  guarded = guarded_pages(small, N, &pages);
  CHECK(pages >= 15 && guarded == pages);
  for (int i = 0; i < N; i++) bmm_free(small[i]);
  for (int i = 0; i < L; i++) bmm_free(large[i]);
  CHECK(bmm_heap_check());
}

/* ---- abort_on_error=0 ------------------------------------------------------ */

static int cmp_uintptr(const void *a, const void *b) {
  uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
  return x < y ? -1 : x > y;
}

/* True if the n pointers are all different (sorts them). */
static int all_distinct(uintptr_t *v, size_t n) {
  qsort(v, n, sizeof v[0], cmp_uintptr);
  for (size_t i = 1; i < n; i++)
    if (v[i] == v[i - 1]) return 0;
  return 1;
}

#define MANY 4000
static uintptr_t many[MANY];

/* Runs in a child; its own check failures make it exit 1. Each misuse
 * prints one line (checked by the parent) and the program goes on. */
static void continue_after_errors(void *arg) {
  (void)arg;
  unsigned long failed_before = check_failed_count();
  CHECK(bmm_option_set("abort_on_error", 0) == 0);
  unsigned char *keep[64];
  for (int i = 0; i < 64; i++) {
    keep[i] = bmm_malloc((size_t)i * 40 + 1);
    memset(keep[i], i, (size_t)i * 40 + 1);
  }
  /* Line 1: overflow. */
  volatile unsigned char *o = bmm_malloc(100);
  o[bmm_usable_size((void *)o)] ^= 0xff;
  bmm_free((void *)o);
  /* Line 2: double free. */
  void *d = bmm_malloc(24);
  bmm_free(d);
  bmm_free(d);
  /* Line 3: write after free (mark word), found when handed out again. */
  volatile unsigned char *w = bmm_malloc(64);
  bmm_free((void *)w);
  for (int i = 8; i < 16; i++)
    w[i] = 0x5a;
  for (int i = 0; i < REUSE_COUNT; i++) {
    reuse_blocks[i] = bmm_malloc(64);
    CHECK(reuse_blocks[i] != NULL);
  }
  /* Line 4: wrong size. */
  bmm_free_sized(bmm_malloc(24), 200);

  /* The double-freed block is on its free list once: it is not handed out
   * twice while both copies would be live. */
  for (int i = 0; i < MANY; i++) {
    many[i] = (uintptr_t)bmm_malloc(24);
    CHECK(many[i] != 0);
  }
  size_t seen = 0;
  for (int i = 0; i < MANY; i++)
    seen += many[i] == (uintptr_t)d;
  CHECK(seen <= 1);
  CHECK(all_distinct(many, MANY));
  for (int i = 0; i < MANY; i++)
    bmm_free((void *)many[i]);
  CHECK(all_distinct((uintptr_t *)reuse_blocks, REUSE_COUNT));
  for (int i = 0; i < REUSE_COUNT; i++)
    bmm_free(reuse_blocks[i]);
  for (int i = 0; i < 64; i++) {
    int intact = 1;
    for (int k = 0; k < i * 40 + 1; k++)
      intact &= keep[i][k] == (unsigned char)i;
    CHECK(intact);
    bmm_free(keep[i]);
  }
  CHECK(bmm_heap_check());
  void *p = bmm_malloc(1000);
  CHECK(p != NULL);
  bmm_free(p);
  CHECK(bmm_heap_check());
  _exit(check_failed_count() != failed_before ? 1 : 0);
}

static void run_continue_case(void) {
  char buf[4096];
  int lines;
  int status = check_child(continue_after_errors, NULL, buf, sizeof buf, &lines);
  static const char *const want[4][2] = {{"free(", "overflow"},
                                         {"free(", "double free"},
                                         {"malloc(", "written"},
                                         {"free_sized(", "size does not match"}};
  int ok = status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0 && lines == 4;
  const char *line = buf;
  for (int i = 0; i < 4 && ok; i++) {
    const char *end = strchr(line, '\n');
    char one[512];
    size_t len = end ? (size_t)(end - line) : strlen(line);
    if (len >= sizeof one) len = sizeof one - 1;
    memcpy(one, line, len);
    one[len] = 0;
    ok = strncmp(one, "brainmm: error: ", 16) == 0 && strstr(one, want[i][0]) != NULL &&
         strstr(one, want[i][1]) != NULL && strstr(one, "call ignored") != NULL;
    line = end ? end + 1 : line + len;
  }
  if (!ok)
    check_print(2, "secure: abort_on_error=0: status %#x, %d lines: %s\n", (unsigned)status, lines,
                buf);
  CHECK(ok);
}

/* --leak-sampled: with leak sampling on (BMM_OPTIONS), a free list cut at
 * a corrupted link is reported and the program goes on (abort_on_error=0):
 * the sampler's walk of that list must not run past its end. */
static void corrupted_list_sampled(void *arg) {
  (void)arg;
  enum { M = 200 };
  static void *p[M];
  bmm_option_set("abort_on_error", 0);
  for (int round = 0; round < 20; round++) {
    for (int i = 0; i < M; i++) p[i] = bmm_malloc(200);
    for (int i = 0; i < M; i++) bmm_free(p[i]);
    memset(p[M - 2], 0x41, 8); /* the link of the second block to be handed out */
    for (int i = 0; i < 4 * M; i++) {
      void *q = bmm_malloc(200); /* kept: leaked */
      (void)q;
    }
  }
}

static int main_leak_sampled(void) {
  static char buf[1 << 16];
  int lines;
  int status = check_child(corrupted_list_sampled, NULL, buf, sizeof buf, &lines);
#if BMM_TEST_DEBUG >= 2
  /* The check build's heap checks meet the corrupted link first, and stop. */
  bool ok = status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT &&
            strstr(buf, "assertion failed: bmm__page_is_valid") != NULL;
#else
  bool ok = status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
            strstr(buf, "free list corrupted") != NULL;
#endif
  if (!ok) check_print(2, "secure: --leak-sampled: status %#x\n", (unsigned)status);
  CHECK(ok);
  return check_done();
}

/* ---- Behaviour in secure mode --------------------------------------------- */

static void check_options(long level, long zero) {
  CHECK_EQ_LONG(bmm_option_get("secure"), level);
  CHECK_EQ_LONG(bmm_option_get("zero_on_free"), zero);
  void *p = bmm_malloc(100);
  CHECK(p != NULL);
  CHECK_EQ_LONG(bmm_option_set("secure", 0), EBUSY);
  CHECK_EQ_LONG(bmm_option_get("secure"), level);
  bmm_free(p);
}

/* Fresh blocks of a class nobody else uses come in a random order: the
 * next one lies right after the last about once in eight (eight streams,
 * see bmm__secure_extend); in address order it would every time. */
static void check_random_order(void) {
  enum { N = 64 };
  uintptr_t v[N];
  size_t ascending = 0, adjacent = 0;
  /* 192 bytes + the canary: the 208-byte class. */
  for (int i = 0; i < N; i++) {
    v[i] = (uintptr_t)bmm_malloc(192);
    CHECK(v[i] != 0);
    if (i > 0 && v[i] > v[i - 1]) ascending++;
    if (i > 0 && v[i] == v[i - 1] + 208) adjacent++;
  }
  if (ascending == N - 1) check_print(2, "secure: 64 fresh blocks came in address order\n");
  CHECK(ascending < N - 1);
  CHECK(adjacent < N / 2);
  for (int i = 0; i < N; i++)
    bmm_free((void *)v[i]);
  CHECK(all_distinct(v, N));
}

static void check_basics(void) {
  static const size_t sizes[] = {0,    1,    15,   16,   17,    24,    100,    255,    256,
                                 1000, 1024, 2048, 5000, 40000, 65536, 100000, 1 << 20};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    size_t n = sizes[i];
    unsigned char *p = bmm_malloc(n);
    CHECK(p != NULL);
    CHECK(((uintptr_t)p & 15) == 0);
    CHECK(bmm_usable_size(p) >= n);
    memset(p, 0x3c, bmm_usable_size(p)); /* all of it is ours */
    for (size_t k = 0; k < n; k++)
      p[k] = (unsigned char)(k * 13 + 1);
    size_t to = n * 3 + 10;
    unsigned char *q = bmm_realloc(p, to);
    CHECK(q != NULL);
    CHECK(((uintptr_t)q & 15) == 0);
    CHECK(bmm_usable_size(q) >= to);
    int kept = 1;
    for (size_t k = 0; k < n; k++)
      kept &= q[k] == (unsigned char)(k * 13 + 1);
    CHECK(kept);
    q = bmm_realloc(q, n / 2 + 1);
    CHECK(q != NULL);
    kept = 1;
    for (size_t k = 0; k < n / 2 + 1 && k < n; k++)
      kept &= q[k] == (unsigned char)(k * 13 + 1);
    CHECK(kept);
    bmm_free(q);

    unsigned char *c = bmm_calloc(1, n);
    CHECK(c != NULL && ((uintptr_t)c & 15) == 0);
    int zero = 1;
    for (size_t k = 0; k < n; k++)
      zero &= c[k] == 0;
    CHECK(zero);
    bmm_free(c);
  }
  for (size_t align = 32; align <= 4096; align *= 2)
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
      size_t n = sizes[i];
      unsigned char *p = bmm_malloc_aligned(n, align);
      CHECK(p != NULL);
      CHECK(((uintptr_t)p & (align - 1)) == 0);
      CHECK(bmm_usable_size(p) >= n);
      memset(p, 0x5e, bmm_usable_size(p));
      unsigned char *q = bmm_realloc(p, n * 2 + 100);
      CHECK(q != NULL && ((uintptr_t)q & (align - 1)) == 0);
      int kept = 1;
      for (size_t k = 0; k < n; k++)
        kept &= q[k] == 0x5e;
      CHECK(kept);
      bmm_free(q);
      void *a = NULL;
      CHECK(bmm_posix_memalign(&a, align, n) == 0);
      CHECK(((uintptr_t)a & (align - 1)) == 0 && bmm_usable_size(a) >= n);
      bmm_free(a);
      unsigned char *z = bmm_calloc_aligned(1, n, align);
      CHECK(z != NULL && ((uintptr_t)z & (align - 1)) == 0);
      int zero = 1;
      for (size_t k = 0; k < n; k++)
        zero &= z[k] == 0;
      CHECK(zero);
      bmm_free(z);
    }
  CHECK(bmm_heap_check());
}

/* ---- Randomized churn ---------------------------------------------------- */

typedef struct slot_s {
  unsigned char *p;
  size_t size, align; /* align 0: a plain block */
  unsigned char tag;
  unsigned char resized; /* realloc'd: freed unsized */
} slot_t;

static void fill(unsigned char *p, size_t size, unsigned char tag) {
  for (size_t k = 0; k < size; k++)
    p[k] = (unsigned char)(tag + k * 7);
}

/* Whole blocks up to 8 KiB; the first and last 512 bytes and one byte per
 * 4 KiB of bigger ones. */
static int pattern_ok(const unsigned char *p, size_t size, unsigned char tag) {
  if (size <= 8 * KiB) {
    for (size_t k = 0; k < size; k++)
      if (p[k] != (unsigned char)(tag + k * 7)) return 0;
    return 1;
  }
  for (size_t k = 0; k < 512; k++)
    if (p[k] != (unsigned char)(tag + k * 7)) return 0;
  for (size_t k = size - 512; k < size; k++)
    if (p[k] != (unsigned char)(tag + k * 7)) return 0;
  for (size_t k = 512; k < size; k += 4096)
    if (p[k] != (unsigned char)(tag + k * 7)) return 0;
  return 1;
}

static size_t pick_size(uint64_t *rng) {
  uint64_t r = check_rand(rng) % 1000;
  if (r < 600) return check_rand(rng) % 1025;
  if (r < 900) return 1025 + check_rand(rng) % (64 * KiB - 1024);
  if (r < 995) return check_rand(rng) % 512;
  return 64 * KiB + 1 + check_rand(rng) % (512 * KiB);
}

#define SLOTS 1024
static slot_t slots[SLOTS];

/* ops random operations on SLOTS slots; every failure is counted in *bad
 * and the first few are printed. */
static void churn(uint64_t seed, long ops) {
  uint64_t rng = seed;
  unsigned long bad = 0;
#define BAD(what)                                                                                  \
  do {                                                                                             \
    if (bad++ < 5)                                                                                 \
      check_print(2, "secure: churn op %ld: %s (size %zu, align %zu)\n", op, what, s->size,        \
                  s->align);                                                                       \
  } while (0)
  for (long op = 0; op < ops; op++) {
    slot_t *s = &slots[check_rand(&rng) % SLOTS];
    uint64_t r = check_rand(&rng) % 100;
    if (s->p == NULL) {
      s->size = pick_size(&rng);
      s->align = 0;
      s->resized = 0;
      s->tag = (unsigned char)check_rand(&rng);
      if (r < 70) {
        s->p = bmm_malloc(s->size);
      } else if (r < 85) {
        s->align = (size_t)32 << (check_rand(&rng) % 8);
        if (s->size > 64 * KiB) s->size = check_rand(&rng) % (8 * KiB);
        s->p = bmm_malloc_aligned(s->size, s->align);
      } else {
        size_t n = 1 + check_rand(&rng) % 16;
        s->size = (s->size / n) * n;
        s->p = bmm_calloc(n, s->size / n);
        if (s->p != NULL)
          for (size_t k = 0; k < s->size; k++)
            if (s->p[k] != 0) {
              BAD("calloc block not zeroed");
              break;
            }
      }
      if (s->p == NULL) {
        BAD("allocation failed");
        continue;
      }
      if (((uintptr_t)s->p & 15) != 0 || (s->align && ((uintptr_t)s->p & (s->align - 1)) != 0))
        BAD("misaligned");
      if (bmm_usable_size(s->p) < s->size) BAD("usable size below the request");
      fill(s->p, s->size, s->tag);
      continue;
    }
    if (!pattern_ok(s->p, s->size, s->tag)) BAD("pattern changed");
    if (r < 25) {
      size_t to = pick_size(&rng);
      if (s->align && to > 64 * KiB) to = check_rand(&rng) % (8 * KiB);
      unsigned char *q = bmm_realloc(s->p, to);
      if (to == 0) { /* freed, as glibc does */
        s->p = NULL;
        continue;
      }
      if (q == NULL) {
        BAD("realloc failed");
        continue;
      }
      size_t keep = to < s->size ? to : s->size;
      if (!pattern_ok(q, keep, s->tag)) BAD("realloc lost the contents");
      if (((uintptr_t)q & 15) != 0 || (s->align && ((uintptr_t)q & (s->align - 1)) != 0))
        BAD("realloc misaligned");
      if (bmm_usable_size(q) < to) BAD("usable size below the realloc request");
      s->p = q;
      s->size = to;
      s->resized = 1;
      fill(q, to, s->tag);
    } else {
      if (s->resized || r < 60)
        bmm_free(s->p);
      else if (s->align)
        bmm_free_aligned_sized(s->p, s->align, s->size);
      else
        bmm_free_sized(s->p, s->size);
      s->p = NULL;
    }
  }
  for (int i = 0; i < SLOTS; i++) {
    slot_t *s = &slots[i];
    long op = ops;
    if (s->p == NULL) continue;
    if (!pattern_ok(s->p, s->size, s->tag)) BAD("pattern changed");
    bmm_free(s->p);
    s->p = NULL;
  }
#undef BAD
  CHECK(bad == 0);
  CHECK(bmm_heap_check());
}

/* ---- Threads exchanging blocks -------------------------------------------- */

#define XSLOTS 256
#define XTHREADS 4
#define XOPS 25000
static _Atomic(uintptr_t) xslots[XSLOTS];
static atomic_ulong xbad;

/* A block carries its size in its first word and a pattern after it. */
static void stamp(unsigned char *p, size_t size) {
  memcpy(p, &size, sizeof size);
  memset(p + sizeof size, (unsigned char)(size * 37), size - sizeof size);
}

static int stamp_ok(const unsigned char *p, size_t *size) {
  memcpy(size, p, sizeof *size);
  size_t end = *size < 1024 ? *size : 1024;
  for (size_t k = sizeof *size; k < end; k++)
    if (p[k] != (unsigned char)(*size * 37)) return 0;
  return p[*size - 1] == (unsigned char)(*size * 37);
}

static void *exchanger(void *arg) {
  uint64_t rng = 0x9e3779b97f4a7c15ull * ((uintptr_t)arg + 1);
  for (int i = 0; i < XOPS; i++) {
    size_t size =
        16 + (check_rand(&rng) % 10 == 0 ? check_rand(&rng) % 30000 : check_rand(&rng) % 600);
    unsigned char *p = bmm_malloc(size);
    if (p == NULL) {
      atomic_fetch_add(&xbad, 1);
      continue;
    }
    stamp(p, size);
    uintptr_t old = atomic_exchange(&xslots[check_rand(&rng) % XSLOTS], (uintptr_t)p);
    if (old == 0) continue;
    size_t old_size;
    if (!stamp_ok((unsigned char *)old, &old_size)) atomic_fetch_add(&xbad, 1);
    if (i & 1)
      bmm_free_sized((void *)old, old_size);
    else
      bmm_free((void *)old);
  }
  return NULL;
}

static void check_exchange(void) {
  pthread_t t[XTHREADS];
  for (int i = 0; i < XTHREADS; i++)
    CHECK(pthread_create(&t[i], NULL, exchanger, (void *)(uintptr_t)i) == 0);
  for (int i = 0; i < XTHREADS; i++)
    pthread_join(t[i], NULL);
  for (int i = 0; i < XSLOTS; i++) {
    uintptr_t p = atomic_exchange(&xslots[i], 0);
    size_t size;
    if (p == 0) continue;
    if (!stamp_ok((unsigned char *)p, &size)) atomic_fetch_add(&xbad, 1);
    bmm_free((void *)p);
  }
  CHECK(atomic_load(&xbad) == 0);
  CHECK(bmm_heap_check());
  /* Blocks freed by other threads are reused. */
  void *p = bmm_malloc(100);
  CHECK(p != NULL);
  bmm_free(p);
  CHECK(bmm_heap_check());
}

/* ---- zero_on_free ----------------------------------------------------- */

static void check_zero_on_free(void) {
  static const size_t sizes[] = {512, 5000, 40000};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    size_t n = sizes[i];
    unsigned char *neighbour = bmm_malloc(n); /* keeps the page in use */
    unsigned char *p = bmm_malloc(n);
    memset(p, 0xab, n);
    bmm_free(p);
    /* Reading the freed block is deliberate: zero_on_free must have
     * cleared all of it but the first 16 bytes (link and mark). An ASan
     * build poisons free blocks: lift that for this read. */
#if CHECK_ASAN
    __asan_unpoison_memory_region(p, n);
#endif
    const volatile unsigned char *q = p;
    int zero = 1;
    for (size_t k = 16; k < n - 16; k++)
      zero &= q[k] == 0;
    if (!zero) check_print(2, "secure: freed %zu-byte block not zeroed\n", n);
    CHECK(zero);
    bmm_free(neighbour);
  }
}

/* ---- Sub-runs ------------------------------------------------------------ */

static int main_level2(int zero) {
  check_options(2, zero);
  if (zero) check_zero_on_free();
  if (CHECK_ASAN) /* the write hits a poisoned byte: ASan reports it first */
    expect_asan("secure=2: write into the middle of a freed block", write_after_free_middle);
  else
    expect_abort("secure=2: write into the middle of a freed block", write_after_free_middle, NULL,
                 "malloc", "use after free", "written", NULL);
  expect_abort("secure=2: double free", double_free_same_thread, (void *)(uintptr_t)24, "free",
               "double free", NULL, NULL);
  expect_abort("secure=2: overflow", overflow_block, (void *)(uintptr_t)100, "free", "overflow",
               NULL, "size class");
  churn(11, 20000);
  check_exchange();
  return check_done();
}

static int main_zero(void) {
  check_options(1, 1);
  check_zero_on_free();
  churn(13, 20000);
  return check_done();
}

int main(int argc, char **argv) {
  struct rlimit no_core = {0, 0};
  setrlimit(RLIMIT_CORE, &no_core); /* the children that die need no core files */
  const char *mode = argc > 1 ? argv[1] : NULL;
  if (mode == NULL) {
    const char *s = getenv("BMM_SECURE");
    if (s == NULL || strcmp(s, "1") != 0 || getenv("BMM_ZERO_ON_FREE") != NULL) {
      /* Secure mode is chosen when the process starts: start again in it. */
      setenv("BMM_SECURE", "1", 1);
      unsetenv("BMM_ZERO_ON_FREE");
      execv("/proc/self/exe", argv);
      check_print(2, "secure: cannot re-execute /proc/self/exe (errno %d)\n", errno);
      return 1;
    }
  } else if (strcmp(mode, "--level2") == 0) {
    return main_level2(0);
  } else if (strcmp(mode, "--level2-zero") == 0) {
    return main_level2(1);
  } else if (strcmp(mode, "--zero") == 0) {
    return main_zero();
  } else if (strcmp(mode, "--leak-sampled") == 0) {
    return main_leak_sampled();
  } else {
    check_print(2, "usage: secure [--level2 | --zero | --level2-zero | --leak-sampled]\n");
    return 2;
  }

  check_options(1, 0);
  check_random_order();
  run_misuse_cases();
  run_continue_case();
  check_basics();
  check_huge_guards();
  check_page_guards();
  churn(7, 100000);
  check_exchange();
  CHECK(check_rerun(argv[0], "--level2", "BMM_SECURE", "2", "BMM_ZERO_ON_FREE", "0"));
  CHECK(check_rerun(argv[0], "--zero", "BMM_SECURE", "1", "BMM_ZERO_ON_FREE", "1"));
  CHECK(check_rerun(argv[0], "--level2-zero", "BMM_SECURE", "2", "BMM_ZERO_ON_FREE", "1"));
  CHECK(check_rerun(argv[0], "--leak-sampled", "BMM_OPTIONS", "leak_report=1,leak_sample=4096",
                    "BMM_ZERO_ON_FREE", NULL));
  return check_done();
}
