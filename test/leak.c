/* leak.c: leak reports (options leak_report and leak_sample, API
 * bmm_leak_report, section 10). Leak tracking is fixed when the process
 * initialises, so main re-executes itself through /proc/self/exe with
 * BMM_LEAK_REPORT=1 (and no BMM_LEAK_SAMPLE) in the environment, argv
 * kept, and that process runs the cases, each in a child of its own:
 *   options  leak_report reads 1 and leak_sample 0; neither can be changed
 *            (EBUSY) once something was allocated;
 *   sites    blocks kept from five functions of ours (malloc with half of
 *            them freed, large blocks with one freed, calloc, aligned, a
 *            realloc chain from 16 bytes to 20 MiB): the report names each
 *            function as frame #0 of exactly one site with exactly the
 *            blocks kept and the sum of their usable sizes (as the report
 *            formats bytes), the sites are sorted by bytes, the header
 *            counts agree with the sites and with the return value; a
 *            realloc in place keeps the record and updates its size; an
 *            output callback that allocates (and keeps) a copy of every
 *            line works, and the next report shows exactly those copies;
 *            once everything is freed no site of ours is left;
 *   remote   blocks allocated by one thread and freed by another (while
 *            the first still runs) vanish; those the second allocates and
 *            keeps are reported exactly, before and after both exit;
 *   heap     blocks of a first-class heap (small and 200 KiB) are reported,
 *            a few freed one by one go, and bmm_heap_destroy takes all the
 *            others out of the report while other blocks stay;
 *   at_exit  a child that keeps blocks and calls exit(0) prints the report
 *            on stderr at exit, naming the function that allocated them,
 *            also when an atexit handler closed its stderr first;
 *   churn    four threads allocate, reallocate and free (also each
 *            other's blocks) for a second while reports are taken, whose
 *            counts must always agree; the first stack walks of the process
 *            happen on those threads at once; nothing of theirs is left at
 *            the end;
 *   resize   one thread resizes a large block back and forth while reports
 *            are taken: every report counts the same blocks.
 * Every case ends with bmm_heap_check(). Then two further runs of this
 * program (fork + exec, exit status checked):
 *   --off      without BMM_LEAK_REPORT: bmm_leak_report returns 0 and
 *              prints one line saying the report is off; nothing at exit;
 *   --sampled  BMM_LEAK_REPORT=1 BMM_LEAK_SAMPLE=65536: 64 MiB kept in
 *              64-byte blocks from one function, 6.4 MiB from another and
 *              64 MiB allocated and freed by a third: the estimates ("about
 *              X in all") must be within 35% and 60% of the first two, the
 *              third must be gone, and only a few blocks are recorded; each
 *              site's blocks and estimate agree with the sample size. Then
 *              two functions allocating alternately (32 MiB kept each; then
 *              one keeping, the other freeing at once): each keeper's
 *              estimate must still be within 35%. Then a sampled churn by
 *              four threads, after which nothing of theirs is left.
 * The test calls the bmm_ functions only: in sanitizer builds malloc is
 * not BrainMM's. The functions whose names the report must show are
 * exported (the test is linked with ENABLE_EXPORTS, and they have default
 * visibility against the hidden preset of the build) and are neither
 * inlined, cloned nor merged; each uses the block after the call that
 * allocated it, so that the call is not a tail call. Reports are gathered
 * into a static buffer (no allocation) and parsed; checks look only at the
 * sites whose frames name functions of ours, so that blocks of the C
 * library or of the harness cannot disturb them.
 */
#define _GNU_SOURCE
#include <brainmm.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define KiB ((size_t)1024)
#define MiB (KiB * 1024)

extern char **environ;

/* A function the report must name: exported, never inlined or cloned (a
 * clone would be a local symbol, which dladdr cannot name), never merged
 * with another of the same body. */
#if defined(__clang__)
#define LEAK_FN __attribute__((noinline, visibility("default")))
#else
#define LEAK_FN __attribute__((noipa, visibility("default")))
#endif

/* ---- Capturing and parsing reports ---------------------------------------- */

#define REPORT_CAP ((size_t)4 << 20)
static char report_text[REPORT_CAP];
static size_t report_len;
static bool report_truncated;

static void capture(const char *text, void *arg) {
  (void)arg;
  size_t n = strlen(text);
  if (report_len + n >= REPORT_CAP) {
    report_truncated = true;
    return;
  }
  memcpy(report_text + report_len, text, n + 1);
  report_len += n;
}

#define MAX_SITES 1024
#define SITE_FRAMES 16 /* frames whose function names are kept (all: 12 are printed) */
#define NAME_CAP 80

typedef struct site_s {
  size_t count;
  char bytes_text[32]; /* "2.3 KiB" */
  double bytes;        /* the same, parsed */
  bool has_about;
  char about_text[32];
  double about;
  size_t depth;                      /* frame lines */
  char frame[SITE_FRAMES][NAME_CAP]; /* function names (or addresses) */
} site_t;

typedef struct report_s {
  bool ok;  /* every line parsed */
  bool off; /* the "off" line */
  bool sampled;
  size_t live, sites_header, lines;
  char bytes_text[32];
  size_t nsites; /* parsed; site[] holds the first MAX_SITES */
  size_t sum_count;
  site_t site[MAX_SITES];
} report_t;

static report_t rep; /* the last report parsed (big: static) */

/* "123.4 KiB" or "48 B" at s (after spaces): its value, the text in
 * out[32]; the end, or NULL. */
static const char *parse_bytes(const char *s, double *v, char *out) {
  while (*s == ' ')
    s++;
  char *end;
  double x = strtod(s, &end);
  if (end == s || *end != ' ') return NULL;
  static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double scale = 1;
  for (size_t u = 0; u < 5; u++, scale *= 1024) {
    size_t n = strlen(unit[u]);
    if (strncmp(end + 1, unit[u], n) == 0 &&
        (end[1 + n] == ' ' || end[1 + n] == ',' || end[1 + n] == ')' || end[1 + n] == '\n')) {
      size_t len = (size_t)(end + 1 + n - s);
      if (len >= 32) return NULL;
      memcpy(out, s, len);
      out[len] = 0;
      *v = x * scale;
      return end + 1 + n;
    }
  }
  return NULL;
}

/* The name of the function of a frame line's text: up to '+' or ' '. */
static void frame_name(const char *s, const char *eol, char *out) {
  size_t n = 0;
  while (s < eol && *s != '+' && *s != ' ' && n + 1 < NAME_CAP)
    out[n++] = *s++;
  out[n] = 0;
}

static void parse_fail(report_t *r, const char *what, const char *line, const char *eol) {
  r->ok = false;
  check_print(2, "leak: report: cannot parse %s: %.*s\n", what, (int)(eol - line), line);
}

static void parse_report(const char *text, report_t *r) {
  memset(r, 0, sizeof *r);
  r->ok = true;
  site_t *cur = NULL;
  size_t parsed_sites = 0;
  for (const char *line = text; *line;) {
    const char *eol = strchr(line, '\n');
    if (eol == NULL) {
      parse_fail(r, "an unterminated line", line, line + strlen(line));
      return;
    }
    r->lines++;
    if (r->lines == 1) {
      static const char head[] = "brainmm: leak report: ";
      if (strncmp(line, head, sizeof head - 1) != 0) {
        parse_fail(r, "the header", line, eol);
        return;
      }
      const char *p = line + sizeof head - 1;
      if (strncmp(p, "off", 3) == 0) {
        r->off = true;
      } else {
        char *end;
        r->live = strtoull(p, &end, 10);
        if (strncmp(end, " sampled blocks live,", 21) == 0) {
          r->sampled = true;
          end += 21;
        } else if (strncmp(end, " blocks live,", 13) == 0) {
          end += 13;
        } else {
          parse_fail(r, "the header's count", line, eol);
          return;
        }
        double v;
        const char *q = parse_bytes(end, &v, r->bytes_text);
        if (q == NULL || strncmp(q, ", from ", 7) != 0) {
          parse_fail(r, "the header's bytes", line, eol);
          return;
        }
        r->sites_header = strtoull(q + 7, &end, 10);
        if (strncmp(end, " call sites\n", 12) != 0) {
          parse_fail(r, "the header's sites", line, eol);
          return;
        }
      }
    } else if (strncmp(line, "        #", 9) == 0) {
      if (cur == NULL && parsed_sites == 0) {
        parse_fail(r, "a frame before any site", line, eol);
        return;
      }
      char *end;
      size_t f = strtoull(line + 9, &end, 10);
      if (*end != ' ') {
        parse_fail(r, "a frame", line, eol);
        return;
      }
      if (cur != NULL) {
        if (f != cur->depth) parse_fail(r, "a frame number", line, eol);
        if (f < SITE_FRAMES) frame_name(end + 1, eol, cur->frame[f]);
        cur->depth++;
      }
    } else {
      /* "       1 blocks      1.0 MiB (about 64.0 KiB in all) allocated at:" */
      const char *p = line;
      while (*p == ' ')
        p++;
      char *end;
      size_t count = strtoull(p, &end, 10);
      if (end == p || strncmp(end, " blocks ", 8) != 0) {
        parse_fail(r, "a line", line, eol);
        return;
      }
      parsed_sites++;
      cur = r->nsites < MAX_SITES ? &r->site[r->nsites++] : NULL;
      site_t tmp;
      site_t *s = cur != NULL ? cur : &tmp;
      memset(s, 0, sizeof *s);
      s->count = count;
      r->sum_count += count;
      const char *q = parse_bytes(end + 8, &s->bytes, s->bytes_text);
      if (q != NULL && strncmp(q, " (about ", 8) == 0) {
        s->has_about = true;
        q = parse_bytes(q + 8, &s->about, s->about_text);
        if (q != NULL && strncmp(q, " in all)", 8) == 0)
          q += 8;
        else
          q = NULL;
      }
      if (q == NULL || strncmp(q, " allocated at:\n", 15) != 0) {
        parse_fail(r, "a site", line, eol);
        return;
      }
    }
    line = eol + 1;
  }
  if (r->lines == 0) parse_fail(r, "an empty report", text, text);
  if (parsed_sites != r->nsites) r->ok = false;
}

/* Bytes as the report prints them (src/textout.h out_bytes, unpadded). */
static void fmt_bytes(size_t b, char *out) {
  static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  unsigned long long whole = b, tenths = 0;
  while (whole >= 1024 && u < 4) {
    tenths = (whole % 1024) * 10 / 1024;
    whole /= 1024;
    u++;
  }
  if (u == 0)
    snprintf(out, 32, "%llu B", whole);
  else
    snprintf(out, 32, "%llu.%llu %s", whole, tenths, unit[u]);
}

static bool dumped; /* the report text is printed once per process on failure */

static void dump_report(const char *why) {
  if (dumped) return;
  dumped = true;
  check_print(2, "leak: %s; the report was:\n", why);
  size_t len = strlen(report_text);
  for (size_t off = 0; off < len && off < 12000; off += 700)
    check_print(2, "%.*s", (int)(len - off < 700 ? len - off : 700), report_text + off);
  if (len > 12000) check_print(2, "... (%zu bytes in all)\n", len);
}

/* Counts and order that hold in every report: the header's numbers are
 * the sites' and the return value, sites come most bytes first. */
static void check_shape(const report_t *r, size_t ret, bool sampled) {
  bool ok = CHECK(r->ok);
  ok &= CHECK(!report_truncated);
  ok &= CHECK(!r->off);
  ok &= CHECK(r->sampled == sampled);
  ok &= CHECK_EQ_SZ(r->live, ret);
  ok &= CHECK_EQ_SZ(r->nsites, r->sites_header);
  ok &= CHECK_EQ_SZ(r->sum_count, r->live);
  bool sorted = true, counted = true, deep = true, about = true;
  for (size_t i = 0; i < r->nsites; i++) {
    if (i > 0 && r->site[i].bytes > r->site[i - 1].bytes) sorted = false;
    if (r->site[i].count == 0) counted = false;
    if (r->site[i].depth == 0) deep = false;
    if (r->site[i].has_about != sampled) about = false;
  }
  ok &= CHECK(sorted);
  ok &= CHECK(counted);
  ok &= CHECK(deep);
  ok &= CHECK(about);
  if (!ok) dump_report("report malformed");
}

/* A report through `fn`, parsed into rep and checked for shape. */
static size_t take_report_with(bmm_output_fn *fn, bool sampled) {
  report_len = 0;
  report_text[0] = 0;
  report_truncated = false;
  size_t n = bmm_leak_report(fn, NULL);
  parse_report(report_text, &rep);
  check_shape(&rep, n, sampled);
  return n;
}

static size_t take_report(void) {
  return take_report_with(capture, false);
}

/* Sites whose frame #0 is function `name`, and their blocks. */
static size_t sites_at(const report_t *r, const char *name) {
  size_t n = 0;
  for (size_t i = 0; i < r->nsites; i++)
    n += strcmp(r->site[i].frame[0], name) == 0;
  return n;
}

static size_t blocks_at(const report_t *r, const char *name) {
  size_t n = 0;
  for (size_t i = 0; i < r->nsites; i++)
    if (strcmp(r->site[i].frame[0], name) == 0) n += r->site[i].count;
  return n;
}

static const site_t *first_site_at(const report_t *r, const char *name) {
  for (size_t i = 0; i < r->nsites; i++)
    if (strcmp(r->site[i].frame[0], name) == 0) return &r->site[i];
  return NULL;
}

/* Blocks of the sites with `name` in any of their first frames. */
static size_t blocks_under(const report_t *r, const char *name) {
  size_t n = 0;
  for (size_t i = 0; i < r->nsites; i++)
    for (size_t f = 0; f < SITE_FRAMES && f < r->site[i].depth; f++)
      if (strcmp(r->site[i].frame[f], name) == 0) {
        n += r->site[i].count;
        break;
      }
  return n;
}

/* Function `name` is frame #0 of exactly one site, which holds `count`
 * blocks of `bytes` usable bytes in all. */
static void check_site(const report_t *r, const char *name, size_t count, size_t bytes) {
  char want[32];
  fmt_bytes(bytes, want);
  const site_t *s = first_site_at(r, name);
  bool ok =
      sites_at(r, name) == 1 && s != NULL && s->count == count && strcmp(s->bytes_text, want) == 0;
  if (!ok) {
    check_print(2, "leak: site %s: %zu sites, first %zu blocks of %s (want 1 site, %zu of %s)\n",
                name, sites_at(r, name), s ? s->count : 0, s ? s->bytes_text : "-", count, want);
    dump_report("a site differs");
  }
  CHECK(ok);
}

/* ---- Functions that allocate (frame #0 of their sites) -------------------- */

LEAK_FN void leak_a(void **out, size_t n);
LEAK_FN void leak_b(void **out, size_t n);
LEAK_FN void leak_c(void **out, size_t n);
LEAK_FN void leak_d(void **out, size_t n);
LEAK_FN void *leak_e(void);
LEAK_FN void *leak_e_shrink(void *p, size_t size);
LEAK_FN void leak_keep_line(const char *text, void *arg);
LEAK_FN void leak_f(void **out, size_t n);
LEAK_FN void leak_t2(void **out, size_t n);
LEAK_FN void leak_g(bmm_heap_t *h, void **small, size_t ns, void **large, size_t nl);
LEAK_FN void leak_h(void **out, size_t n);
LEAK_FN void leak_s1(void **out, size_t n);
LEAK_FN void leak_s2(void **out, size_t n);
LEAK_FN void leak_s3(size_t rounds, size_t batch);
LEAK_FN void *leak_s4_one(void);
LEAK_FN void *leak_s5_one(void);
LEAK_FN void *leak_s6_one(void);
LEAK_FN void *leak_s7_one(void);
LEAK_FN void *leak_churn_alloc(uint64_t *rng);
LEAK_FN void *leak_churn_realloc(void *p, size_t size);

/* Every name above: none may be left once everything is freed. */
static const char *const our_names[] = {
    "leak_a",        "leak_b",         "leak_c",      "leak_d",           "leak_e",
    "leak_e_shrink", "leak_keep_line", "leak_f",      "leak_t2",          "leak_g",
    "leak_h",        "leak_s1",        "leak_s2",     "leak_s3",          "leak_s4_one",
    "leak_s5_one",   "leak_s6_one",    "leak_s7_one", "leak_churn_alloc", "leak_churn_realloc"};
#define NNAMES (sizeof our_names / sizeof our_names[0])

static size_t blocks_of_ours(const report_t *r) {
  size_t n = 0;
  for (size_t i = 0; i < NNAMES; i++)
    n += blocks_under(r, our_names[i]);
  return n;
}

void leak_a(void **out, size_t n) {
  for (size_t i = 0; i < n; i++) {
    out[i] = bmm_malloc(48);
    if (out[i] != NULL) memset(out[i], 0xa, 48);
  }
}

void leak_b(void **out, size_t n) {
  for (size_t i = 0; i < n; i++) {
    out[i] = bmm_malloc(MiB);
    if (out[i] != NULL) ((char *)out[i])[MiB - 1] = 0xb;
  }
}

void leak_c(void **out, size_t n) {
  for (size_t i = 0; i < n; i++) {
    out[i] = bmm_calloc(10, 100);
    if (out[i] != NULL) ((char *)out[i])[999] |= 0; /* keeps the zero */
  }
}

void leak_d(void **out, size_t n) {
  for (size_t i = 0; i < n; i++) {
    out[i] = bmm_malloc_aligned(100, 256);
    if (out[i] != NULL) memset(out[i], 0xd, 100);
  }
}

/* malloc(16), then realloc to 5000, 300000 and 20 MiB: one block at the
 * end, whichever call put it where it is. */
void *leak_e(void) {
  static const size_t sizes[] = {5000, 300000, 20 * MiB};
  char *p = bmm_malloc(16);
  if (p == NULL) return NULL;
  memset(p, 0xe, 16);
  for (size_t i = 0; i < 3; i++) {
    char *q = bmm_realloc(p, sizes[i]);
    if (q == NULL) {
      bmm_free(p);
      return NULL;
    }
    p = q;
    p[sizes[i] - 1] = 0xe;
  }
  return p;
}

void *leak_e_shrink(void *p, size_t size) {
  char *q = bmm_realloc(p, size);
  if (q != NULL) q[size - 1] = 0xe;
  return q;
}

/* An output callback that allocates: a copy of each line, kept. */
#define KEPT_MAX 4096
static char *kept[KEPT_MAX];
static size_t kept_n, kept_lost;

void leak_keep_line(const char *text, void *arg) {
  capture(text, arg);
  size_t n = strlen(text) + 1;
  char *c = bmm_malloc(n);
  if (c == NULL) return;
  memcpy(c, text, n);
  if (kept_n < KEPT_MAX)
    kept[kept_n++] = c;
  else {
    kept_lost++;
    bmm_free(c);
  }
}

void leak_f(void **out, size_t n) {
  static const size_t sizes[] = {64, 20000, 300 * KiB};
  for (size_t i = 0; i < n; i++) {
    /* mostly small, some medium, a few large */
    size_t size = sizes[i % 10 == 9 ? (i % 20 == 19 ? 2 : 1) : 0];
    out[i] = bmm_malloc(size);
    if (out[i] != NULL) memset(out[i], 0xf, 64);
  }
}

void leak_t2(void **out, size_t n) {
  for (size_t i = 0; i < n; i++) {
    out[i] = bmm_malloc(128);
    if (out[i] != NULL) memset(out[i], 0x2, 128);
  }
}

void leak_g(bmm_heap_t *h, void **small, size_t ns, void **large, size_t nl) {
  for (size_t i = 0; i < ns; i++) {
    small[i] = bmm_heap_malloc(h, 100);
    if (small[i] != NULL) memset(small[i], 0x9, 100);
  }
  for (size_t i = 0; i < nl; i++) {
    large[i] = bmm_heap_malloc(h, 200 * KiB);
    if (large[i] != NULL) memset(large[i], 0x9, 4096);
  }
}

void leak_h(void **out, size_t n) {
  for (size_t i = 0; i < n; i++) {
    out[i] = bmm_malloc(500);
    if (out[i] != NULL) memset(out[i], 0x4, 500);
  }
}

void leak_s1(void **out, size_t n) {
  for (size_t i = 0; i < n; i++) {
    out[i] = bmm_malloc(64);
    if (out[i] != NULL) *(volatile char *)out[i] = 1;
  }
}

void leak_s2(void **out, size_t n) {
  for (size_t i = 0; i < n; i++) {
    out[i] = bmm_malloc(64);
    if (out[i] != NULL) *(volatile char *)out[i] = 2;
  }
}

void leak_s3(size_t rounds, size_t batch) {
  static void *tmp[4096];
  if (batch > 4096) batch = 4096;
  for (size_t r = 0; r < rounds; r++) {
    for (size_t i = 0; i < batch; i++) {
      tmp[i] = bmm_malloc(64);
      if (tmp[i] != NULL) *(volatile char *)tmp[i] = 3;
    }
    for (size_t i = 0; i < batch; i++)
      bmm_free(tmp[i]);
  }
}

/* One 64-byte block each, for interleaved allocations. */
void *leak_s4_one(void) {
  char *p = bmm_malloc(64);
  if (p != NULL) *(volatile char *)p = 4;
  return p;
}

void *leak_s5_one(void) {
  char *p = bmm_malloc(64);
  if (p != NULL) *(volatile char *)p = 5;
  return p;
}

void *leak_s6_one(void) {
  char *p = bmm_malloc(64);
  if (p != NULL) *(volatile char *)p = 6;
  return p;
}

void *leak_s7_one(void) {
  char *p = bmm_malloc(64);
  if (p != NULL) *(volatile char *)p = 7;
  return p;
}

void *leak_churn_alloc(uint64_t *rng) {
  uint64_t r = check_rand(rng);
  size_t size = 1 + (size_t)(r % 2048);
  char *p;
  switch ((r >> 32) % 32) {
  case 0:
  case 1:
    p = bmm_calloc(1, size);
    break;
  case 2:
  case 3:
    p = bmm_malloc_aligned(size, 64);
    break;
  case 4:
    size = 4096 + (size_t)((r >> 40) % (60 * KiB)); /* medium */
    p = bmm_malloc(size);
    break;
  case 5:
    size = 70 * KiB + (size_t)((r >> 40) % (200 * KiB)); /* large */
    p = bmm_malloc(size);
    break;
  default:
    p = bmm_malloc(size);
    break;
  }
  if (p != NULL) p[size - 1] = 1;
  return p;
}

void *leak_churn_realloc(void *p, size_t size) {
  char *q = bmm_realloc(p, size);
  if (q != NULL) q[size - 1] = 2;
  return q;
}

/* ---- 1. options --------------------------------------------------------- */

static void case_options(void) {
  CHECK_EQ_LONG(bmm_option_get("leak_report"), 1);
  CHECK_EQ_LONG(bmm_option_get("leak_sample"), 0);
  void *p = bmm_malloc(100);
  CHECK(p != NULL);
  CHECK_EQ_LONG(bmm_option_set("leak_report", 0), EBUSY);
  CHECK_EQ_LONG(bmm_option_get("leak_report"), 1);
  CHECK_EQ_LONG(bmm_option_set("leak_sample", 65536), EBUSY);
  CHECK_EQ_LONG(bmm_option_get("leak_sample"), 0);
  CHECK_EQ_LONG(bmm_option_set("leak_report", 1), 0); /* no change: fine */
  bmm_free(p);
  CHECK(bmm_heap_check());
}

/* ---- 2. sites -------------------------------------------------------------- */

static void case_sites(void) {
  static void *a[100], *b[3], *c[7], *d[5];
  leak_a(a, 100);
  for (size_t i = 0; i < 100; i += 2) { /* free 50 */
    bmm_free(a[i]);
    a[i] = NULL;
  }
  leak_b(b, 3);
  bmm_free(b[1]);
  b[1] = NULL;
  leak_c(c, 7);
  leak_d(d, 5);
  void *e = leak_e();

  size_t ua = 0, ub = 0, uc = 0, ud = 0;
  bool have = e != NULL, zero = true, aligned = true;
  for (size_t i = 1; i < 100; i += 2) {
    have &= a[i] != NULL;
    ua += bmm_usable_size(a[i]);
  }
  for (size_t i = 0; i < 3; i += 2) {
    have &= b[i] != NULL;
    ub += bmm_usable_size(b[i]);
  }
  for (size_t i = 0; i < 7; i++) {
    have &= c[i] != NULL;
    uc += bmm_usable_size(c[i]);
    for (size_t k = 0; c[i] != NULL && k < 1000; k++)
      zero &= ((unsigned char *)c[i])[k] == 0;
  }
  for (size_t i = 0; i < 5; i++) {
    have &= d[i] != NULL;
    ud += bmm_usable_size(d[i]);
    aligned &= ((uintptr_t)d[i] & 255) == 0;
  }
  CHECK(have);
  CHECK(zero);
  CHECK(aligned);
  if (!have) return;
  /* 48 bytes (more in secure mode, with the canary: whatever the class
   * gives, the same for all 50). */
  size_t u48 = bmm_usable_size(a[1]);
  CHECK(u48 >= 48 && u48 < 64);
  CHECK_EQ_SZ(ua, 50 * u48);
  size_t ue = bmm_usable_size(e);
  CHECK(ue >= 20 * MiB);

  size_t n = take_report();
  CHECK(n >= 50 + 2 + 7 + 5 + 1);
  check_site(&rep, "leak_a", 50, ua);
  check_site(&rep, "leak_b", 2, ub);
  check_site(&rep, "leak_c", 7, uc);
  check_site(&rep, "leak_d", 5, ud);
  check_site(&rep, "leak_e", 1, ue);
  /* Whatever the frame #0: every block counted once, under its function
   * (the realloc chain left one block, not one per step). */
  CHECK_EQ_SZ(blocks_under(&rep, "leak_a"), 50);
  CHECK_EQ_SZ(blocks_under(&rep, "leak_b"), 2);
  CHECK_EQ_SZ(blocks_under(&rep, "leak_c"), 7);
  CHECK_EQ_SZ(blocks_under(&rep, "leak_d"), 5);
  CHECK_EQ_SZ(blocks_under(&rep, "leak_e"), 1);
  /* Most bytes first: 20 MiB, 2 MiB, 7 KiB, 2.3 KiB, 1.3 KiB. */
  if (rep.nsites > 0) CHECK(strcmp(rep.site[0].frame[0], "leak_e") == 0);

  /* A realloc that shrinks the large block (in place, or not): still one
   * block, of the new usable size. */
  void *e2 = leak_e_shrink(e, 12 * MiB);
  CHECK(e2 != NULL);
  if (e2 != NULL) e = e2;
  ue = bmm_usable_size(e);
  take_report();
  size_t under = blocks_under(&rep, "leak_e") + blocks_under(&rep, "leak_e_shrink");
  CHECK_EQ_SZ(under, 1);
  char want[32];
  fmt_bytes(ue, want);
  bool found = false;
  for (size_t i = 0; i < rep.nsites; i++)
    for (size_t f = 0; f < SITE_FRAMES && f < rep.site[i].depth; f++)
      if (strcmp(rep.site[i].frame[f], "leak_e") == 0 ||
          strcmp(rep.site[i].frame[f], "leak_e_shrink") == 0) {
        found |= rep.site[i].count == 1 && strcmp(rep.site[i].bytes_text, want) == 0;
        break;
      }
  if (!found) dump_report("the shrunk realloc block");
  CHECK(found);

  /* A small realloc in place keeps its record (site and size). */
  size_t ua1 = bmm_usable_size(a[1]);
  CHECK(bmm_realloc(a[1], 40) == a[1]);
  take_report();
  check_site(&rep, "leak_a", 50, ua - ua1 + bmm_usable_size(a[1]));

  /* An output callback that allocates: the report completes, and the next
   * one shows each line's copy, kept from the callback. */
  kept_n = kept_lost = 0;
  size_t n1 = take_report_with(leak_keep_line, false);
  CHECK_EQ_SZ(kept_lost, 0);
  CHECK_EQ_SZ(kept_n, rep.lines);
  size_t lines = rep.lines;
  size_t n2 = take_report();
  CHECK_EQ_SZ(blocks_at(&rep, "leak_keep_line"), lines);
  CHECK_EQ_SZ(n2, n1 + lines);
  for (size_t i = 0; i < kept_n; i++)
    bmm_free(kept[i]);
  kept_n = 0;

  /* Everything freed: no site of ours is left. */
  for (size_t i = 0; i < 100; i++)
    bmm_free(a[i]);
  for (size_t i = 0; i < 3; i++)
    bmm_free(b[i]);
  for (size_t i = 0; i < 7; i++)
    bmm_free(c[i]);
  for (size_t i = 0; i < 5; i++)
    bmm_free(d[i]);
  bmm_free(e);
  size_t n3 = take_report();
  CHECK_EQ_SZ(blocks_of_ours(&rep), 0);
  CHECK_EQ_SZ(n3 + 50 + 2 + 7 + 5 + 1, n1);
  CHECK(bmm_heap_check());
}

/* ---- 3. remote frees ----------------------------------------------------- */

#define F_BLOCKS 200
#define T2_BLOCKS 30
static void *f_blocks[F_BLOCKS], *t2_blocks[T2_BLOCKS];
static pthread_barrier_t remote_bar;

static void *remote_t1(void *arg) {
  (void)arg;
  leak_f(f_blocks, F_BLOCKS);
  pthread_barrier_wait(&remote_bar); /* 1: allocated */
  pthread_barrier_wait(&remote_bar); /* 2: the first report was taken */
  pthread_barrier_wait(&remote_bar); /* 3: T2 freed them */
  pthread_barrier_wait(&remote_bar); /* 4: the second report was taken */
  return NULL;
}

static void *remote_t2(void *arg) {
  (void)arg;
  pthread_barrier_wait(&remote_bar); /* 1 */
  pthread_barrier_wait(&remote_bar); /* 2 */
  for (size_t i = 0; i < F_BLOCKS; i++)
    bmm_free(f_blocks[i]); /* T1 still runs: remote frees */
  leak_t2(t2_blocks, T2_BLOCKS);
  pthread_barrier_wait(&remote_bar); /* 3 */
  pthread_barrier_wait(&remote_bar); /* 4 */
  return NULL;
}

static void case_remote(void) {
  CHECK(pthread_barrier_init(&remote_bar, NULL, 3) == 0);
  pthread_t t1, t2;
  CHECK(pthread_create(&t1, NULL, remote_t1, NULL) == 0);
  CHECK(pthread_create(&t2, NULL, remote_t2, NULL) == 0);
  pthread_barrier_wait(&remote_bar); /* 1 */
  size_t uf = 0;
  for (size_t i = 0; i < F_BLOCKS; i++)
    uf += bmm_usable_size(f_blocks[i]);
  take_report(); /* before T2 frees them */
  CHECK_EQ_SZ(blocks_under(&rep, "leak_f"), F_BLOCKS);
  check_site(&rep, "leak_f", F_BLOCKS, uf);
  pthread_barrier_wait(&remote_bar); /* 2 */
  pthread_barrier_wait(&remote_bar); /* 3 */
  bool have = true;
  size_t u2 = 0;
  for (size_t i = 0; i < T2_BLOCKS; i++) {
    have &= t2_blocks[i] != NULL;
    u2 += bmm_usable_size(t2_blocks[i]);
  }
  CHECK(have);
  take_report();
  CHECK_EQ_SZ(blocks_under(&rep, "leak_f"), 0);
  check_site(&rep, "leak_t2", T2_BLOCKS, u2);
  pthread_barrier_wait(&remote_bar); /* 4 */
  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  /* Both threads gone: T2's blocks are still live, and reported. */
  take_report();
  CHECK_EQ_SZ(blocks_under(&rep, "leak_f"), 0);
  check_site(&rep, "leak_t2", T2_BLOCKS, u2);
  for (size_t i = 0; i < T2_BLOCKS; i++)
    bmm_free(t2_blocks[i]);
  take_report();
  CHECK_EQ_SZ(blocks_of_ours(&rep), 0);
  pthread_barrier_destroy(&remote_bar);
  CHECK(bmm_heap_check());
}

/* ---- 4. first-class heaps ----------------------------------------------- */

enum { NS = 40, NL = 3, NCTL = 10 };

static void *heap_thread(void *h) {
  static void *small[NS], *large[NL];
  leak_g(h, small, NS, large, NL);
  return NULL;
}

static void case_heap(void) {
  static void *small[NS], *large[NL], *ctl[NCTL];
  bmm_heap_t *h = bmm_heap_new();
  CHECK(h != NULL);
  if (h == NULL) return;
  leak_g(h, small, NS, large, NL);
  leak_a(ctl, NCTL); /* the default heap's: must stay */
  bool have = true;
  size_t us = 0, ul = 0, uctl = 0;
  for (size_t i = 0; i < NS; i++) {
    have &= small[i] != NULL;
    us += bmm_usable_size(small[i]);
  }
  for (size_t i = 0; i < NL; i++) {
    have &= large[i] != NULL;
    ul += bmm_usable_size(large[i]);
  }
  for (size_t i = 0; i < NCTL; i++) {
    have &= ctl[i] != NULL;
    uctl += bmm_usable_size(ctl[i]);
  }
  CHECK(have);
  if (!have) return;
  take_report();
  CHECK_EQ_SZ(sites_at(&rep, "leak_g"), 2); /* small and large calls */
  CHECK_EQ_SZ(blocks_at(&rep, "leak_g"), NS + NL);
  char want_s[32], want_l[32];
  fmt_bytes(us, want_s);
  fmt_bytes(ul, want_l);
  bool small_ok = false, large_ok = false;
  for (size_t i = 0; i < rep.nsites; i++) {
    if (strcmp(rep.site[i].frame[0], "leak_g") != 0) continue;
    small_ok |= rep.site[i].count == NS && strcmp(rep.site[i].bytes_text, want_s) == 0;
    large_ok |= rep.site[i].count == NL && strcmp(rep.site[i].bytes_text, want_l) == 0;
  }
  CHECK(small_ok);
  CHECK(large_ok);
  if (!small_ok || !large_ok) dump_report("heap sites differ");
  check_site(&rep, "leak_a", NCTL, uctl);

  /* A few freed one by one (bmm_free of a heap's block). */
  size_t freed_s = 5, freed_l = 1;
  for (size_t i = 0; i < freed_s; i++) {
    us -= bmm_usable_size(small[i]);
    bmm_free(small[i]);
  }
  ul -= bmm_usable_size(large[0]);
  bmm_free(large[0]);
  take_report();
  CHECK_EQ_SZ(blocks_at(&rep, "leak_g"), NS + NL - freed_s - freed_l);

  /* The heap destroyed: the rest vanishes from the report, other blocks
   * stay. */
  size_t before = rep.live;
  bmm_heap_destroy(h);
  size_t after = take_report();
  CHECK_EQ_SZ(blocks_under(&rep, "leak_g"), 0);
  check_site(&rep, "leak_a", NCTL, uctl);
  CHECK(after + (NS + NL - freed_s - freed_l) <= before);
  CHECK(bmm_heap_check());

  /* A heap again, with blocks from another thread's view of it too. */
  h = bmm_heap_new();
  CHECK(h != NULL);
  if (h != NULL) {
    leak_g(h, small, NS, large, NL);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, heap_thread, h) == 0);
    pthread_join(t, NULL);
    take_report();
    CHECK_EQ_SZ(blocks_at(&rep, "leak_g"), 2 * (NS + NL));
    bmm_heap_destroy(h);
    take_report();
    CHECK_EQ_SZ(blocks_under(&rep, "leak_g"), 0);
  }
  for (size_t i = 0; i < NCTL; i++)
    bmm_free(ctl[i]);
  take_report();
  CHECK_EQ_SZ(blocks_of_ours(&rep), 0);
  CHECK(bmm_heap_check());
}

/* ---- 5. the report at exit ---------------------------------------------- */

#define H_BLOCKS 9
static void close_stderr(void) {
  close(STDERR_FILENO);
}

static void exit_keeping_blocks(void *arg) {
  (void)arg;
  static void *h[H_BLOCKS];
  leak_h(h, H_BLOCKS);
  exit(0); /* the destructor prints the report */
}

/* This program again, as --exit-closing: it closes stderr at exit before
 * the report, as GNU coreutils do, and the report goes to the copy of
 * stderr that BrainMM kept when that process started (with the pipe of
 * check_child as its stderr: a fork would keep the parent's). */
static void exec_exit_closing(void *arg) {
  (void)arg;
  execl("/proc/self/exe", "leak", "--exit-closing", (char *)NULL);
  _exit(127);
}

static int main_exit_closing(void) {
  atexit(close_stderr);
  exit_keeping_blocks(NULL);
  return 1;
}

static char exit_text[1 << 20];

static void at_exit_run(bool closing) {
  void *p = bmm_malloc(500);
  CHECK(p != NULL);
  size_t u = bmm_usable_size(p);
  bmm_free(p);
  int lines;
  int status = check_child(closing ? exec_exit_closing : exit_keeping_blocks, NULL, exit_text,
                           sizeof exit_text, &lines);
  CHECK(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK(strstr(exit_text, "brainmm: leak report: ") != NULL);
  CHECK(strstr(exit_text, "leak_h+") != NULL);
  /* It parses as a report, and shows exactly the blocks kept. */
  const char *start = strstr(exit_text, "brainmm: leak report: ");
  if (start != NULL) {
    parse_report(start, &rep);
    CHECK(rep.ok);
    CHECK_EQ_SZ(rep.sum_count, rep.live);
    CHECK_EQ_SZ(rep.nsites, rep.sites_header);
    snprintf(report_text, sizeof report_text, "%s", start);
    check_site(&rep, "leak_h", H_BLOCKS, H_BLOCKS * u);
  } else {
    check_print(2, "leak: at exit the child wrote %d lines: %.2000s\n", lines, exit_text);
  }
  CHECK(bmm_heap_check());
}

static void case_at_exit(void) {
  at_exit_run(false);
  at_exit_run(true);
}

/* ---- 6. churn by four threads ---------------------------------------------- */

#define CHURN_THREADS 4
#define CHURN_SLOTS 512
#define CHURN_X 64
static _Atomic(uintptr_t) churn_x[CHURN_X];
static atomic_bool churn_stop;
static atomic_ulong churn_ops;

static void *churn_thread(void *arg) {
  uint64_t rng = 0x9e3779b97f4a7c15ull * ((uintptr_t)arg + 1);
  static __thread void *slot[CHURN_SLOTS];
  unsigned long ops = 0;
  while (!atomic_load_explicit(&churn_stop, memory_order_relaxed)) {
    for (int k = 0; k < 64; k++, ops++) {
      uint64_t r = check_rand(&rng);
      size_t i = r % CHURN_SLOTS;
      if (slot[i] == NULL) {
        slot[i] = leak_churn_alloc(&rng);
        continue;
      }
      switch ((r >> 20) % 8) {
      case 0: { /* realloc */
        void *q = leak_churn_realloc(slot[i], 1 + (size_t)((r >> 32) % 6000));
        if (q != NULL) slot[i] = q;
        break;
      }
      case 1: { /* hand it to another thread, free what was there */
        uintptr_t old = atomic_exchange(&churn_x[(r >> 40) % CHURN_X], (uintptr_t)slot[i]);
        slot[i] = NULL;
        bmm_free((void *)old);
        break;
      }
      default:
        bmm_free(slot[i]);
        slot[i] = NULL;
        break;
      }
    }
  }
  for (size_t i = 0; i < CHURN_SLOTS; i++) {
    bmm_free(slot[i]);
    slot[i] = NULL;
  }
  atomic_fetch_add(&churn_ops, ops);
  return NULL;
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Churn for `seconds` while reports are taken; nothing of the churn is
 * left afterwards. */
static void run_churn(double seconds, bool sampled) {
  atomic_store(&churn_stop, false);
  atomic_store(&churn_ops, 0);
  pthread_t t[CHURN_THREADS];
  for (uintptr_t i = 0; i < CHURN_THREADS; i++)
    CHECK(pthread_create(&t[i], NULL, churn_thread, (void *)i) == 0);
  unsigned long failed_before = check_failed_count();
  size_t reports = 0;
  double end = now_seconds() + seconds;
  while (now_seconds() < end) {
    take_report_with(capture, sampled);
    reports++;
    if (check_failed_count() != failed_before) break; /* one dump is enough */
    struct timespec pause = {0, 20 * 1000 * 1000};
    nanosleep(&pause, NULL);
  }
  atomic_store(&churn_stop, true);
  for (int i = 0; i < CHURN_THREADS; i++)
    pthread_join(t[i], NULL);
  for (size_t i = 0; i < CHURN_X; i++)
    bmm_free((void *)atomic_exchange(&churn_x[i], 0));
  CHECK(reports > 0);
  CHECK(atomic_load(&churn_ops) > 1000);
  take_report_with(capture, sampled);
  CHECK_EQ_SZ(blocks_under(&rep, "leak_churn_alloc"), 0);
  CHECK_EQ_SZ(blocks_under(&rep, "leak_churn_realloc"), 0);
  CHECK_EQ_SZ(blocks_of_ours(&rep), 0);
  if (blocks_of_ours(&rep) != 0) dump_report("churn blocks left");
  CHECK(bmm_heap_check());
  check_print(1, "leak: churn%s: %lu operations, %zu reports\n", sampled ? " (sampled)" : "",
              atomic_load(&churn_ops), reports);
}

static void case_churn(void) {
  run_churn(1.0, false);
}

/* ---- 7. reports while a large block is resized ------------------------------ */

/* A thread resizes one large block back and forth (moving it) while this
 * one takes reports: the live blocks never change, so neither does the
 * count (a resize that took the record out meanwhile made it dip). */
static atomic_bool resize_stop;
static void count_only(const char *chunk, void *arg) {
  (void)chunk, (void)arg;
}
static void *resize_thread(void *arg) {
  char *p = arg;
  for (unsigned i = 0; !atomic_load(&resize_stop) && p != NULL; i++)
    p = bmm_realloc(p, (i & 1) ? (size_t)3 << 20 : (size_t)200 << 10);
  bmm_free(p);
  return NULL;
}

static void case_resize(void) {
  char *big = bmm_malloc((size_t)200 << 10);
  CHECK(big != NULL);
  pthread_t t;
  CHECK(pthread_create(&t, NULL, resize_thread, big) == 0);
  size_t base = bmm_leak_report(count_only, NULL), differing = 0;
  for (int i = 0; i < 5000; i++)
    if (bmm_leak_report(count_only, NULL) != base) differing++;
  atomic_store(&resize_stop, true);
  pthread_join(t, NULL);
  if (!CHECK_EQ_SZ(differing, 0))
    check_print(2, "leak: %zu of 5000 reports differed from %zu while a block was resized\n",
                differing, base);
  CHECK(bmm_heap_check());
}

/* ---- Sub-runs -------------------------------------------------------------- */

/* --off: without BMM_LEAK_REPORT. */
static void exit_quietly_keeping(void *arg) {
  (void)arg;
  static void *h[H_BLOCKS];
  leak_h(h, H_BLOCKS);
  exit(0);
}

static int main_off(void) {
  void *p = bmm_malloc(100);
  CHECK(p != NULL);
  CHECK_EQ_LONG(bmm_option_get("leak_report"), 0);
  CHECK_EQ_LONG(bmm_option_set("leak_report", 1), EBUSY);
  CHECK_EQ_LONG(bmm_option_get("leak_report"), 0);
  report_len = 0;
  report_text[0] = 0;
  CHECK_EQ_SZ(bmm_leak_report(capture, NULL), 0);
  parse_report(report_text, &rep);
  CHECK(rep.ok);
  CHECK(rep.off);
  CHECK_EQ_SZ(rep.lines, 1);
  CHECK(strstr(report_text, "off") != NULL);
  if (!rep.ok || !rep.off || rep.lines != 1) dump_report("--off");
  /* Nothing at exit. */
  int lines;
  int status = check_child(exit_quietly_keeping, NULL, exit_text, sizeof exit_text, &lines);
  CHECK(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK(strstr(exit_text, "leak report") == NULL);
  bmm_free(p);
  CHECK(bmm_heap_check());
  return check_done();
}

/* --sampled: BMM_LEAK_REPORT=1 BMM_LEAK_SAMPLE=65536. */
#define SAMPLE_BYTES ((size_t)65536)
#define S1_BLOCKS ((size_t)1 << 20) /* 64 MiB of 64-byte blocks */
#define S2_BLOCKS ((size_t)104858)  /* 6.4 MiB */
static void *s1_blocks[S1_BLOCKS], *s2_blocks[S2_BLOCKS];

static double sum_about(const report_t *r, const char *name) {
  double v = 0;
  for (size_t i = 0; i < r->nsites; i++)
    if (strcmp(r->site[i].frame[0], name) == 0) v += r->site[i].about;
  return v;
}

/* The blocks and estimate of each site at `name` agree with the sample
 * size (each recorded 64-byte block stands for SAMPLE_BYTES). */
static void check_sampled_sites(const report_t *r, const char *name, size_t usable) {
  for (size_t i = 0; i < r->nsites; i++) {
    const site_t *s = &r->site[i];
    if (strcmp(s->frame[0], name) != 0) continue;
    char want_bytes[32], want_about[32];
    fmt_bytes(s->count * usable, want_bytes);
    fmt_bytes(s->count * SAMPLE_BYTES, want_about);
    CHECK(strcmp(s->bytes_text, want_bytes) == 0);
    CHECK(strcmp(s->about_text, want_about) == 0);
  }
}

/* Interleaved allocations of one size from two sites, 32 MiB each: as
 * programs do (a node and its payload; a kept block and a scratch one).
 * Each site's estimate must still be within 35% of what it kept: the
 * block recorded must not always fall on the same site of the pattern. */
#define HALF_BLOCKS (S1_BLOCKS / 2)

static void check_interleaved(void) {
  /* Both kept, alternately. */
  for (size_t i = 0; i < HALF_BLOCKS; i++) {
    s1_blocks[2 * i] = leak_s6_one();
    s1_blocks[2 * i + 1] = leak_s7_one();
  }
  take_report_with(capture, true);
  double want = (double)(HALF_BLOCKS * 64);
  double est6 = sum_about(&rep, "leak_s6_one"), est7 = sum_about(&rep, "leak_s7_one");
  check_print(1,
              "leak: sampled, two sites alternating, 32 MiB kept each: S6 %zu blocks, about "
              "%.2f MiB (%+.1f%%); S7 %zu blocks, about %.2f MiB (%+.1f%%)\n",
              blocks_at(&rep, "leak_s6_one"), est6 / (double)MiB, 100 * (est6 / want - 1),
              blocks_at(&rep, "leak_s7_one"), est7 / (double)MiB, 100 * (est7 / want - 1));
  bool ok = CHECK(est6 >= 0.65 * want && est6 <= 1.35 * want);
  ok &= CHECK(est7 >= 0.65 * want && est7 <= 1.35 * want);
  if (!ok) dump_report("alternating sites: the samples fall on one of them");
  for (size_t i = 0; i < S1_BLOCKS; i++) {
    bmm_free(s1_blocks[i]);
    s1_blocks[i] = NULL;
  }

  /* One kept, one freed at once, alternately. */
  for (size_t i = 0; i < HALF_BLOCKS; i++) {
    s1_blocks[i] = leak_s4_one();
    bmm_free(leak_s5_one());
  }
  take_report_with(capture, true);
  double est4 = sum_about(&rep, "leak_s4_one");
  check_print(1,
              "leak: sampled, kept and scratch alternating, 32 MiB kept: S4 %zu blocks, about "
              "%.2f MiB (%+.1f%%); scratch S5 %zu blocks\n",
              blocks_at(&rep, "leak_s4_one"), est4 / (double)MiB, 100 * (est4 / want - 1),
              blocks_at(&rep, "leak_s5_one"));
  ok = CHECK(est4 >= 0.65 * want && est4 <= 1.35 * want);
  ok &= CHECK_EQ_SZ(blocks_at(&rep, "leak_s5_one"), 0);
  if (!dumped && !ok) dump_report("kept and scratch alternating: the kept blocks are missed");
  for (size_t i = 0; i < HALF_BLOCKS; i++) {
    bmm_free(s1_blocks[i]);
    s1_blocks[i] = NULL;
  }
  take_report_with(capture, true);
  CHECK_EQ_SZ(blocks_of_ours(&rep), 0);
  CHECK(bmm_heap_check());
}

static bool count_block(const void *block, size_t usable, void *arg) {
  (void)block;
  (void)usable;
  ++*(size_t *)arg;
  return true;
}

/* Sampling cuts free lists short for a while: a heap's visit must still
 * report exactly its live blocks, and nothing else. */
static void check_visit_while_sampling(void) {
  enum { N = 20000 };
  static void *blocks[N];
  bmm_heap_t *h = bmm_heap_new();
  CHECK(h != NULL);
  if (h == NULL) return;
  size_t live = 0, bad = 0;
  for (int i = 0; i < N; i++) {
    blocks[i] = bmm_heap_malloc(h, 64);
    live++;
    if (i % 3 == 0) {
      bmm_free(blocks[i]);
      live--;
    }
    if (i % 37 == 0) { /* often enough to find a cut list pending */
      size_t n = 0;
      bmm_heap_visit(h, count_block, &n);
      bad += n != live;
    }
  }
  CHECK_EQ_SZ(bad, 0);
  bmm_heap_destroy(h);
  CHECK(bmm_heap_check());
}

static int main_sampled(void) {
  CHECK_EQ_LONG(bmm_option_get("leak_report"), 1);
  CHECK_EQ_LONG(bmm_option_get("leak_sample"), (long)SAMPLE_BYTES);
  leak_s1(s1_blocks, S1_BLOCKS);
  leak_s2(s2_blocks, S2_BLOCKS);
  leak_s3(1024, 1024); /* 64 MiB, none kept */
  bool have = true;
  for (size_t i = 0; i < S1_BLOCKS; i++)
    have &= s1_blocks[i] != NULL;
  for (size_t i = 0; i < S2_BLOCKS; i++)
    have &= s2_blocks[i] != NULL;
  CHECK(have);
  size_t u = bmm_usable_size(s1_blocks[0]); /* 64, or more in secure mode */
  CHECK(u >= 64 && u <= 80);

  size_t n = take_report_with(capture, true);
  double want1 = (double)(S1_BLOCKS * u), want2 = (double)(S2_BLOCKS * u);
  double est1 = sum_about(&rep, "leak_s1"), est2 = sum_about(&rep, "leak_s2");
  double est3 = sum_about(&rep, "leak_s3");
  size_t c1 = blocks_at(&rep, "leak_s1"), c2 = blocks_at(&rep, "leak_s2");
  size_t c3 = blocks_at(&rep, "leak_s3");
  check_print(1,
              "leak: sampled (1 per %zu bytes): %zu blocks recorded in all; "
              "S1 %zu blocks, about %.2f MiB (kept %.2f MiB, %+.1f%%); "
              "S2 %zu blocks, about %.2f MiB (kept %.2f MiB, %+.1f%%); "
              "S3 %zu blocks, about %.2f MiB (kept 0)\n",
              SAMPLE_BYTES, n, c1, est1 / (double)MiB, want1 / (double)MiB,
              100 * (est1 / want1 - 1), c2, est2 / (double)MiB, want2 / (double)MiB,
              100 * (est2 / want2 - 1), c3, est3 / (double)MiB);
  bool ok = CHECK(est1 >= 0.65 * want1 && est1 <= 1.35 * want1);
  ok &= CHECK(est2 >= 0.40 * want2 && est2 <= 1.60 * want2);
  ok &= CHECK_EQ_SZ(c3, 0); /* S3 freed every block it allocated */
  ok &= CHECK(n < S1_BLOCKS / 20);
  ok &= CHECK(n > 0);
  ok &= CHECK_EQ_SZ(sites_at(&rep, "leak_s1"), 1);
  ok &= CHECK_EQ_SZ(sites_at(&rep, "leak_s2"), 1);
  if (!ok) dump_report("sampled estimates");
  check_sampled_sites(&rep, "leak_s1", u);
  check_sampled_sites(&rep, "leak_s2", u);
  CHECK(bmm_heap_check());

  /* Freed: their records go (the pages that hold them route those frees
   * to the slow path). */
  for (size_t i = 0; i < S1_BLOCKS; i++)
    bmm_free(s1_blocks[i]);
  for (size_t i = 0; i < S2_BLOCKS; i++)
    bmm_free(s2_blocks[i]);
  take_report_with(capture, true);
  CHECK_EQ_SZ(blocks_of_ours(&rep), 0);
  CHECK(bmm_heap_check());

  check_interleaved();
  check_visit_while_sampling();
  run_churn(0.5, true);
  return check_done();
}

static const check_case_t cases[] = {
    {"options", case_options}, {"sites", case_sites},     {"remote", case_remote},
    {"heap", case_heap},       {"at_exit", case_at_exit}, {"churn", case_churn},
    {"resize", case_resize},
};
#define NCASES (sizeof cases / sizeof cases[0])

/* True if the environment holds `name`=`value` (value NULL: no `name`). */
static bool env_is(const char *name, const char *value) {
  const char *v = getenv(name);
  return value == NULL ? v == NULL : v != NULL && strcmp(v, value) == 0;
}

int main(int argc, char **argv) {
  struct rlimit no_core = {0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  const char *mode = argc > 1 ? argv[1] : NULL;
  /* The mode is chosen when the process starts: start again in it. */
  const char *want_report = "1", *want_sample = NULL;
  if (mode != NULL && strcmp(mode, "--off") == 0) want_report = NULL;
  if (mode != NULL && strcmp(mode, "--sampled") == 0) want_sample = "65536";
  if (!env_is("BMM_LEAK_REPORT", want_report) || !env_is("BMM_LEAK_SAMPLE", want_sample)) {
    if (want_report != NULL)
      setenv("BMM_LEAK_REPORT", want_report, 1);
    else
      unsetenv("BMM_LEAK_REPORT");
    if (want_sample != NULL)
      setenv("BMM_LEAK_SAMPLE", want_sample, 1);
    else
      unsetenv("BMM_LEAK_SAMPLE");
    execv("/proc/self/exe", argv);
    check_print(2, "leak: cannot re-execute /proc/self/exe (errno %d)\n", errno);
    return 1;
  }
  if (mode != NULL && strcmp(mode, "--off") == 0) return main_off();
  if (mode != NULL && strcmp(mode, "--sampled") == 0) return main_sampled();
  if (mode != NULL && strcmp(mode, "--exit-closing") == 0) return main_exit_closing();
  if (mode != NULL) return check_cases_main("leak", cases, NCASES, argc, argv);

  for (size_t i = 0; i < NCASES; i++)
    check_run_case("leak", &cases[i]);
  CHECK(check_rerun(argv[0], "--off", "BMM_LEAK_REPORT", NULL, "BMM_LEAK_SAMPLE", NULL));
  CHECK(check_rerun(argv[0], "--sampled", "BMM_LEAK_REPORT", "1", "BMM_LEAK_SAMPLE", "65536"));
  return check_done();
}
