// AVX2 + FMA quantized-linear kernels (layouts and math in qlinear.h). Compiled alone with
// -mavx2 -mfma -mf16c; only called when cpuid + XCR0 report AVX2 (cpu_features.cpp).
//
// * float activations: one tile = 8 output channels = one fp32 vector. Per packed word row the 8
//   codes of each channel are masked in place and converted (pre-shifted nibbles/bytes, see
//   qlinear.h), then FMA'd with broadcast activations of up to 8 rows (register tile rows x 8
//   channels); group scales and zero points are applied once per group. A single row (GEMV) runs
//   four tiles per pass so that each broadcast feeds all four, with software prefetch of the streams;
//   with 4-bit codes it skips the int -> float conversion (codes read as exact denormal floats, see
//   "W4A16 GEMV without int -> float conversions" below).
// * int8 activations: int4 codes are the unsigned operand of vpmaddubsw (15 * 127 * 2 fits s16,
//   and 4 blocks of pair sums still fit) + vpmaddwd against ones; int8 codes and activations are
//   widened to s16 and multiplied with vpmaddwd (the sign trick's vpsignb competes with the
//   multiplies for the same two pipes on Zen 3). The activations are copied once per 64-row panel
//   into the form the tile reads (RowBlock). The next L2-sized group of tiles is prefetched into L2
//   while the current one is computed.
// Limits: N % 8 == 0; K as the layouts state. Test: tests/test_cpu_backend.py (isa="avx2");
// benchmark: benchmarks/cpu_gemm.py; single-thread kernel timing: tests/cpu_harness/qlinear_bench.cpp.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <vector>

#include "cpu/qlinear_int8_256.h"

namespace qk::cpu {
namespace {

// Register tile of the int8-activation kernels (W8A8 and long-segment W4A8): kMR rows x one channel
// (W8A8) or one channel column (W4A8) per pass.
constexpr int kMR = 4;
// W4A8 short-segment tile (int4_tile_short): 4 rows x 1 channel column per pass measured fastest of
// {2,3,4,6,8} rows x {1,2,4} columns (K = 4096, g128, one Zen 3 core, qlinear_bench).
constexpr int kMR4 = 4;
constexpr int kJC4 = 1;
// Tiles per GEMV pass (float_tiles_row): 4 measured ~10% faster than 2 in cache on one Zen 3 core.
constexpr int kGemvTiles = 4;
constexpr int64_t kGemvPrefetch = 2048;  // bytes ahead in each weight stream the GEMV prefetches

template <int BITS, int MR>
void float_tile(const FloatLinearArgs& a, int64_t t, int64_t m0) {
  constexpr int P = 32 / BITS;
  constexpr uint32_t kMask = (1u << BITS) - 1;
  // Independent FMA chains: at least 8 in flight (2 FMA ports x 4 cycles latency) where registers allow.
  constexpr int NA = MR >= 8 ? 1 : (MR >= 4 ? 2 : 4);
  const int64_t K = a.K, rows = K / P, grows = rows / a.G;
  const uint32_t* wt = a.w + t * rows * kTileN;
  const float* x0 = a.xs + m0 * a.ldx;
  const TileParams p = float_params(a);
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
    const __m256 s = p.scale(t, g);
    const __m256 z = p.zero(t, g);
    for (int i = 0; i < MR; ++i) {
      __m256 A = acc[i][0];
      for (int c = 1; c < NA; ++c) A = _mm256_add_ps(A, acc[i][c]);
      const __m256 xsum = _mm256_set1_ps(a.xsum[(m0 + i) * a.G + g]);
      _mm256_storeu_ps(out + i * a.N, _mm256_fmadd_ps(s, _mm256_fnmadd_ps(z, xsum, A), _mm256_loadu_ps(out + i * a.N)));
    }
  }
}

// ---- the float-activation GEMM: two tiles x 6 rows a pass, in assembly --------------------------
// Each broadcast activation feeds two FMAs (one per tile), so a pass issues one load per two FMAs, and
// the 12 accumulators (ymm0-11) are 12 independent FMA chains: at 8 codes a word row each chain waits
// 8 x 4 cycles a row while the pipes need 48 cycles for its 96 FMAs. float_tile's 8 rows x 1 tile had
// 8 chains, whose latency (32 cycles a row) equalled the FMA pipes' time, and a load per FMA. The
// words are read as memory operands of the masking (ymm15 holds code j's mask, ymm12 / ymm13 the two
// tiles' converted codes, ymm14 the broadcast). In assembly: 12 accumulators plus these four are all
// 16 registers, which GCC's allocation of the same loop did not keep (its intrinsics version, 4 rows x
// 2 tiles, gained 8%). Harness (qlinear_bench w4a16, one Zen 3 core, K x N = 4096x11008 g128,
// alternating): m = 128 42.3-43.7 against 32.7-33.1 GMAC/s for float_tile<8> (the FMA pipes' peak
// here: 51); m = 8 / 16 (weights from DRAM) 26-32 / 27 against 19-21 / 20.
template <int BITS>
struct CodeMasks {  // code j's mask in place, j < 32 / BITS - 1 (the top code is shifted instead)
  alignas(32) uint32_t m[32 / BITS - 1][8];
  constexpr CodeMasks() : m{} {
    for (int j = 0; j < 32 / BITS - 1; ++j)
      for (int l = 0; l < 8; ++l) m[j][l] = ((1u << BITS) - 1) << (BITS * j);
  }
};
alignas(32) constexpr CodeMasks<4> kCodeMasks4{};
alignas(32) constexpr CodeMasks<8> kCodeMasks8{};

#define QK_G2_ROWS(j)                                                                                 \
  QK_G2_FMA(j, "(%[x])", 0, 1) QK_G2_FMA(j, "(%[x], %[ld])", 2, 3) QK_G2_FMA(j, "(%[x], %[ld], 2)", 4, 5) \
  QK_G2_FMA(j, "(%%r11)", 6, 7) QK_G2_FMA(j, "(%%r11, %[ld])", 8, 9) QK_G2_FMA(j, "(%%r11, %[ld], 2)", 10, 11)
#define QK_G2_MASKED(j)                         \
  "vmovdqa " #j "*32(%[m]), %%ymm15\n\t"         \
  "vpand (%[w]), %%ymm15, %%ymm12\n\t"          \
  "vpand (%[w], %[ts]), %%ymm15, %%ymm13\n\t"   \
  "vcvtdq2ps %%ymm12, %%ymm12\n\t"              \
  "vcvtdq2ps %%ymm13, %%ymm13\n\t" QK_G2_ROWS(j)
// The top code is shifted down instead (AVX2's vpsrld takes no memory operand).
#define QK_G2_TOP(j, SHIFT)                               \
  "vmovdqu (%[w]), %%ymm12\n\t"                           \
  "vmovdqu (%[w], %[ts]), %%ymm13\n\t"                    \
  "vpsrld $" #SHIFT ", %%ymm12, %%ymm12\n\t"               \
  "vpsrld $" #SHIFT ", %%ymm13, %%ymm13\n\t"               \
  "vcvtdq2ps %%ymm12, %%ymm12\n\t"                        \
  "vcvtdq2ps %%ymm13, %%ymm13\n\t" QK_G2_ROWS(j)
#define QK_G2_FMA(j, ROW, A0, A1)                    \
  "vbroadcastss " #j "*4" ROW ", %%ymm14\n\t"         \
  "vfmadd231ps %%ymm12, %%ymm14, %%ymm" #A0 "\n\t"   \
  "vfmadd231ps %%ymm13, %%ymm14, %%ymm" #A1 "\n\t"
// Operands of float_rows_2x6's asm: its arguments and `masks` (the CodeMasks of the width). w, x, rows
// and ts are scratch registers in the group epilogue (QK_G2_EPILOGUE).
#define QK_G2_OPERANDS                                                                                 \
  : [w] "+r"(w), [x] "+r"(x), [n] "+r"(rows), [ts] "+r"(tile_stride_bytes)                              \
  : [ld] "r"(ld_bytes), [m] "r"(&masks.m[0][0]), [ep] "r"(&ep)                                            \
  : "r11", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",          \
    "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory"
// Zeroes ymm0-11 and points r11 (x3) at activation row 3.
#define QK_G2_PROLOGUE                                                                                   \
  "vxorps %%xmm0, %%xmm0, %%xmm0\n\t" "vxorps %%xmm1, %%xmm1, %%xmm1\n\t" "vxorps %%xmm2, %%xmm2, %%xmm2\n\t"  \
  "vxorps %%xmm3, %%xmm3, %%xmm3\n\t" "vxorps %%xmm4, %%xmm4, %%xmm4\n\t" "vxorps %%xmm5, %%xmm5, %%xmm5\n\t"  \
  "vxorps %%xmm6, %%xmm6, %%xmm6\n\t" "vxorps %%xmm7, %%xmm7, %%xmm7\n\t" "vxorps %%xmm8, %%xmm8, %%xmm8\n\t"  \
  "vxorps %%xmm9, %%xmm9, %%xmm9\n\t" "vxorps %%xmm10, %%xmm10, %%xmm10\n\t"                               \
  "vxorps %%xmm11, %%xmm11, %%xmm11\n\t"                                                                   \
  "lea (%[x], %[ld], 2), %%r11\n\t"                                                                        \
  "add %[ld], %%r11\n\t"
// The group's epilogue: out[i][h] += s_h * (acc[i][h] - z_h * xsum_i) for the 6 rows and 2 tiles (see
// G2Group), in place in the output rows.
#define QK_G2_OUT(A, OFF)                                  \
  "vbroadcastss (%[x]), %%ymm14\n\t"                       \
  "vfnmadd231ps %%ymm13, %%ymm14, %%ymm" #A "\n\t"         \
  "vmovups " #OFF "(%%r11), %%ymm15\n\t"                   \
  "vfmadd231ps %%ymm12, %%ymm" #A ", %%ymm15\n\t"          \
  "vmovups %%ymm15, " #OFF "(%%r11)\n\t"                   \
  "add %[n], %[x]\n\t"                                     \
  "add %[ts], %%r11\n\t"
#define QK_G2_TILE(H, OFF, A0, A1, A2, A3, A4, A5)                                                        \
  "mov 0(%[ep]), %[w]\n\t"                                                                                \
  "vmovaps " #H "*32(%[w]), %%ymm12\n\t"                                                                   \
  "vmovaps 64+" #H "*32(%[w]), %%ymm13\n\t"                                                                \
  "mov 8(%[ep]), %[x]\n\t"                                                                                \
  "mov 24(%[ep]), %%r11\n\t"                                                                              \
  QK_G2_OUT(A0, OFF) QK_G2_OUT(A1, OFF) QK_G2_OUT(A2, OFF) QK_G2_OUT(A3, OFF) QK_G2_OUT(A4, OFF) QK_G2_OUT(A5, OFF)
#define QK_G2_EPILOGUE                   \
  "mov 16(%[ep]), %[n]\n\t"               \
  "mov 32(%[ep]), %[ts]\n\t"              \
  QK_G2_TILE(0, 0, 0, 2, 4, 6, 8, 10) QK_G2_TILE(1, 32, 1, 3, 5, 7, 9, 11)

// One group's epilogue operands for float_rows_2x6 (the offsets are the asm's).
struct G2Group {
  const float* sz;        // 0: fp32 [4][8], 32-byte aligned: s of tiles t, t + 1, then their z
  const float* xsum;      // 8: xsum of row 0 for this group
  int64_t xsum_stride;    // 16: bytes between the rows' xsum
  float* out;             // 24: the output, row 0, tile t
  int64_t out_stride;     // 32: bytes between output rows
};
static_assert(offsetof(G2Group, xsum) == 8 && offsetof(G2Group, xsum_stride) == 16 && offsetof(G2Group, out) == 24 &&
                  offsetof(G2Group, out_stride) == 32,
              "QK_G2_EPILOGUE reads G2Group at these offsets");

// `rows` (>= 1) word rows (one group) of tiles t and t + 1 (`tile_stride_bytes` apart) against 6
// activation rows (`ld_bytes` apart, prepared by prepare_float_activations), the group's sums then
// scaled into the output (G2Group).
template <int BITS>
inline void float_rows_2x6(const uint32_t* w, int64_t tile_stride_bytes, const float* x, int64_t ld_bytes,
                           int64_t rows, const G2Group& ep) {
  if constexpr (BITS == 4) {
    const auto& masks = kCodeMasks4;
    asm volatile(QK_G2_PROLOGUE "1:\n\t" QK_G2_MASKED(0) QK_G2_MASKED(1) QK_G2_MASKED(2) QK_G2_MASKED(3) QK_G2_MASKED(4)
        QK_G2_MASKED(5) QK_G2_MASKED(6) QK_G2_TOP(7, 28)
        "add $32, %[w]\n\t"
        "add $32, %[x]\n\t"
        "add $32, %%r11\n\t"
        "dec %[n]\n\t"
        "jnz 1b\n\t" QK_G2_EPILOGUE QK_G2_OPERANDS);
  } else {
    const auto& masks = kCodeMasks8;
    asm volatile(QK_G2_PROLOGUE "1:\n\t" QK_G2_MASKED(0) QK_G2_MASKED(1) QK_G2_MASKED(2) QK_G2_TOP(3, 24)
        "add $32, %[w]\n\t"
        "add $16, %[x]\n\t"
        "add $16, %%r11\n\t"
        "dec %[n]\n\t"
        "jnz 1b\n\t" QK_G2_EPILOGUE QK_G2_OPERANDS);
  }
}
#undef QK_G2_FMA
#undef QK_G2_ROWS
#undef QK_G2_MASKED
#undef QK_G2_TOP
#undef QK_G2_OPERANDS
#undef QK_G2_PROLOGUE
#undef QK_G2_EPILOGUE
#undef QK_G2_OUT
#undef QK_G2_TILE

// Tiles t, t + 1 for rows m0 .. m0 + 5 (see float_rows_2x6). Each group's scaling runs in the asm, after
// its loop (G2Group): done in C++ from stored sums it cost 3% of the time at g128 and 8% at g32 (harness,
// M = 128, K = 4096, N = 2048 and 11008 g128, three alternating rounds).
template <int BITS>
void float_tile2x6(const FloatLinearArgs& a, int64_t t, int64_t m0) {
  constexpr int MR = 6, P = 32 / BITS;
  const int64_t rows = a.K / P, grows = rows / a.G;
  const TileParams p = float_params(a);
  const uint32_t* wt = a.w + t * rows * kTileN;
  const float* x0 = a.xs + m0 * a.ldx;
  float* out = a.out + m0 * a.N + t * kTileN;  // the running sums live in the output (L1) between groups
  for (int h = 0; h < 2; ++h) {
    const __m256 b = a.bias ? _mm256_loadu_ps(a.bias + (t + h) * kTileN) : _mm256_setzero_ps();
    for (int i = 0; i < MR; ++i) _mm256_storeu_ps(out + i * a.N + h * kTileN, b);
  }
  alignas(32) float sz[4][8];
  G2Group ep{&sz[0][0], nullptr, a.G * static_cast<int64_t>(sizeof(float)), out,
             a.N * static_cast<int64_t>(sizeof(float))};
  for (int64_t g = 0; g < a.G; ++g) {
    for (int h = 0; h < 2; ++h) {
      _mm256_store_ps(sz[h], p.scale(t + h, g));
      _mm256_store_ps(sz[2 + h], p.zero(t + h, g));
    }
    ep.xsum = a.xsum + m0 * a.G + g;
    float_rows_2x6<BITS>(wt + g * grows * kTileN, rows * kTileN * 4, x0 + g * grows * P,
                         a.ldx * static_cast<int64_t>(sizeof(float)), grows, ep);
  }
}

// One row (a GEMV) over NT tiles at once: each broadcast activation feeds NT tiles' FMAs, and
// the NT weight streams are prefetched ahead of use. 8 / NT accumulators per tile keep 8 FMA
// chains in flight (2 FMA pipes x 4 cycles).
template <int BITS, int NT>
void float_tiles_row(const FloatLinearArgs& a, int64_t t, int64_t m) {
  constexpr int P = 32 / BITS;
  constexpr uint32_t kMask = (1u << BITS) - 1;
  constexpr int NA = 8 / NT;
  constexpr int64_t kAhead = 32;  // word rows (1 KiB per tile) prefetched ahead
  const int64_t rows = a.K / P, grows = rows / a.G;
  const TileParams p = float_params(a);
  const uint32_t* w = a.w + t * rows * kTileN;
  const float* xr = a.xs + m * a.ldx;
  __m256 out[NT];
  for (int h = 0; h < NT; ++h) out[h] = a.bias ? _mm256_loadu_ps(a.bias + (t + h) * kTileN) : _mm256_setzero_ps();
  for (int64_t g = 0; g < a.G; ++g) {
    __m256 acc[NT][NA];
    for (int h = 0; h < NT; ++h)
      for (int c = 0; c < NA; ++c) acc[h][c] = _mm256_setzero_ps();
    for (int64_t r = g * grows; r < (g + 1) * grows; ++r) {
      if (r % 2 == 0)
        for (int h = 0; h < NT; ++h)
          _mm_prefetch(reinterpret_cast<const char*>(w + (h * rows + r + kAhead) * kTileN), _MM_HINT_T0);
      __m256i v[NT];
      for (int h = 0; h < NT; ++h) v[h] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + (h * rows + r) * kTileN));
      const float* x = xr + r * P;
#pragma GCC unroll 8
      for (int j = 0; j < P; ++j) {
        const __m256 xb = _mm256_broadcast_ss(x + j);
        const __m256i mask = _mm256_set1_epi32(static_cast<int>(kMask << (BITS * j)));
        for (int h = 0; h < NT; ++h) {
          const __m256i q = j == P - 1 ? _mm256_srli_epi32(v[h], BITS * j) : _mm256_and_si256(v[h], mask);
          acc[h][j % NA] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), xb, acc[h][j % NA]);
        }
      }
    }
    const __m256 xsum = _mm256_set1_ps(a.xsum[m * a.G + g]);
    for (int h = 0; h < NT; ++h) {
      const __m256 s = p.scale(t + h, g);
      const __m256 z = p.zero(t + h, g);
      __m256 A = acc[h][0];
      for (int c = 1; c < NA; ++c) A = _mm256_add_ps(A, acc[h][c]);
      out[h] = _mm256_fmadd_ps(s, _mm256_fnmadd_ps(z, xsum, A), out[h]);
    }
  }
  for (int h = 0; h < NT; ++h) _mm256_storeu_ps(a.out + m * a.N + (t + h) * kTileN, out[h]);
}

// ---- W4A16 GEMV without int -> float conversions ---------------------------------------------
// A 4-bit code masked in place at bits 4j .. 4j+3 of a word, j <= 5, read as an fp32 bit pattern, is
// exactly the number q * 2^(4j - 149): bits 0-22 are the denormal mantissa (unit 2^-149) and bit 23,
// the lowest exponent bit, continues that scale (the first normal binade has the same unit). So
// mask + FMA multiply exactly what mask + vcvtdq2ps + FMA did, one instruction fewer per 8 weights
// (codes 6 and 7 are shifted down 24 and 28 bits first: 9 integer ops + 8 FMAs per word, against 16
// + 8). The activation multiplying code j is x * 2^(149 - p_j - c) (p_j: the code's bit position
// after the mask/shift; c per call, from max|x|, keeps it finite), so every product is
// x * q * 2^-c, a normal number: the fp32 sums are the old kernel's scaled by 2^-c, and 2^c is put
// back once per output. Needs denormal inputs to be honoured (MXCSR.DAZ clear) and cheap (AMD cores:
// an Intel Xeon took a microcode assist per FMA, 100x slower; features().fast_denormals); otherwise, and
// for activations out of range (non-finite, or max|x| outside 2^-100 .. 2^90), the converting kernel runs.
struct GemvActivations {
  const float* x;     // fp32 [K]: x[k] * 2^(149 - p_j - c), j = k % 8
  const float* xsum;  // fp32 [G]: the group sums of x, times 2^-c
  float unscale;      // 2^c
};

constexpr int kCodeBit[8] = {0, 4, 8, 12, 16, 20, 0, 0};  // p_j: code j's lowest bit in the value the FMA reads

inline bool prepare_gemv_activations(const FloatLinearArgs& a, std::vector<float>& xbuf, std::vector<float>& sbuf,
                                     GemvActivations* out) {
  constexpr unsigned kDaz = 0x40;
  if (a.K == 0 || (_mm_getcsr() & kDaz) || !features().fast_denormals) return false;  // (the loop needs >= 1 row)
  // xs = x * 2^(-4j) except for the top slot (see prepare_float_activations); one vector = the 8
  // slots of a word row. Vectorized: this runs once per thread chunk, and scalar it cost ~9 us at
  // K = 8192 (a third of a 64-channel GEMV).
  const __m256 unshift = _mm256_setr_ps(1.0f, 0x1p4f, 0x1p8f, 0x1p12f, 0x1p16f, 0x1p20f, 0x1p24f, 1.0f);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 vmax = _mm256_setzero_ps(), nonfinite = _mm256_setzero_ps();  // the latter: NaN once inf/NaN is seen
  for (int64_t k = 0; k < a.K; k += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_and_ps(_mm256_loadu_ps(a.xs + k), abs_mask), unshift);
    vmax = _mm256_max_ps(vmax, v);
    nonfinite = _mm256_add_ps(nonfinite, _mm256_mul_ps(v, _mm256_setzero_ps()));
  }
  alignas(32) float lanes[8], bad[8];
  _mm256_store_ps(lanes, vmax);
  _mm256_store_ps(bad, nonfinite);
  float amax = 0.0f;
  for (int j = 0; j < 8; ++j) {
    if (bad[j] != 0.0f) return false;  // NaN
    amax = std::max(amax, lanes[j]);
  }
  int e = 0;
  if (amax > 0.0f) std::frexp(amax, &e);  // amax < 2^e
  if (e < -100 || e > 90) return false;
  const int c = e + 24;  // the largest scaled activation stays below 2^125
  // Slot j is multiplied by 2^(u_j + 149 - p_j - c), u_j = log2 unshift: an exponent in 35 .. 233,
  // applied as two exact power-of-two factors of at most 2^117 each (the first never overflows: it
  // is at most half the total).
  alignas(32) float fa[8], fb[8];
  for (int j = 0; j < 8; ++j) {
    const int total = (j == 7 ? 0 : 4 * j) + 149 - kCodeBit[j] - c;
    fa[j] = std::ldexp(1.0f, total / 2);
    fb[j] = std::ldexp(1.0f, total - total / 2);
  }
  const __m256 va = _mm256_load_ps(fa), vb = _mm256_load_ps(fb);
  xbuf.resize(a.K);
  sbuf.resize(a.G);
  for (int64_t k = 0; k < a.K; k += 8)
    _mm256_storeu_ps(xbuf.data() + k, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(a.xs + k), va), vb));
  const float down = std::ldexp(1.0f, -c);
  for (int64_t g = 0; g < a.G; ++g) sbuf[g] = a.xsum[g] * down;
  *out = GemvActivations{xbuf.data(), sbuf.data(), std::ldexp(1.0f, c)};
  return true;
}

// `rows` word rows of 4 tiles (one weight group): ymm8-11 hold the tiles' words, ymm12 the
// broadcast activation, ymm13 the masked code (one register: renaming keeps the 4 tiles' codes in
// flight), ymm14-15 the masks of codes 0 and 6 (0xF) and code 1 (0xF0); codes 2-5 take their masks
// as memory operands. Masks in registers cut the loads per row from 44 to 28 (two 256-bit loads
// issue a cycle on Zen 2/3): K x N = 1024x8192 g128 in L3, one Zen 3 core (qlinear_bench), 0.242-0.244
// against 0.255-0.259 ms; g32 0.285 against 0.312. In assembly because GCC kept all the masks in
// registers and spilled the accumulators instead (each FMA chain then went through the stack), and
// moved the accumulators between registers around a one-row asm block. Code j (activation x[j]) goes
// to accumulator j % 2 of each tile. Each row prefetches the four streams `prefetch_bytes` ahead,
// 2 KiB (64 rows): on the Zen 3 VM of 2026-11-24, 8192x28672 g128 through the op on two threads
// (`cpu_gemm.py --shapes 8192x28672 --m 1 --methods "qk w4a16 g128"`, eight alternating pairs) 2 KiB
// read 88-94% of the probe against 81-89% for 1 KiB (faster in seven pairs of eight; 4.21-4.40
// against 4.31-5.26 ms in the four timed); 3 KiB measured the same as 2 (2026-11-25, paired calls).
#define QK_GEMV_CODE(j, A, MASKED)                                   \
  "vbroadcastss " #j "*4(%[x]), %%ymm12\n\t"                         \
  MASKED(j, 8) "vfmadd231ps %%ymm13, %%ymm12, %[t0" #A "]\n\t"   \
  MASKED(j, 9) "vfmadd231ps %%ymm13, %%ymm12, %[t1" #A "]\n\t"   \
  MASKED(j, 10) "vfmadd231ps %%ymm13, %%ymm12, %[t2" #A "]\n\t"  \
  MASKED(j, 11) "vfmadd231ps %%ymm13, %%ymm12, %[t3" #A "]\n\t"
#define QK_AND(j, src) "vpand " #j "*32(%[m]), %%ymm" #src ", %%ymm13\n\t"
#define QK_AND0(j, src) "vpand %%ymm14, %%ymm" #src ", %%ymm13\n\t"
#define QK_AND1(j, src) "vpand %%ymm15, %%ymm" #src ", %%ymm13\n\t"
#define QK_SHR24_AND(j, src) "vpsrld $24, %%ymm" #src ", %%ymm13\n\t" "vpand %%ymm14, %%ymm13, %%ymm13\n\t"
#define QK_SHR28(j, src) "vpsrld $28, %%ymm" #src ", %%ymm13\n\t"

inline void int4_gemv_group4(const uint32_t* w, int64_t tile_stride_bytes, const float* x, int64_t rows,
                             int64_t prefetch_bytes, __m256 (&acc)[4][2]) {
  const int64_t ts3 = 3 * tile_stride_bytes;
  const char* pf = reinterpret_cast<const char*>(w) + prefetch_bytes;
  asm("vmovdqa (%[m]), %%ymm14\n\t"
      "vmovdqa 32(%[m]), %%ymm15\n\t"
      "1:\n\t"
      "prefetcht0 (%[pf])\n\t"
      "prefetcht0 (%[pf], %[ts])\n\t"
      "prefetcht0 (%[pf], %[ts], 2)\n\t"
      "prefetcht0 (%[pf], %[ts3])\n\t"
      "vmovdqu (%[w]), %%ymm8\n\t"
      "vmovdqu (%[w], %[ts]), %%ymm9\n\t"
      "vmovdqu (%[w], %[ts], 2), %%ymm10\n\t"
      "vmovdqu (%[w], %[ts3]), %%ymm11\n\t"
      QK_GEMV_CODE(0, 0, QK_AND0) QK_GEMV_CODE(1, 1, QK_AND1) QK_GEMV_CODE(2, 0, QK_AND)
      QK_GEMV_CODE(3, 1, QK_AND) QK_GEMV_CODE(4, 0, QK_AND) QK_GEMV_CODE(5, 1, QK_AND)
      QK_GEMV_CODE(6, 0, QK_SHR24_AND) QK_GEMV_CODE(7, 1, QK_SHR28)
      "add $32, %[w]\n\t"
      "add $32, %[pf]\n\t"
      "add $32, %[x]\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      : [t00] "+x"(acc[0][0]), [t01] "+x"(acc[0][1]), [t10] "+x"(acc[1][0]), [t11] "+x"(acc[1][1]),
        [t20] "+x"(acc[2][0]), [t21] "+x"(acc[2][1]), [t30] "+x"(acc[3][0]), [t31] "+x"(acc[3][1]),
        [w] "+r"(w), [pf] "+r"(pf), [x] "+r"(x), [n] "+r"(rows)
      : [ts] "r"(tile_stride_bytes), [ts3] "r"(ts3), [m] "r"(&kCodeMasks4.m[0][0])
      : "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory");
}
#undef QK_GEMV_CODE
#undef QK_AND
#undef QK_AND0
#undef QK_AND1
#undef QK_SHR24_AND
#undef QK_SHR28

// Four tiles (kGemvTiles) per pass: each broadcast activation feeds the 4 tiles' FMAs; 2
// accumulators per tile keep 8 FMA chains in flight (2 FMA pipes x 4 cycles latency). HALF: the
// layer's scales and zero points are fp16 (a.params_fp16), as a constant so that each group's loads
// carry no test.
template <bool HALF>
void int4_gemv_tiles(const FloatLinearArgs& a, const GemvActivations& x, int64_t t, bool next_pass) {
  constexpr int NT = 4;
  const TileParams p{a.scales, a.zeros, a.zero, a.G, HALF};
  const int64_t rows = a.K / 8, grows = rows / a.G;
  const uint32_t* w = a.w + t * rows * kTileN;
  constexpr int64_t kRowBytes = kTileN * 4;  // a tile's word row
  const int64_t ts = rows * kRowBytes, turn = next_pass ? rows - kGemvPrefetch / kRowBytes : rows;
  __m256 out[NT];
  for (int h = 0; h < NT; ++h) out[h] = _mm256_setzero_ps();
  for (int64_t g = 0; g < a.G; ++g) {
    // The four tiles' scales (and zero points) two groups ahead: thin streams, a 64-byte line per two
    // groups, that the hardware prefetchers left to miss (each miss held up the group's epilogue).
    // 8192x28672 g128, symmetric, two single-thread harness processes: 8.59-8.70 against 9.03-9.20 ms.
    if (g + 2 < a.G)
      for (int h = 0; h < NT; ++h) p.prefetch(t + h, g + 2);
    __m256 acc[NT][2];
    for (int h = 0; h < NT; ++h) acc[h][0] = acc[h][1] = _mm256_setzero_ps();
    // Rows past `turn` prefetch the next pass's tiles (the same offsets NT - 1 tile strides further
    // on): each stream's last kGemvPrefetch bytes of prefetches would otherwise land on the next
    // tile of this pass, already read, and the next pass would start its four streams cold. Zen 3
    // VM, two threads, the two builds' calls interleaved (200-400 pairs): 8192x28672 g128 5.2-5.6%
    // faster (faster in 165-168 of 200 pairs), 4096x11008 g128 9.9%, 11008x4096 2.0%, 8192x28672
    // g32 3.0%. (The next pass's first scales prefetched likewise: no difference.)
    const int64_t r0 = g * grows, r1 = r0 + grows, mid = std::min(r1, std::max(r0, turn));
    if (mid > r0) int4_gemv_group4(w + r0 * kTileN, ts, x.x + r0 * 8, mid - r0, kGemvPrefetch, acc);
    if (r1 > mid)
      int4_gemv_group4(w + mid * kTileN, ts, x.x + mid * 8, r1 - mid, kGemvPrefetch + (NT - 1) * ts, acc);
    const __m256 xsum = _mm256_set1_ps(x.xsum[g]);
    for (int h = 0; h < NT; ++h) {
      const __m256 s = p.scale(t + h, g);
      const __m256 z = p.zero(t + h, g);
      out[h] = _mm256_fmadd_ps(s, _mm256_fnmadd_ps(z, xsum, _mm256_add_ps(acc[h][0], acc[h][1])), out[h]);
    }
  }
  const __m256 unscale = _mm256_set1_ps(x.unscale);
  for (int h = 0; h < NT; ++h) {
    const __m256 b = a.bias ? _mm256_loadu_ps(a.bias + (t + h) * kTileN) : _mm256_setzero_ps();
    _mm256_storeu_ps(a.out + (t + h) * kTileN, _mm256_fmadd_ps(out[h], unscale, b));
  }
}

// The GEMV over tiles [t0, t1) in passes of 4 tiles; a last 1-3 tiles take the converting kernel.
void int4_gemv(const FloatLinearArgs& a, const GemvActivations& x, int64_t t0, int64_t t1) {
  const int64_t t4 = t0 + (t1 - t0) / kGemvTiles * kGemvTiles;
  const auto pass = a.params_fp16 ? int4_gemv_tiles<true> : int4_gemv_tiles<false>;
  for (int64_t t = t0; t < t4; t += kGemvTiles) pass(a, x, t, t + 2 * kGemvTiles <= t4);
  for (int64_t t = t4; t < t1; ++t) float_tile<4, 1>(a, t, 0);
}

// The padded copy of rows m0 .. m0 + rows - 1 (zero rows after them) that float_rows_padded reads, built
// once a call and shared by every tile group.
struct PaddedRows {
  static constexpr int kRows = 6;
  std::vector<float> xs, xsum, out;
  void build(const FloatLinearArgs& a, int64_t m0, int64_t rows) {
    xs.assign(kRows * a.ldx, 0.0f);
    xsum.assign(kRows * a.G, 0.0f);
    for (int64_t i = 0; i < rows; ++i) {
      std::memcpy(xs.data() + i * a.ldx, a.xs + (m0 + i) * a.ldx, a.K * sizeof(float));
      std::memcpy(xsum.data() + i * a.G, a.xsum + (m0 + i) * a.G, a.G * sizeof(float));
    }
  }
};

// Rows m0 .. m0 + rows - 1 (rows < 6) of tiles [g0, g1) through the 6-row block, on a copy of those
// rows padded with zero rows; the block's outputs for the real rows are copied back. The copy is a view
// of the layer restricted to the tile range, so its output buffer (pad.out) holds only those columns.
// Used for 5 rows, where float_tile<4> + float_tile<1> was slower. One Zen 3 core, qlinear_bench w4a16 g128, the two
// alternating round by round, time of this path over the old one: M = 5 on 4096x11008 0.65-0.91 (five
// rounds) and 0.67-1.07 (six, median 0.90); M = 5 on 11008x4096 0.83-1.04 (median 0.96); M = 11 (6 + 5)
// 0.77-0.97 (median 0.87). For 4 rows float_tile<4> was faster (5.9-8.6 against 7.5-9.0 ms).
template <int BITS>
void float_rows_padded(const FloatLinearArgs& a, PaddedRows& pad, int64_t g0, int64_t g1, int64_t m0, int64_t rows) {
  constexpr int MR = PaddedRows::kRows;
  const int64_t n = (g1 - g0) * kTileN, pb = a.params_fp16 ? 2 : 4;
  pad.out.resize(MR * n);
  FloatLinearArgs r = a;
  const int64_t skip = tile_param_offset(a.G, g0, 0) * pb;  // bytes of the tiles before g0
  r.w = a.w + g0 * (a.K * BITS / 32) * kTileN;
  r.scales = static_cast<const char*>(a.scales) + skip;
  r.zeros = a.zeros ? static_cast<const char*>(a.zeros) + skip : nullptr;
  r.bias = a.bias ? a.bias + g0 * kTileN : nullptr;
  r.xs = pad.xs.data(), r.xsum = pad.xsum.data(), r.out = pad.out.data(), r.M = MR, r.N = n;
  int64_t t = 0;
  for (; t + 2 <= g1 - g0; t += 2) float_tile2x6<BITS>(r, t, 0);
  if (t < g1 - g0) float_tile<BITS, MR>(r, t, 0);
  for (int64_t i = 0; i < rows; ++i)
    std::memcpy(a.out + (m0 + i) * a.N + g0 * kTileN, pad.out.data() + i * n, n * sizeof(float));
}

template <int BITS>
void float_tiles(const FloatLinearArgs& a, int64_t t0, int64_t t1) {
  const int64_t tg = l2_tile_group(a.K * kTileN * BITS / 8);
  if (BITS == 4 && a.M == 1) {
    thread_local std::vector<float> gemv_x, gemv_sum;
    GemvActivations gx{};
    if (prepare_gemv_activations(a, gemv_x, gemv_sum, &gx)) return int4_gemv(a, gx, t0, t1);
  }
  // 5 rows after the 6-row blocks go through the 6-row block on a padded copy (float_rows_padded).
  const int64_t m6 = a.M / 6 * 6;
  thread_local PaddedRows pad;
  if (a.M - m6 == 5) pad.build(a, m6, 5);
  for (int64_t g0 = t0; g0 < t1; g0 += tg) {
    const int64_t g1 = std::min(t1, g0 + tg);
    if (a.M == 1) {  // GEMV: tiles in sets of kGemvTiles
      int64_t t = g0;
      for (; t + kGemvTiles <= g1; t += kGemvTiles) float_tiles_row<BITS, kGemvTiles>(a, t, 0);
      for (; t < g1; ++t) float_tile<BITS, 1>(a, t, 0);
      continue;
    }
    int64_t m = 0;
    for (; m + 6 <= a.M; m += 6) {
      int64_t t = g0;
      for (; t + 2 <= g1; t += 2) float_tile2x6<BITS>(a, t, m);
      if (t < g1) float_tile<BITS, 6>(a, t, m);
    }
    if (a.M - m == 5) {
      float_rows_padded<BITS>(a, pad, g0, g1, m, a.M - m);
      continue;
    }
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

// W4A8. One channel column j (channels j and j + 4) at a time, for MR rows: the unpacked nibbles
// (unsigned, the vpmaddubsw u8 operand) are reused by every row, and the s16 pair sums of up to 4
// blocks (4 * 2 * 15 * 127 * 2 < 2^15) are accumulated before one vpmaddwd widens them.
template <int MR>
void int4_tile(const Int8LinearArgs& a, int64_t t, const RowBlock& rb) {
  const int64_t m0 = rb.m0;
  const int64_t KB = a.Kp / kBlockK, group = a.G == 1 ? a.Kp : a.K / a.G;
  const uint8_t* wt = a.w + t * KB * 128;
  const int8_t* x0 = a.xq + m0 * a.ldq;
  const __m256i nib = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256 out[MR];
  for (int i = 0; i < MR; ++i) out[i] = _mm256_setzero_ps();
  for (int64_t k0 = 0; k0 < a.Kp; k0 += a.segment) {
    const int64_t k1 = std::min(a.Kp, k0 + a.segment), kb0 = k0 / kBlockK, kb1 = k1 / kBlockK;
    __m256i sums[MR][4];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < 4; ++j) sums[i][j] = _mm256_setzero_si256();
    for (int64_t q0 = kb0; q0 < kb1; q0 += kChunkBlocks) {
      const int64_t q1 = std::min(kb1, q0 + kChunkBlocks);
      for (int j = 0; j < 4; ++j) {
        for (int64_t kc = q0; kc < q1; kc += 4) {
          const int64_t kc1 = std::min(q1, kc + 4);
          __m256i a16[MR];
          for (int i = 0; i < MR; ++i) a16[i] = _mm256_setzero_si256();
          for (int64_t kb = kc; kb < kc1; ++kb) {
            const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + kb * 128 + j * 32));
            const __m256i lo = _mm256_and_si256(w, nib);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), nib);
            for (int i = 0; i < MR; ++i) {
              const __m128i* xp = reinterpret_cast<const __m128i*>(x0 + i * a.ldq + kb * kBlockK);
              const __m256i xl = _mm256_broadcastsi128_si256(_mm_loadu_si128(xp));
              const __m256i xh = _mm256_broadcastsi128_si256(_mm_loadu_si128(xp + 1));
              a16[i] = _mm256_add_epi16(a16[i], _mm256_add_epi16(_mm256_maddubs_epi16(lo, xl), _mm256_maddubs_epi16(hi, xh)));
            }
          }
          for (int i = 0; i < MR; ++i) sums[i][j] = _mm256_add_epi32(sums[i][j], _mm256_madd_epi16(a16[i], ones));
        }
      }
    }
    __m256i d[MR];
    for (int i = 0; i < MR; ++i) d[i] = hsum4(sums[i][0], sums[i][1], sums[i][2], sums[i][3]);
    add_segment<MR>(a, rb, d, t, k0 / group, k0 / a.segment, out);
  }
  finish_rows<MR>(a, t, m0, out);
}

// W4A8 with short segments (groups of at most 4 blocks, e.g. g128): MR rows x JC channel columns
// (each column = channels j and j + 4, see the layout) per pass over a segment, with the s16 sums of
// the whole segment in registers (MR * JC accumulators). The activations come from the duplicated
// copy in rb.xd as memory operands of vpmaddubsw, so the register tile is only accumulators plus the
// unpacked nibbles (16 ymm registers on AVX2; the previous all-columns-at-once tile kept
// activations in registers too and spilled). A column's weights are read once per segment whatever
// JC is, so the passes cost only the (L1) activation reloads.
template <int MR, int JC>
void int4_tile_short(const Int8LinearArgs& a, int64_t t, const RowBlock& rb) {
  static_assert(4 % JC == 0, "JC divides the 4 channel columns of a tile");
  const int64_t KB = a.Kp / kBlockK, group = a.G == 1 ? a.Kp : a.K / a.G, nb = a.segment / kBlockK;
  const int64_t ldd = xd_stride(a.Kp);
  const uint8_t* wt = a.w + t * KB * 128;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 out[MR];
  for (int i = 0; i < MR; ++i) out[i] = _mm256_setzero_ps();
  // Segment s lies in weight group g; counted, not divided (this epilogue runs every <= 4 blocks).
  const int64_t segs_per_group = group / a.segment;
  int64_t g = 0, s_in_g = 0;
  for (int64_t kb0 = 0, s = 0; kb0 < KB; kb0 += nb, ++s) {
    __m256i part[MR][4];  // s32 pair sums per column, reduced to the 8 channels after the last pass
    for (int j0 = 0; j0 < 4; j0 += JC) {
      __m256i acc[MR][JC];
      for (int i = 0; i < MR; ++i)
        for (int j = 0; j < JC; ++j) acc[i][j] = _mm256_setzero_si256();
      int4_columns<MR, JC>(wt, rb.xd, ldd, kb0, kb0 + nb, j0, acc, [](__m256i s, __m256i lo, __m256i hi, const __m256i* xp) {
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(lo, _mm256_loadu_si256(xp)));
        return _mm256_add_epi16(s, _mm256_maddubs_epi16(hi, _mm256_loadu_si256(xp + 1)));
      });
      for (int i = 0; i < MR; ++i)
        for (int j = 0; j < JC; ++j) part[i][j0 + j] = _mm256_madd_epi16(acc[i][j], ones);
    }
    __m256i d[MR];
    for (int i = 0; i < MR; ++i) d[i] = hsum4_unpack(part[i][0], part[i][1], part[i][2], part[i][3]);
    add_segment<MR>(a, rb, d, t, g, s, out);
    if (++s_in_g == segs_per_group) s_in_g = 0, ++g;
  }
  finish_rows<MR>(a, t, rb.m0, out);
}

// W8A8. Both operands widened to s16 and multiplied with vpmaddwd: on Zen 3 vpsignb/vpabsb issue on
// the same two pipes as the multiplies, so the sign trick (|w| x sign(x, w)) cost 3 of those slots
// per 32 products where this costs 2. A 32-byte block of a channel's codes is read as 16 s16 words
// and widened in lane by shifts (even columns: << 8 then >> 8 arithmetic; odd: >> 8) rather than by
// vpmovsxbw (lane-crossing: 0.8 a cycle on Zen 3, against 2 for shifts); x16 holds the MR rows'
// activations widened once per row block in the same even-then-odd order (see prepare_rows). Each
// weight vector is widened once and reused by every row; one channel a pass keeps the tile in
// registers (4 accumulators, 2 weight vectors, activations as memory operands).
// Measured on the Zen 3 VM of 2026-11-24 (family 25, AVX2 only, `cpu_gemm.py --shapes 4096x11008
// --m 32 128 --threads 2 --methods "qk w8a8 chan" quantize_dynamic`, two A/B rounds): m = 32
// 14.7-15.5 against 16.2-21.7 ms (two channels a pass, vpmovsxbw), m = 128 53.5-53.7 against
// 62.5-70.9. Two channels had measured faster on a Zen 2 VM (session 13, with vpmovsxbw).
// The bound is the multiply pipes: vpmaddwd, vpmaddubsw and FMA share two (12 independent ones:
// 2 a cycle together at about 3.2 GHz), so 32 exact s8 x s8 products cost 2 multiplies here and in
// fbgemm's u8 x s8 path (vpmaddubsw, then vpmaddwd by ones; exact only for 7-bit activations) alike,
// but this one adds twice as many s32 partial sums. In L1 this loop runs at
// 77 GMAC/s against 97 for fbgemm's (the inner loops alone, one core, over runs of 16 or 64 blocks;
// with the weights from L2 at this layout's 256-byte stride, 62; benchmarks/NOTES_cpu.md, sessions 19
// and 20). The kernel reads 57.5 on 11008x4096 at M = 32.
template <int MR>
void int8w_tile(const Int8LinearArgs& a, int64_t t, const RowBlock& rb) {
  const int64_t m0 = rb.m0;
  const int16_t* x16 = rb.x16;
  const int64_t KB = a.Kp / kBlockK, group = a.G == 1 ? a.Kp : a.K / a.G, ld16 = x16_stride(a.Kp);
  const int8_t* wt = reinterpret_cast<const int8_t*>(a.w) + t * KB * kTileN * kBlockK;
  __m256 out[MR];
  for (int i = 0; i < MR; ++i) out[i] = _mm256_setzero_ps();
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
          const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + (kb * kTileN + c) * kBlockK));
          const __m256i we = even_s8_to_s16(w), wo = odd_s8_to_s16(w);
          for (int i = 0; i < MR; ++i) {
            const __m256i* xp = reinterpret_cast<const __m256i*>(x16 + i * ld16 + kb * kBlockK);
            acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(we, _mm256_loadu_si256(xp)));
            acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(wo, _mm256_loadu_si256(xp + 1)));
          }
        }
        for (int i = 0; i < MR; ++i) sums[i][c] = _mm256_add_epi32(sums[i][c], acc[i]);
      }
    }
    __m256i d[MR];
    for (int i = 0; i < MR; ++i) d[i] = hsum8(sums[i]);
    add_segment<MR>(a, rb, d, t, k0 / group, k0 / a.segment, out);
  }
  finish_rows<MR>(a, t, m0, out);
}

}  // namespace

void linear_float_tiles_avx2(const FloatLinearArgs& a, int64_t t0, int64_t t1) {
  if (a.bits == 4)
    float_tiles<4>(a, t0, t1);
  else
    float_tiles<8>(a, t0, t1);
}

void linear_int8_tiles_avx2(const Int8LinearArgs& a, int64_t t0, int64_t t1) {
  if (a.bits == 4 && a.segment <= 4 * kBlockK)
    int8_rows<kMR4, int4_tile_short<kMR4, kJC4>, int4_tile_short<1, 4>, ActCopy::kDuplicate>(a, t0, t1);
  else if (a.bits == 4)
    int8_rows<kMR, int4_tile<kMR>, int4_tile<1>, ActCopy::kNone>(a, t0, t1);
  else
    int8_rows<kMR, int8w_tile<kMR>, int8w_tile<1>, ActCopy::kWiden16>(a, t0, t1);
}

}  // namespace qk::cpu
