/* leak.c: leak reports (options leak_report and leak_sample, API
 * bmm_leak_report): live blocks grouped by the call stack that allocated
 * them, with counts and bytes, symbolised.
 *
 * Two ways to choose the blocks, fixed when the process initialises:
 *   leak_sample=0  every block. Like secure mode, every malloc and free
 *                  then takes the slow paths (the direct table stays empty,
 *                  heap tids carry BMM_TID_SLOW), which record and forget.
 *   leak_sample=N  about one block per N bytes allocated, so that it can
 *                  stay on in production: the fast paths stay as they are.
 *                  A heap counts the bytes of the free lists its slow path
 *                  finds used up (page->installed blocks each); when the
 *                  count passes N, the block the slow path hands out now is
 *                  recorded: the allocation that happens to end a list is a
 *                  fair draw from its size class. A page holding a recorded
 *                  block carries BMM_TID_SLOW in its tid until the block is
 *                  freed, so frees into it come here to forget it; other
 *                  pages keep the free fast path. Large blocks are counted
 *                  exactly. Each recorded block then stands for N bytes.
 *
 * Records live in a hash table on memory of its own (never our heap), under
 * one spin lock; call stacks are interned in a second table. The stack is
 * taken after the allocation is complete, so the unwinder may allocate (it
 * does on its first use): a thread-local flag keeps such nested calls from
 * being recorded. Reported "leaks" are all blocks live when asked (at exit
 * with leak_report=1): there is no reachability analysis.
 */
#include <string.h>

#include "internal.h"
#include "textout.h"

#define LEAK_FRAMES 12   /* frames kept per stack */
#define LEAK_SKIP_MAX 16 /* room for BrainMM's (and interposers') frames on top */
#define LEAK_TOMB ((uintptr_t)1)

typedef struct leak_block_s {
  uintptr_t ptr; /* 0 empty, LEAK_TOMB deleted */
  size_t size;
  uint32_t site;
} leak_block_t;

typedef struct leak_site_s {
  uint64_t hash;
  uint32_t depth;
  void *frames[LEAK_FRAMES];
  size_t count, bytes, estimate; /* filled by the report */
} leak_site_t;

typedef struct leak_table_s {
  leak_block_t *blocks;
  size_t cap, used, live; /* used counts tombstones too */
  leak_site_t *sites;
  size_t sites_cap, sites_used;
  uint32_t *site_index; /* open addressing over sites, index + 1 */
  size_t index_cap;
} leak_table_t;

int bmm__leak;              /* [init] 0 off, 1 every block, 2 sampled */
static size_t sample_bytes; /* [init] leak_sample */
static atomic_int table_lock;

/* fork: the table is not copied while another thread changes it (the
 * child's first free of a recorded block would wait for that thread
 * forever). No other lock of ours is taken while it is held. */
void bmm__leak_fork_prepare(void) {
  bmm__spin_lock(&table_lock);
}

void bmm__leak_fork_release(void) {
  bmm__spin_unlock(&table_lock);
}
static leak_table_t table;
static __thread bool in_leak; /* the unwinder's own allocations */

void bmm__leak_init(void) {
  bmm__leak = 0;
  if (!bmm__options[BMM_OPTION_LEAK_REPORT]) return;
  sample_bytes = (size_t)bmm__options[BMM_OPTION_LEAK_SAMPLE];
  bmm__leak = sample_bytes == 0 ? 1 : 2;
}

static inline uint64_t hash_ptr(uintptr_t p) {
  p ^= p >> 33;
  p *= 0xff51afd7ed558ccdull;
  return p ^ (p >> 29);
}

/* Fresh zeroed memory for a table (not from our heap: it is being used). */
static void *table_mem(size_t bytes) {
  return bmm__os_reserve_aligned(bytes, bmm__os_page_size(), true);
}

/* Rebuild the block table without its tombstones: twice as big when it is
 * more than a quarter live, else as big (a sampled table sees as many
 * deletes as inserts; doubling on tombstones would grow it without end and
 * lengthen every probe for an absent block). */
static bool blocks_grow(void) {
  size_t cap = table.cap == 0 ? 4096 : table.live * 4 > table.cap ? table.cap * 2 : table.cap;
  leak_block_t *nb = table_mem(cap * sizeof *nb);
  if (nb == NULL) return false;
  for (size_t i = 0; i < table.cap; i++) {
    leak_block_t *b = &table.blocks[i];
    if (b->ptr <= LEAK_TOMB) continue;
    size_t j = hash_ptr(b->ptr) & (cap - 1);
    while (nb[j].ptr != 0)
      j = (j + 1) & (cap - 1);
    nb[j] = *b;
  }
  if (table.blocks != NULL) bmm__os_release(table.blocks, table.cap * sizeof *nb);
  table.blocks = nb;
  table.cap = cap;
  table.used = table.live;
  return true;
}

static leak_block_t *blocks_find(uintptr_t p) {
  if (table.cap == 0) return NULL;
  for (size_t j = hash_ptr(p) & (table.cap - 1);; j = (j + 1) & (table.cap - 1)) {
    if (table.blocks[j].ptr == p) return &table.blocks[j];
    if (table.blocks[j].ptr == 0) return NULL;
  }
}

/* The site of a stack, interned; UINT32_MAX when out of memory. */
static uint32_t site_intern(void *const *frames, uint32_t depth) {
  uint64_t h = depth;
  for (uint32_t i = 0; i < depth; i++)
    h = hash_ptr(h ^ (uintptr_t)frames[i]);
  if (table.sites_used * 2 >= table.index_cap) {
    size_t icap = table.index_cap ? table.index_cap * 2 : 1024;
    size_t scap = icap / 2;
    uint32_t *ni = table_mem(icap * sizeof *ni);
    leak_site_t *ns = table_mem(scap * sizeof *ns);
    if (ni == NULL || ns == NULL) return UINT32_MAX; /* leaves a mapping: rare */
    if (table.sites_used != 0) memcpy(ns, table.sites, table.sites_used * sizeof *ns);
    for (size_t s = 0; s < table.sites_used; s++) {
      size_t j = ns[s].hash & (icap - 1);
      while (ni[j] != 0)
        j = (j + 1) & (icap - 1);
      ni[j] = (uint32_t)s + 1;
    }
    if (table.sites != NULL) {
      bmm__os_release(table.sites, table.sites_cap * sizeof *ns);
      bmm__os_release(table.site_index, table.index_cap * sizeof *ni);
    }
    table.sites = ns;
    table.sites_cap = scap;
    table.site_index = ni;
    table.index_cap = icap;
  }
  size_t j = h & (table.index_cap - 1);
  for (; table.site_index[j] != 0; j = (j + 1) & (table.index_cap - 1)) {
    leak_site_t *s = &table.sites[table.site_index[j] - 1];
    if (s->hash == h && s->depth == depth && memcmp(s->frames, frames, depth * sizeof *frames) == 0)
      return table.site_index[j] - 1;
  }
  leak_site_t *s = &table.sites[table.sites_used];
  s->hash = h;
  s->depth = depth;
  memcpy(s->frames, frames, depth * sizeof *frames);
  table.site_index[j] = (uint32_t)++table.sites_used;
  return (uint32_t)(table.sites_used - 1);
}

/* ---- Recording ---------------------------------------------------------- */

/* Should a large block being allocated now (`bytes` of it) be recorded?
 * Large blocks are counted exactly, one by one. */
bool bmm__leak_want(bmm_theap_t *heap, size_t bytes) {
  if (in_leak) return false;
  if (bmm__leak == 1) return true;
  if (heap == &bmm__heap_empty) return false;
  heap->leak_left -= (int64_t)bytes;
  if (heap->leak_left > 0) return false;
  heap->leak_left += (int64_t)sample_bytes;
  if (heap->leak_left <= 0) heap->leak_left = (int64_t)sample_bytes; /* after a big block */
  return true;
}

/* The slow path of `heap` found the free list of `page` used up: count it. */
void bmm__leak_count_page(bmm_theap_t *heap, bmm_page_t *page) {
  heap->leak_left -= (int64_t)((size_t)page->installed * bmm__page_usable(page));
  page->installed = 0;
}

/* The slow path of `heap` hands out `block`, from `page` of queue qi.
 * leak_sample: once the count runs out, the allocation to record is drawn
 * at random among this one and those the page's free list will serve: the
 * list is cut before the drawn one, so the call that gets it comes back
 * to the slow path (bmm__leak_resume). Recording always the block that
 * starts a list would lock onto programs whose allocation pattern repeats
 * in step with the list length, and miss sites entirely. */
void bmm__leak_on_alloc(bmm_theap_t *heap, bmm_page_t *page, size_t qi, void *block) {
  if (in_leak) return;
  if (bmm__leak == 1 || heap->leak_record_next) {
    heap->leak_record_next = false;
    bmm__leak_record(block, bmm__page_usable(page), page);
    return;
  }
  if (heap->leak_left > 0 || heap->leak_page != NULL) return;
  heap->leak_left += (int64_t)sample_bytes;
  if (heap->leak_left <= 0) heap->leak_left = (int64_t)sample_bytes;
  size_t n = bmm__page_free_count(page, BMM_UNIT_SIZE / BMM_ALIGN);
  heap->leak_rng = hash_ptr(heap->leak_rng + 0x9e3779b97f4a7c15ull + (uintptr_t)block);
  size_t k = heap->leak_rng % (n + 1); /* 0: this call; k: the k-th from now */
  if (k == 0) {
    bmm__leak_record(block, bmm__page_usable(page), page);
    return;
  }
  bmm_block_t *rest = page->free, *last = NULL;
  for (size_t i = 1; i < k && rest != NULL; i++) {
    last = rest;
    rest = bmm__next(page, rest);
  }
  if (bmm_unlikely(rest == NULL)) { /* shorter than counted: cut at a corrupted link */
    bmm__leak_record(block, bmm__page_usable(page), page);
    return;
  }
  if (last != NULL)
    bmm__set_next(page, last, NULL);
  else
    page->free = NULL;
  /* The rest is counted as in use meanwhile: the page cannot be retired
   * with it, and used + |free| + |local_free| == capacity still holds. */
  heap->leak_rest_n = (uint32_t)(n - k + 1);
  page->used += heap->leak_rest_n;
  heap->leak_rest = rest;
  heap->leak_qi = (uint32_t)qi;
  heap->leak_page = page;
}

/* The cut list's page ran out (or the heap goes away): put the rest back
 * in front of whatever the page has gathered; with `record`, the next
 * block the slow path hands out is the drawn one. */
void bmm__leak_resume(bmm_theap_t *heap, bool record) {
  bmm_page_t *page = heap->leak_page;
  heap->leak_page = NULL;
  bmm_block_t *last = heap->leak_rest;
  while (bmm__next(page, last) != NULL)
    last = bmm__next(page, last);
  bmm__set_next(page, last, page->free);
  page->free = heap->leak_rest;
  page->used -= heap->leak_rest_n;
  heap->leak_rest = NULL;
  heap->leak_record_next = record;
}

/* The stack's first frame outside BrainMM, or n when there is none. As a
 * shared library BrainMM is a module of its own: its frames are those of
 * the module. Linked into a program, its internal functions have no
 * exported name: frames of the program without one are taken for ours (a
 * static function of the program at the top of the stack is then
 * attributed to its first named caller). Either way frames named like an
 * entry point, and a sanitizer's interposed backtrace, are skipped. */
#if !defined(BMM_SHARED_LIBRARY)
/* Names of the allocation entry points (the bmm_ API, the standard
 * names, C++ operator new). */
static bool is_entry_name(const char *name) {
  static const char *const std_names[] = {
      "malloc",         "calloc",        "realloc",  "reallocarray", "free",
      "posix_memalign", "aligned_alloc", "memalign", "valloc",       "pvalloc"};
  if (strncmp(name, "bmm_", 4) == 0 || strncmp(name, "_Zn", 3) == 0) return true;
  for (size_t i = 0; i < sizeof std_names / sizeof std_names[0]; i++)
    if (strcmp(name, std_names[i]) == 0) return true;
  return false;
}
#endif

static int first_caller_frame(void *const *frames, int n) {
  for (int i = 1; i < n; i++) {
    bool mine = bmm__os_code_in_our_module(frames[i]);
#if defined(BMM_SHARED_LIBRARY)
    if (!mine) return i;
#else
    const char *name = bmm__os_code_name(frames[i]);
    if (mine && name == NULL) continue;
    if (name == NULL || (!is_entry_name(name) && strstr(name, "backtrace") == NULL)) return i;
#endif
  }
  return n;
}

/* Insert a record (table lock held); false when out of memory. */
static bool blocks_insert(uintptr_t p, size_t size, uint32_t site) {
  if ((table.used + 1) * 10 >= table.cap * 7 && !blocks_grow()) return false;
  size_t j = hash_ptr(p) & (table.cap - 1);
  while (table.blocks[j].ptr > LEAK_TOMB)
    j = (j + 1) & (table.cap - 1);
  if (table.blocks[j].ptr == 0) table.used++;
  table.blocks[j] = (leak_block_t){.ptr = p, .size = size, .site = site};
  table.live++;
  return true;
}

/* Record block p (usable `size`) of `page` (NULL for large blocks). */
void bmm__leak_record(void *p, size_t size, bmm_page_t *page) {
  void *frames[LEAK_FRAMES + LEAK_SKIP_MAX];
  in_leak = true;
  int n = bmm__os_backtrace(frames, LEAK_FRAMES + LEAK_SKIP_MAX);
  int first = first_caller_frame(frames, n);
  in_leak = false;
  uint32_t depth = (uint32_t)(n - first);
  if (depth > LEAK_FRAMES) depth = LEAK_FRAMES;
  bmm__spin_lock(&table_lock);
  uint32_t site = site_intern(frames + first, depth);
  bool ok = site != UINT32_MAX && blocks_insert((uintptr_t)p, size, site);
  bmm__spin_unlock(&table_lock);
  if (ok && page != NULL && bmm__leak == 2) {
    /* Frees into this page must come to bmm__leak_forget now. */
    uint8_t s = atomic_load_explicit(&page->sampled, memory_order_relaxed);
    uint16_t at = s == 0 ? (uint16_t)bmm__page_block_index(page, p) : BMM_SAMPLED_ANY;
    atomic_store_explicit(&page->sampled_at, at, memory_order_relaxed);
    if (s < UINT8_MAX)
      atomic_store_explicit(&page->sampled, (uint8_t)(s + 1), memory_order_relaxed);
    atomic_fetch_or_explicit(&page->tid, BMM_TID_SLOW, memory_order_relaxed);
  }
}

/* p (of `page`, NULL for large blocks) is being freed: drop its record.
 * Called before the block is back on a list, so that its address cannot
 * be handed out and recorded again before we are done. */
void bmm__leak_forget(void *p, bmm_page_t *page) {
  bmm__spin_lock(&table_lock);
  leak_block_t *b = blocks_find((uintptr_t)p);
  if (b != NULL) {
    b->ptr = LEAK_TOMB;
    table.live--;
  }
  bmm__spin_unlock(&table_lock);
  /* A count that reached UINT8_MAX stays: the page keeps its slow frees. */
  if (b != NULL && page != NULL) {
    uint8_t s = atomic_load_explicit(&page->sampled, memory_order_relaxed);
    while (s != 0 && s != UINT8_MAX &&
           !atomic_compare_exchange_weak_explicit(&page->sampled, &s, (uint8_t)(s - 1),
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
  }
}

/* Move the record filed under `from` to `to`, with `size` bytes (0: as
 * it was). */
static void rekey(uintptr_t from, uintptr_t to, size_t size) {
  bmm__spin_lock(&table_lock);
  leak_block_t *b = blocks_find(from);
  if (b != NULL) {
    leak_block_t rec = *b;
    b->ptr = LEAK_TOMB;
    table.live--;
    blocks_insert(to, size != 0 ? size : rec.size, rec.site);
  }
  bmm__spin_unlock(&table_lock);
}

/* A large block p about to be resized (in place, or moved without a
 * free): its record is filed under p | 1 meanwhile, an address no block
 * has. A move gives the old range back before the call returns, and
 * another thread may get a block at p and record it, and free it, at
 * once: that thread's record and this one stay apart, and a report made
 * meanwhile still counts this one. bmm__leak_moved files it under the
 * block's address after the resize (p again when the resize failed). */
void bmm__leak_moving(void *p) {
  rekey((uintptr_t)p, (uintptr_t)p | 1, 0);
}

void bmm__leak_moved(void *from, void *to, size_t size) {
  rekey((uintptr_t)from | 1, (uintptr_t)to, size);
}

/* ---- The report ---------------------------------------------------------- */

static void report_site(out_t *o, const leak_site_t *s) {
  out_num(o, s->count, 8);
  out_str(o, " blocks ");
  out_bytes(o, s->bytes);
  if (bmm__leak == 2) {
    out_str(o, " (about ");
    out_bytes(o, s->estimate);
    out_str(o, " in all)");
  }
  out_str(o, " allocated at:\n");
  char text[256];
  for (uint32_t f = 0; f < s->depth; f++) {
    bmm__os_describe_code(s->frames[f], text, sizeof text);
    out_str(o, "        #");
    out_num(o, f, 0);
    out_str(o, " ");
    out_str(o, text);
    out_str(o, "\n");
  }
}

BMM_API size_t bmm_leak_report(bmm_output_fn *fn, void *arg) {
  out_t o = {.fn = fn, .arg = arg, .len = 0};
  if (!bmm__leak) {
    out_str(&o, "brainmm: leak report: off (start with BMM_LEAK_REPORT=1)\n");
    out_flush(&o);
    return 0;
  }
  /* Count under the lock into a copy of the live sites, then print from
   * the copy: the output callback may allocate (and so record). */
  bmm__spin_lock(&table_lock);
  for (size_t s = 0; s < table.sites_used; s++)
    table.sites[s].count = table.sites[s].bytes = table.sites[s].estimate = 0;
  size_t live = 0, bytes = 0, n = 0;
  for (size_t i = 0; i < table.cap; i++) {
    leak_block_t *b = &table.blocks[i];
    if (b->ptr <= LEAK_TOMB) continue;
    live++;
    bytes += b->size;
    if (table.sites[b->site].count++ == 0) n++;
    table.sites[b->site].bytes += b->size;
    /* A sampled block stands for the sample's bytes, or for itself. */
    table.sites[b->site].estimate += b->size > sample_bytes ? b->size : sample_bytes;
  }
  size_t snap_bytes = n * sizeof(leak_site_t);
  leak_site_t *snap = n ? table_mem(snap_bytes) : NULL;
  if (snap == NULL) n = 0;
  for (size_t s = 0, k = 0; k < n; s++)
    if (table.sites[s].count != 0) snap[k++] = table.sites[s];
  bmm__spin_unlock(&table_lock);
  /* Most bytes first: a shell sort (no malloc, no recursion). */
  for (size_t gap = n / 2; gap > 0; gap /= 2)
    for (size_t i = gap; i < n; i++)
      for (size_t j = i; j >= gap && snap[j - gap].bytes < snap[j].bytes; j -= gap) {
        leak_site_t t = snap[j];
        snap[j] = snap[j - gap];
        snap[j - gap] = t;
      }
  out_str(&o, "brainmm: leak report: ");
  out_num(&o, live, 0);
  out_str(&o, bmm__leak == 2 ? " sampled blocks live," : " blocks live,");
  out_bytes(&o, bytes);
  out_str(&o, ", from ");
  out_num(&o, n, 0);
  out_str(&o, " call sites\n");
  for (size_t i = 0; i < n; i++)
    report_site(&o, &snap[i]);
  out_flush(&o);
  if (snap != NULL) bmm__os_release(snap, snap_bytes);
  return live;
}

/* leak_report=1: the report at exit. A destructor, which in a preloaded
 * library runs after the program's own. */
__attribute__((destructor)) static void leak_at_exit(void) {
  if (bmm__leak) bmm_leak_report(NULL, NULL);
}
