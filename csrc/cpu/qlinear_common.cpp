// Scalar helpers shared by every instruction set: activation preparation (float pre-scaling and
// group sums; dynamic int8 quantization) and the kernel table. Compiled with the base flags only.
// Test: tests/test_cpu_backend.py.
#include <algorithm>
#include <cmath>

#include "cpu/qlinear.h"

namespace qk::cpu {

void prepare_float_activations(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t G, int bits,
                               float* xs, int64_t ldxs, float* xsum) {
  const int per = 32 / bits;
  float factor[8];
  for (int j = 0; j < per; ++j) factor[j] = j == per - 1 ? 1.0f : std::ldexp(1.0f, -bits * j);
  const int64_t group = K / G;
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * ldx;
    float* xo = xs + m * ldxs;
    for (int64_t k = 0; k < K; ++k) xo[k] = xr[k] * factor[k % per];
    for (int64_t g = 0; g < G; ++g) {
      float s = 0.0f;
      for (int64_t k = g * group; k < (g + 1) * group; ++k) s += xr[k];
      xsum[m * G + g] = s;
    }
  }
}

void quantize_activations_int8(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Kp,
                               bool per_block, int8_t* xq, int64_t ldq, float* xscale, int32_t* xblock) {
  const int64_t span = per_block ? kBlockK : K;
  const int64_t nscale = per_block ? Kp / kBlockK : 1;
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * ldx;
    int8_t* q = xq + m * ldq;
    for (int64_t a = 0; a < nscale; ++a) {
      const int64_t k0 = a * span, k1 = std::min(K, k0 + span);
      float amax = 0.0f;
      for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(xr[k]));
      const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
      xscale[m * nscale + a] = scale;
      // Division (not a reciprocal multiply) and round-half-even, as torch.round(x / scale). The
      // rounding adds and subtracts 1.5 * 2^23, which rounds to an integer exactly like
      // std::nearbyint in the default rounding mode for |v| < 2^22 (|v| <= 127 here; inf and NaN
      // clamp as before), and lets the compiler vectorize the loop (a nearbyint call per element was
      // most of the ~0.2 ms this took at m = 32, K = 4096).
      constexpr float kRoundingBias = 12582912.0f;
      for (int64_t k = k0; k < k1; ++k) {
        const float v = (xr[k] / scale + kRoundingBias) - kRoundingBias;
        q[k] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
      }
    }
    for (int64_t k = K; k < Kp; ++k) q[k] = 0;
    for (int64_t b = 0; b < Kp / kBlockK; ++b) {
      int32_t s = 0;
      for (int64_t k = b * kBlockK; k < (b + 1) * kBlockK; ++k) s += q[k];
      xblock[m * (Kp / kBlockK) + b] = s;
    }
  }
}

int64_t int8_segment_length(int64_t K, int64_t Kp, int64_t G, bool act_per_block) {
  if (act_per_block) return kBlockK;
  // 32768 columns of |xq * w| <= 127 * 128 stay below 2^31.
  constexpr int64_t kMaxRun = 32768;
  if (G == 1) return std::min(Kp, kMaxRun);
  const int64_t group = K / G;
  int64_t seg = group;
  while (seg > kMaxRun || group % seg) seg -= kBlockK;  // group is a multiple of 32
  return seg;
}

FloatTilesFn float_tiles_for(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return linear_float_tiles_scalar;
#if defined(__x86_64__)
    case Isa::kAvx2: return linear_float_tiles_avx2;
    case Isa::kAvx512: return linear_float_tiles_avx512;
    case Isa::kAvx512Vnni: return linear_float_tiles_avx512vnni;
    case Isa::kAvxVnni: return linear_float_tiles_avxvnni;
#endif
#if defined(__aarch64__)
    case Isa::kNeon: return linear_float_tiles_neon;
    case Isa::kI8mm: return linear_float_tiles_i8mm;
#endif
    default: return nullptr;
  }
}

Int8TilesFn int8_tiles_for(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return linear_int8_tiles_scalar;
#if defined(__x86_64__)
    case Isa::kAvx2: return linear_int8_tiles_avx2;
    case Isa::kAvx512: return linear_int8_tiles_avx512;
    case Isa::kAvx512Vnni: return linear_int8_tiles_avx512vnni;
    case Isa::kAvxVnni: return linear_int8_tiles_avxvnni;
#endif
#if defined(__aarch64__)
    case Isa::kNeon: return linear_int8_tiles_neon;
    case Isa::kI8mm: return linear_int8_tiles_i8mm;
#endif
    default: return nullptr;
  }
}

}  // namespace qk::cpu
