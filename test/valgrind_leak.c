/* valgrind_leak.c: a program that leaks on purpose, for valgrind.sh: under
 * `valgrind --leak-check=full`, with BrainMM built with BMM_VALGRIND=ON,
 * memcheck must see BrainMM's blocks as heap blocks: the three blocks that
 * leak_three() keeps (small, large and huge, each the first of its page,
 * span unit or mapping, whose descriptor records where it starts) are
 * "definitely lost" at exit with its name in their stack, the freed one is
 * not reported, and a read past the end of a block (into a free one, beyond
 * the 16 bytes the allocator keeps accessible) is an invalid read. It calls
 * the bmm_ names: valgrind replaces any function named malloc it can see, a
 * program's own included.
 */
#include <brainmm.h>

void *volatile sink;

__attribute__((noinline, visibility("default"))) void leak_three(void) {
  void *a = bmm_malloc(100);      /* small: lost */
  void *b = bmm_malloc(200000);   /* large: lost */
  void *d = bmm_malloc(20 << 20); /* huge: lost */
  void *c = bmm_malloc(300);      /* freed */
  bmm_free(c);
  sink = a;
  sink = b;
  sink = d;
  sink = NULL; /* the last pointers to a, b and d are gone */
}

__attribute__((noinline, visibility("default"))) int read_past_end(void) {
  /* The next block of this size class is free: past its first 16 bytes
   * (the allocator's link, left accessible) nothing may be read. */
  char *p = bmm_malloc(900);
  size_t usable = bmm_usable_size(p);
  volatile char x = p[usable + 20];
  bmm_free(p);
  return x;
}

int main(int argc, char **argv) {
  leak_three();
  if (argc > 1) return read_past_end() == 123;
  return 0;
}
