// Torch-free read-bandwidth probe, to check the one benchmarks/cpu_gemm.py uses (torch.sum of a
// 512 MiB fp32 tensor): T threads each read their slice of a 512 MiB buffer with S interleaved
// streams (as the GEMV reads 4 tiles' weights at once), 4 independent integer accumulators, no
// stores, optionally prefetching PF bytes ahead per stream. Prints the median and best of 7 passes.
//
//   g++ -O2 -mavx2 -pthread tests/cpu_harness/read_bw.cpp -o /tmp/read_bw
//   flock /work/bench.lock /tmp/read_bw 2 4 0      # threads streams prefetch-bytes
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

void read_slice(const char* p, size_t bytes, int streams, int prefetch, int* result) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  const size_t per = bytes / streams / 128 * 128;
  for (size_t off = 0; off < per; off += 128) {
    for (int s = 0; s < streams; ++s) {
      const char* q = p + s * per + off;
      if (prefetch) {
        _mm_prefetch(q + prefetch, _MM_HINT_T0);
        _mm_prefetch(q + prefetch + 64, _MM_HINT_T0);
      }
      a0 = _mm256_add_epi32(a0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
      a1 = _mm256_add_epi32(a1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32)));
      a2 = _mm256_add_epi32(a2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64)));
      a3 = _mm256_add_epi32(a3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 96)));
    }
  }
  const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3));
  alignas(32) int lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), sum);  // keeps every load live
  *result = 0;
  for (int v : lanes) *result += v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s threads streams prefetch_bytes\n", argv[0]);
    return 2;
  }
  const int threads = std::atoi(argv[1]), streams = std::atoi(argv[2]), prefetch = std::atoi(argv[3]);
  const size_t bytes = size_t(512) << 20;
  char* buf = static_cast<char*>(std::aligned_alloc(4096, bytes));
  std::memset(buf, 1, bytes);
  std::vector<int> results(threads);
  std::vector<double> secs;
  for (int pass = 0; pass < 7; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back(read_slice, buf + t * (bytes / threads), bytes / threads, streams, prefetch, &results[t]);
    for (auto& th : pool) th.join();
    secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(secs.begin(), secs.end());
  int check = 0;
  for (int r : results) check += r;
  std::printf("threads %d, streams %d, prefetch %d: median %.1f GB/s, best %.1f GB/s (check %d)\n", threads, streams,
              prefetch, bytes / secs[3] / 1e9, bytes / secs[0] / 1e9, check);
  std::free(buf);
  return 0;
}
