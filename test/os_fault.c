/* os_fault.c: BrainMM when the kernel refuses a mapping it cannot go on
 * without. This program defines mmap, so that BrainMM (linked statically)
 * calls it rather than libc's; on demand it fails the calls that map fresh
 * reserved space over a fixed range (MAP_FIXED | MAP_NORESERVE), which is
 * how BrainMM fills the hole a remap leaves when a large block's pages move
 * (as a process out of mappings, vm.max_map_count, would see it).
 *   - a block of 3 MiB grown to 40 MiB moves its pages into a huge
 *     mapping; when the hole it leaves cannot be mapped again, the process
 *     stops with one "brainmm: fatal:" line (before, it went on and handed
 *     out unmapped pages: SIGSEGV);
 *   - without the fault, the same realloc keeps the contents.
 * Under strict overcommit (vm.overcommit_memory=2) BrainMM copies instead
 * of remapping, and the first case is skipped with a line.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "brainmm.h"
#include "check.h"

static volatile int fail_fixed;

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
  static void *(*real)(void *, size_t, int, int, int, off_t);
  if (real == NULL) real = (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, "mmap");
  if (fail_fixed && (flags & MAP_FIXED) && (flags & MAP_NORESERVE)) {
    errno = ENOMEM;
    return MAP_FAILED;
  }
  return real(addr, len, prot, flags, fd, off);
}

enum { MiB = 1 << 20 };

static unsigned char *grown(bool fault) {
  unsigned char *p = bmm_malloc(3 * MiB);
  if (p == NULL) return NULL;
  for (size_t i = 0; i < 3 * MiB; i += 4096) p[i] = (unsigned char)(i >> 12);
  fail_fixed = fault;
  unsigned char *q = bmm_realloc(p, 40 * MiB);
  fail_fixed = 0;
  return q;
}

static void grow_with_fault(void *arg) {
  (void)arg;
  grown(true);
}

static bool strict_commit(void) {
  FILE *f = fopen("/proc/sys/vm/overcommit_memory", "r");
  int mode = 0;
  if (f != NULL) {
    if (fscanf(f, "%d", &mode) != 1) mode = 0;
    fclose(f);
  }
  return mode == 2;
}

int main(void) {
  if (strict_commit()) {
    printf("os_fault: strict overcommit: large blocks are copied, not remapped; skipped\n");
  } else {
    char buf[1024];
    int lines;
    int status = check_child(grow_with_fault, NULL, buf, sizeof buf, &lines);
    CHECK(status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
    CHECK(lines == 1 && strncmp(buf, "brainmm: fatal: ", 16) == 0);
    if (!CHECK(strstr(buf, "could not map again") != NULL))
      fprintf(stderr, "os_fault: the child said: %s\n", buf);
  }
  unsigned char *q = grown(false);
  CHECK(q != NULL);
  bool same = q != NULL;
  for (size_t i = 0; same && i < 3 * MiB; i += 4096) same = q[i] == (unsigned char)(i >> 12);
  CHECK(same);
  bmm_free(q);
  return check_done();
}
