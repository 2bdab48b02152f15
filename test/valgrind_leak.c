/* valgrind_leak.c: a program that leaks on purpose, for valgrind.sh: under
 * `valgrind --leak-check=full`, with BrainMM built with BMM_VALGRIND=ON,
 * memcheck must see BrainMM's blocks as heap blocks: the three blocks that
 * leak_three() keeps (small, large and huge, each the first of its page,
 * span unit or mapping, whose descriptor records where it starts) are
 * "definitely lost" at exit with its name in their stack, the freed one is
 * not reported, and a read past the end of a block (into a free one, beyond
 * the 16 bytes the allocator keeps accessible) is an invalid read; and a
 * large block that realloc grows in place to the left (its data moved down
 * into pages that were free) raises no error, nor do zeroed memory that
 * BrainMM never wrote (calloc of a fresh huge mapping, the pages API) and
 * the pages API's resize and free. It calls the bmm_ names:
 * valgrind replaces any function named malloc it can see, a program's own
 * included.
 */
#include <string.h>

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

/* b between a free span and a live block grows left, in place. */
static int grow_left(void) {
  char *a = bmm_malloc(200000), *b = bmm_malloc(200000), *c = bmm_malloc(200000);
  memset(b, 7, 200000);
  bmm_free(a);
  char *q = bmm_realloc(b, 350000); /* c is in the way on the right */
  int ok = q != NULL && q < b && q[0] == 7 && q[199999] == 7;
  if (q != NULL) memset(q, 8, 350000);
  bmm_free(q);
  bmm_free(c);
  return ok ? 0 : 1;
}

/* Zeroed memory that BrainMM did not write (a fresh huge mapping from
 * calloc, pages from the pages API) reads as defined, and pages are heap
 * blocks to memcheck: resizing and freeing them is no invalid free. */
static int zeroed(void) {
  char *z = bmm_calloc(1, 64 << 20), *p = bmm_pages_alloc(3), *h = bmm_pages_alloc(5000);
  int bad = z == NULL || p == NULL || h == NULL;
  for (size_t i = 0; !bad && i < 64 << 20; i += 4096)
    bad |= z[i] != 0;
  for (size_t i = 0; !bad && i < 3 * bmm_page_size(); i += 64)
    bad |= p[i] != 0 || h[i] != 0;
  if (p != NULL) p[0] = 5;
  char *q = bmm_pages_realloc(p, 40); /* grows, in place or moved */
  bad |= q == NULL || q[0] != 5;
  bmm_free(z);
  bmm_pages_free(q != NULL ? q : p);
  bmm_pages_free(h);
  return bad;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "grow_left") == 0) return grow_left();
  if (argc > 1 && strcmp(argv[1], "zeroed") == 0) return zeroed();
  leak_three();
  if (argc > 1) return read_past_end() == 123;
  return 0;
}
