// override/new.cpp: every form of C++ operator new and delete (plain,
// array, nothrow, sized, aligned), so that C++ programs allocate from
// BrainMM through its fast paths. operator new follows the standard's
// contract: on failure call the installed new_handler and retry; without a
// handler, throw std::bad_alloc (or return nullptr in the nothrow forms).
#include <cerrno>
#include <cstddef>
#include <new>

#include "brainmm.h"

#define BMM_EXPORT __attribute__((visibility("default")))

namespace {

// Returns a block or nullptr after the new_handler gave up (nothrow), or
// throws std::bad_alloc.
void *new_loop(std::size_t size, std::size_t align, bool nothrow) {
  for (;;) {
    void *p = align <= BMM_MIN_ALIGN ? bmm_malloc(size) : bmm_aligned_alloc(align, size);
    if (p != nullptr) return p;
    std::new_handler handler = std::get_new_handler();
    if (handler == nullptr) {
      if (nothrow) return nullptr;
      throw std::bad_alloc();
    }
    if (nothrow) {
      try {
        handler();
      } catch (...) {
        return nullptr;
      }
    } else {
      handler();
    }
  }
}

inline void *new_fast(std::size_t size) {
  void *p = bmm_malloc(size);
  return p != nullptr ? p : new_loop(size, 0, false);
}

}  // namespace

BMM_EXPORT void *operator new(std::size_t size) { return new_fast(size); }
BMM_EXPORT void *operator new[](std::size_t size) { return new_fast(size); }
BMM_EXPORT void *operator new(std::size_t size, const std::nothrow_t &) noexcept {
  void *p = bmm_malloc(size);
  return p != nullptr ? p : new_loop(size, 0, true);
}
BMM_EXPORT void *operator new[](std::size_t size, const std::nothrow_t &) noexcept {
  void *p = bmm_malloc(size);
  return p != nullptr ? p : new_loop(size, 0, true);
}

BMM_EXPORT void operator delete(void *p) noexcept { bmm_free(p); }
BMM_EXPORT void operator delete[](void *p) noexcept { bmm_free(p); }
BMM_EXPORT void operator delete(void *p, const std::nothrow_t &) noexcept { bmm_free(p); }
BMM_EXPORT void operator delete[](void *p, const std::nothrow_t &) noexcept { bmm_free(p); }
BMM_EXPORT void operator delete(void *p, std::size_t size) noexcept { bmm_free_sized(p, size); }
BMM_EXPORT void operator delete[](void *p, std::size_t size) noexcept {
  bmm_free_sized(p, size);
}

#if __cpp_aligned_new
BMM_EXPORT void *operator new(std::size_t size, std::align_val_t al) {
  return new_loop(size, static_cast<std::size_t>(al), false);
}
BMM_EXPORT void *operator new[](std::size_t size, std::align_val_t al) {
  return new_loop(size, static_cast<std::size_t>(al), false);
}
BMM_EXPORT void *operator new(std::size_t size, std::align_val_t al,
                              const std::nothrow_t &) noexcept {
  return new_loop(size, static_cast<std::size_t>(al), true);
}
BMM_EXPORT void *operator new[](std::size_t size, std::align_val_t al,
                                const std::nothrow_t &) noexcept {
  return new_loop(size, static_cast<std::size_t>(al), true);
}
BMM_EXPORT void operator delete(void *p, std::align_val_t) noexcept { bmm_free(p); }
BMM_EXPORT void operator delete[](void *p, std::align_val_t) noexcept { bmm_free(p); }
BMM_EXPORT void operator delete(void *p, std::align_val_t, const std::nothrow_t &) noexcept {
  bmm_free(p);
}
BMM_EXPORT void operator delete[](void *p, std::align_val_t, const std::nothrow_t &) noexcept {
  bmm_free(p);
}
BMM_EXPORT void operator delete(void *p, std::size_t size, std::align_val_t al) noexcept {
  bmm_free_aligned_sized(p, static_cast<std::size_t>(al), size);
}
BMM_EXPORT void operator delete[](void *p, std::size_t size, std::align_val_t al) noexcept {
  bmm_free_aligned_sized(p, static_cast<std::size_t>(al), size);
}
#endif
