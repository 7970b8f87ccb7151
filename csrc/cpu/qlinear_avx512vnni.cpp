// AVX-512 VNNI quantized-linear kernels for int8 activations (layouts and math in qlinear.h):
// vpdpbusd (u8 x s8, 4-way, accumulated in s32, no intermediate saturation) replaces the
// maddubs/madd pair. Float activations use the AVX-512 kernel (a VNNI CPU has AVX-512).
// Compiled alone with the avx512vnni flags of setup.py; only called when cpuid + XCR0 report it.
//
// int4: the unpacked nibbles are the u8 operand, the activations the s8 one.
// int8: the stored bytes are q - 128 (s8); flipping the top bit gives q as u8, so the integer
//   sum is sum(q * x) = sum((q - 128) * x) + 128 * sum(x): the epilogue subtracts (z' + 128) X.
// Test: tests/test_cpu_backend.py (isa="avx512_vnni", skipped on CPUs without it).
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized (a header false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <algorithm>

#include "cpu/qlinear_x86.h"

namespace qk::cpu {
namespace {

template <int MR>
void int4_tile(const Int8LinearArgs& a, int64_t t, int64_t m0) {
  const int64_t KB = a.Kp / kBlockK, group = a.G == 1 ? a.Kp : a.K / a.G;
  const uint8_t* wt = a.w + t * KB * 128;
  const __m512i nib = _mm512_set1_epi8(0x0F);
  __m256 out[MR];
  const __m256 b = a.bias ? _mm256_loadu_ps(a.bias + t * kTileN) : _mm256_setzero_ps();
  for (int i = 0; i < MR; ++i) out[i] = b;
  for (int64_t k0 = 0; k0 < a.Kp; k0 += a.segment) {
    const int64_t k1 = std::min(a.Kp, k0 + a.segment);
    __m512i acc[MR][2];  // [j0 | j4 | j1 | j5], [j2 | j6 | j3 | j7] (128-bit lanes)
    for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
    for (int64_t kb = k0 / kBlockK; kb < k1 / kBlockK; ++kb) {
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

}  // namespace

void linear_float_tiles_avx512vnni(const FloatLinearArgs& a, int64_t t0, int64_t t1) {
  linear_float_tiles_avx512(a, t0, t1);
}

void linear_int8_tiles_avx512vnni(const Int8LinearArgs& a, int64_t t0, int64_t t1) {
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
