#!/usr/bin/env bash
# exports.sh LIB - the shared library (libbrainmm.so) exports nothing but:
#   - the public API: bmm_* (but not the internal bmm__* names);
#   - the standard allocation names: malloc free calloc realloc reallocarray
#     posix_memalign aligned_alloc memalign valloc pvalloc malloc_usable_size
#     free_sized free_aligned_sized cfree;
#   - C++ operator new/delete in all forms (_Zn[wa]m*, _Zd[la]Pv*);
#   - linker symbols (_init _fini _edata _end __bss_start) and symbol
#     version nodes (absolute symbols, type A).
# Any other exported symbol fails and is printed. Also checks that malloc,
# free, calloc, realloc, posix_memalign, aligned_alloc and bmm_malloc are
# exported. Prints "N passed, N failed"; exits non-zero on any failure.
set -u

if [ $# -lt 1 ]; then
  echo "usage: $0 path/to/libbrainmm.so" >&2
  exit 2
fi
lib=$1

. "$(dirname "$0")/check.sh"

if [ ! -f "$lib" ]; then
  fail "no library at $lib"
  finish
fi
if ! syms=$(nm -D --defined-only "$lib"); then
  fail "nm -D --defined-only $lib failed"
  finish
fi

declare -A allowed=()
for name in malloc free calloc realloc reallocarray posix_memalign aligned_alloc \
  memalign valloc pvalloc malloc_usable_size free_sized free_aligned_sized cfree \
  _init _fini _edata _end __bss_start; do
  allowed[$name]=1
done

declare -A exported=()
count=0
# nm prints "VALUE TYPE NAME" (NAME may carry @VERSION or @@VERSION)
while read -r value type name; do
  if [ -z "${name:-}" ]; then # a line without a value column
    name=$type
    type=$value
  fi
  name=${name%%@*}
  [ -n "$name" ] || continue
  count=$((count + 1))
  exported[$name]=1
  case "$name" in
    bmm__*) fail "internal symbol exported: $name ($type)"; continue ;;
    bmm_*) pass; continue ;;
    _Zn[wa]m*|_Zd[la]Pv*) pass; continue ;;
  esac
  if [ -n "${allowed[$name]:-}" ]; then
    pass
  elif [ "$type" = "A" ]; then
    pass # a symbol version node
  else
    fail "unexpected exported symbol: $name ($type)"
  fi
done <<<"$syms"

if [ "$count" -gt 0 ]; then pass; else fail "no exported symbols found"; fi

for name in malloc free calloc realloc posix_memalign aligned_alloc bmm_malloc; do
  if [ -n "${exported[$name]:-}" ]; then pass; else fail "$name is not exported"; fi
done

finish
