/* textout.h: formatted text output for reports (statistics, leaks)
 * without stdio or malloc: lines are gathered in a stack buffer and handed
 * to a bmm_output_fn (or written to stderr) a whole line at a time. Such
 * reports also run at exit, or while the heap is suspect.
 */
#ifndef BMM_TEXTOUT_H
#define BMM_TEXTOUT_H

#include "internal.h"

typedef struct out_s {
  bmm_output_fn *fn;
  void *arg;
  char buf[512];
  size_t len;
} out_t;

static inline void out_flush(out_t *o) {
  if (o->len == 0) return;
  o->buf[o->len] = 0;
  if (o->fn != NULL) o->fn(o->buf, o->arg);
  else bmm__os_write_stderr(o->buf, o->len);
  o->len = 0;
}

static inline void out_str(out_t *o, const char *s) {
  for (; *s; s++) {
    if (o->len >= sizeof o->buf - 1) out_flush(o);
    o->buf[o->len++] = *s;
    if (*s == '\n') out_flush(o);
  }
}

/* Decimal, right-aligned in `width` columns (0: as is). */
static inline void out_num(out_t *o, unsigned long long v, int width) {
  char tmp[24];
  tmp[sizeof tmp - 1] = 0;
  char *p = bmm__fmt_dec(tmp + sizeof tmp - 1, v);
  for (int pad = width - (int)(tmp + sizeof tmp - 1 - p); pad > 0; pad--) out_str(o, " ");
  out_str(o, p);
}

/* Bytes in KiB, MiB or GiB with one decimal, right-aligned in 10 columns. */
static inline void out_bytes(out_t *o, size_t b) {
  static const char *const unit[] = {" B", " KiB", " MiB", " GiB", " TiB"};
  int u = 0;
  unsigned long long whole = b, tenths = 0;
  while (whole >= 1024 && u < 4) {
    tenths = (whole % 1024) * 10 / 1024;
    whole /= 1024;
    u++;
  }
  char tmp[32], digits[24];
  size_t n = 0;
  digits[sizeof digits - 1] = 0;
  for (const char *p = bmm__fmt_dec(digits + sizeof digits - 1, whole); *p; p++) tmp[n++] = *p;
  if (u > 0) {
    tmp[n++] = '.';
    tmp[n++] = (char)('0' + tenths);
  }
  for (const char *s = unit[u]; *s; s++) tmp[n++] = *s;
  tmp[n] = 0;
  for (int pad = 12 - (int)n; pad > 0; pad--) out_str(o, " ");
  out_str(o, tmp);
}

#endif /* BMM_TEXTOUT_H */
