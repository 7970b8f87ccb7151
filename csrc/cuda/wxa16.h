// Launchers of the CUDA W4A16 / W8A16 kernels (torch-free; included by csrc/bindings/cuda_ops.cpp).
//
// The weight layout ("mma-shuffled", built once by quantkernels/backends/cuda.py at prepare):
//
//   qweight  int32 [N/16, K/KC, 32, 4]   KC = 64 for 4 bits, 32 for 8 bits
//
// Output rows are cut into n-tiles of 16 rows, input columns into chunks of KC columns. For one
// (n-tile, chunk), lane l = 4*g + t of a warp owns 16 bytes: the weights of rows r0 = 16*nt + g
// and r1 = r0 + 8 at the KC/4 consecutive columns k = KC*kc + (KC/4)*t + [0, KC/4). Those columns
// are grouped in runs of 4 (run j covers k = KC*kc + (KC/4)*t + 4j + i, i = 0..3); the mma's
// logical k positions (2t, 2t+1, 2t+8, 2t+9) of k-tile j are mapped to i = 0, 1, 2, 3, which is
// harmless because a dot product does not care about the order of its terms, and it makes the
// activations each lane needs one contiguous 8-byte run.
//   4 bits: word j of the lane holds run j. Nibble h + {0, 4, 2, 6}[i] (bits 4*nibble..) holds
//           q[r_h, k_i], so that (word >> 4e) & 0x000F000F yields the mma A register e:
//           e=0: (r0; i0, i1)  e=1: (r1; i0, i1)  e=2: (r0; i2, i3)  e=3: (r1; i2, i3).
//   8 bits: words 2j and 2j+1 hold run j. Word 2j + (i >> 1), byte 2h + (i & 1) holds q[r_h, k_i],
//           so byte_perm(word, magic, 0x4140 / 0x4342) yields the (r0 / r1) register pairs.
//
//   scales   uint32 [G, N/16, 8]   (s[r0], s[r1]) of lane group g, in the activation dtype (half2
//                                  or bfloat162 bit pattern)
//   zeros    uint32 [G, N/16, 8]   (z[r0], z[r1]) as values in the activation dtype, or null for
//                                  the symmetric zero 2**(bits-1)
//   kgroup   int32  [K/16]         group of each run of 16 (sorted) input columns, or null for
//                                  group = (k/16) / (group_size/16)
//
// Activation order (act_order): the backend sorts the columns by group at prepare and permutes
// the activations' columns at run time; the kernels only ever see sorted columns.
//
// Shape rules (checked by the binding): N % 16 == 0, K % KC == 0, group_size % 16 == 0 (or
// per-channel), x rows 16-byte aligned.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace qk {
namespace cuda {

enum class ActDtype { kF16 = 0, kBF16 = 1 };

inline int chunk_cols(int bits) { return bits == 4 ? 64 : 32; }

// Workspace for partial sums: the stream-K tiles (m <= 8), the middle-m tiles' split of K over
// blocks (chosen by shape when a workspace is given) and the forced split (`ksplit`, tuning).
// Partial sums go through `ws`: fp32 [M, N] followed by int counters, all zero before a launch and
// all zero again after it (the last block or warp of each tile cleans up), so one zeroed buffer
// serves every launch on one stream. Launches on concurrent streams need a buffer each. Without
// one, the stream-K tiles run as their plain twins and the middle-m tiles split K in the block only.
struct SplitK {
  float* ws = nullptr;   // zeroed, wxa16_gemm_workspace_floats(M, N) floats at least, or null
  int64_t ws_numel = 0;
  int ksplit = -1;       // -1: chosen by shape (1 without a workspace); else forced (tuning)
};

inline int64_t wxa16_gemm_workspace_floats(int M, int N) {
  return static_cast<int64_t>(M) * N + static_cast<int64_t>(N / 16) * ((M + 7) / 8);
}

// out[M, N] = x[M, K] @ W^T + bias, fp32 accumulation on the tensor cores (mma.sync m16n8k16,
// weights as the A operand). Serves any M >= 1 (in passes of up to 32 rows, or up to 128 with the
// middle-m tiles, which stage activations in shared memory). Returns
// cudaSuccess, cudaErrorInvalidValue for an unsupported combination, or the launch error.
cudaError_t wxa16_gemm(const void* x,          // [M, K] act dtype, row stride ldx elements
                       int64_t ldx,
                       const int32_t* qweight,  // [N/16, K/KC, 32, 4] shuffled
                       const uint32_t* scales,  // [G, N/16, 8]
                       const uint32_t* zeros,   // [G, N/16, 8] or null
                       const int32_t* kgroup,   // [K/16] or null
                       int group_size,          // columns per group (K for per-channel)
                       const void* bias,        // [N] act dtype or null
                       void* out,               // [M, N] act dtype
                       int M, int N, int K, int bits, ActDtype dtype, int num_sms,
                       int tile,  // -1: chosen by m and N; else an index into the kernel's tile list (tuning)
                       const SplitK& split, cudaStream_t stream);

// Number of GEMM tile shapes (valid `tile` values are -1 and 0 .. wxa16_gemm_num_tiles() - 1).
int wxa16_gemm_num_tiles();

// The tile wxa16_gemm's automatic choice (tile = -1) takes for M rows of an N x K `bits`-bit layer,
// with or without a workspace, on a GPU of num_sms SMs whose blocks may opt in to smem_optin bytes of
// shared memory (<= 0: the current device's). For tests and benchmarks.
int wxa16_gemm_auto_tile(int M, int N, int K, int bits, bool have_ws, int num_sms, int smem_optin);

// w[N, K] (sorted columns, act dtype, row-major) = dequantized weight.
cudaError_t wxa16_dequantize(const int32_t* qweight, const uint32_t* scales, const uint32_t* zeros,
                             const int32_t* kgroup, int group_size,
                             void* w,  // [N, K] act dtype
                             int N, int K, int bits, ActDtype dtype, cudaStream_t stream);

// ---- Hopper (csrc/cuda/wxa16_gemm_sm90.cu): the same GEMM on wgmma, for middle and large m.

// True when the extension holds the sm_90a build of the wgmma kernels and the current device
// loaded it (a Hopper GPU); otherwise wxa16_gemm_wgmma must not be called.
bool wxa16_gemm_wgmma_available();

// Rows of the wgmma GEMM's activation scratch for M rows (M rounded up to the largest tile).
inline int64_t wxa16_gemm_wgmma_scratch_rows(int64_t M) { return (M + 255) / 256 * 256; }

// Number of wgmma tile configs (valid `config` values are -1 and 0 .. wxa16_gemm_wgmma_num_configs() - 1).
int wxa16_gemm_wgmma_num_configs();

// Workspace of the wgmma GEMM's stream-K split: a partial tile (BN rows x 256 channels fp32; the same
// size for the 256-row x 128-channel tiles) for each block of one wave, then an int counter per output
// tile; all zero before a launch and after it. This size holds a wave of num_sms blocks of the largest
// tile the automatic config gives M rows; with less, stream-K runs fewer blocks (or none).
inline int64_t wxa16_gemm_wgmma_workspace_floats(int M, int N, int num_sms) {
  const int64_t bn = M <= 32 ? 32 : M <= 64 ? 64 : 128;
  return num_sms * bn * 256 + static_cast<int64_t>(N / 16) * ((M + 7) / 8);
}

// out[M, N] = x[M, K] @ W^T + bias, like wxa16_gemm (same weight layout and arguments), with K % 64
// == 0. `xp` is scratch of wxa16_gemm_wgmma_scratch_rows(M) x K activation-dtype elements (16-byte
// aligned) that receives x cut into the tiles the wgmma kernel reads. Where the layer has too few
// output tiles for the SMs, K is split over the blocks of a thread-block cluster (no workspace) or,
// given split.ws (wxa16_gemm_wgmma_workspace_floats), stream-K over one wave, whichever models faster.
// split.ksplit: -1 chosen so; 1-8 that many blocks of a cluster per tile; 0 stream-K (tuning).
cudaError_t wxa16_gemm_wgmma(const void* x,          // [M, K] act dtype, row stride ldx elements (even)
                             int64_t ldx,
                             void* xp,               // [scratch rows, K] act dtype scratch
                             const int32_t* qweight, const uint32_t* scales, const uint32_t* zeros,
                             const int32_t* kgroup, int group_size, const void* bias,
                             void* out,              // [M, N] act dtype
                             int M, int N, int K, int bits, ActDtype dtype, int num_sms,
                             int config,  // -1: chosen by m; else an index into the config list (tuning)
                             const SplitK& split, cudaStream_t stream);

}  // namespace cuda
}  // namespace qk
