/* thread_exit.c - threads that exit while they still own memory.
 *
 * (a) abandoned heaps: 50 rounds of 4 threads that each allocate a few
 *     thousand blocks and exit without freeing them; the main thread checks
 *     and frees them all (cross-thread frees into pages whose owner is gone),
 *     then the next round's new threads allocate again. The resident set size
 *     (/proc/self/statm) must not grow without bound: after round 5 it stays
 *     below twice its value at round 5 plus a slack.
 * (b) hand-over: threads allocate blocks, hand half to the main thread, free
 *     the other half themselves and exit; the main thread frees the handed
 *     blocks while later threads are still running. Every pattern intact.
 * (c) churn: 200 short-lived threads, a few at a time, each doing a few
 *     allocations (malloc, calloc, realloc, posix_memalign) and leaving one
 *     block behind for the main thread; exercises heap recycling.
 */
#define _GNU_SOURCE
#include <brainmm.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

#define KiB ((size_t)1024)
#define MiB (KiB * 1024)

typedef struct block {
  unsigned char *p;
  size_t size;
  unsigned char fill;
} block_t;

static size_t varied_size(uint64_t *r) {
  uint64_t pick = check_rand(r) % 1000;
  if (pick < 970)
    return 16 + check_rand(r) % 2033;
  if (pick < 998)
    return 2049 + check_rand(r) % (64 * KiB);
  return 64 * KiB + check_rand(r) % (256 * KiB);
}

/* A block holds its own address in its first 8 bytes and `fill` after that,
 * so a block that overlaps another or was overwritten shows up. */
static int alloc_block(block_t *b, size_t size, unsigned char fill) {
  if (size < sizeof(uintptr_t))
    size = sizeof(uintptr_t);
  b->p = bmm_malloc(size);
  b->size = size;
  b->fill = fill;
  if (b->p == NULL || ((uintptr_t)b->p & (BMM_MIN_ALIGN - 1)) != 0)
    return 0;
  uintptr_t self = (uintptr_t)b->p;
  memcpy(b->p, &self, sizeof self);
  memset(b->p + sizeof self, fill, size - sizeof self);
  return 1;
}

static int block_intact(const block_t *b) {
  uintptr_t self;
  memcpy(&self, b->p, sizeof self);
  if (self != (uintptr_t)b->p)
    return 0;
  for (size_t i = sizeof self; i < b->size; i++)
    if (b->p[i] != b->fill)
      return 0;
  return 1;
}

/* Checks and frees; returns 1 when the block was intact. */
static int free_block(block_t *b) {
  int ok = block_intact(b);
  if (!ok)
    fprintf(stderr, "thread_exit: block %p of %zu bytes was overwritten\n", (void *)b->p,
            b->size);
  bmm_free(b->p);
  b->p = NULL;
  return ok;
}

static size_t rss_bytes(void) {
  char buf[256];
  int fd = open("/proc/self/statm", O_RDONLY);
  if (fd < 0)
    return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0)
    return 0;
  buf[n] = '\0';
  unsigned long size = 0, resident = 0;
  if (sscanf(buf, "%lu %lu", &size, &resident) != 2)
    return 0;
  return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* ---- (a) abandoned heaps ------------------------------------------------ */

enum { A_ROUNDS = 50, A_THREADS = 4, A_BLOCKS = 2000, A_BASE_ROUND = 5 };
#define A_SLACK (16 * MiB)

typedef struct a_thread {
  pthread_t thread;
  uint64_t seed;
  size_t failed;
  block_t blocks[A_BLOCKS];
} a_thread_t;

static a_thread_t a_threads[A_THREADS];

static void *a_main(void *arg) {
  a_thread_t *t = arg;
  uint64_t r = t->seed;
  t->failed = 0;
  for (size_t i = 0; i < A_BLOCKS; i++)
    if (!alloc_block(&t->blocks[i], varied_size(&r), (unsigned char)check_rand(&r)))
      t->failed++;
  return NULL; /* exits owning every block */
}

static void test_abandoned(void) {
  size_t base = 0, peak = 0;
  int ok_alloc = 1, ok_pattern = 1, ok_rss = 1;
  for (int round = 1; round <= A_ROUNDS; round++) {
    int started[A_THREADS] = {0};
    for (int i = 0; i < A_THREADS; i++) {
      a_threads[i].seed = (uint64_t)round * 1000003 + (uint64_t)i * 7919 + 1;
      started[i] = pthread_create(&a_threads[i].thread, NULL, a_main, &a_threads[i]) == 0;
      ok_alloc &= started[i];
    }
    for (int i = 0; i < A_THREADS; i++) {
      if (!started[i])
        continue;
      pthread_join(a_threads[i].thread, NULL);
      ok_alloc &= a_threads[i].failed == 0;
    }
    /* free everything from the main thread, interleaving the threads */
    for (size_t k = 0; k < A_BLOCKS; k++)
      for (int i = 0; i < A_THREADS; i++)
        if (started[i] && a_threads[i].blocks[k].p != NULL)
          ok_pattern &= free_block(&a_threads[i].blocks[k]);

    size_t rss = rss_bytes();
    if (round == A_BASE_ROUND)
      base = rss;
    if (round > A_BASE_ROUND) {
      if (rss > peak)
        peak = rss;
      if (base != 0 && rss > 2 * base + A_SLACK) {
        if (ok_rss)
          fprintf(stderr, "thread_exit: round %d: RSS %zu KiB > 2 x %zu KiB + %zu KiB\n",
                  round, rss / KiB, base / KiB, A_SLACK / KiB);
        ok_rss = 0;
      }
    }
  }
  CHECK(ok_alloc);
  CHECK(ok_pattern);
  CHECK(base != 0); /* /proc/self/statm was readable */
  CHECK(ok_rss);
  printf("thread_exit (a): RSS after round %d: %zu KiB, peak after: %zu KiB\n",
         A_BASE_ROUND, base / KiB, peak / KiB);
}

/* ---- (b) hand-over ------------------------------------------------------- */

enum { B_ROUNDS = 5, B_THREADS = 8, B_BLOCKS = 2000 };

typedef struct b_thread {
  pthread_t thread;
  uint64_t seed;
  size_t failed, corrupt;
  block_t handed[B_BLOCKS / 2];
} b_thread_t;

static b_thread_t b_threads[B_THREADS];

static void *b_main(void *arg) {
  b_thread_t *t = arg;
  uint64_t r = t->seed;
  block_t mine[B_BLOCKS / 2];
  t->failed = t->corrupt = 0;
  for (size_t i = 0; i < B_BLOCKS / 2; i++) {
    /* interleaved, so the kept and the handed blocks share pages */
    if (!alloc_block(&t->handed[i], varied_size(&r), (unsigned char)check_rand(&r)))
      t->failed++;
    if (!alloc_block(&mine[i], varied_size(&r), (unsigned char)check_rand(&r)))
      t->failed++;
  }
  for (size_t i = 0; i < B_BLOCKS / 2; i++)
    if (mine[i].p != NULL && !free_block(&mine[i]))
      t->corrupt++;
  return NULL;
}

static void test_handover(void) {
  int ok = 1;
  for (int round = 0; round < B_ROUNDS; round++) {
    int started[B_THREADS] = {0};
    for (int i = 0; i < B_THREADS; i++) {
      b_threads[i].seed = (uint64_t)round * 104729 + (uint64_t)i * 31 + 5;
      started[i] = pthread_create(&b_threads[i].thread, NULL, b_main, &b_threads[i]) == 0;
      ok &= started[i];
    }
    /* join in order and free each thread's blocks while later ones may still
     * be allocating */
    for (int i = 0; i < B_THREADS; i++) {
      if (!started[i])
        continue;
      pthread_join(b_threads[i].thread, NULL);
      ok &= b_threads[i].failed == 0 && b_threads[i].corrupt == 0;
      for (size_t k = 0; k < B_BLOCKS / 2; k++)
        if (b_threads[i].handed[k].p != NULL)
          ok &= free_block(&b_threads[i].handed[k]);
    }
  }
  CHECK(ok);
}

/* ---- (c) churn ---------------------------------------------------------- */

enum { C_THREADS = 200, C_BATCH = 8 };

typedef struct c_thread {
  pthread_t thread;
  uint64_t seed;
  int ok;
  block_t left;
} c_thread_t;

static c_thread_t c_threads[C_BATCH];

static void *c_main(void *arg) {
  c_thread_t *t = arg;
  uint64_t r = t->seed;
  int ok = 1;
  block_t b[4];
  for (int i = 0; i < 4; i++)
    ok &= alloc_block(&b[i], varied_size(&r), (unsigned char)check_rand(&r));

  size_t n = 16 + check_rand(&r) % 5000;
  unsigned char *z = bmm_calloc(n, 1);
  ok &= z != NULL;
  for (size_t i = 0; z && i < n; i++)
    ok &= z[i] == 0;
  unsigned char *g = bmm_realloc(z, n * 4);
  ok &= g != NULL;
  for (size_t i = 0; g && i < n; i++)
    ok &= g[i] == 0;
  bmm_free(g ? g : z);

  void *a = NULL;
  ok &= bmm_posix_memalign(&a, 256, 1000) == 0 && ((uintptr_t)a & 255) == 0;
  bmm_free(a);

  for (int i = 0; i < 3; i++)
    if (b[i].p)
      ok &= free_block(&b[i]);
  t->left = b[3]; /* freed by the main thread after this one exits */
  t->ok = ok;
  return NULL;
}

static void test_churn(void) {
  int ok = 1;
  for (int done = 0; done < C_THREADS; done += C_BATCH) {
    int started[C_BATCH] = {0};
    for (int i = 0; i < C_BATCH; i++) {
      c_threads[i].seed = (uint64_t)(done + i) * 6364136223846793005ULL + 1442695040888963407ULL;
      c_threads[i].ok = 0;
      started[i] = pthread_create(&c_threads[i].thread, NULL, c_main, &c_threads[i]) == 0;
      ok &= started[i];
    }
    for (int i = 0; i < C_BATCH; i++) {
      if (!started[i])
        continue;
      pthread_join(c_threads[i].thread, NULL);
      ok &= c_threads[i].ok;
      if (c_threads[i].left.p)
        ok &= free_block(&c_threads[i].left);
    }
  }
  CHECK(ok);
}

int main(void) {
  test_abandoned();
  test_handover();
  test_churn();
  CHECK(bmm_heap_check());
  return check_done();
}
