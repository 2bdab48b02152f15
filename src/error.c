/* error.c: diagnostics. Every detected misuse prints exactly one line on
 * standard error, "brainmm: error: CALL(ADDRESS): WHAT", then aborts unless
 * the option abort_on_error is 0. Lines are formatted into a stack buffer
 * and written with one write(2): no stdio, no allocation, so reporting is
 * safe inside malloc and after heap corruption.
 */
#include <string.h>

#include "internal.h"

typedef struct line_s {
  char buf[256];
  size_t len;
} line_t;

static void line_add(line_t *l, const char *s) {
  size_t n = strlen(s);
  if (n > sizeof l->buf - 1 - l->len) n = sizeof l->buf - 1 - l->len;
  memcpy(l->buf + l->len, s, n);
  l->len += n;
}

static void line_add_hex(line_t *l, uintptr_t v) {
  char tmp[2 + 16 + 1], *p = tmp + sizeof tmp - 1;
  *p = 0;
  do {
    *--p = "0123456789abcdef"[v & 15];
    v >>= 4;
  } while (v != 0);
  *--p = 'x';
  *--p = '0';
  line_add(l, p);
}

static void line_add_dec(line_t *l, size_t v) {
  char tmp[24];
  tmp[sizeof tmp - 1] = 0;
  line_add(l, bmm__fmt_dec(tmp + sizeof tmp - 1, v));
}

static void line_emit(line_t *l) {
  l->buf[l->len++] = '\n';
  bmm__os_write_stderr(l->buf, l->len);
}

void bmm__error(const void *p, const char *call, const char *what) {
  bmm__error_block(p, call, what, 0);
}

void bmm__error_block(const void *p, const char *call, const char *what, size_t block_size) {
  line_t l = {.len = 0};
  line_add(&l, "brainmm: error: ");
  line_add(&l, call);
  line_add(&l, "(");
  line_add_hex(&l, (uintptr_t)p);
  line_add(&l, "): ");
  line_add(&l, what);
  if (block_size != 0) {
    line_add(&l, " (size class ");
    line_add_dec(&l, block_size);
    line_add(&l, " B)");
  }
  if (bmm__options[BMM_OPTION_ABORT_ON_ERROR]) line_add(&l, "; aborting");
  else line_add(&l, "; call ignored");
  line_emit(&l);
  if (bmm__options[BMM_OPTION_ABORT_ON_ERROR]) bmm__os_abort();
}

void bmm__warning(const char *what, const char *detail) {
  line_t l = {.len = 0};
  line_add(&l, "brainmm: warning: ");
  line_add(&l, what);
  if (detail != NULL) {
    line_add(&l, ": ");
    line_add(&l, detail);
  }
  line_emit(&l);
}

void bmm__verbose(const char *what, size_t value) {
  if (bmm__options[BMM_OPTION_VERBOSE] == 0) return;
  line_t l = {.len = 0};
  line_add(&l, "brainmm: ");
  line_add(&l, what);
  line_add(&l, " ");
  line_add_dec(&l, value);
  line_emit(&l);
}

/* A state BrainMM cannot go on from without handing out memory that is
 * not there (or not its own): one line, then abort, whatever
 * abort_on_error says. */
_Noreturn void bmm__fatal(const char *what) {
  line_t l = {.len = 0};
  line_add(&l, "brainmm: fatal: ");
  line_add(&l, what);
  line_add(&l, "; aborting");
  line_emit(&l);
  bmm__os_abort();
}

_Noreturn void bmm__assert_fail(const char *expr, const char *file, int line,
                                const char *func) {
  line_t l = {.len = 0};
  line_add(&l, "brainmm: assertion failed: ");
  line_add(&l, expr);
  line_add(&l, " in ");
  line_add(&l, func);
  line_add(&l, " at ");
  line_add(&l, file);
  line_add(&l, ":");
  line_add_dec(&l, (size_t)line);
  line_emit(&l);
  bmm__os_abort();
}
