/* misuse.c: heap misuse that BrainMM detects even without secure mode. Each
 * case runs in a child process: a free or realloc of a stack pointer, of a
 * static object, of memory from mmap, of a pointer into the middle of a
 * small, medium or large block, a second free of a large, a small or a
 * medium block (right after the first, after other frees, after another
 * thread freed it, by another thread after the owner freed it, twice by
 * another thread), a free of a block its page never handed out, and a
 * realloc of a freed small or large block or of a pointer into a large
 * one. The
 * child must die of SIGABRT after printing exactly one diagnostic line
 * naming the call and the address. Then the same cases run with
 * abort_on_error=0 in one process: each call is reported and ignored, and
 * the heap stays sound and usable.
 */
#define _GNU_SOURCE
#include <brainmm.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static char static_object[64];

typedef enum {
  FREE_STACK,
  FREE_STATIC,
  FREE_MMAP,
  FREE_INTERIOR_SMALL,
  FREE_INTERIOR_MEDIUM,
  FREE_INTERIOR_LARGE,
  DOUBLE_FREE_LARGE,
  DOUBLE_FREE_SMALL,
  DOUBLE_FREE_SMALL_DEEP,
  DOUBLE_FREE_MEDIUM,
  DOUBLE_FREE_AFTER_REMOTE,
  DOUBLE_FREE_REMOTE_AFTER_OWNER,
  DOUBLE_FREE_REMOTE_TWICE,
  FREE_NEVER_ALLOCATED,
  FREE_NOT_HANDED_OUT,
  REALLOC_STACK,
  REALLOC_INTERIOR,
  REALLOC_FREED,
  REALLOC_FREED_LARGE,
  REALLOC_INTERIOR_LARGE,
  CASE_COUNT
} misuse_t;

static const char *const case_name[CASE_COUNT] = {
    "free(stack)",          "free(static)",         "free(mmap)",
    "free(interior small)", "free(interior medium)", "free(interior large)",
    "double free large",    "double free small",    "double free small, deep",
    "double free medium",   "double free after a remote free",
    "double free by another thread after the owner", "double free twice by another thread",
    "free(never allocated)", "free(carved, not handed out)", "realloc(stack)",
    "realloc(interior)",    "realloc(freed)", "realloc(freed large)", "realloc(interior large)"};
static const char *const case_call[CASE_COUNT] = {
    "free(", "free(", "free(", "free(", "free(", "free(", "free(", "free(",
    "free(", "free(", "free(", "free(", "free(", "free(", "free(", "realloc(", "realloc(",
    "realloc(", "realloc(", "realloc("};

static void *free_in_thread(void *p) {
  bmm_free(p);
  return NULL;
}

/* Does one misuse; returns the address it passed. */
static void *do_misuse(misuse_t c) {
  char on_stack[32];
  void *bad = NULL;
  switch (c) {
  case FREE_STACK:
    bad = on_stack;
    bmm_free(bad);
    break;
  case FREE_STATIC:
    bad = static_object;
    bmm_free(bad);
    break;
  case FREE_MMAP: {
    void *m = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    bad = m;
    bmm_free(bad);
    break;
  }
  case FREE_INTERIOR_SMALL:
    bad = (char *)bmm_malloc(100) + 16;
    bmm_free(bad);
    break;
  case FREE_INTERIOR_MEDIUM:
    bad = (char *)bmm_malloc(20000) + 4096;
    bmm_free(bad);
    break;
  case FREE_INTERIOR_LARGE:
    bad = (char *)bmm_malloc(1 << 20) + 65536;
    bmm_free(bad);
    break;
  case DOUBLE_FREE_LARGE: {
    void *p = bmm_malloc(1 << 20);
    bmm_free(p);
    bad = p;
    bmm_free(bad);
    break;
  }
  case DOUBLE_FREE_SMALL:
  case DOUBLE_FREE_MEDIUM: {
    void *p = bmm_malloc(c == DOUBLE_FREE_SMALL ? 48 : 20000);
    bmm_free(p);
    bad = p;
    bmm_free(bad);
    break;
  }
  case DOUBLE_FREE_SMALL_DEEP: { /* p is deep in its page's free list */
    void *p = bmm_malloc(48), *more[10];
    for (int i = 0; i < 10; i++) more[i] = bmm_malloc(48);
    bmm_free(p);
    for (int i = 0; i < 10; i++) bmm_free(more[i]);
    bad = p;
    bmm_free(bad);
    break;
  }
  case DOUBLE_FREE_AFTER_REMOTE: { /* p waits on its page's remote list */
    void *p = bmm_malloc(48);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, free_in_thread, p) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    bad = p;
    bmm_free(bad);
    break;
  }
  case DOUBLE_FREE_REMOTE_AFTER_OWNER:
  case DOUBLE_FREE_REMOTE_TWICE: { /* the second free comes from another thread */
    void *p = bmm_malloc(48);
    pthread_t t;
    if (c == DOUBLE_FREE_REMOTE_AFTER_OWNER) {
      bmm_free(p);
    } else {
      CHECK(pthread_create(&t, NULL, free_in_thread, p) == 0);
      CHECK(pthread_join(t, NULL) == 0);
    }
    bad = p;
    CHECK(pthread_create(&t, NULL, free_in_thread, bad) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    break;
  }
  case FREE_NEVER_ALLOCATED: {
    /* A block start in p's page (one 64 KiB unit of 112-byte blocks, 585
     * of them) far past the few the page has carved: never handed out.
     * Freeing it would let the page hand it out twice. */
    char *p = bmm_malloc(100);
    size_t stride = bmm_usable_size(p);
    bad = (char *)((uintptr_t)p & ~(uintptr_t)0xffff) + 500 * stride;
    bmm_free(bad);
    break;
  }
  case FREE_NOT_HANDED_OUT: {
    /* The block after p, carved with it onto the page's free list (blocks
     * are carved 4 KiB at a time, handed out in address order) and not
     * handed out: freeing it would list it twice. */
    char *p = bmm_malloc(200);
    bad = p + bmm_usable_size(p);
    bmm_free(bad);
    break;
  }
  case REALLOC_FREED:
  case REALLOC_FREED_LARGE: { /* sizes realloc's shortcuts would keep */
    size_t size = c == REALLOC_FREED ? 64 : 100000;
    void *p = bmm_malloc(size);
    bmm_free(p);
    bad = p;
    CHECK(bmm_realloc(bad, size - 4) == NULL);
    break;
  }
  case REALLOC_INTERIOR_LARGE:
    bad = (char *)bmm_malloc(100000) + 4096;
    CHECK(bmm_realloc(bad, 90000) == NULL);
    break;
  case REALLOC_STACK:
    bad = on_stack;
    CHECK(bmm_realloc(bad, 100) == NULL);
    break;
  case REALLOC_INTERIOR:
    bad = (char *)bmm_malloc(64) + 16;
    CHECK(bmm_realloc(bad, 100) == NULL);
    break;
  default:
    break;
  }
  return bad;
}

static void misuse_in_child(void *c) {
  do_misuse((misuse_t)(intptr_t)c);
}

/* Run case c in a child with stderr captured; check it aborted after one
 * line naming the call. */
static void check_aborts(misuse_t c) {
  char buf[1024];
  int lines;
  int status = check_child(misuse_in_child, (void *)(intptr_t)c, buf, sizeof buf, &lines);
  int aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
  int named = strstr(buf, "brainmm: error: ") != NULL && strstr(buf, case_call[c]) != NULL &&
              strstr(buf, "0x") != NULL;
  if (!aborted || lines != 1 || !named)
    fprintf(stderr, "misuse: %s: status %#x, %d lines: %s\n", case_name[c], status, lines, buf);
  CHECK(aborted);
  CHECK(lines == 1);
  CHECK(named);
}

int main(void) {
  for (int c = 0; c < CASE_COUNT; c++) check_aborts((misuse_t)c);

  /* abort_on_error=0: every call is reported and ignored; the heap stays
   * sound. stderr goes to /dev/null for this part (the lines were checked
   * above). */
  CHECK(bmm_option_set("abort_on_error", 0) == 0);
  CHECK(bmm_option_get("abort_on_error") == 0);
  int saved = dup(STDERR_FILENO);
  FILE *null = freopen("/dev/null", "w", stderr);
  (void)null;
  void *keep[64];
  for (int i = 0; i < 64; i++) {
    keep[i] = bmm_malloc((size_t)i * 40 + 1);
    memset(keep[i], i, (size_t)i * 40 + 1);
  }
  for (int c = 0; c < CASE_COUNT; c++) do_misuse((misuse_t)c);
  dup2(saved, STDERR_FILENO);
  for (int i = 0; i < 64; i++) {
    unsigned char *p = keep[i];
    int intact = 1;
    for (int k = 0; k < i * 40 + 1; k++) intact &= p[k] == (unsigned char)i;
    CHECK(intact);
    bmm_free(p);
  }
  CHECK(bmm_heap_check());
  void *p = bmm_malloc(1000);
  CHECK(p != NULL);
  bmm_free(p);
  return check_done();
}
