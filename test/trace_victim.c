/* trace_victim.c: a program with a known allocation pattern, recorded by
 * test/trace_smoke.sh under libbrainmm-trace.so.
 *
 *   trace_victim [work|idle|fork]
 *
 * work: two threads allocate and free a fixed pattern through every C entry
 * point the tracer records (malloc, calloc, realloc, realloc(NULL),
 * posix_memalign, aligned_alloc, memalign, valloc, pvalloc, free), with
 * objects handed from thread A to thread B to be reallocated and freed
 * there, and leave a known set of blocks live at exit.
 * idle: the same threads, doing nothing. libc allocates a little of its own
 * (thread descriptors and the like): the difference between the traces of
 * work and idle is exactly what this program did, which it prints as
 *   victim ops=N live_bytes=L live_objects=K
 * (ops = successful calls, free(NULL) excluded; live = requested sizes,
 * pvalloc's rounded up to whole pages as the tracer records them).
 * fork: work, then a child process frees half of the inherited live blocks
 * and allocates a few; it prints "child ops=N" and exits normally, so its
 * trace is written.
 * memalign: the process's first allocation is memalign(24, 100).
 * small: 16 calls; exec: 6,400 calls (some of them written before the
 * exec, the rest lost with it), then exec of this program in "small" (the
 * same pid). underfork: 16 calls, a _Fork child that makes 16 and
 * exits, 16 more. sigfork, sigexit: allocate until a timer's signal
 * handler forks (the child exits at once) and _exits, or calls exit.
 * write-tie FILE: writes a crafted two-chunk trace (no recording).
 * VICTIM_CHDIR=DIR: a constructor changes to DIR before main.
 *
 * Output goes through write(2): stdio would allocate a buffer.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/trace_format.h" /* for the crafted trace only */

enum { ROUNDS = 3000, QUEUE = 64, KEEP_MAX = 4096 };

/* What one thread did. */
typedef struct tally_s {
  long ops;
  long live_bytes;
  long live_objects;
} tally_t;

/* Blocks still live at exit (for the fork child to free). */
typedef struct kept_s {
  void *p;
  size_t size;
} kept_t;
static kept_t kept[2][KEEP_MAX];
static int nkept[2];

/* A -> B handoff: a bounded queue, no allocation. */
static struct {
  pthread_mutex_t lock;
  pthread_cond_t changed;
  void *ptr[QUEUE];
  size_t size[QUEUE];
  int head, count;
  int done;
} q = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {0}, {0}, 0, 0, 0};

static void put(void *p, size_t size) {
  pthread_mutex_lock(&q.lock);
  while (q.count == QUEUE)
    pthread_cond_wait(&q.changed, &q.lock);
  int slot = (q.head + q.count) % QUEUE;
  q.ptr[slot] = p;
  q.size[slot] = size;
  q.count++;
  pthread_cond_broadcast(&q.changed);
  pthread_mutex_unlock(&q.lock);
}

/* 0 when the producer is finished and the queue empty. */
static int take(void **p, size_t *size) {
  pthread_mutex_lock(&q.lock);
  while (q.count == 0 && !q.done)
    pthread_cond_wait(&q.changed, &q.lock);
  int got = q.count > 0;
  if (got) {
    *p = q.ptr[q.head];
    *size = q.size[q.head];
    q.head = (q.head + 1) % QUEUE;
    q.count--;
    pthread_cond_broadcast(&q.changed);
  }
  pthread_mutex_unlock(&q.lock);
  return got;
}

static void die(const char *what) __attribute__((noreturn));
static void die(const char *what) {
  ssize_t unused = write(2, what, strlen(what));
  (void)unused;
  _exit(3);
}

static void keep(int who, tally_t *t, void *p, size_t size) {
  if (nkept[who] == KEEP_MAX) die("trace_victim: too many kept blocks\n");
  kept[who][nkept[who]++] = (kept_t){p, size};
  t->live_bytes += (long)size;
  t->live_objects++;
}

static void *thread_a(void *arg) {
  tally_t *t = arg;
  for (int i = 0; i < ROUNDS; i++) {
    size_t size = 16 + (size_t)(i * 7919) % 3000, rec = size;
    if (i % 500 == 499) size = rec = 300 * 1024; /* above glibc's mmap threshold */
    void *p = NULL;
    switch (i % 10) {
    case 5:
      p = calloc(3, size / 3 + 1);
      rec = 3 * (size / 3 + 1);
      break;
    case 6:
      if (posix_memalign(&p, 64, size) != 0) p = NULL;
      break;
    case 7:
      rec = 256 * (size_t)(1 + i % 4);
      p = aligned_alloc(256, rec);
      break;
    case 8:
      p = memalign(32, size);
      break;
    case 9:
      p = realloc(NULL, size);
      break;
    default:
      p = malloc(size);
      break;
    }
    if (p == NULL) die("trace_victim: allocation failed\n");
    memset(p, i & 0xff, rec);
    t->ops++;
    if (i % 3 == 0) {
      size_t bigger = rec + 100 + (size_t)i % 700;
      p = realloc(p, bigger);
      if (p == NULL) die("trace_victim: realloc failed\n");
      rec = bigger;
      t->ops++;
    }
    if (i % 50 == 0) {
      void *v = valloc(1000);
      if (v == NULL) die("trace_victim: valloc failed\n");
      free(v);
      t->ops += 2;
    }
    free(NULL); /* not recorded, not counted */
    switch (i % 4) {
    case 0:
      put(p, rec); /* B reallocates or frees it: B counts those */
      t->live_bytes += (long)rec;
      t->live_objects++;
      break;
    case 1:
      keep(0, t, p, rec);
      break;
    default:
      free(p);
      t->ops++;
      break;
    }
  }
  void *pv = pvalloc(100); /* recorded as one whole page */
  if (pv == NULL) die("trace_victim: pvalloc failed\n");
  t->ops++;
  keep(0, t, pv, (size_t)sysconf(_SC_PAGESIZE));
  pthread_mutex_lock(&q.lock);
  q.done = 1;
  pthread_cond_broadcast(&q.changed);
  pthread_mutex_unlock(&q.lock);
  return NULL;
}

static void *thread_b(void *arg) {
  tally_t *t = arg;
  void *p;
  size_t size;
  for (int n = 0; take(&p, &size); n++) {
    /* an object of thread A: gone from A's live set, in any case */
    t->live_bytes -= (long)size;
    t->live_objects--;
    if (n % 2 == 0) {
      size_t smaller = size / 2 + 1;
      p = realloc(p, smaller);
      if (p == NULL) die("trace_victim: realloc failed\n");
      t->ops++;
    }
    if (n % 5 == 4) {
      keep(1, t, p, n % 2 == 0 ? size / 2 + 1 : size);
    } else {
      free(p);
      t->ops++;
    }
    /* and some of B's own */
    void *mine = malloc(24 + (size_t)n % 200);
    if (mine == NULL) die("trace_victim: malloc failed\n");
    t->ops++;
    if (n % 7 == 0) {
      keep(1, t, mine, 24 + (size_t)n % 200);
    } else {
      free(mine);
      t->ops++;
    }
  }
  return NULL;
}

static void *thread_idle(void *arg) {
  return arg;
}

static void say(const char *label, long ops, long bytes, long objects) {
  char line[160];
  int n = snprintf(line, sizeof line, "%s ops=%ld live_bytes=%ld live_objects=%ld\n", label, ops,
                   bytes, objects);
  ssize_t unused = write(1, line, (size_t)n);
  (void)unused;
}

static void child_after_fork(void) {
  long ops = 0;
  for (int who = 0; who < 2; who++)
    for (int i = 0; i < nkept[who]; i += 2) {
      free(kept[who][i].p);
      ops++;
    }
  for (int i = 0; i < 100; i++) {
    void *p = malloc(64 + (size_t)i);
    if (p == NULL) die("trace_victim: child malloc failed\n");
    ops++;
    if (i % 2) {
      free(p);
      ops++;
    }
  }
  say("child", ops, 0, 0);
  exit(0); /* normally, so the tracer's destructor writes the child's trace */
}

/* Before the tracer's first call: a constructor that moves elsewhere
 * (VICTIM_CHDIR). A relative trace name is from where the program started. */
__attribute__((constructor)) static void maybe_chdir(void) {
  const char *dir = getenv("VICTIM_CHDIR");
  if (dir != NULL && chdir(dir) != 0) die("trace_victim: chdir failed\n");
}

/* A few calls that the tracer records, and the count of them. */
static long small_work(void) {
  void *keep[8];
  for (int i = 0; i < 8; i++)
    keep[i] = malloc(100 + (size_t)i);
  for (int i = 0; i < 8; i++)
    free(keep[i]);
  return 16;
}

/* _Fork: a child that skips the fork handlers allocates and exits
 * normally; the parent goes on. The parent's trace must stay whole. */
pid_t _Fork(void);
static int mode_underfork(void) {
  long ops = small_work();
  pid_t pid = _Fork();
  if (pid < 0) die("trace_victim: _Fork failed\n");
  if (pid == 0) {
    small_work();
    exit(0);
  }
  int status;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    die("trace_victim: _Fork child failed\n");
  ops += small_work();
  say("underfork", ops, 0, 0);
  return 0;
}

/* A signal handler calls fork() or exit() while the program allocates, so
 * that it interrupts one of the tracer's calls now and then. */
static volatile sig_atomic_t signal_exit;
static void on_alarm(int sig) {
  (void)sig;
  if (signal_exit) exit(0);
  pid_t pid = fork();
  if (pid == 0) _exit(0);
  waitpid(pid, NULL, 0);
  _exit(0);
}
static int mode_signal(int do_exit) {
  signal_exit = do_exit;
  signal(SIGALRM, on_alarm);
  struct itimerval it = {{0, 0}, {0, 20000 + (getpid() % 50) * 1000}};
  setitimer(ITIMER_REAL, &it, NULL);
  void *volatile held[64] = {0};
  for (unsigned long i = 0;; i++) {
    free(held[i % 64]);
    held[i % 64] = malloc(16 + i % 256);
  }
}

/* A trace written by hand: thread 1's chunk, then thread 0's, both at time
 * 100: thread 1 frees the object thread 0 allocates. Equal times take the
 * op rank's order (allocation first) whatever the file order. */
static int mode_write_tie(const char *path) {
  bmm_trace_header_t h = {0};
  memcpy(h.magic, BMM_TRACE_MAGIC, sizeof h.magic);
  h.version = BMM_TRACE_VERSION;
  h.header_size = sizeof h;
  h.record_size = sizeof(bmm_trace_record_t);
  h.tick_ns = 1;
  bmm_trace_record_t r[4] = {
      {BMM_TRACE_OP_TIME, 0, 1, 0, 100, 0},
      {BMM_TRACE_OP_FREE, 0, 1, 0, 7, bmm__trace_pack(1000, 0)},
      {BMM_TRACE_OP_TIME, 0, 0, 0, 100, 0},
      {BMM_TRACE_OP_MALLOC, 0, 0, 0, 7, bmm__trace_pack(1000, 0)},
  };
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0 || write(fd, &h, sizeof h) != (ssize_t)sizeof h ||
      write(fd, r, sizeof r) != (ssize_t)sizeof r)
    die("trace_victim: cannot write the crafted trace\n");
  close(fd);
  return 0;
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "work";
  /* The process's first allocation is a memalign the next allocator
   * rounds up (glibc: alignment 24 to 32). */
  if (strcmp(mode, "memalign") == 0) {
    void *p = memalign(24, 100);
    if (p == NULL) die("trace_victim: memalign(24, 100) failed\n");
    free(p);
    say("memalign", 2, 0, 0);
    return 0;
  }
  if (strcmp(mode, "small") == 0) {
    say("small", small_work(), 0, 0);
    return 0;
  }
  if (strcmp(mode, "exec") == 0) { /* then the same pid runs "small" */
    for (int i = 0; i < 400; i++)  /* 6,400 records: at least one buffer written */
      small_work();
    execl("/proc/self/exe", argv[0], "small", (char *)NULL);
    die("trace_victim: exec failed\n");
  }
  if (strcmp(mode, "underfork") == 0) return mode_underfork();
  if (strcmp(mode, "sigfork") == 0) return mode_signal(0);
  if (strcmp(mode, "sigexit") == 0) return mode_signal(1);
  if (strcmp(mode, "write-tie") == 0 && argc > 2) return mode_write_tie(argv[2]);
  int work = strcmp(mode, "idle") != 0;
  if (strcmp(mode, "work") && strcmp(mode, "idle") && strcmp(mode, "fork"))
    die("usage: trace_victim [work|idle|fork|memalign|small|exec|underfork|sigfork|sigexit]\n"
        "       trace_victim write-tie FILE\n");
  tally_t ta = {0}, tb = {0};
  pthread_t a, b;
  if (work) {
    if (pthread_create(&a, NULL, thread_a, &ta) || pthread_create(&b, NULL, thread_b, &tb))
      die("trace_victim: pthread_create failed\n");
  } else {
    /* the same thread creation, nothing done */
    if (pthread_create(&a, NULL, thread_idle, NULL) || pthread_create(&b, NULL, thread_idle, NULL))
      die("trace_victim: pthread_create failed\n");
  }
  pthread_join(a, NULL);
  pthread_join(b, NULL);
  say("victim", ta.ops + tb.ops, ta.live_bytes + tb.live_bytes, ta.live_objects + tb.live_objects);
  if (strcmp(mode, "fork") == 0) {
    pid_t pid = fork();
    if (pid < 0) die("trace_victim: fork failed\n");
    if (pid == 0) child_after_fork();
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
      die("trace_victim: child failed\n");
  }
  return 0; /* the kept blocks stay live: that is the point */
}
