/* init.c: process start-up and the public control calls. Initialisation is
 * lazy (the first malloc may come from the dynamic loader or libc before
 * any constructor) and also run from a constructor, so that options given
 * in the environment are seen even when the first malloc came too early to
 * read them. It registers the thread-exit hook (abandoning the heap of an
 * exiting thread) and the fork handler.
 *
 * Concurrency: one thread runs the init; others wait for it, except a call
 * that recurses from inside it (a libc function that allocates), which
 * proceeds with the defaults.
 */
#include "internal.h"

bool bmm__all_slow;

enum { INIT_NONE, INIT_RUNNING, INIT_DONE };
static atomic_int init_state;
static _Atomic(uintptr_t) init_thread;
static bool options_seen_env;

/* After fork only the forking thread lives; see bmm__heap_fork_child. The
 * span cache's, the arenas' and the leak table's locks are taken around
 * fork so that none is copied while held. */
static void init_fork_prepare(void) {
  bmm__heap_fork_prepare(); /* first: it waits for a sweep, which may take the locks below */
  bmm__large_fork_prepare();
  bmm__arena_fork_prepare();
  bmm__leak_fork_prepare();
}

static void init_fork_parent(void) {
  bmm__leak_fork_release();
  bmm__arena_fork_release();
  bmm__large_fork_release();
  bmm__heap_fork_release();
}

static void init_fork_child(void) {
  init_fork_parent();
  bmm__heap_fork_child();
}

void bmm__process_init(void) {
  if (bmm_likely(atomic_load_explicit(&init_state, memory_order_acquire) == INIT_DONE)) return;
  int expected = INIT_NONE;
  uintptr_t self = bmm__os_thread_id();
  if (!atomic_compare_exchange_strong_explicit(&init_state, &expected, INIT_RUNNING,
                                               memory_order_acq_rel, memory_order_acquire)) {
    /* Running in another thread: wait. Running in this one: recursion. */
    while (atomic_load_explicit(&init_state, memory_order_acquire) != INIT_DONE &&
           atomic_load_explicit(&init_thread, memory_order_relaxed) != self)
      bmm__os_yield();
    return;
  }
  atomic_store_explicit(&init_thread, self, memory_order_relaxed);
  bmm__os_page_size();
  bmm__os_process_info_start();
  options_seen_env = bmm__os_env_ready();
  bmm__options_init();
  bmm__modes_init();
  if (bmm__options[BMM_OPTION_SHOW_STATS]) bmm__os_keep_stderr(); /* for the report at exit */
  bmm__os_thread_exit_hook_init(bmm__heap_thread_done);
  bmm__os_atfork(init_fork_prepare, init_fork_parent, init_fork_child);
  atomic_store_explicit(&init_state, INIT_DONE, memory_order_release);
  bmm__verbose("initialised, version", BMM_VERSION_MAJOR * 10000 + BMM_VERSION_MINOR * 100 +
                                           BMM_VERSION_PATCH);
}

bool bmm__process_is_initialized(void) {
  return atomic_load_explicit(&init_state, memory_order_acquire) == INIT_DONE;
}

/* Secure mode and leak tracking, from the options: at process init, and
 * again when an option changes them before the first allocation. Before
 * any page exists: secure mode shapes them all, and leak tracking must see
 * every block it may be asked about. */
void bmm__modes_init(void) {
  bmm__secure_init();
  bmm__leak_init();
  bmm__all_slow = bmm__secure || bmm__leak == 1;
  bmm__secure_fast = bmm__secure && !bmm__leak;
  /* The leak report at exit goes to a copy of stderr: some programs (GNU
   * coreutils) close stderr in an atexit handler, before our destructor. */
  if (bmm__leak) bmm__os_keep_stderr();
}

/* Whether those options may still change: nothing allocated yet (no
 * thread heap made, no arena or huge block). The process itself is
 * initialised early (by our constructor when the library is loaded), so
 * that is not the test. */
bool bmm__modes_settable(void) {
  return bmm__heap_all() == NULL && bmm__arena_untouched();
}

__attribute__((constructor)) static void init_constructor(void) {
  bmm__process_init();
  /* The first malloc may have run before the environment was set up. */
  if (!options_seen_env && bmm__os_env_ready()) {
    bmm__options_init();
    if (bmm__options[BMM_OPTION_SECURE] != bmm__secure ||
        (bmm__options[BMM_OPTION_LEAK_REPORT] != 0) != (bmm__leak != 0)) {
      if (bmm__modes_settable()) {
        bmm__modes_init();
      } else {
        bmm__warning("options secure and leak_report must be set before the first allocation",
                     NULL);
        bmm__options[BMM_OPTION_SECURE] = bmm__secure;
        bmm__options[BMM_OPTION_LEAK_REPORT] = bmm__leak != 0;
      }
    }
    if (bmm__options[BMM_OPTION_SHOW_STATS]) bmm__os_keep_stderr();
  }
  /* Arm the exit hook of the main thread too (its heap may predate it). */
  if (bmm__heap_tls != &bmm__heap_empty) bmm__os_thread_exit_hook_arm(bmm__heap_tls);
}

BMM_API void bmm_collect(bool force) {
  bmm__heap_deferred_free(bmm__heap_tls, force);
  bmm__heap_collect(bmm__heap_tls, force);
  if (force) {
    bmm__large_cache_flush();
    bmm__arena_purge_all();
  }
  else bmm__arena_purge_due();
}

BMM_API bool bmm_heap_check(void) {
  return bmm__arena_check_all() && bmm__span_check_all() && bmm__heap_check(bmm__heap_tls);
}
