/* track.h: telling memory checkers about blocks. Built with
 * -DBMM_VALGRIND=1 (cmake -DBMM_VALGRIND=ON), every block is a valgrind
 * memcheck client block: allocated blocks are MALLOCLIKE (so
 * `valgrind --leak-check=full` reports a program's leaks and stray reads
 * correctly under BrainMM), freed ones FREELIKE. In an AddressSanitizer
 * build, free blocks are poisoned, so a use after free through the bmm_ API
 * is reported by ASan. In any other build every hook is empty.
 *
 * A free block keeps its first 16 bytes accessible: the free-list link and
 * secure mode's mark live there, and the allocator reads them (on any
 * thread). Everything else of a free block is off limits to the program.
 */
#ifndef BMM_TRACK_H
#define BMM_TRACK_H

#include <stddef.h>

#if defined(__SANITIZE_ADDRESS__)
#define BMM_TRACK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BMM_TRACK_ASAN 1
#endif
#endif

#if defined(BMM_VALGRIND) && BMM_VALGRIND
#include <valgrind/memcheck.h>
#endif
#if defined(BMM_TRACK_ASAN)
#include <sanitizer/asan_interface.h>
#endif

#if defined(BMM_VALGRIND) && BMM_VALGRIND
#define BMM_TRACK_VALGRIND 1
#else
#define BMM_TRACK_VALGRIND 0
#endif

/* Bytes at the start of a free block the allocator keeps using. */
#define BMM_TRACK_KEEP 16

/* ASan: a free block of `size` bytes is off limits past its first bytes. */
static inline void bmm__track_poison_tail(void *p, size_t size) {
#if defined(BMM_TRACK_ASAN)
  if (size > BMM_TRACK_KEEP)
    ASAN_POISON_MEMORY_REGION((char *)p + BMM_TRACK_KEEP, size - BMM_TRACK_KEEP);
#endif
  (void)p;
  (void)size;
}

/* p (usable bytes `size`) is handed to the program. */
static inline void bmm__track_alloc(void *p, size_t size) {
#if defined(BMM_VALGRIND) && BMM_VALGRIND
  VALGRIND_MALLOCLIKE_BLOCK(p, size, 0, 0);
#endif
#if defined(BMM_TRACK_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(p, size);
#endif
  (void)p;
  (void)size;
}

/* p (`size` bytes, handed out) reads as zero without having been
 * written (a fresh mapping, dropped pages): calloc's and the pages API's
 * contents are defined. */
static inline void bmm__track_zeroed(void *p, size_t size) {
#if defined(BMM_VALGRIND) && BMM_VALGRIND
  VALGRIND_MAKE_MEM_DEFINED(p, size);
#endif
  (void)p;
  (void)size;
}

/* p (a block of `size` bytes) comes back; the allocator may write its
 * first BMM_TRACK_KEEP bytes next. Call before the block is on a list. */
static inline void bmm__track_free(void *p, size_t size) {
#if defined(BMM_VALGRIND) && BMM_VALGRIND
  VALGRIND_FREELIKE_BLOCK(p, 0);
  VALGRIND_MAKE_MEM_DEFINED(p, size < BMM_TRACK_KEEP ? size : BMM_TRACK_KEEP);
#endif
  bmm__track_poison_tail(p, size);
}

/* A large block comes back. Only valgrind hears of it: its units may
 * become pages or spans that the allocator writes anywhere, so ASan would
 * need them unpoisoned again at once. */
static inline void bmm__track_free_large(void *p) {
#if defined(BMM_VALGRIND) && BMM_VALGRIND
  VALGRIND_FREELIKE_BLOCK(p, 0);
#endif
  (void)p;
}

/* A large block resized without a copy by the allocator (in place, or its
 * pages moved): its first min(old, now) bytes keep what they held. */
static inline void bmm__track_resized(void *p, size_t old, void *q, size_t now) {
#if defined(BMM_VALGRIND) && BMM_VALGRIND
  if (p == q) {
    VALGRIND_RESIZEINPLACE_BLOCK(p, old, now, 0);
  } else {
    VALGRIND_FREELIKE_BLOCK(p, 0);
    VALGRIND_MALLOCLIKE_BLOCK(q, now, 0, 0);
    VALGRIND_MAKE_MEM_DEFINED(q, old < now ? old : now);
  }
#endif
  (void)p;
  (void)old;
  (void)q;
  (void)now;
}

/* Blocks carved fresh onto a free list: off limits past their first bytes. */
static inline void bmm__track_carve(void *p, size_t size) {
#if defined(BMM_VALGRIND) && BMM_VALGRIND
  if (size > BMM_TRACK_KEEP)
    VALGRIND_MAKE_MEM_NOACCESS((char *)p + BMM_TRACK_KEEP, size - BMM_TRACK_KEEP);
#endif
  bmm__track_poison_tail(p, size);
}

/* The free paths read a block's mark word (the second, see fastpath.h)
 * before they know the block is live, when the program may never have
 * written it. */
static inline void bmm__track_mark_read(const void *p) {
#if defined(BMM_VALGRIND) && BMM_VALGRIND
  VALGRIND_MAKE_MEM_DEFINED((const char *)p + sizeof(void *), sizeof(void *));
#endif
  (void)p;
}

/* Memory the allocator itself is about to use (metadata inside a free
 * block, a canary, or a range given back that may become anything). */
static inline void bmm__track_internal(void *p, size_t size) {
#if defined(BMM_VALGRIND) && BMM_VALGRIND
  VALGRIND_MAKE_MEM_DEFINED(p, size);
#endif
#if defined(BMM_TRACK_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(p, size);
#endif
  (void)p;
  (void)size;
}

#endif /* BMM_TRACK_H */
