/* os_fault.c: large blocks that move by remapping their pages, and what
 * the kernel may do meanwhile. This program defines mremap, so that
 * BrainMM (linked statically) calls it rather than the C library's; it
 * passes every call on to the kernel, and on demand it refuses the moves
 * (a kernel before 5.7, or a process out of mappings), or maps a page of
 * its own where a moved block is about to grow (another thread's mmap
 * landing there). For each way a big block moves without copying (grown
 * into a huge block; grown to the left over free pages; bmm_pages_realloc
 * to a new place), each case in a child of its own:
 *   - the pages move (nothing copied) and the range they left is still
 *     mapped, also right after each mremap: no hole, not even for a
 *     moment, that another thread's mmap could take and a later MAP_FIXED
 *     would silently replace (before, every move left one until the range
 *     was mapped again);
 *   - refused, the block is copied instead, its contents intact, also
 *     when the refusal came after the destination was unmapped (as Linux
 *     has done for a source it then found it could not move);
 *   - a mapping that appears where the moved pages grow into is left
 *     alone, and the block is copied instead.
 * The huge block a span became grows in place afterwards (it is one
 * mapping with its guard). The to_huge cases run again in secure mode
 * (--secure), where that guard is a PROT_NONE page.
 * Under strict overcommit (vm.overcommit_memory=2) BrainMM copies instead
 * of remapping: the test says so and skips (exit 77).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../src/internal.h"
#include "brainmm.h"
#include "check.h"

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

enum { MiB = 1 << 20 };

/* Every page of [p, p+len) is mapped (len at most 4 MiB). */
static bool mapped(const void *p, size_t len) {
  unsigned char vec[1024];
  return len / 4096 <= sizeof vec && mincore((void *)p, len, vec) == 0;
}

static volatile int watch;        /* count the holes moves leave */
static volatile int holes;        /* moves that left their source unmapped */
static volatile int refuse_moves; /* mremap with MREMAP_DONTUNMAP fails (2: dst unmapped) */
static volatile int take_growth;  /* the next grow in place finds a mapping in its way */
static void *volatile taken;      /* that mapping */

void *mremap(void *old, size_t old_size, size_t new_size, int flags, ...) {
  void *new_addr = NULL;
  if (flags & MREMAP_FIXED) {
    va_list ap;
    va_start(ap, flags);
    new_addr = va_arg(ap, void *);
    va_end(ap);
  }
  if (refuse_moves && (flags & MREMAP_DONTUNMAP)) {
    /* 2: as a kernel that unmaps the destination before it looks at the
     * source, and then refuses it */
    if (refuse_moves == 2) munmap(new_addr, new_size);
    errno = EINVAL;
    return MAP_FAILED;
  }
  if (take_growth && flags == 0 && new_size > old_size) {
    take_growth = 0;
    void *at = (char *)old + old_size;
    /* Not MAP_FIXED: it lands there only if the range is free, as
     * another thread's mmap(NULL, ...) might. */
    void *m = mmap(at, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == at) {
      memset(m, 0x5a, 4096);
      taken = m;
    } else if (m != MAP_FAILED) {
      munmap(m, 4096);
    }
  }
  long r = syscall(SYS_mremap, old, old_size, new_size, flags, new_addr);
  if (r < 0 && r > -4096) {
    errno = (int)-r;
    return MAP_FAILED;
  }
  if (watch && (flags & MREMAP_FIXED) && !mapped(old, old_size)) holes++;
  return (void *)r;
}

static void fill(unsigned char *p, size_t len) {
  for (size_t i = 0; i < len; i += 4096)
    p[i] = (unsigned char)(i >> 12 | 1);
}

static bool same(const unsigned char *p, size_t len) {
  for (size_t i = 0; i < len; i += 4096)
    if (p[i] != (unsigned char)(i >> 12 | 1)) return false;
  return true;
}

enum { PLAIN, REFUSED, TAKEN, REFUSED_LATE };

/* After `len` bytes of a block moved (how: PLAIN or else copied) from p
 * to q: no hole on the way, errno untouched, the contents, p's range
 * still mapped. */
static void check_moved(const unsigned char *p, const unsigned char *q, size_t len,
                        size_t copied_before, int how, int err) {
  CHECK(holes == 0);
  CHECK_EQ_LONG(err, 0); /* a move refused on the way is not the call's error */
  CHECK(same(q, len));
  CHECK(mapped(p, len));
  if (how == PLAIN)
    CHECK(bmm__large_bytes_copied() == copied_before);
  else
    CHECK(bmm__large_bytes_copied() >= copied_before + len);
}

/* realloc 3 MiB -> 40 MiB: the span becomes a huge block (bmm__huge_adopt). */
static void to_huge(int how) {
  void *keep = bmm_malloc(100000); /* the arena stays, not given back whole */
  unsigned char *p = bmm_malloc(3 * MiB);
  CHECK(keep != NULL && p != NULL);
  fill(p, 3 * MiB);
  size_t copied = bmm__large_bytes_copied();
  refuse_moves = how == REFUSED ? 1 : how == REFUSED_LATE ? 2 : 0;
  take_growth = how == TAKEN;
  watch = 1;
  errno = 0;
  unsigned char *q = bmm_realloc(p, 40 * MiB);
  int err = errno;
  refuse_moves = take_growth = watch = 0;
  if (!CHECK(q != NULL && q != p)) return;
  check_moved(p, q, 3 * MiB, copied, how, err); /* p: the arena's still */
  if (how == TAKEN) {
    CHECK(taken != NULL);
    if (taken != NULL) {
      const unsigned char *t = taken;
      CHECK(t[0] == 0x5a && t[4095] == 0x5a);
      CHECK((const unsigned char *)taken + 4096 <= q ||
            (const unsigned char *)taken >= q + 40 * MiB);
    }
  }
  memset(q, 1, 40 * MiB); /* all of it is the block's */
  if (how == PLAIN) {
    /* The adopted block is one mapping with its guard: it grows in place. */
    size_t before = bmm__large_bytes_copied();
    unsigned char *r = bmm_realloc(q, 80 * MiB);
    CHECK(r != NULL && bmm__large_bytes_copied() == before);
    if (r != NULL) {
      CHECK(r[0] == 1 && r[40 * MiB - 1] == 1);
      memset(r, 2, 80 * MiB);
      q = r;
    }
  }
  bmm_free(q);
  bmm_free(keep);
  CHECK(bmm_heap_check());
}

/* A span grown by 3 MiB whose right neighbour is taken and whose left
 * pages are free: it moves down over them (move_down). */
static void grow_left(int how) {
  unsigned char *a = bmm_malloc(4 * MiB), *b = bmm_malloc(2 * MiB), *c = bmm_malloc(1 * MiB);
  CHECK(a != NULL && b != NULL && c != NULL);
  fill(b, 2 * MiB);
  bmm_free(a);
  size_t copied = bmm__large_bytes_copied();
  refuse_moves = how == REFUSED ? 1 : how == REFUSED_LATE ? 2 : 0;
  watch = 1;
  errno = 0;
  unsigned char *q = bmm_realloc(b, 5 * MiB);
  int err = errno;
  refuse_moves = watch = 0;
  if (!CHECK(q != NULL)) return;
  bool left = q >= a && q < b; /* else the layout differs: the case tests nothing */
  if (!left)
    check_print(2, "os_fault: grow_left: the block went to %p, not into [%p, %p)\n", q, a, b);
  CHECK(left);
  check_moved(b, q, 2 * MiB, copied, how, err);
  memset(q, 1, 5 * MiB);
  bmm_free(q);
  bmm_free(c);
  CHECK(bmm_heap_check());
}

/* bmm_pages_realloc of 2 MiB to 4 MiB with its right neighbour taken: new
 * pages elsewhere, the old ones moved there. */
static void pages_moved(int how) {
  unsigned char *p = bmm_pages_alloc(512), *next = bmm_pages_alloc(1);
  CHECK(p != NULL && next != NULL);
  fill(p, 2 * MiB);
  size_t copied = bmm__large_bytes_copied();
  refuse_moves = how == REFUSED ? 1 : how == REFUSED_LATE ? 2 : 0;
  watch = 1;
  errno = 0;
  unsigned char *q = bmm_pages_realloc(p, 1024);
  int err = errno;
  refuse_moves = watch = 0;
  if (!CHECK(q != NULL && q != p)) return;
  check_moved(p, q, 2 * MiB, copied, how, err);
  memset(q, 1, 4 * MiB);
  bmm_pages_free(q);
  bmm_pages_free(next);
  CHECK(bmm_heap_check());
}

static void to_huge_plain(void) {
  to_huge(PLAIN);
}
static void to_huge_refused(void) {
  to_huge(REFUSED);
}
static void to_huge_taken(void) {
  to_huge(TAKEN);
}
static void grow_left_plain(void) {
  grow_left(PLAIN);
}
static void grow_left_refused(void) {
  grow_left(REFUSED);
}
static void grow_left_refused_late(void) {
  grow_left(REFUSED_LATE);
}
static void to_huge_refused_late(void) {
  to_huge(REFUSED_LATE);
}
static void pages_refused_late(void) {
  pages_moved(REFUSED_LATE);
}
static void pages_plain(void) {
  pages_moved(PLAIN);
}
static void pages_refused(void) {
  pages_moved(REFUSED);
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

int main(int argc, char **argv) {
  if (strict_commit()) {
    printf("os_fault: strict overcommit: large blocks are copied, not remapped; skipped\n");
    return 77;
  }
  static const check_case_t cases[] = {
      {"to_huge", to_huge_plain},
      {"to_huge_refused", to_huge_refused},
      {"to_huge_taken", to_huge_taken},
      {"grow_left", grow_left_plain},
      {"grow_left_refused", grow_left_refused},
      {"pages", pages_plain},
      {"pages_refused", pages_refused},
      {"to_huge_refused_late", to_huge_refused_late},
      {"grow_left_refused_late", grow_left_refused_late},
      {"pages_refused_late", pages_refused_late},
  };
  size_t n = sizeof cases / sizeof cases[0];
  bool secure = argc > 1 && strcmp(argv[1], "--secure") == 0;
  if (argc > 1 && !secure) return check_cases_main("os_fault", cases, n, argc, argv);
  for (size_t i = 0; i < n; i++) /* secure: guard pages change the layouts but to_huge's */
    if (!secure || strncmp(cases[i].name, "to_huge", 7) == 0) check_run_case("os_fault", &cases[i]);
  if (!secure) CHECK(check_rerun(argv[0], "--secure", "BMM_SECURE", "1", "BMM_LEAK_REPORT", NULL));
  return check_done();
}
