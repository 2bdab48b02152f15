/* options.c: the table of run-time options and where their values come
 * from: defaults, BMM_OPTIONS="name=value,...", BMM_<NAME>=value (which
 * wins over BMM_OPTIONS), and bmm_option_set. Parsing reads the environment
 * in place and never allocates: it runs inside the first malloc.
 */
#include <string.h>

#include "internal.h"

typedef struct bmm_option_desc_s {
  const char *name;
  long def, min, max;
  const char *help;
} bmm_option_desc_t;

static const bmm_option_desc_t option_desc[BMM_OPTION_COUNT] = {
    [BMM_OPTION_ABORT_ON_ERROR] = {"abort_on_error", 1, 0, 1,
                                   "abort after reporting heap misuse (0: ignore the call)"},
    [BMM_OPTION_VERBOSE] = {"verbose", 0, 0, 2, "print what the allocator does (1, 2: more)"},
    [BMM_OPTION_PURGE_LAZY] = {"purge_lazy", 0, 0, 1,
                               "return memory with MADV_FREE (1) or MADV_DONTNEED (0)"},
    [BMM_OPTION_PURGE_DELAY] = {"purge_delay", 10, -1, 3600000,
                                "ms before freed memory goes back to the OS (0 at once, -1 never)"},
    [BMM_OPTION_HUGE_PAGES] = {"huge_pages", 0, 0, 1,
                               "advise transparent huge pages on arenas (2 MiB aligned)"},
    [BMM_OPTION_ARENA_RELEASE] = {"arena_release", 1, 0, 1,
                                  "give an arena's address space back once all of it is free"},
    [BMM_OPTION_SHOW_STATS] = {"show_stats", 0, 0, 1, "print the statistics at exit"},
    [BMM_OPTION_STATS_JSON] = {"stats_json", 0, 0, 1,
                               "bmm_stats_print (and show_stats) write JSON, not a table"},
    [BMM_OPTION_SECURE] = {"secure", 0, 0, 2,
                           "1: encoded free lists, guard pages, canaries, double-free and "
                           "use-after-free checks; 2: also check whole freed blocks (fixed "
                           "at the first allocation)"},
    [BMM_OPTION_LEAK_REPORT] = {"leak_report", 0, 0, 1,
                                "record live blocks by call stack; report them at exit (and "
                                "on bmm_leak_report)"},
    [BMM_OPTION_LEAK_SAMPLE] = {"leak_sample", 0, 0, (long)1 << 40,
                                "leak_report: record about one block per this many bytes "
                                "(0: every block; then every call takes the slow path)"},
    [BMM_OPTION_ZERO_ON_FREE] = {"zero_on_free", 0, 0, 1,
                                 "secure mode: clear blocks when they are freed (fixed at "
                                 "the first allocation)"},
};

long bmm__options[BMM_OPTION_COUNT] = {
    [BMM_OPTION_ABORT_ON_ERROR] = 1,
    [BMM_OPTION_VERBOSE] = 0,
    [BMM_OPTION_PURGE_LAZY] = 0,
    [BMM_OPTION_PURGE_DELAY] = 10,
    [BMM_OPTION_HUGE_PAGES] = 0,
    [BMM_OPTION_ARENA_RELEASE] = 1,
    [BMM_OPTION_SHOW_STATS] = 0,
    [BMM_OPTION_STATS_JSON] = 0,
    [BMM_OPTION_SECURE] = 0,
    [BMM_OPTION_ZERO_ON_FREE] = 0,
    [BMM_OPTION_LEAK_REPORT] = 0,
    [BMM_OPTION_LEAK_SAMPLE] = 0,
};

static char lower(char c) {
  return c >= 'A' && c <= 'Z' ? (char)(c + ('a' - 'A')) : c;
}

/* Index of the option named by the first `len` bytes of `name`, compared
 * without case (so BMM_ABORT_ON_ERROR names abort_on_error), or -1. */
static int option_find(const char *name, size_t len) {
  for (int i = 0; i < BMM_OPTION_COUNT; i++) {
    const char *n = option_desc[i].name;
    if (strlen(n) != len) continue;
    size_t k = 0;
    while (k < len && lower(name[k]) == n[k]) k++;
    if (k == len) return i;
  }
  return -1;
}

/* Parse a decimal value (optionally signed; "true"/"false"/"on"/"off"
 * too) that ends at `end` or at the first ','. */
static bool option_parse_value(const char *s, const char *end, long *out) {
  size_t len = (size_t)(end - s);
  if ((len == 4 && strncmp(s, "true", 4) == 0) || (len == 2 && strncmp(s, "on", 2) == 0)) {
    *out = 1;
    return true;
  }
  if ((len == 5 && strncmp(s, "false", 5) == 0) || (len == 3 && strncmp(s, "off", 3) == 0)) {
    *out = 0;
    return true;
  }
  bool neg = false;
  if (s < end && (*s == '-' || *s == '+')) neg = *s++ == '-';
  if (s == end) return false;
  long v = 0;
  for (; s < end; s++) {
    if (*s < '0' || *s > '9' || v > (__LONG_MAX__ - 9) / 10) return false;
    v = v * 10 + (*s - '0');
  }
  *out = neg ? -v : v;
  return true;
}

static void option_apply(const char *name, size_t name_len, const char *value,
                         const char *value_end) {
  int idx = option_find(name, name_len);
  char shown[64];
  size_t n = name_len < sizeof shown - 1 ? name_len : sizeof shown - 1;
  memcpy(shown, name, n);
  shown[n] = 0;
  if (idx < 0) {
    bmm__warning("unknown option ignored", shown);
    return;
  }
  long v;
  if (!option_parse_value(value, value_end, &v) || v < option_desc[idx].min ||
      v > option_desc[idx].max) {
    bmm__warning("bad value for option ignored", shown);
    return;
  }
  bmm__options[idx] = v;
}

static void option_from_env_var(void *arg, const char *name, size_t name_len,
                                const char *value) {
  (void)arg;
  name += 4; /* "BMM_" */
  name_len -= 4;
  if (name_len == 7 && strncmp(name, "OPTIONS", 7) == 0) return; /* done before */
  /* BMM_TRACE_* belong to the trace recorder (tools/), not to us. */
  if (name_len > 6 && strncmp(name, "TRACE_", 6) == 0) return;
  option_apply(name, name_len, value, value + strlen(value));
}

/* [*from, *to) without the blanks at either end. */
static void trim(const char **from, const char **to) {
  while (*from < *to && (**from == ' ' || **from == '\t')) (*from)++;
  while (*to > *from && ((*to)[-1] == ' ' || (*to)[-1] == '\t')) (*to)--;
}

void bmm__options_init(void) {
  static const char one[] = "1"; /* a bare name in BMM_OPTIONS means name=1 */
  const char *list = bmm__os_getenv("BMM_OPTIONS");
  while (list != NULL && *list != 0) {
    const char *end = strchr(list, ',');
    if (end == NULL) end = list + strlen(list);
    const char *eq = memchr(list, '=', (size_t)(end - list));
    const char *name = list, *name_end = eq != NULL ? eq : end;
    const char *value = eq != NULL ? eq + 1 : one, *value_end = eq != NULL ? end : one + 1;
    trim(&name, &name_end); /* "a = 1, b=2" */
    trim(&value, &value_end);
    if (name_end > name || eq != NULL)
      option_apply(name, (size_t)(name_end - name), value, value_end);
    list = *end ? end + 1 : end;
  }
  bmm__os_env_each("BMM_", option_from_env_var, NULL);
}

BMM_API long bmm_option_get(const char *name) {
  int idx = name ? option_find(name, strlen(name)) : -1;
  return idx < 0 ? -1 : bmm__options[idx];
}

BMM_API int bmm_option_set(const char *name, long value) {
  int idx = name ? option_find(name, strlen(name)) : -1;
  if (idx < 0 || value < option_desc[idx].min || value > option_desc[idx].max) return EINVAL;
  /* Secure mode shapes every page (and its fill every freed block), and
   * leak tracking must see every block it may be asked about: they can
   * change until the first allocation (see bmm__modes_settable), not
   * after. */
  if ((idx == BMM_OPTION_SECURE || idx == BMM_OPTION_ZERO_ON_FREE ||
       idx == BMM_OPTION_LEAK_REPORT || idx == BMM_OPTION_LEAK_SAMPLE) &&
      value != bmm__options[idx]) {
    if (bmm__process_is_initialized() && !bmm__modes_settable()) return EBUSY;
    bmm__options[idx] = value;
    if (bmm__process_is_initialized()) bmm__modes_init();
    return 0;
  }
  bmm__options[idx] = value;
  if (idx == BMM_OPTION_SHOW_STATS && value != 0) bmm__os_keep_stderr(); /* for the exit report */
  return 0;
}
