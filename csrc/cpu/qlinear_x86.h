// Helpers shared by the x86 kernel files (qlinear_avx2.cpp, qlinear_avx512.cpp,
// qlinear_avx512vnni.cpp). Each file compiles them with its own flags; the anonymous namespace
// gives every file its own private copy, so the linker can never hand the AVX2 file a copy that was
// compiled with AVX-512 instructions.
#pragma once

#include <immintrin.h>

#include <algorithm>

#include "cpu/qlinear.h"

namespace qk::cpu {
namespace {

// Four s32 vectors, a_j holding partial sums of channel j in its low 128-bit lane and of channel
// j + 4 in its high lane -> the 8 channel sums in order.
inline __m256i hsum4(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
  return _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
}

// Eight s32 vectors, a[c] holding the partial sums of channel c in all lanes -> the 8 sums in order.
inline __m256i hsum8(const __m256i* a) {
  const __m256i h0 = hsum4(a[0], a[1], a[2], a[3]), h1 = hsum4(a[4], a[5], a[6], a[7]);
  const __m128i lo = _mm_add_epi32(_mm256_castsi256_si128(h0), _mm256_extracti128_si256(h0, 1));
  const __m128i hi = _mm_add_epi32(_mm256_castsi256_si128(h1), _mm256_extracti128_si256(h1, 1));
  return _mm256_set_m128i(hi, lo);
}

// How many consecutive tiles of `tile_bytes` weight bytes each a GEMM of several rows works through
// together: every row block re-reads them, so they should stay in the L2 (256 KiB of it, a budget
// that leaves room for the activations on every x86 core these kernels target).
inline int64_t l2_tile_group(int64_t tile_bytes) {
  constexpr int64_t kL2Budget = 256 << 10;
  return std::max<int64_t>(1, kL2Budget / std::max<int64_t>(1, tile_bytes));
}

// The 8 values at offset `off` of a tile-major scales / zeros array held as fp32, or as fp16 bits
// where `half` (converted by F16C, which every path using this header has).
inline __m256 load_params8(const void* p, bool half, int64_t off) {
  if (!half) return _mm256_loadu_ps(static_cast<const float*>(p) + off);
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + off)));
}

// Tile t's 8 zero points of group g, or `zero` in every lane where the layer has no zeros array
// (every zero point equal, qlinear.h); fp16 values where `half`.
inline __m256 tile_zeros(const void* zeros, bool half, float zero, int64_t G, int64_t t, int64_t g) {
  return zeros ? load_params8(zeros, half, tile_param_offset(G, t, g)) : _mm256_set1_ps(zero);
}

// Adds one segment [k0, k1) of row m to out (tile t, weight group g): d holds the 8 channels'
// integer sums.
inline __m256 int8_epilogue(const Int8LinearArgs& a, __m256i d, int64_t t, int64_t m, int64_t g,
                            int64_t k0, int64_t k1, __m256 out) {
  const int64_t KB = a.Kp / kBlockK;
  int32_t xseg = 0;
  for (int64_t b = k0 / kBlockK; b < k1 / kBlockK; ++b) xseg += a.xblock[m * KB + b];
  const float xscale = a.xscale[a.act_per_block ? m * KB + k0 / kBlockK : m];
  const __m256 s = _mm256_mul_ps(_mm256_loadu_ps(a.scales + tile_param_offset(a.G, t, g)), _mm256_set1_ps(xscale));
  const __m256 z = tile_zeros(a.zeros, false, a.zero, a.G, t, g);
  const __m256 corr = _mm256_fnmadd_ps(z, _mm256_set1_ps(static_cast<float>(xseg)), _mm256_cvtepi32_ps(d));
  return _mm256_fmadd_ps(corr, s, out);
}


// ---- 512-bit int4 x int8 tiles (instantiated only by qlinear_avx512.cpp and qlinear_avx512vnni.cpp,
// each with its own flags; the AVX2 file includes this header but never instantiates them) ----------

// The 8 channel sums of four s32 vectors holding channel 2p in the low 256 bits of acc[p] and
// 2p + 1 in the high (the int8-weight tiles' accumulators).
template <int P = 4>
inline __m256i hsum8_512(const __m512i (&acc)[P]) {
  static_assert(P == 4, "four vectors of two channels");
  __m256i c[8];
  for (int p = 0; p < 4; ++p) {
    c[2 * p] = _mm512_castsi512_si256(acc[p]);
    c[2 * p + 1] = _mm512_extracti64x4_epi64(acc[p], 1);
  }
  return hsum8(c);
}

// The integer sums of one segment (blocks [kb0, kb1)) of rows m0 .. m0 + MR - 1 against tile wt:
// acc[i][p] = [j0 | j4 | j1 | j5], [j2 | j6 | j3 | j7] (128-bit lanes of four partial sums each).
// dot(acc, lo, xl, hi, xh) adds, per 32-bit lane, the u8 x s8 products lo * xl + hi * xh.
template <int MR, class Dot>
inline void int4_segment_512(const Int8LinearArgs& a, const uint8_t* wt, int64_t m0, int64_t kb0, int64_t kb1,
                             __m512i (&acc)[MR][2], Dot dot) {
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
      for (int i = 0; i < MR; ++i) acc[i][p] = dot(acc[i][p], lo, xl[i], hi, xh[i]);
    }
  }
}

// W4A8 rows m0 .. m0 + MR - 1 of tile t, segment by segment (int4_segment_512), each segment's sums
// reduced to the 8 channels and scaled by int8_epilogue.
template <int MR, class Dot>
void int4_tile_512(const Int8LinearArgs& a, int64_t t, int64_t m0, Dot dot) {
  const int64_t KB = a.Kp / kBlockK, group = a.G == 1 ? a.Kp : a.K / a.G;
  const uint8_t* wt = a.w + t * KB * 128;
  __m256 out[MR];
  const __m256 b = a.bias ? _mm256_loadu_ps(a.bias + t * kTileN) : _mm256_setzero_ps();
  for (int i = 0; i < MR; ++i) out[i] = b;
  for (int64_t k0 = 0; k0 < a.Kp; k0 += a.segment) {
    const int64_t k1 = std::min(a.Kp, k0 + a.segment);
    __m512i acc[MR][2];
    int4_segment_512<MR>(a, wt, m0, k0 / kBlockK, k1 / kBlockK, acc, dot);
    const int64_t g = k0 / group;
    for (int i = 0; i < MR; ++i) {
      const __m256i d = hsum4(_mm512_castsi512_si256(acc[i][0]), _mm512_extracti64x4_epi64(acc[i][0], 1),
                              _mm512_castsi512_si256(acc[i][1]), _mm512_extracti64x4_epi64(acc[i][1], 1));
      out[i] = int8_epilogue(a, d, t, m0 + i, g, k0, k1, out[i]);
    }
  }
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(a.out + (m0 + i) * a.N + t * kTileN, out[i]);
}

}  // namespace
}  // namespace qk::cpu
