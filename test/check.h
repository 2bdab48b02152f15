/* check.h - a tiny header-only test harness for the BrainMM tests.
 *
 *   CHECK(cond)              counts a pass, or prints file:line, the
 *                            expression and errno to stderr and counts a
 *                            failure; the test goes on either way.
 *   CHECK_EQ_SZ(a, b)        like CHECK(a == b) for size_t values, printing
 *                            both values on failure.
 *   CHECK_EQ_LONG(a, b)      the same for long values (error codes, options).
 *   CHECK_ERRNO(expr, err)   evaluates the pointer expression with errno
 *                            cleared first and checks it gave NULL with
 *                            errno == err. Evaluates to the pointer, so a
 *                            caller can free an unexpected non-NULL result.
 *   check_child(fn, arg, buf, cap, &lines)  runs fn(arg) in a child with its
 *                            stderr captured: wait status, text and lines.
 *   check_child_counted(...) the same for a child that runs CHECKs: its
 *                            counts are added to ours.
 *   check_cases_main(...)    a main for tests made of named cases, each
 *                            run in a child (or one, named, in-process).
 *   check_rerun(argv0, mode, NAME1, v1, NAME2, v2)  this program again in
 *                            another environment (modes chosen at start).
 *   check_rand(&state)       xorshift64*: deterministic pseudo-random
 *                            numbers for randomised tests (state != 0).
 *   check_failed_count()     failures so far (a forked child reports them
 *                            through its exit status).
 *   check_done()             prints "N passed, N failed" on a line of its own
 *                            to stdout and returns the exit code (0 when
 *                            nothing failed, 1 otherwise).
 *
 * The counters are atomic, so checks may run on any thread. The harness never
 * allocates memory: messages are formatted into a stack buffer and written
 * with write(2), so no stdio buffer is ever created by it. After
 * CHECK_MAX_PRINTED failures it stops printing details (they are still
 * counted), so a corrupted heap cannot flood the log.
 */
#ifndef BRAINMM_TEST_CHECK_H
#define BRAINMM_TEST_CHECK_H

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CHECK_MAX_PRINTED
#define CHECK_MAX_PRINTED 50
#endif

struct check_state {
  atomic_ulong passed;
  atomic_ulong failed;
};

/* One state per program: every test program is a single translation unit. */
static inline struct check_state *check_state(void) {
  static struct check_state state;
  return &state;
}

/* Formats into a stack buffer and writes it to fd in one write(2) call where
 * possible, so lines from several threads do not interleave. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static inline void
check_print(int fd, const char *fmt, ...) {
  char buf[768];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  size_t len = (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1;
  const char *q = buf;
  while (len > 0) {
    ssize_t w = write(fd, q, len);
    if (w <= 0) {
      if (w < 0 && errno == EINTR) continue;
      return;
    }
    q += w;
    len -= (size_t)w;
  }
}

static inline void check_pass(void) {
  atomic_fetch_add_explicit(&check_state()->passed, 1, memory_order_relaxed);
}

/* Counts a failure; returns nonzero while details should still be printed. */
static inline int check_fail(void) {
  unsigned long n = atomic_fetch_add_explicit(&check_state()->failed, 1, memory_order_relaxed);
  if (n == CHECK_MAX_PRINTED)
    check_print(2, "check: more than %d failures, no more details printed\n", CHECK_MAX_PRINTED);
  return n < CHECK_MAX_PRINTED;
}

static inline int check_bool(int ok, const char *file, int line, const char *expr) {
  int saved_errno = errno;
  if (ok) {
    check_pass();
  } else if (check_fail()) {
    check_print(2, "%s:%d: CHECK failed: %s (errno=%d)\n", file, line, expr, saved_errno);
  }
  errno = saved_errno;
  return ok;
}

static inline int check_eq_sz(size_t a, size_t b, const char *file, int line, const char *ea,
                              const char *eb) {
  int saved_errno = errno;
  int ok = a == b;
  if (ok) {
    check_pass();
  } else if (check_fail()) {
    check_print(2, "%s:%d: CHECK_EQ_SZ failed: %s == %s (%zu != %zu) (errno=%d)\n", file, line, ea,
                eb, a, b, saved_errno);
  }
  errno = saved_errno;
  return ok;
}

static inline int check_eq_long(long a, long b, const char *file, int line, const char *ea,
                                const char *eb) {
  int saved_errno = errno;
  int ok = a == b;
  if (ok) {
    check_pass();
  } else if (check_fail()) {
    check_print(2, "%s:%d: CHECK_EQ_LONG failed: %s == %s (%ld != %ld) (errno=%d)\n", file, line,
                ea, eb, a, b, saved_errno);
  }
  errno = saved_errno;
  return ok;
}

/* Called after `expr` was evaluated (the macro sequences it before the call),
 * so errno here is what `expr` left behind. */
static inline void *check_errno_ptr(void *p, int want, const char *file, int line,
                                    const char *expr) {
  int got = errno;
  if (p == NULL && got == want) {
    check_pass();
  } else if (check_fail()) {
    check_print(2,
                "%s:%d: CHECK_ERRNO failed: %s returned %p with errno=%d, "
                "expected NULL with errno=%d\n",
                file, line, expr, p, got, want);
  }
  errno = got;
  return p;
}

#define CHECK(cond) check_bool(!!(cond), __FILE__, __LINE__, #cond)
#define CHECK_EQ_SZ(a, b) check_eq_sz((size_t)(a), (size_t)(b), __FILE__, __LINE__, #a, #b)
#define CHECK_EQ_LONG(a, b) check_eq_long((long)(a), (long)(b), __FILE__, __LINE__, #a, #b)
#define CHECK_ERRNO(expr, err)                                                                     \
  (errno = 0, check_errno_ptr((void *)(expr), (err), __FILE__, __LINE__, #expr))

static inline unsigned long check_failed_count(void) {
  return atomic_load(&check_state()->failed);
}

static inline int check_done(void) {
  unsigned long passed = atomic_load(&check_state()->passed);
  unsigned long failed = atomic_load(&check_state()->failed);
  fflush(stdout); /* the test's own output first, if it used stdio */
  check_print(1, "%lu passed, %lu failed\n", passed, failed);
  return failed ? 1 : 0;
}

/* Runs fn(arg) in a child process with SIGABRT at its default action and
 * stderr captured in buf (at most cap - 1 bytes, NUL-terminated); the child
 * exits 0 if fn returns. Returns the child's wait status, and in *lines the
 * number of lines it wrote: for misuse tests, which expect one diagnostic
 * line and then SIGABRT. */
static inline int check_child(void (*fn)(void *), void *arg, char *buf, size_t cap, int *lines) {
  int fds[2];
  buf[0] = 0;
  *lines = 0;
  if (pipe(fds) != 0) return -1;
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], STDERR_FILENO);
    signal(SIGABRT, SIG_DFL);
    fn(arg);
    _exit(0); /* not reached when the misuse is caught */
  }
  close(fds[1]);
  size_t len = 0;
  ssize_t n;
  while (len < cap - 1 && (n = read(fds[0], buf + len, cap - 1 - len)) > 0)
    len += (size_t)n;
  buf[len] = 0;
  close(fds[0]);
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
  for (size_t i = 0; i < len; i++)
    *lines += buf[i] == '\n';
  return status;
}

/* check_child for a child that runs checks of its own: they are added to
 * ours (the child reports its counts on a last line of stderr, which is
 * removed from buf and from *lines; *counted says whether it got there). A
 * child forked from a child starts with its parent's counts: only the
 * difference is new. */
typedef struct check_call_s {
  void (*fn)(void *);
  void *arg;
} check_call_t;

static inline void check_counted_trampoline(void *arg) {
  check_call_t *c = (check_call_t *)arg;
  c->fn(c->arg);
  check_print(2, "@@counts %lu %lu\n", atomic_load(&check_state()->passed),
              atomic_load(&check_state()->failed));
}

static inline int check_child_counted(void (*fn)(void *), void *arg, char *buf, size_t cap,
                                      int *lines, bool *counted) {
  check_call_t call = {fn, arg};
  int status = check_child(check_counted_trampoline, &call, buf, cap, lines);
  unsigned long passed = 0, failed = 0;
  char *counts = strstr(buf, "@@counts ");
  *counted = counts != NULL && sscanf(counts, "@@counts %lu %lu", &passed, &failed) == 2;
  if (counts != NULL) {
    *counts = 0;
    (*lines)--;
  }
  unsigned long have_p = atomic_load(&check_state()->passed);
  unsigned long have_f = atomic_load(&check_state()->failed);
  for (unsigned long i = have_p; i < passed; i++)
    check_pass();
  for (unsigned long i = have_f; i < failed; i++)
    check_fail();
  return status;
}

/* A test made of named cases: with an argument, main runs that case in
 * its own process (for a debugger); without, each case runs in a child,
 * so that a crash in one does not hide the others. */
typedef struct check_case_s {
  const char *name;
  void (*fn)(void);
} check_case_t;

static inline void check_case_body(void *arg) {
  ((const check_case_t *)arg)->fn();
}

static inline void check_run_case(const char *prog, const check_case_t *c) {
  static char out[1 << 16];
  int lines = 0;
  bool counted = false;
  unsigned long failed_before = check_failed_count();
  int status = check_child_counted(check_case_body, (void *)c, out, sizeof out, &lines, &counted);
  bool exited = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  bool clean = exited && counted && check_failed_count() == failed_before;
  if (!clean || out[0] != 0) {
    check_print(2, "%s: case %s: %s (status %#x)%s\n", prog, c->name,
                clean ? "passed with output" : "FAILED", (unsigned)status,
                out[0] ? ", output:" : "");
    fputs(out, stderr);
  }
  CHECK(exited);
  CHECK(counted);
}

static inline int check_cases_main(const char *prog, const check_case_t *cases, size_t n, int argc,
                                   char **argv) {
  if (argc > 1) {
    for (size_t i = 0; i < n; i++)
      if (strcmp(argv[1], cases[i].name) == 0) {
        cases[i].fn();
        return check_done();
      }
    fprintf(stderr, "usage: %s [CASE]   cases:", prog);
    for (size_t i = 0; i < n; i++)
      fprintf(stderr, " %s", cases[i].name);
    fprintf(stderr, "\n");
    return 2;
  }
  for (size_t i = 0; i < n; i++)
    check_run_case(prog, &cases[i]);
  return check_done();
}

/* Runs this program again (/proc/self/exe, argv {argv0, mode}) with two
 * environment variables set to v1 and v2, or removed where NULL: for modes
 * an allocator takes from its environment at start-up. True when it
 * exited 0; a line on stdout says what runs. */
static inline bool check_rerun(const char *argv0, const char *mode, const char *name1,
                               const char *v1, const char *name2, const char *v2) {
  extern char **environ;
  static char *envp[1024];
  static char set1[128], set2[128];
  size_t n = 0, l1 = strlen(name1), l2 = strlen(name2);
  for (char **e = environ; *e != NULL && n < 1020; e++)
    if (!(strncmp(*e, name1, l1) == 0 && (*e)[l1] == '=') &&
        !(strncmp(*e, name2, l2) == 0 && (*e)[l2] == '='))
      envp[n++] = *e;
  if (v1 != NULL) {
    snprintf(set1, sizeof set1, "%s=%s", name1, v1);
    envp[n++] = set1;
  }
  if (v2 != NULL) {
    snprintf(set2, sizeof set2, "%s=%s", name2, v2);
    envp[n++] = set2;
  }
  envp[n] = NULL;
  char *args[] = {(char *)argv0, (char *)mode, NULL};
  check_print(1, "running %s (%s=%s %s=%s)\n", mode, name1, v1 ? v1 : "(unset)", name2,
              v2 ? v2 : "(unset)");
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    execve("/proc/self/exe", args, envp);
    _exit(127);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return false;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    check_print(2, "%s run failed: status %#x\n", mode, (unsigned)status);
    return false;
  }
  return true;
}

/* CHECK_ASAN: 1 in an AddressSanitizer build (BrainMM then poisons its
 * free blocks; tests that touch freed memory on purpose must know). */
#if defined(__SANITIZE_ADDRESS__)
#define CHECK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CHECK_ASAN 1
#endif
#endif
#ifndef CHECK_ASAN
#define CHECK_ASAN 0
#endif
#if CHECK_ASAN
#include <sanitizer/asan_interface.h>
#endif

/* CHECK_TSAN: 1 in a ThreadSanitizer build. CHECK_RSS_SHOWS_PURGE: 0
 * there, whose shadow of every address touched stays in the RSS when the
 * allocator gives pages back, so tests of memory returned to the OS check
 * the allocator's own accounting only; 1 otherwise. */
#if defined(__SANITIZE_THREAD__)
#define CHECK_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CHECK_TSAN 1
#endif
#endif
#ifndef CHECK_TSAN
#define CHECK_TSAN 0
#endif
#define CHECK_RSS_SHOWS_PURGE (!CHECK_TSAN)

/* xorshift64*: fast, good enough for picking sizes and slots, and the same
 * sequence on every run so that a failure can be replayed from its seed. */
static inline uint64_t check_rand(uint64_t *state) {
  uint64_t x = *state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return x * 0x2545f4914f6cdd1dULL;
}

#endif /* BRAINMM_TEST_CHECK_H */
