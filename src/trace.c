/* trace.c: libbrainmm-trace.so, an allocation recorder for LD_PRELOAD.
 *
 * Owns the interposed allocation entry points (malloc, free, calloc,
 * realloc, reallocarray, posix_memalign, aligned_alloc, memalign, valloc,
 * pvalloc, free_sized, free_aligned_sized and every form of C++ operator
 * new/delete), the map from block address to object id, the per-thread
 * record buffers and the trace file. The file format is trace_format.h; the
 * replayer is tools/bmm-replay.c. This file uses nothing else of BrainMM:
 * it is a separate library that may sit in front of any allocator.
 *
 * Every call is forwarded to the NEXT definition in the symbol search order
 * (dlsym(RTLD_NEXT)), so whatever allocator serves the process is recorded:
 * LD_PRELOAD="libbrainmm-trace.so libmimalloc.so.2" records mimalloc, the
 * tracer alone records glibc. C++ operators are interposed too because
 * allocators that replace them (mimalloc, BrainMM) do not route them through
 * malloc, and the trace of a C++ program would otherwise depend on the
 * allocator underneath. When no C++ runtime is visible to RTLD_NEXT (a C++
 * library dlopen'ed with RTLD_LOCAL), operator new falls back to the real
 * malloc; when that fails it looks for a runtime once more (one dlopen'ed
 * with RTLD_GLOBAL since) to throw, and aborts if there is still none. A
 * new-handler's own calls are not recorded: it runs inside the real
 * operator new, whose internal malloc must not count twice.
 *
 * The tracer never allocates with malloc: record buffers and map tables come
 * from mmap. dlsym may itself call malloc or calloc before the real ones are
 * known; those calls are served from a static bootstrap buffer, whose blocks
 * are recognised by address and never passed to the real allocator.
 *
 * Output: BMM_TRACE_FILE (default "brainmm-%p.trace"; %p is the pid, %% a
 * percent sign), relative names taken from the directory the program
 * started in. The file is created at the first flush, so a process that
 * makes no allocation writes none. A program that execs gets a new trace
 * (the new image loads the tracer again): the image before the exec has
 * the same pid and start time, and its file is kept, the new one named
 * NAME.2 (.3 after a second exec, ...); a file of that name that another
 * process wrote is overwritten, so give a name with %p to keep one per
 * process. A child after fork() writes its own file, starting with INHERIT
 * records for the blocks it inherited; if the name has no %p, ".PID" is
 * appended. A child of _Fork (which skips the fork handlers), or of a
 * fork() made by a signal handler that interrupted one of our calls, is
 * not recorded. Records still in buffers when a process ends by exec,
 * _exit or a crash are lost.
 *
 * Ordering. Records carry CLOCK_MONOTONIC time and the replayer merges the
 * threads' records by time, so an object's allocation must never carry a
 * later time than its next operation, even when another thread performs
 * that. The clock is therefore read
 *   allocation: after the real call, before the map insert;
 *   free:       after the map remove, before the real call;
 *   realloc:    after the map remove and the real call, before the insert.
 * A thread that frees or reallocates an object found it in the map, so the
 * insert (and the clock read before it) happened before its remove (and the
 * clock read after that).
 *
 * Concurrency and locks:
 *   map shard      spinlock each; held only around the table itself, never
 *                  across a call into the real allocator.
 *   record buffer  spinlock each; the owning thread holds it to append and
 *                  to flush a full buffer, the exit flusher to drain it.
 *   g_file_lock    mutex: writes to the file, opening it, the fork snapshot.
 *   g_index_lock   mutex: the bitmap of thread indices.
 * Lock order: buffer -> file -> shard. The index lock is held with no other,
 * except by the fork handlers: pthread_atfork takes index, file, then every
 * shard, so that a forked child finds the map consistent and the locks
 * free; buffer locks are reset in the child (their owners do not exist
 * there).
 * Reentrancy: t_depth is nonzero while this thread is inside one of our
 * entry points. A call made meanwhile (the real allocator or libc calling
 * malloc from inside ours, libstdc++'s operator new calling malloc, a signal
 * handler) is forwarded without a record, so each call the program makes
 * gives at most one record and no lock of ours is taken twice.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "trace_format.h"

#define TRACE_EXPORT __attribute__((visibility("default")))
#define trace_likely(x) __builtin_expect(!!(x), 1)
#define trace_unlikely(x) __builtin_expect(!!(x), 0)
#define trace_cold __attribute__((cold, noinline))

/* glibc 2.36 declares neither; C23 and BrainMM define them. */
void free_sized(void *p, size_t size);
void free_aligned_sized(void *p, size_t align, size_t size);
void *memalign(size_t align, size_t size);
void *pvalloc(size_t size);

/* ---- Configuration ---------------------------------------------------- */

/* Bytes of records a thread collects before one write(2): large enough that
 * the syscall is rare (one per ~5400 calls), small enough to be negligible
 * next to the program's own memory. */
static const size_t TRACE_BUFFER_BYTES = 128 * 1024;
/* Thread indices are 16 bits in a record; a thread that finds all taken
 * writes each record directly (slow, but correct). */
#define TRACE_MAX_THREADS 65536
/* Address map shards: a power of two, enough that threads rarely meet. */
#define TRACE_SHARDS 256
/* First table of a shard, in entries (12 KiB); it doubles at 5/8 full. */
static const size_t TRACE_SHARD_INITIAL = 512;
/* What dlsym allocates before the real malloc is known: a few hundred
 * bytes in practice. */
#define TRACE_BOOTSTRAP_BYTES (16 * 1024)
/* Object ids are handed to threads in blocks, to keep the shared counter
 * off the path of most calls. */
static const uint64_t TRACE_ID_BLOCK = 4096;
static const char TRACE_DEFAULT_FILE[] = "brainmm-%p.trace";

/* ---- The next allocator ----------------------------------------------- */

/* C++ operators, in the order of cxx_names[]. The kind says how to call one. */
enum {
  CXX_NEW,
  CXX_NEW_ARRAY,
  CXX_NEW_NOTHROW,
  CXX_NEW_ARRAY_NOTHROW,
  CXX_NEW_ALIGNED,
  CXX_NEW_ARRAY_ALIGNED,
  CXX_NEW_ALIGNED_NOTHROW,
  CXX_NEW_ARRAY_ALIGNED_NOTHROW,
  CXX_DELETE,
  CXX_DELETE_ARRAY,
  CXX_DELETE_SIZED,
  CXX_DELETE_ARRAY_SIZED,
  CXX_DELETE_NOTHROW,
  CXX_DELETE_ARRAY_NOTHROW,
  CXX_DELETE_ALIGNED,
  CXX_DELETE_ARRAY_ALIGNED,
  CXX_DELETE_SIZED_ALIGNED,
  CXX_DELETE_ARRAY_SIZED_ALIGNED,
  CXX_DELETE_ALIGNED_NOTHROW,
  CXX_DELETE_ARRAY_ALIGNED_NOTHROW,
  CXX_COUNT
};
static const char *const cxx_names[CXX_COUNT] = {
    "_Znwm",
    "_Znam",
    "_ZnwmRKSt9nothrow_t",
    "_ZnamRKSt9nothrow_t",
    "_ZnwmSt11align_val_t",
    "_ZnamSt11align_val_t",
    "_ZnwmSt11align_val_tRKSt9nothrow_t",
    "_ZnamSt11align_val_tRKSt9nothrow_t",
    "_ZdlPv",
    "_ZdaPv",
    "_ZdlPvm",
    "_ZdaPvm",
    "_ZdlPvRKSt9nothrow_t",
    "_ZdaPvRKSt9nothrow_t",
    "_ZdlPvSt11align_val_t",
    "_ZdaPvSt11align_val_t",
    "_ZdlPvmSt11align_val_t",
    "_ZdaPvmSt11align_val_t",
    "_ZdlPvSt11align_val_tRKSt9nothrow_t",
    "_ZdaPvSt11align_val_tRKSt9nothrow_t",
};

/* Written once by the initialising thread before g_state becomes READY
 * (release); read after an acquire load of g_state, or by the initialising
 * thread itself. */
static struct {
  void *(*malloc)(size_t);
  void (*free)(void *);
  void *(*calloc)(size_t, size_t);
  void *(*realloc)(void *, size_t);
  void *(*reallocarray)(void *, size_t, size_t);
  int (*posix_memalign)(void **, size_t, size_t);
  void *(*aligned_alloc)(size_t, size_t);
  void *(*memalign)(size_t, size_t);
  void *(*valloc)(size_t);
  void *(*pvalloc)(size_t);
  void (*free_sized)(void *, size_t);
  void (*free_aligned_sized)(void *, size_t, size_t);
  void *cxx[CXX_COUNT];
} g_real;

/* ---- Bootstrap buffer ------------------------------------------------- */

/* Blocks for calls made before the real allocator is known. Each block has
 * a 16-byte header holding its size (for realloc); the buffer starts zeroed
 * and is never reused, so calloc needs no clearing. */
static _Alignas(64) unsigned char g_boot[TRACE_BOOTSTRAP_BYTES];
static _Atomic size_t g_boot_used;

static inline bool boot_owns(const void *p) {
  return (uintptr_t)p - (uintptr_t)g_boot < sizeof g_boot;
}

static void *boot_alloc(size_t size, size_t align) {
  if (align < 16) align = 16;
  if (size > sizeof g_boot || align > sizeof g_boot / 4) {
    errno = ENOMEM;
    return NULL;
  }
  size_t old = atomic_load_explicit(&g_boot_used, memory_order_relaxed), start;
  do {
    start = (old + 16 + align - 1) & ~(align - 1); /* payload, after the header */
    if (start + size > sizeof g_boot) {
      errno = ENOMEM;
      return NULL;
    }
  } while (!atomic_compare_exchange_weak_explicit(&g_boot_used, &old, start + size,
                                                  memory_order_relaxed, memory_order_relaxed));
  memcpy(g_boot + start - 16, &size, sizeof size);
  return g_boot + start;
}

static size_t boot_size(const void *p) {
  size_t size;
  memcpy(&size, (const unsigned char *)p - 16, sizeof size);
  return size;
}

/* ---- State ------------------------------------------------------------ */

enum {
  ST_UNINIT, /* no call seen yet */
  ST_INIT,   /* one thread is resolving the real functions */
  ST_READY,  /* recording */
  ST_FORKED, /* a child after fork(): the next call writes the snapshot first */
  ST_OFF     /* not recording (initialisation or the file failed) */
};
static _Atomic int g_state = ST_UNINIT;
static _Atomic bool g_finalizing; /* the process is exiting: flush every record at once */

/* All TLS is initial-exec (the build says so): the tracer is preloaded, so
 * it lives in the static TLS block and an access is one instruction. */
static __thread int t_depth;    /* our entry points active on this thread */
static __thread bool t_in_init; /* this thread is running trace_init */

static uint64_t g_t0_ns; /* CLOCK_MONOTONIC at initialisation: time 0 */
static size_t g_page_size = 4096;
static pthread_key_t g_thread_key;
static _Atomic uint64_t g_next_id = 1;

static inline uint64_t trace_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec - g_t0_ns;
}

static inline unsigned ceil_log2(size_t align) {
  return align <= 1 ? 0 : 64 - (unsigned)__builtin_clzll((unsigned long long)align - 1);
}

/* Short, allocation-free message on stderr. */
static void trace_say(const char *a, const char *b, const char *c) {
  const char *parts[4] = {"brainmm-trace: ", a, b, c};
  for (int i = 0; i < 4; i++) {
    if (parts[i] == NULL) continue;
    ssize_t unused = write(2, parts[i], strlen(parts[i]));
    (void)unused;
  }
  ssize_t unused = write(2, "\n", 1);
  (void)unused;
}

/* ---- Spinlocks -------------------------------------------------------- */

/* For the shard and buffer locks, held for a few dozen instructions (a
 * buffer flush excepted); a waiter that keeps failing yields the CPU, which
 * matters when threads outnumber processors. */
static inline void spin_lock(_Atomic uint32_t *lock) {
  if (trace_likely(!atomic_exchange_explicit(lock, 1, memory_order_acquire))) return;
  for (unsigned spins = 0;;) {
    while (atomic_load_explicit(lock, memory_order_relaxed)) {
      if (spins < 64) {
        __builtin_ia32_pause();
        spins++;
      } else {
        sched_yield();
      }
    }
    if (!atomic_exchange_explicit(lock, 1, memory_order_acquire)) return;
  }
}

static inline bool spin_trylock(_Atomic uint32_t *lock) {
  return !atomic_exchange_explicit(lock, 1, memory_order_acquire);
}

static inline void spin_unlock(_Atomic uint32_t *lock) {
  atomic_store_explicit(lock, 0, memory_order_release);
}

/* ---- Address -> object map -------------------------------------------- */

/* Linear probing with backward-shift deletion (no tombstones), one table
 * per shard, addr 0 marks an empty entry. meta is the packed size and
 * alignment (trace_format.h), kept for the fork snapshot. */
typedef struct map_entry_s {
  uint64_t addr;
  uint64_t id;
  uint64_t meta;
} map_entry_t;

typedef struct map_shard_s {
  _Atomic uint32_t lock;
  size_t mask; /* entries - 1; 0 before the first table */
  size_t count;
  map_entry_t *entries;
} __attribute__((aligned(64))) map_shard_t;

static map_shard_t g_map[TRACE_SHARDS];

/* MurmurHash3's finaliser: every address bit affects every hash bit, so
 * the top byte picks the shard and the low bits the entry independently. */
static inline uint64_t map_hash(uint64_t x) {
  x ^= x >> 33;
  x *= UINT64_C(0xff51afd7ed558ccd);
  x ^= x >> 33;
  x *= UINT64_C(0xc4ceb9fe1a85ec53);
  x ^= x >> 33;
  return x;
}

static inline map_shard_t *map_shard(uint64_t hash) {
  return &g_map[hash >> 56 & (TRACE_SHARDS - 1)];
}

static void *trace_mmap(size_t bytes) {
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

/* Grows (or creates) the shard's table; false when mmap fails. Lock held. */
static bool map_grow_locked(map_shard_t *s) {
  size_t old_n = s->entries ? s->mask + 1 : 0;
  size_t n = old_n ? old_n * 2 : TRACE_SHARD_INITIAL;
  map_entry_t *table = trace_mmap(n * sizeof(map_entry_t));
  if (table == NULL) return false;
  for (size_t i = 0; i < old_n; i++) {
    map_entry_t *e = &s->entries[i];
    if (e->addr == 0) continue;
    size_t j = map_hash(e->addr) & (n - 1);
    while (table[j].addr != 0)
      j = (j + 1) & (n - 1);
    table[j] = *e;
  }
  if (old_n) munmap(s->entries, old_n * sizeof(map_entry_t));
  s->entries = table;
  s->mask = n - 1;
  return true;
}

enum { MAP_FAILED_INSERT, MAP_INSERTED, MAP_REPLACED };

/* Inserts addr -> (id, meta). If addr was already there, its block was
 * released behind our back (by a path we do not interpose): the old entry is
 * returned in *old so that the caller records its end, and replaced. */
static int map_insert(uint64_t addr, uint64_t id, uint64_t meta, map_entry_t *old) {
  uint64_t h = map_hash(addr);
  map_shard_t *s = map_shard(h);
  int result = MAP_INSERTED;
  spin_lock(&s->lock);
  if ((s->count + 1) * 8 > (s->entries ? s->mask + 1 : 0) * 5 && !map_grow_locked(s)) {
    spin_unlock(&s->lock);
    return MAP_FAILED_INSERT;
  }
  size_t i = h & s->mask;
  while (s->entries[i].addr != 0 && s->entries[i].addr != addr)
    i = (i + 1) & s->mask;
  if (s->entries[i].addr == addr) {
    *old = s->entries[i];
    result = MAP_REPLACED;
  } else {
    s->count++;
  }
  s->entries[i] = (map_entry_t){addr, id, meta};
  spin_unlock(&s->lock);
  return result;
}

/* Removes addr; false when it is not there (a block we never recorded). */
static bool map_remove(uint64_t addr, uint64_t *id, uint64_t *meta) {
  uint64_t h = map_hash(addr);
  map_shard_t *s = map_shard(h);
  spin_lock(&s->lock);
  if (s->entries == NULL) {
    spin_unlock(&s->lock);
    return false;
  }
  size_t mask = s->mask, i = h & mask;
  map_entry_t *t = s->entries;
  while (t[i].addr != addr) {
    if (t[i].addr == 0) {
      spin_unlock(&s->lock);
      return false;
    }
    i = (i + 1) & mask;
  }
  *id = t[i].id;
  *meta = t[i].meta;
  /* Backward shift: pull later entries of the probe run into the hole
   * unless their home slot lies cyclically in (hole, their slot]. */
  for (size_t j = (i + 1) & mask; t[j].addr != 0; j = (j + 1) & mask) {
    size_t home = map_hash(t[j].addr) & mask;
    bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
    if (!stays) {
      t[i] = t[j];
      i = j;
    }
  }
  t[i].addr = 0;
  s->count--;
  spin_unlock(&s->lock);
  return true;
}

/* ---- Thread buffers and the file -------------------------------------- */

typedef struct trace_buffer_s {
  _Atomic uint32_t lock;
  uint16_t thread; /* the index this buffer belongs to */
  size_t count;    /* records in use */
  size_t capacity; /* records that fit */
  uint64_t last;   /* time of the last record */
  bmm_trace_record_t records[];
} trace_buffer_t;

static trace_buffer_t *g_buffers[TRACE_MAX_THREADS]; /* by thread index, kept for reuse */
static _Atomic uint32_t g_buffers_used;              /* 1 + highest index ever given */
static uint64_t g_index_bits[TRACE_MAX_THREADS / 64];
static pthread_mutex_t g_index_lock = PTHREAD_MUTEX_INITIALIZER;

static __thread trace_buffer_t *t_buf;
static __thread int t_index = -1;
static __thread bool t_detached; /* our thread-exit destructor has run */
static __thread uint64_t t_id_next, t_id_end;

static pthread_mutex_t g_file_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_fd = -1;
static dev_t g_file_dev;
static ino_t g_file_ino;
static bool g_file_broken;
static char g_pattern[PATH_MAX]; /* BMM_TRACE_FILE made absolute */
static char g_path[PATH_MAX + 32];
static bmm_trace_header_t g_header; /* pid, ppid and flags are refreshed per file */
static bool g_forked;               /* this process is a fork child */
static pid_t g_pid;                 /* this process, as initialisation or fork_child saw it */

static uint64_t next_id(void) {
  if (trace_unlikely(t_id_next == t_id_end)) {
    t_id_next = atomic_fetch_add_explicit(&g_next_id, TRACE_ID_BLOCK, memory_order_relaxed);
    t_id_end = t_id_next + TRACE_ID_BLOCK;
  }
  return t_id_next++;
}

static char *append_str(char *out, char *end, const char *s) {
  while (*s && out < end)
    *out++ = *s++;
  return out;
}

static char *append_uint(char *out, char *end, unsigned long v) {
  char digits[24];
  int n = 0;
  do {
    digits[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (n && out < end)
    *out++ = digits[--n];
  return out;
}

/* g_path for this process: %p -> pid, %% -> %; a fork child whose pattern
 * has no %p gets ".PID" appended so that it does not overwrite the parent. */
static void file_make_path(void) {
  char *out = g_path, *end = g_path + sizeof g_path - 1;
  unsigned long pid = (unsigned long)getpid();
  bool has_pid = false;
  for (const char *s = g_pattern; *s && out < end; s++) {
    if (s[0] == '%' && s[1] == 'p') {
      out = append_uint(out, end, pid);
      has_pid = true;
      s++;
    } else if (s[0] == '%' && s[1] == '%') {
      *out++ = '%';
      s++;
    } else {
      *out++ = *s;
    }
  }
  if (!has_pid && g_forked) out = append_uint(append_str(out, end, "."), end, pid);
  *out = '\0';
}

static void file_fail_locked(const char *what) {
  if (!g_file_broken) trace_say(what, g_path, ": recording stops");
  g_file_broken = true;
  atomic_store_explicit(&g_state, ST_OFF, memory_order_release);
}

static bool file_write_all_locked(const void *data, size_t len) {
  const char *p = data;
  while (len) {
    ssize_t n = write(g_fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      file_fail_locked("cannot write ");
      return false;
    }
    p += n;
    len -= (size_t)n;
  }
  return true;
}

/* Moves a new descriptor out of the low numbers that programs (shells in
 * particular) manage themselves. */
static int file_raise_fd(int fd) {
  int high = fcntl(fd, F_DUPFD_CLOEXEC, 100);
  if (high < 0) return fd;
  close(fd);
  return high;
}

/* When this process started, in clock ticks since boot (field 22 of
 * /proc/self/stat, after the command name, which may hold anything but
 * ends at the last ')'); 0 if unknown. The same across an exec. */
static uint64_t process_start_ticks(void) {
  char buf[1024];
  int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  const char *p = strrchr(buf, ')');
  for (int field = 2; p != NULL && field < 22; field++) /* p at the end of field `field` */
    p = strchr(p + 1, ' ');
  uint64_t ticks = 0;
  for (p = p ? p + 1 : NULL; p != NULL && *p >= '0' && *p <= '9'; p++)
    ticks = ticks * 10 + (uint64_t)(*p - '0');
  return ticks;
}

/* A fork child that cannot be recorded: it stops, silently, and leaves
 * the parent's file alone (its copy of the descriptor closed). */
static void child_not_recorded(void) {
  if (g_fd >= 0) close(g_fd);
  g_fd = -1;
  g_file_broken = true;
  atomic_store_explicit(&g_state, ST_OFF, memory_order_release);
}

/* Whether the file at `path` is a trace written by this very process: an
 * image of it before an exec (which keeps the pid and the start time;
 * another process with our pid, as each container's pid 1, started at
 * another time, unless within the same clock tick of 10 ms). */
static bool file_is_own_trace(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bmm_trace_header_t h;
  bool own = read(fd, &h, sizeof h) == (ssize_t)sizeof h &&
             memcmp(h.magic, BMM_TRACE_MAGIC, sizeof h.magic) == 0 && h.pid == (uint32_t)getpid() &&
             h.proc_start != 0 && h.proc_start == process_start_ticks();
  close(fd);
  return own;
}

/* The trace of this process before an exec is kept: this image writes
 * g_path.2 (or .3, ...) instead of truncating it. Another process's file
 * of that name is overwritten, as before. */
static void file_avoid_own_trace(void) {
  if (!file_is_own_trace(g_path)) return;
  size_t len = strlen(g_path);
  for (unsigned long n = 2; n < 1000 && len + 5 < sizeof g_path; n++) {
    char *end = append_uint(append_str(g_path + len, g_path + sizeof g_path - 1, "."),
                            g_path + sizeof g_path - 1, n);
    *end = '\0';
    if (!file_is_own_trace(g_path)) return;
  }
}

/* Makes g_fd a descriptor of our own file, creating the file (and writing
 * its header) the first time. The program may have closed our descriptor
 * and reused the number for a file of its own: each flush checks the
 * identity first and reopens the file to append if it changed. */
static bool file_ensure_locked(void) {
  if (g_file_broken) return false;
  struct stat st;
  if (g_pid != getpid()) {
    /* A child made without the fork handlers (_Fork): it shares the
     * parent's descriptor and object ids, and its buffers hold the
     * parent's records. It is not recorded; the parent's file stays whole. */
    child_not_recorded();
    return false;
  }
  if (g_fd >= 0) {
    if (fstat(g_fd, &st) == 0 && st.st_dev == g_file_dev && st.st_ino == g_file_ino) return true;
    int fd = open(g_path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0) {
      g_fd = -1;
      file_fail_locked("lost the trace file ");
      return false;
    }
    g_fd = file_raise_fd(fd);
    return true;
  }
  file_make_path();
  file_avoid_own_trace();
  int fd = open(g_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    file_fail_locked("cannot create ");
    return false;
  }
  g_fd = file_raise_fd(fd);
  if (fstat(g_fd, &st) == 0) {
    g_file_dev = st.st_dev;
    g_file_ino = st.st_ino;
  }
  g_header.pid = (uint32_t)getpid();
  g_header.ppid = (uint32_t)getppid();
  g_header.proc_start = process_start_ticks();
  g_header.flags = g_forked ? BMM_TRACE_FLAG_FORKED : 0;
  return file_write_all_locked(&g_header, sizeof g_header);
}

static void file_write(const void *data, size_t len) {
  pthread_mutex_lock(&g_file_lock);
  if (file_ensure_locked()) file_write_all_locked(data, len);
  pthread_mutex_unlock(&g_file_lock);
}

static void buffer_flush_locked(trace_buffer_t *b) {
  if (b->count == 0) return;
  file_write(b->records, b->count * sizeof(bmm_trace_record_t));
  b->count = 0;
}

/* Gives this thread an index and its buffer; NULL when none is left or
 * mmap fails (the thread then writes each record directly). */
static trace_buffer_t *thread_attach(void) {
  pthread_mutex_lock(&g_index_lock);
  int index = -1;
  for (size_t w = 0; w < TRACE_MAX_THREADS / 64; w++) {
    if (~g_index_bits[w]) {
      unsigned bit = (unsigned)__builtin_ctzll(~g_index_bits[w]);
      index = (int)(w * 64 + bit);
      g_index_bits[w] |= UINT64_C(1) << bit;
      break;
    }
  }
  trace_buffer_t *b = NULL;
  if (index >= 0) {
    b = g_buffers[index];
    if (b == NULL) {
      b = trace_mmap(TRACE_BUFFER_BYTES);
      if (b != NULL) {
        b->thread = (uint16_t)index;
        b->capacity = (TRACE_BUFFER_BYTES - sizeof *b) / sizeof(bmm_trace_record_t);
        g_buffers[index] = b;
        if ((uint32_t)index + 1 > atomic_load_explicit(&g_buffers_used, memory_order_relaxed))
          atomic_store_explicit(&g_buffers_used, (uint32_t)index + 1, memory_order_release);
      } else {
        g_index_bits[index / 64] &= ~(UINT64_C(1) << (index % 64));
      }
    }
  }
  pthread_mutex_unlock(&g_index_lock);
  if (index >= 0) t_index = index;
  if (b != NULL) {
    t_buf = b;
    /* Keys below 32 live in the thread descriptor: no allocation. */
    pthread_setspecific(g_thread_key, b);
  }
  return b;
}

/* Thread exit (pthread key destructor): write out this thread's records and
 * give its index back. Any later call of this thread (another destructor)
 * writes its record directly under its old index. */
static void thread_detach(void *arg) {
  trace_buffer_t *b = arg;
  int saved_errno = errno;
  t_depth++;
  spin_lock(&b->lock);
  buffer_flush_locked(b);
  spin_unlock(&b->lock);
  t_buf = NULL;
  t_detached = true;
  pthread_mutex_lock(&g_index_lock);
  g_index_bits[b->thread / 64] &= ~(UINT64_C(1) << (b->thread % 64));
  pthread_mutex_unlock(&g_index_lock);
  t_depth--;
  errno = saved_errno;
}

static inline bmm_trace_record_t time_record(uint16_t thread, uint64_t now) {
  return (bmm_trace_record_t){BMM_TRACE_OP_TIME, BMM_TRACE_API_NONE, thread, 0, now, 0};
}

/* Appends one record made at time `now` to this thread's buffer. */
static void trace_emit(uint8_t op, uint8_t api, uint64_t id, uint64_t size_align, uint64_t now) {
  trace_buffer_t *b = t_buf;
  if (trace_unlikely(b == NULL) && (t_detached || (b = thread_attach()) == NULL)) {
    uint16_t thread = (uint16_t)(t_index < 0 ? 0 : t_index);
    bmm_trace_record_t two[2] = {time_record(thread, now), {op, api, thread, 0, id, size_align}};
    file_write(two, sizeof two);
    return;
  }
  spin_lock(&b->lock);
  if (b->count + 2 > b->capacity) buffer_flush_locked(b);
  uint64_t delta = now - b->last; /* huge if now < last, which the test below catches */
  if (b->count == 0 || delta > UINT32_MAX) {
    b->records[b->count++] = time_record(b->thread, now);
    delta = 0;
  }
  b->records[b->count++] =
      (bmm_trace_record_t){op, api, b->thread, (uint32_t)delta, id, size_align};
  b->last = now;
  if (trace_unlikely(atomic_load_explicit(&g_finalizing, memory_order_relaxed)))
    buffer_flush_locked(b);
  spin_unlock(&b->lock);
}

/* ---- Fork ------------------------------------------------------------- */

static bool g_fork_locked; /* the prepare handler took our locks */
/* fork() from a signal handler that interrupted one of our calls on this
 * thread: it holds locks of ours that the handlers would wait for forever.
 * They take none then, and the child is not recorded. */
static bool g_fork_nested;

static void fork_prepare(void) {
  g_fork_nested = t_depth != 0;
  g_fork_locked =
      !g_fork_nested && atomic_load_explicit(&g_state, memory_order_acquire) != ST_UNINIT;
  if (!g_fork_locked) return;
  pthread_mutex_lock(&g_index_lock);
  pthread_mutex_lock(&g_file_lock);
  for (int i = 0; i < TRACE_SHARDS; i++)
    spin_lock(&g_map[i].lock);
}

static void fork_parent(void) {
  if (!g_fork_locked) return;
  for (int i = TRACE_SHARDS - 1; i >= 0; i--)
    spin_unlock(&g_map[i].lock);
  pthread_mutex_unlock(&g_file_lock);
  pthread_mutex_unlock(&g_index_lock);
}

/* In the child: only this thread exists. Buffered records are the parent's
 * (it writes them itself) and other threads' buffers are ownerless, so all
 * are emptied; the map stays, because the child inherits those blocks. */
static void fork_child(void) {
  if (g_fork_nested) {
    /* The interrupted call goes on in the child when the handler returns:
     * a write of the parent's records it was making fails here. */
    child_not_recorded();
    return;
  }
  if (!g_fork_locked) return;
  for (int i = TRACE_SHARDS - 1; i >= 0; i--)
    spin_unlock(&g_map[i].lock);
  uint32_t used = atomic_load_explicit(&g_buffers_used, memory_order_relaxed);
  for (uint32_t i = 0; i < used; i++) {
    if (g_buffers[i] == NULL) continue;
    atomic_store_explicit(&g_buffers[i]->lock, 0, memory_order_relaxed);
    g_buffers[i]->count = 0;
  }
  memset(g_index_bits, 0, sizeof g_index_bits);
  if (t_buf != NULL) g_index_bits[t_buf->thread / 64] |= UINT64_C(1) << (t_buf->thread % 64);
  if (g_fd >= 0) close(g_fd);
  g_fd = -1;
  g_forked = true;
  g_pid = getpid();
  int expected = ST_READY;
  atomic_compare_exchange_strong(&g_state, &expected, ST_FORKED);
  pthread_mutex_unlock(&g_file_lock);
  pthread_mutex_unlock(&g_index_lock);
}

/* First call in a fork child: before anything changes the map, write the
 * blocks inherited from the parent as INHERIT records at the current time.
 * Records are written straight to the file, in chunks that each start with
 * a TIME record. */
static trace_cold void fork_snapshot(void) {
  pthread_mutex_lock(&g_file_lock);
  if (atomic_load_explicit(&g_state, memory_order_acquire) == ST_FORKED) {
    uint16_t thread = (uint16_t)(t_index < 0 ? 0 : t_index);
    uint64_t now = trace_now();
    bmm_trace_record_t chunk[256];
    size_t n = 0;
    bool ok = file_ensure_locked();
    for (int i = 0; ok && i < TRACE_SHARDS; i++) {
      map_shard_t *s = &g_map[i];
      spin_lock(&s->lock);
      for (size_t j = 0; ok && s->entries && j <= s->mask; j++) {
        map_entry_t *e = &s->entries[j];
        if (e->addr == 0) continue;
        if (n == 0) chunk[n++] = time_record(thread, now);
        chunk[n++] = (bmm_trace_record_t){
            BMM_TRACE_OP_INHERIT, BMM_TRACE_API_FORK, thread, 0, e->id, e->meta};
        if (n == sizeof chunk / sizeof chunk[0]) {
          ok = file_write_all_locked(chunk, n * sizeof chunk[0]);
          n = 0;
        }
      }
      spin_unlock(&s->lock);
    }
    if (ok && n) ok = file_write_all_locked(chunk, n * sizeof chunk[0]);
    if (ok) atomic_store_explicit(&g_state, ST_READY, memory_order_release);
  }
  pthread_mutex_unlock(&g_file_lock);
}

/* ---- Initialisation and exit ------------------------------------------ */

static void *resolve(const char *name) {
  return dlsym(RTLD_NEXT, name);
}

/* g_pattern: BMM_TRACE_FILE (or the default) made absolute, from the
 * directory the program started in: our constructor runs before the
 * program's (which may chdir), unless an allocation made by an earlier
 * constructor initialised us first. */
static _Atomic int g_pattern_state; /* 0, 1 being made, 2 made */

static void trace_pattern_init(void) {
  int expected = 0;
  if (!atomic_compare_exchange_strong(&g_pattern_state, &expected, 1)) {
    while (atomic_load(&g_pattern_state) != 2)
      sched_yield();
    return;
  }
  const char *name = getenv("BMM_TRACE_FILE");
  if (name == NULL || *name == '\0') name = TRACE_DEFAULT_FILE;
  char *out = g_pattern, *end = g_pattern + sizeof g_pattern - 1;
  if (name[0] != '/' && getcwd(g_pattern, sizeof g_pattern - 2) != NULL) {
    out = g_pattern + strlen(g_pattern);
    if (out > g_pattern && out[-1] != '/') *out++ = '/';
  }
  out = append_str(out, end, name);
  *out = '\0';
  atomic_store(&g_pattern_state, 2);
}

/* Before any constructor of the program (the tracer is preloaded). */
__attribute__((constructor)) static void trace_constructor(void) {
  trace_pattern_init();
}

/* Runs once, in the first thread to call us, with t_depth set. Returns
 * false when recording is impossible; the real functions are then still
 * known if they exist at all. */
static trace_cold bool trace_init_once(void) {
  t_in_init = true;
  /* While these are unknown, calls from dlsym get bootstrap blocks. */
  g_real.malloc = (void *(*)(size_t))resolve("malloc");
  g_real.free = (void (*)(void *))resolve("free");
  g_real.calloc = (void *(*)(size_t, size_t))resolve("calloc");
  g_real.realloc = (void *(*)(void *, size_t))resolve("realloc");
  g_real.reallocarray = (void *(*)(void *, size_t, size_t))resolve("reallocarray");
  g_real.posix_memalign = (int (*)(void **, size_t, size_t))resolve("posix_memalign");
  g_real.aligned_alloc = (void *(*)(size_t, size_t))resolve("aligned_alloc");
  g_real.memalign = (void *(*)(size_t, size_t))resolve("memalign");
  g_real.valloc = (void *(*)(size_t))resolve("valloc");
  g_real.pvalloc = (void *(*)(size_t))resolve("pvalloc");
  g_real.free_sized = (void (*)(void *, size_t))resolve("free_sized");
  g_real.free_aligned_sized = (void (*)(void *, size_t, size_t))resolve("free_aligned_sized");
  for (int i = 0; i < CXX_COUNT; i++)
    g_real.cxx[i] = resolve(cxx_names[i]);
  dlerror(); /* what the next allocator lacks must not show in the program's dlerror() */
  t_in_init = false;
  if (!g_real.malloc || !g_real.free || !g_real.calloc || !g_real.realloc ||
      !g_real.posix_memalign) {
    trace_say("cannot find the next malloc/free/calloc/realloc/posix_memalign", NULL, NULL);
    abort();
  }

  g_pid = getpid();
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  g_t0_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
  long page = sysconf(_SC_PAGESIZE);
  if (page > 0) g_page_size = (size_t)page;

  memcpy(g_header.magic, BMM_TRACE_MAGIC, sizeof g_header.magic);
  g_header.version = BMM_TRACE_VERSION;
  g_header.header_size = sizeof(bmm_trace_header_t);
  g_header.record_size = sizeof(bmm_trace_record_t);
  g_header.tick_ns = 1;
  g_header.clock_res_ns = clock_getres(CLOCK_MONOTONIC, &ts) == 0
                              ? (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec
                              : 0;
  clock_gettime(CLOCK_REALTIME, &ts);
  g_header.wall_start_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
  prctl(PR_GET_NAME, g_header.comm, 0, 0, 0);

  trace_pattern_init();
  if (pthread_key_create(&g_thread_key, thread_detach) != 0) {
    trace_say("pthread_key_create failed", NULL, NULL);
    return false;
  }
  if (pthread_atfork(fork_prepare, fork_parent, fork_child) != 0) {
    trace_say("pthread_atfork failed", NULL, NULL);
    return false;
  }
  return true;
}

/* The slow half of trace_begin: initialisation, a fork child's snapshot,
 * or waiting for another thread's initialisation. */
static trace_cold bool trace_start_slow(void) {
  int s = atomic_load_explicit(&g_state, memory_order_acquire);
  for (;;) {
    switch (s) {
    case ST_READY:
      return true;
    case ST_OFF:
      return false;
    case ST_FORKED:
      fork_snapshot();
      s = atomic_load_explicit(&g_state, memory_order_acquire);
      continue;
    case ST_INIT:
      if (t_in_init) return false;
      sched_yield();
      s = atomic_load_explicit(&g_state, memory_order_acquire);
      continue;
    default:
      if (atomic_compare_exchange_weak_explicit(&g_state, &s, ST_INIT, memory_order_acquire,
                                                memory_order_acquire)) {
        bool ok = trace_init_once();
        atomic_store_explicit(&g_state, ok ? ST_READY : ST_OFF, memory_order_release);
        return ok;
      }
    }
  }
}

/* True when this call is to be recorded: then t_depth is set and the
 * caller must call trace_end. Also makes sure the real functions are known
 * (or being resolved by this very thread). */
static inline bool trace_begin(void) {
  if (t_depth != 0) return false;
  if (trace_unlikely(atomic_load_explicit(&g_state, memory_order_acquire) != ST_READY)) {
    int saved_errno = errno;
    t_depth = 1;
    bool ok = trace_start_slow();
    t_depth = 0;
    errno = saved_errno;
    if (!ok) return false;
  }
  t_depth = 1;
  return true;
}

static inline void trace_end(void) {
  t_depth = 0;
}

/* Process exit: write out every thread's records; from now on each record
 * is written as it is made (destructors that run after ours still
 * allocate). */
__attribute__((destructor)) static void trace_fini(void) {
  int s = atomic_load_explicit(&g_state, memory_order_acquire);
  if (s != ST_READY && s != ST_FORKED) return;
  int saved_errno = errno;
  /* exit() from a signal handler that interrupted one of our calls on
   * this thread: the locks that call holds are ours, and waiting for them
   * would never end. Only what can be taken at once is written then. */
  bool nested = t_depth != 0;
  t_depth++;
  atomic_store_explicit(&g_finalizing, true, memory_order_seq_cst);
  uint32_t used = atomic_load_explicit(&g_buffers_used, memory_order_acquire);
  for (uint32_t i = 0; i < used; i++) {
    trace_buffer_t *b = g_buffers[i];
    if (b == NULL) continue;
    if (nested) {
      if (!spin_trylock(&b->lock)) continue;
      if (pthread_mutex_trylock(&g_file_lock) == 0) {
        if (b->count != 0 && file_ensure_locked())
          file_write_all_locked(b->records, b->count * sizeof(bmm_trace_record_t));
        b->count = 0;
        pthread_mutex_unlock(&g_file_lock);
      }
    } else {
      spin_lock(&b->lock);
      buffer_flush_locked(b);
    }
    spin_unlock(&b->lock);
  }
  t_depth--;
  errno = saved_errno;
}

/* ---- Recording -------------------------------------------------------- */

static void record_new(void *p, uint8_t op, uint8_t api, uint64_t size, unsigned align_log2) {
  int saved_errno = errno;
  uint64_t now = trace_now();
  uint64_t id = next_id(), meta = bmm__trace_pack(size, align_log2);
  map_entry_t old;
  int r = map_insert((uint64_t)(uintptr_t)p, id, meta, &old);
  if (r == MAP_REPLACED) trace_emit(BMM_TRACE_OP_FREE, BMM_TRACE_API_NONE, old.id, old.meta, now);
  if (r != MAP_FAILED_INSERT) trace_emit(op, api, id, meta, now);
  errno = saved_errno;
}

/* Before the real free: the clock is read after the remove. */
static void record_free(void *p, uint8_t api) {
  int saved_errno = errno;
  uint64_t id, meta;
  if (map_remove((uint64_t)(uintptr_t)p, &id, &meta))
    trace_emit(BMM_TRACE_OP_FREE, api, id, meta, trace_now());
  errno = saved_errno;
}

/* ---- Pass-through (not recorded) ---------------------------------------- */

static void *pass_malloc(size_t size) {
  return g_real.malloc ? g_real.malloc(size) : boot_alloc(size, 16);
}

static void pass_free(void *p) {
  if (p != NULL && !boot_owns(p) && g_real.free) g_real.free(p);
}

static void *pass_aligned(size_t align, size_t size) {
  if (g_real.posix_memalign == NULL) return boot_alloc(size, align);
  void *p = NULL;
  int err = g_real.posix_memalign(&p, align < sizeof(void *) ? sizeof(void *) : align, size);
  if (err) {
    errno = err;
    return NULL;
  }
  return p;
}

/* ---- C entry points --------------------------------------------------- */

TRACE_EXPORT void *malloc(size_t size) {
  if (!trace_begin()) return pass_malloc(size);
  void *p = g_real.malloc(size);
  if (p) record_new(p, BMM_TRACE_OP_MALLOC, BMM_TRACE_API_MALLOC, size, 0);
  trace_end();
  return p;
}

TRACE_EXPORT void free(void *p) {
  if (p == NULL || boot_owns(p)) return;
  if (!trace_begin()) {
    pass_free(p);
    return;
  }
  record_free(p, BMM_TRACE_API_FREE);
  g_real.free(p);
  trace_end();
}

TRACE_EXPORT void *calloc(size_t count, size_t size) {
  if (!trace_begin()) {
    if (g_real.calloc) return g_real.calloc(count, size);
    size_t total;
    if (__builtin_mul_overflow(count, size, &total)) {
      errno = ENOMEM;
      return NULL;
    }
    return boot_alloc(total, 16); /* the bootstrap buffer is zeroed */
  }
  void *p = g_real.calloc(count, size);
  if (p) record_new(p, BMM_TRACE_OP_CALLOC, BMM_TRACE_API_CALLOC, (uint64_t)count * size, 0);
  trace_end();
  return p;
}

/* realloc and reallocarray; real_call performs the real one. A block that
 * was never recorded (or is a bootstrap block) becomes a new object. */
static void *trace_realloc(void *p, size_t size, uint8_t api,
                           void *(*real_call)(void *, size_t, size_t), size_t count, size_t elem) {
  uint64_t id = 0, meta = 0;
  int saved_errno = errno;
  bool known = map_remove((uint64_t)(uintptr_t)p, &id, &meta);
  errno = saved_errno;
  void *q = real_call(p, count, elem);
  saved_errno = errno;
  uint64_t now = trace_now();
  if (q == NULL) {
    if (known && size == 0) {
      /* realloc(p, 0) freed p (glibc's and BrainMM's behaviour). */
      trace_emit(BMM_TRACE_OP_FREE, api, id, meta, now);
    } else if (known) {
      map_entry_t old; /* failed: p is unchanged and still the same object */
      map_insert((uint64_t)(uintptr_t)p, id, meta, &old);
    }
  } else if (known) {
    map_entry_t old;
    uint64_t new_meta = bmm__trace_pack(size, 0);
    int r = map_insert((uint64_t)(uintptr_t)q, id, new_meta, &old);
    if (r == MAP_REPLACED) trace_emit(BMM_TRACE_OP_FREE, BMM_TRACE_API_NONE, old.id, old.meta, now);
    trace_emit(BMM_TRACE_OP_REALLOC, api, id, new_meta, now);
  } else {
    record_new(q, BMM_TRACE_OP_MALLOC, api, size, 0);
  }
  errno = saved_errno;
  return q;
}

static void *call_realloc(void *p, size_t count, size_t elem) {
  (void)elem;
  return g_real.realloc(p, count);
}

static void *call_reallocarray(void *p, size_t count, size_t elem) {
  if (g_real.reallocarray) return g_real.reallocarray(p, count, elem);
  size_t total;
  if (__builtin_mul_overflow(count, elem, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  return g_real.realloc(p, total);
}

/* realloc of a bootstrap block: a fresh real block with the old contents. */
static void *boot_realloc(void *p, size_t size) {
  void *q = malloc(size);
  if (q != NULL) {
    size_t old = boot_size(p);
    memcpy(q, p, old < size ? old : size);
  }
  return q;
}

TRACE_EXPORT void *realloc(void *p, size_t size) {
  if (p == NULL) return malloc(size);
  if (boot_owns(p)) return boot_realloc(p, size);
  if (!trace_begin()) return g_real.realloc(p, size);
  void *q = trace_realloc(p, size, BMM_TRACE_API_REALLOC, call_realloc, size, 0);
  trace_end();
  return q;
}

TRACE_EXPORT void *reallocarray(void *p, size_t count, size_t elem) {
  size_t total;
  if (__builtin_mul_overflow(count, elem, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  if (p != NULL && boot_owns(p)) return boot_realloc(p, total);
  if (!trace_begin()) {
    if (g_real.realloc == NULL) return boot_alloc(total, 16);
    return call_reallocarray(p, count, elem);
  }
  void *q;
  if (p == NULL) {
    q = call_reallocarray(NULL, count, elem);
    if (q) record_new(q, BMM_TRACE_OP_MALLOC, BMM_TRACE_API_REALLOCARRAY, total, 0);
  } else {
    q = trace_realloc(p, total, BMM_TRACE_API_REALLOCARRAY, call_reallocarray, count, elem);
  }
  trace_end();
  return q;
}

TRACE_EXPORT int posix_memalign(void **out, size_t align, size_t size) {
  if (!trace_begin()) {
    if (g_real.posix_memalign) return g_real.posix_memalign(out, align, size);
    void *p = boot_alloc(size, align);
    if (p == NULL) return ENOMEM;
    *out = p;
    return 0;
  }
  int err = g_real.posix_memalign(out, align, size);
  if (err == 0)
    record_new(*out, BMM_TRACE_OP_ALIGNED, BMM_TRACE_API_POSIX_MEMALIGN, size, ceil_log2(align));
  trace_end();
  return err;
}

/* aligned_alloc, memalign, valloc and pvalloc: the real one is looked up
 * after trace_begin, which resolves the real functions on the process's
 * first call (read before, it was NULL then, and posix_memalign, which
 * refuses alignments memalign rounds up, served that call). One the next
 * allocator lacks is served by posix_memalign. */
enum { ALIGNED_ALLOC, ALIGNED_MEMALIGN, ALIGNED_VALLOC, ALIGNED_PVALLOC };

static void *call_aligned(int which, size_t align, size_t size) {
  switch (which) {
  case ALIGNED_ALLOC:
    if (g_real.aligned_alloc) return g_real.aligned_alloc(align, size);
    break;
  case ALIGNED_MEMALIGN:
    if (g_real.memalign) return g_real.memalign(align, size);
    break;
  case ALIGNED_VALLOC:
    if (g_real.valloc) return g_real.valloc(size);
    break;
  default:
    if (g_real.pvalloc) return g_real.pvalloc(size);
    break;
  }
  return pass_aligned(align, size);
}

static void *trace_aligned(int which, uint8_t api, size_t align, size_t size) {
  if (!trace_begin()) return call_aligned(which, align, size);
  void *p = call_aligned(which, align, size);
  if (p) record_new(p, BMM_TRACE_OP_ALIGNED, api, size, ceil_log2(align));
  trace_end();
  return p;
}

TRACE_EXPORT void *aligned_alloc(size_t align, size_t size) {
  return trace_aligned(ALIGNED_ALLOC, BMM_TRACE_API_ALIGNED_ALLOC, align, size);
}

TRACE_EXPORT void *memalign(size_t align, size_t size) {
  return trace_aligned(ALIGNED_MEMALIGN, BMM_TRACE_API_MEMALIGN, align, size);
}

TRACE_EXPORT void *valloc(size_t size) {
  return trace_aligned(ALIGNED_VALLOC, BMM_TRACE_API_VALLOC, g_page_size, size);
}

/* pvalloc rounds the size up to whole pages (one page for 0): the program
 * may use all of them, so that is the size recorded. */
TRACE_EXPORT void *pvalloc(size_t size) {
  size_t rounded = size == 0 ? g_page_size : (size + g_page_size - 1) & ~(g_page_size - 1);
  if (rounded < size) {
    errno = ENOMEM;
    return NULL;
  }
  return trace_aligned(ALIGNED_PVALLOC, BMM_TRACE_API_PVALLOC, g_page_size, rounded);
}

TRACE_EXPORT void free_sized(void *p, size_t size) {
  if (p == NULL || boot_owns(p)) return;
  bool rec = trace_begin();
  if (rec) record_free(p, BMM_TRACE_API_FREE_SIZED);
  if (g_real.free_sized)
    g_real.free_sized(p, size);
  else
    pass_free(p);
  if (rec) trace_end();
}

TRACE_EXPORT void free_aligned_sized(void *p, size_t align, size_t size) {
  if (p == NULL || boot_owns(p)) return;
  bool rec = trace_begin();
  if (rec) record_free(p, BMM_TRACE_API_FREE_ALIGNED_SIZED);
  if (g_real.free_aligned_sized)
    g_real.free_aligned_sized(p, align, size);
  else
    pass_free(p);
  if (rec) trace_end();
}

/* ---- C++ operators ---------------------------------------------------- */

/* The throwing forms may unwind through these frames (the library is built
 * with -fexceptions): the cleanup ends the recording then. */
static void cxx_end_cleanup(bool *recording) {
  if (*recording) trace_end();
}

static trace_cold void cxx_out_of_memory(size_t size) {
  char digits[24], *end = append_uint(digits, digits + sizeof digits - 1, size);
  *end = '\0';
  trace_say("operator new(", digits, ") failed and no C++ runtime is visible to throw; aborting");
  abort();
}

/* The real operator new `which` (fn) for size, align and the nothrow tag. */
static void *call_new(int which, void *fn, size_t size, size_t align, const void *tag) {
  switch (which) {
  case CXX_NEW:
  case CXX_NEW_ARRAY:
    return ((void *(*)(size_t))fn)(size);
  case CXX_NEW_NOTHROW:
  case CXX_NEW_ARRAY_NOTHROW:
    return ((void *(*)(size_t, const void *))fn)(size, tag);
  case CXX_NEW_ALIGNED:
  case CXX_NEW_ARRAY_ALIGNED:
    return ((void *(*)(size_t, size_t))fn)(size, align);
  default:
    return ((void *(*)(size_t, size_t, const void *))fn)(size, align, tag);
  }
}

static void *cxx_new(int which, size_t size, size_t align, const void *tag) {
  __attribute__((cleanup(cxx_end_cleanup))) bool recording = trace_begin();
  void *fn = g_real.cxx[which];
  void *p = NULL;
  if (fn == NULL) {
    p = align ? pass_aligned(align, size) : pass_malloc(size ? size : 1);
    bool nothrow = which == CXX_NEW_NOTHROW || which == CXX_NEW_ARRAY_NOTHROW ||
                   which == CXX_NEW_ALIGNED_NOTHROW || which == CXX_NEW_ARRAY_ALIGNED_NOTHROW;
    /* A runtime loaded since the first call (dlopen with RTLD_GLOBAL) may
     * be visible now: its operator new runs the new-handler and throws. */
    if (p == NULL && !nothrow && (fn = resolve(cxx_names[which])) == NULL) cxx_out_of_memory(size);
  }
  if (fn != NULL) p = call_new(which, fn, size, align, tag);
  if (recording && p)
    record_new(p, align ? BMM_TRACE_OP_ALIGNED : BMM_TRACE_OP_MALLOC, BMM_TRACE_API_NEW, size,
               ceil_log2(align));
  return p;
}

static void cxx_delete(int which, void *p, size_t size, size_t align, const void *tag) {
  if (p == NULL || boot_owns(p)) return;
  bool recording = trace_begin();
  if (recording) record_free(p, BMM_TRACE_API_DELETE);
  void *fn = g_real.cxx[which];
  if (fn == NULL) {
    pass_free(p);
  } else {
    switch (which) {
    case CXX_DELETE:
    case CXX_DELETE_ARRAY:
      ((void (*)(void *))fn)(p);
      break;
    case CXX_DELETE_SIZED:
    case CXX_DELETE_ARRAY_SIZED:
      ((void (*)(void *, size_t))fn)(p, size);
      break;
    case CXX_DELETE_NOTHROW:
    case CXX_DELETE_ARRAY_NOTHROW:
      ((void (*)(void *, const void *))fn)(p, tag);
      break;
    case CXX_DELETE_ALIGNED:
    case CXX_DELETE_ARRAY_ALIGNED:
      ((void (*)(void *, size_t))fn)(p, align);
      break;
    case CXX_DELETE_SIZED_ALIGNED:
    case CXX_DELETE_ARRAY_SIZED_ALIGNED:
      ((void (*)(void *, size_t, size_t))fn)(p, size, align);
      break;
    default:
      ((void (*)(void *, size_t, const void *))fn)(p, align, tag);
      break;
    }
  }
  if (recording) trace_end();
}

/* The mangled names are the Itanium C++ ABI's for a 64-bit size_t. */
TRACE_EXPORT void *_Znwm(size_t n) {
  return cxx_new(CXX_NEW, n, 0, NULL);
}
TRACE_EXPORT void *_Znam(size_t n) {
  return cxx_new(CXX_NEW_ARRAY, n, 0, NULL);
}
TRACE_EXPORT void *_ZnwmRKSt9nothrow_t(size_t n, const void *t) {
  return cxx_new(CXX_NEW_NOTHROW, n, 0, t);
}
TRACE_EXPORT void *_ZnamRKSt9nothrow_t(size_t n, const void *t) {
  return cxx_new(CXX_NEW_ARRAY_NOTHROW, n, 0, t);
}
TRACE_EXPORT void *_ZnwmSt11align_val_t(size_t n, size_t a) {
  return cxx_new(CXX_NEW_ALIGNED, n, a, NULL);
}
TRACE_EXPORT void *_ZnamSt11align_val_t(size_t n, size_t a) {
  return cxx_new(CXX_NEW_ARRAY_ALIGNED, n, a, NULL);
}
TRACE_EXPORT void *_ZnwmSt11align_val_tRKSt9nothrow_t(size_t n, size_t a, const void *t) {
  return cxx_new(CXX_NEW_ALIGNED_NOTHROW, n, a, t);
}
TRACE_EXPORT void *_ZnamSt11align_val_tRKSt9nothrow_t(size_t n, size_t a, const void *t) {
  return cxx_new(CXX_NEW_ARRAY_ALIGNED_NOTHROW, n, a, t);
}
TRACE_EXPORT void _ZdlPv(void *p) {
  cxx_delete(CXX_DELETE, p, 0, 0, NULL);
}
TRACE_EXPORT void _ZdaPv(void *p) {
  cxx_delete(CXX_DELETE_ARRAY, p, 0, 0, NULL);
}
TRACE_EXPORT void _ZdlPvm(void *p, size_t n) {
  cxx_delete(CXX_DELETE_SIZED, p, n, 0, NULL);
}
TRACE_EXPORT void _ZdaPvm(void *p, size_t n) {
  cxx_delete(CXX_DELETE_ARRAY_SIZED, p, n, 0, NULL);
}
TRACE_EXPORT void _ZdlPvRKSt9nothrow_t(void *p, const void *t) {
  cxx_delete(CXX_DELETE_NOTHROW, p, 0, 0, t);
}
TRACE_EXPORT void _ZdaPvRKSt9nothrow_t(void *p, const void *t) {
  cxx_delete(CXX_DELETE_ARRAY_NOTHROW, p, 0, 0, t);
}
TRACE_EXPORT void _ZdlPvSt11align_val_t(void *p, size_t a) {
  cxx_delete(CXX_DELETE_ALIGNED, p, 0, a, NULL);
}
TRACE_EXPORT void _ZdaPvSt11align_val_t(void *p, size_t a) {
  cxx_delete(CXX_DELETE_ARRAY_ALIGNED, p, 0, a, NULL);
}
TRACE_EXPORT void _ZdlPvmSt11align_val_t(void *p, size_t n, size_t a) {
  cxx_delete(CXX_DELETE_SIZED_ALIGNED, p, n, a, NULL);
}
TRACE_EXPORT void _ZdaPvmSt11align_val_t(void *p, size_t n, size_t a) {
  cxx_delete(CXX_DELETE_ARRAY_SIZED_ALIGNED, p, n, a, NULL);
}
TRACE_EXPORT void _ZdlPvSt11align_val_tRKSt9nothrow_t(void *p, size_t a, const void *t) {
  cxx_delete(CXX_DELETE_ALIGNED_NOTHROW, p, 0, a, t);
}
TRACE_EXPORT void _ZdaPvSt11align_val_tRKSt9nothrow_t(void *p, size_t a, const void *t) {
  cxx_delete(CXX_DELETE_ARRAY_ALIGNED_NOTHROW, p, 0, a, t);
}
