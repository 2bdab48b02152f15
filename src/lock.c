/* lock.c: the one spin lock of BrainMM, for the few places that lock at
 * all: the span tables of an arena, the huge-block cache, the region-block
 * registry, a JIT heap's _sync calls and a relocatable heap. None of them
 * is on the path of a block up to 64 KiB.
 *
 * Taking it is one exchange (bmm__spin_lock in internal.h); under
 * contention the waiter reads the lock with plain loads (the line stays
 * shared until it is released), backing off with 1, 2, 4 ... 64 pause
 * instructions (127 in all, about 1 to 20 us depending on the core), then
 * yields the processor between tests: the holder may be descheduled, or in
 * a system call (remapping, compacting).
 */
#include "internal.h"

#define BMM_SPIN_ROUNDS 7

bmm_noinline void bmm__spin_lock_contended(atomic_int *lock) {
  unsigned round = 0;
  for (;;) {
    while (atomic_load_explicit(lock, memory_order_relaxed) != 0) {
      if (round < BMM_SPIN_ROUNDS) {
        for (unsigned i = 0; i < 1u << round; i++) bmm__cpu_relax();
        round++;
      } else {
        bmm__os_yield();
      }
    }
    if (atomic_exchange_explicit(lock, 1, memory_order_acquire) == 0) return;
  }
}
