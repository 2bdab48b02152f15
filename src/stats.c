/* stats.c: bmm_stats_print, bmm_stats_reset, and the report at exit with
 * show_stats=1.
 *
 * What it reports costs the allocation fast paths nothing: the memory
 * accounting of every arena and of the huge blocks (reserved, committed,
 * in use, purged), the blocks per size class of every thread: allocated,
 * freed, in use and the most in use (a count per malloc would cost the
 * fast path an increment: the slow paths count instead, see class_rows),
 * the pages every heap holds per class now and at most (a class's memory
 * and its peak: atomic counters where pages are claimed and released), the
 * calling thread's pages per class (pages, blocks in use, capacity), large
 * blocks allocated and freed (atomic counters on their slow paths), and
 * the process's RSS, peak RSS, page faults, CPU and elapsed time.
 * bmm_stats_reset restarts what accumulates.
 *
 * Output goes through a callback in chunks of whole lines, formatted into a
 * stack buffer without stdio or malloc (this also runs at exit, or while
 * the heap is suspect). Reads of other threads' state are racy snapshots.
 */
#include <string.h>

#include "internal.h"
#include "textout.h"

/* The four columns of one row of the memory table. */
static void out_mem_row(out_t *o, const bmm_mem_stats_t *st) {
  out_bytes(o, st->reserved);
  out_bytes(o, st->committed);
  out_bytes(o, st->used);
  out_bytes(o, st->purged);
}

/* Seconds with three decimals from microseconds. */
static void out_secs(out_t *o, long long us) {
  out_num(o, (unsigned long long)(us / 1000000), 0);
  out_str(o, ".");
  long long ms = (us / 1000) % 1000;
  if (ms < 100) out_str(o, "0");
  if (ms < 10) out_str(o, "0");
  out_num(o, (unsigned long long)ms, 0);
}

/* What bmm_stats_reset saw: the accumulating counters count from it. */
static bmm_os_process_info_t base;
static size_t purged_base;
static uint64_t class_base[BMM_CLASS_COUNT];

/* Large blocks: allocations and frees, counts and bytes, kept by the
 * calling thread's heap without a locked instruction (one would wait for
 * the stores of the big copies before it); a thread with no heap yet uses
 * the shared atomics. */
static _Atomic(uint64_t) large_shared[2][2]; /* [allocated, freed][count, bytes] */
static uint64_t large_base[2][2];            /* the sums at the reset */

static void add_relaxed(_Atomic(uint64_t) *c, uint64_t v) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v,
                        memory_order_relaxed);
}

void bmm__stats_large(size_t bytes, bool allocated) {
  bmm_theap_t *heap = bmm__heap_tls;
  if (heap != &bmm__heap_empty) { /* only this thread writes them */
    add_relaxed(&heap->large_stats[!allocated][0], 1);
    add_relaxed(&heap->large_stats[!allocated][1], bytes);
  } else {
    atomic_fetch_add_explicit(&large_shared[!allocated][0], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&large_shared[!allocated][1], bytes, memory_order_relaxed);
  }
}

/* A large block resized where it is (or its pages moved): the same block,
 * `old` bytes before and `now` after. The difference counts as bytes
 * allocated or freed, so that allocated less freed stays the bytes live. */
void bmm__stats_large_resized(size_t old, size_t now) {
  bool grew = now > old;
  size_t bytes = grew ? now - old : old - now;
  bmm_theap_t *heap = bmm__heap_tls;
  if (heap != &bmm__heap_empty)
    add_relaxed(&heap->large_stats[!grew][1], bytes);
  else
    atomic_fetch_add_explicit(&large_shared[!grew][1], bytes, memory_order_relaxed);
}

/* The large-block sum [freed][bytes] over every heap struct and the
 * shared counters. */
static uint64_t large_sum(int freed, int bytes) {
  uint64_t sum = atomic_load_explicit(&large_shared[freed][bytes], memory_order_relaxed);
  for (bmm_theap_t *h = bmm__heap_all(); h != NULL; h = h->all_next)
    sum += atomic_load_explicit(&h->large_stats[freed][bytes], memory_order_relaxed);
  return sum;
}

/* Raise *peak to now if now is more. */
static void raise_peak(_Atomic(uint64_t) *peak, uint64_t now) {
  uint64_t was = atomic_load_explicit(peak, memory_order_relaxed);
  while (now > was && !atomic_compare_exchange_weak_explicit(peak, &was, now, memory_order_relaxed,
                                                             memory_order_relaxed)) {
  }
}

/* Pages of each size class that all heaps hold, and the most they held
 * since the reset. A page is claimed and released by slow paths only. */
static _Atomic(uint64_t) class_pages[BMM_CLASS_COUNT];
static _Atomic(uint64_t) class_pages_peak[BMM_CLASS_COUNT];

void bmm__stats_class_page(size_t cls, bool claimed) {
  if (!claimed) {
    atomic_fetch_sub_explicit(&class_pages[cls], 1, memory_order_relaxed);
    return;
  }
  raise_peak(&class_pages_peak[cls],
             atomic_fetch_add_explicit(&class_pages[cls], 1, memory_order_relaxed) + 1);
}

/* Blocks in use per size class, as the heaps last counted them: a page's
 * owner counts what its `used` changed by whenever its slow path visits
 * the page (page->live_acct remembers what was counted) and when it exits,
 * a heap adds its counts here in batches (heap.c), and what a page still
 * counted is taken off when it is released. A batch of frees may come
 * before the batch that counted the blocks, and the sum dip below 0. */
static _Atomic(int64_t) class_live[BMM_CLASS_COUNT];
static _Atomic(uint64_t) class_live_peak[BMM_CLASS_COUNT];
static uint64_t live_base[BMM_CLASS_COUNT]; /* blocks in use at the reset */

void bmm__stats_class_live(size_t cls, int64_t delta) {
  int64_t now = atomic_fetch_add_explicit(&class_live[cls], delta, memory_order_relaxed) + delta;
  if (delta > 0 && now > 0) raise_peak(&class_live_peak[cls], (uint64_t)now);
}

/* Blocks handed out per size class by every thread, as the heaps counted
 * them (see class_rows). */
static void class_allocs(uint64_t out[BMM_CLASS_COUNT]) {
  memset(out, 0, sizeof(uint64_t) * BMM_CLASS_COUNT);
  for (bmm_theap_t *h = bmm__heap_all(); h != NULL; h = h->all_next)
    for (size_t c = 0; c < BMM_CLASS_COUNT; c++)
      out[c] += atomic_load_explicit(&h->class_allocs[c], memory_order_relaxed);
}

/* One size class's blocks: allocated and freed since the reset, in use
 * now and at most since the reset. */
typedef struct class_row_s {
  uint64_t allocated, freed, live, peak;
} class_row_t;

/* The rows of every class. Allocations are counted when a page's free
 * list is used up, when the page is released and when its thread exits;
 * blocks in use as above. So other threads' counts (and those of the
 * calling thread's first-class heaps) lag: allocations by up to a free
 * list per class and thread, frees until the owner's slow path visits the
 * page again or the owner exits. The calling thread's default heap adds
 * what it has not counted yet (cs, from bmm__heap_class_stats), so what a
 * single thread did is counted exactly, except the peak: it is of the
 * counts as they were taken, and off either way by as much as they lag
 * (a page's frees not counted yet while another page's allocations are). */
static void class_rows(const bmm_class_stats_t cs[BMM_CLASS_COUNT],
                       class_row_t rows[BMM_CLASS_COUNT]) {
  uint64_t allocs[BMM_CLASS_COUNT];
  class_allocs(allocs);
  for (size_t c = 0; c < BMM_CLASS_COUNT; c++) {
    class_row_t *r = &rows[c];
    int64_t live = atomic_load_explicit(&class_live[c], memory_order_relaxed) + cs[c].live_change;
    r->live = live > 0 ? (uint64_t)live : 0;
    uint64_t total = allocs[c] + cs[c].popped;
    r->allocated = total >= class_base[c] ? total - class_base[c] : 0;
    /* freed = allocated - (live now - live at the reset), never below 0 */
    uint64_t out = r->allocated + live_base[c];
    r->freed = out > r->live ? out - r->live : 0;
    /* The exact count just made counts for the peak too. */
    raise_peak(&class_live_peak[c], r->live);
    r->peak = atomic_load_explicit(&class_live_peak[c], memory_order_relaxed);
  }
}

/* The process's figures since the last reset. */
static void process_info(bmm_os_process_info_t *pi) {
  bmm__os_process_info(pi);
  pi->elapsed_us -= base.elapsed_us;
  pi->user_us -= base.user_us;
  pi->system_us -= base.system_us;
  pi->minor_faults -= base.minor_faults;
  pi->major_faults -= base.major_faults;
}

BMM_API void bmm_stats_reset(void) {
  bmm__heap_stats_flush(bmm__heap_tls);
  bmm_mem_stats_t st;
  bmm__os_process_info(&base);
  bmm__mem_stats(&st);
  purged_base = st.purged;
  bmm_class_stats_t cs[BMM_CLASS_COUNT];
  class_row_t rows[BMM_CLASS_COUNT];
  bmm__heap_class_stats(bmm__heap_tls, cs);
  memset(class_base, 0, sizeof class_base);
  memset(live_base, 0, sizeof live_base);
  class_rows(cs, rows);
  for (size_t c = 0; c < BMM_CLASS_COUNT; c++) {
    class_base[c] = rows[c].allocated;
    live_base[c] = rows[c].live;
    atomic_store_explicit(&class_live_peak[c], rows[c].live, memory_order_relaxed);
    atomic_store_explicit(&class_pages_peak[c],
                          atomic_load_explicit(&class_pages[c], memory_order_relaxed),
                          memory_order_relaxed);
  }
  for (int freed = 0; freed < 2; freed++)
    for (int bytes = 0; bytes < 2; bytes++) large_base[freed][bytes] = large_sum(freed, bytes);
}

/* Large blocks allocated (freed = 0) or freed (1) since the reset: count
 * (bytes = false) or bytes. */
static uint64_t large_since(int freed, bool bytes) {
  return large_sum(freed, bytes) - large_base[freed][bytes];
}

/* The whole process's memory accounting, purged bytes since the reset. */
static void mem_stats(bmm_mem_stats_t *st) {
  bmm__mem_stats(st);
  st->purged = st->purged >= purged_base ? st->purged - purged_base : 0;
}

static void print_text(out_t *o) {
  bmm_os_process_info_t pi;
  process_info(&pi);
  out_str(o, "BrainMM statistics\n");
  out_str(o, "  elapsed ");
  out_secs(o, pi.elapsed_us);
  out_str(o, " s, user ");
  out_secs(o, pi.user_us);
  out_str(o, " s, system ");
  out_secs(o, pi.system_us);
  out_str(o, " s, page faults ");
  out_num(o, pi.minor_faults, 0);
  out_str(o, " minor / ");
  out_num(o, pi.major_faults, 0);
  out_str(o, " major\n  RSS     ");
  out_bytes(o, pi.rss);
  out_str(o, ", peak ");
  out_bytes(o, pi.peak_rss);
  out_str(o, "\n\n  memory           reserved   committed      in use      purged\n");
  bmm_mem_stats_t st;
  for (size_t i = 0; i < bmm__arena_count(); i++) {
    if (!bmm__arena_stats(i, &st)) continue;
    out_str(o, "  arena ");
    out_num(o, i, 4);
    out_str(o, " ");
    out_mem_row(o, &st);
    out_str(o, "\n");
  }
  mem_stats(&st);
  out_str(o, "  total      ");
  out_mem_row(o, &st);
  out_str(o, "\n  (totals include huge blocks; large blocks are inside the arenas)\n");

  bmm_class_stats_t cs[BMM_CLASS_COUNT];
  class_row_t rows[BMM_CLASS_COUNT];
  size_t n = bmm__heap_class_stats(bmm__heap_tls, cs);
  class_rows(cs, rows);
  out_str(o, "\n  size class   allocated       freed      in use    peak use   pages  peak memory"
             "  |  this thread: pages  blocks used   capacity     bytes used\n");
  for (size_t c = 0; c < n; c++) {
    const class_row_t *r = &rows[c];
    uint64_t pages = atomic_load_explicit(&class_pages[c], memory_order_relaxed);
    uint64_t peak = atomic_load_explicit(&class_pages_peak[c], memory_order_relaxed);
    if (cs[c].pages == 0 && r->allocated == 0 && r->peak == 0 && peak == 0) continue;
    out_num(o, bmm__class_size(c), 12);
    out_num(o, r->allocated, 12);
    out_num(o, r->freed, 12);
    out_num(o, r->live, 12);
    out_num(o, r->peak, 12);
    out_num(o, pages, 8);
    out_str(o, " ");
    out_bytes(o, (size_t)peak * bmm__class_page_units(c) * BMM_UNIT_SIZE);
    out_str(o, "  |");
    out_num(o, cs[c].pages, 19);
    out_num(o, cs[c].used, 13);
    out_num(o, cs[c].capacity, 11);
    out_str(o, " ");
    out_bytes(o, (size_t)cs[c].used * bmm__class_size(c));
    out_str(o, "\n");
  }
  out_str(o, "  (blocks by all threads since the reset: allocated, freed, in use now and at most,\n"
             "   as counted on the slow paths: exact for this thread's default heap, other heaps'\n"
             "   allocations lag by up to a free list per class, their frees until the owner's\n"
             "   slow path visits the page again, and the peak by as much either way; pages: in\n"
             "   use now; peak memory: the most pages in use at once, in bytes; this thread: the\n"
             "   pages its heap holds, full pages belonging to no heap)\n");
  out_str(o, "  large blocks: ");
  out_num(o, large_since(0, false), 0);
  out_str(o, " allocated (");
  out_bytes(o, large_since(0, true));
  out_str(o, "), ");
  out_num(o, large_since(1, false), 0);
  out_str(o, " freed (");
  out_bytes(o, large_since(1, true));
  out_str(o, ")\n");
}

static void json_field(out_t *o, const char *name, unsigned long long v, bool comma) {
  out_str(o, "\"");
  out_str(o, name);
  out_str(o, "\": ");
  out_num(o, v, 0);
  if (comma) out_str(o, ", ");
}

static void print_json(out_t *o) {
  bmm_os_process_info_t pi;
  process_info(&pi);
  out_str(o, "{\"process\": {");
  json_field(o, "elapsed_us", (unsigned long long)pi.elapsed_us, true);
  json_field(o, "user_us", (unsigned long long)pi.user_us, true);
  json_field(o, "system_us", (unsigned long long)pi.system_us, true);
  json_field(o, "rss", pi.rss, true);
  json_field(o, "peak_rss", pi.peak_rss, true);
  json_field(o, "minor_faults", pi.minor_faults, true);
  json_field(o, "major_faults", pi.major_faults, false);
  out_str(o, "},\n \"arenas\": [");
  bmm_mem_stats_t st;
  bool first = true;
  for (size_t i = 0; i < bmm__arena_count(); i++) {
    if (!bmm__arena_stats(i, &st)) continue;
    out_str(o, first ? "{" : ", {");
    first = false;
    json_field(o, "index", i, true);
    json_field(o, "reserved", st.reserved, true);
    json_field(o, "committed", st.committed, true);
    json_field(o, "used", st.used, true);
    json_field(o, "purged", st.purged, false);
    out_str(o, "}");
  }
  mem_stats(&st);
  out_str(o, "],\n \"total\": {");
  json_field(o, "reserved", st.reserved, true);
  json_field(o, "committed", st.committed, true);
  json_field(o, "used", st.used, true);
  json_field(o, "purged", st.purged, false);
  out_str(o, "},\n \"heap\": [");
  bmm_class_stats_t cs[BMM_CLASS_COUNT];
  class_row_t rows[BMM_CLASS_COUNT];
  size_t n = bmm__heap_class_stats(bmm__heap_tls, cs);
  class_rows(cs, rows);
  first = true;
  for (size_t c = 0; c < n; c++) {
    const class_row_t *r = &rows[c];
    uint64_t peak = atomic_load_explicit(&class_pages_peak[c], memory_order_relaxed);
    if (cs[c].pages == 0 && r->allocated == 0 && r->peak == 0 && peak == 0) continue;
    out_str(o, first ? "{" : ", {");
    first = false;
    json_field(o, "block_size", bmm__class_size(c), true);
    json_field(o, "allocated", r->allocated, true);
    json_field(o, "freed", r->freed, true);
    json_field(o, "in_use", r->live, true);
    json_field(o, "peak_in_use", r->peak, true);
    json_field(o, "all_pages", atomic_load_explicit(&class_pages[c], memory_order_relaxed), true);
    json_field(o, "peak_bytes", (unsigned long long)peak * bmm__class_page_units(c) * BMM_UNIT_SIZE,
               true);
    json_field(o, "pages", cs[c].pages, true);
    json_field(o, "used", cs[c].used, true);
    json_field(o, "capacity", cs[c].capacity, false);
    out_str(o, "}");
  }
  out_str(o, "],\n \"large\": {");
  json_field(o, "allocated", large_since(0, false), true);
  json_field(o, "allocated_bytes", large_since(0, true), true);
  json_field(o, "freed", large_since(1, false), true);
  json_field(o, "freed_bytes", large_since(1, true), false);
  out_str(o, "}}\n");
}

BMM_API void bmm_stats_print(bmm_output_fn *fn, void *arg) {
  out_t o = {.fn = fn, .arg = arg, .len = 0};
  if (bmm__options[BMM_OPTION_STATS_JSON]) print_json(&o);
  else print_text(&o);
  out_flush(&o);
}

/* show_stats=1: the report at exit (a destructor, not atexit, which may
 * allocate while we initialise). */
__attribute__((destructor)) static void stats_at_exit(void) {
  if (bmm__options[BMM_OPTION_SHOW_STATS]) bmm_stats_print(NULL, NULL);
}
