// new_delete.cpp: the C++ operators come from BrainMM (linked as a shared
// library ahead of libstdc++): every form of new/delete returns blocks
// BrainMM knows, aligned new honours its alignment, a failed throwing new
// throws std::bad_alloc, a failed nothrow new returns nullptr, and an
// installed new_handler is called before giving up.
#include <brainmm.h>

#include <cstdint>
#include <cstdio>
#include <new>

static int passed, failed;
#define CHECK(c) ((c) ? (void)++passed : (void)(++failed, std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c)))

static int handler_calls;
static void handler() {
  ++handler_calls;
  std::set_new_handler(nullptr); // give up on the next failure
}

struct alignas(256) Wide {
  char bytes[300];
};

int main() {
  int *one = new int(7);
  CHECK(bmm_usable_size(one) >= sizeof(int) && *one == 7);
  delete one;
  int *arr = new int[1000];
  CHECK(bmm_usable_size(arr) >= 1000 * sizeof(int));
  delete[] arr;
  Wide *w = new Wide;
  CHECK(reinterpret_cast<std::uintptr_t>(w) % 256 == 0 && bmm_usable_size(w) >= sizeof(Wide));
  delete w;
  Wide *wa = new Wide[3];
  CHECK(reinterpret_cast<std::uintptr_t>(wa) % 256 == 0);
  delete[] wa;
  int *nt = new (std::nothrow) int[10];
  CHECK(nt != nullptr && bmm_usable_size(nt) >= 40);
  delete[] nt;

  const std::size_t too_big = static_cast<std::size_t>(1) << 62;
  bool thrown = false;
  try {
    char *p = new char[too_big];
    delete[] p;
  } catch (const std::bad_alloc &) {
    thrown = true;
  }
  CHECK(thrown);
  char *q = new (std::nothrow) char[too_big];
  CHECK(q == nullptr);
  std::set_new_handler(handler);
  thrown = false;
  try {
    char *p = new char[too_big];
    delete[] p;
  } catch (const std::bad_alloc &) {
    thrown = true;
  }
  CHECK(thrown && handler_calls == 1);
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed != 0;
}
