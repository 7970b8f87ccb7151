// AVX-512 VNNI quantized-linear kernels for int8 activations (layouts and math in qlinear.h):
// vpdpbusd (u8 x s8, 4-way, accumulated in s32, no intermediate saturation) replaces the
// maddubs/madd pair. Float activations use the AVX-512 kernel (a VNNI CPU has AVX-512).
// Compiled alone with the avx512vnni flags of setup.py; only called when cpuid + XCR0 report it.
//
// int4: the unpacked nibbles are the u8 operand, the activations the s8 one; with per-row activation
//   scales the segments are scaled in lane form (int4_tile_lanes), per-block scales use int4_tile_512
//   (qlinear_x86.h).
// int8: the stored bytes q - 128 are the s8 operand and the activations, biased to x + 128, the u8
//   one; the epilogue takes out 128 times the weights' segment sums (int8w_tile).
// Test: tests/test_cpu_backend.py (isa="avx512_vnni", skipped on CPUs without it).
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized (a header false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/qlinear_x86.h"

namespace qk::cpu {
namespace {

// u8 x s8 products of a block, four to a 32-bit lane, added in one instruction each (see qlinear_x86.h).
inline __m512i dot_vnni(__m512i acc, __m512i lo, __m512i xl, __m512i hi, __m512i xh) {
  return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc, lo, xl), hi, xh);
}

// The sums of xq over each integer segment of every row, as fp32 [M][nseg] (this thread's copy: a
// chunk's M x Kp / 32 additions), for the zero-point terms of the tile kernels below.
inline int64_t segment_sums(const Int8LinearArgs& a, std::vector<float>& xseg) {
  const int64_t KB = a.Kp / kBlockK, nseg = (a.Kp + a.segment - 1) / a.segment;
  if (static_cast<int64_t>(xseg.size()) < a.M * nseg) xseg.resize(a.M * nseg);
  for (int64_t m = 0; m < a.M; ++m)
    for (int64_t s = 0; s < nseg; ++s) {
      int32_t sum = 0;
      for (int64_t b = s * a.segment / kBlockK; b < std::min(KB, (s + 1) * a.segment / kBlockK); ++b)
        sum += a.xblock[m * KB + b];
      xseg[m * nseg + s] = static_cast<float>(sum);
    }
  return nseg;
}

// W8A8: the activations are the unsigned operand, as x + 128 (a per-call copy, xu), and the stored
// bytes w' = q - 128 the signed one, unchanged. vpdpbusd then sums x w' + 128 W', W' being the
// segment's sum of w' for the channel (wsum holds 128 W', computed once a tile and call);
// subtracting it leaves sum x w' = sum q x - 128 X, whose zero point is z' = z - 128 as stored. int32
// sums wrap and the true value fits (int8_segment_length), so the difference is exact even where
// the biased sum alone would overflow. The previous form, weights as the unsigned operand, flipped
// each weight vector's top bit (one vpxord per four vpdpbusd, on the same two ports). Through the op
// on the GPU host's Xeon (two threads, interleaved with quantize_dynamic, eight rotated copies,
// `.gpu_diag/s24_w8.py`): 4096x11008 m = 32 6.94 against 7.09 ms, m = 128 22.76 against 24.87,
// 11008x4096 m = 32 8.69 against 9.69. 2 or 3 rows a pass instead of 4 were within 1% on 4096x11008
// and 13-18% slower on 11008x4096.
inline int64_t xu_stride(int64_t Kp) { return Kp + 64; }  // a cache line more than a row (L1 sets)

// GCC's loop-header copying (-ftree-ch) kept the W8A8 loops' carried accumulators in two register
// sets: two zmm moves per vpdpbusd and stack stores, 59 instructions a block of 16 vpdpbusd against
// 29 without it (GCC 12). It is off for the W8A8 functions only. On the GPU host's Xeon
// (qlinear_bench w8a8 isa=avx512vnni, one core, five interleaved rounds, `.gpu_diag/s25_run6.sh`)
// they took 0.56-1.09x the time (0.72-0.82x in most rounds) at 8-128 rows of 4096x11008, 11008x4096
// and 8192x28672. Building the whole file without it slowed the W4A8 kernel and the GEMV instead.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-tree-ch")
#endif
template <int MR>
void int8w_tile(const Int8LinearArgs& a, int64_t t, int64_t m0,
                const uint8_t* xu,      // u8 [MR][xu_stride(Kp)], rows m0.., xq + 128
                const float* xseg,      // fp32 [MR][nseg], rows m0.., sums of xq over each segment
                int64_t nseg,
                const int32_t* wsum) {  // int32 [nseg][8], tile t's 128 W' per segment and channel
  const int64_t KB = a.Kp / kBlockK, ldu = xu_stride(a.Kp), group = a.G == 1 ? a.Kp : a.K / a.G;
  const uint8_t* wt = a.w + t * KB * kTileN * kBlockK;
  __m256 out[MR];
  const __m256 b = a.bias ? _mm256_loadu_ps(a.bias + t * kTileN) : _mm256_setzero_ps();
  for (int i = 0; i < MR; ++i) out[i] = b;
  int64_t s = 0;
  for (int64_t k0 = 0; k0 < a.Kp; k0 += a.segment, ++s) {
    const int64_t k1 = std::min(a.Kp, k0 + a.segment);
    __m512i acc[MR][4];  // acc[i][p]: channel 2p in the low 256 bits, 2p + 1 in the high
    for (int i = 0; i < MR; ++i)
      for (int p = 0; p < 4; ++p) acc[i][p] = _mm512_setzero_si512();
    for (int64_t kb = k0 / kBlockK; kb < k1 / kBlockK; ++kb) {
      __m512i xv[MR];
      for (int i = 0; i < MR; ++i)
        xv[i] = _mm512_broadcast_i64x4(
            _mm256_load_si256(reinterpret_cast<const __m256i*>(xu + i * ldu + kb * kBlockK)));
      for (int p = 0; p < 4; ++p) {
        const __m512i w = _mm512_loadu_si512(wt + (kb * kTileN + 2 * p) * kBlockK);
        for (int i = 0; i < MR; ++i) acc[i][p] = _mm512_dpbusd_epi32(acc[i][p], xv[i], w);
      }
    }
    const int64_t g = k0 / group;
    const __m256i w128 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wsum + s * kTileN));
    const __m256 sc = _mm256_loadu_ps(a.scales + tile_param_offset(a.G, t, g));
    const __m256 z = tile_zeros(a.zeros, false, a.zero, a.G, t, g);
    for (int i = 0; i < MR; ++i) {
      const __m256i d = _mm256_sub_epi32(hsum8_512(acc[i]), w128);
      const float xscale = a.xscale[a.act_per_block ? (m0 + i) * KB + k0 / kBlockK : m0 + i];
      const __m256 corr = _mm256_fnmadd_ps(z, _mm256_set1_ps(xseg[i * nseg + s]), _mm256_cvtepi32_ps(d));
      out[i] = _mm256_fmadd_ps(corr, _mm256_mul_ps(sc, _mm256_set1_ps(xscale)), out[i]);
    }
  }
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(a.out + (m0 + i) * a.N + t * kTileN, out[i]);
}

// Rows a pass over the tiles: the activation copy holds at most this many (the AVX2 kernels copy 64-row
// panels), so a long prefill does not leave M x K bytes behind in every thread. Each panel recomputes
// its tiles' weight sums: 1/256 of its multiplies.
constexpr int64_t kRowPanel = 256;

void int8w_tiles(const Int8LinearArgs& a, int64_t t0, int64_t t1) {
  constexpr int MR = 4;
  thread_local std::vector<uint8_t> xu_buf;
  thread_local std::vector<float> xseg;
  thread_local std::vector<int32_t> wsum;
  const int64_t KB = a.Kp / kBlockK, ldu = xu_stride(a.Kp);
  const int64_t nseg = segment_sums(a, xseg);
  const int64_t panel_rows = std::min(a.M, kRowPanel);
  if (static_cast<int64_t>(xu_buf.size()) < panel_rows * ldu + 64) xu_buf.resize(panel_rows * ldu + 64);
  if (static_cast<int64_t>(wsum.size()) < nseg * kTileN) wsum.resize(nseg * kTileN);
  uint8_t* xu = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(xu_buf.data()) + 63) & ~uintptr_t{63});
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t p0 = 0; p0 < a.M; p0 += kRowPanel) {
    const int64_t p1 = std::min(a.M, p0 + kRowPanel);
    for (int64_t m = p0; m < p1; ++m)
      for (int64_t k = 0; k < a.Kp; k += kBlockK)
        _mm256_store_si256(reinterpret_cast<__m256i*>(xu + (m - p0) * ldu + k),
                           _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.xq + m * a.ldq + k)), flip));
    for (int64_t t = t0; t < t1; ++t) {
      const uint8_t* wt = a.w + t * KB * kTileN * kBlockK;
      int64_t s = 0;
      for (int64_t k0 = 0; k0 < a.Kp; k0 += a.segment, ++s) {  // 128 W' of each segment
        const int64_t k1 = std::min(a.Kp, k0 + a.segment);
        __m512i acc[4];
        for (int p = 0; p < 4; ++p) acc[p] = _mm512_setzero_si512();
        for (int64_t kb = k0 / kBlockK; kb < k1 / kBlockK; ++kb)
          for (int p = 0; p < 4; ++p)
            acc[p] = _mm512_dpbusd_epi32(acc[p], ones, _mm512_loadu_si512(wt + (kb * kTileN + 2 * p) * kBlockK));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(wsum.data() + s * kTileN), _mm256_slli_epi32(hsum8_512(acc), 7));
      }
      int64_t m = p0;
      for (; m + MR <= p1; m += MR)
        int8w_tile<MR>(a, t, m, xu + (m - p0) * ldu, xseg.data() + m * nseg, nseg, wsum.data());
      for (; m < p1; ++m) int8w_tile<1>(a, t, m, xu + (m - p0) * ldu, xseg.data() + m * nseg, nseg, wsum.data());
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

// W4A8 with per-row activation scales: the segment epilogue in lane form. acc[i][p] holds, per
// 128-bit lane, four partial sums of one channel ([c0|c4|c1|c5], [c2|c6|c3|c7]: the layout's lanes).
// Each segment adds (acc - Z_p Xseg) * S_p into fp32 lanes, S_p being the group's scales spread over
// the lanes and Z_p the zero points in each channel's first lane only (the term is subtracted once
// a channel), so the horizontal sum to 8 channels and the row's activation scale come once a row,
// not once a segment. int4_tile_512's per-segment epilogue (hsum4 + int8_epilogue, with the activation
// block sums added up per tile) cost more than the segment's 16 vpdpbusd at g128: on the GPU host's
// Xeon (qlinear_bench w4a8 isa=avx512vnni, M = 32, K x N = 4096x11008 g128, four alternating rounds
// on one core) this ran 14.3-20.7 ms against 24.8-33.4 (sym) and 17.7-20.9 against 26.9-31.3
// (zero points); MR = 2, 3 and 6 were no faster than 4.
template <int MR>
void int4_tile_lanes(const Int8LinearArgs& a, int64_t t, int64_t m0,
                     const float* xseg,  // fp32 [MR][nseg], rows m0.., sums of xq over each segment
                     int64_t nseg) {
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
    int4_segment_512<MR>(a, wt, m0, k0 / kBlockK, k1 / kBlockK, acc, dot_vnni);
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

// Tiles [t0, t1) of a W4A8 layer with per-row activation scales (int4_tile_lanes).
void int4_tiles_lanes(const Int8LinearArgs& a, int64_t t0, int64_t t1) {
  constexpr int MR = 4;
  thread_local std::vector<float> xseg;
  const int64_t nseg = segment_sums(a, xseg);
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
  if (a.bits == 8) return int8w_tiles(a, t0, t1);
  if (!a.act_per_block) return int4_tiles_lanes(a, t0, t1);
  for (int64_t t = t0; t < t1; ++t) {
    int64_t m = 0;
    for (; m + 4 <= a.M; m += 4) int4_tile_512<4>(a, t, m, dot_vnni);
    for (; m < a.M; ++m) int4_tile_512<1>(a, t, m, dot_vnni);
  }
}

}  // namespace qk::cpu
