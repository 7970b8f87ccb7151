// See huge_pages.h. Test: tests/test_cpu_backend.py (test_repacked_weight_on_huge_pages).
#include "cpu/huge_pages.h"

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace qk::cpu {

namespace {
constexpr size_t kHuge = size_t(2) << 20;
}

#if defined(__linux__)

void* huge_page_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t len = (bytes + page - 1) / page * page;  // the tail past the last 2 MiB stays on small pages
  // Over-map by 2 MiB, then unmap the unaligned head and the tail: the kept range starts on a huge
  // page boundary, and only its own pages stay mapped.
  void* raw = mmap(nullptr, len + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = (base + kHuge - 1) / kHuge * kHuge;
  if (start > base) munmap(raw, start - base);
  const uintptr_t end = start + len, raw_end = base + len + kHuge;
  if (raw_end > end) munmap(reinterpret_cast<void*>(end), raw_end - end);
  void* p = reinterpret_cast<void*>(start);
#if defined(MADV_HUGEPAGE)
  madvise(p, len, MADV_HUGEPAGE);  // a refusal leaves ordinary pages, which is still correct
#endif
  return p;
}

void huge_page_free(void* p, size_t bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (p) munmap(p, (bytes + page - 1) / page * page);
}

#else

void* huge_page_alloc(size_t) { return nullptr; }

void huge_page_free(void*, size_t) {}

#endif

}  // namespace qk::cpu
