// Memory for the repacked CPU weights on transparent huge pages (2 MiB) where the OS allows it.
// Torch-free. Why: a GEMV streams its weights once per call; on 4 KiB pages a 117 MB weight crosses
// ~29k pages, each a TLB walk (a two-level one under virtualisation) and a point where the L2
// hardware prefetchers stop. Linux in THP `madvise` mode (a common default) gives huge pages only to
// ranges advised MADV_HUGEPAGE before they are first written.
#pragma once

#include <cstddef>

namespace qk::cpu {

// `bytes` of fresh, untouched anonymous memory starting on a 2 MiB boundary, advised
// MADV_HUGEPAGE (the pages fault in as huge pages when first written, if the kernel has them).
// Returns nullptr where this is not possible (not Linux, mmap failed): the caller then allocates
// ordinarily. Where madvise refuses the hint (THP `never`) the memory is simply on small pages.
// Release with huge_page_free(p, bytes).
void* huge_page_alloc(size_t bytes);
void huge_page_free(void* p, size_t bytes);

}  // namespace qk::cpu
