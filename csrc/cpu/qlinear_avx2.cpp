// AVX2 + FMA quantized-linear kernels (layouts and math in qlinear.h). Compiled alone with
// -mavx2 -mfma -mf16c; only called when cpuid + XCR0 report AVX2 (cpu_features.cpp).
//
// * float activations: one tile = 8 output channels = one fp32 vector. Per packed word row the 8
//   codes of each channel are masked in place and converted (pre-shifted nibbles/bytes, see
//   qlinear.h), then FMA'd with broadcast activations of up to kMaxRows rows (register tile
//   rows x 8 channels); group scales and zero points are applied once per group.
// * int8 activations: vpmaddubsw (u8 x s8 -> s16 pairs) + vpmaddwd against ones (-> s32). Int4
//   codes are unsigned and small (15 * 127 * 2 fits s16); int8 codes use the sign trick
//   (|w| as u8 times sign(x, w)), so no product pair can saturate.
// Limits: N % 8 == 0; K as the layouts state. Test: tests/test_cpu_backend.py (isa="avx2");
// benchmark: benchmarks/cpu_gemm.py.
#include <algorithm>

#include "cpu/qlinear_x86.h"

namespace qk::cpu {
namespace {

// Tiles are visited in groups whose weights stay in L2 while every block of rows passes over them
// (the rows' activations then stay in L1 across the group's tiles).
// How far ahead (in 32-column blocks) the int8-activation kernels prefetch their weights; a
// prefetch past the end of the weights is harmless (prefetches do not fault).
constexpr int64_t kPrefetchBlocks = 32;
// The column/channel passes of the int8-activation kernels run over chunks of this many blocks
// (2-4 KiB of a tile's weights), so that every pass after the first reads L1.
constexpr int64_t kChunkBlocks = 16;

inline int64_t l2_tile_group(int64_t tile_bytes) {
  constexpr int64_t kL2Budget = 256 << 10;
  return std::max<int64_t>(1, kL2Budget / std::max<int64_t>(1, tile_bytes));
}

template <int BITS, int MR>
void float_tile(const FloatLinearArgs& a, int64_t t, int64_t m0) {
  constexpr int P = 32 / BITS;
  constexpr uint32_t kMask = (1u << BITS) - 1;
  // Independent FMA chains: at least 8 in flight (2 FMA ports x 4 cycles latency) where registers allow.
  constexpr int NA = MR >= 8 ? 1 : (MR >= 4 ? 2 : 4);
  const int64_t K = a.K, rows = K / P, grows = rows / a.G;
  const uint32_t* wt = a.w + t * rows * kTileN;
  const float* x0 = a.xs + m0 * a.ldx;
  float* out = a.out + m0 * a.N + t * kTileN;  // the running sums live in the output (L1) between groups
  const __m256 b = a.bias ? _mm256_loadu_ps(a.bias + t * kTileN) : _mm256_setzero_ps();
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(out + i * a.N, b);
  for (int64_t g = 0; g < a.G; ++g) {
    __m256 acc[MR][NA];
    for (int i = 0; i < MR; ++i)
      for (int c = 0; c < NA; ++c) acc[i][c] = _mm256_setzero_ps();
    for (int64_t r = g * grows; r < (g + 1) * grows; ++r) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + r * kTileN));
      const float* x = x0 + r * P;
#pragma GCC unroll 8
      for (int j = 0; j < P; ++j) {
        const __m256i qi = j == P - 1 ? _mm256_srli_epi32(w, BITS * j)
                                      : _mm256_and_si256(w, _mm256_set1_epi32(static_cast<int>(kMask << (BITS * j))));
        const __m256 q = _mm256_cvtepi32_ps(qi);
        for (int i = 0; i < MR; ++i)
          acc[i][j % NA] = _mm256_fmadd_ps(q, _mm256_broadcast_ss(x + i * a.ldx + j), acc[i][j % NA]);
      }
    }
    const __m256 s = _mm256_loadu_ps(a.scales + g * a.N + t * kTileN);
    const __m256 z = _mm256_loadu_ps(a.zeros + g * a.N + t * kTileN);
    for (int i = 0; i < MR; ++i) {
      __m256 A = acc[i][0];
      for (int c = 1; c < NA; ++c) A = _mm256_add_ps(A, acc[i][c]);
      const __m256 xsum = _mm256_set1_ps(a.xsum[(m0 + i) * a.G + g]);
      _mm256_storeu_ps(out + i * a.N, _mm256_fmadd_ps(s, _mm256_fnmadd_ps(z, xsum, A), _mm256_loadu_ps(out + i * a.N)));
    }
  }
}

template <int BITS>
void float_tiles(const FloatLinearArgs& a, int64_t t0, int64_t t1) {
  const int64_t tg = l2_tile_group(a.K * kTileN * BITS / 8);
  for (int64_t g0 = t0; g0 < t1; g0 += tg) {
    const int64_t g1 = std::min(t1, g0 + tg);
    int64_t m = 0;
    for (; m + 8 <= a.M; m += 8)
      for (int64_t t = g0; t < g1; ++t) float_tile<BITS, 8>(a, t, m);
    for (int64_t t = g0; t < g1; ++t) {
      int64_t mt = m;
      if (mt + 4 <= a.M) {
        float_tile<BITS, 4>(a, t, mt);
        mt += 4;
      }
      switch (a.M - mt) {
        case 3: float_tile<BITS, 3>(a, t, mt); break;
        case 2: float_tile<BITS, 2>(a, t, mt); break;
        case 1: float_tile<BITS, 1>(a, t, mt); break;
        default: break;
      }
    }
  }
}

// One channel column j (channels j and j + 4) at a time, for MR rows: the unpacked nibbles are
// reused by every row, and the s16 pair sums of up to 4 blocks (4 * 2 * 15 * 127 * 2 < 2^15) are
// accumulated before one vpmaddwd widens them.
template <int MR>
void int4_tile(const Int8LinearArgs& a, int64_t t, int64_t m0) {
  const int64_t KB = a.Kp / kBlockK, group = a.G == 1 ? a.Kp : a.K / a.G;
  const uint8_t* wt = a.w + t * KB * 128;
  const __m256i nib = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256 out[MR];
  const __m256 b = a.bias ? _mm256_loadu_ps(a.bias + t * kTileN) : _mm256_setzero_ps();
  for (int i = 0; i < MR; ++i) out[i] = b;
  for (int64_t k0 = 0; k0 < a.Kp; k0 += a.segment) {
    const int64_t k1 = std::min(a.Kp, k0 + a.segment), kb0 = k0 / kBlockK, kb1 = k1 / kBlockK;
    __m256i sums[MR][4];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < 4; ++j) sums[i][j] = _mm256_setzero_si256();
    for (int64_t q0 = kb0; q0 < kb1; q0 += kChunkBlocks) {
      const int64_t q1 = std::min(kb1, q0 + kChunkBlocks);
      for (int j = 0; j < 4; ++j) {
        __m256i acc[MR];
        for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_si256();
        for (int64_t kc = q0; kc < q1; kc += 4) {
          const int64_t kc1 = std::min(q1, kc + 4);
          __m256i a16[MR];
          for (int i = 0; i < MR; ++i) a16[i] = _mm256_setzero_si256();
          for (int64_t kb = kc; kb < kc1; ++kb) {
            // The column passes read each block with a 128-byte stride, which the hardware
            // prefetchers do not follow: fetch the block kPrefetchBlocks ahead on the first pass.
            if (j == 0) {
              _mm_prefetch(reinterpret_cast<const char*>(wt + (kb + kPrefetchBlocks) * 128), _MM_HINT_T0);
              _mm_prefetch(reinterpret_cast<const char*>(wt + (kb + kPrefetchBlocks) * 128 + 64), _MM_HINT_T0);
            }
            const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + kb * 128 + j * 32));
            const __m256i lo = _mm256_and_si256(w, nib);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), nib);
            for (int i = 0; i < MR; ++i) {
              const int8_t* xp = a.xq + (m0 + i) * a.ldq + kb * kBlockK;
              const __m128i* xp16 = reinterpret_cast<const __m128i*>(xp);
              const __m256i xl = _mm256_broadcastsi128_si256(_mm_loadu_si128(xp16));
              const __m256i xh = _mm256_broadcastsi128_si256(_mm_loadu_si128(xp16 + 1));
              const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xl), _mm256_maddubs_epi16(hi, xh));
              a16[i] = _mm256_add_epi16(a16[i], p);
            }
          }
          for (int i = 0; i < MR; ++i) acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(a16[i], ones));
        }
        for (int i = 0; i < MR; ++i) sums[i][j] = _mm256_add_epi32(sums[i][j], acc[i]);
      }
    }
    const int64_t g = k0 / group;
    for (int i = 0; i < MR; ++i) {
      const __m256i d = hsum4(sums[i][0], sums[i][1], sums[i][2], sums[i][3]);
      out[i] = int8_epilogue(a, d, 0.0f, t, m0 + i, g, k0, k1, out[i]);
    }
  }
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(a.out + (m0 + i) * a.N + t * kTileN, out[i]);
}

// One channel at a time for MR rows: |w| is computed once and reused by every row.
template <int MR>
void int8w_tile(const Int8LinearArgs& a, int64_t t, int64_t m0) {
  const int64_t KB = a.Kp / kBlockK, group = a.G == 1 ? a.Kp : a.K / a.G;
  const int8_t* wt = reinterpret_cast<const int8_t*>(a.w) + t * KB * kTileN * kBlockK;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 out[MR];
  const __m256 b = a.bias ? _mm256_loadu_ps(a.bias + t * kTileN) : _mm256_setzero_ps();
  for (int i = 0; i < MR; ++i) out[i] = b;
  for (int64_t k0 = 0; k0 < a.Kp; k0 += a.segment) {
    const int64_t k1 = std::min(a.Kp, k0 + a.segment), kb0 = k0 / kBlockK, kb1 = k1 / kBlockK;
    __m256i sums[MR][kTileN];
    for (int i = 0; i < MR; ++i)
      for (int c = 0; c < kTileN; ++c) sums[i][c] = _mm256_setzero_si256();
    for (int64_t q0 = kb0; q0 < kb1; q0 += kChunkBlocks) {
      const int64_t q1 = std::min(kb1, q0 + kChunkBlocks);
      for (int c = 0; c < kTileN; ++c) {
        __m256i acc[MR];
        for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_si256();
        for (int64_t kb = q0; kb < q1; ++kb) {
          if (c == 0) {  // as in int4_tile: the channel passes stride by 256 bytes
            const int8_t* ahead = wt + (kb + kPrefetchBlocks) * kTileN * kBlockK;
            for (int l = 0; l < 4; ++l) _mm_prefetch(reinterpret_cast<const char*>(ahead + 64 * l), _MM_HINT_T0);
          }
          const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + (kb * kTileN + c) * kBlockK));
          const __m256i aw = _mm256_abs_epi8(w);
          for (int i = 0; i < MR; ++i) {
            const __m256i xv =
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.xq + (m0 + i) * a.ldq + kb * kBlockK));
            const __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, w));
            acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(p, ones));
          }
        }
        for (int i = 0; i < MR; ++i) sums[i][c] = _mm256_add_epi32(sums[i][c], acc[i]);
      }
    }
    const int64_t g = k0 / group;
    for (int i = 0; i < MR; ++i) {
      out[i] = int8_epilogue(a, hsum8(sums[i]), 0.0f, t, m0 + i, g, k0, k1, out[i]);
    }
  }
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(a.out + (m0 + i) * a.N + t * kTileN, out[i]);
}

template <template <int> class Tile>
void int8_rows(const Int8LinearArgs& a, int64_t t0, int64_t t1) {
  const int64_t tg = l2_tile_group(a.Kp * kTileN * a.bits / 8);
  for (int64_t g0 = t0; g0 < t1; g0 += tg) {
    const int64_t g1 = std::min(t1, g0 + tg);
    int64_t m = 0;
    for (; m + 4 <= a.M; m += 4)
      for (int64_t t = g0; t < g1; ++t) Tile<4>::run(a, t, m);
    for (; m < a.M; ++m)
      for (int64_t t = g0; t < g1; ++t) Tile<1>::run(a, t, m);
  }
}

template <int MR>
struct Int4Tile {
  static void run(const Int8LinearArgs& a, int64_t t, int64_t m) { int4_tile<MR>(a, t, m); }
};
template <int MR>
struct Int8wTile {
  static void run(const Int8LinearArgs& a, int64_t t, int64_t m) { int8w_tile<MR>(a, t, m); }
};

}  // namespace

void linear_float_tiles_avx2(const FloatLinearArgs& a, int64_t t0, int64_t t1) {
  if (a.bits == 4)
    float_tiles<4>(a, t0, t1);
  else
    float_tiles<8>(a, t0, t1);
}

void linear_int8_tiles_avx2(const Int8LinearArgs& a, int64_t t0, int64_t t1) {
  if (a.bits == 4)
    int8_rows<Int4Tile>(a, t0, t1);
  else
    int8_rows<Int8wTile>(a, t0, t1);
}

}  // namespace qk::cpu
