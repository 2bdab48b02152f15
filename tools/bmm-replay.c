/* bmm-replay.c: replays an allocation trace recorded by libbrainmm-trace.so
 * (format: src/trace_format.h) and measures the allocator that serves it.
 *
 *   bmm-replay TRACE [--threads N] [--touch pages|ends|none]
 *   bmm-replay TRACE --fixed-heap BYTES [--heap firstfit|bmm-fixed|bmm-rheap]
 *              [--rheap-locked N] [--check-heap]
 *   bmm-replay TRACE --info
 *
 * Owns: loading a trace (validating it and putting every record in one
 * global order), replay through the process's malloc (one thread, or one
 * replay thread per recorded thread), the fixed-heap mode with its heap
 * interface, the first-fit heap that is the interface's first
 * implementation, and the adapters that replay into BrainMM's fixed heap
 * (bmm_heap_new_fixed and bmm_heap_*, src/fheap.c and src/fixed.c) and
 * relocatable heap (bmm_rheap_*, src/rheap.c), the only BrainMM code that
 * runs. BrainMM comes from the static library without the malloc override
 * (brainmm_internal, see tools/CMakeLists.txt): malloc, calloc, realloc
 * and free stay the process's own (the C library's, or a preloaded
 * allocator's), so the malloc replay measures the same allocator whether
 * or not the fixed-heap code is linked in.
 *
 * Loading. The file is mapped and decoded with a running clock (a TIME
 * record sets it, other records advance it, see trace_format.h). Each
 * thread's chunks are in time order, so the records form "runs" of
 * nondecreasing time; a single-threaded program gives one run and needs no
 * sorting, otherwise the runs are merged with a heap, ties broken by
 * operation rank and file position. In that global order every object is
 * allocated, reallocated, freed; object ids become dense slot numbers, and
 * each operation learns how many operations its object had before it
 * (objseq), which is what the multi-threaded replay waits on.
 *
 * Measurement. The replayer's own tables are mmap'd, not malloc'd, so the
 * allocator under test sees only the trace's calls. Each block is touched:
 * by default one byte in every page it spans (first and last byte
 * included), so that a block's pages are resident as they would be in a
 * program that uses its memory, whatever way the allocator obtained them;
 * --touch ends writes only the first and last byte. The resident-set high
 * water mark is reset (/proc/self/clear_refs, "5") after loading and read
 * (VmHWM) after the replay; fragmentation is (peak RSS - RSS before the
 * replay) / peak live bytes, live bytes being the sizes the program asked
 * for, at their peak in the global order.
 *
 * Multi-threaded replay (--threads N): recorded thread t is replayed by
 * replay thread t mod N, each in global order. An operation on an object
 * first waits (spin, then yield, then sleep) until the object's previous
 * operation is done: done[slot] == objseq. This cannot deadlock: the
 * operation that is earliest in the global order among all pending ones
 * only waits for earlier operations, which are complete.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "brainmm.h"
#include "fixed.h" /* bmm__fixed_find, _usage, _check: src/fixed.c */
#include "trace_format.h"

/* src/rheap.c internals (prototypes in src/internal.h). */
void bmm__rheap_counters(bmm_rheap_t *rh, size_t *used, size_t *capacity, size_t *compactions,
                         size_t *bytes_moved);
bool bmm__rheap_check(bmm_rheap_t *rh);

/* ---- Small helpers ---------------------------------------------------- */

static const char *g_prog = "bmm-replay";

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", g_prog);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(2);
}

/* Bookkeeping memory comes from mmap so that it does not shape the heap of
 * the allocator being measured, and is populated at once so that the
 * replay's first writes to it do not count as growth of the resident set.
 * Zero-filled. */
static void *table_alloc(size_t bytes) {
  if (bytes == 0) bytes = 1;
  void *p =
      mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) die("cannot map %zu bytes for tables: %s", bytes, strerror(errno));
  return p;
}

static void table_free(void *p, size_t bytes) {
  if (p != NULL) munmap(p, bytes ? bytes : 1);
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static const char *op_name(unsigned op) {
  static const char *const names[BMM_TRACE_OP_COUNT] = {"time",    "malloc", "calloc", "aligned",
                                                        "realloc", "free",   "inherit"};
  return op < BMM_TRACE_OP_COUNT ? names[op] : "?";
}

/* ---- Trace loading ---------------------------------------------------- */

/* One operation, in global order. */
typedef struct replay_op_s {
  uint32_t slot;   /* dense object number */
  uint32_t objseq; /* operations on this object before this one */
  uint64_t size;   /* new size; for FREE the size freed */
  uint8_t op;      /* BMM_TRACE_OP_* other than TIME */
  uint8_t align_log2;
  uint16_t thread; /* recorded thread index */
  uint32_t reserved;
} replay_op_t;

typedef struct trace_s {
  const char *path;
  char name[256]; /* file name without directory and ".trace" */
  bmm_trace_header_t header;
  replay_op_t *ops;
  size_t nops;
  size_t nslots;         /* objects */
  unsigned nthreads;     /* 1 + highest recorded thread index */
  unsigned used_threads; /* distinct thread indices that have operations */
  uint64_t op_counts[BMM_TRACE_OP_COUNT];
  uint64_t peak_live_bytes, peak_live_objects;
  uint64_t final_live_bytes, final_live_objects;
  uint64_t first_ns, last_ns;
  size_t skipped_unknown;   /* realloc/free of an object not live */
  size_t skipped_duplicate; /* allocation of an id already live */
  size_t skipped_bad;       /* unknown operation codes */
  size_t truncated_bytes;   /* a partial record at the end */
  size_t runs;              /* sorted runs merged */
} trace_t;

/* id -> (slot, operations so far, current size). Linear probing with
 * backward-shift deletion; id 0 marks an empty entry (ids are never 0). */
typedef struct id_entry_s {
  uint64_t id;
  uint32_t slot;
  uint32_t seq;
  uint64_t size;
} id_entry_t;

typedef struct id_map_s {
  id_entry_t *entries;
  size_t mask, count;
} id_map_t;

static inline size_t id_hash(uint64_t id) {
  id *= UINT64_C(0x9E3779B97F4A7C15); /* Fibonacci hashing: ids are nearly sequential */
  return (size_t)(id ^ (id >> 29));
}

static void id_map_grow(id_map_t *m) {
  size_t old_n = m->entries ? m->mask + 1 : 0, n = old_n ? old_n * 2 : 4096;
  id_entry_t *t = table_alloc(n * sizeof *t);
  for (size_t i = 0; i < old_n; i++) {
    if (m->entries[i].id == 0) continue;
    size_t j = id_hash(m->entries[i].id) & (n - 1);
    while (t[j].id)
      j = (j + 1) & (n - 1);
    t[j] = m->entries[i];
  }
  table_free(m->entries, old_n * sizeof *t);
  m->entries = t;
  m->mask = n - 1;
}

static id_entry_t *id_map_find(id_map_t *m, uint64_t id) {
  if (m->entries == NULL) return NULL;
  for (size_t i = id_hash(id) & m->mask;; i = (i + 1) & m->mask) {
    if (m->entries[i].id == id) return &m->entries[i];
    if (m->entries[i].id == 0) return NULL;
  }
}

static id_entry_t *id_map_insert(id_map_t *m, uint64_t id) {
  if ((m->count + 1) * 4 > (m->entries ? m->mask + 1 : 0) * 3) id_map_grow(m);
  size_t i = id_hash(id) & m->mask;
  while (m->entries[i].id)
    i = (i + 1) & m->mask;
  m->entries[i].id = id;
  m->count++;
  return &m->entries[i];
}

static void id_map_remove(id_map_t *m, id_entry_t *e) {
  id_entry_t *t = m->entries;
  size_t mask = m->mask, i = (size_t)(e - t);
  for (size_t j = (i + 1) & mask; t[j].id; j = (j + 1) & mask) {
    size_t home = id_hash(t[j].id) & mask;
    bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
    if (!stays) {
      t[i] = t[j];
      i = j;
    }
  }
  t[i].id = 0;
  m->count--;
}

/* Sort key of a record: time, then rank, then position in the file. */
typedef struct merge_head_s {
  uint64_t time;
  uint64_t tie; /* rank << 40 | position within the compact array */
  size_t pos, end;
} merge_head_t;

static inline bool head_less(const merge_head_t *a, const merge_head_t *b) {
  return a->time != b->time ? a->time < b->time : a->tie < b->tie;
}

static void heap_sift_down(merge_head_t *h, size_t n, size_t i) {
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < n && head_less(&h[l], &h[m])) m = l;
    if (r < n && head_less(&h[r], &h[m])) m = r;
    if (m == i) return;
    merge_head_t t = h[i];
    h[i] = h[m];
    h[m] = t;
    i = m;
  }
}

static void trace_set_name(trace_t *t, const char *path) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  snprintf(t->name, sizeof t->name, "%s", base);
  size_t n = strlen(t->name);
  if (n > 6 && strcmp(t->name + n - 6, ".trace") == 0) t->name[n - 6] = '\0';
  for (char *c = t->name; *c; c++)
    if (*c == ' ' || *c == '=') *c = '_'; /* keep the RESULT line parseable */
}

static void trace_load(trace_t *t, const char *path) {
  memset(t, 0, sizeof *t);
  t->path = path;
  trace_set_name(t, path);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("cannot open %s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) die("cannot stat %s: %s", path, strerror(errno));
  size_t file_size = (size_t)st.st_size;
  if (file_size < sizeof(bmm_trace_header_t)) die("%s: too short for a trace header", path);
  unsigned char *map = mmap(NULL, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (map == MAP_FAILED) die("cannot map %s: %s", path, strerror(errno));
  close(fd);
  memcpy(&t->header, map, sizeof t->header);
  const bmm_trace_header_t *h = &t->header;
  if (memcmp(h->magic, BMM_TRACE_MAGIC, sizeof h->magic) != 0)
    die("%s: not a BrainMM trace (bad magic)", path);
  if (h->version != BMM_TRACE_VERSION)
    die("%s: trace version %u, this replayer reads %u", path, h->version, BMM_TRACE_VERSION);
  if (h->record_size != sizeof(bmm_trace_record_t) || h->header_size < sizeof *h ||
      h->header_size > file_size)
    die("%s: unexpected header (header %u bytes, records %u bytes)", path, h->header_size,
        h->record_size);
  const bmm_trace_record_t *rec = (const bmm_trace_record_t *)(map + h->header_size);
  size_t nrec = (file_size - h->header_size) / sizeof *rec;
  t->truncated_bytes = (file_size - h->header_size) % sizeof *rec;
  if (nrec >= UINT32_MAX) die("%s: too many records (%zu)", path, nrec);

  /* Pass 1: count the operations and the runs. A run is one thread's
   * chunk (a TIME record starts each) or, within one, records of
   * nondecreasing time: merged, records of equal time from different
   * chunks take their op rank's order, whatever their order in the file. */
  size_t nops = 0, runs = 0;
  uint64_t clock = 0, prev = 0;
  bool chunk_start = false;
  for (size_t i = 0; i < nrec; i++) {
    if (rec[i].op == BMM_TRACE_OP_TIME) {
      clock = rec[i].id;
      chunk_start = true;
      continue;
    }
    clock += rec[i].delta;
    if (nops == 0 || clock < prev || chunk_start) runs++;
    chunk_start = false;
    prev = clock;
    nops++;
  }
  t->runs = runs;

  /* The global order: file order when there is one run, else a merge. */
  uint32_t *order = NULL; /* record positions in global order */
  if (runs > 1) {
    uint32_t *pos = table_alloc(nops * sizeof *pos);
    uint64_t *time = table_alloc(nops * sizeof *time);
    merge_head_t *heap = table_alloc(runs * sizeof *heap);
    size_t k = 0, r = 0;
    clock = 0;
    chunk_start = false;
    for (size_t i = 0; i < nrec; i++) {
      if (rec[i].op == BMM_TRACE_OP_TIME) {
        clock = rec[i].id;
        chunk_start = true;
        continue;
      }
      clock += rec[i].delta;
      if (k == 0 || clock < time[k - 1] || chunk_start) {
        if (r) heap[r - 1].end = k;
        heap[r++].pos = k;
      }
      chunk_start = false;
      pos[k] = (uint32_t)i;
      time[k++] = clock;
    }
    heap[r - 1].end = k;
    for (size_t j = 0; j < r; j++) {
      size_t p = heap[j].pos;
      heap[j].time = time[p];
      heap[j].tie = (uint64_t)bmm__trace_op_rank(rec[pos[p]].op) << 40 | p;
    }
    for (size_t j = r / 2; j-- > 0;)
      heap_sift_down(heap, r, j);
    order = table_alloc(nops * sizeof *order);
    size_t live_runs = r;
    for (size_t n = 0; n < nops; n++) {
      size_t p = heap[0].pos++;
      order[n] = pos[p];
      if (heap[0].pos == heap[0].end) {
        heap[0] = heap[--live_runs];
      } else {
        size_t q = heap[0].pos;
        heap[0].time = time[q];
        heap[0].tie = (uint64_t)bmm__trace_op_rank(rec[pos[q]].op) << 40 | q;
      }
      heap_sift_down(heap, live_runs, 0);
    }
    table_free(heap, runs * sizeof *heap);
    table_free(time, nops * sizeof *time);
    table_free(pos, nops * sizeof *pos);
  }

  /* Pass 2, in global order: ids to slots, checks, live bytes. The first
   * and last times come from the same running clock. */
  t->ops = table_alloc(nops * sizeof *t->ops);
  id_map_t ids = {0};
  uint64_t live = 0;
  bool seen_thread[65536] = {0};
  size_t n = 0, file_pos = 0;
  clock = 0;
  bool first = true;
  for (size_t k = 0; k < nops; k++) {
    const bmm_trace_record_t *r;
    if (order) {
      r = &rec[order[k]];
    } else {
      while (rec[file_pos].op == BMM_TRACE_OP_TIME)
        clock = rec[file_pos++].id;
      r = &rec[file_pos++];
      clock += r->delta;
      if (first) t->first_ns = clock;
      t->last_ns = clock;
      first = false;
    }
    unsigned op = r->op;
    uint64_t size = bmm__trace_size(r->size_align);
    replay_op_t *o = &t->ops[n];
    /* 2^47 bytes: no alignment beyond the user address space is real */
    if (op >= BMM_TRACE_OP_COUNT || r->id == 0 || bmm__trace_align_log2(r->size_align) > 47) {
      t->skipped_bad++;
      continue;
    }
    id_entry_t *e = id_map_find(&ids, r->id);
    if (bmm__trace_op_allocates(op)) {
      if (e != NULL) {
        t->skipped_duplicate++;
        continue;
      }
      if (t->nslots >= UINT32_MAX) die("%s: too many objects", path);
      e = id_map_insert(&ids, r->id);
      e->slot = (uint32_t)t->nslots++;
      e->seq = 0;
      e->size = size;
      live += size;
    } else {
      if (e == NULL) {
        t->skipped_unknown++;
        continue;
      }
      if (op == BMM_TRACE_OP_REALLOC) {
        live = live - e->size + size;
        e->size = size;
      } else {
        size = e->size;
        live -= size;
      }
    }
    o->slot = e->slot;
    o->objseq = e->seq++;
    o->size = size;
    o->op = (uint8_t)op;
    o->align_log2 = (uint8_t)bmm__trace_align_log2(r->size_align);
    o->thread = r->thread;
    if (op == BMM_TRACE_OP_FREE) id_map_remove(&ids, e);
    if (!seen_thread[r->thread]) {
      seen_thread[r->thread] = true;
      t->used_threads++;
    }
    if ((unsigned)r->thread + 1 > t->nthreads) t->nthreads = (unsigned)r->thread + 1;
    t->op_counts[op]++;
    if (live > t->peak_live_bytes) t->peak_live_bytes = live;
    if (ids.count > t->peak_live_objects) t->peak_live_objects = ids.count;
    n++;
  }
  if (order) {
    /* Times of a merged trace: the smallest and largest over all records. */
    clock = 0;
    first = true;
    for (size_t i = 0; i < nrec; i++) {
      if (rec[i].op == BMM_TRACE_OP_TIME) {
        clock = rec[i].id;
        continue;
      }
      clock += rec[i].delta;
      if (first || clock < t->first_ns) t->first_ns = clock;
      if (first || clock > t->last_ns) t->last_ns = clock;
      first = false;
    }
    table_free(order, nops * sizeof *order);
  }
  t->nops = n;
  t->final_live_bytes = live;
  t->final_live_objects = ids.count;
  table_free(ids.entries, ids.entries ? (ids.mask + 1) * sizeof(id_entry_t) : 0);
  munmap(map, file_size);
  size_t skipped = t->skipped_bad + t->skipped_duplicate + t->skipped_unknown;
  if (skipped)
    fprintf(
        stderr,
        "%s: warning: %s: %zu records skipped (%zu unknown objects, %zu duplicate ids, %zu bad)\n",
        g_prog, path, skipped, t->skipped_unknown, t->skipped_duplicate, t->skipped_bad);
  if (t->truncated_bytes)
    fprintf(stderr, "%s: warning: %s ends with %zu bytes of a partial record\n", g_prog, path,
            t->truncated_bytes);
}

static void trace_print_info(const trace_t *t) {
  char comm[17];
  memcpy(comm, t->header.comm, 16);
  comm[16] = '\0';
  for (char *c = comm; *c; c++)
    if (*c == ' ' || *c == '=') *c = '_';
  printf("INFO trace=%s program=%s pid=%u ppid=%u forked=%d ops=%zu malloc=%" PRIu64
         " calloc=%" PRIu64 " aligned=%" PRIu64 " realloc=%" PRIu64 " free=%" PRIu64
         " inherit=%" PRIu64 " objects=%zu threads=%u peak_live_bytes=%" PRIu64
         " peak_live_objects=%" PRIu64 " final_live_bytes=%" PRIu64 " final_live_objects=%" PRIu64
         " duration_s=%.3f runs=%zu skipped=%zu\n",
         t->name, comm[0] ? comm : "?", t->header.pid, t->header.ppid,
         (t->header.flags & BMM_TRACE_FLAG_FORKED) != 0, t->nops, t->op_counts[BMM_TRACE_OP_MALLOC],
         t->op_counts[BMM_TRACE_OP_CALLOC], t->op_counts[BMM_TRACE_OP_ALIGNED],
         t->op_counts[BMM_TRACE_OP_REALLOC], t->op_counts[BMM_TRACE_OP_FREE],
         t->op_counts[BMM_TRACE_OP_INHERIT], t->nslots, t->used_threads, t->peak_live_bytes,
         t->peak_live_objects, t->final_live_bytes, t->final_live_objects,
         (double)(t->last_ns - t->first_ns) * 1e-9, t->runs,
         t->skipped_bad + t->skipped_duplicate + t->skipped_unknown);
}

/* ---- Resident set ----------------------------------------------------- */

/* A "Field:  N kB" line of /proc/self/status, in KiB; 0 when missing. */
static long status_kb(const char *field) {
  FILE *f = fopen("/proc/self/status", "re");
  if (f == NULL) return 0;
  char line[256];
  size_t len = strlen(field);
  long kb = 0;
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, field, len) == 0 && line[len] == ':') {
      kb = strtol(line + len + 1, NULL, 10);
      break;
    }
  }
  fclose(f);
  return kb;
}

/* Resets VmHWM to the current RSS (Linux 4.0+); false when not permitted. */
static bool reset_peak_rss(void) {
  int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, "5", 1) == 1;
  close(fd);
  return ok;
}

/* ---- Replay through malloc -------------------------------------------- */

enum { TOUCH_PAGES, TOUCH_ENDS, TOUCH_NONE };
static int g_touch = TOUCH_PAGES;

static inline void touch(void *p, size_t size) {
  if (p == NULL || size == 0 || g_touch == TOUCH_NONE) return;
  volatile unsigned char *c = p;
  if (g_touch == TOUCH_PAGES)
    for (size_t off = 0; off < size; off += 4096)
      c[off] = (unsigned char)off;
  else
    c[0] = 1;
  c[size - 1] = 2;
}

typedef struct slot_s {
  void *ptr;
  uint64_t size_plus1; /* 0 when the object is not live */
} slot_t;

typedef struct replay_s {
  const trace_t *trace;
  slot_t *slots;
  _Atomic uint32_t *done; /* multi-threaded only: operations completed per slot */
  size_t failed;          /* allocations that returned NULL */
} replay_t;

/* Performs one operation; returns the change in live bytes. */
static inline int64_t replay_one(replay_t *r, const replay_op_t *o, size_t *failed) {
  slot_t *s = &r->slots[o->slot];
  void *p = NULL;
  switch (o->op) {
  case BMM_TRACE_OP_MALLOC:
  case BMM_TRACE_OP_INHERIT:
    p = malloc(o->size);
    break;
  case BMM_TRACE_OP_CALLOC:
    p = calloc(1, o->size);
    break;
  case BMM_TRACE_OP_ALIGNED: {
    size_t align = (size_t)1 << o->align_log2;
    if (align < sizeof(void *)) align = sizeof(void *);
    if (posix_memalign(&p, align, o->size) != 0) p = NULL;
    break;
  }
  case BMM_TRACE_OP_REALLOC: {
    int64_t delta = (int64_t)o->size - (int64_t)(s->size_plus1 - 1);
    p = realloc(s->ptr, o->size);
    if (p == NULL && o->size != 0) {
      (*failed)++; /* the old block stays, with its old size */
      return 0;
    }
    s->ptr = p;
    s->size_plus1 = o->size + 1;
    touch(p, o->size);
    return delta;
  }
  case BMM_TRACE_OP_FREE: {
    int64_t delta = -(int64_t)(s->size_plus1 - 1);
    free(s->ptr);
    s->ptr = NULL;
    s->size_plus1 = 0;
    return delta;
  }
  }
  if (p == NULL && o->size != 0) (*failed)++;
  s->ptr = p;
  s->size_plus1 = o->size + 1;
  touch(p, o->size);
  return (int64_t)o->size;
}

static void replay_single(replay_t *r) {
  const trace_t *t = r->trace;
  for (size_t i = 0; i < t->nops; i++)
    replay_one(r, &t->ops[i], &r->failed);
}

typedef struct worker_s {
  replay_t *replay;
  uint32_t *ops; /* indices into trace->ops, in global order */
  size_t nops;
  size_t failed;
  _Atomic int *start;
  pthread_t thread;
} worker_t;

/* Waits until the object's earlier operations are done. */
static void wait_turn(_Atomic uint32_t *done, uint32_t objseq) {
  unsigned spins = 0;
  while (atomic_load_explicit(done, memory_order_acquire) != objseq) {
    if (spins < 200) {
      __builtin_ia32_pause();
    } else if (spins < 2000) {
      sched_yield();
    } else {
      struct timespec ts = {0, 50000};
      nanosleep(&ts, NULL);
    }
    spins++;
  }
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  replay_t *r = w->replay;
  while (!atomic_load_explicit(w->start, memory_order_acquire))
    sched_yield();
  for (size_t i = 0; i < w->nops; i++) {
    const replay_op_t *o = &r->trace->ops[w->ops[i]];
    _Atomic uint32_t *done = &r->done[o->slot];
    if (o->objseq != 0) wait_turn(done, o->objseq);
    replay_one(r, o, &w->failed);
    atomic_store_explicit(done, o->objseq + 1, memory_order_release);
  }
  return NULL;
}

/* Replay threads, set up (tables built, threads waiting for the start
 * signal) before the baseline RSS is taken, so that only the replay's own
 * allocations count. */
typedef struct crew_s {
  worker_t *w;
  size_t *counts;
  unsigned n;
  _Atomic int start;
} crew_t;

static void crew_prepare(crew_t *c, replay_t *r, unsigned nthreads) {
  const trace_t *t = r->trace;
  c->n = nthreads;
  r->done = table_alloc(t->nslots * sizeof *r->done);
  c->w = table_alloc(nthreads * sizeof *c->w);
  c->counts = table_alloc(nthreads * sizeof *c->counts);
  atomic_init(&c->start, 0);
  for (size_t i = 0; i < t->nops; i++)
    c->counts[t->ops[i].thread % nthreads]++;
  for (unsigned k = 0; k < nthreads; k++) {
    c->w[k].replay = r;
    c->w[k].ops = table_alloc(c->counts[k] * sizeof(uint32_t));
    c->w[k].start = &c->start;
  }
  for (size_t i = 0; i < t->nops; i++) {
    worker_t *x = &c->w[t->ops[i].thread % nthreads];
    x->ops[x->nops++] = (uint32_t)i;
  }
  for (unsigned k = 0; k < nthreads; k++)
    if (pthread_create(&c->w[k].thread, NULL, worker_main, &c->w[k]) != 0)
      die("cannot create replay thread %u", k);
}

/* Starts the prepared threads; returns the seconds until the last ends. */
static double crew_run(crew_t *c, replay_t *r) {
  double t0 = now_seconds();
  atomic_store_explicit(&c->start, 1, memory_order_release);
  for (unsigned k = 0; k < c->n; k++)
    pthread_join(c->w[k].thread, NULL);
  double seconds = now_seconds() - t0;
  for (unsigned k = 0; k < c->n; k++) {
    r->failed += c->w[k].failed;
    table_free(c->w[k].ops, c->counts[k] * sizeof(uint32_t));
  }
  table_free(c->counts, c->n * sizeof *c->counts);
  table_free(c->w, c->n * sizeof *c->w);
  table_free(r->done, r->trace->nslots * sizeof *r->done);
  r->done = NULL;
  return seconds;
}

static int run_replay(const trace_t *t, unsigned want_threads) {
  unsigned nthreads = want_threads;
  if (nthreads > t->nthreads) nthreads = t->nthreads ? t->nthreads : 1;
  replay_t r = {.trace = t};
  r.slots = table_alloc(t->nslots * sizeof *r.slots);
  crew_t crew;
  if (nthreads > 1) crew_prepare(&crew, &r, nthreads);
  bool hwm_reset = reset_peak_rss();
  long base_kb = status_kb("VmRSS");
  double seconds;
  if (nthreads <= 1) {
    double t0 = now_seconds();
    replay_single(&r);
    seconds = now_seconds() - t0;
  } else {
    seconds = crew_run(&crew, &r);
  }
  long peak_kb = status_kb("VmHWM");
  if (!hwm_reset) {
    /* The high-water mark includes loading; the best we have. */
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0 && ru.ru_maxrss > peak_kb) peak_kb = ru.ru_maxrss;
    fprintf(stderr, "%s: warning: cannot reset the peak RSS; it includes loading the trace\n",
            g_prog);
  }
  uint64_t live_bytes = 0, live_objects = 0;
  for (size_t i = 0; i < t->nslots; i++) {
    if (r.slots[i].size_plus1 == 0) continue;
    live_bytes += r.slots[i].size_plus1 - 1;
    live_objects++;
  }
  long grown_kb = peak_kb > base_kb ? peak_kb - base_kb : 0;
  double frag = t->peak_live_bytes ? (double)grown_kb * 1024.0 / (double)t->peak_live_bytes : 0.0;
  printf("RESULT workload=replay trace=%s ops=%zu seconds=%.6f peak_rss_kb=%ld "
         "peak_live_bytes=%" PRIu64 " fragmentation=%.3f final_live_bytes=%" PRIu64
         " final_live_objects=%" PRIu64 " threads=%u recorded_threads=%u baseline_rss_kb=%ld"
         " failed=%zu\n",
         t->name, t->nops, seconds, peak_kb, t->peak_live_bytes, frag, live_bytes, live_objects,
         nthreads, t->used_threads, base_kb, r.failed);
  fflush(stdout);
  int status = 0;
  if (r.failed) {
    fprintf(stderr, "%s: %zu allocations failed during the replay\n", g_prog, r.failed);
    status = 1;
  }
  if (live_bytes != t->final_live_bytes || live_objects != t->final_live_objects) {
    fprintf(stderr,
            "%s: replay ends with %" PRIu64 " bytes in %" PRIu64 " objects, the trace with %" PRIu64
            " in %" PRIu64 "\n",
            g_prog, live_bytes, live_objects, t->final_live_bytes, t->final_live_objects);
    status = 1;
  }
  /* Give everything back so leak checkers see a clean exit. */
  for (size_t i = 0; i < t->nslots; i++)
    free(r.slots[i].ptr);
  table_free(r.slots, t->nslots * sizeof *r.slots);
  return status;
}

/* ---- The heap interface for fixed-heap replay --------------------------- */

/* A heap that manages a fixed amount of memory. The replay stops at its
 * first failed allocation. Implementations are listed in replay_heaps[]
 * below. What alloc and realloc return is the object as the heap names it:
 * a pointer, or for a handle heap a handle, which lock turns into the
 * address of the contents until unlock. */
typedef struct replay_heap_s {
  const char *name;
  const char *description;
  /* A heap of `bytes` bytes in all; NULL (with a message) if impossible. */
  void *(*create)(size_t bytes);
  void (*destroy)(void *heap);
  /* align is a power of two, 0 for the default (16) */
  void *(*alloc)(void *heap, size_t size, size_t align);
  /* Optional: a block of zeroes; without it, alloc and the replay's memset. */
  void *(*calloc)(void *heap, size_t size);
  /* NULL when it cannot grow; p then stays valid. p is never NULL. */
  void *(*realloc)(void *heap, void *p, size_t size);
  void (*free)(void *heap, void *p);
  /* Bytes of the heap's memory in use, bookkeeping included. */
  size_t (*used_bytes)(void *heap);
  /* Optional: checks every invariant, printing the first that fails. */
  bool (*check)(void *heap);
  /* Optional (a handle heap): the address of obj's contents, valid until
   * unlock; without them obj is that address. */
  void *(*lock)(void *heap, void *obj);
  void (*unlock)(void *heap, void *obj);
  /* Optional (a compacting heap): compactions so far, bytes they moved,
   * seconds they took. */
  void (*compaction)(void *heap, size_t *count, size_t *bytes, double *seconds);
} replay_heap_t;

/* ---- firstfit: address-ordered first fit over one buffer ----------------- */

/* The algorithm. The buffer is a sequence of blocks, each starting with a
 * 16-byte header: the size of the previous block (valid only when that one
 * is free, it acts as the free block's footer) and this block's size (a
 * multiple of 16, header included) with two flags, USED and PREV_FREE. A
 * used header closes the sequence. Two free blocks are never adjacent: a
 * freed block merges with free neighbours at once (boundary tags make that
 * O(1)). Free blocks are also nodes of a treap ordered by address, whose
 * nodes record the largest block in their subtree; first fit, the free
 * block of lowest address that is large enough, is then one walk from the
 * root: left if the left subtree has a large enough block, else this node
 * if it is, else right. Treap priorities are a hash of the address, so the
 * heap is deterministic. Allocation splits off the tail of the block when
 * the rest can be a block of its own (FF_MIN_BLOCK); an aligned request
 * searches for size + alignment + FF_MIN_BLOCK so that the part before the
 * aligned address can always become a free block of its own. realloc
 * shrinks and grows in place when the next block allows, else moves. */
#define FF_USED UINT64_C(1)
#define FF_PREV_FREE UINT64_C(2)
#define FF_FLAGS (FF_USED | FF_PREV_FREE)
#define FF_HEADER 16

typedef struct ff_block_s {
  uint64_t prev_size;
  uint64_t size_flags;
  /* free blocks only: */
  struct ff_block_s *left, *right;
  uint64_t max; /* largest block size in this subtree */
  uint64_t prio;
} ff_block_t;

#define FF_MIN_BLOCK ((sizeof(ff_block_t) + 15) & ~(size_t)15)

typedef struct ff_heap_s {
  unsigned char *base; /* first block */
  unsigned char *end;  /* the closing header */
  size_t bytes;        /* mapped */
  size_t used;         /* bytes of used blocks, headers included */
  ff_block_t *root;
} ff_heap_t;

static inline uint64_t ff_size(const ff_block_t *b) {
  return b->size_flags & ~FF_FLAGS;
}
static inline ff_block_t *ff_next(ff_block_t *b) {
  return (ff_block_t *)((unsigned char *)b + ff_size(b));
}
static inline uint64_t ff_max(const ff_block_t *b) {
  return b ? b->max : 0;
}
static inline void ff_update(ff_block_t *b) {
  uint64_t m = ff_size(b), l = ff_max(b->left), r = ff_max(b->right);
  b->max = m > l ? (m > r ? m : r) : (l > r ? l : r);
}

/* Splits t into blocks below `key` and the rest. */
static void ff_split(ff_block_t *t, ff_block_t *key, ff_block_t **lo, ff_block_t **hi) {
  if (t == NULL) {
    *lo = *hi = NULL;
  } else if (t < key) {
    ff_split(t->right, key, &t->right, hi);
    *lo = t;
    ff_update(t);
  } else {
    ff_split(t->left, key, lo, &t->left);
    *hi = t;
    ff_update(t);
  }
}

/* Every block of a lies below every block of b. */
static ff_block_t *ff_merge(ff_block_t *a, ff_block_t *b) {
  if (a == NULL) return b;
  if (b == NULL) return a;
  if (a->prio > b->prio) {
    a->right = ff_merge(a->right, b);
    ff_update(a);
    return a;
  }
  b->left = ff_merge(a, b->left);
  ff_update(b);
  return b;
}

static ff_block_t *ff_insert(ff_block_t *t, ff_block_t *n) {
  if (t == NULL || n->prio > t->prio) {
    ff_split(t, n, &n->left, &n->right);
    ff_update(n);
    return n;
  }
  if (n < t)
    t->left = ff_insert(t->left, n);
  else
    t->right = ff_insert(t->right, n);
  ff_update(t);
  return t;
}

static ff_block_t *ff_remove(ff_block_t *t, ff_block_t *n) {
  if (t == n) return ff_merge(n->left, n->right);
  if (n < t)
    t->left = ff_remove(t->left, n);
  else
    t->right = ff_remove(t->right, n);
  ff_update(t);
  return t;
}

static ff_block_t *ff_first_fit(ff_block_t *t, uint64_t need) {
  if (ff_max(t) < need) return NULL;
  for (;;) {
    if (ff_max(t->left) >= need)
      t = t->left;
    else if (ff_size(t) >= need)
      return t;
    else
      t = t->right;
  }
}

/* Makes [b, b + size) a free block in the tree (b's PREV_FREE kept as
 * given) and tells the next block. */
static void ff_make_free(ff_heap_t *h, ff_block_t *b, uint64_t size, uint64_t prev_free) {
  b->size_flags = size | prev_free;
  uint64_t x = (uint64_t)(uintptr_t)b; /* MurmurHash3's finaliser */
  x = (x ^ (x >> 33)) * UINT64_C(0xff51afd7ed558ccd);
  x = (x ^ (x >> 33)) * UINT64_C(0xc4ceb9fe1a85ec53);
  b->prio = x ^ (x >> 33);
  b->left = b->right = NULL;
  ff_block_t *next = ff_next(b);
  next->prev_size = size;
  next->size_flags |= FF_PREV_FREE;
  h->root = ff_insert(h->root, b);
}

static void *ff_create(size_t bytes) {
  size_t min = 2 * FF_HEADER + FF_MIN_BLOCK;
  if (bytes < min) {
    fprintf(stderr, "%s: a firstfit heap needs at least %zu bytes\n", g_prog, min);
    return NULL;
  }
  ff_heap_t *h = table_alloc(sizeof *h);
  bytes &= ~(size_t)15;
  h->base = table_alloc(bytes);
  h->bytes = bytes;
  h->end = h->base + bytes - FF_HEADER;
  ff_block_t *end = (ff_block_t *)h->end;
  end->size_flags = FF_USED;
  ff_make_free(h, (ff_block_t *)h->base, bytes - FF_HEADER, 0);
  return h;
}

static void ff_destroy(void *heap) {
  ff_heap_t *h = heap;
  table_free(h->base, h->bytes);
  table_free(h, sizeof *h);
}

static inline uint64_t ff_need(size_t size) {
  if (size > SIZE_MAX / 2) return UINT64_MAX;
  uint64_t need = ((uint64_t)size + FF_HEADER + 15) & ~UINT64_C(15);
  return need < FF_MIN_BLOCK ? FF_MIN_BLOCK : need;
}

/* b is used and at least `need` long: if the tail can be a block, it
 * becomes one (merged with a free successor) and is given back. */
static void ff_trim(ff_heap_t *h, ff_block_t *b, uint64_t need) {
  uint64_t size = ff_size(b);
  if (size - need < FF_MIN_BLOCK) return;
  ff_block_t *tail = (ff_block_t *)((unsigned char *)b + need);
  b->size_flags = need | (b->size_flags & FF_FLAGS);
  uint64_t tail_size = size - need;
  ff_block_t *next = (ff_block_t *)((unsigned char *)tail + tail_size);
  h->used -= tail_size;
  if (!(next->size_flags & FF_USED)) {
    h->root = ff_remove(h->root, next);
    tail_size += ff_size(next);
  }
  ff_make_free(h, tail, tail_size, 0);
}

static void *ff_alloc(void *heap, size_t size, size_t align) {
  ff_heap_t *h = heap;
  uint64_t need = ff_need(size);
  if (align <= 16) align = 0;
  uint64_t search = align ? need + align + FF_MIN_BLOCK : need;
  if (need == UINT64_MAX || search < need) return NULL;
  ff_block_t *b = ff_first_fit(h->root, search);
  if (b == NULL) return NULL;
  h->root = ff_remove(h->root, b);
  uint64_t bsize = ff_size(b), prev_free = b->size_flags & FF_PREV_FREE;
  if (align) {
    uintptr_t payload = (uintptr_t)b + FF_HEADER;
    uintptr_t aligned = (payload + align - 1) & ~(uintptr_t)(align - 1);
    if (aligned != payload && aligned - payload < FF_MIN_BLOCK)
      aligned = (payload + FF_MIN_BLOCK + align - 1) & ~(uintptr_t)(align - 1);
    uint64_t lead = aligned - payload;
    if (lead) {
      /* the part before the aligned block stays free */
      ff_block_t *a = (ff_block_t *)((unsigned char *)b + lead);
      a->size_flags = bsize - lead; /* provisional, fixed below */
      ff_make_free(h, b, lead, prev_free);
      b = a;
      bsize -= lead;
      prev_free = FF_PREV_FREE;
    }
  }
  b->size_flags = bsize | FF_USED | prev_free;
  ff_next(b)->size_flags &= ~FF_PREV_FREE;
  h->used += bsize;
  ff_trim(h, b, need);
  return (unsigned char *)b + FF_HEADER;
}

static void ff_free(void *heap, void *p) {
  ff_heap_t *h = heap;
  if (p == NULL) return;
  ff_block_t *b = (ff_block_t *)((unsigned char *)p - FF_HEADER);
  uint64_t size = ff_size(b), prev_free = b->size_flags & FF_PREV_FREE;
  h->used -= size;
  ff_block_t *next = ff_next(b);
  if (!(next->size_flags & FF_USED)) {
    h->root = ff_remove(h->root, next);
    size += ff_size(next);
  }
  if (prev_free) {
    ff_block_t *prev = (ff_block_t *)((unsigned char *)b - b->prev_size);
    h->root = ff_remove(h->root, prev);
    size += ff_size(prev);
    prev_free = prev->size_flags & FF_PREV_FREE; /* always 0: no two free neighbours */
    b = prev;
  }
  ff_make_free(h, b, size, prev_free);
}

static void *ff_realloc(void *heap, void *p, size_t size) {
  ff_heap_t *h = heap;
  ff_block_t *b = (ff_block_t *)((unsigned char *)p - FF_HEADER);
  uint64_t need = ff_need(size), cur = ff_size(b);
  if (need == UINT64_MAX) return NULL;
  if (need <= cur) {
    ff_trim(h, b, need);
    return p;
  }
  ff_block_t *next = ff_next(b);
  if (!(next->size_flags & FF_USED) && cur + ff_size(next) >= need) {
    uint64_t grown = cur + ff_size(next);
    h->root = ff_remove(h->root, next);
    b->size_flags = grown | (b->size_flags & FF_FLAGS);
    ff_next(b)->size_flags &= ~FF_PREV_FREE;
    h->used += grown - cur;
    ff_trim(h, b, need);
    return p;
  }
  void *q = ff_alloc(heap, size, 0);
  if (q == NULL) return NULL;
  memcpy(q, p, cur - FF_HEADER < size ? cur - FF_HEADER : size);
  ff_free(heap, p);
  return q;
}

static size_t ff_used_bytes(void *heap) {
  return ((ff_heap_t *)heap)->used;
}

static size_t ff_check_tree(ff_block_t *t, ff_block_t *lo, ff_block_t *hi, bool *ok) {
  if (t == NULL) return 0;
  if ((lo && t <= lo) || (hi && t >= hi) || (t->size_flags & FF_USED)) *ok = false;
  if ((t->left && t->left->prio > t->prio) || (t->right && t->right->prio > t->prio)) *ok = false;
  uint64_t m = t->max;
  ff_update(t);
  if (m != t->max) *ok = false;
  return 1 + ff_check_tree(t->left, lo, t, ok) + ff_check_tree(t->right, t, hi, ok);
}

static bool ff_check(void *heap) {
  ff_heap_t *h = heap;
  size_t used = 0, free_blocks = 0;
  bool prev_was_free = false;
  uint64_t prev_size = 0;
  unsigned char *c = h->base;
  while (c < h->end) {
    ff_block_t *b = (ff_block_t *)c;
    uint64_t size = ff_size(b);
    bool is_free = !(b->size_flags & FF_USED);
    const char *bad = NULL;
    if (size < FF_MIN_BLOCK || size % 16 || c + size > h->end)
      bad = "bad size";
    else if (((b->size_flags & FF_PREV_FREE) != 0) != prev_was_free)
      bad = "PREV_FREE wrong";
    else if (prev_was_free && b->prev_size != prev_size)
      bad = "footer wrong";
    else if (prev_was_free && is_free)
      bad = "two free blocks adjacent";
    if (bad) {
      fprintf(stderr, "%s: firstfit: block at offset %td: %s\n", g_prog, c - h->base, bad);
      return false;
    }
    if (is_free)
      free_blocks++;
    else
      used += size;
    prev_was_free = is_free;
    prev_size = size;
    c += size;
  }
  ff_block_t *end = (ff_block_t *)h->end;
  bool ok = c == h->end && (end->size_flags & FF_USED) &&
            ((end->size_flags & FF_PREV_FREE) != 0) == prev_was_free && used == h->used;
  if (ok && ff_check_tree(h->root, NULL, NULL, &ok) != free_blocks) ok = false;
  if (!ok)
    fprintf(stderr, "%s: firstfit: heap end, used bytes or free tree inconsistent\n", g_prog);
  return ok;
}

/* ---- bmm-fixed: BrainMM's fixed heap --------------------------------- */

/* The heap's memory is one mapping of the given size handed to
 * bmm_heap_new_fixed, which lays out its header, the bin heads and every
 * block inside it. Requests go through the public API as a program would
 * make them: bmm_heap_malloc, bmm_heap_calloc, bmm_heap_malloc_aligned for
 * alignments beyond 16, bmm_heap_realloc, and bmm_free (which finds the
 * block's heap through fixed.c's registry). realloc to 0 bytes asks for 1
 * byte: bmm_heap_realloc(p, 0) frees the block, while the trace's object
 * lives on with size 0, as it does in the other heaps.
 *
 * Used bytes: what the heap's own layout takes (BYTES minus the largest
 * block it could hand out, bmm__fixed_usage's capacity, minus one block
 * header) plus each live block, i.e. its usable bytes plus its 8-byte
 * header (fixed.c: "A live block costs 8 bytes"). The usable bytes come
 * from bmm__fixed_usage, the block count is kept here. */
#define BF_BLOCK_HEADER 8 /* src/fixed.c HDR_SIZE */

typedef struct bf_replay_s {
  bmm_heap_t *heap;
  bmm_fixed_t *fixed; /* the allocator inside heap, for usage and check */
  void *buf;
  size_t bytes;
  size_t layout; /* bytes of the heap's own layout (header, bin heads, sentinel) */
  size_t blocks; /* live blocks */
} bf_replay_t;

static void *bf_create(size_t bytes) {
  bf_replay_t *r = table_alloc(sizeof *r);
  r->buf = table_alloc(bytes);
  r->bytes = bytes;
  r->heap = bmm_heap_new_fixed(r->buf, bytes);
  /* the registry knows the range after the heap's header, which holds the
   * last byte of the mapping */
  r->fixed = r->heap ? bmm__fixed_find((unsigned char *)r->buf + bytes - 1) : NULL;
  if (r->heap == NULL || r->fixed == NULL) {
    fprintf(stderr, "%s: bmm_heap_new_fixed(%zu bytes): %s\n", g_prog, bytes,
            r->heap ? "heap not found in the registry" : strerror(errno));
    if (r->heap) bmm_heap_destroy(r->heap);
    table_free(r->buf, bytes);
    table_free(r, sizeof *r);
    return NULL;
  }
  size_t capacity = 0;
  bmm__fixed_usage(r->fixed, &capacity, NULL);
  r->layout = bytes - capacity - BF_BLOCK_HEADER;
  return r;
}

static void bf_destroy(void *heap) {
  bf_replay_t *r = heap;
  bmm_heap_destroy(r->heap);
  table_free(r->buf, r->bytes);
  table_free(r, sizeof *r);
}

static void *bf_alloc(void *heap, size_t size, size_t align) {
  bf_replay_t *r = heap;
  void *p =
      align > 16 ? bmm_heap_malloc_aligned(r->heap, size, align) : bmm_heap_malloc(r->heap, size);
  if (p != NULL) r->blocks++;
  return p;
}

static void *bf_calloc(void *heap, size_t size) {
  bf_replay_t *r = heap;
  void *p = bmm_heap_calloc(r->heap, 1, size);
  if (p != NULL) r->blocks++;
  return p;
}

static void *bf_realloc(void *heap, void *p, size_t size) {
  return bmm_heap_realloc(((bf_replay_t *)heap)->heap, p, size ? size : 1);
}

static void bf_free(void *heap, void *p) {
  if (p == NULL) return;
  bmm_free(p);
  ((bf_replay_t *)heap)->blocks--;
}

static size_t bf_used_bytes(void *heap) {
  bf_replay_t *r = heap;
  size_t live = 0;
  bmm__fixed_usage(r->fixed, NULL, &live);
  return r->layout + live + r->blocks * BF_BLOCK_HEADER;
}

typedef struct bf_tally_s {
  size_t blocks, usable;
} bf_tally_t;

static bool bf_tally(const void *block, size_t usable, void *arg) {
  (void)block;
  bf_tally_t *t = arg;
  t->blocks++;
  t->usable += usable;
  return true;
}

/* fixed.c's own walk, then bmm_heap_visit against the replay's count and
 * fixed.c's live bytes. */
static bool bf_check(void *heap) {
  bf_replay_t *r = heap;
  if (!bmm__fixed_check(r->fixed)) {
    fprintf(stderr, "%s: bmm-fixed: bmm__fixed_check found a broken invariant\n", g_prog);
    return false;
  }
  bf_tally_t t = {0, 0};
  size_t live = 0;
  bmm__fixed_usage(r->fixed, NULL, &live);
  if (!bmm_heap_visit(r->heap, bf_tally, &t) || t.blocks != r->blocks || t.usable != live) {
    fprintf(stderr,
            "%s: bmm-fixed: bmm_heap_visit saw %zu blocks of %zu bytes, expected %zu of %zu\n",
            g_prog, t.blocks, t.usable, r->blocks, live);
    return false;
  }
  return true;
}

/* ---- bmm-rheap: BrainMM's relocatable heap ------------------------------ */

/* Every trace object is a handle into one bmm_rheap_t built in a buffer of
 * the given size (the heap's header, hole lists and handle table live in
 * it too, and count as used). The model of use: a program locks an object
 * while it works on its contents and unlocks it when done. The replay
 * locks each object right after the allocation or realloc that gives it
 * contents, writes them (calloc's zeroes, the touch), and unlocks it; that
 * is the way a handle heap is meant to be used, locking around each use
 * rather than for an object's lifetime. With --rheap-locked N, the N
 * objects allocated or reallocated last also stay locked (a working set:
 * each is unlocked when N newer ones have come, or before its realloc or
 * free), so compaction meets pinned blocks; with 0 (the default) no block
 * is locked between operations and compaction may move any of them.
 * realloc is bmm_rrealloc (the handle stays the same), free bmm_rfree. A
 * request aligned beyond 16 bytes asks for size + align - 16 bytes, the
 * room a program would need to align inside a 16-aligned block. No
 * fullness thresholds are set: the heap compacts only when an allocation
 * finds no room, in bmm_ralloc's or bmm_rrealloc's own compaction before
 * ENOMEM, so the first failure is a failure after compaction. Compaction
 * time: a bmm_ralloc/bmm_rrealloc call during which the heap's compaction
 * count rose is timed whole (the allocation around the compaction costs
 * well under a microsecond). */
static size_t g_rheap_locked; /* --rheap-locked */

typedef struct rh_replay_s {
  bmm_rheap_t *rh;
  void *buf;
  size_t bytes;
  size_t compactions; /* as of the last call */
  double compact_seconds;
  bmm_handle_t **ring; /* the working set: g_rheap_locked slots, NULL when empty */
  size_t ring_next;    /* the slot to reuse next (the oldest) */
} rh_replay_t;

/* h joins the working set (locked), evicting (unlocking) the oldest. */
static void rh_ring_push(rh_replay_t *r, bmm_handle_t *h) {
  if (g_rheap_locked == 0) return;
  bmm_handle_t **slot = &r->ring[r->ring_next];
  r->ring_next = (r->ring_next + 1) % g_rheap_locked;
  if (*slot != NULL && bmm_runlock(*slot) != 0) die("bmm_runlock failed");
  void *p;
  if (bmm_rlock(h, &p) != 0) die("bmm_rlock failed");
  *slot = h;
}

/* h leaves the working set (unlocked) if it is in it. */
static void rh_ring_remove(rh_replay_t *r, bmm_handle_t *h) {
  for (size_t i = 0; i < g_rheap_locked; i++) {
    if (r->ring[i] != h) continue;
    if (bmm_runlock(h) != 0) die("bmm_runlock failed");
    r->ring[i] = NULL;
    return;
  }
}

static void *rh_create(size_t bytes) {
  rh_replay_t *r = table_alloc(sizeof *r);
  r->ring = table_alloc(g_rheap_locked * sizeof *r->ring);
  r->buf = table_alloc(bytes);
  r->bytes = bytes;
  r->rh = bmm_rheap_new(r->buf, bytes);
  if (r->rh == NULL) {
    fprintf(stderr, "%s: bmm_rheap_new(%zu bytes): %s\n", g_prog, bytes, strerror(errno));
    table_free(r->buf, bytes);
    table_free(r->ring, g_rheap_locked * sizeof *r->ring);
    table_free(r, sizeof *r);
    return NULL;
  }
  return r;
}

static void rh_destroy(void *heap) {
  rh_replay_t *r = heap;
  bmm_rheap_delete(r->rh);
  table_free(r->buf, r->bytes);
  table_free(r->ring, g_rheap_locked * sizeof *r->ring);
  table_free(r, sizeof *r);
}

/* Called after an allocating call that started at t0. */
static void rh_account(rh_replay_t *r, double t0) {
  size_t n = 0;
  bmm__rheap_counters(r->rh, NULL, NULL, &n, NULL);
  if (n != r->compactions) {
    r->compact_seconds += now_seconds() - t0;
    r->compactions = n;
  }
}

static void *rh_alloc(void *heap, size_t size, size_t align) {
  rh_replay_t *r = heap;
  if (align > 16) {
    if (size > SIZE_MAX - align) return NULL;
    size += align - 16;
  }
  bmm_handle_t *h = NULL;
  double t0 = now_seconds();
  int err = bmm_ralloc(r->rh, &h, size);
  rh_account(r, t0);
  if (err != 0) return NULL;
  rh_ring_push(r, h);
  return h;
}

static void *rh_realloc(void *heap, void *p, size_t size) {
  rh_replay_t *r = heap;
  rh_ring_remove(r, p); /* unlocked, so that it may move */
  double t0 = now_seconds();
  int err = bmm_rrealloc(p, size);
  rh_account(r, t0);
  rh_ring_push(r, p); /* in the working set again, whether it grew or not */
  return err == 0 ? p : NULL;
}

static void rh_free(void *heap, void *p) {
  if (p == NULL) return;
  rh_ring_remove(heap, p);
  if (bmm_rfree(p) != 0) die("bmm_rfree failed");
}

static size_t rh_used_bytes(void *heap) {
  size_t used = 0;
  bmm__rheap_counters(((rh_replay_t *)heap)->rh, &used, NULL, NULL, NULL);
  return used;
}

static bool rh_check(void *heap) {
  return bmm__rheap_check(((rh_replay_t *)heap)->rh);
}

static void *rh_lock(void *heap, void *obj) {
  (void)heap;
  void *p = NULL;
  if (bmm_rlock(obj, &p) != 0) die("bmm_rlock failed");
  return p;
}

static void rh_unlock(void *heap, void *obj) {
  (void)heap;
  if (bmm_runlock(obj) != 0) die("bmm_runlock failed");
}

static void rh_compaction(void *heap, size_t *count, size_t *bytes, double *seconds) {
  rh_replay_t *r = heap;
  bmm__rheap_counters(r->rh, NULL, NULL, count, bytes);
  *seconds = r->compact_seconds;
}

static const replay_heap_t replay_heaps[] = {
    {"firstfit", "address-ordered first fit with coalescing over one buffer (built in)", ff_create,
     ff_destroy, ff_alloc, NULL, ff_realloc, ff_free, ff_used_bytes, ff_check, NULL, NULL, NULL},
    {"bmm-fixed", "BrainMM's fixed heap (bmm_heap_new_fixed) in one buffer", bf_create, bf_destroy,
     bf_alloc, bf_calloc, bf_realloc, bf_free, bf_used_bytes, bf_check, NULL, NULL, NULL},
    {"bmm-rheap", "BrainMM's relocatable heap (handles, compaction) in one buffer", rh_create,
     rh_destroy, rh_alloc, NULL, rh_realloc, rh_free, rh_used_bytes, rh_check, rh_lock, rh_unlock,
     rh_compaction},
};

static const replay_heap_t *find_heap(const char *name) {
  for (size_t i = 0; i < sizeof replay_heaps / sizeof replay_heaps[0]; i++)
    if (strcmp(replay_heaps[i].name, name) == 0) return &replay_heaps[i];
  return NULL;
}

/* ---- Fixed-heap replay ------------------------------------------------ */

static int run_fixed(const trace_t *t, const replay_heap_t *heap_ops, size_t bytes, bool check) {
  void *heap = heap_ops->create(bytes);
  if (heap == NULL) return 2;
  slot_t *slots = table_alloc(t->nslots * sizeof *slots);
  uint64_t live = 0, peak_live = 0;
  size_t peak_used = 0, i;
  const replay_op_t *failed = NULL;
  double t0 = now_seconds();
  for (i = 0; i < t->nops; i++) {
    const replay_op_t *o = &t->ops[i];
    slot_t *s = &slots[o->slot];
    void *p = NULL;
    if (o->op == BMM_TRACE_OP_FREE) {
      heap_ops->free(heap, s->ptr);
      live -= s->size_plus1 - 1;
      s->ptr = NULL;
      s->size_plus1 = 0;
    } else {
      bool zeroed = false;
      if (o->op == BMM_TRACE_OP_REALLOC && s->ptr != NULL) {
        p = heap_ops->realloc(heap, s->ptr, o->size);
      } else if (o->op == BMM_TRACE_OP_CALLOC && heap_ops->calloc) {
        p = heap_ops->calloc(heap, o->size);
        zeroed = true;
      } else {
        p = heap_ops->alloc(heap, o->size,
                            o->op == BMM_TRACE_OP_ALIGNED ? (size_t)1 << o->align_log2 : 0);
      }
      if (p == NULL) {
        failed = o;
        break;
      }
      void *mem = heap_ops->lock ? heap_ops->lock(heap, p) : p;
      if (o->op == BMM_TRACE_OP_CALLOC && !zeroed) memset(mem, 0, o->size);
      live = live - (s->size_plus1 ? s->size_plus1 - 1 : 0) + o->size;
      s->ptr = p;
      s->size_plus1 = o->size + 1;
      touch(mem, o->size);
      if (heap_ops->unlock) heap_ops->unlock(heap, p);
    }
    if (live > peak_live) peak_live = live;
    size_t used = heap_ops->used_bytes(heap);
    if (used > peak_used) peak_used = used;
    if (check && !heap_ops->check(heap)) {
      fprintf(stderr, "%s: heap check failed after operation %zu (%s)\n", g_prog, i,
              op_name(o->op));
      return 1;
    }
  }
  double seconds = now_seconds() - t0;
  size_t used = heap_ops->used_bytes(heap);
  size_t compactions = 0, compacted_bytes = 0;
  double compact_seconds = 0;
  if (heap_ops->compaction)
    heap_ops->compaction(heap, &compactions, &compacted_bytes, &compact_seconds);
  printf("RESULT workload=fixed-heap trace=%s heap=%s heap_bytes=%zu ops=%zu replayed_ops=%zu "
         "replayed_pct=%.2f completed=%s failed_op=%s failed_size=%" PRIu64
         " used_bytes=%zu used_pct=%.2f live_bytes=%" PRIu64 " peak_live_bytes=%" PRIu64
         " peak_used_bytes=%zu live_pct=%.2f peak_live_pct=%.2f seconds=%.6f compactions=%zu"
         " compacted_bytes=%zu compact_seconds=%.6f\n",
         t->name, heap_ops->name, bytes, t->nops, i,
         t->nops ? 100.0 * (double)i / (double)t->nops : 100.0, failed ? "no" : "yes",
         failed ? op_name(failed->op) : "none", failed ? failed->size : 0, used,
         100.0 * (double)used / (double)bytes, live, peak_live, peak_used,
         100.0 * (double)live / (double)bytes, 100.0 * (double)peak_live / (double)bytes, seconds,
         compactions, compacted_bytes, compact_seconds);
  table_free(slots, t->nslots * sizeof *slots);
  heap_ops->destroy(heap);
  return 0;
}

/* ---- Command line ----------------------------------------------------- */

static void usage(FILE *out) {
  fprintf(out,
          "usage: %s TRACE [--threads N] [--touch pages|ends|none]\n"
          "       %s TRACE --fixed-heap BYTES [--heap NAME] [--rheap-locked N] [--check-heap]\n"
          "       %s TRACE --info\n"
          "\n"
          "Replays an allocation trace recorded with LD_PRELOAD=libbrainmm-trace.so through\n"
          "this process's malloc/calloc/realloc/posix_memalign/free (run it under LD_PRELOAD\n"
          "to measure another allocator) and prints one line:\n"
          "  RESULT workload=replay trace= ops= seconds= peak_rss_kb= peak_live_bytes=\n"
          "         fragmentation= final_live_bytes= final_live_objects= threads=\n"
          "         recorded_threads= baseline_rss_kb= failed=\n"
          "fragmentation is (peak RSS - RSS before the replay) / peak live bytes.\n"
          "\n"
          "  --threads N      replay recorded thread t in replay thread t mod N (default 1:\n"
          "                   every operation in recorded order in one thread); an operation\n"
          "                   waits until the previous one on its object is done\n"
          "  --touch MODE     write one byte per page of each block (pages, the default),\n"
          "                   only its first and last byte (ends), or nothing (none)\n"
          "  --fixed-heap B   replay single-threaded into a heap of B bytes (suffixes k, M, G)\n"
          "                   until the first allocation fails; prints one line:\n"
          "  RESULT workload=fixed-heap trace= heap= heap_bytes= ops= replayed_ops=\n"
          "         replayed_pct= completed= failed_op= failed_size= used_bytes= used_pct=\n"
          "         live_bytes= peak_live_bytes= peak_used_bytes= live_pct= peak_live_pct=\n"
          "         seconds= compactions= compacted_bytes= compact_seconds=\n"
          "                   live bytes are the sizes the trace asked for, used bytes what\n"
          "                   the heap spends on them (headers, its own tables); the values\n"
          "                   are those at the first failure (or the end), peak_* the\n"
          "                   highest before it, *_pct of B\n"
          "  --heap NAME      the fixed heap: 'firstfit' (address-ordered first fit with\n"
          "                   coalescing, built in; the default), 'bmm-fixed' (BrainMM's\n"
          "                   fixed heap: bmm_heap_new_fixed on the B bytes, then\n"
          "                   bmm_heap_malloc/calloc/realloc/malloc_aligned and bmm_free)\n"
          "                   or 'bmm-rheap' (BrainMM's relocatable heap: each object a\n"
          "                   handle, locked while its contents are written, compacted\n"
          "                   when an allocation finds no room: RESULT's compactions=,\n"
          "                   compacted_bytes= and compact_seconds= count them; 0 for the\n"
          "                   others). Any other name is an error\n"
          "  --rheap-locked N with bmm-rheap: the N objects allocated or reallocated last\n"
          "                   stay locked (pinned) until N newer ones come (default 0)\n"
          "  --check-heap     check the fixed heap's invariants after every operation (slow)\n"
          "  --info           print a summary of the trace (INFO line) and replay nothing\n",
          g_prog, g_prog, g_prog);
}

static size_t parse_bytes(const char *s) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s) die("not a size: %s", s);
  unsigned shift = 0;
  switch (*end) {
  case 'k':
  case 'K':
    shift = 10;
    end++;
    break;
  case 'm':
  case 'M':
    shift = 20;
    end++;
    break;
  case 'g':
  case 'G':
    shift = 30;
    end++;
    break;
  }
  if (*end == 'i' || *end == 'B') end++;
  if (*end == 'B') end++;
  if (*end != '\0' || (shift && v > (SIZE_MAX >> shift))) die("not a size: %s", s);
  return (size_t)(v << shift);
}

/* "--name value" or "--name=value". */
static const char *option_value(int argc, char **argv, int *i, const char *name) {
  size_t len = strlen(name);
  if (strncmp(argv[*i], name, len) != 0) return NULL;
  if (argv[*i][len] == '=') return argv[*i] + len + 1;
  if (argv[*i][len] != '\0') return NULL;
  if (*i + 1 >= argc) die("%s needs a value", name);
  return argv[++*i];
}

int main(int argc, char **argv) {
  const char *path = NULL, *heap_name = "firstfit", *v;
  unsigned threads = 1;
  size_t fixed_bytes = 0;
  bool info = false, check = false, fixed = false;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else if ((v = option_value(argc, argv, &i, "--threads"))) {
      char *end;
      unsigned long n = strtoul(v, &end, 10);
      if (*end || n == 0 || n > 4096) die("--threads wants 1..4096, not %s", v);
      threads = (unsigned)n;
    } else if ((v = option_value(argc, argv, &i, "--fixed-heap"))) {
      fixed_bytes = parse_bytes(v);
      fixed = true;
    } else if ((v = option_value(argc, argv, &i, "--heap"))) {
      heap_name = v;
    } else if ((v = option_value(argc, argv, &i, "--rheap-locked"))) {
      char *end;
      unsigned long n = strtoul(v, &end, 10);
      if (*end || n > 1000000) die("--rheap-locked wants 0..1000000, not %s", v);
      g_rheap_locked = n;
    } else if ((v = option_value(argc, argv, &i, "--touch"))) {
      if (strcmp(v, "pages") == 0)
        g_touch = TOUCH_PAGES;
      else if (strcmp(v, "ends") == 0)
        g_touch = TOUCH_ENDS;
      else if (strcmp(v, "none") == 0)
        g_touch = TOUCH_NONE;
      else
        die("--touch wants pages, ends or none, not %s", v);
    } else if (strcmp(argv[i], "--check-heap") == 0) {
      check = true;
    } else if (strcmp(argv[i], "--info") == 0) {
      info = true;
    } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
      usage(stderr);
      die("unknown option %s", argv[i]);
    } else if (path == NULL) {
      path = argv[i];
    } else {
      die("one trace at a time (%s and %s)", path, argv[i]);
    }
  }
  if (path == NULL) {
    usage(stderr);
    return 2;
  }
  const replay_heap_t *heap = find_heap(heap_name);
  if (heap == NULL)
    die("unknown heap '%s': the heaps are 'firstfit', 'bmm-fixed' and 'bmm-rheap'", heap_name);
  if (fixed && threads > 1) die("--fixed-heap replays in one thread; drop --threads");
  if (check && !fixed) die("--check-heap goes with --fixed-heap");
  if (g_rheap_locked && (!fixed || strcmp(heap->name, "bmm-rheap") != 0))
    die("--rheap-locked goes with --fixed-heap and --heap bmm-rheap");

  trace_t trace;
  trace_load(&trace, path);
  if (info) {
    trace_print_info(&trace);
    return 0;
  }
  int status = fixed ? run_fixed(&trace, heap, fixed_bytes, check) : run_replay(&trace, threads);
  table_free(trace.ops, trace.nops * sizeof *trace.ops);
  return status;
}
