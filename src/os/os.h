/* os.h: the contract between BrainMM and the kernel. Only src/os/ talks to
 * the OS; every other file goes through these functions.
 *
 * Terms: *reserve* takes address space without memory behind it; *commit*
 * makes a reserved range usable (reads give zero on first touch);
 * *decommit* gives the physical pages back while keeping the range reserved
 * (the contents are lost); *release* gives the address space back.
 * All sizes and addresses passed in are multiples of bmm__os_page_size()
 * unless a function says otherwise. No function here allocates from the
 * heap or calls into stdio, so all of them are safe before init and inside
 * malloc. Each returns false/NULL on failure and leaves errno as the kernel
 * set it; nothing already mapped is disturbed by a failure.
 */
#ifndef BMM_OS_H
#define BMM_OS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Page size of the system (4 KiB on x86-64; may be 16/64 KiB on arm64). */
size_t bmm__os_page_size(void);

/* Reserve `size` bytes aligned to `align` (a power of two, >= page size).
 * With commit=true the range is also committed. Returns NULL on failure. */
void *bmm__os_reserve_aligned(size_t size, size_t align, bool commit);

/* Release a range from bmm__os_reserve_aligned (or part of it). */
bool bmm__os_release(void *addr, size_t size);

/* Make a reserved range usable. May be a no-op where the kernel overcommits
 * (Linux modes 0 and 1): reserved memory there is already readable and
 * writable and pages appear on first touch. */
bool bmm__os_commit(void *addr, size_t size);

/* True when bmm__os_commit (and a decommit and commit again) leave access
 * rights as they were: it does nothing. False when it makes the range
 * readable and writable (strict commit accounting). */
bool bmm__os_commit_keeps_rights(void);

/* Give the physical memory of a range back; the range stays reserved, and
 * after bmm__os_commit reads give zeroes (or, with `lazy`, possibly the old
 * contents: MADV_FREE lets the kernel take them back only under pressure). */
bool bmm__os_decommit(void *addr, size_t size, bool lazy);

/* Resize a mapping that starts at `addr` from old_size to new_size bytes.
 * With new_addr NULL the mapping only grows or shrinks where it stands
 * (returns addr, or NULL when the pages after it are taken); otherwise it
 * is moved to new_addr, replacing whatever was mapped there (the caller
 * reserved that range), without copying its pages. NULL on failure. */
void *bmm__os_remap(void *addr, size_t old_size, size_t new_size, void *new_addr);

/* Move the pages of [src, src+size) to [dst, dst+size), a range of ours
 * whose pages are dropped, without copying them; src stays mapped, as
 * fresh zero pages (MREMAP_DONTUNMAP, Linux 5.7). Neither range is a hole
 * at any moment, which another thread's mmap could take and a later
 * MAP_FIXED would silently replace. Moved pages keep their mapping's
 * identity: they do not merge with the mapping around dst. False when the
 * kernel refuses (before 5.7, out of mappings, a src it cannot move):
 * nothing moved, dst mapped (again, if the kernel unmapped it first), copy
 * instead. */
bool bmm__os_move(void *src, size_t size, void *dst);

/* Reserve exactly [addr, addr+size) again after it was released, only if
 * nothing else was mapped there meanwhile. */
bool bmm__os_reserve_at(void *addr, size_t size);

/* Ask for (or against) transparent huge pages on a range. */
bool bmm__os_huge_hint(void *addr, size_t size, bool on);

/* Milliseconds on a monotonic clock, cheap (a coarse clock is fine). */
int64_t bmm__os_now_ms(void);

/* Drop the contents of a range (it reads as zero afterwards) but keep it
 * accessible; for metadata that must stay readable. */
bool bmm__os_reset(void *addr, size_t size);

/* The return addresses of the calling stack, innermost first: at most
 * max of them; returns how many. May allocate on its first use (the
 * unwinder loads): callers must be able to take a nested malloc. */
int bmm__os_backtrace(void **frames, int max);
/* "function+0xOFF (module)" for a code address, or "0xADDR (module+0xOFF)"
 * without a symbol, into buf (NUL-terminated, truncated to cap). No
 * allocation. */
void bmm__os_describe_code(const void *addr, char *buf, size_t cap);
/* Whether the return address addr lies in the code of the module (shared
 * library or program) that holds BrainMM: an address compare once the
 * module's range is known. */
bool bmm__os_code_in_our_module(const void *addr);
/* The name of the exported symbol the return address addr lies in, or
 * NULL. No allocation. */
const char *bmm__os_code_name(const void *addr);

/* Fill buf with n bytes from the kernel's random source (secure mode's
 * keys); false when it cannot (the caller mixes in what else it has). */
bool bmm__os_random(void *buf, size_t n);

/* Change access rights: BMM_PROT_* bits of brainmm.h semantics
 * (1 read, 2 write, 4 exec). Returns 0 or an errno value. */
int bmm__os_protect(void *addr, size_t size, int rights);

/* Executable memory, for the JIT heap.
 * bmm__os_alloc_rwx: `size` bytes readable, writable and executable at one
 * address, or NULL where the system refuses such mappings (SELinux execmem,
 * PaX, hardened kernels).
 * bmm__os_dual_map: the same physical pages mapped twice, writable at *rw
 * and executable at *rx, never both at one address (memfd on Linux).
 * bmm__os_dual_unmap releases both views. bmm__os_flush_icache makes code
 * written through any view visible to instruction fetch (a no-op on x86-64,
 * which keeps its caches coherent; cache maintenance on arm64). Memory from
 * bmm__os_alloc_rwx is given back with bmm__os_release; flush_icache takes
 * any byte range (no page multiple needed). */
void *bmm__os_alloc_rwx(size_t size);
bool bmm__os_dual_map(size_t size, void **rw, void **rx);
void bmm__os_dual_unmap(void *rw, void *rx, size_t size);
void bmm__os_flush_icache(void *addr, size_t size);

/* Write a whole buffer to standard error, without stdio. */
void bmm__os_write_stderr(const char *text, size_t len);

/* Keep a private (close-on-exec) copy of standard error, so that what is
 * written from a destructor still arrives after the program closed its
 * stderr in an atexit handler (GNU coreutils do). Writes use it only
 * while descriptor 2 is closed: a program may have moved its stderr. */
void bmm__os_keep_stderr(void);

/* Terminate the process after a detected heap error (SIGABRT). */
_Noreturn void bmm__os_abort(void);

/* Yield the processor inside a spin loop that is taking long. */
void bmm__os_yield(void);

/* The value of environment variable `name` without calling getenv (which
 * may not be ready when the loader calls malloc), or NULL. */
const char *bmm__os_getenv(const char *name);
/* The process's environment is set up (a malloc from the dynamic loader
 * may come before it is). */
bool bmm__os_env_ready(void);

/* Call fn(arg, name, value) for every environment variable whose name
 * starts with `prefix`. */
void bmm__os_env_each(const char *prefix,
                      void (*fn)(void *arg, const char *name, size_t name_len,
                                 const char *value),
                      void *arg);

/* Register fn to run when a thread exits with `value` as argument; fn is
 * then also armed for the calling thread. Returns false if it cannot (then
 * exiting threads leak their heaps' free memory until adopted). */
bool bmm__os_thread_exit_hook_init(void (*fn)(void *));
void bmm__os_thread_exit_hook_arm(void *value);

/* Run prepare/parent/child around fork(). */
bool bmm__os_atfork(void (*prepare)(void), void (*parent)(void),
                    void (*child)(void));

/* Resident set size of the process in bytes (0 if unknown). */
size_t bmm__os_rss(void);

/* What the kernel knows of the process, for statistics (zeros where it
 * cannot tell). elapsed_us counts from bmm__os_process_info_start(). */
typedef struct bmm_os_process_info_s {
  long long elapsed_us, user_us, system_us;
  size_t rss, peak_rss;
  unsigned long long minor_faults, major_faults;
} bmm_os_process_info_t;
void bmm__os_process_info_start(void);
void bmm__os_process_info(bmm_os_process_info_t *out);

/* A number that identifies the calling thread among the living ones and is
 * never 0. It is the thread's TCB address: one instruction to read, unique
 * while the thread lives (a later thread may reuse it). */
static inline uintptr_t bmm__os_thread_id(void) {
#if defined(__x86_64__) && defined(__linux__)
  uintptr_t tid;
  __asm__("movq %%fs:0, %0" : "=r"(tid));
  return tid;
#elif defined(__aarch64__)
  uintptr_t tid;
  __asm__ volatile("mrs %0, tpidr_el0" : "=r"(tid));
  return tid;
#else
  static _Thread_local char anchor;
  return (uintptr_t)&anchor;
#endif
}

#endif /* BMM_OS_H */
