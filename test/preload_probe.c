/* preload_probe.c - proves that the process's malloc is BrainMM's.
 *
 * Built without linking BrainMM and run by preload.sh under
 * LD_PRELOAD=libbrainmm.so. It allocates through the standard names (and
 * through libc itself, with strdup), looks up bmm_usable_size with dlsym and
 * checks that BrainMM recognises every block as its own: a pointer BrainMM did
 * not hand out would be reported as a foreign pointer, not given a size.
 *
 * Exit status: 0 every block is BrainMM's; 1 some check failed; 2
 * bmm_usable_size is not in the process (BrainMM is not loaded), which is
 * what a run without LD_PRELOAD must give.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef size_t usable_size_fn(const void *p);

static int failures;

static void expect(int ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "preload_probe: FAILED: %s\n", what);
    failures++;
  }
}

int main(void) {
  /* allocate first, so the lookup below cannot be what brought BrainMM in */
  void *p = malloc(100);
  char *s = strdup("served by BrainMM?"); /* allocated inside libc */
  void *c = calloc(10, 10);
  void *r = realloc(malloc(10), 5000);
  void *a = NULL;
  int rc = posix_memalign(&a, 64, 100);
  void *al = aligned_alloc(256, 512);

  usable_size_fn *usable;
  void *sym = dlsym(RTLD_DEFAULT, "bmm_usable_size");
  if (sym == NULL) {
    printf("preload_probe: bmm_usable_size not found: BrainMM is not loaded\n");
    return 2;
  }
  memcpy(&usable, &sym, sizeof usable); /* object pointer to function pointer */

  expect(p != NULL && usable(p) >= 100, "malloc(100) is a BrainMM block");
  expect(s != NULL && usable(s) >= strlen("served by BrainMM?") + 1,
         "strdup's block (malloc called inside libc) is a BrainMM block");
  expect(c != NULL && usable(c) >= 100, "calloc(10, 10) is a BrainMM block");
  expect(r != NULL && usable(r) >= 5000, "realloc(malloc(10), 5000) is a BrainMM block");
  expect(rc == 0 && a != NULL && usable(a) >= 100 && ((uintptr_t)a & 63) == 0,
         "posix_memalign(64, 100) is an aligned BrainMM block");
  expect(al != NULL && usable(al) >= 512 && ((uintptr_t)al & 255) == 0,
         "aligned_alloc(256, 512) is an aligned BrainMM block");
  expect(p != NULL && malloc_usable_size(p) == usable(p),
         "malloc_usable_size agrees with bmm_usable_size");

  free(p);
  free(s);
  free(c);
  free(r);
  free(a);
  free(al);
  if (failures == 0)
    printf("preload_probe: malloc is served by BrainMM\n");
  return failures == 0 ? 0 : 1;
}
