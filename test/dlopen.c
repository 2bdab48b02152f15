/* dlopen.c: shared libraries loaded and unloaded at run time allocate
 * through BrainMM like the rest of the process. Four threads dlopen and
 * dlclose common libraries in a loop (the loader allocates and frees its
 * link maps, TLS blocks and search lists through malloc/free, which the
 * static library overrides), allocate from inside them (strdup in libc), and
 * the main thread checks that malloc is BrainMM's (in builds with the
 * override) and that the heap is sound afterwards. Libraries absent from
 * the machine are skipped.
 */
#define _GNU_SOURCE
#include <brainmm.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static const char *libs[] = {"libm.so.6", "libz.so.1", "libstdc++.so.6", "libgcc_s.so.1",
                             "libresolv.so.2", "libutil.so.1"};
enum { THREADS = 4, ROUNDS = 40 };

static void *worker(void *arg) {
  size_t *opened = arg;
  for (int r = 0; r < ROUNDS; r++) {
    for (size_t i = 0; i < sizeof libs / sizeof *libs; i++) {
      void *h = dlopen(libs[i], RTLD_NOW | RTLD_LOCAL);
      if (h == NULL) continue;
      (*opened)++;
      char *s = strdup(libs[i]); /* allocated by libc, freed by us */
      if (s == NULL || strcmp(s, libs[i]) != 0) abort();
      free(s);
      dlclose(h);
    }
  }
  return NULL;
}

int main(void) {
  pthread_t t[THREADS];
  size_t opened[THREADS] = {0};
  for (int i = 0; i < THREADS; i++) CHECK(pthread_create(&t[i], NULL, worker, &opened[i]) == 0);
  for (int i = 0; i < THREADS; i++) CHECK(pthread_join(t[i], NULL) == 0);
  size_t total = 0;
  for (int i = 0; i < THREADS; i++) total += opened[i];
  CHECK(total > 0);

#ifdef BMM_TEST_OVERRIDE
  /* malloc is BrainMM's: it knows the block's usable size. */
  void *p = malloc(100);
  CHECK(p != NULL && bmm_usable_size(p) >= 100);
  free(p);
  /* libc's own allocations (strdup inside libc.so) come from BrainMM too:
   * the exported malloc interposes for every library. */
  char *dup = strdup("interposed");
  CHECK(dup != NULL && bmm_usable_size(dup) >= sizeof "interposed");
  free(dup);
#endif
  CHECK(bmm_heap_check());
  printf("dlopen: %zu dlopen/dlclose cycles\n", total);
  return check_done();
}
