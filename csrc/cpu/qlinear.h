// Quantized linear layers on the CPU: the repacked weight layouts, the kernel arguments and the
// per-instruction-set entry points. Torch-free: raw pointers and sizes only.
//
// Two families of kernels, one per activation kind:
//
// * float activations (W4A16, W8A16): y = x @ W^T with x in fp32 (bf16/fp16 inputs are widened by
//   the caller). Per weight group g and output channel n the kernel accumulates
//   A = sum_k x[k] * q[n, k] in fp32 and adds s[g, n] * (A - z[g, n] * X_g), X_g = sum_k x[k] over
//   the group (computed once per call). No weight is ever dequantized to a float tensor.
// * int8 activations (W4A8, W8A8 dynamic): x is quantized per row (or per 32-column block) to int8
//   with scale amax / 127, exactly as reference.quantize_activations_int8; integer dot products
//   (int32) are taken per segment (a run of columns sharing one weight group and one activation
//   scale) and added as xs * s[g, n] * (D - z'[g, n] * Xq_seg) in fp32.
//
// Layouts (the unit is a tile of kTileN = 8 consecutive output channels; N is a multiple of 8 by the
// portable format's shape rules). The Python side (quantkernels/backends/cpu.py) builds and undoes
// them with tensor ops; the formulas below are the contract.
//
// Float layout, bits b in {4, 8}, P = 32 / b codes per word, R = K / P word rows:
//   uint32 wf[N/8][R][8]; wf[t][r][i] = portable qweight[r][8t + i]
//   i.e. word (t, r, i) holds the codes q[8t+i, rP .. rP+P) LSB first, b bits each. Pre-shifted use:
//   the kernel masks code j in place (w & (mask << b*j)) and converts it to float, which equals
//   q * 2^(b*j) exactly, so the activation it multiplies is pre-scaled by 2^(-b*j) (see
//   prepare_float_activations). The top code (j = P-1) is shifted down instead (sign bit).
//
// Int4 layout for int8 activations, K padded with zero codes to Kp = roundup(K, 32), KB = Kp / 32:
//   uint8 w4[N/8][KB][4][2][16]; byte (t, kb, j, h, i) = q[n, k0+i] | q[n, k0+16+i] << 4,
//   n = 8t + j + 4h, k0 = 32 kb. One 32-byte load (fixed t, kb, j) holds channel j in its low
//   128-bit lane and channel j+4 in its high lane; low nibbles are columns k0..k0+15, high nibbles
//   k0+16..k0+31, so that four such loads reduce (hadd) to the 8 channels in order.
// Int8 layout for int8 activations:
//   int8 w8[N/8][KB][8][32]; byte (t, kb, i, c) = q[8t+i, 32kb+c] - 128 (0 for padded columns).
//   The zero points given to the int8-activation kernel are then z' = z - 128 (and z' = z for int4).
// Scales and zero points, both families: [N/8][G][8], tile-major, fp32 (or fp16 for float activations
//   where the layer's scales are fp16: FloatLinearArgs::params_fp16); element (t, g, i) belongs to
//   channel n = 8t + i and group g (param_index). A tile's values for all groups are contiguous, so
//   a kernel streaming a run of tiles reads them in order. Row-major [G, N] had every group of a
//   tile on another page N * 4 bytes away: gathering them per call cost the AVX2 GEMV 15-20%.
//   Where every zero point is the same number (symmetric formats), `zeros` is null and `zero` holds
//   it: no zero-point stream at all (the AVX2 GEMV about 5% faster without it).
#pragma once

#include <cstdint>
#include <cstring>

#include "cpu/cpu_features.h"

namespace qk::cpu {

constexpr int kTileN = 8;    // output channels per tile (one AVX2 fp32 vector)
constexpr int kBlockK = 32;  // columns per int8-activation block

// Offsets in the tile-major scales and zero points: of tile t's 8 values for group g, and of (g, n).
constexpr int64_t tile_param_offset(int64_t G, int64_t t, int64_t g) { return (t * G + g) * kTileN; }
constexpr int64_t param_index(int64_t G, int64_t g, int64_t n) { return tile_param_offset(G, n / kTileN, g) + n % kTileN; }
// IEEE binary16 bits to fp32 (exact: every half is a float), for the scalar paths.
inline float half_to_float(uint16_t h) {
  const uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  float v;
  if (exp == 0) {
    v = static_cast<float>(man) * (1.0f / 16777216.0f);  // zero or subnormal: man * 2^-24
  } else {
    const uint32_t bits = (exp == 0x1F ? 0xFFu : exp + 112) << 23 | man << 13;  // inf / NaN, or rebiased
    std::memcpy(&v, &bits, sizeof v);
  }
  return (h & 0x8000u) ? -v : v;
}

// Element i of a tile-major scales / zeros array held as fp32, or as fp16 bits where `half`.
inline float param_at(const void* p, bool half, int64_t i) {
  return half ? half_to_float(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}
// The zero point at offset p of a tile-major zeros array, or `zero` where there is none (see above).
inline float zero_at(const void* zeros, bool half, float zero, int64_t p) {
  return zeros ? param_at(zeros, half, p) : zero;
}

struct FloatLinearArgs {
  const uint32_t* w;     // uint32 [N/8][K*bits/32][8], float layout
  const void* scales;    // [N/8][G][8], tile-major: fp32, or fp16 where params_fp16
  const void* zeros;     // the same (same dtype) for the real zero points; nullptr: every zero point is `zero`
  float zero;            // the zero point of every channel and group where zeros == nullptr
  const float* bias;     // fp32 [N] or nullptr
  const float* xs;       // fp32 [M, K] (row stride ldx), activations pre-scaled by prepare_float_activations
  const float* xsum;     // fp32 [M, G], per-group sums of the unscaled activations
  float* out;            // fp32 [M, N]
  int64_t M, N, K, G;    // G groups of K / G columns each
  int64_t ldx;           // row stride of xs, see staggered_stride
  int bits;              // 4 or 8
  // scales and zeros as fp16 (the layer's own scale dtype, so no rounding): the memory-bound GEMV
  // then reads 2 bytes of scale a group and channel instead of 4 (3% of a g128 layer's bytes).
  bool params_fp16 = false;
};

struct Int8LinearArgs {
  const uint8_t* w;       // bits 4: uint8 [N/8][Kp/32][4][2][16]; bits 8: int8 [N/8][Kp/32][8][32]
  const float* scales;    // fp32 [N/8][G][8], tile-major
  const float* zeros;     // fp32 [N/8][G][8], z' (see the layout notes); nullptr: every z' is `zero`
  float zero;             // z' of every channel and group where zeros == nullptr
  const float* bias;      // fp32 [N] or nullptr
  const int8_t* xq;       // int8 [M, Kp] (row stride ldq), zero padded
  const float* xscale;    // fp32 [M, A]; A = Kp / 32 (per-block) or 1 (per-row)
  const int32_t* xblock;  // int32 [M, Kp / 32], sum of xq over each 32-column block
  float* out;             // fp32 [M, N]
  int64_t M, N, K, Kp, G;
  int64_t ldq;            // row stride of xq, see staggered_stride
  int64_t segment;        // columns per integer accumulation run; divides K/G (or is any multiple
                          // of 32 when G == 1); 32 with per-block activation scales
  int bits;               // 4 or 8
  bool act_per_block;     // activation scale per 32 columns (else per row)
};

// ---- shared, scalar helpers (qlinear_common.cpp) ----------------------------------------------
// Row stride (in elements) for a per-call activation buffer of n elements per row: one cache line
// more than needed, so that the rows a register tile reads together do not alias in the L1 sets
// (rows K = 4096 floats apart would all map to the same set).
constexpr int64_t staggered_stride(int64_t n, int64_t elem_bytes) { return n + 64 / elem_bytes; }
// xs[m, k] = x[m, k] * 2^(-bits * (k % P)) except for the top code slot (k % P == P-1), which
// keeps x[m, k]; xsum[m, g] = sum of x[m, k] over group g. x: fp32 [M, K] with row stride ldx.
void prepare_float_activations(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t G, int bits,
                               float* xs, int64_t ldxs, float* xsum);
// The dynamic int8 quantization of reference.quantize_activations_int8 (round half to even, clamp
// to +-127, scale = amax / 127 or 1 for an all-zero block), plus the per-32-block sums of xq.
void quantize_activations_int8(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t Kp,
                               bool per_block, int8_t* xq, int64_t ldq, float* xscale, int32_t* xblock);
// Columns per integer accumulation run: 32 with per-block activation scales, else the weight group,
// split so that an int32 sum cannot overflow (|xq * w| <= 127 * 128 per column).
int64_t int8_segment_length(int64_t K, int64_t Kp, int64_t G, bool act_per_block);

// ---- kernels: compute output tiles [t0, t1) (channels 8*t0 .. 8*t1) for all M rows ------------
// Each instruction set provides the same two functions; dispatch is in qlinear_dispatch.cpp.
#define QK_DECLARE_QLINEAR(isa)                                                     \
  void linear_float_tiles_##isa(const FloatLinearArgs& a, int64_t t0, int64_t t1); \
  void linear_int8_tiles_##isa(const Int8LinearArgs& a, int64_t t0, int64_t t1);
QK_DECLARE_QLINEAR(scalar)
QK_DECLARE_QLINEAR(avx2)
QK_DECLARE_QLINEAR(avx512)
QK_DECLARE_QLINEAR(avx512vnni)
QK_DECLARE_QLINEAR(avxvnni)
QK_DECLARE_QLINEAR(neon)
QK_DECLARE_QLINEAR(i8mm)
#undef QK_DECLARE_QLINEAR

using FloatTilesFn = void (*)(const FloatLinearArgs&, int64_t, int64_t);
using Int8TilesFn = void (*)(const Int8LinearArgs&, int64_t, int64_t);

// The kernels for an instruction set, or nullptr when this build has none for it (another
// architecture). The caller checks isa_supported() first: these never look at the CPU.
FloatTilesFn float_tiles_for(Isa isa);
Int8TilesFn int8_tiles_for(Isa isa);

}  // namespace qk::cpu
