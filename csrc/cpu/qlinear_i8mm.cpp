// ARMv8.6 NEON + i8mm quantized-linear kernels for int8 activations (layouts and math in qlinear.h).
// smmla (vmmlaq_s32) multiplies a 2x8 s8 block of two activation rows by an 8x2 block of two
// channels' codes into a 2x2 s32 tile: 32 multiply-adds an instruction against sdot's 16, each lane a
// whole dot product (no reduction across lanes at the end). Rows therefore go in pairs. An odd last
// row runs the NEON sdot kernel, and so does a single row, which gains nothing from a second row's
// slot. Float activations run the NEON kernels. Layouts: the int8-activation layouts of qlinear.h
// (limits: N % 8 == 0, K as they state). Compiled alone with -march=armv8.6-a+i8mm (setup.py); only
// called when hwcaps report I8MM.
// Test: bash ci/neon_test.sh (cross-compiled, run under qemu-aarch64 against the scalar kernels).
// Benchmark: benchmarks/cpu_gemm.py on an i8mm CPU (QUANTKERNELS_CPU_ISA=neon for the sdot kernels).
// Not timed yet: no ARM CPU was available, and qemu checks correctness only.
#include <arm_neon.h>

#include <algorithm>
#include <vector>

#include "cpu/qlinear.h"

namespace qk::cpu {
namespace {

// Row pairs a pass. Chosen from the compiled code, not from timings (no ARM CPU here): with 4 pairs
// (8 rows, 16 accumulators) GCC 12 unrolled the channel pairs and kept 23-24 stack loads and stores in
// each block of 64 smmla. With 2 pairs a block of 32 smmla has 51-53 instructions and 1-2 stack
// accesses.
constexpr int kPairs = 2;

// [c0 k0..7 | c1 k0..7] and [c0 k8..15 | c1 k8..15] from 16 columns of two channels (or two rows):
// the 8-column operands of smmla.
inline void pair_chunks(int8x16_t c0, int8x16_t c1, int8x16_t* lo, int8x16_t* hi) {
  *lo = vreinterpretq_s8_s64(vzip1q_s64(vreinterpretq_s64_s8(c0), vreinterpretq_s64_s8(c1)));
  *hi = vreinterpretq_s8_s64(vzip2q_s64(vreinterpretq_s64_s8(c0), vreinterpretq_s64_s8(c1)));
}

// The activations of row pairs interleaved for smmla's left operand: pair p, block kb, chunk c (8
// columns) is 16 bytes, row 2p's 8 columns then row 2p + 1's. Row stride of a pair: 2 Kp + 64 bytes.
inline int64_t pair_stride(int64_t Kp) { return 2 * Kp + 64; }

void interleave_pairs(const Int8LinearArgs& a, int64_t pairs, int8_t* xi) {
  const int64_t ld = pair_stride(a.Kp);
  for (int64_t p = 0; p < pairs; ++p) {
    const int8_t* r0 = a.xq + 2 * p * a.ldq;
    const int8_t* r1 = r0 + a.ldq;
    for (int64_t k = 0; k < a.Kp; k += 16) {
      int8x16_t lo, hi;
      pair_chunks(vld1q_s8(r0 + k), vld1q_s8(r1 + k), &lo, &hi);  // [r0 k..k+7 | r1 k..k+7], then k+8..k+15
      vst1q_s8(xi + p * ld + 2 * k, lo);
      vst1q_s8(xi + p * ld + 2 * k + 16, hi);
    }
  }
}

inline int32x4_t zip_lo64(int32x4_t a, int32x4_t b) {
  return vreinterpretq_s32_s64(vzip1q_s64(vreinterpretq_s64_s32(a), vreinterpretq_s64_s32(b)));
}
inline int32x4_t zip_hi64(int32x4_t a, int32x4_t b) {
  return vreinterpretq_s32_s64(vzip2q_s64(vreinterpretq_s64_s32(a), vreinterpretq_s64_s32(b)));
}

// One segment's integer sums of row pairs p0 .. p0 + NP - 1 against tile wt, as d[2i + r][h]: row r of
// pair i, channels 4h .. 4h + 3.
// bits 8: acc[i][q] = [r0 c2q, r0 c2q+1, r1 c2q, r1 c2q+1] (channel pairs of the layout's rows).
// bits 4: acc[i][j] = [r0 cj, r0 cj+4, r1 cj, r1 cj+4] (the two channels of one 32-byte column).
template <int NP, int BITS>
inline void segment_pairs(const uint8_t* wt, const int8_t* xi, int64_t ldi, int64_t kb0, int64_t kb1,
                          int32x4_t (&d)[2 * NP][2]) {
  int32x4_t acc[NP][4];
  for (int i = 0; i < NP; ++i)
    for (int q = 0; q < 4; ++q) acc[i][q] = vdupq_n_s32(0);
  for (int64_t kb = kb0; kb < kb1; ++kb) {
    const int8_t* xb = xi + kb * 64;
    for (int q = 0; q < 4; ++q) {
      int8x16_t w[4];  // chunks 0..3 (8 columns each) of the two channels
      if (BITS == 8) {
        const int8_t* wb = reinterpret_cast<const int8_t*>(wt) + (kb * kTileN + 2 * q) * kBlockK;
        pair_chunks(vld1q_s8(wb), vld1q_s8(wb + kBlockK), &w[0], &w[1]);
        pair_chunks(vld1q_s8(wb + 16), vld1q_s8(wb + kBlockK + 16), &w[2], &w[3]);
      } else {
        const uint8_t* wb = wt + kb * 128 + q * 32;
        const uint8x16_t b0 = vld1q_u8(wb), b1 = vld1q_u8(wb + 16), nib = vdupq_n_u8(0x0F);
        pair_chunks(vreinterpretq_s8_u8(vandq_u8(b0, nib)), vreinterpretq_s8_u8(vandq_u8(b1, nib)), &w[0], &w[1]);
        pair_chunks(vreinterpretq_s8_u8(vshrq_n_u8(b0, 4)), vreinterpretq_s8_u8(vshrq_n_u8(b1, 4)), &w[2], &w[3]);
      }
      for (int i = 0; i < NP; ++i)
        for (int c = 0; c < 4; ++c) acc[i][q] = vmmlaq_s32(acc[i][q], vld1q_s8(xb + i * ldi + 16 * c), w[c]);
    }
  }
  for (int i = 0; i < NP; ++i) {
    if (BITS == 8) {
      d[2 * i][0] = zip_lo64(acc[i][0], acc[i][1]);
      d[2 * i][1] = zip_lo64(acc[i][2], acc[i][3]);
      d[2 * i + 1][0] = zip_hi64(acc[i][0], acc[i][1]);
      d[2 * i + 1][1] = zip_hi64(acc[i][2], acc[i][3]);
    } else {
      const int32x4_t t01 = vzip1q_s32(acc[i][0], acc[i][1]), t23 = vzip1q_s32(acc[i][2], acc[i][3]);
      const int32x4_t u01 = vzip2q_s32(acc[i][0], acc[i][1]), u23 = vzip2q_s32(acc[i][2], acc[i][3]);
      d[2 * i][0] = zip_lo64(t01, t23);
      d[2 * i][1] = zip_hi64(t01, t23);
      d[2 * i + 1][0] = zip_lo64(u01, u23);
      d[2 * i + 1][1] = zip_hi64(u01, u23);
    }
  }
}

// Rows 2 p0 .. 2 (p0 + NP) - 1 of tile t: every segment's sums scaled into fp32 as in the NEON kernel,
// xs * s * (D - z' Xseg).
template <int NP, int BITS>
void pair_tile(const Int8LinearArgs& a, int64_t t, int64_t p0, const int8_t* xi) {
  constexpr int R = 2 * NP;
  const int64_t KB = a.Kp / kBlockK, group = a.G == 1 ? a.Kp : a.K / a.G, ldi = pair_stride(a.Kp);
  const uint8_t* wt = a.w + t * KB * kTileN * BITS * 4;
  const int64_t m0 = 2 * p0;
  float32x4_t out[R][2];
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < 2; ++h) out[r][h] = a.bias ? vld1q_f32(a.bias + t * kTileN + 4 * h) : vdupq_n_f32(0.0f);
  for (int64_t k0 = 0; k0 < a.Kp; k0 += a.segment) {
    const int64_t k1 = std::min(a.Kp, k0 + a.segment), g = k0 / group;
    int32x4_t d[R][2];
    segment_pairs<NP, BITS>(wt, xi + p0 * ldi, ldi, k0 / kBlockK, k1 / kBlockK, d);
    float32x4_t s[2], z[2];
    for (int h = 0; h < 2; ++h) {
      s[h] = vld1q_f32(a.scales + tile_param_offset(a.G, t, g) + 4 * h);
      z[h] = a.zeros ? vld1q_f32(a.zeros + tile_param_offset(a.G, t, g) + 4 * h) : vdupq_n_f32(a.zero);
    }
    for (int r = 0; r < R; ++r) {
      const int64_t m = m0 + r;
      int32_t xseg = 0;
      for (int64_t b = k0 / kBlockK; b < k1 / kBlockK; ++b) xseg += a.xblock[m * KB + b];
      const float xscale = a.xscale[a.act_per_block ? m * KB + k0 / kBlockK : m];
      for (int h = 0; h < 2; ++h) {
        const float32x4_t corr = vfmsq_f32(vcvtq_f32_s32(d[r][h]), z[h], vdupq_n_f32(static_cast<float>(xseg)));
        out[r][h] = vfmaq_f32(out[r][h], corr, vmulq_n_f32(s[h], xscale));
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < 2; ++h) vst1q_f32(a.out + (m0 + r) * a.N + t * kTileN + 4 * h, out[r][h]);
}

template <int BITS>
void pair_tiles(const Int8LinearArgs& a, int64_t t0, int64_t t1, const int8_t* xi, int64_t pairs) {
  for (int64_t t = t0; t < t1; ++t) {
    int64_t p = 0;
    for (; p + kPairs <= pairs; p += kPairs) pair_tile<kPairs, BITS>(a, t, p, xi);
    for (; p < pairs; ++p) pair_tile<1, BITS>(a, t, p, xi);
  }
}

}  // namespace

void linear_float_tiles_i8mm(const FloatLinearArgs& a, int64_t t0, int64_t t1) { linear_float_tiles_neon(a, t0, t1); }

void linear_int8_tiles_i8mm(const Int8LinearArgs& a, int64_t t0, int64_t t1) {
  const int64_t pairs = a.M / 2;
  if (pairs > 0) {
    // This thread's copy, once a call (M x Kp bytes against M x Kp x 8 multiply-adds a tile).
    thread_local std::vector<int8_t> xi_buf;
    const int64_t need = pairs * pair_stride(a.Kp) + 64;
    if (static_cast<int64_t>(xi_buf.size()) < need) xi_buf.resize(need);
    int8_t* xi = reinterpret_cast<int8_t*>((reinterpret_cast<uintptr_t>(xi_buf.data()) + 63) & ~uintptr_t{63});
    interleave_pairs(a, pairs, xi);
    if (a.bits == 4)
      pair_tiles<4>(a, t0, t1, xi, pairs);
    else
      pair_tiles<8>(a, t0, t1, xi, pairs);
  }
  if (a.M % 2) {  // the last row alone, on the sdot kernel: the same arguments, viewed from that row
    const int64_t m = a.M - 1, KB = a.Kp / kBlockK;
    Int8LinearArgs last = a;
    last.M = 1;
    last.xq = a.xq + m * a.ldq;
    last.xscale = a.xscale + m * (a.act_per_block ? KB : 1);
    last.xblock = a.xblock + m * KB;
    last.out = a.out + m * a.N;
    linear_int8_tiles_neon(last, t0, t1);
  }
}

}  // namespace qk::cpu
