/* override/new.c: every form of C++ operator new and delete (plain, array,
 * nothrow, sized, aligned), written in C under their mangled names so that
 * libbrainmm.so does not depend on libstdc++: a C program run under
 * LD_PRELOAD does not load the C++ runtime (about 2 MB of RSS and start-up
 * time), and a C++ program, which has loaded it, gets the standard
 * behaviour through weak references to it: on failure operator new calls
 * the installed new_handler and retries; without a handler it throws
 * std::bad_alloc (std::__throw_bad_alloc), or returns NULL in the nothrow
 * forms. Compiled with -fexceptions, so that an exception thrown by a
 * new_handler unwinds through these frames.
 */
#include <stdlib.h>

#include "../internal.h"

#define BMM_EXPORT __attribute__((visibility("default")))

typedef void (*bmm_new_handler_t)(void);
/* std::get_new_handler() and std::__throw_bad_alloc(), if libstdc++ is
 * loaded (it is, in any program that calls operator new). */
extern bmm_new_handler_t _ZSt15get_new_handlerv(void) __attribute__((weak));
extern void _ZSt17__throw_bad_allocv(void) __attribute__((weak, noreturn));

static bmm_noinline void *new_retry(size_t size, size_t align, bool nothrow) {
  for (;;) {
    void *p = align > BMM_ALIGN ? bmm__malloc_aligned(size, align) : bmm_malloc(size);
    if (p != NULL) return p;
    bmm_new_handler_t handler = _ZSt15get_new_handlerv ? _ZSt15get_new_handlerv() : NULL;
    if (handler == NULL) {
      if (nothrow) return NULL;
      if (_ZSt17__throw_bad_allocv) _ZSt17__throw_bad_allocv();
      bmm__error(NULL, "operator new", "out of memory and no C++ runtime to throw bad_alloc");
      abort();
    }
    handler();
  }
}

static inline void *new_throwing(size_t size) {
  void *p = bmm_malloc(size);
  return bmm_likely(p != NULL) ? p : new_retry(size, 0, false);
}

static inline void *new_nothrow(size_t size) {
  void *p = bmm_malloc(size);
  return bmm_likely(p != NULL) ? p : new_retry(size, 0, true);
}

/* operator new(size_t), new[](size_t) and their nothrow forms. */
BMM_EXPORT void *_Znwm(size_t size) { return new_throwing(size); }
BMM_EXPORT void *_Znam(size_t size) { return new_throwing(size); }
BMM_EXPORT void *_ZnwmRKSt9nothrow_t(size_t size, const void *nt) {
  (void)nt;
  return new_nothrow(size);
}
BMM_EXPORT void *_ZnamRKSt9nothrow_t(size_t size, const void *nt) {
  (void)nt;
  return new_nothrow(size);
}

/* operator delete / delete[]: plain, nothrow, sized. */
BMM_EXPORT void _ZdlPv(void *p) { bmm_free(p); }
BMM_EXPORT void _ZdaPv(void *p) { bmm_free(p); }
BMM_EXPORT void _ZdlPvRKSt9nothrow_t(void *p, const void *nt) {
  (void)nt;
  bmm_free(p);
}
BMM_EXPORT void _ZdaPvRKSt9nothrow_t(void *p, const void *nt) {
  (void)nt;
  bmm_free(p);
}
BMM_EXPORT void _ZdlPvm(void *p, size_t size) { bmm_free_sized(p, size); }
BMM_EXPORT void _ZdaPvm(void *p, size_t size) { bmm_free_sized(p, size); }

/* The aligned forms (C++17 std::align_val_t is a size_t enum). */
BMM_EXPORT void *_ZnwmSt11align_val_t(size_t size, size_t align) {
  return new_retry(size, align, false);
}
BMM_EXPORT void *_ZnamSt11align_val_t(size_t size, size_t align) {
  return new_retry(size, align, false);
}
BMM_EXPORT void *_ZnwmSt11align_val_tRKSt9nothrow_t(size_t size, size_t align, const void *nt) {
  (void)nt;
  return new_retry(size, align, true);
}
BMM_EXPORT void *_ZnamSt11align_val_tRKSt9nothrow_t(size_t size, size_t align, const void *nt) {
  (void)nt;
  return new_retry(size, align, true);
}
BMM_EXPORT void _ZdlPvSt11align_val_t(void *p, size_t align) {
  (void)align;
  bmm_free(p);
}
BMM_EXPORT void _ZdaPvSt11align_val_t(void *p, size_t align) {
  (void)align;
  bmm_free(p);
}
BMM_EXPORT void _ZdlPvSt11align_val_tRKSt9nothrow_t(void *p, size_t align, const void *nt) {
  (void)align, (void)nt;
  bmm_free(p);
}
BMM_EXPORT void _ZdaPvSt11align_val_tRKSt9nothrow_t(void *p, size_t align, const void *nt) {
  (void)align, (void)nt;
  bmm_free(p);
}
BMM_EXPORT void _ZdlPvmSt11align_val_t(void *p, size_t size, size_t align) {
  bmm_free_aligned_sized(p, align, size);
}
BMM_EXPORT void _ZdaPvmSt11align_val_t(void *p, size_t size, size_t align) {
  bmm_free_aligned_sized(p, align, size);
}
