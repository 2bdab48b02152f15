/* asan_poison.c: in an AddressSanitizer build BrainMM poisons its free
 * blocks (src/track.h), so ASan reports a use after free through the bmm_
 * API: a read of a freed small block (past the 16 bytes the allocator keeps
 * for its own links) must die with ASan's use-after-poison report, for a
 * block freed by its own thread and by another one. A fresh block must be
 * readable and writable end to end. Built only with BMM_SANITIZE=address.
 */
#include <brainmm.h>
#include <pthread.h>
#include <string.h>

#include "check.h"

static void *freer(void *p) {
  bmm_free(p);
  return NULL;
}

static void read_after_free(void *arg) {
  size_t size = (size_t)(uintptr_t)arg;
  volatile char *p = bmm_malloc(size);
  bmm_free((void *)p);
  (void)p[size / 2 + 16];
}

static void read_after_remote_free(void *arg) {
  size_t size = (size_t)(uintptr_t)arg;
  volatile char *p = bmm_malloc(size);
  pthread_t t;
  pthread_create(&t, NULL, freer, (void *)p);
  pthread_join(t, NULL);
  (void)p[size - 1];
}

static void expect_poison(const char *what, void (*fn)(void *), size_t size) {
  char out[8192];
  int lines;
  int status = check_child(fn, (void *)(uintptr_t)size, out, sizeof out, &lines);
  int ok = status != -1 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0) &&
           strstr(out, "use-after-poison") != NULL;
  if (!ok)
    check_print(2, "asan_poison: %s (size %zu): status %#x: %.300s\n", what, size, (unsigned)status,
                out);
  CHECK(ok);
}

int main(void) {
  static const size_t sizes[] = {48, 100, 1000, 5000, 40000};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    expect_poison("read after free", read_after_free, sizes[i]);
    expect_poison("read after a free on another thread", read_after_remote_free, sizes[i]);
    /* Blocks handed out again are whole again. */
    char *p = bmm_malloc(sizes[i]);
    CHECK(p != NULL);
    memset(p, 0x5A, bmm_usable_size(p));
    bmm_free(p);
    p = bmm_malloc(sizes[i]);
    memset(p, 0xA5, bmm_usable_size(p));
    CHECK(p[0] == (char)0xA5 && p[bmm_usable_size(p) - 1] == (char)0xA5);
    bmm_free(p);
  }
  CHECK(bmm_heap_check());
  return check_done();
}
