/* stress.c - multi-threaded stress test of the bmm_ allocation calls.
 *
 *   stress [THREADS [SECONDS [SEED]]]      (defaults 4, 2, 42; without
 *   arguments STRESS_THREADS, STRESS_SECONDS and STRESS_SEED are read)
 *
 * THREADS workers run at all times until SECONDS have passed. Each keeps a
 * working set of slots and at random frees a block, allocates one (sizes
 * mostly 16..1024, some up to 64 KiB, rarely up to 4 MiB; through malloc,
 * calloc, posix_memalign, aligned_alloc, memalign or valloc), reallocates one,
 * or hands one to a shared exchange from which any thread takes blocks and
 * frees them, so many blocks are freed by another thread than the one that
 * allocated them. Each worker runs a random number of iterations, hands its
 * remaining blocks to the exchange and exits; the main thread starts a new
 * worker in its place, so heaps of exited threads are abandoned and reused.
 *
 * Every block holds in its first 16 bytes a per-block seed and its requested
 * size; the rest is filled with a pattern derived from the block's address and
 * that seed (whole blocks up to 64 KiB, the first and last 256 bytes of bigger
 * ones). The pattern is checked before every free and the kept prefix after
 * every realloc; calloc'd memory is checked to be zero; alignments and usable
 * sizes are checked. Meanwhile another thread runs bmm_heap_check() over and
 * over (not under TSan), and every check must pass. Only the bmm_ API
 * allocates test blocks, so the test also runs in sanitizer builds where
 * malloc belongs to the sanitizer.
 */
#define _GNU_SOURCE
#include <brainmm.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

#define KiB ((size_t)1024)
#define MiB (KiB * 1024)

enum {
  MAX_THREADS = 64,
  SLOTS = 256,            /* working set of one worker */
  EXCHANGE_CAP = 4096,    /* blocks waiting in the exchange */
  HEADER = 16,            /* seed and size at the start of every block */
  EDGE = 256,             /* bytes checked at each end of a big block */
  MAX_DETAILS = 20,       /* corruption reports printed in full */
};
#define FULL_CHECK_LIMIT (64 * KiB) /* blocks up to this are checked whole */

enum kind { K_MALLOC, K_CALLOC, K_REALLOC, K_POSIX_MEMALIGN, K_ALIGNED_ALLOC, K_MEMALIGN, K_VALLOC };
static const char *const kind_name[] = {"malloc",         "calloc",        "realloc",
                                        "posix_memalign", "aligned_alloc", "memalign",
                                        "valloc"};

typedef struct block {
  unsigned char *p; /* NULL: empty slot */
  size_t size;      /* requested size, >= HEADER */
  size_t align;     /* requested alignment, 0 for plain blocks */
  uint64_t seed;
  unsigned owner;   /* serial number of the allocating thread (0: main) */
  enum kind kind;
} block_t;

typedef struct worker {
  pthread_t thread;
  unsigned serial;
  int running;  /* protected by done_lock */
  int finished; /* protected by done_lock */
  uint64_t rng;
  unsigned long long ops, allocs, frees, reallocs, gives, cross_frees;
  unsigned long long bad_pattern, bad_align, bad_usable, bad_zero, alloc_failed;
  block_t slots[SLOTS];
} worker_t;

/* ---- shared state ------------------------------------------------------- */

static atomic_int stop_flag;
/* bmm_heap_check() from a thread of its own while the workers run: a
 * healthy heap must pass however busy the other threads are. */
static atomic_ulong heap_checks, heap_check_failures;
static atomic_int details_printed;

static pthread_mutex_t exchange_lock = PTHREAD_MUTEX_INITIALIZER;
static block_t exchange[EXCHANGE_CAP]; /* protected by exchange_lock */
static size_t exchange_count;          /* protected by exchange_lock */

static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond;
static worker_t workers[MAX_THREADS];

static struct {
  atomic_ullong ops, allocs, frees, reallocs, gives, cross_frees, threads;
  atomic_ullong bad_pattern, bad_align, bad_usable, bad_zero, alloc_failed;
} totals;

static uint64_t global_seed;

/* ---- random numbers and patterns --------------------------------------- */

static uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

static size_t rnd_below(uint64_t *state, size_t n) { return (size_t)(check_rand(state) % n); }

static uint64_t block_key(uintptr_t addr, uint64_t seed) {
  return mix64((uint64_t)addr ^ (seed * 0x9e3779b97f4a7c15ULL));
}

static unsigned char pattern_at(uint64_t key, size_t i) {
  return (unsigned char)((key >> ((i & 7) * 8)) ^ (i >> 3) ^ (i >> 11));
}

/* The filled part of a block of `size` bytes is [HEADER, size) for blocks up
 * to FULL_CHECK_LIMIT, else [HEADER, EDGE) and [size - EDGE, size). These
 * helpers visit it restricted to offsets below `limit`. */
static void fill_range(unsigned char *p, size_t from, size_t to, uint64_t key) {
  for (size_t i = from; i < to; i++)
    p[i] = pattern_at(key, i);
}

static void fill_block(unsigned char *p, size_t size, uint64_t key) {
  if (size <= FULL_CHECK_LIMIT) {
    fill_range(p, HEADER, size, key);
  } else {
    fill_range(p, HEADER, EDGE, key);
    fill_range(p, size - EDGE, size, key);
  }
}

/* First offset in [from, to) that does not hold the pattern, or SIZE_MAX. */
static size_t check_range(const unsigned char *p, size_t from, size_t to, uint64_t key) {
  for (size_t i = from; i < to; i++)
    if (p[i] != pattern_at(key, i))
      return i;
  return SIZE_MAX;
}

static size_t check_filled(const unsigned char *p, size_t size, size_t limit, uint64_t key) {
  size_t lim = limit < size ? limit : size;
  if (size <= FULL_CHECK_LIMIT)
    return check_range(p, HEADER, lim, key);
  size_t bad = check_range(p, HEADER, lim < EDGE ? lim : EDGE, key);
  if (bad == SIZE_MAX && lim > size - EDGE)
    bad = check_range(p, size - EDGE, lim, key);
  return bad;
}

static void report(const char *what, const block_t *b, const void *at, size_t offset,
                   unsigned self) {
  if (atomic_fetch_add(&details_printed, 1) >= MAX_DETAILS)
    return;
  fprintf(stderr,
          "stress: %s: block %p (now at %p) size %zu align %zu from %s by thread %u, "
          "offset %zu, in thread %u\n",
          what, (void *)b->p, at, b->size, b->align, kind_name[b->kind], b->owner,
          offset, self);
}

/* ---- block operations --------------------------------------------------- */

static void write_header(unsigned char *p, uint64_t seed, size_t size) {
  uint64_t sz = size;
  memcpy(p, &seed, 8);
  memcpy(p + 8, &sz, 8);
}

/* Checks the header and the pattern of b (at its own address, or at `at`
 * after a realloc moved it), up to offset `limit`. Returns 1 when intact. */
static int verify(worker_t *w, const block_t *b, const unsigned char *at, size_t limit,
                  unsigned self) {
  uint64_t seed, size;
  memcpy(&seed, at, 8);
  memcpy(&size, at + 8, 8);
  if (seed != b->seed || size != b->size) {
    w->bad_pattern++;
    report("header overwritten", b, at, 0, self);
    return 0;
  }
  size_t bad = check_filled(at, b->size, limit, block_key((uintptr_t)b->p, b->seed));
  if (bad != SIZE_MAX) {
    w->bad_pattern++;
    report("pattern corrupted", b, at, bad, self);
    return 0;
  }
  return 1;
}

static size_t random_size(uint64_t *r) {
  size_t pick = rnd_below(r, 1000);
  if (pick < 900) /* 16..1024, skewed towards the small end */
    return 16 + rnd_below(r, 1 + rnd_below(r, 1009));
  if (pick < 995)
    return 1025 + rnd_below(r, 64 * KiB - 1024);
  return 64 * KiB + rnd_below(r, 4 * MiB - 64 * KiB + 1);
}

static size_t random_align(uint64_t *r) {
  size_t shift = 4 + rnd_below(r, 9); /* 16 .. 4096 */
  if (rnd_below(r, 64) == 0)
    shift = 13 + rnd_below(r, 4); /* 8 KiB .. 64 KiB */
  return (size_t)1 << shift;
}

static void allocate(worker_t *w, block_t *b) {
  uint64_t *r = &w->rng;
  size_t size = random_size(r);
  size_t align = 0;
  enum kind kind;
  unsigned char *p = NULL;
  size_t pick = rnd_below(r, 100);
  if (pick < 60) {
    kind = K_MALLOC;
    p = bmm_malloc(size);
  } else if (pick < 70) {
    kind = K_CALLOC;
    size_t elem = (size_t)1 << rnd_below(r, 4);
    size = (size + elem - 1) / elem * elem;
    p = bmm_calloc(size / elem, elem);
  } else if (pick < 80) {
    kind = K_POSIX_MEMALIGN;
    align = random_align(r);
    void *out = NULL;
    int rc = bmm_posix_memalign(&out, align, size);
    p = rc == 0 ? out : NULL;
  } else if (pick < 88) {
    kind = K_ALIGNED_ALLOC;
    align = random_align(r);
    if (rnd_below(r, 2)) /* half of them with a size that is a multiple */
      size = (size + align - 1) / align * align;
    p = bmm_aligned_alloc(align, size);
  } else if (pick < 96) {
    kind = K_MEMALIGN;
    align = random_align(r);
    p = bmm_memalign(align, size);
  } else {
    kind = K_VALLOC;
    align = 4096; /* the page size on every platform this runs on */
    p = bmm_valloc(size);
  }
  if (p == NULL) {
    w->alloc_failed++;
    if (atomic_fetch_add(&details_printed, 1) < MAX_DETAILS)
      fprintf(stderr, "stress: %s of %zu (align %zu) failed, errno %d\n", kind_name[kind],
              size, align, errno);
    b->p = NULL;
    return;
  }
  w->allocs++;
  if (((uintptr_t)p & (BMM_MIN_ALIGN - 1)) != 0 ||
      (align != 0 && ((uintptr_t)p & (align - 1)) != 0)) {
    w->bad_align++;
    if (atomic_fetch_add(&details_printed, 1) < MAX_DETAILS)
      fprintf(stderr, "stress: %s(align %zu, size %zu) = %p is misaligned\n",
              kind_name[kind], align, size, (void *)p);
  }
  if (bmm_usable_size(p) < size) {
    w->bad_usable++;
    if (atomic_fetch_add(&details_printed, 1) < MAX_DETAILS)
      fprintf(stderr, "stress: %s(%zu) = %p has usable size %zu\n", kind_name[kind], size,
              (void *)p, bmm_usable_size(p));
  }
  if (kind == K_CALLOC) {
    size_t n = size <= FULL_CHECK_LIMIT ? size : EDGE;
    int zero = 1;
    for (size_t i = 0; i < n; i++)
      zero &= p[i] == 0;
    if (size > FULL_CHECK_LIMIT)
      for (size_t i = size - n; i < size; i++)
        zero &= p[i] == 0;
    if (!zero) {
      w->bad_zero++;
      if (atomic_fetch_add(&details_printed, 1) < MAX_DETAILS)
        fprintf(stderr, "stress: calloc(%zu) = %p is not zeroed\n", size, (void *)p);
    }
  }
  b->p = p;
  b->size = size;
  b->align = align;
  b->seed = check_rand(r);
  b->owner = w->serial;
  b->kind = kind;
  write_header(p, b->seed, size);
  fill_block(p, size, block_key((uintptr_t)p, b->seed));
}

/* Verifies and frees b, with the free call that fits how it was allocated. */
static void release(worker_t *w, block_t *b, unsigned self) {
  verify(w, b, b->p, b->size, self);
  int sized = rnd_below(&w->rng, 2) != 0;
  switch (b->kind) {
  case K_MALLOC:
  case K_CALLOC:
  case K_REALLOC:
    if (sized)
      bmm_free_sized(b->p, b->size);
    else
      bmm_free(b->p);
    break;
  case K_ALIGNED_ALLOC:
    if (sized)
      bmm_free_aligned_sized(b->p, b->align, b->size);
    else
      bmm_free(b->p);
    break;
  default:
    bmm_free(b->p);
    break;
  }
  if (b->owner != self)
    w->cross_frees++;
  w->frees++;
  b->p = NULL;
}

static void reallocate(worker_t *w, block_t *b) {
  if (!verify(w, b, b->p, b->size, w->serial)) {
    /* corrupted already: do not carry the damage into the new block */
    release(w, b, w->serial);
    return;
  }
  size_t size = random_size(&w->rng);
  unsigned char *q;
  if (rnd_below(&w->rng, 4) == 0 && size % 4 == 0)
    q = bmm_reallocarray(b->p, size / 4, 4);
  else
    q = bmm_realloc(b->p, size);
  if (q == NULL) {
    w->alloc_failed++;
    if (atomic_fetch_add(&details_printed, 1) < MAX_DETAILS)
      fprintf(stderr, "stress: realloc(%p, %zu) failed, errno %d\n", (void *)b->p, size,
              errno);
    return; /* the old block stays valid and is freed later */
  }
  w->reallocs++;
  if (((uintptr_t)q & (BMM_MIN_ALIGN - 1)) != 0) {
    w->bad_align++;
    if (atomic_fetch_add(&details_printed, 1) < MAX_DETAILS)
      fprintf(stderr, "stress: realloc(..., %zu) = %p is misaligned\n", size, (void *)q);
  }
  if (bmm_usable_size(q) < size)
    w->bad_usable++;
  /* the kept prefix still holds the old header and pattern, keyed on the old
   * address (b->p is only used as a number from here on) */
  verify(w, b, q, size, w->serial);
  b->p = q;
  b->size = size;
  b->align = 0;
  b->kind = K_REALLOC;
  b->owner = w->serial;
  b->seed = check_rand(&w->rng);
  write_header(q, b->seed, size);
  fill_block(q, size, block_key((uintptr_t)q, b->seed));
}

/* ---- the exchange ------------------------------------------------------- */

/* Puts b in the exchange. When it is full, a random waiting block comes back
 * out in its place and the caller frees it. */
static void give(worker_t *w, block_t *b) {
  block_t evicted = {0};
  pthread_mutex_lock(&exchange_lock);
  if (exchange_count < EXCHANGE_CAP) {
    exchange[exchange_count++] = *b;
  } else {
    size_t j = rnd_below(&w->rng, EXCHANGE_CAP);
    evicted = exchange[j];
    exchange[j] = *b;
  }
  pthread_mutex_unlock(&exchange_lock);
  b->p = NULL;
  w->gives++;
  if (evicted.p != NULL)
    release(w, &evicted, w->serial);
}

/* Takes a random block out of the exchange and frees it. */
static void take_and_free(worker_t *w) {
  block_t b = {0};
  pthread_mutex_lock(&exchange_lock);
  if (exchange_count > 0) {
    size_t j = rnd_below(&w->rng, exchange_count);
    b = exchange[j];
    exchange[j] = exchange[--exchange_count];
  }
  pthread_mutex_unlock(&exchange_lock);
  if (b.p != NULL)
    release(w, &b, w->serial);
}

/* ---- workers ------------------------------------------------------------ */

static void *worker_main(void *arg) {
  worker_t *w = arg;
  size_t iterations = 5000 + rnd_below(&w->rng, 40000);
  for (size_t it = 0; it < iterations; it++) {
    if ((it & 127) == 0 && atomic_load_explicit(&stop_flag, memory_order_relaxed))
      break;
    block_t *b = &w->slots[rnd_below(&w->rng, SLOTS)];
    if (b->p == NULL) {
      allocate(w, b);
    } else {
      size_t pick = rnd_below(&w->rng, 100);
      if (pick < 40) {
        release(w, b, w->serial);
      } else if (pick < 60) {
        reallocate(w, b);
      } else if (pick < 75) {
        give(w, b);
      } else {
        release(w, b, w->serial);
        allocate(w, b);
      }
    }
    if (rnd_below(&w->rng, 4) == 0)
      take_and_free(w);
    w->ops++;
  }
  /* leave: the remaining blocks go to the exchange for other threads */
  for (size_t i = 0; i < SLOTS; i++)
    if (w->slots[i].p != NULL)
      give(w, &w->slots[i]);

  atomic_fetch_add(&totals.ops, w->ops);
  atomic_fetch_add(&totals.allocs, w->allocs);
  atomic_fetch_add(&totals.frees, w->frees);
  atomic_fetch_add(&totals.reallocs, w->reallocs);
  atomic_fetch_add(&totals.gives, w->gives);
  atomic_fetch_add(&totals.cross_frees, w->cross_frees);
  atomic_fetch_add(&totals.bad_pattern, w->bad_pattern);
  atomic_fetch_add(&totals.bad_align, w->bad_align);
  atomic_fetch_add(&totals.bad_usable, w->bad_usable);
  atomic_fetch_add(&totals.bad_zero, w->bad_zero);
  atomic_fetch_add(&totals.alloc_failed, w->alloc_failed);

  pthread_mutex_lock(&done_lock);
  w->finished = 1;
  pthread_cond_signal(&done_cond);
  pthread_mutex_unlock(&done_lock);
  return NULL;
}

/* Not under TSan: the check reads other threads' page descriptors
 * without synchronising with them, by design (README, bmm_heap_check). */
static void *checker_main(void *arg) {
  (void)arg;
  while (!atomic_load(&stop_flag)) {
    if (!bmm_heap_check()) atomic_fetch_add(&heap_check_failures, 1);
    atomic_fetch_add(&heap_checks, 1);
  }
  return NULL;
}

static unsigned next_serial = 1; /* main thread only */

/* Starts a worker in slot i; done_lock is held by the caller. */
static int start_worker(size_t i) {
  worker_t *w = &workers[i];
  memset(w, 0, sizeof *w);
  w->serial = next_serial++;
  w->rng = mix64(global_seed * 0x9e3779b97f4a7c15ULL + w->serial) | 1;
  w->running = 1;
  int rc = pthread_create(&w->thread, NULL, worker_main, w);
  if (rc != 0) {
    w->running = 0;
    fprintf(stderr, "stress: pthread_create failed: %d\n", rc);
    return 0;
  }
  atomic_fetch_add(&totals.threads, 1);
  return 1;
}

static unsigned long parse_arg(int argc, char **argv, int i, const char *env,
                               unsigned long def) {
  const char *s = argc > i ? argv[i] : getenv(env);
  if (s == NULL || *s == '\0')
    return def;
  char *end;
  unsigned long v = strtoul(s, &end, 10);
  return *end == '\0' ? v : def;
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  size_t threads = parse_arg(argc, argv, 1, "STRESS_THREADS", 4);
  unsigned long seconds = parse_arg(argc, argv, 2, "STRESS_SECONDS", 2);
  global_seed = parse_arg(argc, argv, 3, "STRESS_SEED", 42);
  if (threads < 1)
    threads = 1;
  if (threads > MAX_THREADS)
    threads = MAX_THREADS;
  printf("stress: %zu threads, %lu seconds, seed %llu\n", threads, seconds,
         (unsigned long long)global_seed);
  fflush(stdout);

  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&done_cond, &ca);
  pthread_condattr_destroy(&ca);

  double deadline = now_seconds() + (double)seconds;
  int started_ok = 1;
  pthread_t checker;
  if (!CHECK_TSAN) CHECK(pthread_create(&checker, NULL, checker_main, NULL) == 0);
  pthread_mutex_lock(&done_lock);
  for (size_t i = 0; i < threads; i++)
    started_ok &= start_worker(i);
  /* keep THREADS workers alive until the time is up */
  while (now_seconds() < deadline) {
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_nsec += 50 * 1000 * 1000;
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec++;
      until.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&done_cond, &done_lock, &until);
    for (size_t i = 0; i < threads; i++) {
      if (workers[i].running && workers[i].finished) {
        pthread_join(workers[i].thread, NULL);
        workers[i].running = 0;
        if (now_seconds() < deadline)
          started_ok &= start_worker(i);
      }
    }
  }
  atomic_store(&stop_flag, 1);
  pthread_mutex_unlock(&done_lock);
  for (size_t i = 0; i < threads; i++) {
    if (workers[i].running) {
      pthread_join(workers[i].thread, NULL);
      workers[i].running = 0;
    }
  }
  CHECK(started_ok);
  if (!CHECK_TSAN) {
    pthread_join(checker, NULL);
    printf("stress: heap checks alongside the workers %lu, failed %lu\n",
           atomic_load(&heap_checks), atomic_load(&heap_check_failures));
    CHECK(atomic_load(&heap_checks) > 0);
    CHECK_EQ_SZ(atomic_load(&heap_check_failures), 0);
  }

  /* the main thread frees whatever is left in the exchange */
  static worker_t main_worker; /* serial 0 */
  main_worker.rng = mix64(global_seed) | 1;
  while (exchange_count > 0)
    take_and_free(&main_worker);
  atomic_fetch_add(&totals.frees, main_worker.frees);
  atomic_fetch_add(&totals.cross_frees, main_worker.cross_frees);
  atomic_fetch_add(&totals.bad_pattern, main_worker.bad_pattern);

  unsigned long long allocs = atomic_load(&totals.allocs);
  unsigned long long frees = atomic_load(&totals.frees);
  printf("stress: threads started %llu, ops %llu, allocs %llu, frees %llu, reallocs %llu, "
         "handed over %llu, cross-thread frees %llu\n",
         atomic_load(&totals.threads), atomic_load(&totals.ops), allocs, frees,
         atomic_load(&totals.reallocs), atomic_load(&totals.gives),
         atomic_load(&totals.cross_frees));
  fflush(stdout);

  CHECK(atomic_load(&totals.ops) > 0);
  CHECK_EQ_SZ(allocs, frees); /* every block was freed exactly once */
  CHECK(atomic_load(&totals.cross_frees) > 0);
  CHECK_EQ_SZ(atomic_load(&totals.bad_pattern), 0);
  CHECK_EQ_SZ(atomic_load(&totals.bad_align), 0);
  CHECK_EQ_SZ(atomic_load(&totals.bad_usable), 0);
  CHECK_EQ_SZ(atomic_load(&totals.bad_zero), 0);
  CHECK_EQ_SZ(atomic_load(&totals.alloc_failed), 0);
  CHECK(bmm_heap_check());
  return check_done();
}
