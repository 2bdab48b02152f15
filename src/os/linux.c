/* linux.c: the Linux backend of the OS contract in os.h.
 *
 * Reservation strategy: when the kernel overcommits (vm.overcommit_memory 0
 * or 1, the default), reserved ranges are mapped read+write with
 * MAP_NORESERVE, so "commit" costs nothing and pages appear on first touch;
 * under strict accounting (mode 2) they are mapped PROT_NONE and committed
 * with mprotect, so that reserving 256 MiB arenas does not count against the
 * commit limit. Nothing here allocates or uses stdio.
 */
#define _GNU_SOURCE
#include "os.h"

#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 1u
#endif

extern char **environ;

/* Both computed on first use by whichever thread comes first; every thread
 * computes the same value, so relaxed atomics are enough. */
static atomic_size_t os_page_size;
/* -1 unknown, 0 overcommit (commit is a no-op), 1 strict (mprotect). */
static atomic_int os_strict_commit = -1;

size_t bmm__os_page_size(void) {
  size_t ps = atomic_load_explicit(&os_page_size, memory_order_relaxed);
  if (ps == 0) {
    long v = sysconf(_SC_PAGESIZE);
    ps = v > 0 ? (size_t)v : 4096;
    atomic_store_explicit(&os_page_size, ps, memory_order_relaxed);
  }
  return ps;
}

static bool os_is_strict_commit(void) {
  int strict = atomic_load_explicit(&os_strict_commit, memory_order_relaxed);
  if (strict < 0) {
    strict = 0;
    int fd = open("/proc/sys/vm/overcommit_memory", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      char c = 0;
      if (read(fd, &c, 1) == 1 && c == '2') strict = 1;
      close(fd);
    }
    atomic_store_explicit(&os_strict_commit, strict, memory_order_relaxed);
  }
  return strict == 1;
}

/* A reservation skips the kernel's commit accounting (MAP_NORESERVE); a
 * committed mapping (a huge block) goes through it, so that a request far
 * beyond memory and swap fails with ENOMEM up front, as glibc's does. */
static void *os_map(size_t size, bool commit) {
  int prot = (commit || !os_is_strict_commit()) ? PROT_READ | PROT_WRITE : PROT_NONE;
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | (commit ? 0 : MAP_NORESERVE);
  void *p = mmap(NULL, size, prot, flags, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

void *bmm__os_reserve_aligned(size_t size, size_t align, bool commit) {
  size_t ps = bmm__os_page_size();
  if (align < ps) align = ps;
  size = (size + ps - 1) & ~(ps - 1);
  if (size == 0 || size > SIZE_MAX - align) {
    errno = ENOMEM;
    return NULL;
  }
  /* Try the plain size first: the kernel often returns an aligned address
   * (mappings grow down from a high address), and that avoids trimming. */
  void *p = os_map(size, commit);
  if (p == NULL) return NULL;
  if (((uintptr_t)p & (align - 1)) == 0) return p;
  munmap(p, size);
  /* Over-reserve and trim both ends to the aligned middle. */
  size_t over = size + align;
  uint8_t *q = os_map(over, commit);
  if (q == NULL) return NULL;
  uint8_t *aligned = (uint8_t *)(((uintptr_t)q + align - 1) & ~(uintptr_t)(align - 1));
  size_t head = (size_t)(aligned - q);
  size_t tail = over - head - size;
  if (head) munmap(q, head);
  if (tail) munmap(aligned + size, tail);
  return aligned;
}

bool bmm__os_release(void *addr, size_t size) {
  return munmap(addr, size) == 0;
}

bool bmm__os_commit(void *addr, size_t size) {
  if (!os_is_strict_commit()) return true;
  return mprotect(addr, size, PROT_READ | PROT_WRITE) == 0;
}

bool bmm__os_commit_keeps_rights(void) {
  return !os_is_strict_commit();
}

bool bmm__os_decommit(void *addr, size_t size, bool lazy) {
  if (os_is_strict_commit()) {
    /* Give the commit charge back too: remap as an inaccessible range. */
    void *p = mmap(addr, size, PROT_NONE,
                   MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p != MAP_FAILED;
  }
#ifdef MADV_FREE
  if (lazy && madvise(addr, size, MADV_FREE) == 0) return true;
#else
  (void)lazy;
#endif
  return madvise(addr, size, MADV_DONTNEED) == 0;
}

void *bmm__os_remap(void *addr, size_t old_size, size_t new_size, void *new_addr) {
  void *p = new_addr == NULL
                ? mremap(addr, old_size, new_size, 0)
                : mremap(addr, old_size, new_size, MREMAP_MAYMOVE | MREMAP_FIXED, new_addr);
  return p == MAP_FAILED ? NULL : p;
}

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4 /* Linux 5.7; C libraries before 2.32 lack the name */
#endif

bool bmm__os_move(void *src, size_t size, void *dst) {
  int saved = errno; /* a refusal is an answer, not an error of the caller's call */
  void *p = mremap(src, size, size, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, dst);
  /* Linux has unmapped dst before looking at src (one that spans two
   * mappings, say), so a refusal may leave dst a hole: map it again, only
   * where nothing is (it is mapped still when the refusal came first). */
  if (p != dst) bmm__os_reserve_at(dst, size);
  errno = saved;
  return p == dst;
}

bool bmm__os_reserve_at(void *addr, size_t size) {
  int prot = os_is_strict_commit() ? PROT_NONE : PROT_READ | PROT_WRITE;
#ifdef MAP_FIXED_NOREPLACE
  int flags = MAP_FIXED_NOREPLACE | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
#else
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE; /* addr is a hint */
#endif
  void *p = mmap(addr, size, prot, flags, -1, 0);
  if (p == MAP_FAILED) return false;
  if (p != addr) { /* an old kernel took it as a hint and put it elsewhere */
    munmap(p, size);
    return false;
  }
  return true;
}

bool bmm__os_huge_hint(void *addr, size_t size, bool on) {
#ifdef MADV_HUGEPAGE
  return madvise(addr, size, on ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) == 0;
#else
  (void)addr, (void)size, (void)on;
  return false;
#endif
}

int64_t bmm__os_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int bmm__os_backtrace(void **frames, int max) {
  return backtrace(frames, max);
}

/* Appends s to buf[*len..cap-1], keeping it NUL-terminated. */
static void describe_add(char *buf, size_t cap, size_t *len, const char *s) {
  while (*s && *len + 1 < cap)
    buf[(*len)++] = *s++;
  buf[*len] = 0;
}

static void describe_hex(char *buf, size_t cap, size_t *len, uintptr_t v) {
  char tmp[19], *p = tmp + sizeof tmp - 1;
  *p = 0;
  do {
    *--p = "0123456789abcdef"[v & 15];
    v >>= 4;
  } while (v != 0);
  describe_add(buf, cap, len, "0x");
  describe_add(buf, cap, len, p);
}

/* The executable range of our module, found once (dl_iterate_phdr takes
 * the loader's lock and does not allocate). */
/* Threads that look it up at once all store the same values: atomics, so
 * that this is not a data race. */
static _Atomic(uintptr_t) self_code_lo, self_code_hi;
static atomic_int self_code_known;

static int self_code_find(struct dl_phdr_info *info, size_t size, void *arg) {
  (void)size;
  uintptr_t target = (uintptr_t)arg, lo = UINTPTR_MAX, hi = 0;
  bool here = false;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X)) continue;
    uintptr_t a = info->dlpi_addr + ph->p_vaddr, b = a + ph->p_memsz;
    if (a < lo) lo = a;
    if (b > hi) hi = b;
    if (target >= a && target < b) here = true;
  }
  if (!here) return 0;
  atomic_store_explicit(&self_code_lo, lo, memory_order_relaxed);
  atomic_store_explicit(&self_code_hi, hi, memory_order_relaxed);
  return 1;
}

bool bmm__os_code_in_our_module(const void *addr) {
  if (!atomic_load_explicit(&self_code_known, memory_order_acquire)) {
    dl_iterate_phdr(self_code_find, (void *)(uintptr_t)bmm__os_code_in_our_module);
    atomic_store_explicit(&self_code_known, 1, memory_order_release);
  }
  uintptr_t a = (uintptr_t)addr - 1;
  return a >= atomic_load_explicit(&self_code_lo, memory_order_relaxed) &&
         a < atomic_load_explicit(&self_code_hi, memory_order_relaxed);
}

const char *bmm__os_code_name(const void *addr) {
  Dl_info info;
  if (dladdr((const char *)addr - 1, &info) == 0) return NULL;
  return info.dli_sname;
}

void bmm__os_describe_code(const void *addr, char *buf, size_t cap) {
  Dl_info info;
  size_t len = 0;
  buf[0] = 0;
  /* A return address points after the call: look up the call itself. */
  const char *at = (const char *)addr - 1;
  if (dladdr(at, &info) == 0 || info.dli_fname == NULL) {
    describe_hex(buf, cap, &len, (uintptr_t)addr);
    return;
  }
  const char *module = strrchr(info.dli_fname, '/');
  module = module != NULL ? module + 1 : info.dli_fname;
  if (info.dli_sname != NULL && info.dli_saddr != NULL) {
    describe_add(buf, cap, &len, info.dli_sname);
    describe_add(buf, cap, &len, "+");
    describe_hex(buf, cap, &len, (uintptr_t)addr - (uintptr_t)info.dli_saddr);
    describe_add(buf, cap, &len, " (");
    describe_add(buf, cap, &len, module);
  } else {
    describe_hex(buf, cap, &len, (uintptr_t)addr);
    describe_add(buf, cap, &len, " (");
    describe_add(buf, cap, &len, module);
    describe_add(buf, cap, &len, "+");
    describe_hex(buf, cap, &len, (uintptr_t)addr - (uintptr_t)info.dli_fbase);
  }
  describe_add(buf, cap, &len, ")");
}

bool bmm__os_random(void *buf, size_t n) {
  /* The raw system call: glibc's getrandom wrapper may be missing, and
   * this runs inside the first malloc, where nothing may allocate. */
  uint8_t *p = buf;
  while (n > 0) {
    long got = syscall(SYS_getrandom, p, n, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    p += got;
    n -= (size_t)got;
  }
  return true;
}

bool bmm__os_reset(void *addr, size_t size) {
  return madvise(addr, size, MADV_DONTNEED) == 0;
}

int bmm__os_protect(void *addr, size_t size, int rights) {
  int prot = 0;
  if (rights & 1) prot |= PROT_READ;
  if (rights & 2) prot |= PROT_WRITE;
  if (rights & 4) prot |= PROT_EXEC;
  return mprotect(addr, size, prot) == 0 ? 0 : errno;
}

void *bmm__os_alloc_rwx(size_t size) {
  void *p =
      mmap(NULL, size, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

bool bmm__os_dual_map(size_t size, void **rw, void **rx) {
  int fd = (int)syscall(SYS_memfd_create, "brainmm-jit", MFD_CLOEXEC);
  if (fd < 0) return false;
  bool ok = false;
  if (ftruncate(fd, (off_t)size) == 0) {
    void *w = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    void *x = mmap(NULL, size, PROT_READ | PROT_EXEC, MAP_SHARED, fd, 0);
    if (w != MAP_FAILED && x != MAP_FAILED) {
      *rw = w;
      *rx = x;
      ok = true;
    } else {
      if (w != MAP_FAILED) munmap(w, size);
      if (x != MAP_FAILED) munmap(x, size);
    }
  }
  close(fd); /* the mappings keep the pages */
  return ok;
}

void bmm__os_dual_unmap(void *rw, void *rx, size_t size) {
  if (rw != NULL) munmap(rw, size);
  if (rx != NULL && rx != rw) munmap(rx, size);
}

void bmm__os_flush_icache(void *addr, size_t size) {
  __builtin___clear_cache((char *)addr, (char *)addr + size);
}

static atomic_int os_stderr_fd = STDERR_FILENO;

void bmm__os_keep_stderr(void) {
  if (atomic_load_explicit(&os_stderr_fd, memory_order_relaxed) != STDERR_FILENO) return;
  int fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
  if (fd >= 0) atomic_store_explicit(&os_stderr_fd, fd, memory_order_relaxed);
}

void bmm__os_write_stderr(const char *text, size_t len) {
  int saved = errno;
  /* stderr itself while it is open (the program may have pointed it
   * elsewhere: a test harness's pipe), the copy once it is closed. */
  int fd = atomic_load_explicit(&os_stderr_fd, memory_order_relaxed);
  if (fd != STDERR_FILENO && fcntl(STDERR_FILENO, F_GETFD) != -1) fd = STDERR_FILENO;
  while (len > 0) {
    ssize_t n = write(fd, text, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    text += n;
    len -= (size_t)n;
  }
  errno = saved;
}

_Noreturn void bmm__os_abort(void) {
  abort();
}

void bmm__os_yield(void) {
  sched_yield();
}

const char *bmm__os_getenv(const char *name) {
  char **env = environ;
  size_t n = strlen(name);
  if (env == NULL) return NULL;
  for (; *env != NULL; env++) {
    if (strncmp(*env, name, n) == 0 && (*env)[n] == '=') return *env + n + 1;
  }
  return NULL;
}

bool bmm__os_env_ready(void) {
  return environ != NULL && environ[0] != NULL;
}

void bmm__os_env_each(const char *prefix,
                      void (*fn)(void *arg, const char *name, size_t name_len, const char *value),
                      void *arg) {
  char **env = environ;
  size_t n = strlen(prefix);
  if (env == NULL) return;
  for (; *env != NULL; env++) {
    if (strncmp(*env, prefix, n) != 0) continue;
    const char *eq = strchr(*env, '=');
    if (eq == NULL) continue;
    fn(arg, *env, (size_t)(eq - *env), eq + 1);
  }
}

static pthread_key_t os_exit_key;
static atomic_bool os_exit_key_ready;

bool bmm__os_thread_exit_hook_init(void (*fn)(void *)) {
  if (atomic_load_explicit(&os_exit_key_ready, memory_order_acquire)) return true;
  if (pthread_key_create(&os_exit_key, fn) != 0) return false;
  atomic_store_explicit(&os_exit_key_ready, true, memory_order_release);
  return true;
}

void bmm__os_thread_exit_hook_arm(void *value) {
  /* pthread_setspecific may calloc for high key numbers: callers set up
   * the thread's heap before arming, so that recursion is served. */
  if (atomic_load_explicit(&os_exit_key_ready, memory_order_acquire))
    pthread_setspecific(os_exit_key, value);
}

bool bmm__os_atfork(void (*prepare)(void), void (*parent)(void), void (*child)(void)) {
  return pthread_atfork(prepare, parent, child) == 0;
}

size_t bmm__os_rss(void) {
  int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[128];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  const char *s = buf;
  while (*s && *s != ' ')
    s++; /* skip total size */
  while (*s == ' ')
    s++;
  size_t pages = 0;
  while (*s >= '0' && *s <= '9')
    pages = pages * 10 + (size_t)(*s++ - '0');
  return pages * bmm__os_page_size();
}

static _Atomic(long long) os_start_us;

static long long os_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void bmm__os_process_info_start(void) {
  long long zero = 0;
  atomic_compare_exchange_strong(&os_start_us, &zero, os_now_us());
}

void bmm__os_process_info(bmm_os_process_info_t *out) {
  struct rusage ru;
  memset(out, 0, sizeof *out);
  long long start = atomic_load(&os_start_us);
  out->elapsed_us = start ? os_now_us() - start : 0;
  if (getrusage(RUSAGE_SELF, &ru) == 0) {
    out->user_us = (long long)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec;
    out->system_us = (long long)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
    out->peak_rss = (size_t)ru.ru_maxrss * 1024;
    out->minor_faults = (unsigned long long)ru.ru_minflt;
    out->major_faults = (unsigned long long)ru.ru_majflt;
  }
  out->rss = bmm__os_rss();
  /* The kernel folds the current RSS into ru_maxrss lazily (at exit, on
   * some page-table changes): the peak is at least what is resident now. */
  if (out->peak_rss < out->rss) out->peak_rss = out->rss;
}
