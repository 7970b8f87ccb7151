// Torch-free, single-thread timing of the x86 quantized-linear kernels: isolates the kernel from
// activation preparation, threading and the dispatcher, for A/B comparisons of kernel variants.
// Random codes and activations; prints the best of `reps` calls.
//
//   python setup.py -q build_ext --inplace     # builds the objects linked below
//   B=build/temp.linux-x86_64-cpython-311/qk_cpu
//   g++ -O2 -std=c++17 -Icsrc tests/cpu_harness/qlinear_bench.cpp $B/*.o -o /tmp/qlinear_bench
//   flock /work/bench.lock /tmp/qlinear_bench w4a8 32 11008 4096 32 5   # kind M N K G reps
//
// kind: w4a16 (float activations, 4-bit), w4a8 / w8a8 (int8 activations per row). Optional last
// arguments: `sym` gives the kernel one zero point as a value (zeros = nullptr), as the backend does
// for symmetric layers (without it the kernel reads the zero-point array); `isa=avx512` or
// `isa=avx512vnni` or `isa=avxvnni` times that file's kernels instead of AVX2's (the CPU must have them: nothing is
// checked here).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/qlinear.h"

using namespace qk::cpu;

// Buffers start on a cache line, as the backend's tensors do (a large std::vector's data sits 16
// bytes past a page, where every 64-byte load of a weight block would straddle two lines).
template <typename T>
struct LineVector {
  explicit LineVector(size_t n) : v(n + 64 / sizeof(T)) {}
  T* data() { return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(v.data()) + 63) & ~uintptr_t{63}); }
  T* begin() { return data(); }
  T* end() { return data() + v.size() - 64 / sizeof(T); }
  std::vector<T> v;
};

int main(int argc, char** argv) {
  bool sym = false;
  FloatTilesFn float_tiles = linear_float_tiles_avx2;
  Int8TilesFn int8_tiles = linear_int8_tiles_avx2;
  bool args_ok = argc >= 7;
  for (int i = 7; i < argc; ++i) {
    if (!std::strcmp(argv[i], "sym")) {
      sym = true;
    } else if (!std::strcmp(argv[i], "isa=avx512")) {
      float_tiles = linear_float_tiles_avx512, int8_tiles = linear_int8_tiles_avx512;
    } else if (!std::strcmp(argv[i], "isa=avx512vnni")) {
      float_tiles = linear_float_tiles_avx512vnni, int8_tiles = linear_int8_tiles_avx512vnni;
    } else if (!std::strcmp(argv[i], "isa=avxvnni")) {
      float_tiles = linear_float_tiles_avxvnni, int8_tiles = linear_int8_tiles_avxvnni;
    } else if (std::strcmp(argv[i], "isa=avx2")) {
      args_ok = false;
    }
  }
  if (!args_ok) {
    std::fprintf(stderr, "usage: %s w4a16|w4a8|w8a8 M N K G reps [sym] [isa=avx2|avxvnni|avx512|avx512vnni]\n", argv[0]);
    return 2;
  }
  const char* kind = argv[1];
  const int64_t M = std::atol(argv[2]), N = std::atol(argv[3]), K = std::atol(argv[4]), G = std::atol(argv[5]);
  const int reps = std::atoi(argv[6]);
  std::mt19937 rng(1);
  std::vector<float> scales(G * N, 0.01f), zeros(G * N, 8.0f), out(M * N), x(M * K);
  for (auto& v : x) v = std::uniform_real_distribution<float>(-1, 1)(rng);
  double best = 1e9;
  auto time_it = [&](auto&& call) {
    call();
    for (int r = 0; r < reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      call();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  };
  if (!std::strcmp(kind, "w4a16")) {
    LineVector<uint32_t> w(N * K / 8);
    for (auto& v : w) v = rng();
    const int64_t ld = staggered_stride(K, sizeof(float));
    std::vector<float> xs(M * ld), xsum(M * G);
    prepare_float_activations(x.data(), K, M, K, G, 4, xs.data(), ld, xsum.data());
    FloatLinearArgs a{w.data(), scales.data(), sym ? nullptr : zeros.data(), 8.0f, nullptr, xs.data(),
                      xsum.data(), out.data(), M, N, K, G, ld, 4};
    time_it([&] { float_tiles(a, 0, N / kTileN); });
  } else {
    const int bits = std::strcmp(kind, "w4a8") ? 8 : 4;
    const int64_t Kp = (K + kBlockK - 1) / kBlockK * kBlockK, ldq = staggered_stride(Kp, 1);
    LineVector<uint8_t> w(N * Kp * bits / 8);
    for (auto& v : w) v = static_cast<uint8_t>(rng());
    LineVector<int8_t> xq(M * ldq);
    std::vector<float> xscale(M);
    std::vector<int32_t> xblock(M * Kp / kBlockK);
    quantize_activations_int8(x.data(), K, M, K, Kp, false, xq.data(), ldq, xscale.data(), xblock.data());
    Int8LinearArgs a{w.data(), scales.data(), sym ? nullptr : zeros.data(), bits == 8 ? 0.0f : 8.0f, nullptr,
                     xq.data(), xscale.data(), xblock.data(), out.data(), M, N, K, Kp, G, ldq,
                     int8_segment_length(K, Kp, G, false), bits, false};
    time_it([&] { int8_tiles(a, 0, N / kTileN); });
  }
  const double mac = double(M) * N * K;
  std::printf("%s%s M=%ld N=%ld K=%ld G=%ld: %.3f ms  %.1f GMAC/s  %.2f Gweights/s\n", kind, sym ? " sym" : "",
              long(M), long(N), long(K), long(G), best * 1e3, mac / best / 1e9, double(N) * K / best / 1e9);
  return 0;
}
