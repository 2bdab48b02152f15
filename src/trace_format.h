/* trace_format.h: the file format of BrainMM allocation traces, shared by
 * the recorder (src/trace.c, built as libbrainmm-trace.so) and the replayer
 * (tools/bmm-replay.c). Nothing else may depend on it, and it depends on
 * nothing of BrainMM's.
 *
 * A trace file is one header followed by fixed-size records, all little
 * endian (the recorder refuses to build on a big-endian host rather than
 * write another byte order):
 *
 *   header   bmm_trace_header_t, header_size bytes (128 in version 1)
 *   records  bmm_trace_record_t, record_size bytes each (24 in version 1)
 *
 * Each recording thread fills a buffer of its own and appends it to the
 * file in one piece (a "chunk"), so the records of different threads come
 * in chunks, each chunk in the order its thread made the calls. Every chunk
 * starts with a TIME record that gives the absolute time; each later record
 * of the chunk carries the time since the one before it (delta). A reader
 * therefore needs a single running clock: a TIME record sets it, any other
 * record advances it by its delta. Ordering all records by that time (ties:
 * allocations before reallocations before frees, then file position) gives
 * an order in which every object is allocated before it is reallocated or
 * freed; the recorder reads the clock at points that guarantee this (see
 * the top of src/trace.c).
 *
 * Objects are named by a 64-bit id, never 0, unique within a file: a
 * realloc keeps the id of its object. Failed calls, free(NULL), and frees
 * of blocks the tracer never saw allocated are not recorded.
 */
#ifndef BMM_TRACE_FORMAT_H
#define BMM_TRACE_FORMAT_H

#include <stdint.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "BrainMM traces are little endian; this host would need byte swapping"
#endif

#define BMM_TRACE_MAGIC "BMMTRACE" /* 8 bytes, no terminating NUL in the file */
#define BMM_TRACE_VERSION 1u

/* Header flags. FORKED: written by a child after fork(); it starts with
 * INHERIT records for the blocks the parent had live at the fork. */
#define BMM_TRACE_FLAG_FORKED 1u

typedef struct bmm_trace_header_s {
  char magic[8];          /* BMM_TRACE_MAGIC */
  uint32_t version;       /* BMM_TRACE_VERSION */
  uint32_t header_size;   /* bytes before the first record */
  uint32_t record_size;   /* bytes per record */
  uint32_t pid;           /* the recorded process */
  uint32_t ppid;          /* its parent */
  uint32_t flags;         /* BMM_TRACE_FLAG_* */
  uint64_t tick_ns;       /* nanoseconds per time unit (1: times are in ns) */
  uint64_t clock_res_ns;  /* resolution of the clock behind them (clock_getres) */
  uint64_t wall_start_ns; /* CLOCK_REALTIME when time 0 was taken, for humans */
  char comm[16];          /* the program's name (PR_GET_NAME), NUL padded */
  /* When the process started (field 22 of /proc/PID/stat: clock ticks
   * since boot), 0 if unknown: with pid, it tells the process apart from
   * another that got its pid (a pid namespace's 1). */
  uint64_t proc_start;
  uint8_t reserved[48]; /* zero */
} bmm_trace_header_t;

/* Operations. The rank (bmm__trace_op_rank) orders records with equal time. */
enum {
  BMM_TRACE_OP_TIME = 0,    /* id = absolute time since the trace's start */
  BMM_TRACE_OP_MALLOC = 1,  /* new object of `size` bytes */
  BMM_TRACE_OP_CALLOC = 2,  /* new zeroed object of `size` (count * size) bytes */
  BMM_TRACE_OP_ALIGNED = 3, /* new object of `size` bytes aligned to 1 << align_log2 */
  BMM_TRACE_OP_REALLOC = 4, /* object `id` now has `size` bytes (it may have moved) */
  BMM_TRACE_OP_FREE = 5,    /* object `id` freed; size = its size, for reference */
  BMM_TRACE_OP_INHERIT = 6, /* object that existed at fork(), in a child's trace */
  BMM_TRACE_OP_COUNT = 7
};

/* Which entry point the program called, for statistics; replay depends only
 * on the operation. */
enum {
  BMM_TRACE_API_NONE = 0,
  BMM_TRACE_API_MALLOC,
  BMM_TRACE_API_CALLOC,
  BMM_TRACE_API_REALLOC,
  BMM_TRACE_API_REALLOCARRAY,
  BMM_TRACE_API_POSIX_MEMALIGN,
  BMM_TRACE_API_ALIGNED_ALLOC,
  BMM_TRACE_API_MEMALIGN,
  BMM_TRACE_API_VALLOC,
  BMM_TRACE_API_PVALLOC,
  BMM_TRACE_API_FREE,
  BMM_TRACE_API_FREE_SIZED,
  BMM_TRACE_API_FREE_ALIGNED_SIZED,
  BMM_TRACE_API_NEW,    /* operator new, new[], nothrow or aligned forms */
  BMM_TRACE_API_DELETE, /* operator delete, delete[], any form */
  BMM_TRACE_API_FORK,   /* INHERIT records */
  BMM_TRACE_API_COUNT
};

/* One record: 24 bytes. `size_align` packs the size (low 56 bits) and the
 * base-2 logarithm of the requested alignment (high 8 bits, 0 when the call
 * asked for none); 2^56 bytes is far beyond any address space we run on. */
typedef struct bmm_trace_record_s {
  uint8_t op;          /* BMM_TRACE_OP_* */
  uint8_t api;         /* BMM_TRACE_API_* */
  uint16_t thread;     /* small per-thread index; reused after a thread exits */
  uint32_t delta;      /* time since the previous record of the chunk */
  uint64_t id;         /* object id (TIME: absolute time) */
  uint64_t size_align; /* see above */
} bmm_trace_record_t;

#define BMM_TRACE_SIZE_BITS 56
#define BMM_TRACE_SIZE_MASK ((UINT64_C(1) << BMM_TRACE_SIZE_BITS) - 1)

_Static_assert(sizeof(bmm_trace_header_t) == 128, "trace header layout");
_Static_assert(sizeof(bmm_trace_record_t) == 24, "trace record layout");

static inline uint64_t bmm__trace_pack(uint64_t size, unsigned align_log2) {
  return (size & BMM_TRACE_SIZE_MASK) | ((uint64_t)align_log2 << BMM_TRACE_SIZE_BITS);
}
static inline uint64_t bmm__trace_size(uint64_t size_align) {
  return size_align & BMM_TRACE_SIZE_MASK;
}
static inline unsigned bmm__trace_align_log2(uint64_t size_align) {
  return (unsigned)(size_align >> BMM_TRACE_SIZE_BITS);
}

/* Order of operations that carry the same time: an object's operations are
 * always allocation, reallocations, free, so this rank never reverses two
 * operations on one object. */
static inline unsigned bmm__trace_op_rank(unsigned op) {
  switch (op) {
  case BMM_TRACE_OP_REALLOC:
    return 1;
  case BMM_TRACE_OP_FREE:
    return 2;
  default:
    return 0;
  }
}

static inline int bmm__trace_op_allocates(unsigned op) {
  return op == BMM_TRACE_OP_MALLOC || op == BMM_TRACE_OP_CALLOC || op == BMM_TRACE_OP_ALIGNED ||
         op == BMM_TRACE_OP_INHERIT;
}

#endif /* BMM_TRACE_FORMAT_H */
