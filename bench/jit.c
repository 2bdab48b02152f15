/* jit.c: a JIT workload on the JIT heap (bmm_jit_*), against the plain
 * way of getting executable memory.
 *
 * The workload makes FUNCTIONS small functions one after another, as a JIT
 * compiling many small methods or regular expressions does: allocate,
 * write the machine code, make it runnable, call it once, and keep it in a
 * code cache of LIVE functions, the oldest of which is freed to make room.
 * Function sizes are random in [16, SIZE] bytes from a fixed seed, so
 * every mode does the same work. Modes:
 *
 *   mmap        one mapping per function, the simplest W^X scheme: mmap a
 *               page read+write, write, mprotect read+execute, flush, call;
 *               munmap when it leaves the cache
 *   rwx         bmm_jit_new(0): bmm_jit_alloc, write, bmm_jit_flush, call,
 *               bmm_jit_free
 *   split       bmm_jit_new(BMM_JIT_SPLIT): the same, writing through the
 *               alias from bmm_jit_writable (W^X without a syscall)
 *   split_sync  split with the _sync calls (one thread: the uncontended
 *               cost of the lock)
 *
 * Usage: jit [FUNCTIONS] [LIVE] [SIZE]   (defaults 200000 1000 256)
 *
 * One line per mode on stdout:
 *
 *   RESULT workload=jit mode=M functions=N live=L size=S seconds=T
 *          mops=X ns_per_function=Y checksum=C
 *
 * mops is millions of functions made, run and freed per second; checksum
 * sums what the functions returned and is the same for every mode (a
 * different one means a function ran the wrong code). Off x86-64 the code
 * is written but not called (checksum=na).
 */
#define _GNU_SOURCE
#include <brainmm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "bench_common.h"

#if defined(__x86_64__)
#define CAN_RUN 1
#else
#define CAN_RUN 0
#endif

typedef enum { MODE_MMAP, MODE_RWX, MODE_SPLIT, MODE_SPLIT_SYNC, MODE_COUNT } bench_mode_t;
static const char *const mode_name[MODE_COUNT] = {"mmap", "rwx", "split", "split_sync"};

/* int f(void) { return k; } (mov eax, imm32; ret), then int3 up to size. */
static void emit_function(uint8_t *w, size_t size, int32_t k) {
  w[0] = 0xB8;
  memcpy(w + 1, &k, 4);
  w[5] = 0xC3;
  memset(w + 6, 0xCC, size - 6);
}

static int call0(void *code) {
  int (*f)(void);
  memcpy(&f, &code, sizeof f);
  return f();
}

typedef struct slot_s {
  void *code;
  size_t size; /* bytes mapped (mmap mode) */
} slot_t;

static void drop(bench_mode_t mode, bmm_jit_t *jit, slot_t *s) {
  if (s->code == NULL) return;
  switch (mode) {
  case MODE_MMAP:
    munmap(s->code, s->size);
    break;
  case MODE_SPLIT_SYNC:
    bmm_jit_free_sync(jit, s->code);
    break;
  default:
    bmm_jit_free(jit, s->code);
    break;
  }
  s->code = NULL;
}

/* Runs the workload in one mode; returns the checksum, or -1 on failure. */
static long long run(bench_mode_t mode, size_t functions, size_t live, size_t max_size,
                     slot_t *cache, double *seconds) {
  size_t ps = (size_t)sysconf(_SC_PAGESIZE);
  bmm_jit_t *jit = NULL;
  if (mode != MODE_MMAP) {
    jit = bmm_jit_new(mode == MODE_RWX ? 0 : BMM_JIT_SPLIT);
    if (jit == NULL) return -1;
  }
  memset(cache, 0, live * sizeof *cache);
  bc_rng rng;
  bc_rng_seed(&rng, UINT64_C(0x243F6A8885A308D3), 0); /* the same sizes in every mode */
  long long sum = 0;
  double t0 = bc_now();
  for (size_t i = 0; i < functions; i++) {
    size_t size = 16 + (size_t)(bc_next(&rng) % (max_size - 15));
    slot_t *s = &cache[i % live];
    drop(mode, jit, s); /* the oldest function leaves the cache */
    void *code;
    if (mode == MODE_MMAP) {
      size_t bytes = (size + ps - 1) & ~(ps - 1);
      code = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (code == MAP_FAILED) return -1;
      emit_function(code, size, (int32_t)i);
      if (mprotect(code, bytes, PROT_READ | PROT_EXEC) != 0) return -1;
      __builtin___clear_cache((char *)code, (char *)code + size);
      s->size = bytes;
    } else {
      code = mode == MODE_SPLIT_SYNC ? bmm_jit_alloc_sync(jit, size) : bmm_jit_alloc(jit, size);
      if (code == NULL) return -1;
      emit_function(bmm_jit_writable(jit, code), size, (int32_t)i);
      bmm_jit_flush(code, size);
    }
    s->code = code;
    if (CAN_RUN) sum += call0(code);
  }
  for (size_t i = 0; i < live; i++)
    drop(mode, jit, &cache[i]);
  *seconds = bc_now() - t0;
  bmm_jit_delete(jit);
  return sum;
}

static size_t arg_size(int argc, char **argv, int i, size_t def) {
  if (argc <= i || strcmp(argv[i], "-") == 0) return def;
  char *end;
  unsigned long long v = strtoull(argv[i], &end, 10);
  if (*end == 'k' || *end == 'K')
    v *= 1000;
  else if (*end == 'M')
    v *= 1000000;
  return v > 0 ? (size_t)v : def;
}

int main(int argc, char **argv) {
  size_t functions = arg_size(argc, argv, 1, 200000);
  size_t live = arg_size(argc, argv, 2, 1000);
  size_t max_size = arg_size(argc, argv, 3, 256);
  if (max_size < 16) max_size = 16;
  if (live > functions) live = functions;
  slot_t *cache = calloc(live, sizeof *cache);
  if (cache == NULL) return 1;
  int status = 0;
  for (int m = 0; m < MODE_COUNT; m++) {
    double seconds = 0;
    long long sum = run((bench_mode_t)m, functions, live, max_size, cache, &seconds);
    if (sum < 0) {
      fprintf(stderr, "jit: mode %s failed\n", mode_name[m]);
      status = 1;
      continue;
    }
    char checksum[32];
    if (CAN_RUN)
      snprintf(checksum, sizeof checksum, "%lld", sum);
    else
      snprintf(checksum, sizeof checksum, "na");
    printf("RESULT workload=jit mode=%s functions=%zu live=%zu size=%zu seconds=%.4f mops=%.3f "
           "ns_per_function=%.1f checksum=%s\n",
           mode_name[m], functions, live, max_size, seconds, (double)functions / seconds / 1e6,
           seconds * 1e9 / (double)functions, checksum);
    fflush(stdout);
  }
  free(cache);
  return status;
}
