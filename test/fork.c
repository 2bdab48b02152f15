/* fork.c - fork() from a multi-threaded process leaves a usable allocator in
 * the child (API.md section 1).
 *
 * Three threads allocate and free with bmm_malloc/bmm_free in a loop and
 * hand blocks to each other through a locked exchange, so frees cross
 * threads. Meanwhile the main thread forks 20 times. Each child, under an
 * alarm so that a deadlock kills it instead of hanging the test:
 *   - frees a block the parent's main thread allocated before the fork and one
 *     a parent worker thread allocated (after checking their contents), and
 *     grows a third with realloc;
 *   - allocates, reallocates and frees many blocks of varied sizes;
 *   - starts threads that allocate, hand their blocks back and exit, and frees
 *     those blocks from the child's main thread;
 * and exits 0 when every check passed. The parent checks each exit status.
 * The child only calls the allocator and write(2) (through check.h), never a
 * lock that a parent thread may have held at the time of the fork.
 *
 * `fork large` (ctest fork_secure, in secure mode with a 1 ms purge delay)
 * does the same with large blocks only, 200 forks, a lighter pattern (see
 * pattern_step) and less work in each child: it catches a lock-order
 * deadlock between fork's handlers and the guarded span cache (large.c)
 * that hung about one run in ten before it was fixed.
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

/* The sanitizers do not support new threads in the child of a
 * multi-threaded fork: ThreadSanitizer's runtime dies (clang, unless
 * die_after_fork=0) or fails with "dup thread with used id" (GCC 12), and
 * with AddressSanitizer (LLVM 14) a child's pthread_create allocates from
 * the sanitizer's own allocator, whose lock another parent thread may have
 * held at the fork: about one child in a few hundred hung there. Under
 * them the child starts no thread (BrainMM's own state is still tested). */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define FORK_TEST_UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define FORK_TEST_UNDER_SANITIZER 1
#endif
#endif
#ifdef FORK_TEST_UNDER_SANITIZER
enum { CHILD_STARTS_THREADS = 0 };
#else
enum { CHILD_STARTS_THREADS = 1 };
#endif

enum {
  FORKS = 20,
  PARENT_THREADS = 3,
  WORKER_SLOTS = 128,
  EXCHANGE_CAP = 256,
  CHILD_THREADS = 3,
  CHILD_SLOTS = 64,
  CHILD_OPS = 3000,
  CHILD_THREAD_BLOCKS = 200,
  CHILD_TIMEOUT_S = 30,
};

typedef struct block {
  unsigned char *p;
  size_t size;
  unsigned seed;
} block_t;

/* `fork large`: every block is large (fork_secure runs it so in secure
 * mode with a 1 ms purge delay: freed spans go through the guarded span
 * cache and expire all the time, so its lock meets fork's). */
static int large_only;
/* The children's work: less with large blocks, each of which takes
 * longer to fill and check. */
static int forks = FORKS, child_ops = CHILD_OPS;
static size_t child_thread_blocks = CHILD_THREAD_BLOCKS;

static size_t varied_size(uint64_t *r) {
  if (large_only) return 64 * 1024 + check_rand(r) % (96 * 1024);
  uint64_t pick = check_rand(r) % 100;
  if (pick < 85)
    return 1 + check_rand(r) % 1024;
  if (pick < 99)
    return 1025 + check_rand(r) % (16 * 1024);
  return 64 * 1024 + check_rand(r) % (512 * 1024);
}

static unsigned char pattern_at(unsigned seed, size_t i) {
  return (unsigned char)(seed + i * 31u + (i >> 7));
}

/* Bytes of a block the pattern covers: all, or with large blocks every
 * 61st and the last (the workers then free and allocate more often). */
static size_t pattern_step(void) {
  return large_only ? 61 : 1;
}

static void fill(block_t *b, unsigned seed) {
  b->seed = seed;
  for (size_t i = 0; i < b->size; i += pattern_step())
    b->p[i] = pattern_at(seed, i);
  if (b->size > 0) b->p[b->size - 1] = pattern_at(seed, b->size - 1);
}

static int byte_ok(const block_t *b, const unsigned char *at, size_t i) {
  if (at[i] == pattern_at(b->seed, i)) return 1;
  check_print(2, "fork: block %p size %zu: byte %zu is 0x%02x, expected 0x%02x (pid %d)\n",
              (const void *)at, b->size, i, at[i], pattern_at(b->seed, i), (int)getpid());
  return 0;
}

/* Checks the first `limit` bytes (at most b->size) of b's pattern at `at`:
 * those fill wrote. */
static int intact(const block_t *b, const unsigned char *at, size_t limit) {
  size_t n = limit < b->size ? limit : b->size;
  for (size_t i = 0; i < n; i += pattern_step())
    if (!byte_ok(b, at, i)) return 0;
  return n < b->size || n == 0 || byte_ok(b, at, n - 1);
}

static int alloc_block(block_t *b, size_t size, unsigned seed) {
  b->p = bmm_malloc(size);
  b->size = size;
  if (!CHECK(b->p != NULL && ((uintptr_t)b->p & (BMM_MIN_ALIGN - 1)) == 0))
    return 0;
  fill(b, seed);
  return 1;
}

static void free_block(block_t *b) {
  CHECK(intact(b, b->p, b->size));
  bmm_free(b->p);
  b->p = NULL;
}

/* ---- parent workers ------------------------------------------------------ */

static atomic_int stop_flag;
static pthread_mutex_t exchange_lock = PTHREAD_MUTEX_INITIALIZER;
static block_t exchange[EXCHANGE_CAP]; /* protected by exchange_lock */
static size_t exchange_count;          /* protected by exchange_lock */
static atomic_ullong worker_ops;

static int exchange_put(const block_t *b) {
  int ok = 0;
  pthread_mutex_lock(&exchange_lock);
  if (exchange_count < EXCHANGE_CAP) {
    exchange[exchange_count++] = *b;
    ok = 1;
  }
  pthread_mutex_unlock(&exchange_lock);
  return ok;
}

static int exchange_take(block_t *out) {
  int ok = 0;
  pthread_mutex_lock(&exchange_lock);
  if (exchange_count > 0) {
    *out = exchange[--exchange_count];
    ok = 1;
  }
  pthread_mutex_unlock(&exchange_lock);
  return ok;
}

static void *parent_worker(void *arg) {
  uint64_t r = 0x1234567ULL + (uintptr_t)arg * 0x9e3779b97f4a7c15ULL;
  block_t slots[WORKER_SLOTS] = {{0}};
  unsigned long long ops = 0;
  while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
    block_t *b = &slots[check_rand(&r) % WORKER_SLOTS];
    uint64_t pick = check_rand(&r) % 100;
    if (b->p == NULL) {
      alloc_block(b, varied_size(&r), (unsigned)check_rand(&r));
    } else if (pick < 50) {
      free_block(b);
    } else if (exchange_put(b)) {
      b->p = NULL; /* another thread frees it */
    }
    block_t other;
    if (check_rand(&r) % 4 == 0 && exchange_take(&other))
      free_block(&other);
    ops++;
  }
  for (size_t i = 0; i < WORKER_SLOTS; i++)
    if (slots[i].p != NULL)
      free_block(&slots[i]);
  atomic_fetch_add(&worker_ops, ops);
  return NULL;
}

/* ---- the child ---------------------------------------------------------- */

typedef struct child_thread {
  pthread_t thread;
  uint64_t seed;
  block_t blocks[CHILD_THREAD_BLOCKS];
} child_thread_t;

static child_thread_t child_threads[CHILD_THREADS];

static void *child_thread_main(void *arg) {
  child_thread_t *t = arg;
  uint64_t r = t->seed;
  block_t local[CHILD_SLOTS] = {{0}};
  for (int op = 0; op < child_ops; op++) {
    block_t *b = &local[check_rand(&r) % CHILD_SLOTS];
    if (b->p != NULL)
      free_block(b);
    else
      alloc_block(b, varied_size(&r), (unsigned)check_rand(&r));
  }
  for (size_t i = 0; i < CHILD_SLOTS; i++)
    if (local[i].p != NULL)
      free_block(&local[i]);
  /* these stay allocated and are freed by the child's main thread */
  for (size_t i = 0; i < child_thread_blocks; i++)
    alloc_block(&t->blocks[i], varied_size(&r), (unsigned)check_rand(&r));
  return NULL;
}

static void child_main(int round, block_t *from_main, block_t *from_worker,
                       block_t *to_grow) {
  uint64_t r = 0xC0FFEEULL + (uint64_t)round * 7919;

  /* blocks allocated before the fork, by this thread and by one that does not
   * exist in the child */
  free_block(from_main);
  if (from_worker->p != NULL)
    free_block(from_worker);
  size_t old = to_grow->size;
  unsigned char *q = bmm_realloc(to_grow->p, old * 3 + 100000);
  if (CHECK(q != NULL)) {
    CHECK(intact(to_grow, q, old));
    to_grow->p = q;
    to_grow->size = old * 3 + 100000;
    fill(to_grow, to_grow->seed + 1);
  }
  free_block(to_grow);

  /* many blocks of varied sizes, with realloc */
  block_t slots[CHILD_SLOTS] = {{0}};
  for (int op = 0; op < child_ops; op++) {
    block_t *b = &slots[check_rand(&r) % CHILD_SLOTS];
    uint64_t pick = check_rand(&r) % 100;
    if (b->p == NULL) {
      alloc_block(b, varied_size(&r), (unsigned)check_rand(&r));
    } else if (pick < 40) {
      size_t n = varied_size(&r);
      unsigned char *p = bmm_realloc(b->p, n);
      if (CHECK(p != NULL)) {
        CHECK(intact(b, p, n));
        b->p = p;
        b->size = n;
        fill(b, (unsigned)check_rand(&r));
      }
    } else {
      free_block(b);
    }
  }
  for (size_t i = 0; i < CHILD_SLOTS; i++)
    if (slots[i].p != NULL)
      free_block(&slots[i]);

  /* new threads in the child */
  int started[CHILD_THREADS] = {0};
  for (int i = 0; i < CHILD_THREADS && CHILD_STARTS_THREADS; i++) {
    child_threads[i].seed = check_rand(&r) | 1;
    started[i] = CHECK(pthread_create(&child_threads[i].thread, NULL, child_thread_main,
                                      &child_threads[i]) == 0);
  }
  for (int i = 0; i < CHILD_THREADS; i++) {
    if (!started[i])
      continue;
    pthread_join(child_threads[i].thread, NULL);
    for (size_t k = 0; k < child_thread_blocks; k++)
      if (child_threads[i].blocks[k].p != NULL)
        free_block(&child_threads[i].blocks[k]);
  }
  CHECK(bmm_heap_check());
}

int main(int argc, char **argv) {
  large_only = argc > 1 && strcmp(argv[1], "large") == 0;
  if (large_only) {
    forks = 10 * FORKS;
    child_ops = CHILD_OPS / 30;
    child_thread_blocks = 10;
  }
  pthread_t threads[PARENT_THREADS];
  for (uintptr_t i = 0; i < PARENT_THREADS; i++)
    if (!CHECK(pthread_create(&threads[i], NULL, parent_worker, (void *)(i + 1)) == 0))
      return check_done();

  uint64_t r = 42;
  int children_ok = 0;
  for (int round = 0; round < forks; round++) {
    /* let the workers run a little between forks */
    struct timespec pause = {0, large_only ? 1000 * 1000 : 5 * 1000 * 1000};
    nanosleep(&pause, NULL);

    block_t from_main, to_grow, from_worker = {0};
    alloc_block(&from_main, 1000 + (size_t)round * 100, (unsigned)check_rand(&r));
    alloc_block(&to_grow, 10 + (size_t)round * 3000, (unsigned)check_rand(&r));
    exchange_take(&from_worker); /* allocated by a worker, maybe none yet */

    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
      /* the counters are the parent's copies: judge only the child's own */
      unsigned long failed_before = check_failed_count();
      alarm(CHILD_TIMEOUT_S); /* a deadlock kills the child with SIGALRM */
      child_main(round, &from_main, &from_worker, &to_grow);
      _exit(check_failed_count() == failed_before ? 0 : 1);
    }
    if (!CHECK(pid > 0)) {
      free_block(&from_main);
      free_block(&to_grow);
      if (from_worker.p)
        free_block(&from_worker);
      break;
    }
    int status = 0;
    pid_t got;
    do {
      got = waitpid(pid, &status, 0);
    } while (got < 0 && errno == EINTR);
    int ok = got == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!CHECK(ok)) {
      if (WIFSIGNALED(status))
        fprintf(stderr, "fork: child %d of round %d killed by signal %d%s\n", (int)pid,
                round, WTERMSIG(status),
                WTERMSIG(status) == SIGALRM ? " (timeout: deadlock?)" : "");
      else
        fprintf(stderr, "fork: child %d of round %d exited with status %d\n", (int)pid,
                round, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    } else {
      children_ok++;
    }
    /* the parent's copies are still its own */
    free_block(&from_main);
    free_block(&to_grow);
    if (from_worker.p)
      free_block(&from_worker);
  }

  atomic_store(&stop_flag, 1);
  for (int i = 0; i < PARENT_THREADS; i++)
    pthread_join(threads[i], NULL);
  block_t b;
  while (exchange_take(&b))
    free_block(&b);
  CHECK(bmm_heap_check());
  printf("fork: %d of %d children succeeded, worker ops %llu\n", children_ok, forks,
         atomic_load(&worker_ops));
  return check_done();
}
