/* blocks.c: memory blocks (API section 4): fixed sizes from 4 KiB to
 * 256 MiB, each aligned to its size, so the header a user keeps at a
 * block's start is found from any interior pointer by masking.
 *
 * No waste: 4 KiB .. 64 KiB blocks are blocks of the size classes of the
 * same size (their pages start on 64 KiB boundaries and blocks sit at
 * multiples of their size, so they are aligned to it); 256 KiB .. 16 MiB
 * are aligned unit runs of exactly their size; 64 MiB and 256 MiB are exact
 * mappings reserved with alignment and trimmed, so no reserved address
 * space is left stranded around them.
 */
#include "internal.h"

BMM_API void *bmm_block_alloc(bmm_block_size_t bs) {
  if ((unsigned)bs > BMM_BLOCK_256M) {
    errno = EINVAL;
    return NULL;
  }
  size_t size = BMM_BLOCK_BYTES(bs);
  return bmm__malloc_aligned(size, size);
}

/* Any live block start is accepted (the same checks as free: a pointer
 * into a block, a freed block or a foreign pointer is reported). */
BMM_API void bmm_block_free(void *block) {
  if (block == NULL) return;
  bmm__free_generic(block, bmm__page_of(block), "bmm_block_free");
}
