// AVX-512 VNNI quantized-linear kernels for int8 activations (layouts and math in qlinear.h):
// vpdpbusd (u8 x s8, 4-way, accumulated in s32, no intermediate saturation) replaces the
// maddubs/madd pair. Float activations use the AVX-512 kernel (a VNNI CPU has AVX-512).
// Compiled alone with the avx512vnni flags of setup.py; only called when cpuid + XCR0 report it.
//
// int4: the unpacked nibbles are the u8 operand, the activations the s8 one; with per-row activation
//   scales the segments are scaled in lane form (int4_tile_lanes), per-block scales use int4_tile.
// int8: the stored bytes are q - 128 (s8); flipping the top bit gives q as u8, so the integer
//   sum is sum(q * x) = sum((q - 128) * x) + 128 * sum(x): the epilogue subtracts (z' + 128) X.
// Test: tests/test_cpu_backend.py (isa="avx512_vnni", skipped on CPUs without it).
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized (a header false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <algorithm>
#include <vector>

#include "cpu/qlinear_x86.h"

namespace qk::cpu {
namespace {

// The integer sums of one segment (blocks [kb0, kb1)) of rows m0 .. m0 + MR - 1 against tile wt:
// acc[i][p] = [j0 | j4 | j1 | j5], [j2 | j6 | j3 | j7] (128-bit lanes of four partial sums each).
template <int MR>
inline void int4_segment(const Int8LinearArgs& a, const uint8_t* wt, int64_t m0, int64_t kb0, int64_t kb1,
                         __m512i (&acc)[MR][2]) {
  const __m512i nib = _mm512_set1_epi8(0x0F);
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
  for (int64_t kb = kb0; kb < kb1; ++kb) {
    __m512i xl[MR], xh[MR];
    for (int i = 0; i < MR; ++i) {
      const int8_t* xp = a.xq + (m0 + i) * a.ldq + kb * kBlockK;
      xl[i] = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xp)));
      xh[i] = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xp + 16)));
    }
    for (int p = 0; p < 2; ++p) {
      const __m512i w = _mm512_loadu_si512(wt + kb * 128 + p * 64);
      const __m512i lo = _mm512_and_si512(w, nib);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), nib);
      for (int i = 0; i < MR; ++i)
        acc[i][p] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[i][p], lo, xl[i]), hi, xh[i]);
    }
  }
}

template <int MR>
void int4_tile(const Int8LinearArgs& a, int64_t t, int64_t m0) {
  const int64_t KB = a.Kp / kBlockK, group = a.G == 1 ? a.Kp : a.K / a.G;
  const uint8_t* wt = a.w + t * KB * 128;
  __m256 out[MR];
  const __m256 b = a.bias ? _mm256_loadu_ps(a.bias + t * kTileN) : _mm256_setzero_ps();
  for (int i = 0; i < MR; ++i) out[i] = b;
  for (int64_t k0 = 0; k0 < a.Kp; k0 += a.segment) {
    const int64_t k1 = std::min(a.Kp, k0 + a.segment);
    __m512i acc[MR][2];
    int4_segment<MR>(a, wt, m0, k0 / kBlockK, k1 / kBlockK, acc);
    const int64_t g = k0 / group;
    for (int i = 0; i < MR; ++i) {
      const __m256i d = hsum4(_mm512_castsi512_si256(acc[i][0]), _mm512_extracti64x4_epi64(acc[i][0], 1),
                              _mm512_castsi512_si256(acc[i][1]), _mm512_extracti64x4_epi64(acc[i][1], 1));
      out[i] = int8_epilogue(a, d, 0.0f, t, m0 + i, g, k0, k1, out[i]);
    }
  }
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(a.out + (m0 + i) * a.N + t * kTileN, out[i]);
}

template <int MR>
void int8w_tile(const Int8LinearArgs& a, int64_t t, int64_t m0) {
  const int64_t KB = a.Kp / kBlockK, group = a.G == 1 ? a.Kp : a.K / a.G;
  const uint8_t* wt = a.w + t * KB * kTileN * kBlockK;
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m256 out[MR];
  const __m256 b = a.bias ? _mm256_loadu_ps(a.bias + t * kTileN) : _mm256_setzero_ps();
  for (int i = 0; i < MR; ++i) out[i] = b;
  for (int64_t k0 = 0; k0 < a.Kp; k0 += a.segment) {
    const int64_t k1 = std::min(a.Kp, k0 + a.segment);
    __m512i acc[MR][4];  // acc[i][p]: channel 2p in the low 256 bits, 2p + 1 in the high
    for (int i = 0; i < MR; ++i)
      for (int p = 0; p < 4; ++p) acc[i][p] = _mm512_setzero_si512();
    for (int64_t kb = k0 / kBlockK; kb < k1 / kBlockK; ++kb) {
      __m512i xv[MR];
      for (int i = 0; i < MR; ++i)
        xv[i] = _mm512_broadcast_i64x4(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.xq + (m0 + i) * a.ldq + kb * kBlockK)));
      for (int p = 0; p < 4; ++p) {
        const __m512i q = _mm512_xor_si512(_mm512_loadu_si512(wt + (kb * kTileN + 2 * p) * kBlockK), flip);
        for (int i = 0; i < MR; ++i) acc[i][p] = _mm512_dpbusd_epi32(acc[i][p], q, xv[i]);
      }
    }
    const int64_t g = k0 / group;
    for (int i = 0; i < MR; ++i) {
      __m256i c[8];
      for (int p = 0; p < 4; ++p) {
        c[2 * p] = _mm512_castsi512_si256(acc[i][p]);
        c[2 * p + 1] = _mm512_extracti64x4_epi64(acc[i][p], 1);
      }
      out[i] = int8_epilogue(a, hsum8(c), 128.0f, t, m0 + i, g, k0, k1, out[i]);
    }
  }
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(a.out + (m0 + i) * a.N + t * kTileN, out[i]);
}


// W4A8 with per-row activation scales: the segment epilogue in lane form. acc[i][p] holds, per
// 128-bit lane, four partial sums of one channel ([c0|c4|c1|c5], [c2|c6|c3|c7]: the layout's lanes).
// Each segment adds (acc - Z_p Xseg) * S_p into fp32 lanes, S_p being the group's scales spread over
// the lanes and Z_p the zero points in each channel's first lane only (the term is subtracted once
// a channel), so the horizontal sum to 8 channels and the row's activation scale come once a row,
// not once a segment. int4_tile's per-segment epilogue (hsum4 + int8_epilogue, with the activation
// block sums added up per tile) cost more than the segment's 16 vpdpbusd at g128: on the GPU host's
// Xeon (qlinear_bench w4a8 isa=avx512vnni, M = 32, 11008x4096 g128, four alternating rounds on one
// core) this ran 14.3-20.7 ms against 24.8-33.4 (sym) and 17.7-20.9 against 26.9-31.3 (zero points);
// MR = 2, 3 and 6 were no faster than 4.
template <int MR>
void int4_tile_lanes(const Int8LinearArgs& a, int64_t t, int64_t m0, const float* xseg, int64_t nseg) {
  const int64_t KB = a.Kp / kBlockK, group = a.G == 1 ? a.Kp : a.K / a.G;
  const uint8_t* wt = a.w + t * KB * 128;
  // Channel of each fp32 lane for the two accumulator layouts, and each channel's first lane.
  const __m512i lanes0 = _mm512_set_epi32(5, 5, 5, 5, 1, 1, 1, 1, 4, 4, 4, 4, 0, 0, 0, 0);
  const __m512i lanes1 = _mm512_set_epi32(7, 7, 7, 7, 3, 3, 3, 3, 6, 6, 6, 6, 2, 2, 2, 2);
  constexpr __mmask16 kFirstLane = 0x1111;
  __m512 f[MR][2];
  for (int i = 0; i < MR; ++i) f[i][0] = f[i][1] = _mm512_setzero_ps();
  int64_t s = 0;
  for (int64_t k0 = 0; k0 < a.Kp; k0 += a.segment, ++s) {
    const int64_t k1 = std::min(a.Kp, k0 + a.segment);
    __m512i acc[MR][2];
    int4_segment<MR>(a, wt, m0, k0 / kBlockK, k1 / kBlockK, acc);
    const int64_t g = k0 / group;
    const __m512 s8 = _mm512_castps256_ps512(_mm256_loadu_ps(a.scales + tile_param_offset(a.G, t, g)));
    const __m512 z8 = _mm512_castps256_ps512(tile_zeros(a.zeros, false, a.zero, a.G, t, g));
    const __m512 S0 = _mm512_permutexvar_ps(lanes0, s8), S1 = _mm512_permutexvar_ps(lanes1, s8);
    const __m512 Z0 = _mm512_maskz_permutexvar_ps(kFirstLane, lanes0, z8);
    const __m512 Z1 = _mm512_maskz_permutexvar_ps(kFirstLane, lanes1, z8);
    for (int i = 0; i < MR; ++i) {
      const __m512 xs = _mm512_set1_ps(xseg[i * nseg + s]);
      f[i][0] = _mm512_fmadd_ps(_mm512_fnmadd_ps(Z0, xs, _mm512_cvtepi32_ps(acc[i][0])), S0, f[i][0]);
      f[i][1] = _mm512_fmadd_ps(_mm512_fnmadd_ps(Z1, xs, _mm512_cvtepi32_ps(acc[i][1])), S1, f[i][1]);
    }
  }
  const __m256 b = a.bias ? _mm256_loadu_ps(a.bias + t * kTileN) : _mm256_setzero_ps();
  for (int i = 0; i < MR; ++i) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(_mm512_extractf32x8_ps(f[i][0], 0), _mm512_extractf32x8_ps(f[i][0], 1)),
                                    _mm256_hadd_ps(_mm512_extractf32x8_ps(f[i][1], 0), _mm512_extractf32x8_ps(f[i][1], 1)));
    _mm256_storeu_ps(a.out + (m0 + i) * a.N + t * kTileN, _mm256_fmadd_ps(h, _mm256_set1_ps(a.xscale[m0 + i]), b));
  }
}

// Tiles [t0, t1) of a W4A8 layer with per-row activation scales (int4_tile_lanes), after the sums
// of xq over each segment of every row (this thread's copy: a chunk's M x K / 32 additions).
void int4_tiles_lanes(const Int8LinearArgs& a, int64_t t0, int64_t t1) {
  constexpr int MR = 4;
  thread_local std::vector<float> xseg;
  const int64_t KB = a.Kp / kBlockK, nseg = (a.Kp + a.segment - 1) / a.segment;
  if (static_cast<int64_t>(xseg.size()) < a.M * nseg) xseg.resize(a.M * nseg);
  for (int64_t m = 0; m < a.M; ++m)
    for (int64_t s = 0; s < nseg; ++s) {
      int32_t sum = 0;
      for (int64_t b = s * a.segment / kBlockK; b < std::min(KB, (s + 1) * a.segment / kBlockK); ++b)
        sum += a.xblock[m * KB + b];
      xseg[m * nseg + s] = static_cast<float>(sum);
    }
  for (int64_t t = t0; t < t1; ++t) {
    int64_t m = 0;
    for (; m + MR <= a.M; m += MR) int4_tile_lanes<MR>(a, t, m, xseg.data() + m * nseg, nseg);
    for (; m < a.M; ++m) int4_tile_lanes<1>(a, t, m, xseg.data() + m * nseg, nseg);
  }
}

}  // namespace

void linear_float_tiles_avx512vnni(const FloatLinearArgs& a, int64_t t0, int64_t t1) {
  linear_float_tiles_avx512(a, t0, t1);
}

void linear_int8_tiles_avx512vnni(const Int8LinearArgs& a, int64_t t0, int64_t t1) {
  if (a.bits == 4 && !a.act_per_block) return int4_tiles_lanes(a, t0, t1);
  for (int64_t t = t0; t < t1; ++t) {
    int64_t m = 0;
    if (a.bits == 4) {
      for (; m + 4 <= a.M; m += 4) int4_tile<4>(a, t, m);
      for (; m < a.M; ++m) int4_tile<1>(a, t, m);
    } else {
      for (; m + 4 <= a.M; m += 4) int8w_tile<4>(a, t, m);
      for (; m < a.M; ++m) int8w_tile<1>(a, t, m);
    }
  }
}

}  // namespace qk::cpu
