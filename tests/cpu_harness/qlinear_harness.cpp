// Torch-free test of the SIMD quantized-linear kernels against their scalar twins (qlinear.h).
// Random layouts, scales, zero points and activations; odd M, N, K; both weight widths; float and
// int8 activations (per row and per 32-column block); K = 8192 once; every zero point one value
// passed as `zero` (zeros = nullptr, as for symmetric layers) against the scalar kernel reading it
// from a full array. Every SIMD path the CPU runs (and this build has) is compared with the scalar
// kernel; exits non-zero on any failure or when no SIMD path could be tested.
//
// Bound: ||simd - scalar|| / ||scalar|| <= 1e-6 * sqrt(K). Both sides compute the same products;
// float activations differ only in fp32 summation order (~eps32 * sqrt(K)); int8 activations
// have exact integer sums, so only the fp32 epilogue order differs.
//
// Built and run by ci/neon_test.sh (aarch64, under qemu) and by ci/avx512_emulated_test.sh (the
// AVX-512 and AVX-VNNI kernels with emulated intrinsics, QK_HARNESS_EMULATED_AVX512); on x86 it tests AVX2 as:
//   g++ -O2 -std=c++17 -Icsrc tests/cpu_harness/qlinear_harness.cpp csrc/cpu/{cpu_features,qlinear_common,qlinear_scalar}.cpp <isa objects>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/qlinear.h"

using namespace qk::cpu;

namespace {

struct Case {
  int bits;
  int64_t M, N, K, G;
  bool one_zero = false;  // every zero point the same: the SIMD kernel gets it as a value, zeros = nullptr
};

double rel_err(const std::vector<float>& out, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (double(out[i]) - ref[i]) * (double(out[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

// Scales and zero points are drawn as fp16 values (scales in [2^-10, 2^-5), integer zero points), so
// the float kernels can also be run on them as fp16 (params_fp16) against the scalar fp32 run.
struct Inputs {
  std::vector<float> scales, zeros, bias, x;
  std::vector<uint16_t> scales_h, zeros_h;  // the same values as fp16 bits
};

uint16_t small_int_to_half(int v) {  // exact for 0 <= v < 2048
  if (v == 0) return 0;
  int e = 0;
  while ((v >> (e + 1)) != 0) ++e;
  return static_cast<uint16_t>((e + 15) << 10 | ((v << (10 - e)) & 0x3FF));
}

Inputs random_inputs(const Case& c, std::mt19937& rng) {
  std::uniform_int_distribution<int> uexp(5, 9), uman(0, 0x3FF);
  std::uniform_int_distribution<int> uz(0, (1 << c.bits) - 1);
  std::normal_distribution<float> nd;
  Inputs in;
  const int zero = uz(rng);
  for (int64_t i = 0; i < c.G * c.N; ++i) {
    const uint16_t s = static_cast<uint16_t>(uexp(rng) << 10 | uman(rng));
    const int z = c.one_zero ? zero : uz(rng);
    in.scales_h.push_back(s);
    in.scales.push_back(half_to_float(s));
    in.zeros_h.push_back(small_int_to_half(z));
    in.zeros.push_back(static_cast<float>(z));
  }
  for (int64_t i = 0; i < c.N; ++i) in.bias.push_back(nd(rng));
  for (int64_t i = 0; i < c.M * c.K; ++i) in.x.push_back(nd(rng));
  return in;
}

// Runs fn over the tiles in two ranges, as two threads would.
template <class Args, class Fn>
void run_tiles(Fn fn, const Args& a, int64_t tiles) {
  fn(a, 0, tiles / 2);
  fn(a, tiles / 2, tiles);
}

bool test_float(const char* name, FloatTilesFn fn, const Case& c, std::mt19937& rng) {
  std::vector<uint32_t> w(c.N * c.K * c.bits / 32);
  for (auto& v : w) v = rng();
  Inputs in = random_inputs(c, rng);
  const int64_t ldx = staggered_stride(c.K, sizeof(float));
  std::vector<float> xs(c.M * ldx), xsum(c.M * c.G), out(c.M * c.N), ref(c.M * c.N);
  prepare_float_activations(in.x.data(), c.K, c.M, c.K, c.G, c.bits, xs.data(), ldx, xsum.data());
  FloatLinearArgs a{w.data(), in.scales.data(), in.zeros.data(), 0.0f, in.bias.data(), xs.data(), xsum.data(),
                    ref.data(), c.M, c.N, c.K, c.G, ldx, c.bits};
  run_tiles(linear_float_tiles_scalar, a, c.N / kTileN);
  // The scalar kernel on the fp16 copies: the same values, so the same output bit for bit.
  std::vector<float> ref_h(c.M * c.N);
  FloatLinearArgs ah = a;
  ah.scales = in.scales_h.data(), ah.zeros = in.zeros_h.data(), ah.params_fp16 = true, ah.out = ref_h.data();
  run_tiles(linear_float_tiles_scalar, ah, c.N / kTileN);
  bool ok = ref_h == ref;
  if (c.one_zero) a.zeros = ah.zeros = nullptr, a.zero = ah.zero = in.zeros[0];
  const double bound = 1e-6 * std::sqrt(double(c.K));
  for (int half = 0; half < 2; ++half) {  // the SIMD kernel on fp32, then on fp16 parameters
    FloatLinearArgs as = half ? ah : a;
    as.out = out.data();
    run_tiles(fn, as, c.N / kTileN);
    const double err = rel_err(out, ref);
    ok = ok && err <= bound;
    std::printf("%s %-6s float w%d M=%lld N=%lld K=%lld G=%lld%s%s rel err %.3g (bound %.3g)%s\n",
                err <= bound ? "PASS" : "FAIL", name, c.bits, (long long)c.M, (long long)c.N, (long long)c.K,
                (long long)c.G, c.one_zero ? " z=one" : "", half ? " fp16 params" : "", err, bound,
                ref_h == ref ? "" : " (scalar fp16 params differ from fp32: FAIL)");
  }
  return ok;
}

bool test_int8(const char* name, Int8TilesFn fn, const Case& c, bool per_block, std::mt19937& rng) {
  const int64_t Kp = (c.K + kBlockK - 1) / kBlockK * kBlockK, KB = Kp / kBlockK;
  std::vector<uint8_t> w(c.bits == 4 ? c.N * Kp / 2 : c.N * Kp);
  for (auto& v : w) v = static_cast<uint8_t>(rng());
  Inputs in = random_inputs(c, rng);
  const int64_t ldq = staggered_stride(Kp, 1);
  std::vector<int8_t> xq(c.M * ldq);
  std::vector<float> xscale(c.M * (per_block ? KB : 1)), out(c.M * c.N), ref(c.M * c.N);
  std::vector<int32_t> xblock(c.M * KB);
  quantize_activations_int8(in.x.data(), c.K, c.M, c.K, Kp, per_block, xq.data(), ldq, xscale.data(), xblock.data());
  Int8LinearArgs a{w.data(), in.scales.data(), in.zeros.data(), 0.0f, in.bias.data(), xq.data(), xscale.data(),
                   xblock.data(), ref.data(), c.M, c.N, c.K, Kp, c.G, ldq,
                   int8_segment_length(c.K, Kp, c.G, per_block), c.bits, per_block};
  run_tiles(linear_int8_tiles_scalar, a, c.N / kTileN);
  a.out = out.data();
  if (c.one_zero) a.zeros = nullptr, a.zero = in.zeros[0];
  run_tiles(fn, a, c.N / kTileN);
  const double err = rel_err(out, ref), bound = 1e-6 * std::sqrt(double(c.K));
  const bool ok = err <= bound;
  std::printf("%s %-6s int8%s w%d M=%lld N=%lld K=%lld G=%lld%s rel err %.3g (bound %.3g)\n", ok ? "PASS" : "FAIL",
              name, per_block ? "/32" : "   ", c.bits, (long long)c.M, (long long)c.N, (long long)c.K,
              (long long)c.G, c.one_zero ? " z=one" : "", err, bound);
  return ok;
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  const Isa simd[] = {Isa::kAvx2, Isa::kAvxVnni, Isa::kAvx512, Isa::kAvx512Vnni, Isa::kNeon, Isa::kI8mm};
  int tested = 0, failed = 0;
  for (Isa isa : simd) {
    FloatTilesFn ff = float_tiles_for(isa);
    Int8TilesFn fi = int8_tiles_for(isa);
#ifdef QK_HARNESS_EMULATED_AVX512
    // The AVX-512 and AVX-VNNI kernels are linked in their scalar-emulated build
    // (ci/avx512_emulated_test.sh), which runs on any x86 CPU.
    const bool runs = isa == Isa::kAvx512 || isa == Isa::kAvx512Vnni || isa == Isa::kAvxVnni || isa_supported(isa);
#else
    const bool runs = isa_supported(isa);
#endif
    if (!ff || !fi || !runs) {
      std::printf("skip %s (%s)\n", isa_name(isa), (!ff || !fi) ? "not in this build" : "not supported by this CPU");
      continue;
    }
    ++tested;
    for (int bits : {4, 8}) {
      for (int64_t M : {1, 2, 3, 5, 17}) {
        // (N, K, G): N not a multiple of 16, K not a multiple of 32 (per channel), several groups.
        for (Case c : {Case{bits, M, 72, 256, 2}, Case{bits, M, 136, 384, 3}, Case{bits, M, 24, 264, 1}}) {
          failed += !test_float(isa_name(isa), ff, c, rng);
          failed += !test_int8(isa_name(isa), fi, c, false, rng);
          if (c.K % kBlockK == 0) failed += !test_int8(isa_name(isa), fi, c, true, rng);
        }
      }
      for (int64_t M : {1, 5}) {  // one zero point for all, passed as a value
        const Case c{bits, M, 72, 256, 2, true};
        failed += !test_float(isa_name(isa), ff, c, rng);
        failed += !test_int8(isa_name(isa), fi, c, false, rng);
      }
      // More rows than the kernels' row panels (64 on AVX2, 256 for VNNI W8A8).
      const Case tall{bits, 261, 24, 96, 3};
      failed += !test_float(isa_name(isa), ff, tall, rng);
      failed += !test_int8(isa_name(isa), fi, tall, false, rng);
      failed += !test_int8(isa_name(isa), fi, tall, true, rng);
      // Row blocks of the float GEMMs (6 rows on AVX2, 8 on AVX-512) plus a remainder, over several of
      // their L2-sized tile groups (16 int4 / 8 int8 tiles at K = 4096) and an odd last tile.
      const Case wide{bits, 12, 312, 4096, 32};
      failed += !test_float(isa_name(isa), ff, wide, rng);
      // Per channel with per-row activation scales: one integer segment of 4160 columns a row.
      const Case long_row{bits, 6, 40, 4160, 1};
      failed += !test_int8(isa_name(isa), fi, long_row, false, rng);
      const Case big{bits, 3, 16, 8192, 64};
      failed += !test_float(isa_name(isa), ff, big, rng);
      failed += !test_int8(isa_name(isa), fi, big, false, rng);
      failed += !test_int8(isa_name(isa), fi, big, true, rng);
      const Case big_one_zero{bits, 1, 64, 8192, 64, true};
      failed += !test_float(isa_name(isa), ff, big_one_zero, rng);
    }
  }
  std::printf("%d SIMD path(s) tested, %d failure(s)\n", tested, failed);
  return (tested == 0 || failed) ? 1 : 0;
}
