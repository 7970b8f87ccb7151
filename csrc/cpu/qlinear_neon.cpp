// ARMv8.2 NEON + dotprod quantized-linear kernels (layouts and math in qlinear.h). Compiled alone
// with -march=armv8.2-a+dotprod+fp16; only called when hwcaps report ASIMD and ASIMDDP.
//
// * float activations: a tile of 8 channels is two float32x4 vectors; codes are masked in place
//   and converted (pre-shifted, as the AVX2 path), then FMA'd with the activation scalar.
// * int8 activations: sdot (vdotq_s32, s8 x s8 -> 4-way s32), no saturation for either width.
// Test: bash ci/neon_test.sh (cross-compiled, run under qemu-aarch64 against the scalar kernels).
#include <arm_neon.h>

#include <algorithm>

#include "cpu/qlinear.h"

namespace qk::cpu {
namespace {

// The 4 values at offset `off` of a tile-major scales / zeros array held as fp32, or as fp16 bits
// where `half`.
inline float32x4_t load_params4(const void* p, bool half, int64_t off) {
  return half ? vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(static_cast<const uint16_t*>(p) + off)))
              : vld1q_f32(static_cast<const float*>(p) + off);
}

// Half h (channels 4h .. 4h + 3) of tile t's zero points of group g, or `zero` where the layer has no
// zeros array (every zero point equal, qlinear.h); fp16 values where `half`.
inline float32x4_t tile_zeros4(const void* zeros, bool half, float zero, int64_t G, int64_t t, int64_t g, int h) {
  return zeros ? load_params4(zeros, half, tile_param_offset(G, t, g) + 4 * h) : vdupq_n_f32(zero);
}

template <int BITS, int MR>
void float_tile(const FloatLinearArgs& a, int64_t t, int64_t m0) {
  constexpr int P = 32 / BITS;
  constexpr uint32_t kMask = (1u << BITS) - 1;
  constexpr int NA = MR == 1 ? 2 : 1;  // independent FMA chains for a single row
  const int64_t K = a.K, rows = K / P, grows = rows / a.G;
  const uint32_t* wt = a.w + t * rows * kTileN;
  const float* x0 = a.xs + m0 * a.ldx;
  float32x4_t out[MR][2];
  for (int i = 0; i < MR; ++i)
    for (int h = 0; h < 2; ++h) out[i][h] = a.bias ? vld1q_f32(a.bias + t * kTileN + 4 * h) : vdupq_n_f32(0.0f);
  for (int64_t g = 0; g < a.G; ++g) {
    float32x4_t acc[MR][NA][2];
    for (int i = 0; i < MR; ++i)
      for (int c = 0; c < NA; ++c) acc[i][c][0] = acc[i][c][1] = vdupq_n_f32(0.0f);
    for (int64_t r = g * grows; r < (g + 1) * grows; ++r) {
      const uint32x4_t w0 = vld1q_u32(wt + r * kTileN), w1 = vld1q_u32(wt + r * kTileN + 4);
      const float* x = x0 + r * P;
      for (int j = 0; j < P; ++j) {
        uint32x4_t q0, q1;
        if (j == P - 1) {
          q0 = vshrq_n_u32(w0, BITS * (P - 1));
          q1 = vshrq_n_u32(w1, BITS * (P - 1));
        } else {
          const uint32x4_t msk = vdupq_n_u32(kMask << (BITS * j));
          q0 = vandq_u32(w0, msk);
          q1 = vandq_u32(w1, msk);
        }
        const float32x4_t f0 = vcvtq_f32_u32(q0), f1 = vcvtq_f32_u32(q1);
        for (int i = 0; i < MR; ++i) {
          const float xv = x[i * a.ldx + j];
          acc[i][j % NA][0] = vfmaq_n_f32(acc[i][j % NA][0], f0, xv);
          acc[i][j % NA][1] = vfmaq_n_f32(acc[i][j % NA][1], f1, xv);
        }
      }
    }
    for (int h = 0; h < 2; ++h) {
      const float32x4_t s = load_params4(a.scales, a.params_fp16, tile_param_offset(a.G, t, g) + 4 * h);
      const float32x4_t z = tile_zeros4(a.zeros, a.params_fp16, a.zero, a.G, t, g, h);
      for (int i = 0; i < MR; ++i) {
        float32x4_t A = acc[i][0][h];
        for (int c = 1; c < NA; ++c) A = vaddq_f32(A, acc[i][c][h]);
        const float32x4_t xsum = vdupq_n_f32(a.xsum[(m0 + i) * a.G + g]);
        out[i][h] = vfmaq_f32(out[i][h], s, vfmsq_f32(A, z, xsum));
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int h = 0; h < 2; ++h) vst1q_f32(a.out + (m0 + i) * a.N + t * kTileN + 4 * h, out[i][h]);
}

template <int BITS>
void float_tiles(const FloatLinearArgs& a, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    int64_t m = 0;
    for (; m + 4 <= a.M; m += 4) float_tile<BITS, 4>(a, t, m);
    for (; m < a.M; ++m) float_tile<BITS, 1>(a, t, m);
  }
}

// acc[c] holds 4 partial sums of channel c; returns channels 0..3 and 4..7 summed.
inline void reduce8(const int32x4_t* acc, int32x4_t* lo, int32x4_t* hi) {
  *lo = vpaddq_s32(vpaddq_s32(acc[0], acc[1]), vpaddq_s32(acc[2], acc[3]));
  *hi = vpaddq_s32(vpaddq_s32(acc[4], acc[5]), vpaddq_s32(acc[6], acc[7]));
}

template <int MR>
void int8_tile(const Int8LinearArgs& a, int64_t t, int64_t m0) {
  const int64_t KB = a.Kp / kBlockK, group = a.G == 1 ? a.Kp : a.K / a.G;
  const uint8_t* wt = a.w + t * KB * kTileN * (a.bits == 4 ? 16 : 32);
  float32x4_t out[MR][2];
  for (int i = 0; i < MR; ++i)
    for (int h = 0; h < 2; ++h) out[i][h] = a.bias ? vld1q_f32(a.bias + t * kTileN + 4 * h) : vdupq_n_f32(0.0f);
  for (int64_t k0 = 0; k0 < a.Kp; k0 += a.segment) {
    const int64_t k1 = std::min(a.Kp, k0 + a.segment);
    int32x4_t acc[MR][kTileN];
    for (int i = 0; i < MR; ++i)
      for (int c = 0; c < kTileN; ++c) acc[i][c] = vdupq_n_s32(0);
    for (int64_t kb = k0 / kBlockK; kb < k1 / kBlockK; ++kb) {
      int8x16_t x0[MR], x1[MR];
      for (int i = 0; i < MR; ++i) {
        x0[i] = vld1q_s8(a.xq + (m0 + i) * a.ldq + kb * kBlockK);
        x1[i] = vld1q_s8(a.xq + (m0 + i) * a.ldq + kb * kBlockK + 16);
      }
      if (a.bits == 4) {
        const uint8_t* wb = wt + kb * 128;
        for (int j = 0; j < 4; ++j) {
          for (int h = 0; h < 2; ++h) {
            const uint8x16_t b = vld1q_u8(wb + j * 32 + h * 16);
            const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0F)));
            const int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(b, 4));
            for (int i = 0; i < MR; ++i)
              acc[i][j + 4 * h] = vdotq_s32(vdotq_s32(acc[i][j + 4 * h], lo, x0[i]), hi, x1[i]);
          }
        }
      } else {
        const int8_t* wb = reinterpret_cast<const int8_t*>(wt) + kb * kTileN * kBlockK;
        for (int c = 0; c < kTileN; ++c) {
          const int8x16_t b0 = vld1q_s8(wb + c * kBlockK), b1 = vld1q_s8(wb + c * kBlockK + 16);
          for (int i = 0; i < MR; ++i) acc[i][c] = vdotq_s32(vdotq_s32(acc[i][c], b0, x0[i]), b1, x1[i]);
        }
      }
    }
    const int64_t g = k0 / group;
    for (int i = 0; i < MR; ++i) {
      const int64_t m = m0 + i;
      int32_t xseg = 0;
      for (int64_t b = k0 / kBlockK; b < k1 / kBlockK; ++b) xseg += a.xblock[m * KB + b];
      const float xscale = a.xscale[a.act_per_block ? m * KB + k0 / kBlockK : m];
      int32x4_t d[2];
      reduce8(acc[i], &d[0], &d[1]);
      for (int h = 0; h < 2; ++h) {
        const float32x4_t s = vmulq_n_f32(vld1q_f32(a.scales + tile_param_offset(a.G, t, g) + 4 * h), xscale);
        const float32x4_t z = tile_zeros4(a.zeros, false, a.zero, a.G, t, g, h);
        const float32x4_t corr = vfmsq_f32(vcvtq_f32_s32(d[h]), z, vdupq_n_f32(static_cast<float>(xseg)));
        out[i][h] = vfmaq_f32(out[i][h], corr, s);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int h = 0; h < 2; ++h) vst1q_f32(a.out + (m0 + i) * a.N + t * kTileN + 4 * h, out[i][h]);
}

}  // namespace

void linear_float_tiles_neon(const FloatLinearArgs& a, int64_t t0, int64_t t1) {
  if (a.bits == 4)
    float_tiles<4>(a, t0, t1);
  else
    float_tiles<8>(a, t0, t1);
}

void linear_int8_tiles_neon(const Int8LinearArgs& a, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    int64_t m = 0;
    for (; m + 2 <= a.M; m += 2) int8_tile<2>(a, t, m);
    if (m < a.M) int8_tile<1>(a, t, m);
  }
}

}  // namespace qk::cpu
