// AVX-VNNI quantized-linear kernels: the VEX-encoded, 256-bit vpdpbusd (u8 x s8, four products added
// to each 32-bit lane, no intermediate saturation) of CPUs that have it without AVX-512-VNNI, such as
// Intel's Alder Lake and later client cores. Where AVX-512-VNNI is there too (Sapphire Rapids, Zen 5)
// that path is chosen ahead of this one. Only the int8-activation kernels are new here. Float
// activations run the AVX2 kernels, and the row panels, activation copies, L2 tile groups and segment
// epilogue are the AVX2 file's (qlinear_int8_256.h). One vpdpbusd replaces the AVX2 tiles'
// vpmaddubsw + vpmaddwd + vpaddd (W4A8) or widening + 2 vpmaddwd + 2 vpaddd (W8A8).
// Layouts: the int8-activation layouts of qlinear.h (limits: N % 8 == 0, K as they state).
// Compiled alone with the avxvnni flags of setup.py; only called when cpuid + XCR0 report it.
// Test: tests/test_cpu_backend.py (isa="avx_vnni", skipped on CPUs without it); on any x86 CPU,
// ci/avx512_emulated_test.sh runs this file with vpdpbusd emulated. Benchmark:
// QUANTKERNELS_CPU_ISA=avx_vnni benchmarks/cpu_gemm.py; one core: qlinear_bench isa=avxvnni
// (tests/cpu_harness/qlinear_bench.cpp).
// GCC's loop-header copying (-ftree-ch) kept the W8A8 loops' accumulators in two register sets, as
// in qlinear_avx512vnni.cpp: 11-12 register moves and stack stores a block of 8 vpdpbusd (GCC 12),
// none without it. The W4A8 loop compiles the same either way. So it is off for this whole file, which
// holds only the int8-activation kernels and the driver they inline.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-tree-ch")
#endif
#include <algorithm>
#include <cstdint>

#include "cpu/qlinear_int8_256.h"

namespace qk::cpu {
namespace {

// Register tiles. On the GPU host's Xeon (qlinear_bench isa=avxvnni, one core, 3-7 interleaved rounds,
// benchmarks/NOTES_cpu.md session 26) these were the fastest or level in most rounds: W8A8 with 1
// channel a pass took 1.08-1.41x the time and with 4 channels 1.07-1.26x (once 0.79x), W4A8 with 2
// columns 1.01-1.19x at m = 8-32, and 3 rows a pass were slower in most rounds. 6 rows were mixed, and
// leave more rows to the one-row tile.
constexpr int kMR = 4;  // rows a pass in both tiles
constexpr int kJC = 1;  // W4A8: channel columns a pass (each column is channels j and j + 4)
constexpr int kCP = 2;  // W8A8: channels a pass

// W4A8: MR rows x JC channel columns a pass over a chunk of blocks (column j holds channels j and
// j + 4, see the layout). The unpacked nibbles are the unsigned operand; the activations, in the
// duplicated copy of RowBlock::xd (columns 0-15 twice, then 16-31 twice), are the signed one, read
// from memory. A segment's sums stay in int32 (no s16 stage to widen: vpdpbusd cannot saturate),
// and reduce to the 8 channels after the last column.
template <int MR, int JC>
void int4_tile(const Int8LinearArgs& a, int64_t t, const RowBlock& rb) {
  static_assert(4 % JC == 0, "JC divides the 4 channel columns of a tile");
  const int64_t KB = a.Kp / kBlockK, group = a.G == 1 ? a.Kp : a.K / a.G, ldd = xd_stride(a.Kp);
  const uint8_t* wt = a.w + t * KB * 128;
  __m256 out[MR];
  for (int i = 0; i < MR; ++i) out[i] = _mm256_setzero_ps();
  int64_t s = 0;
  for (int64_t k0 = 0; k0 < a.Kp; k0 += a.segment, ++s) {
    const int64_t kb0 = k0 / kBlockK, kb1 = std::min(a.Kp, k0 + a.segment) / kBlockK;
    __m256i sums[MR][4];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < 4; ++j) sums[i][j] = _mm256_setzero_si256();
    for (int64_t q0 = kb0; q0 < kb1; q0 += kChunkBlocks) {
      const int64_t q1 = std::min(kb1, q0 + kChunkBlocks);
      for (int j0 = 0; j0 < 4; j0 += JC) {
        __m256i acc[MR][JC];
        for (int i = 0; i < MR; ++i)
          for (int j = 0; j < JC; ++j) acc[i][j] = _mm256_setzero_si256();
        int4_columns<MR, JC>(wt, rb.xd, ldd, q0, q1, j0, acc, [](__m256i s, __m256i lo, __m256i hi, const __m256i* x) {
          s = _mm256_dpbusd_avx_epi32(s, lo, _mm256_loadu_si256(x));
          return _mm256_dpbusd_avx_epi32(s, hi, _mm256_loadu_si256(x + 1));
        });
        for (int i = 0; i < MR; ++i)
          for (int j = 0; j < JC; ++j) sums[i][j0 + j] = _mm256_add_epi32(sums[i][j0 + j], acc[i][j]);
      }
    }
    __m256i d[MR];
    for (int i = 0; i < MR; ++i) d[i] = hsum4_unpack(sums[i][0], sums[i][1], sums[i][2], sums[i][3]);
    add_segment<MR>(a, rb, d, t, k0 / group, s, out);
  }
  finish_rows<MR>(a, t, rb.m0, out);
}

// W8A8: MR rows x CP channels a pass over a chunk of blocks. The stored bytes w' = q - 128 with
// their top bit flipped are q itself, the unsigned operand; the activations xq, straight from the
// caller's buffer (no copy), are the signed one. vpdpbusd then sums q x = w' x + 128 x, and the
// segment's 128 Xseg is subtracted in int32 before the epilogue, which leaves the AVX2 tile's exact
// D = sum w' x. No overflow: |q x| <= 255 * 127 and a segment is at most 32768 columns
// (int8_segment_length), so every sum stays below 2^31.
template <int MR, int CP>
void int8w_tile(const Int8LinearArgs& a, int64_t t, const RowBlock& rb) {
  static_assert(kTileN % CP == 0, "CP divides the 8 channels of a tile");
  const int64_t KB = a.Kp / kBlockK, group = a.G == 1 ? a.Kp : a.K / a.G;
  const uint8_t* wt = a.w + t * KB * kTileN * kBlockK;
  const int8_t* x0 = a.xq + rb.m0 * a.ldq;
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  __m256 out[MR];
  for (int i = 0; i < MR; ++i) out[i] = _mm256_setzero_ps();
  int64_t s = 0;
  for (int64_t k0 = 0; k0 < a.Kp; k0 += a.segment, ++s) {
    const int64_t kb0 = k0 / kBlockK, kb1 = std::min(a.Kp, k0 + a.segment) / kBlockK;
    __m256i sums[MR][kTileN];
    for (int i = 0; i < MR; ++i)
      for (int c = 0; c < kTileN; ++c) sums[i][c] = _mm256_setzero_si256();
    for (int64_t q0 = kb0; q0 < kb1; q0 += kChunkBlocks) {
      const int64_t q1 = std::min(kb1, q0 + kChunkBlocks);
      for (int c0 = 0; c0 < kTileN; c0 += CP) {
        __m256i acc[MR][CP];
        for (int i = 0; i < MR; ++i)
          for (int c = 0; c < CP; ++c) acc[i][c] = _mm256_setzero_si256();
        for (int64_t kb = q0; kb < q1; ++kb) {
          __m256i w[CP];
          for (int c = 0; c < CP; ++c)
            w[c] = _mm256_xor_si256(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + (kb * kTileN + c0 + c) * kBlockK)), flip);
          for (int i = 0; i < MR; ++i) {
            const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0 + i * a.ldq + kb * kBlockK));
            for (int c = 0; c < CP; ++c) acc[i][c] = _mm256_dpbusd_avx_epi32(acc[i][c], w[c], x);
          }
        }
        for (int i = 0; i < MR; ++i)
          for (int c = 0; c < CP; ++c) sums[i][c0 + c] = _mm256_add_epi32(sums[i][c0 + c], acc[i][c]);
      }
    }
    __m256i d[MR];
    for (int i = 0; i < MR; ++i) {
      // Xseg is an integer (|Xseg| <= 127 * 32768), exact in the fp32 copy.
      const int32_t x128 = static_cast<int32_t>(rb.xseg[i * rb.nseg + s]) * 128;
      d[i] = _mm256_sub_epi32(hsum8(sums[i]), _mm256_set1_epi32(x128));
    }
    add_segment<MR>(a, rb, d, t, k0 / group, s, out);
  }
  finish_rows<MR>(a, t, rb.m0, out);
}

}  // namespace

void linear_float_tiles_avxvnni(const FloatLinearArgs& a, int64_t t0, int64_t t1) {
  linear_float_tiles_avx2(a, t0, t1);
}

void linear_int8_tiles_avxvnni(const Int8LinearArgs& a, int64_t t0, int64_t t1) {
  if (a.bits == 4)
    int8_rows<kMR, int4_tile<kMR, kJC>, int4_tile<1, 4>, ActCopy::kDuplicate>(a, t0, t1);
  else
    int8_rows<kMR, int8w_tile<kMR, kCP>, int8w_tile<1, kTileN>, ActCopy::kNone>(a, t0, t1);
}

}  // namespace qk::cpu
