// AVX-512 (F/BW/VL/DQ) quantized-linear kernels (layouts and math in qlinear.h). Compiled alone
// with the avx512 flags of setup.py; only called when cpuid + XCR0 report AVX-512 (which implies
// the AVX2 path is usable too: an odd last float tile is handed to it).
//
// * float activations: two tiles (16 channels) per zmm vector; codes masked in place and
//   converted (pre-shifted), FMA'd with broadcast activations. Several rows: four tiles x 8 rows a
//   register block (float_tile_quad), over L2-sized groups of tiles. A single row (GEMV) runs four
//   tiles a pass with software prefetch of the four weight streams (float_tiles_row).
// * int8 activations: vpmaddubsw/vpmaddwd on 64 bytes = two int4 tile columns (j, j+1) at once;
//   int8 weights use |w| x (x negated where w < 0) since AVX-512 has no vpsignb.
// Test: tests/test_cpu_backend.py (isa="avx512", skipped on CPUs without AVX-512).
// GCC 12's AVX-512 headers self-initialise their "undefined" vectors (__Y = __Y), which -Wall
// reports as maybe-uninitialized at every intrinsic: a header false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <algorithm>

#include "cpu/qlinear_x86.h"

namespace qk::cpu {
namespace {

// Group g's scales (or zero points) of tiles t and t + 1, from the tile-major [N/8][G][8] layout.
inline __m512 tile_pair_params(const void* p, bool half, int64_t G, int64_t t, int64_t g) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(load_params8(p, half, tile_param_offset(G, t, g))),
                            load_params8(p, half, tile_param_offset(G, t + 1, g)), 1);
}

template <int BITS, int MR>
void float_tile_pair(const FloatLinearArgs& a, int64_t t, int64_t m0) {
  constexpr int P = 32 / BITS;
  constexpr uint32_t kMask = (1u << BITS) - 1;
  constexpr int NA = MR >= 4 ? 1 : (MR == 1 ? 4 : 2);
  const int64_t K = a.K, rows = K / P, grows = rows / a.G;
  const uint32_t* w0 = a.w + t * rows * kTileN;
  const uint32_t* w1 = w0 + rows * kTileN;
  const float* x0 = a.xs + m0 * a.ldx;
  const int64_t n0 = t * kTileN;
  __m512 out[MR];
  const __m512 b = a.bias ? _mm512_loadu_ps(a.bias + n0) : _mm512_setzero_ps();
  for (int i = 0; i < MR; ++i) out[i] = b;
  for (int64_t g = 0; g < a.G; ++g) {
    __m512 acc[MR][NA];
    for (int i = 0; i < MR; ++i)
      for (int c = 0; c < NA; ++c) acc[i][c] = _mm512_setzero_ps();
    for (int64_t r = g * grows; r < (g + 1) * grows; ++r) {
      const __m512i w = _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + r * kTileN))),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1 + r * kTileN)), 1);
      const float* x = x0 + r * P;
#pragma GCC unroll 8
      for (int j = 0; j < P; ++j) {
        const __m512i qi = j == P - 1 ? _mm512_srli_epi32(w, BITS * j)
                                      : _mm512_and_si512(w, _mm512_set1_epi32(static_cast<int>(kMask << (BITS * j))));
        const __m512 q = _mm512_cvtepi32_ps(qi);
        for (int i = 0; i < MR; ++i)
          acc[i][j % NA] = _mm512_fmadd_ps(q, _mm512_set1_ps(x[i * a.ldx + j]), acc[i][j % NA]);
      }
    }
    const __m512 s = tile_pair_params(a.scales, a.params_fp16, a.G, t, g);
    const __m512 z = a.zeros ? tile_pair_params(a.zeros, a.params_fp16, a.G, t, g) : _mm512_set1_ps(a.zero);
    for (int i = 0; i < MR; ++i) {
      __m512 A = acc[i][0];
      for (int c = 1; c < NA; ++c) A = _mm512_add_ps(A, acc[i][c]);
      const __m512 xsum = _mm512_set1_ps(a.xsum[(m0 + i) * a.G + g]);
      out[i] = _mm512_fmadd_ps(s, _mm512_fnmadd_ps(z, xsum, A), out[i]);
    }
  }
  for (int i = 0; i < MR; ++i) _mm512_storeu_ps(a.out + (m0 + i) * a.N + n0, out[i]);
}

// One row (a GEMV) over NP tile pairs at once, each pair's two weight streams prefetched kAhead word
// rows (1 KiB) ahead, as the AVX2 GEMV does; 8 / NP accumulators a pair keep 8 FMA chains in flight.
// On the GPU host's Xeon (AVX-512, 2026-11-25, `.gpu_diag/s24_gemv.py`: interleaved calls through
// the op, three to twelve rotated weight copies) this ran 8192x28672 g128 in 6.73 against 8.19 ms for
// float_tile_pair<1> on two threads (86% against 71% of the read probe) and 11.80 against 14.24 ms on
// one, 4096x11008 1.20 against 1.38 ms. One pair a pass was 1-6% slower than two; four pairs, or
// 2 KiB ahead, within 1%; one pair 2 KiB ahead 2-3% faster on 8192x28672 but 6% slower on 4096x11008.
constexpr int kGemvPairs = 2;
template <int BITS, int NP>
void float_tiles_row(const FloatLinearArgs& a, int64_t t, int64_t m) {
  constexpr int P = 32 / BITS;
  constexpr uint32_t kMask = (1u << BITS) - 1;
  constexpr int NA = 8 / NP;
  constexpr int64_t kAhead = 32;
  const int64_t rows = a.K / P, grows = rows / a.G;
  const uint32_t* w = a.w + t * rows * kTileN;  // tile t + h starts h * rows word rows further
  const float* xr = a.xs + m * a.ldx;
  __m512 out[NP];
  for (int p = 0; p < NP; ++p) out[p] = a.bias ? _mm512_loadu_ps(a.bias + (t + 2 * p) * kTileN) : _mm512_setzero_ps();
  for (int64_t g = 0; g < a.G; ++g) {
    __m512 acc[NP][NA];
    for (int p = 0; p < NP; ++p)
      for (int c = 0; c < NA; ++c) acc[p][c] = _mm512_setzero_ps();
    for (int64_t r = g * grows; r < (g + 1) * grows; ++r) {
      if (r % 2 == 0)  // a 64-byte line holds two word rows of a tile
        for (int h = 0; h < 2 * NP; ++h)
          _mm_prefetch(reinterpret_cast<const char*>(w + (h * rows + r + kAhead) * kTileN), _MM_HINT_T0);
      __m512i v[NP];
      for (int p = 0; p < NP; ++p)
        v[p] = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + (2 * p * rows + r) * kTileN))),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + ((2 * p + 1) * rows + r) * kTileN)), 1);
      const float* x = xr + r * P;
#pragma GCC unroll 8
      for (int j = 0; j < P; ++j) {
        const __m512 xb = _mm512_set1_ps(x[j]);
        for (int p = 0; p < NP; ++p) {
          const __m512i qi = j == P - 1 ? _mm512_srli_epi32(v[p], BITS * j)
                                        : _mm512_and_si512(v[p], _mm512_set1_epi32(static_cast<int>(kMask << (BITS * j))));
          acc[p][j % NA] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(qi), xb, acc[p][j % NA]);
        }
      }
    }
    const __m512 xsum = _mm512_set1_ps(a.xsum[m * a.G + g]);
    for (int p = 0; p < NP; ++p) {
      const __m512 s = tile_pair_params(a.scales, a.params_fp16, a.G, t + 2 * p, g);
      const __m512 z = a.zeros ? tile_pair_params(a.zeros, a.params_fp16, a.G, t + 2 * p, g) : _mm512_set1_ps(a.zero);
      __m512 A = acc[p][0];
      for (int c = 1; c < NA; ++c) A = _mm512_add_ps(A, acc[p][c]);
      out[p] = _mm512_fmadd_ps(s, _mm512_fnmadd_ps(z, xsum, A), out[p]);
    }
  }
  for (int p = 0; p < NP; ++p) _mm512_storeu_ps(a.out + m * a.N + (t + 2 * p) * kTileN, out[p]);
}

// Tiles t .. t + 3 (two vectors of 16 channels) for MR rows: 2 * MR independent FMA chains, where
// float_tile_pair's 4 rows x 16 channels kept only 4 in flight (half the two FMA pipes' 8 at 4 cycles'
// latency) and spent one code conversion per 4 FMAs instead of one per MR. The running sums live in
// the output (L1) between groups, as in the AVX2 file's float_tile2x6, so only the accumulators
// hold registers.
constexpr int kQuadRows = 8;
template <int BITS, int MR>
void float_tile_quad(const FloatLinearArgs& a, int64_t t, int64_t m0) {
  constexpr int P = 32 / BITS;
  constexpr uint32_t kMask = (1u << BITS) - 1;
  const int64_t rows = a.K / P, grows = rows / a.G;
  const uint32_t* w = a.w + t * rows * kTileN;  // tile t + h starts h * rows word rows further
  const float* x0 = a.xs + m0 * a.ldx;
  float* out = a.out + m0 * a.N + t * kTileN;
  for (int h = 0; h < 2; ++h) {
    const __m512 b = a.bias ? _mm512_loadu_ps(a.bias + (t + 2 * h) * kTileN) : _mm512_setzero_ps();
    for (int i = 0; i < MR; ++i) _mm512_storeu_ps(out + i * a.N + 16 * h, b);
  }
  for (int64_t g = 0; g < a.G; ++g) {
    __m512 acc[MR][2];
    for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int64_t r = g * grows; r < (g + 1) * grows; ++r) {
      __m512i v[2];
      for (int h = 0; h < 2; ++h)
        v[h] = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + (2 * h * rows + r) * kTileN))),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + ((2 * h + 1) * rows + r) * kTileN)), 1);
      const float* x = x0 + r * P;
#pragma GCC unroll 8
      for (int j = 0; j < P; ++j) {
        __m512 q[2];
        for (int h = 0; h < 2; ++h)
          q[h] = _mm512_cvtepi32_ps(j == P - 1 ? _mm512_srli_epi32(v[h], BITS * j)
                                               : _mm512_and_si512(v[h], _mm512_set1_epi32(static_cast<int>(kMask << (BITS * j)))));
        for (int i = 0; i < MR; ++i) {
          const __m512 xb = _mm512_set1_ps(x[i * a.ldx + j]);
          acc[i][0] = _mm512_fmadd_ps(q[0], xb, acc[i][0]);
          acc[i][1] = _mm512_fmadd_ps(q[1], xb, acc[i][1]);
        }
      }
    }
    for (int h = 0; h < 2; ++h) {
      const __m512 s = tile_pair_params(a.scales, a.params_fp16, a.G, t + 2 * h, g);
      const __m512 z = a.zeros ? tile_pair_params(a.zeros, a.params_fp16, a.G, t + 2 * h, g) : _mm512_set1_ps(a.zero);
      for (int i = 0; i < MR; ++i) {
        float* o = out + i * a.N + 16 * h;
        const __m512 xsum = _mm512_set1_ps(a.xsum[(m0 + i) * a.G + g]);
        _mm512_storeu_ps(o, _mm512_fmadd_ps(s, _mm512_fnmadd_ps(z, xsum, acc[i][h]), _mm512_loadu_ps(o)));
      }
    }
  }
}

// Rows m0 .. m0 + MR - 1 of tiles [t0, t1), an even count: quads, then a pair in blocks of at most 4
// rows (float_tile_pair keeps its sums in registers; at 7-8 rows GCC spilled them).
template <int BITS, int MR>
void float_rows(const FloatLinearArgs& a, int64_t t0, int64_t t1, int64_t m0) {
  int64_t t = t0;
  for (; t + 4 <= t1; t += 4) float_tile_quad<BITS, MR>(a, t, m0);
  if (t < t1) {
    int64_t m = m0;
    for (; m + 4 <= m0 + MR; m += 4) float_tile_pair<BITS, 4>(a, t, m);
    switch (m0 + MR - m) {
      case 3: float_tile_pair<BITS, 3>(a, t, m); break;
      case 2: float_tile_pair<BITS, 2>(a, t, m); break;
      case 1: float_tile_pair<BITS, 1>(a, t, m); break;
      default: break;
    }
  }
}

template <int BITS>
void float_tiles(const FloatLinearArgs& a, int64_t t0, int64_t t1) {
  if (a.M == 1) {
    int64_t t = t0;
    for (; t + 2 * kGemvPairs <= t1; t += 2 * kGemvPairs) float_tiles_row<BITS, kGemvPairs>(a, t, 0);
    for (; t + 2 <= t1; t += 2) float_tile_pair<BITS, 1>(a, t, 0);
    if (t < t1) linear_float_tiles_avx2(a, t, t1);
    return;
  }
  // Tiles in groups that stay in the L2 while every row block passes over them; an odd last tile
  // goes to the AVX2 kernels.
  const int64_t tg = std::max<int64_t>(4, l2_tile_group(a.K * kTileN * BITS / 8) / 4 * 4);
  const int64_t te = t0 + (t1 - t0) / 2 * 2;
  for (int64_t g0 = t0; g0 < te; g0 += tg) {
    const int64_t g1 = std::min(te, g0 + tg);
    int64_t m = 0;
    for (; m + kQuadRows <= a.M; m += kQuadRows) float_rows<BITS, kQuadRows>(a, g0, g1, m);
    switch (a.M - m) {
      case 7: float_rows<BITS, 7>(a, g0, g1, m); break;
      case 6: float_rows<BITS, 6>(a, g0, g1, m); break;
      case 5: float_rows<BITS, 5>(a, g0, g1, m); break;
      case 4: float_rows<BITS, 4>(a, g0, g1, m); break;
      case 3: float_rows<BITS, 3>(a, g0, g1, m); break;
      case 2: float_rows<BITS, 2>(a, g0, g1, m); break;
      case 1: float_rows<BITS, 1>(a, g0, g1, m); break;
      default: break;
    }
  }
  if (te < t1) linear_float_tiles_avx2(a, te, t1);
}

// int4 x int8 without VNNI: vpmaddubsw (15 * 127 * 2 fits s16), then vpmaddwd against ones.
template <int MR>
void int4_tile(const Int8LinearArgs& a, int64_t t, int64_t m0) {
  const __m512i ones = _mm512_set1_epi16(1);
  int4_tile_512<MR>(a, t, m0, [ones](__m512i acc, __m512i lo, __m512i xl, __m512i hi, __m512i xh) {
    const __m512i q = _mm512_add_epi16(_mm512_maddubs_epi16(lo, xl), _mm512_maddubs_epi16(hi, xh));
    return _mm512_add_epi32(acc, _mm512_madd_epi16(q, ones));
  });
}

template <int MR>
void int8w_tile(const Int8LinearArgs& a, int64_t t, int64_t m0) {
  const int64_t KB = a.Kp / kBlockK, group = a.G == 1 ? a.Kp : a.K / a.G;
  const int8_t* wt = reinterpret_cast<const int8_t*>(a.w) + t * KB * kTileN * kBlockK;
  const __m512i ones = _mm512_set1_epi16(1), zero = _mm512_setzero_si512();
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
        const __m512i w = _mm512_loadu_si512(wt + (kb * kTileN + 2 * p) * kBlockK);
        const __m512i aw = _mm512_abs_epi8(w);
        const __mmask64 neg = _mm512_movepi8_mask(w);
        for (int i = 0; i < MR; ++i) {
          const __m512i sx = _mm512_mask_sub_epi8(xv[i], neg, zero, xv[i]);
          acc[i][p] = _mm512_add_epi32(acc[i][p], _mm512_madd_epi16(_mm512_maddubs_epi16(aw, sx), ones));
        }
      }
    }
    const int64_t g = k0 / group;
    for (int i = 0; i < MR; ++i) out[i] = int8_epilogue(a, hsum8_512(acc[i]), t, m0 + i, g, k0, k1, out[i]);
  }
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(a.out + (m0 + i) * a.N + t * kTileN, out[i]);
}

}  // namespace

void linear_float_tiles_avx512(const FloatLinearArgs& a, int64_t t0, int64_t t1) {
  if (a.bits == 4)
    float_tiles<4>(a, t0, t1);
  else
    float_tiles<8>(a, t0, t1);
}

void linear_int8_tiles_avx512(const Int8LinearArgs& a, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    int64_t m = 0;
    if (a.bits == 4) {
      for (; m + 2 <= a.M; m += 2) int4_tile<2>(a, t, m);
      if (m < a.M) int4_tile<1>(a, t, m);
    } else {
      for (; m + 2 <= a.M; m += 2) int8w_tile<2>(a, t, m);
      if (m < a.M) int8w_tile<1>(a, t, m);
    }
  }
}

}  // namespace qk::cpu
