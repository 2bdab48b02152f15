/* unit_os.c: white-box test of the OS layer contract (src/os/os.h) as the
 * Linux backend implements it. It checks:
 *   - bmm__os_page_size is a power of two of at least 4 KiB;
 *   - bmm__os_reserve_aligned for several sizes and alignments (4 KiB to
 *     256 MiB): the result is aligned, and after bmm__os_commit the range
 *     reads zero and is writable at its first and last byte; commit=true
 *     gives a usable range at once; a size that is not a page multiple is
 *     rounded up;
 *   - bmm__os_decommit(lazy=false): a written pattern reads back as zero
 *     after decommit + commit; lazy=true leaves each page either intact or
 *     zero (MADV_FREE), never anything else;
 *   - bmm__os_protect: read-only makes a write fault (in a forked child that
 *     must die of SIGSEGV), reads still work, no access makes a read fault,
 *     and read+write restores writing; an unaligned address gives EINVAL;
 *   - bmm__os_release unmaps (mincore then fails with ENOMEM), also for
 *     part of a reservation, leaving the rest mapped;
 *   - bmm__os_thread_id is non-zero, stable within a thread and distinct
 *     across threads alive at the same time;
 *   - bmm__os_getenv finds a variable set with setenv, not a longer or
 *     shorter name, and gives "" for an empty value; bmm__os_env_each visits
 *     exactly the variables with a prefix;
 *   - bmm__os_rss is non-zero and grows when memory is touched.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/internal.h" /* src/ is not on the test targets' include path */
#include "check.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

/* True when every page of [p, p + size) is mapped (mincore fails with
 * ENOMEM on any unmapped page). */
static bool range_mapped(void *p, size_t size) {
  size_t ps = bmm__os_page_size();
  unsigned char vec[64];
  /* Check a sample of at most 64 pages spread over the range. */
  size_t pages = size / ps, step = pages > 64 ? pages / 64 : 1;
  for (size_t i = 0; i < pages; i += step) {
    if (mincore((char *)p + i * ps, ps, vec) != 0) return false;
  }
  return mincore((char *)p + size - ps, ps, vec) == 0;
}

static bool range_unmapped(void *p, size_t size) {
  size_t ps = bmm__os_page_size();
  unsigned char vec[1];
  for (size_t off = 0; off < size; off += ps) {
    errno = 0;
    if (mincore((char *)p + off, ps, vec) == 0 || errno != ENOMEM) return false;
  }
  return true;
}

/* Count the bytes of [p, p + n) that differ from c, reading every page. */
static size_t count_not(const volatile unsigned char *p, size_t n, unsigned char c) {
  size_t bad = 0;
  for (size_t i = 0; i < n; i++)
    bad += p[i] != c;
  return bad;
}

static void check_page_size(void) {
  size_t ps = bmm__os_page_size();
  CHECK(ps >= 4096);
  CHECK((ps & (ps - 1)) == 0);
  CHECK_EQ_SZ(ps, (size_t)sysconf(_SC_PAGESIZE));
}

static void check_reserve(void) {
  static const struct {
    size_t size, align;
  } cases[] = {
      {4 * KiB, 4 * KiB},     {12 * KiB, 4 * KiB},  {64 * KiB, 64 * KiB}, {192 * KiB, 64 * KiB},
      {1 * MiB, 2 * MiB},     {3 * MiB, 1 * MiB},   {16 * MiB, 16 * MiB}, {40 * MiB, 64 * MiB},
      {256 * MiB, 256 * MiB}, {4 * KiB, 256 * MiB},
  };
  size_t ps = bmm__os_page_size();
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    size_t size = cases[k].size, align = cases[k].align;
    if (size < ps || align < ps) continue;
    for (int commit = 0; commit <= 1; commit++) {
      unsigned char *p = bmm__os_reserve_aligned(size, align, commit);
      if (!CHECK(p != NULL)) continue;
      CHECK_EQ_SZ((uintptr_t)p % align, 0);
      CHECK(range_mapped(p, size));
      if (!commit) CHECK(bmm__os_commit(p, size));
      /* Fresh memory reads zero: all of it when small, else first and last
       * page (reading 256 MiB would be slow). */
      if (size <= 1 * MiB) {
        CHECK_EQ_SZ(count_not(p, size, 0), 0);
      } else {
        CHECK_EQ_SZ(count_not(p, ps, 0), 0);
        CHECK_EQ_SZ(count_not(p + size - ps, ps, 0), 0);
      }
      p[0] = 0xA5;
      p[size - 1] = 0x5A;
      CHECK(p[0] == 0xA5 && p[size - 1] == 0x5A);
      CHECK(bmm__os_release(p, size));
      CHECK(range_unmapped(p, ps));
    }
  }

  /* A size that is not a page multiple is rounded up to whole pages. */
  unsigned char *p = bmm__os_reserve_aligned(ps + 1, ps, true);
  if (CHECK(p != NULL)) {
    CHECK(range_mapped(p, 2 * ps));
    p[2 * ps - 1] = 1;
    CHECK(bmm__os_release(p, 2 * ps));
  }
  /* Impossible sizes fail cleanly. */
  errno = 0;
  CHECK(bmm__os_reserve_aligned(0, ps, false) == NULL);
  CHECK(bmm__os_reserve_aligned(SIZE_MAX - ps, ps, false) == NULL);
}

static void check_decommit(void) {
  size_t ps = bmm__os_page_size(), size = 16 * ps;
  unsigned char *p = bmm__os_reserve_aligned(size, 64 * KiB, false);
  if (!CHECK(p != NULL)) return;
  CHECK(bmm__os_commit(p, size));

  /* Eager: the pattern is gone. */
  memset(p, 0xC3, size);
  CHECK(bmm__os_decommit(p, size, false));
  CHECK(bmm__os_commit(p, size));
  CHECK_EQ_SZ(count_not(p, size, 0), 0);

  /* Part of a range: only the decommitted pages lose their contents. */
  memset(p, 0x3C, size);
  CHECK(bmm__os_decommit(p + 4 * ps, 4 * ps, false));
  CHECK(bmm__os_commit(p + 4 * ps, 4 * ps));
  CHECK_EQ_SZ(count_not(p, 4 * ps, 0x3C), 0);
  CHECK_EQ_SZ(count_not(p + 4 * ps, 4 * ps, 0), 0);
  CHECK_EQ_SZ(count_not(p + 8 * ps, 8 * ps, 0x3C), 0);

  /* Lazy: each page is either intact or zero; writing it again works. */
  memset(p, 0x77, size);
  CHECK(bmm__os_decommit(p, size, true));
  CHECK(bmm__os_commit(p, size));
  size_t mixed = 0;
  for (size_t pg = 0; pg < 16; pg++) {
    size_t nz = count_not(p + pg * ps, ps, 0), n77 = count_not(p + pg * ps, ps, 0x77);
    if (nz != 0 && n77 != 0) mixed++;
  }
  CHECK_EQ_SZ(mixed, 0);
  memset(p, 0x11, size);
  CHECK_EQ_SZ(count_not(p, size, 0x11), 0);
  CHECK(bmm__os_release(p, size));
}

/* Runs `fn(p)` in a forked child with the default SIGSEGV action (the
 * sanitizers install their own handler, which would turn the signal into an
 * exit code). Returns the signal the child died of, or 0. */
static int child_dies_of(void (*fn)(volatile unsigned char *), volatile unsigned char *p) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    fn(p);
    _exit(0); /* no fault: the parent sees a normal exit */
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

static void write_byte(volatile unsigned char *p) {
  p[0] = 42;
}

static void read_byte(volatile unsigned char *p) {
  unsigned char c = p[0];
  (void)c;
}

static void check_protect(void) {
  size_t ps = bmm__os_page_size(), size = 4 * ps;
  unsigned char *p = bmm__os_reserve_aligned(size, ps, true);
  if (!CHECK(p != NULL)) return;
  memset(p, 9, size);

  CHECK_EQ_LONG(bmm__os_protect(p + ps, ps, 1), 0); /* page 1 read-only */
  CHECK(p[ps] == 9);                                /* reads still work */
  CHECK_EQ_LONG(child_dies_of(write_byte, p + ps), SIGSEGV);
  CHECK_EQ_LONG(child_dies_of(write_byte, p), 0); /* its neighbour is not affected */
  CHECK(p[ps] == 9);                              /* the child's write never landed */

  CHECK_EQ_LONG(bmm__os_protect(p + 2 * ps, ps, 0), 0); /* page 2: no access */
  CHECK_EQ_LONG(child_dies_of(read_byte, p + 2 * ps), SIGSEGV);
  CHECK_EQ_LONG(child_dies_of(write_byte, p + 2 * ps), SIGSEGV);

  CHECK_EQ_LONG(bmm__os_protect(p + ps, 2 * ps, 3), 0); /* read+write again */
  p[ps] = 1;
  p[2 * ps] = 2;
  CHECK(p[ps] == 1 && p[2 * ps] == 2 && p[2 * ps + 1] == 9);
  CHECK_EQ_LONG(child_dies_of(write_byte, p + ps), 0);

  /* Misuse returns an errno value instead of crashing. */
  CHECK_EQ_LONG(bmm__os_protect(p + 1, ps, 1), EINVAL);
  CHECK(bmm__os_release(p, size));
}

static void check_release(void) {
  size_t ps = bmm__os_page_size(), size = 8 * ps;
  unsigned char *p = bmm__os_reserve_aligned(size, 64 * KiB, true);
  if (!CHECK(p != NULL)) return;
  memset(p, 1, size);
  /* Release the middle: head and tail stay usable. */
  CHECK(bmm__os_release(p + 2 * ps, 4 * ps));
  CHECK(range_unmapped(p + 2 * ps, 4 * ps));
  CHECK(range_mapped(p, 2 * ps));
  CHECK(range_mapped(p + 6 * ps, 2 * ps));
  CHECK(p[0] == 1 && p[size - 1] == 1);
  CHECK(bmm__os_release(p, 2 * ps));
  CHECK(bmm__os_release(p + 6 * ps, 2 * ps));
  CHECK(range_unmapped(p, size));
  /* Releasing an unaligned address fails without disturbing anything. */
  unsigned char *q = bmm__os_reserve_aligned(ps, ps, true);
  if (CHECK(q != NULL)) {
    q[0] = 5;
    CHECK(!bmm__os_release(q + 1, ps));
    CHECK(q[0] == 5);
    CHECK(bmm__os_release(q, ps));
  }
}

/* ---- Thread ids ------------------------------------------------------ */

#define NTHREADS 8
static pthread_barrier_t tid_barrier;
static uintptr_t tid_seen[NTHREADS];

static void *tid_thread(void *arg) {
  size_t i = (size_t)(uintptr_t)arg;
  uintptr_t a = bmm__os_thread_id();
  uintptr_t b = bmm__os_thread_id();
  tid_seen[i] = a == b ? a : 0; /* 0 marks "not stable" */
  /* Stay alive until every thread has read its id: ids are unique only
   * among living threads. */
  pthread_barrier_wait(&tid_barrier);
  return NULL;
}

static void check_thread_id(void) {
  uintptr_t main_id = bmm__os_thread_id();
  CHECK(main_id != 0);
  CHECK_EQ_SZ(main_id, bmm__os_thread_id());
  pthread_barrier_init(&tid_barrier, NULL, NTHREADS);
  pthread_t t[NTHREADS];
  for (size_t i = 0; i < NTHREADS; i++)
    CHECK(pthread_create(&t[i], NULL, tid_thread, (void *)(uintptr_t)i) == 0);
  for (size_t i = 0; i < NTHREADS; i++)
    pthread_join(t[i], NULL);
  pthread_barrier_destroy(&tid_barrier);
  size_t zero = 0, dup = 0;
  for (size_t i = 0; i < NTHREADS; i++) {
    if (tid_seen[i] == 0) zero++;
    if (tid_seen[i] == main_id) dup++;
    for (size_t j = 0; j < i; j++)
      if (tid_seen[i] == tid_seen[j]) dup++;
  }
  CHECK_EQ_SZ(zero, 0);
  CHECK_EQ_SZ(dup, 0);
}

/* ---- Environment ----------------------------------------------------- */

static void env_count(void *arg, const char *name, size_t name_len, const char *value) {
  size_t *counts = arg;
  counts[0]++;
  if (name_len == strlen("BMMUNITOS_A") && strncmp(name, "BMMUNITOS_A", name_len) == 0 &&
      strcmp(value, "alpha") == 0)
    counts[1]++;
  if (name_len == strlen("BMMUNITOS_B") && strncmp(name, "BMMUNITOS_B", name_len) == 0 &&
      strcmp(value, "") == 0)
    counts[2]++;
}

static void check_getenv(void) {
  CHECK(bmm__os_getenv("BMMUNITOS_A") == NULL);
  CHECK(setenv("BMMUNITOS_A", "alpha", 1) == 0);
  CHECK(setenv("BMMUNITOS_B", "", 1) == 0);
  CHECK(setenv("BMMUNITOS_AB", "longer", 1) == 0);
  const char *v = bmm__os_getenv("BMMUNITOS_A");
  CHECK(v != NULL && strcmp(v, "alpha") == 0);
  v = bmm__os_getenv("BMMUNITOS_B");
  CHECK(v != NULL && strcmp(v, "") == 0);
  v = bmm__os_getenv("BMMUNITOS_AB");
  CHECK(v != NULL && strcmp(v, "longer") == 0);
  CHECK(bmm__os_getenv("BMMUNITOS_") == NULL); /* a prefix is not a name */
  CHECK(bmm__os_getenv("BMMUNITOS_ABC") == NULL);
  /* Overwriting is seen. */
  CHECK(setenv("BMMUNITOS_A", "beta", 1) == 0);
  v = bmm__os_getenv("BMMUNITOS_A");
  CHECK(v != NULL && strcmp(v, "beta") == 0);
  CHECK(setenv("BMMUNITOS_A", "alpha", 1) == 0);

  size_t counts[3] = {0, 0, 0};
  bmm__os_env_each("BMMUNITOS_", env_count, counts);
  CHECK_EQ_SZ(counts[0], 3);
  CHECK_EQ_SZ(counts[1], 1);
  CHECK_EQ_SZ(counts[2], 1);

  CHECK(unsetenv("BMMUNITOS_A") == 0);
  CHECK(bmm__os_getenv("BMMUNITOS_A") == NULL);
  unsetenv("BMMUNITOS_B");
  unsetenv("BMMUNITOS_AB");
}

static void check_rss(void) {
  size_t before = bmm__os_rss();
  CHECK(before > 0);
  size_t size = 8 * MiB;
  unsigned char *p = bmm__os_reserve_aligned(size, 64 * KiB, true);
  if (!CHECK(p != NULL)) return;
  for (size_t i = 0; i < size; i += bmm__os_page_size())
    p[i] = 1;
  size_t after = bmm__os_rss();
  CHECK(after >= before + size / 2);
  CHECK(bmm__os_release(p, size));
}

int main(void) {
  check_page_size();
  check_reserve();
  check_decommit();
  check_protect();
  check_release();
  check_thread_id();
  check_getenv();
  check_rss();
  return check_done();
}
