/* fork_dlopen.c: for preload.sh. A program registers fork handlers, then
 * loads libbrainmm.so with dlopen, so that its handlers run inside
 * BrainMM's own (prepare handlers run in the reverse order of their
 * registration, parent and child handlers in that order). The handler
 * allocates through BrainMM, on its slow path (a class not used yet).
 *
 *   fork_dlopen LIB WHERE     WHERE: child, parent or prepare
 *
 * Prints "handler done" and "fork done"; exit status 0. A hang is the
 * failure (preload.sh runs it with a time limit).
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void *(*lib_malloc)(size_t);
static void (*lib_free)(void *);

static void handler(void) {
  void *blocks[64];
  for (int i = 0; i < 64; i++) blocks[i] = lib_malloc(3000);
  for (int i = 0; i < 64; i++) lib_free(blocks[i]);
  ssize_t unused = write(1, "handler done\n", 13);
  (void)unused;
}

int main(int argc, char **argv) {
  if (argc != 3) return 2;
  const char *where = argv[2];
  pthread_atfork(strcmp(where, "prepare") == 0 ? handler : NULL,
                 strcmp(where, "parent") == 0 ? handler : NULL,
                 strcmp(where, "child") == 0 ? handler : NULL);
  void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) {
    fprintf(stderr, "fork_dlopen: %s\n", dlerror());
    return 2;
  }
  lib_malloc = (void *(*)(size_t))dlsym(lib, "bmm_malloc");
  lib_free = (void (*)(void *))dlsym(lib, "bmm_free");
  if (lib_malloc == NULL || lib_free == NULL) return 2;
  lib_free(lib_malloc(100));
  pid_t pid = fork();
  if (pid == 0) _exit(0);
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
      WEXITSTATUS(status) != 0)
    return 1;
  printf("fork done\n");
  return 0;
}
