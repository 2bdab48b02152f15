/* jit.c: the JIT heap, bmm_jit_* (API.md section 7).
 *
 * Each part runs in both modes, RWX (flags 0) and split (BMM_JIT_SPLIT):
 * machine code is written through bmm_jit_writable, flushed and called;
 * small blocks are packed (1000 blocks of 16 bytes share a few pages);
 * freed memory is reused; bmm_jit_clear frees everything and the heap
 * serves again; four threads allocate, write, run and free through the
 * _sync calls at once. W^X is checked in /proc/self/maps: in a child forked
 * before any heap exists, no mapping may be writable and executable, before
 * or after split-mode allocation; in the main process the code and alias
 * pages of a split heap must have the right rights. The fallback from RWX
 * to split mode runs in a child whose seccomp filter refuses writable and
 * executable mappings with EACCES, as SELinux execmem does. Errors:
 * unknown flags give EINVAL, impossible sizes ENOMEM, and freeing what is
 * not a block (foreign, interior, twice, the writable alias) prints one
 * line and aborts, or with abort_on_error=0 is reported and ignored.
 *
 * Generated code runs on x86-64 only; elsewhere the same bytes are written
 * and read back, and a note says that nothing was run.
 */
#define _GNU_SOURCE
#include <brainmm.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#include "check.h"

#if defined(__x86_64__)
#define CAN_RUN 1
#else
#define CAN_RUN 0
#endif

/* ---- Code generation ----------------------------------------------------- */

/* int f(void) { return k; }: mov eax, imm32; ret. 6 bytes. */
static size_t emit_return(uint8_t *w, int32_t k) {
  w[0] = 0xB8;
  memcpy(w + 1, &k, 4);
  w[5] = 0xC3;
  return 6;
}

/* int add(int a, int b) { return a + b; }: lea eax, [rdi+rsi]; ret. */
static size_t emit_add(uint8_t *w) {
  static const uint8_t add[4] = {0x8D, 0x04, 0x37, 0xC3};
  memcpy(w, add, sizeof add);
  return sizeof add;
}

typedef int (*fn0_t)(void);
typedef int (*fn2_t)(int, int);

/* ISO C has no conversion from object to function pointers; copy the bits. */
static int call0(void *code) {
  fn0_t f;
  _Static_assert(sizeof f == sizeof code, "function and object pointers differ");
  memcpy(&f, &code, sizeof f);
  return f();
}

static int call2(void *code, int a, int b) {
  fn2_t f;
  memcpy(&f, &code, sizeof f);
  return f(a, b);
}

/* Write `return k` for block `code` of heap jit, flush, and (where we can)
 * run it; true when it returned k. */
static int install_return(bmm_jit_t *jit, void *code, int32_t k) {
  uint8_t *w = bmm_jit_writable(jit, code);
  if (w == NULL) return 0;
  size_t n = emit_return(w, k);
  bmm_jit_flush(code, n);
  if (memcmp(code, w, n) != 0) return 0; /* visible at the code address */
  return !CAN_RUN || call0(code) == k;
}

static uint64_t rng_next(uint64_t *s) { /* xorshift64 */
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

static const char *mode_name(int flags) {
  return flags & BMM_JIT_SPLIT ? "split" : "rwx";
}

/* ---- /proc/self/maps ----------------------------------------------------- */

static char maps_buf[1 << 20];

static size_t maps_read(void) {
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  size_t len = 0;
  ssize_t n;
  while (len < sizeof maps_buf - 1 && (n = read(fd, maps_buf + len, sizeof maps_buf - 1 - len)) > 0)
    len += (size_t)n;
  close(fd);
  maps_buf[len] = 0;
  return len;
}

/* Calls fn(start, end, perms, line) for each mapping; perms is "rwxp". */
static void maps_each(void (*fn)(uintptr_t, uintptr_t, const char *, const char *, void *),
                      void *arg) {
  maps_read();
  for (char *line = maps_buf; *line != 0;) {
    char *nl = strchr(line, '\n');
    if (nl != NULL) *nl = 0;
    unsigned long lo, hi;
    char perms[8];
    if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3) fn(lo, hi, perms, line, arg);
    if (nl == NULL) break;
    line = nl + 1;
  }
}

static void count_wx(uintptr_t lo, uintptr_t hi, const char *perms, const char *line, void *arg) {
  (void)lo, (void)hi;
  if (strchr(perms, 'w') != NULL && strchr(perms, 'x') != NULL) {
    ++*(int *)arg;
    check_print(2, "  writable and executable: %s\n", line);
  }
}

/* Mappings that are both writable and executable (each one is printed). */
static int maps_wx_count(void) {
  int n = 0;
  maps_each(count_wx, &n);
  return n;
}

struct perms_query {
  uintptr_t addr;
  char perms[8];
};

static void find_perms(uintptr_t lo, uintptr_t hi, const char *perms, const char *line, void *arg) {
  (void)line;
  struct perms_query *q = arg;
  if (q->addr >= lo && q->addr < hi) snprintf(q->perms, sizeof q->perms, "%s", perms);
}

/* The rights of the mapping that holds p ("" when none does). */
static void maps_perms_of(const void *p, char perms[8]) {
  struct perms_query q = {.addr = (uintptr_t)p, .perms = ""};
  maps_each(find_perms, &q);
  memcpy(perms, q.perms, 8);
}

static int perms_wx_ok(const void *code, const void *alias) {
  char pc[8], pw[8];
  maps_perms_of(code, pc);
  maps_perms_of(alias, pw);
  int ok =
      pc[0] == 'r' && pc[1] == '-' && pc[2] == 'x' && pw[0] == 'r' && pw[1] == 'w' && pw[2] == '-';
  if (!ok) check_print(2, "  code %p is %s, alias %p is %s\n", code, pc, alias, pw);
  return ok;
}

/* ---- Children ------------------------------------------------------------ */

/* Runs fn in a forked child; returns its exit status (from waitpid). */
static int run_child(void (*fn)(void)) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    fn();
    _exit(check_failed_count() == 0 ? 0 : 1);
  }
  int status = -1;
  if (pid > 0) waitpid(pid, &status, 0);
  return status;
}

/* In a process with no JIT heap yet: no mapping is ever writable and
 * executable, before or after a split heap allocates (several chunks). */
static void child_split_wx(void) {
  CHECK_EQ_LONG(maps_wx_count(), 0);
  bmm_jit_t *jit = bmm_jit_new(BMM_JIT_SPLIT);
  CHECK(jit != NULL);
  if (jit == NULL) return;
  void *first = NULL;
  int ok = 1;
  for (int i = 0; i < 3000; i++) {
    void *code = bmm_jit_alloc(jit, 1000); /* 3 MB in all: two chunks and more */
    if (code == NULL || !install_return(jit, code, i)) ok = 0;
    if (i == 0) first = code;
  }
  CHECK(ok);
  void *big = bmm_jit_alloc(jit, 40u << 20); /* a chunk of its own */
  CHECK(big != NULL);
  CHECK(big != NULL && install_return(jit, big, -1));
  CHECK_EQ_LONG(maps_wx_count(), 0);
  CHECK(perms_wx_ok(first, bmm_jit_writable(jit, first)));
  CHECK(perms_wx_ok(big, bmm_jit_writable(jit, big)));
  bmm_jit_delete(jit);
  CHECK_EQ_LONG(maps_wx_count(), 0);
}

/* A seccomp filter that refuses writable+executable mmap and mprotect with
 * EACCES, as SELinux (execmem) does. Returns 0 when it could not be set. */
static int refuse_rwx_mappings(void) {
#if defined(__x86_64__)
  const unsigned arch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
  const unsigned arch = AUDIT_ARCH_AARCH64;
#else
  const unsigned arch = 0;
  return 0;
#endif
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, arch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mmap, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mprotect, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      /* prot is argument 2; its low 32 bits come first (little endian). */
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),
      BPF_STMT(BPF_ALU | BPF_AND | BPF_K, PROT_WRITE | PROT_EXEC),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PROT_WRITE | PROT_EXEC, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EACCES & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {.len = sizeof filter / sizeof filter[0], .filter = filter};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 0;
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) return 0;
  return 1;
}

enum { CHILD_SKIPPED = 77 };

/* bmm_jit_new(0) where RWX mappings are refused: split mode, working. */
static void child_rwx_refused(void) {
  if (!refuse_rwx_mappings()) _exit(CHILD_SKIPPED);
  void *m =
      mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m != MAP_FAILED || errno != EACCES) _exit(CHILD_SKIPPED); /* the filter does not bite */
  int wx_before = maps_wx_count();
  bmm_jit_t *jit = bmm_jit_new(0);
  CHECK(jit != NULL);
  if (jit == NULL) return;
  void *code = bmm_jit_alloc(jit, 100);
  CHECK(code != NULL);
  uint8_t *w = bmm_jit_writable(jit, code);
  CHECK(w != NULL && (void *)w != code);
  CHECK(install_return(jit, code, 1234));
  CHECK(perms_wx_ok(code, w));
  void *big = bmm_jit_alloc(jit, 5u << 20); /* later chunks are split too */
  CHECK(big != NULL && bmm_jit_writable(jit, big) != big);
  CHECK(big != NULL && install_return(jit, big, 99));
  CHECK_EQ_LONG(maps_wx_count(), wx_before);
  bmm_jit_delete(jit);
}

/* ---- Both modes ---------------------------------------------------------- */

static void test_basic(int flags) {
  bmm_jit_t *jit = bmm_jit_new(flags);
  CHECK(jit != NULL);
  if (jit == NULL) return;
  uint8_t *code = bmm_jit_alloc(jit, 16);
  CHECK(code != NULL);
  CHECK(((uintptr_t)code & (BMM_MIN_ALIGN - 1)) == 0);
  uint8_t *w = bmm_jit_writable(jit, code);
  CHECK(w != NULL);
  if (flags & BMM_JIT_SPLIT) {
    CHECK(w != code);
    CHECK(perms_wx_ok(code, w));
  } else if (w != code) {
    check_print(1, "note: RWX memory refused here; bmm_jit_new(0) fell back to split mode\n");
  }
  CHECK(install_return(jit, code, 42));
  /* Writing through the alias shows at the code address. */
  w[7] = 0x5A;
  CHECK(code[7] == 0x5A);
  /* Patch live code and run it again. */
  CHECK(install_return(jit, code, -7));
  /* Interior addresses map too; foreign ones do not. */
  int local = 0;
  CHECK(bmm_jit_writable(jit, code + 5) == w + 5);
  CHECK(bmm_jit_writable(jit, &local) == NULL);
  CHECK(bmm_jit_writable(jit, NULL) == NULL);
  CHECK(bmm_jit_writable(NULL, code) == NULL);

  uint8_t *add = bmm_jit_alloc(jit, 4);
  CHECK(add != NULL && add != code);
  uint8_t *aw = bmm_jit_writable(jit, add);
  size_t n = emit_add(aw);
  bmm_jit_flush(add, n);
  CHECK(memcmp(add, aw, n) == 0);
  if (CAN_RUN) {
    CHECK_EQ_LONG(call2(add, 40, 2), 42);
    CHECK_EQ_LONG(call2(add, -5, 7), 2);
  }
  bmm_jit_free(jit, code);
  bmm_jit_free(jit, add);
  bmm_jit_free(jit, NULL);
  bmm_jit_delete(jit);
}

static int cmp_uptr(const void *a, const void *b) {
  uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
  return x < y ? -1 : x > y;
}

enum { PACK_N = 1000 };

/* 1000 functions of 16 bytes: they share few pages, none overlaps another,
 * and each one still returns its own number after all were written. */
static void test_packing(int flags) {
  static void *code[PACK_N];
  static uintptr_t sorted[PACK_N];
  size_t ps = (size_t)sysconf(_SC_PAGESIZE);
  bmm_jit_t *jit = bmm_jit_new(flags);
  CHECK(jit != NULL);
  if (jit == NULL) return;
  int ok = 1;
  for (int i = 0; i < PACK_N; i++) {
    code[i] = bmm_jit_alloc(jit, 16);
    if (code[i] == NULL) {
      ok = 0;
      break;
    }
    sorted[i] = (uintptr_t)code[i];
    emit_return(bmm_jit_writable(jit, code[i]), i);
    bmm_jit_flush(code[i], 6);
  }
  CHECK(ok);
  if (!ok) return;
  qsort(sorted, PACK_N, sizeof sorted[0], cmp_uptr);
  size_t pages = 1, overlaps = 0;
  for (int i = 1; i < PACK_N; i++) {
    if (sorted[i] / ps != sorted[i - 1] / ps) pages++;
    if (sorted[i] - sorted[i - 1] < 16) overlaps++;
  }
  /* 64-byte granules: 16 pages of 4 KiB; any packing gives far fewer than
   * one page per function. */
  CHECK(pages <= PACK_N * 64 / ps + 2);
  CHECK_EQ_SZ(overlaps, 0);
  /* Packed: the blocks lie in one range not much larger than their sum. */
  CHECK(sorted[PACK_N - 1] - sorted[0] < (size_t)PACK_N * 64 + ps);
  int runs = 1;
  for (int i = 0; i < PACK_N && CAN_RUN; i++)
    runs &= call0(code[i]) == i;
  CHECK(runs);
  if (pages > PACK_N / 10)
    check_print(2, "%s: %zu pages for %d functions\n", mode_name(flags), pages, PACK_N);
  bmm_jit_delete(jit);
}

/* Freed memory is used again: the same sizes after freeing everything (in
 * random order) land in the range the first round used, and a block freed
 * right after its allocation is handed out again. */
static void test_reuse(int flags) {
  enum { N = 500 };
  static void *code[N];
  static size_t size[N];
  static int order[N];
  bmm_jit_t *jit = bmm_jit_new(flags);
  CHECK(jit != NULL);
  if (jit == NULL) return;
  uint64_t seed = 0x9E3779B97F4A7C15u;
  uintptr_t lo = UINTPTR_MAX, hi = 0;
  int ok = 1;
  for (int i = 0; i < N; i++) {
    size[i] = 1 + rng_next(&seed) % 300;
    code[i] = bmm_jit_alloc(jit, size[i]);
    if (code[i] == NULL) ok = 0;
    if ((uintptr_t)code[i] < lo) lo = (uintptr_t)code[i];
    if ((uintptr_t)code[i] + size[i] > hi) hi = (uintptr_t)code[i] + size[i];
    order[i] = i;
  }
  CHECK(ok);
  for (int i = N - 1; i > 0; i--) {
    int j = (int)(rng_next(&seed) % (uint64_t)(i + 1)), t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  for (int i = 0; i < N; i++)
    bmm_jit_free(jit, code[order[i]]);
  int inside = 1, runs = 1;
  for (int i = 0; i < N; i++) {
    code[i] = bmm_jit_alloc(jit, size[i]);
    inside &= code[i] != NULL && (uintptr_t)code[i] >= lo && (uintptr_t)code[i] + size[i] <= hi;
    runs &= code[i] != NULL && install_return(jit, code[i], i * 3);
  }
  CHECK(inside);
  CHECK(runs);
  for (int i = 0; i < N && CAN_RUN; i++)
    runs &= call0(code[i]) == i * 3;
  CHECK(runs);
  void *a = bmm_jit_alloc(jit, 200);
  bmm_jit_free(jit, a);
  void *b = bmm_jit_alloc(jit, 200);
  CHECK(a != NULL && a == b);
  /* Free every other block, then blocks of the freed size fill the holes. */
  for (int i = 0; i < N; i += 2)
    bmm_jit_free(jit, code[i]);
  bmm_jit_free(jit, b);
  int holes = 1;
  for (int i = 0; i < N; i += 2) {
    code[i] = bmm_jit_alloc(jit, size[i]);
    holes &= code[i] != NULL && install_return(jit, code[i], -i);
  }
  CHECK(holes);
  for (int i = 1; i < N && CAN_RUN; i += 2)
    runs &= call0(code[i]) == i * 3;
  CHECK(runs);
  bmm_jit_delete(jit);
}

/* bmm_jit_clear frees everything, big chunks too; the heap then starts
 * again at its first block and serves as before. */
static void test_clear(int flags) {
  bmm_jit_t *jit = bmm_jit_new(flags);
  CHECK(jit != NULL);
  if (jit == NULL) return;
  for (int round = 0; round < 3; round++) {
    void *first = bmm_jit_alloc(jit, 64);
    CHECK(first != NULL && install_return(jit, first, round));
    static void *first_of_round0;
    if (round == 0)
      first_of_round0 = first;
    else
      CHECK(first == first_of_round0);
    int ok = 1;
    void *last = NULL;
    for (int i = 0; i < 20000; i++) { /* 4 MB: several chunks */
      last = bmm_jit_alloc(jit, 200);
      ok &= last != NULL;
    }
    CHECK(ok);
    CHECK(last != NULL && install_return(jit, last, 5));
    uint8_t *big = bmm_jit_alloc(jit, 24u << 20); /* a chunk of its own */
    CHECK(big != NULL);
    if (big != NULL) {
      uint8_t *bw = bmm_jit_writable(jit, big);
      CHECK(bw != NULL);
      bw[(24u << 20) - 1] = 0xA5;
      CHECK(big[(24u << 20) - 1] == 0xA5);
      CHECK(install_return(jit, big, 77));
    }
    bmm_jit_clear(jit);
    CHECK(bmm_jit_writable(jit, big) == NULL); /* its chunk went back */
  }
  bmm_jit_delete(jit);
}

/* Random allocations and frees against a table of live blocks: each
 * block's bytes carry its tag, and every block is checked when freed, so
 * any overlap of two live blocks shows. Sizes are mostly small, some span
 * many granules and a few need a chunk of their own. */
static void test_random(int flags) {
  enum { SLOTS = 512, OPS = 100000 };
  static uint8_t *code[SLOTS];
  static size_t size[SLOTS];
  bmm_jit_t *jit = bmm_jit_new(flags);
  CHECK(jit != NULL);
  if (jit == NULL) return;
  uint64_t seed = 12345 + (uint64_t)flags;
  size_t corrupt = 0, failed = 0;
  for (int op = 0; op < OPS; op++) {
    int s = (int)(rng_next(&seed) % SLOTS);
    if (code[s] != NULL) {
      uint8_t t = (uint8_t)s;
      if (code[s][0] != t || code[s][size[s] / 2] != t || code[s][size[s] - 1] != t) corrupt++;
      bmm_jit_free(jit, code[s]);
      code[s] = NULL;
      continue;
    }
    uint64_t r = rng_next(&seed);
    size[s] = r % 1024 == 0 ? (size_t)(r >> 10) % (20u << 20) + 1
              : r % 16 == 0 ? (size_t)(r >> 10) % 65536 + 1
                            : (size_t)(r >> 10) % 700 + 1;
    code[s] = bmm_jit_alloc(jit, size[s]);
    if (code[s] == NULL) {
      failed++;
      continue;
    }
    uint8_t *w = bmm_jit_writable(jit, code[s]);
    w[0] = w[size[s] / 2] = w[size[s] - 1] = (uint8_t)s;
  }
  for (int s = 0; s < SLOTS; s++) {
    if (code[s] == NULL) continue;
    uint8_t t = (uint8_t)s;
    if (code[s][0] != t || code[s][size[s] / 2] != t || code[s][size[s] - 1] != t) corrupt++;
    bmm_jit_free(jit, code[s]);
    code[s] = NULL;
  }
  CHECK_EQ_SZ(corrupt, 0);
  CHECK_EQ_SZ(failed, 0);
  bmm_jit_delete(jit);
}

/* ---- Threads ------------------------------------------------------------- */

enum { SYNC_THREADS = 4, SYNC_SLOTS = 64, SYNC_ITERS = 20000 };

struct sync_worker {
  bmm_jit_t *jit;
  int id;
  unsigned long failures;
  pthread_t thread;
};

static uint8_t pattern_byte(int32_t tag, size_t k) {
  return (uint8_t)(tag * 31 + (int32_t)k * 7);
}

static int block_intact(const uint8_t *code, size_t size, int32_t tag) {
  uint8_t expect[6];
  emit_return(expect, tag);
  if (memcmp(code, expect, 6) != 0) return 0;
  for (size_t k = 6; k < size; k++)
    if (code[k] != pattern_byte(tag, k)) return 0;
  return !CAN_RUN || call0((void *)code) == tag;
}

static void *sync_worker_run(void *arg) {
  struct sync_worker *me = arg;
  uint8_t *code[SYNC_SLOTS] = {0};
  size_t size[SYNC_SLOTS] = {0};
  int32_t tag[SYNC_SLOTS] = {0};
  uint64_t seed = 0x2545F4914F6CDD1Du * (uint64_t)(me->id + 1);
  for (int it = 0; it < SYNC_ITERS; it++) {
    int s = (int)(rng_next(&seed) % SYNC_SLOTS);
    if (code[s] != NULL) {
      if (!block_intact(code[s], size[s], tag[s])) me->failures++;
      bmm_jit_free_sync(me->jit, code[s]);
      code[s] = NULL;
      continue;
    }
    uint64_t r = rng_next(&seed);
    /* Mostly small functions; one in 64 is big enough to make the heap
     * map chunks while the others look theirs up. */
    size[s] =
        r % 64 == 0 ? 64 * 1024 + (size_t)(r >> 8) % (512 * 1024) : 6 + (size_t)(r >> 8) % 1000;
    code[s] = bmm_jit_alloc_sync(me->jit, size[s]);
    if (code[s] == NULL) {
      me->failures++;
      continue;
    }
    tag[s] = me->id << 24 | it;
    uint8_t *w = bmm_jit_writable(me->jit, code[s]);
    if (w == NULL) {
      me->failures++;
      bmm_jit_free_sync(me->jit, code[s]);
      code[s] = NULL;
      continue;
    }
    emit_return(w, tag[s]);
    for (size_t k = 6; k < size[s]; k++)
      w[k] = pattern_byte(tag[s], k);
    bmm_jit_flush(code[s], size[s]);
    if (CAN_RUN && call0(code[s]) != tag[s]) me->failures++;
  }
  for (int s = 0; s < SYNC_SLOTS; s++) {
    if (code[s] == NULL) continue;
    if (!block_intact(code[s], size[s], tag[s])) me->failures++;
    bmm_jit_free_sync(me->jit, code[s]);
  }
  return NULL;
}

static void test_sync(int flags) {
  bmm_jit_t *jit = bmm_jit_new(flags);
  CHECK(jit != NULL);
  if (jit == NULL) return;
  struct sync_worker w[SYNC_THREADS];
  for (int i = 0; i < SYNC_THREADS; i++) {
    w[i] = (struct sync_worker){.jit = jit, .id = i + 1};
    CHECK(pthread_create(&w[i].thread, NULL, sync_worker_run, &w[i]) == 0);
  }
  for (int i = 0; i < SYNC_THREADS; i++) {
    pthread_join(w[i].thread, NULL);
    CHECK_EQ_SZ(w[i].failures, 0);
  }
  /* Everything was freed: the heap starts over where it began. */
  void *a = bmm_jit_alloc(jit, 64);
  CHECK(a != NULL && install_return(jit, a, 3));
  bmm_jit_delete(jit);
}

/* ---- Errors -------------------------------------------------------------- */

static void test_errors(void) {
  CHECK_ERRNO(bmm_jit_new(2), EINVAL);
  CHECK_ERRNO(bmm_jit_new(-1), EINVAL);
  CHECK_ERRNO(bmm_jit_new(BMM_JIT_SPLIT | 8), EINVAL);
  CHECK_ERRNO(bmm_jit_alloc(NULL, 16), EINVAL);
  for (int flags = 0; flags <= BMM_JIT_SPLIT; flags++) {
    bmm_jit_t *jit = bmm_jit_new(flags);
    CHECK(jit != NULL);
    if (jit == NULL) continue;
    CHECK_ERRNO(bmm_jit_alloc(jit, SIZE_MAX), ENOMEM);
    CHECK_ERRNO(bmm_jit_alloc(jit, SIZE_MAX - 10), ENOMEM);
    CHECK_ERRNO(bmm_jit_alloc(jit, (size_t)1 << 62), ENOMEM);
    CHECK_ERRNO(bmm_jit_alloc_sync(jit, SIZE_MAX / 2), ENOMEM);
    CHECK_ERRNO(bmm_jit_alloc_sync(jit, ((size_t)1 << 30) + 1), ENOMEM);
    void *code = bmm_jit_alloc(jit, 0); /* a block of its own, like malloc(0) */
    CHECK(code != NULL && install_return(jit, code, 11));
    bmm_jit_free(jit, NULL);
    bmm_jit_free_sync(jit, NULL);
    bmm_jit_free(jit, code);
    bmm_jit_delete(jit);
  }
  bmm_jit_delete(NULL);
  bmm_jit_clear(NULL);
  bmm_jit_flush(NULL, 0);
}

/* Misuse: each case in a child whose stderr we read. The blocks are made
 * before the fork, so the parent knows the address the child frees. */
typedef enum {
  BAD_STACK,
  BAD_INTERIOR,
  BAD_UNALIGNED,
  BAD_DOUBLE,
  BAD_OTHER_HEAP,
  BAD_ALIAS,
  BAD_STACK_SYNC,
  BAD_COUNT
} bad_free_t;

static const char *const bad_name[BAD_COUNT] = {"stack pointer",       "interior",   "unaligned",
                                                "double free",         "other heap", "alias",
                                                "stack pointer (sync)"};

static struct {
  bmm_jit_t *jit, *other, *split;
  uint8_t *block, *other_block, *split_block;
  int on_stack;
} bad;

static void *bad_address(bad_free_t c) {
  switch (c) {
  case BAD_STACK:
  case BAD_STACK_SYNC:
    return &bad.on_stack; /* not in any heap: stands for any foreign address */
  case BAD_INTERIOR:
    return bad.block + 64;
  case BAD_UNALIGNED:
    return bad.block + 1;
  case BAD_DOUBLE:
    return bad.block;
  case BAD_OTHER_HEAP:
    return bad.other_block;
  case BAD_ALIAS:
    return bmm_jit_writable(bad.split, bad.split_block);
  default:
    return NULL;
  }
}

static void do_bad_free(bad_free_t c) {
  void *p = bad_address(c);
  switch (c) {
  case BAD_DOUBLE:
    bmm_jit_free(bad.jit, p);
    bmm_jit_free(bad.jit, p);
    break;
  case BAD_ALIAS:
    bmm_jit_free(bad.split, p);
    break;
  case BAD_STACK_SYNC:
    bmm_jit_free_sync(bad.jit, p);
    break;
  default:
    bmm_jit_free(bad.jit, p);
    break;
  }
}

static void bad_free_in_child(void *c) {
  do_bad_free((bad_free_t)(intptr_t)c);
}

static void check_bad_free_aborts(bad_free_t c) {
  char buf[1024];
  int lines;
  int status = check_child(bad_free_in_child, (void *)(intptr_t)c, buf, sizeof buf, &lines);
  char expect[128];
  snprintf(expect, sizeof expect, "brainmm: error: %s(0x%lx): ",
           c == BAD_STACK_SYNC ? "bmm_jit_free_sync" : "bmm_jit_free",
           (unsigned long)(uintptr_t)bad_address(c));
  int aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
  int named = strncmp(buf, expect, strlen(expect)) == 0;
  if (!aborted || lines != 1 || !named)
    check_print(2, "jit misuse %s: status %#x, %d lines: %s(expected %s...)\n", bad_name[c], status,
                lines, buf, expect);
  CHECK(aborted);
  CHECK(lines == 1);
  CHECK(named);
}

/* With abort_on_error=0 every bad free is reported and ignored, and the
 * heap goes on: its blocks intact, allocation working. Run last: it
 * changes a process-wide option. */
static void test_bad_free_ignored(void) {
  CHECK(bmm_option_set("abort_on_error", 0) == 0);
  int fds[2];
  CHECK(pipe(fds) == 0);
  int saved = dup(STDERR_FILENO);
  dup2(fds[1], STDERR_FILENO);
  for (int c = 0; c < BAD_COUNT; c++) {
    if (c == BAD_DOUBLE) continue; /* its first free is a legal one */
    do_bad_free((bad_free_t)c);
  }
  dup2(saved, STDERR_FILENO);
  close(saved);
  close(fds[1]);
  char buf[4096];
  size_t len = 0;
  ssize_t n;
  while (len < sizeof buf - 1 && (n = read(fds[0], buf + len, sizeof buf - 1 - len)) > 0)
    len += (size_t)n;
  buf[len] = 0;
  close(fds[0]);
  int lines = 0, ignored = 0;
  for (char *l = buf; (l = strstr(l, "brainmm: error: bmm_jit_free")) != NULL; l++)
    lines++;
  for (char *l = buf; (l = strstr(l, "call ignored")) != NULL; l++)
    ignored++;
  CHECK_EQ_LONG(lines, BAD_COUNT - 1);
  CHECK_EQ_LONG(ignored, BAD_COUNT - 1);
  CHECK(install_return(bad.jit, bad.block, 8));
  CHECK(install_return(bad.other, bad.other_block, 9));
  CHECK(install_return(bad.split, bad.split_block, 10));
  bmm_jit_free(bad.jit, bad.block); /* still a live block: a real free */
  void *again = bmm_jit_alloc(bad.jit, 256);
  CHECK(again == bad.block);
  bmm_option_set("abort_on_error", 1);
}

static void test_bad_free(void) {
  bad.jit = bmm_jit_new(0);
  bad.other = bmm_jit_new(0);
  bad.split = bmm_jit_new(BMM_JIT_SPLIT);
  CHECK(bad.jit != NULL && bad.other != NULL && bad.split != NULL);
  if (bad.jit == NULL || bad.other == NULL || bad.split == NULL) return;
  bad.block = bmm_jit_alloc(bad.jit, 256);
  bad.other_block = bmm_jit_alloc(bad.other, 64);
  bad.split_block = bmm_jit_alloc(bad.split, 64);
  CHECK(bad.block != NULL && bad.other_block != NULL && bad.split_block != NULL);
  for (int c = 0; c < BAD_COUNT; c++)
    check_bad_free_aborts((bad_free_t)c);
  test_bad_free_ignored();
  bmm_jit_delete(bad.jit);
  bmm_jit_delete(bad.other);
  bmm_jit_delete(bad.split);
}

int main(void) {
  if (!CAN_RUN)
    check_print(1, "note: not x86-64: generated code is written and read back, never run\n");

  /* First, before this process has any JIT heap. */
  int status = run_child(child_split_wx);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  status = run_child(child_rwx_refused);
  if (WIFEXITED(status) && WEXITSTATUS(status) == CHILD_SKIPPED)
    check_print(1, "note: no seccomp filter here: the RWX fallback was not exercised\n");
  else
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

  for (int flags = 0; flags <= BMM_JIT_SPLIT; flags++) {
    test_basic(flags);
    test_packing(flags);
    test_reuse(flags);
    test_clear(flags);
    test_random(flags);
    test_sync(flags);
  }
  test_errors();
  test_bad_free();
  return check_done();
}
