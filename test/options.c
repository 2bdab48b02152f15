/* options.c: the options that shape every page or must see every block
 * (secure, zero_on_free, leak_report, leak_sample) take bmm_option_set
 * until the first allocation, though the library initialised long before
 * (its constructor), and return EBUSY after it unless the value stays;
 * secure mode set that way is on (the canary takes 8 bytes of a block).
 * An unknown option from the environment warns once, also in an
 * environment with neither PATH nor HOME (which once made the options be
 * read, and warned about, twice). Blanks around names and values in
 * BMM_OPTIONS are ignored.
 */
#define _GNU_SOURCE
#include <brainmm.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static void exec_bare_env(void *arg) {
  (void)arg;
  char *const args[] = {"options", "--child", NULL};
  char *const env[] = {"BMM_NO_SUCH_OPTION=1", "BMM_OPTIONS=also_unknown=2", NULL};
  execve("/proc/self/exe", args, env);
  _exit(127);
}

/* BMM_OPTIONS with blanks around names and values: they are read as if
 * there were none; the child prints what it got. */
static void exec_blanks(void *arg) {
  (void)arg;
  char *const args[] = {"options", "--print", NULL};
  char *const env[] = {"BMM_OPTIONS= purge_delay = 25 ,\tstats_json\t, abort_on_error =0", NULL};
  execve("/proc/self/exe", args, env);
  _exit(127);
}

static size_t count(const char *text, const char *what) {
  size_t n = 0;
  for (const char *s = text; (s = strstr(s, what)) != NULL; s += strlen(what)) n++;
  return n;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--child") == 0) {
    bmm_free(bmm_malloc(10));
    return 0;
  }
  if (argc > 1 && strcmp(argv[1], "--print") == 0) {
    bmm_free(bmm_malloc(10));
    fprintf(stderr, "purge_delay=%ld stats_json=%ld abort_on_error=%ld\n",
            bmm_option_get("purge_delay"), bmm_option_get("stats_json"),
            bmm_option_get("abort_on_error"));
    return 0;
  }
  /* Nothing allocated through BrainMM yet (this program links it; libc's
   * own allocations go to glibc's malloc). */
  CHECK_EQ_LONG(bmm_option_set("secure", 1), 0);
  CHECK_EQ_LONG(bmm_option_get("secure"), 1);
  CHECK_EQ_LONG(bmm_option_set("zero_on_free", 1), 0);
  char *p = bmm_malloc(100);
  CHECK(p != NULL);
  CHECK_EQ_SZ(bmm_usable_size(p), 104); /* the 112-byte class, less the canary */
  CHECK_EQ_LONG(bmm_option_set("secure", 0), EBUSY);
  CHECK_EQ_LONG(bmm_option_set("secure", 1), 0); /* unchanged: fine */
  CHECK_EQ_LONG(bmm_option_set("leak_report", 1), EBUSY);
  CHECK_EQ_LONG(bmm_option_set("zero_on_free", 0), EBUSY);
  CHECK_EQ_LONG(bmm_option_get("secure"), 1);
  bmm_free(p);

  char buf[4096];
  int lines;
  int status = check_child(exec_bare_env, NULL, buf, sizeof buf, &lines);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK_EQ_SZ(count(buf, "NO_SUCH_OPTION"), 1);
  CHECK_EQ_SZ(count(buf, "also_unknown"), 1);
  if (lines != 2) check_print(2, "options: the bare environment gave: %s\n", buf);
  CHECK_EQ_LONG(lines, 2);

  status = check_child(exec_blanks, NULL, buf, sizeof buf, &lines);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  if (!CHECK(strstr(buf, "purge_delay=25 stats_json=1 abort_on_error=0\n") != NULL && lines == 1))
    check_print(2, "options: BMM_OPTIONS with blanks gave: %s\n", buf);
  return check_done();
}
