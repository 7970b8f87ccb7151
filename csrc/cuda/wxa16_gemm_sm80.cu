// W4A16 / W8A16 GEMM on the tensor cores (mma.sync m16n8k16, sm_80 and newer): out = x @ W^T + b.
//
// Computes out^T = W x^T so that the quantized weights are the mma's A operand (16 output rows per
// tile) and the few activation rows are its B operand (8 per tile): small m wastes no weight reads
// and every weight byte is read from memory exactly once per pass of up to 64 rows. Each lane
// streams its 16-byte slices of the mma-shuffled weight (layout in wxa16.h) straight from global
// memory into registers, one pipeline stage ahead, dequantizes them with magic-number arithmetic
// and accumulates in fp32. Activations are re-read through L1/L2 (they are small and shared by
// all warps of a block). A block is 8 warps: WN n-slices x WK k-slices (WN * WK = 8); the k-slices
// are summed through shared memory in a fixed order (deterministic), so no workspace and no
// atomics: every launch is CUDA-graph safe.
//
// Limits: N % 16 == 0, K % KC == 0 (KC = 64 for 4 bits, 32 for 8 bits), group size % 16 == 0,
// x rows 16-byte aligned; any M >= 1 (grid.y passes of 8 * MT rows).
// Test: PYTHONPATH=$PWD python -m pytest -q tests/test_cuda_backend.py (on a GPU);
// benchmark: PYTHONPATH=$PWD python benchmarks/gpu_gemm.py.
#include "cuda/wxa16.h"
#include "cuda/wxa16_common.cuh"

namespace qk {
namespace cuda {
namespace {

constexpr int kWarps = 8;

template <int BITS, typename T, int MT, int NT>
__global__ void __launch_bounds__(kWarps * 32) wxa16_gemm_kernel(
    const T* __restrict__ x,               // [M, ldx]
    int64_t ldx,
    const uint4* __restrict__ qw,          // [N/16, K/KC, 32] (16 bytes per lane)
    const uint32_t* __restrict__ scales,   // [G, N/16, 8]
    const uint32_t* __restrict__ zeros,    // [G, N/16, 8] or null
    const int32_t* __restrict__ kgroup,    // [K/16] or null
    int gs16,                              // group size / 16
    const T* __restrict__ bias,            // [N] or null
    T* __restrict__ out,                   // [M, N]
    int M, int N, int K, int wk_log2) {
  using T2 = typename ActTraits<T>::T2;
  constexpr int KC = BITS == 4 ? 64 : 32;   // columns per chunk
  constexpr int RUNS = BITS == 4 ? 4 : 2;   // k-tiles per chunk
  constexpr int KSPAN = KC / 4;             // consecutive columns a lane owns per chunk
  constexpr int WPR = BITS == 4 ? 1 : 2;    // words per run
  constexpr int U = NT == 1 ? 4 : 2;        // chunks per pipeline stage
  constexpr int XV = KSPAN / 8;             // 16-byte activation loads per row per chunk

  __shared__ float red[4 * NT * MT * 4 * 32];  // k-slice partial sums (WK >= 2 means WN <= 4)

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int WK = 1 << wk_log2;
  const int wn = warp >> wk_log2, wk = warp & (WK - 1);
  const int n_tiles = N >> 4;
  const int nt0 = (blockIdx.x * (kWarps >> wk_log2) + wn) * NT;
  const int m0 = blockIdx.y * 8 * MT;
  const int NC = K / KC;
  const int c_begin = static_cast<int>(static_cast<int64_t>(wk) * NC / WK);
  const int c_end = static_cast<int>(static_cast<int64_t>(wk + 1) * NC / WK);
  bool valid[NT];
#pragma unroll
  for (int n = 0; n < NT; ++n) valid[n] = nt0 + n < n_tiles;

  uint32_t zsym = 0;  // the symmetric zero (2**(bits-1), twice) as T values
  {
    const T zs = ActTraits<T>::from_float(static_cast<float>(1 << (BITS - 1)));
    zsym = as_u32(T2{zs, zs});
  }

  float acc[NT][MT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[n][mt][q] = 0.0f;

  // One pipeline stage: U chunks of weights, scales and zeros for the NT n-tiles.
  uint4 w_cur[U][NT];
  uint32_t s_cur[U][NT], z_cur[U][NT];
  auto load_stage = [&](int c0, uint4 (&w)[U][NT], uint32_t (&s)[U][NT], uint32_t (&z)[U][NT]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = c0 + u;
      const bool in = c < c_end;
      const int gi = in ? group_of(kgroup, c * KC + t * KSPAN, gs16) : 0;
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const int nt = nt0 + n;
        if (in && valid[n]) {
          w[u][n] = __ldg(qw + (static_cast<int64_t>(nt) * NC + c) * 32 + lane);
          const int64_t si = (static_cast<int64_t>(gi) * n_tiles + nt) * 8 + g;
          s[u][n] = __ldg(scales + si);
          z[u][n] = zeros != nullptr ? __ldg(zeros + si) : zsym;
        } else {
          w[u][n] = make_uint4(0, 0, 0, 0);
          s[u][n] = 0;
          z[u][n] = zsym;
        }
      }
    }
  };

  load_stage(c_begin, w_cur, s_cur, z_cur);
  for (int c0 = c_begin; c0 < c_end; c0 += U) {
    uint4 w_nxt[U][NT];
    uint32_t s_nxt[U][NT], z_nxt[U][NT];
    load_stage(c0 + U, w_nxt, s_nxt, z_nxt);  // in flight while this stage computes

#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = c0 + u;
      if (c >= c_end) break;  // warp-uniform
      uint32_t a[NT][RUNS][4];
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const uint32_t zm = prepare_zero<BITS, T>(z_cur[u][n]);
        const uint32_t* words = reinterpret_cast<const uint32_t*>(&w_cur[u][n]);
#pragma unroll
        for (int j = 0; j < RUNS; ++j) dequant_run<BITS, T>(words + j * WPR, s_cur[u][n], zm, a[n][j]);
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if (m0 + mt * 8 >= M) break;  // block-uniform
        const int row = m0 + mt * 8 + g;
        uint4 xv[XV];
        if (row < M) {
          const uint4* xp = reinterpret_cast<const uint4*>(x + row * ldx + c * KC + t * KSPAN);
#pragma unroll
          for (int v = 0; v < XV; ++v) xv[v] = __ldg(xp + v);
        } else {
#pragma unroll
          for (int v = 0; v < XV; ++v) xv[v] = make_uint4(0, 0, 0, 0);
        }
        const uint32_t* xb = reinterpret_cast<const uint32_t*>(xv);
#pragma unroll
        for (int j = 0; j < RUNS; ++j)
#pragma unroll
          for (int n = 0; n < NT; ++n)
            if (valid[n]) mma_16816<T>(acc[n][mt], a[n][j], xb[2 * j], xb[2 * j + 1]);
      }
    }

#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        w_cur[u][n] = w_nxt[u][n];
        s_cur[u][n] = s_nxt[u][n];
        z_cur[u][n] = z_nxt[u][n];
      }
  }

  // Sum the k-slices: warp k-slice r adds into the buffer in turn, highest first (fixed order).
  if (WK > 1) {
    float* buf = red + wn * (NT * MT * 4 * 32) + lane;
    for (int r = WK - 1; r >= 1; --r) {
      if (wk == r) {
        int i = 0;
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int q = 0; q < 4; ++q, ++i) {
              if (r == WK - 1)
                buf[i * 32] = acc[n][mt][q];
              else
                buf[i * 32] += acc[n][mt][q];
            }
      }
      __syncthreads();
    }
    if (wk == 0) {
      int i = 0;
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int q = 0; q < 4; ++q, ++i) acc[n][mt][q] += buf[i * 32];
    }
  }
  if (wk != 0) return;

  // acc[n][mt] is the 16x8 tile out^T[16*nt + (g, g+8)][m0 + 8*mt + (2t, 2t+1)].
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    if (!valid[n]) continue;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int col = (nt0 + n) * 16 + g + 8 * h;
      const float b = bias != nullptr ? ActTraits<T>::to_float(bias[col]) : 0.0f;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int m = m0 + mt * 8 + 2 * t + q;
          if (m < M) out[static_cast<int64_t>(m) * N + col] = ActTraits<T>::from_float(acc[n][mt][2 * h + q] + b);
        }
    }
  }
}

template <int BITS, typename T, int MT, int NT>
cudaError_t launch(const void* x, int64_t ldx, const int32_t* qweight, const uint32_t* scales,
                   const uint32_t* zeros, const int32_t* kgroup, int group_size, const void* bias, void* out,
                   int M, int N, int K, int num_sms, cudaStream_t stream) {
  constexpr int KC = BITS == 4 ? 64 : 32;
  const int n_tiles = N / 16, nc = K / KC;
  const int passes = (M + 8 * MT - 1) / (8 * MT);
  // Fewest k-slices per block (least reduction work) that still gives every SM about four blocks.
  int wk_log2 = 0;
  for (; wk_log2 < 3; ++wk_log2) {
    const int wn = kWarps >> wk_log2;
    const int64_t blocks = static_cast<int64_t>((n_tiles + NT * wn - 1) / (NT * wn)) * passes;
    if (blocks >= 4 * static_cast<int64_t>(num_sms) || (2 << wk_log2) > nc) break;
  }
  const int wn = kWarps >> wk_log2;
  dim3 grid((n_tiles + NT * wn - 1) / (NT * wn), passes);
  wxa16_gemm_kernel<BITS, T, MT, NT><<<grid, kWarps * 32, 0, stream>>>(
      static_cast<const T*>(x), ldx, reinterpret_cast<const uint4*>(qweight), scales, zeros, kgroup,
      group_size / 16, static_cast<const T*>(bias), static_cast<T*>(out), M, N, K, wk_log2);
  return cudaGetLastError();
}

// The bounded list of tile shapes: (MT m-tiles of 8 rows, NT n-tiles of 16 rows) per warp.
template <int BITS, typename T>
cudaError_t dispatch_m(const void* x, int64_t ldx, const int32_t* qweight, const uint32_t* scales,
                       const uint32_t* zeros, const int32_t* kgroup, int group_size, const void* bias, void* out,
                       int M, int N, int K, int num_sms, cudaStream_t stream) {
  if (M <= 8)
    return launch<BITS, T, 1, 1>(x, ldx, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, stream);
  if (M <= 16)
    return launch<BITS, T, 2, 1>(x, ldx, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, stream);
  if (M <= 32)
    return launch<BITS, T, 4, 2>(x, ldx, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, stream);
  return launch<BITS, T, 8, 2>(x, ldx, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, stream);
}

}  // namespace

cudaError_t wxa16_gemm(const void* x, int64_t ldx, const int32_t* qweight, const uint32_t* scales,
                       const uint32_t* zeros, const int32_t* kgroup, int group_size, const void* bias, void* out,
                       int M, int N, int K, int bits, ActDtype dtype, int num_sms, cudaStream_t stream) {
  if (M <= 0 || N % 16 != 0 || K % chunk_cols(bits) != 0 || group_size % 16 != 0) return cudaErrorInvalidValue;
  if (bits == 4 && dtype == ActDtype::kF16)
    return dispatch_m<4, __half>(x, ldx, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, stream);
  if (bits == 4 && dtype == ActDtype::kBF16)
    return dispatch_m<4, __nv_bfloat16>(x, ldx, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, stream);
  if (bits == 8 && dtype == ActDtype::kF16)
    return dispatch_m<8, __half>(x, ldx, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, stream);
  if (bits == 8 && dtype == ActDtype::kBF16)
    return dispatch_m<8, __nv_bfloat16>(x, ldx, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, stream);
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace qk
