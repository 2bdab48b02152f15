/* stats.c: section 10 introspection: bmm_stats_print writes the memory
 * accounting, the blocks per size class by all threads (allocated, freed,
 * in use, peak in use: exact for what this one thread did) and the
 * calling thread's pages per class, and the large blocks (as a table, and
 * as JSON with stats_json=1) through the callback given; bmm_stats_reset
 * restarts the counts; show_stats=1
 * from the environment prints it at exit (in a child process, also one
 * that closes its stderr in an atexit handler); the
 * deferred-free hook runs regularly from the slow path with a growing
 * heartbeat, is not re-entered when it allocates (also when a first-class
 * heap's slow path called it), gets force=true from bmm_collect(true), and
 * always gets its own argument while registrations change under a thread
 * that allocates.
 */
#define _GNU_SOURCE
#include <brainmm.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static char text[1 << 16];
static size_t text_len;

static void collect(const char *chunk, void *arg) {
  CHECK(arg == (void *)text);
  size_t n = strlen(chunk);
  if (text_len + n < sizeof text) {
    memcpy(text + text_len, chunk, n);
    text_len += n;
    text[text_len] = 0;
  }
}

static unsigned long long calls, forced, last_beat, inner_calls;
static int depth;

static void hook(bool force, unsigned long long heartbeat, void *arg) {
  CHECK(arg == &calls);
  if (depth++ != 0) inner_calls++; /* must never happen */
  calls++;
  if (force) forced++;
  CHECK(heartbeat >= last_beat);
  last_beat = heartbeat;
  free(malloc(64)); /* may allocate: not called again meanwhile */
  depth--;
}

/* The hook again, run from a first-class heap's slow path: its own
 * allocations (BrainMM's, whatever malloc is) reach the default heap's
 * slow path, which must not call it again on this thread; and the
 * heartbeat it sees, from either heap, never goes back. */
static void *hook_keep[64];
static unsigned hook_next;
static void view_hook(bool force, unsigned long long heartbeat, void *arg) {
  CHECK(arg == &calls);
  if (depth++ != 0) inner_calls++; /* must never happen */
  calls++;
  (void)force;
  CHECK(heartbeat >= last_beat);
  last_beat = heartbeat;
  for (int i = 0; i < 8; i++) { /* blocks of a few KiB: new pages now and then */
    unsigned j = hook_next++ % 64;
    bmm_free(hook_keep[j]);
    hook_keep[j] = bmm_malloc(4000 + (calls % 7) * 512);
  }
  depth--;
}

/* Registrations switching between two hooks and none while a thread
 * allocates: a hook must always get its own argument. */
static int cookie_a, cookie_b;
static atomic_ulong race_calls, wrong_arg;
static atomic_bool race_stop;
static void race_hook_a(bool force, unsigned long long heartbeat, void *arg) {
  (void)force, (void)heartbeat;
  atomic_fetch_add(&race_calls, 1);
  if (arg != &cookie_a) atomic_fetch_add(&wrong_arg, 1);
}
static void race_hook_b(bool force, unsigned long long heartbeat, void *arg) {
  (void)force, (void)heartbeat;
  atomic_fetch_add(&race_calls, 1);
  if (arg != &cookie_b) atomic_fetch_add(&wrong_arg, 1);
}
static void *race_worker(void *arg) {
  (void)arg;
  void *held[64] = {0};
  for (unsigned i = 0; !atomic_load(&race_stop); i++) { /* 16 KiB blocks: a slow path often */
    bmm_free(held[i % 64]);
    held[i % 64] = bmm_malloc(16000 + (i % 8) * 1024);
  }
  for (int j = 0; j < 64; j++) bmm_free(held[j]);
  return NULL;
}

/* The JSON row of the 1280-byte class, printed by a thread of its own
 * (into `text`: main waits for it meanwhile). */
static unsigned long row_1280[3];
static void *print_1280_row(void *arg) {
  (void)arg;
  text_len = 0;
  bmm_stats_print(collect, text);
  const char *r = strstr(text, "{\"block_size\": 1280, ");
  CHECK(r != NULL && sscanf(r, "{\"block_size\": 1280, \"allocated\": %lu, \"freed\": %lu, "
                               "\"in_use\": %lu",
                            &row_1280[0], &row_1280[1], &row_1280[2]) == 3);
  return NULL;
}

/* A signal handler that allocates (slow paths: they read the hook),
 * registers and forks while the thread it interrupted may be inside a
 * registration. */
static volatile sig_atomic_t signals_handled;
static void on_alarm(int sig) {
  (void)sig;
  static unsigned n;
  for (int i = 0; i < 4; i++) bmm_free(bmm_malloc(2048 + (n++ % 40) * 1024));
  /* A registration inside the one interrupted: that one decides. */
  if (signals_handled % 4 == 1) bmm_register_deferred_free(race_hook_b, &cookie_b);
  if (signals_handled % 8 == 0) {
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
  }
  signals_handled++;
}

static void close_stderr(void) {
  close(STDERR_FILENO);
}

static void exec_show_stats(void *extra) {
  setenv("BMM_SHOW_STATS", "1", 1);
  execl("/proc/self/exe", "stats", "--child", (const char *)extra, (char *)NULL);
  _exit(127);
}

/* Runs this program with BMM_SHOW_STATS=1 and the child argument `extra`;
 * returns what it wrote to stderr (in buf) after checking it exited 0. */
static void run_show_stats_child(const char *extra, char *buf, size_t cap) {
  int lines;
  int status = check_child(exec_show_stats, (void *)(uintptr_t)extra, buf, cap, &lines);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* A thread that leaves 5000 blocks of the 640-byte class behind. */
static void *thread_blocks[5000];
static void *leave_blocks(void *arg) {
  (void)arg;
  for (int i = 0; i < 5000; i++) thread_blocks[i] = bmm_malloc(600);
  return NULL;
}

/* The "used" bytes of the JSON statistics' total (stats_json on). */
static unsigned long total_used(void) {
  unsigned long reserved = 0, committed = 0, used = 0;
  text_len = 0;
  bmm_stats_print(collect, text);
  const char *tot = strstr(text, "\"total\": {");
  CHECK(tot != NULL && sscanf(tot, "\"total\": {\"reserved\": %lu, \"committed\": %lu, \"used\": %lu",
                              &reserved, &committed, &used) == 3);
  return used;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--child") == 0) {
    free(malloc(100));
    /* Like GNU coreutils: close stderr at exit, before the report. */
    if (argc > 2) atexit(close_stderr);
    return 0;
  }
  void *keep[100];
  for (int i = 0; i < 100; i++) keep[i] = bmm_malloc(48);
  void *big = bmm_malloc(1 << 20);

  bmm_stats_print(collect, text);
  CHECK(strstr(text, "BrainMM statistics") != NULL);
  CHECK(strstr(text, "arena    0") != NULL);
  CHECK(strstr(text, "total") != NULL);
  /* the 48-byte class shows at least the 100 blocks kept */
  const char *row = strstr(text, "\n          48 ");
  CHECK(row != NULL);
  if (row != NULL) {
    unsigned long allocated = 0, freed = 0, in_use = 0, peak_use = 0, all_pages = 0, pages = 0,
                  used = 0;
    CHECK(sscanf(row, " 48 %lu %lu %lu %lu %lu %*f %*s | %lu %lu", &allocated, &freed, &in_use,
                 &peak_use, &all_pages, &pages, &used) == 7);
    CHECK(allocated >= 100 && in_use >= 100 && allocated == freed + in_use && peak_use >= in_use);
    CHECK(all_pages >= pages && pages >= 1 && used >= 100);
  }
  CHECK(strstr(text, "large blocks: 1 allocated (     1.0 MiB), 0 freed") != NULL);

  /* Blocks per class: allocated, freed, in use and their peak. Other
   * threads' counts may lag by a free list, but this one thread's are
   * exact when it prints them. */
  static void *many[10000];
  for (int i = 0; i < 10000; i++) many[i] = bmm_malloc(200); /* the 208-byte class */
  for (int i = 100; i < 10000; i++) bmm_free(many[i]);
  text_len = 0;
  bmm_stats_print(collect, text);
  row = strstr(text, "\n         208 ");
  unsigned long allocated = 0, freed = 0, in_use = 0, peak_use = 0;
  CHECK(row != NULL && sscanf(row, " 208 %lu %lu %lu %lu", &allocated, &freed, &in_use,
                              &peak_use) == 4);
  CHECK(allocated == 10000 && freed == 9900 && in_use == 100);
  /* The peak is of the counts taken when a free list ran out and added
   * to the shared count in batches of 64: short of 10000 by what the last
   * list had handed out (8 KiB of blocks at most, BMM_PAGE_SLACK_BYTES,
   * and one 4 KiB extension) and by less than a batch. */
  CHECK(peak_use <= 10000 && peak_use > 10000 - (8192 + 4096) / 208 - 64);
  /* The class's peak memory: the 32 pages (315 blocks each) that held
   * them at once, though they are gone now. */
  text_len = 0;
  CHECK(bmm_option_set("stats_json", 1) == 0);
  bmm_stats_print(collect, text);
  CHECK(bmm_option_set("stats_json", 0) == 0);
  row = strstr(text, "{\"block_size\": 208, ");
  unsigned long all_pages = 0, peak = 0;
  CHECK(row != NULL &&
        sscanf(row, "{\"block_size\": 208, \"allocated\": %lu, \"freed\": %lu, \"in_use\": %lu, "
                    "\"peak_in_use\": %lu, \"all_pages\": %lu, \"peak_bytes\": %lu",
               &allocated, &freed, &in_use, &peak_use, &all_pages, &peak) == 6);
  CHECK(allocated == 10000 && freed == 9900 && in_use == 100);
  CHECK(peak >= 32 * 65536 && peak <= 40 * 65536 && all_pages < 32);
  /* Another thread's blocks: its heap counts its pages when it exits, so
   * its allocations and blocks in use are exact then. */
  pthread_t t;
  CHECK(pthread_create(&t, NULL, leave_blocks, NULL) == 0 && pthread_join(t, NULL) == 0);
  text_len = 0;
  bmm_stats_print(collect, text);
  row = strstr(text, "\n         640 ");
  CHECK(row != NULL && sscanf(row, " 640 %lu %lu %lu %lu", &allocated, &freed, &in_use,
                              &peak_use) == 4);
  CHECK(in_use == 5000 && peak_use == 5000);
  CHECK(allocated == 5000 && freed == 0);
  for (int i = 0; i < 5000; i++) bmm_free(thread_blocks[i]);

  /* Since a reset: none allocated, the 100 kept freed, none in use, and
   * the peak restarts from what was in use at the reset. */
  bmm_stats_reset();
  for (int i = 0; i < 100; i++) bmm_free(many[i]);
  bmm_free(bmm_malloc(300000)); /* one large block since the reset */
  text_len = 0;
  bmm_stats_print(collect, text);
  row = strstr(text, "\n         208 ");
  CHECK(row != NULL && sscanf(row, " 208 %lu %lu %lu %lu", &allocated, &freed, &in_use,
                              &peak_use) == 4);
  CHECK(allocated == 0 && freed == 100 && in_use == 0 && peak_use == 100);
  CHECK(strstr(text, "large blocks: 1 allocated") != NULL && strstr(text, "1 freed") != NULL);

  text_len = 0;
  CHECK(bmm_option_set("stats_json", 1) == 0);
  bmm_stats_print(collect, text);
  CHECK(text[0] == '{' && strstr(text, "\"total\": {\"reserved\": ") != NULL);
  CHECK(strstr(text, "{\"block_size\": 48, \"allocated\": ") != NULL);
  CHECK(strstr(text, "\"large\": {\"allocated\": ") != NULL);
  CHECK(text_len > 2 && text[text_len - 2] == '}' && text[text_len - 1] == '\n');

  /* A reset, then another thread's printout: the blocks this thread
   * allocated before the reset are in use, none allocated or freed since
   * (the reset passed this thread's uncounted blocks to the shared counts,
   * which are all the other thread sees). */
  static void *before_reset[300];
  for (int i = 0; i < 300; i++) before_reset[i] = bmm_malloc(1200);
  bmm_stats_reset();
  pthread_t printer;
  CHECK(pthread_create(&printer, NULL, print_1280_row, NULL) == 0 &&
        pthread_join(printer, NULL) == 0);
  if (!CHECK(row_1280[0] == 0 && row_1280[1] == 0 && row_1280[2] == 300))
    check_print(2, "stats: 1280 B after a reset, by another thread: %lu allocated, %lu freed, "
                   "%lu in use\n", row_1280[0], row_1280[1], row_1280[2]);
  for (int i = 0; i < 300; i++) bmm_free(before_reset[i]);

  /* RSS and peak RSS, read as memory grows: the peak is never below the
   * RSS (the kernel updates its own peak lazily). */
  static char *grown[16];
  for (int i = 0; i < 16; i++) {
    grown[i] = bmm_malloc(1 << 20);
    if (grown[i] != NULL) memset(grown[i], i + 1, 1 << 20);
    text_len = 0;
    bmm_stats_print(collect, text);
    unsigned long rss = 0, peak_rss = 0;
    const char *r = strstr(text, "\"rss\": ");
    CHECK(r != NULL && sscanf(r, "\"rss\": %lu, \"peak_rss\": %lu", &rss, &peak_rss) == 2);
    if (!CHECK(rss > 0 && peak_rss >= rss))
      check_print(2, "stats: rss %lu, peak_rss %lu\n", rss, peak_rss);
  }
  for (int i = 0; i < 16; i++) bmm_free(grown[i]);

  /* Large blocks resized where they are (grown, shrunk, grown into a huge
   * mapping, remapped) and freed: as many bytes freed as allocated. The
   * same for the pages API (counts of pages: bytes / 4096). */
  static const size_t steps[][2] = {
      {100000, 200000}, {200000, 100000}, {100000, 30 << 20}, {20 << 20, 40 << 20}};
  for (size_t i = 0; i < 2 * (sizeof steps / sizeof steps[0]); i++) {
    bool pages = i >= sizeof steps / sizeof steps[0];
    size_t from = steps[i % 4][0], to = steps[i % 4][1];
    bmm_stats_reset();
    char *p = pages ? bmm_pages_alloc(from / 4096) : bmm_malloc(from);
    char *q = p == NULL ? NULL : pages ? bmm_pages_realloc(p, to / 4096) : bmm_realloc(p, to);
    CHECK(q != NULL);
    if (pages) bmm_pages_free(q);
    else bmm_free(q);
    text_len = 0;
    bmm_stats_print(collect, text);
    const char *l = strstr(text, "\"large\": {");
    unsigned long n_alloc = 0, b_alloc = 0, n_freed = 0, b_freed = 0;
    CHECK(l != NULL && sscanf(l, "\"large\": {\"allocated\": %lu, \"allocated_bytes\": %lu, "
                                 "\"freed\": %lu, \"freed_bytes\": %lu",
                              &n_alloc, &b_alloc, &n_freed, &b_freed) == 4);
    CHECK(n_alloc == 1 && n_freed == 1);
    if (b_alloc != b_freed || n_alloc != 1 || n_freed != 1)
      check_print(2, "stats: %s %zu -> %zu: %lu (%lu bytes) allocated, %lu (%lu) freed\n",
                  pages ? "pages" : "large", from, to, n_alloc, b_alloc, n_freed, b_freed);
    CHECK(b_alloc == b_freed && b_alloc >= to / 4096 * 4096);
  }
  /* A freed huge block, kept mapped for reuse a while: committed still,
   * no longer in use. */
  unsigned long used_before = total_used();
  char *huge = bmm_malloc(20 << 20);
  CHECK(huge != NULL);
  unsigned long used_live = total_used();
  bmm_free(huge);
  unsigned long used_after = total_used();
  CHECK(used_live >= used_before + (20 << 20));
  CHECK(used_after < used_live - (19 << 20));
  CHECK(bmm_option_set("stats_json", 0) == 0);

  /* show_stats from the environment, at exit, in a child; also when the
   * child closes its stderr in an atexit handler. */
  char buf[4096];
  run_show_stats_child(NULL, buf, sizeof buf);
  CHECK(strstr(buf, "BrainMM statistics") != NULL);
  run_show_stats_child("--close-stderr", buf, sizeof buf);
  CHECK(strstr(buf, "BrainMM statistics") != NULL);

  /* The deferred-free hook. */
  bmm_register_deferred_free(hook, &calls);
  for (int i = 0; i < 200000; i++) {
    void *p = bmm_malloc(16 + (size_t)(i % 64) * 16);
    bmm_free(p);
    void *q = bmm_malloc(32);
    keep[i % 100] = q; /* some live, so pages run out now and then */
    if (i % 3 == 0) bmm_free(q);
  }
  CHECK(calls > 0 && last_beat > 0);
  CHECK(inner_calls == 0);
  unsigned long long before = forced;
  bmm_collect(true);
  CHECK(forced == before + 1);
  bmm_register_deferred_free(NULL, NULL);
  unsigned long long after = calls;
  for (int i = 0; i < 100000; i++) bmm_free(bmm_malloc(24));
  bmm_collect(true);
  CHECK(calls == after); /* unregistered */

  /* From a first-class heap's slow path. */
  bmm_heap_t *h = bmm_heap_new();
  CHECK(h != NULL);
  calls = inner_calls = last_beat = 0;
  bmm_register_deferred_free(view_hook, &calls);
  for (int i = 0; i < 200000 && h != NULL; i++) {
    void *p = bmm_heap_malloc(h, 100 + (size_t)(i % 50) * 16);
    if (i % 2) bmm_free(p);
  }
  bmm_register_deferred_free(NULL, NULL);
  CHECK(calls > 0);
  CHECK_EQ_SZ(inner_calls, 0);
  if (h != NULL) bmm_heap_destroy(h);
  for (int j = 0; j < 64; j++) bmm_free(hook_keep[j]);

  /* Registrations racing a thread's slow paths. */
  pthread_t racer;
  CHECK(pthread_create(&racer, NULL, race_worker, NULL) == 0);
  /* Until the worker made enough calls (it may wait for a CPU), or 5 s. */
  time_t until = time(NULL) + 5;
  for (int r = 0; r < 300000 || (atomic_load(&race_calls) < 100000 && time(NULL) < until); r++) {
    bmm_register_deferred_free(race_hook_a, &cookie_a);
    bmm_register_deferred_free(race_hook_b, &cookie_b);
    bmm_register_deferred_free(NULL, NULL);
  }
  atomic_store(&race_stop, true);
  pthread_join(racer, NULL);
  printf("stats: racing registrations: %lu hook calls, %lu with another's argument\n",
         atomic_load(&race_calls), atomic_load(&wrong_arg));
  CHECK(atomic_load(&race_calls) > 0);
  CHECK_EQ_SZ(atomic_load(&wrong_arg), 0);

  /* Registrations interrupted by a signal handler that allocates and
   * forks: neither may wait for the registration it interrupted (it hung).
   * Not under TSan, whose runtime does not take fork in a handler well. */
  if (!CHECK_TSAN) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval every = {{0, 500}, {0, 500}}, off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &every, NULL);
    time_t until_sig = time(NULL) + 20;
    for (unsigned long i = 0; signals_handled < 400 && time(NULL) < until_sig; i++)
      bmm_register_deferred_free(i & 1 ? race_hook_a : NULL, i & 1 ? &cookie_a : NULL);
    setitimer(ITIMER_REAL, &off, NULL);
    signal(SIGALRM, SIG_IGN);
    bmm_register_deferred_free(NULL, NULL);
    CHECK(signals_handled >= 400);
  }
  bmm_free(big);
  printf("stats: hook called %llu times, heartbeat %llu\n", calls, last_beat);
  return check_done();
}
