// The 256-bit int8-activation driver shared by qlinear_avx2.cpp and qlinear_avxvnni.cpp: the
// tile-major parameters, the per-panel activation copies (RowBlock), the segment epilogue and the
// loop over row panels, L2-sized tile groups and row blocks (int8_rows) that calls a file's tile
// kernels. Like qlinear_x86.h it lives in an anonymous namespace, so every file compiles its own copy
// with its own flags.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/qlinear_x86.h"

namespace qk::cpu {
namespace {

// Tiles are visited in groups whose weights stay in L2 while every block of rows passes over them
// (the rows' activations then stay in L1 across the group's tiles).
// The column/channel passes of the int8-activation kernels run over chunks of this many blocks
// (2-4 KiB of a tile's weights), so that every pass after the first reads L1.
constexpr int64_t kChunkBlocks = 16;

// The tile-major scales and zero points ([N/8][G][8], see qlinear.h) as the tile kernels read them.
struct TileParams {
  const void* s;
  const void* z;  // nullptr: every zero point is zc
  float zc;
  int64_t G;
  bool half = false;  // s and z hold fp16 bits (float-activation layers with fp16 scales), else fp32
  __m256 scale(int64_t t, int64_t g) const { return load_params8(s, half, tile_param_offset(G, t, g)); }
  __m256 zero(int64_t t, int64_t g) const { return tile_zeros(z, half, zc, G, t, g); }
  void prefetch(int64_t t, int64_t g) const {  // tile t's values of group g into L1
    const int64_t at = tile_param_offset(G, t, g) * (half ? 2 : 4);
    _mm_prefetch(static_cast<const char*>(s) + at, _MM_HINT_T0);
    if (z) _mm_prefetch(static_cast<const char*>(z) + at, _MM_HINT_T0);
  }
};
inline TileParams float_params(const FloatLinearArgs& a) { return {a.scales, a.zeros, a.zero, a.G, a.params_fp16}; }

// Row strides of the per-row-block activation copies below: 64 bytes more than a row, so the rows a
// tile reads together do not alias in the L1 sets.
inline int64_t x16_stride(int64_t Kp) { return Kp + 32; }     // int16 elements
inline int64_t xd_stride(int64_t Kp) { return 2 * Kp + 64; }  // bytes

// The activations of one block of rows, prepared once per row block by int8_rows and read by every
// tile of the current tile group.
struct RowBlock {
  const int16_t* x16;  // W8A8: s16 [MR][x16_stride(Kp)], xq widened
  const int8_t* xd;    // W4A8: s8 [MR][xd_stride(Kp)], each 32-column block as 64 bytes: columns
                       // 0-15 twice, then 16-31 twice (the broadcast operands of vpmaddubsw or vpdpbusd,
                       // so they are read as memory operands instead of occupying registers)
  const float* xseg;   // fp32 [MR][nseg]: sum of xq over each integer segment (zero-point correction)
  int64_t nseg;
  int64_t m0;          // first row of the block
  TileParams p;        // the layer's scales and zero points (set by int8_rows)

  // The block that starts i rows further down (a row panel is prepared at once, see int8_rows).
  RowBlock rows_from(int64_t i, int64_t Kp, const TileParams& params) const {
    return RowBlock{x16 + i * x16_stride(Kp), xd + i * xd_stride(Kp), xseg + i * nseg, nseg, m0 + i, params};
  }
};

// hsum4 (qlinear_x86.h) with unpacks instead of vphaddd, which issues at one per two cycles on Zen 3
// (measured 0.5/cycle against 2/cycle for vpunpck*). The W4A8 g128 epilogue runs it every 4 blocks;
// out-of-order overlap hid the difference end to end (same time within noise), so this is only the
// cheaper sequence, not a measured gain.
inline __m256i hsum4_unpack(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
  const __m256i s01 = _mm256_add_epi32(_mm256_unpacklo_epi32(a0, a1), _mm256_unpackhi_epi32(a0, a1));
  const __m256i s23 = _mm256_add_epi32(_mm256_unpacklo_epi32(a2, a3), _mm256_unpackhi_epi32(a2, a3));
  return _mm256_add_epi32(_mm256_unpacklo_epi64(s01, s23), _mm256_unpackhi_epi64(s01, s23));
}

// 32 int8 values read as 16 int16 words, widened in lane: the even-indexed bytes (<< 8, then >> 8
// arithmetic) and the odd-indexed ones (>> 8 arithmetic). W8A8 splits its weights and builds its
// activation copy with the same pair, so the two sides' orders agree (see int8w_tile).
inline __m256i even_s8_to_s16(__m256i v) { return _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 8); }
inline __m256i odd_s8_to_s16(__m256i v) { return _mm256_srai_epi16(v, 8); }

// Adds one integer segment [k0, k1) (weight group g) of MR rows to their fp32 sums: the scale and
// scale * zero-point vectors are loaded once for all rows. With per-row activation scales the scale
// is applied once at the end (finish_rows); per-32-block scales are applied here.
template <int MR>
inline void add_segment(const Int8LinearArgs& a, const RowBlock& rb, const __m256i* d, int64_t t, int64_t g,
                        int64_t seg, __m256* out) {
  const int64_t KB = a.Kp / kBlockK, b0 = seg * (a.segment / kBlockK);
  const __m256 s = rb.p.scale(t, g);
  const __m256 sz = _mm256_mul_ps(s, rb.p.zero(t, g));
  for (int i = 0; i < MR; ++i) {
    __m256 v = _mm256_fnmadd_ps(sz, _mm256_set1_ps(rb.xseg[i * rb.nseg + seg]), _mm256_mul_ps(s, _mm256_cvtepi32_ps(d[i])));
    if (a.act_per_block) v = _mm256_mul_ps(v, _mm256_set1_ps(a.xscale[(rb.m0 + i) * KB + b0]));
    out[i] = _mm256_add_ps(out[i], v);
  }
}

template <int MR>
inline void finish_rows(const Int8LinearArgs& a, int64_t t, int64_t m0, const __m256* out) {
  const __m256 b = a.bias ? _mm256_loadu_ps(a.bias + t * kTileN) : _mm256_setzero_ps();
  for (int i = 0; i < MR; ++i) {
    const __m256 xs = _mm256_set1_ps(a.act_per_block ? 1.0f : a.xscale[m0 + i]);
    _mm256_storeu_ps(a.out + (m0 + i) * a.N + t * kTileN, _mm256_fmadd_ps(out[i], xs, b));
  }
}

// W4A8: blocks [kb0, kb1) of channel columns j0 .. j0 + JC - 1 of tile wt (column j holds channels j
// and j + 4, see the layout) for MR rows of the duplicated activation copy (RowBlock::xd, row stride
// ldd), added into acc[i][j] by dot(acc, lo, hi, xp): lo / hi are the column's low / high nibbles
// (block columns 0-15 / 16-31) as unsigned bytes, xp the row's two duplicated 16-column halves.
template <int MR, int JC, class Dot>
inline void int4_columns(const uint8_t* wt, const int8_t* xd, int64_t ldd, int64_t kb0, int64_t kb1, int j0,
                         __m256i (&acc)[MR][JC], Dot dot) {
  const __m256i nib = _mm256_set1_epi8(0x0F);
  for (int64_t kb = kb0; kb < kb1; ++kb) {
    const int8_t* xb = xd + kb * 64;
    for (int j = 0; j < JC; ++j) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + kb * 128 + (j0 + j) * 32));
      const __m256i lo = _mm256_and_si256(w, nib), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), nib);
      for (int i = 0; i < MR; ++i) acc[i][j] = dot(acc[i][j], lo, hi, reinterpret_cast<const __m256i*>(xb + i * ldd));
    }
  }
}

// Pulls the next tile group's weights into L2 while the current one is computed: every (row block,
// tile) step prefetches an equal share, so the group is resident when its first row block starts.
class L2Prefetcher {
 public:
  L2Prefetcher(const uint8_t* begin, int64_t bytes, int64_t steps)
      : p_(begin), end_(begin + bytes), per_step_(((bytes + 63) / 64 + steps - 1) / std::max<int64_t>(1, steps)) {}
  void step() {
    for (int64_t l = 0; l < per_step_ && p_ < end_; ++l, p_ += 64)
      _mm_prefetch(reinterpret_cast<const char*>(p_), _MM_HINT_T1);
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
  int64_t per_step_;
};

// The activation copy a tile kernel reads (see RowBlock).
enum class ActCopy { kNone, kWiden16, kDuplicate };

// The copies start on a cache line: a large std::vector's data sits 16 bytes past a page boundary
// (malloc's header), where every other 32-byte load of a block straddled two lines, each such load
// costing two of the two load slots a cycle.
constexpr int64_t kAlignPad = 64;  // elements of slack (>= 64 bytes for either element type)
template <typename T>
T* align_line(T* p) {
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t{63});
}

// Builds the RowBlock of rows [m, m + mr) into the thread's buffers.
inline RowBlock prepare_rows(const Int8LinearArgs& a, int64_t m, int mr, ActCopy copy, std::vector<int16_t>& x16,
                             std::vector<int8_t>& xd, std::vector<float>& xseg) {
  const int64_t KB = a.Kp / kBlockK, nseg = (a.Kp + a.segment - 1) / a.segment;
  const int64_t ld16 = x16_stride(a.Kp), ldd = xd_stride(a.Kp);
  if (static_cast<int64_t>(xseg.size()) < mr * nseg) xseg.resize(mr * nseg);
  const int64_t n16 = mr * ld16 + kAlignPad, nd = mr * ldd + kAlignPad;
  if (copy == ActCopy::kWiden16 && static_cast<int64_t>(x16.size()) < n16) x16.resize(n16);
  if (copy == ActCopy::kDuplicate && static_cast<int64_t>(xd.size()) < nd) xd.resize(nd);
  int16_t* const x16a = align_line(x16.data());
  int8_t* const xda = align_line(xd.data());
  for (int i = 0; i < mr; ++i) {
    const int8_t* xr = a.xq + (m + i) * a.ldq;
    const int32_t* xb = a.xblock + (m + i) * KB;
    for (int64_t s = 0; s < nseg; ++s) {
      int32_t sum = 0;
      for (int64_t b = s * a.segment / kBlockK; b < std::min(KB, (s + 1) * a.segment / kBlockK); ++b) sum += xb[b];
      xseg[i * nseg + s] = static_cast<float>(sum);
    }
    if (copy == ActCopy::kWiden16) {
      for (int64_t k = 0; k < a.Kp; k += kBlockK) {  // a block's even columns, then its odd ones
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + k));
        __m256i* d = reinterpret_cast<__m256i*>(x16a + i * ld16 + k);
        _mm256_storeu_si256(d, even_s8_to_s16(v));
        _mm256_storeu_si256(d + 1, odd_s8_to_s16(v));
      }
    } else if (copy == ActCopy::kDuplicate) {
      for (int64_t kb = 0; kb < KB; ++kb) {
        const __m128i* xp = reinterpret_cast<const __m128i*>(xr + kb * kBlockK);
        __m256i* d = reinterpret_cast<__m256i*>(xda + i * ldd + kb * 64);
        _mm256_storeu_si256(d, _mm256_broadcastsi128_si256(_mm_loadu_si128(xp)));
        _mm256_storeu_si256(d + 1, _mm256_broadcastsi128_si256(_mm_loadu_si128(xp + 1)));
      }
    }
  }
  return RowBlock{x16a, xda, xseg.data(), nseg, m, TileParams{}};
}

// Rows in panels of up to kRowPanel, whose activation copies are built once per call; within a
// panel, tiles in L2-sized groups; within a group, blocks of MR rows (then single rows) pass over
// every tile. (Building the copies per tile group cost ~5% at K = 4096, m = 32.)
constexpr int64_t kRowPanel = 64;

template <int MR>
using Int8Tile = void (*)(const Int8LinearArgs&, int64_t, const RowBlock&);

template <int MR, Int8Tile<MR> TileMR, Int8Tile<1> Tile1, ActCopy COPY>
void int8_rows(const Int8LinearArgs& a, int64_t t0, int64_t t1) {
  const int64_t tile_bytes = a.Kp * kTileN * a.bits / 8;
  // Half of the L2 budget: the current group and the next one (being prefetched) fit together.
  const int64_t tg = std::max<int64_t>(1, l2_tile_group(tile_bytes) / 2);
  thread_local std::vector<int16_t> x16;
  thread_local std::vector<int8_t> xd;
  thread_local std::vector<float> xseg;
  for (int64_t p0 = 0; p0 < a.M; p0 += kRowPanel) {
    const int64_t p1 = std::min(a.M, p0 + kRowPanel);
    const RowBlock panel = prepare_rows(a, p0, static_cast<int>(p1 - p0), COPY, x16, xd, xseg);
    for (int64_t g0 = t0; g0 < t1; g0 += tg) {
      const int64_t g1 = std::min(t1, g0 + tg), next_end = std::min(t1, g1 + tg);
      L2Prefetcher pf(a.w + g1 * tile_bytes, (next_end - g1) * tile_bytes, ((p1 - p0 + MR - 1) / MR) * (g1 - g0));
      // Made here rather than once before the loops: hoisted, GCC kept some of the W4A8 tile's
      // accumulators on the stack (qlinear_bench w4a8, m = 32, 4096x11008 g128: 22.4 against 19.9 ms).
      const TileParams tp{a.scales, a.zeros, a.zero, a.G};
      for (int64_t m = p0; m < p1;) {
        const int mr = p1 - m >= MR ? MR : 1;
        const RowBlock rb = panel.rows_from(m - p0, a.Kp, tp);
        for (int64_t t = g0; t < g1; ++t) {
          pf.step();
          if (mr == MR)
            TileMR(a, t, rb);
          else
            Tile1(a, t, rb);
        }
        m += mr;
      }
    }
  }
}

}  // namespace
}  // namespace qk::cpu
