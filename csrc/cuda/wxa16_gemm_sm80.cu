// W4A16 / W8A16 GEMM on the tensor cores (mma.sync m16n8k16, sm_80 and newer): out = x @ W^T + b.
//
// Computes out^T = W x^T so that the quantized weights are the mma's A operand (16 output rows per
// tile) and the few activation rows are its B operand (8 per tile): small m wastes no weight reads
// and every weight byte is read from memory once per pass of up to 32 rows. Each lane streams its
// 16-byte slices of the mma-shuffled weight (layout in wxa16.h), with its scales and zeros, into
// its own shared-memory slots with cp.async, S chunks ahead (lane-private slots need no barrier:
// cp.async.wait_group makes a thread's own copies visible to it), dequantizes them with
// magic-number arithmetic and accumulates in fp32. Activations are re-read through L1/L2 (small,
// shared by all warps); their loads are issued before the dequantization to overlap it.
//
// Small m is bound by instruction issue, not memory (Nsight Compute on an H100, NOTES_gpu.md), so
// the loop keeps per-weight work low: addresses are loop-invariant pointers plus the chunk offset
// (edge tiles and rows are clamped rather than branched around), groups advance by comparison,
// and the MT = 1 tiles multiply the fp32 result of each chunk by its scale instead of every weight.
// A block is 8 warps: WN n-slices x WK k-slices (WN * WK = 8); the k-slices are summed through
// shared memory in a fixed order (deterministic), so no workspace and no atomics: every launch is
// CUDA-graph safe.
//
// Limits: N % 16 == 0, K % KC == 0 (KC = 64 for 4 bits, 32 for 8 bits), group size % 16 == 0,
// x rows 16-byte aligned; any M >= 1 (passes of 8 * MT rows (at most 32) along grid.x).
// Test: PYTHONPATH=$PWD python -m pytest -q tests/test_cuda_backend.py (on a GPU);
// benchmark: PYTHONPATH=$PWD python benchmarks/gpu_gemm.py [--sweep].
#include "cuda/wxa16.h"
#include "cuda/wxa16_common.cuh"

namespace qk {
namespace cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(d), "l"(src) : "memory");
}

// One 16-byte shared-memory load, kept whole (the compiler sometimes split a plain uint4 copy into
// four 4-byte loads).
__device__ __forceinline__ uint4 lds128(const uint4* p) {
  uint4 v;
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(a));
  return v;
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Dynamic shared memory of one block: S stages of (weights, scales, zeros) slots per thread and
// n-tile; after the main loop the k-slice reduction buffer (WK >= 2 means at most 4 n-slices per
// block) reuses the same bytes.
template <int MT, int NT, int S>
constexpr int smem_bytes() {
  constexpr int stages = S * NT * kThreads * (16 + 4 + 4), red = 4 * NT * MT * 4 * 32 * 4;
  return stages > red ? stages : red;
}

// Calls f(acc value, m, n) for every output element this lane holds: acc[nt][mt] is the 16x8 tile
// out^T[16*(nt0+nt) + (g, g+8)][m0 + 8*mt + (2t, 2t+1)]; rows m >= M and missing n-tiles skipped.
template <int NT, int MT, typename F>
__device__ __forceinline__ void for_each_output(float (&acc)[NT][MT][4], const bool (&valid)[NT], int nt0, int m0,
                                                int M, int g, int t, F&& f) {
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    if (!valid[n]) continue;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int m = m0 + mt * 8 + 2 * t + q;
          if (m < M) f(acc[n][mt][2 * h + q], m, (nt0 + n) * 16 + g + 8 * h);
        }
  }
}

// SCALE_AFTER (one group per chunk: group size % KC == 0 and no group table): the mma runs on the
// exact q - z and the chunk's fp32 result is scaled once per output element, rather than every
// weight being scaled in half precision: fewer instructions per weight, for the memory-bound
// small-m tiles (MT = 1) whose extra fp32 registers cost no occupancy.
template <int BITS, typename T, int MT, int NT, int S, bool SCALE_AFTER>
__global__ void __launch_bounds__(kThreads) wxa16_gemm_kernel(
    const T* __restrict__ x,               // [M, ldx]
    int64_t ldx,
    const uint4* __restrict__ qw,          // [N/16, K/KC, 32] (16 bytes per lane)
    const uint32_t* __restrict__ scales,   // [G, N/16, 8]
    const uint32_t* __restrict__ zeros,    // [G, N/16, 8] or null
    const int32_t* __restrict__ kgroup,    // [K/16] or null
    int gs16,                              // group size / 16
    const T* __restrict__ bias,            // [N] or null
    T* __restrict__ out,                   // [M, N]
    float* __restrict__ ws,                // [M, N] fp32 zeros, then grid.x * grid.y int counters
    int M, int N, int K, int wk_log2) {
  using T2 = typename ActTraits<T>::T2;
  constexpr int KC = BITS == 4 ? 64 : 32;   // columns per chunk
  constexpr int RUNS = BITS == 4 ? 4 : 2;   // k-tiles per chunk
  constexpr int KSPAN = KC / 4;             // consecutive columns a lane owns per chunk
  constexpr int WPR = BITS == 4 ? 1 : 2;    // words per run
  constexpr int XV = KSPAN / 8;             // 16-byte activation loads per row per chunk

  extern __shared__ uint4 smem[];
  uint4* wbuf = smem;                                                    // [S][NT][kThreads]
  uint32_t* sbuf = reinterpret_cast<uint32_t*>(wbuf + S * NT * kThreads);  // [S][NT][kThreads]
  uint32_t* zbuf = sbuf + S * NT * kThreads;                             // [S][NT][kThreads]
  float* red = reinterpret_cast<float*>(smem);  // [4][NT*MT*4][32], after the main loop

  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int WK = 1 << wk_log2;
  const int wn = warp >> wk_log2, wk = warp & (WK - 1);
  const int n_tiles = N >> 4;
  // blockIdx.x is the row pass, fastest-varying, so the passes over one weight slice run together
  // and all but the first find it in L2.
  const int nt0 = (blockIdx.y * (kWarps >> wk_log2) + wn) * NT;
  const int m0 = blockIdx.x * 8 * MT;
  // k-split: block z of gridDim.z takes its share of the chunks, warp k-slice wk its share of that.
  const int NC = K / KC, KS = gridDim.z;
  const int slice = blockIdx.z * WK + wk;
  const int c_begin = static_cast<int>(static_cast<int64_t>(slice) * NC / (KS * WK));
  const int c_end = static_cast<int>(static_cast<int64_t>(slice + 1) * NC / (KS * WK));
  bool valid[NT];
#pragma unroll
  for (int n = 0; n < NT; ++n) valid[n] = nt0 + n < n_tiles;

  uint32_t zsym;  // the symmetric zero (2**(bits-1), twice) as T values
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

  // Loop-invariant parts of the addresses. An n-tile past N (in a partial last group) is clamped
  // to the last real one, and a row past M to row M - 1: they stream real memory and their results
  // are never stored, so the loop has no per-tile branches.
  const uint4* wsrc[NT];
  int soff[NT];
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const int nt = min(nt0 + n, n_tiles - 1);
    wsrc[n] = qw + static_cast<int64_t>(nt) * NC * 32 + lane;
    soff[n] = nt * 8 + g;
  }
  const T* xsrc[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) xsrc[mt] = x + min(m0 + mt * 8 + g, M - 1) * ldx + t * KSPAN;

  // Group of the chunk `issue` copies next. Chunks are issued in order, so without a group table
  // the group advances by comparison rather than by a division per chunk.
  const int gsize = gs16 * 16;
  int igroup = (c_begin * KC + t * KSPAN) / gsize;
  int igroup_end = (igroup + 1) * gsize;

  // Copy chunk c's weights, scales and zeros into stage `slot` (one group per call, maybe empty).
  auto issue = [&](int c, int slot) {
    if (c < c_end) {
      const int col = c * KC + t * KSPAN;
      int gi;
      if (kgroup != nullptr) {
        gi = __ldg(kgroup + (col >> 4));
      } else {
        while (col >= igroup_end) {
          ++igroup;
          igroup_end += gsize;
        }
        gi = igroup;
      }
      const int64_t goff = static_cast<int64_t>(gi) * n_tiles * 8;
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const int sl = (slot * NT + n) * kThreads + tid;
        cp_async16(wbuf + sl, wsrc[n] + c * 32);
        cp_async4(sbuf + sl, scales + goff + soff[n]);
        if (zeros != nullptr) cp_async4(zbuf + sl, zeros + goff + soff[n]);
      }
    }
    cp_async_commit();
  };

#pragma unroll
  for (int s = 0; s < S - 1; ++s) issue(c_begin + s, s);

  for (int c = c_begin, it = 0; c < c_end; ++c, ++it) {
    issue(c + S - 1, (it + S - 1) % S);
    // Activations for this chunk first: their latency overlaps the wait and the dequantization.
    uint4 xv[MT][XV];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      if (m0 + mt * 8 < M) {  // block-uniform; m-tiles wholly past M skip their mma below
        const uint4* xp = reinterpret_cast<const uint4*>(xsrc[mt] + c * KC);
#pragma unroll
        for (int v = 0; v < XV; ++v) xv[mt][v] = __ldg(xp + v);
      } else {
#pragma unroll
        for (int v = 0; v < XV; ++v) xv[mt][v] = make_uint4(0, 0, 0, 0);
      }
    }
    cp_async_wait<S - 1>();  // this thread's copies of chunk c have landed
    const int slot = it % S;
    uint4 w[NT];
    DequantConsts dc[NT];
    float srow[NT][2];  // SCALE_AFTER: (s[r0], s[r1]) in fp32
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const int sl = (slot * NT + n) * kThreads + tid;
      w[n] = lds128(wbuf + sl);
      const uint32_t sc = sbuf[sl];
      dc[n] = make_consts<BITS, T>(sc, zeros != nullptr ? zbuf[sl] : zsym);
      if constexpr (SCALE_AFTER) {
        const T2 s2 = as_t2<T2>(sc);
        srow[n][0] = ActTraits<T>::to_float(s2.x);
        srow[n][1] = ActTraits<T>::to_float(s2.y);
      }
    }
    float part[NT][MT][4];  // SCALE_AFTER: this chunk's unscaled sums
    if constexpr (SCALE_AFTER) {
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int q = 0; q < 4; ++q) part[n][mt][q] = 0.0f;
    }
#pragma unroll
    for (int j = 0; j < RUNS; ++j) {
      uint32_t a[NT][4];
#pragma unroll
      for (int n = 0; n < NT; ++n)
        dequant_run<BITS, T, !SCALE_AFTER>(reinterpret_cast<const uint32_t*>(&w[n]) + j * WPR, dc[n], a[n]);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if (m0 + mt * 8 >= M) break;  // block-uniform
        const uint32_t* xb = reinterpret_cast<const uint32_t*>(xv[mt]);
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          if constexpr (SCALE_AFTER)
            mma_16816<T>(part[n][mt], a[n], xb[2 * j], xb[2 * j + 1]);
          else
            mma_16816<T>(acc[n][mt], a[n], xb[2 * j], xb[2 * j + 1]);
        }
      }
    }
    if constexpr (SCALE_AFTER) {
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int q = 0; q < 4; ++q) acc[n][mt][q] = fmaf(srow[n][q >> 1], part[n][mt][q], acc[n][mt][q]);
    }
  }
  cp_async_wait<0>();

  // Sum the k-slices: warp k-slice r adds into the buffer in turn, highest first (fixed order).
  if (WK > 1) {
    __syncthreads();  // every warp is done with its pipeline slots, which the buffer overlays
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
  if (KS > 1) {
    // Split over blocks: add the partial tile into the fp32 workspace; the block that arrives last
    // for this output tile (counter) converts it, zeroes the workspace and resets the counter, so
    // the workspace is all zeros again for the next launch (graph safe, no memset).
    __shared__ int s_last;
    if (wk == 0)
      for_each_output(acc, valid, nt0, m0, M, g, t, [&](float& v, int m, int n) {
        atomicAdd(ws + static_cast<int64_t>(m) * N + n, v);
      });
    __threadfence();
    __syncthreads();
    if (tid == 0) {
      int* counter = reinterpret_cast<int*>(ws + static_cast<int64_t>(M) * N) + blockIdx.y * gridDim.x + blockIdx.x;
      const int prev = atomicAdd(counter, 1);
      s_last = prev == KS - 1;
      if (s_last) *counter = 0;
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    if (wk == 0)
      for_each_output(acc, valid, nt0, m0, M, g, t, [&](float& v, int m, int n) {
        float* p = ws + static_cast<int64_t>(m) * N + n;
        v = __ldcg(p);
        __stcg(p, 0.0f);
      });
  }
  if (wk != 0) return;
  for_each_output(acc, valid, nt0, m0, M, g, t, [&](float& v, int m, int n) {
    const float b = bias != nullptr ? ActTraits<T>::to_float(bias[n]) : 0.0f;
    out[static_cast<int64_t>(m) * N + n] = ActTraits<T>::from_float(v + b);
  });
}

template <int BITS, typename T, int MT, int NT, int S, bool AFTER_OK>
cudaError_t launch(const void* x, int64_t ldx, const int32_t* qweight, const uint32_t* scales,
                   const uint32_t* zeros, const int32_t* kgroup, int group_size, const void* bias, void* out,
                   int M, int N, int K, int num_sms, const SplitK& split, cudaStream_t stream) {
  constexpr int KC = BITS == 4 ? 64 : 32;
  constexpr int kSmem = smem_bytes<MT, NT, S>();
  const bool after = AFTER_OK && kgroup == nullptr && group_size % KC == 0;
  auto kernel = wxa16_gemm_kernel<BITS, T, MT, NT, S, false>;
  if constexpr (AFTER_OK)
    if (after) kernel = wxa16_gemm_kernel<BITS, T, MT, NT, S, true>;
  // Not a stream operation (legal while capturing a graph); per device, so set it every launch.
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  static int blocks_per_sm_of[2] = {0, 0};  // resident blocks per SM (occupancy calculator), once
  int& blocks_per_sm = blocks_per_sm_of[after ? 1 : 0];
  if (blocks_per_sm == 0) {
    int b = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, kernel, kThreads, kSmem);
    if (err != cudaSuccess) return err;
    blocks_per_sm = b > 0 ? b : 1;
  }
  const int n_tiles = N / 16, nc = K / KC;
  const int passes = (M + 8 * MT - 1) / (8 * MT);
  const int64_t slots = static_cast<int64_t>(blocks_per_sm) * num_sms;
  // Split of K: WK warp k-slices per block times KS blocks. All blocks do equal work, so pick the
  // split whose last wave is fullest, keeping at least kMinChunks chunks per warp (a pipeline
  // worth filling); ties go to fewer slices (less reduction work). KS > 1 only when asked for
  // (split.ksplit): on an H100 splitting over blocks measured slower than not for every benchmark
  // shape (benchmarks/NOTES_gpu.md), so the automatic choice keeps KS = 1.
  constexpr int kMinChunks = 8;
  const int64_t ws_needed = wxa16_gemm_workspace_floats(M, N);
  const int ks_min = split.ksplit > 0 ? split.ksplit : 1, ks_max = ks_min;
  if (ks_max > 1 && (split.ws == nullptr || split.ws_numel < ws_needed)) return cudaErrorInvalidValue;
  int wk_log2 = 0, ks = ks_min;
  double best = -1.0;
  for (int l = 0; l <= 3 && (1 << l) <= nc; ++l) {
    for (int k = ks_min; k <= ks_max; ++k) {
      const bool too_thin = (1 << l) * k * kMinChunks > nc && (l + k > 1);
      if (too_thin && split.ksplit <= 0) continue;
      const int wn = kWarps >> l;
      const int64_t blocks = static_cast<int64_t>((n_tiles + NT * wn - 1) / (NT * wn)) * passes * k;
      const double fill = static_cast<double>(blocks) / (static_cast<double>((blocks + slots - 1) / slots) * slots);
      if (fill > best + 0.02) {
        best = fill;
        wk_log2 = l;
        ks = k;
      }
    }
  }
  const int wn = kWarps >> wk_log2;
  dim3 grid(passes, (n_tiles + NT * wn - 1) / (NT * wn), ks);
  kernel<<<grid, kThreads, kSmem, stream>>>(static_cast<const T*>(x), ldx, reinterpret_cast<const uint4*>(qweight),
                                            scales, zeros, kgroup, group_size / 16, static_cast<const T*>(bias),
                                            static_cast<T*>(out), split.ws, M, N, K, wk_log2);
  return cudaGetLastError();
}

// The bounded list of tile shapes: (MT m-tiles of 8 rows, NT n-tiles of 16 rows per warp, S
// pipeline stages, SCALE_AFTER allowed). Wide NT re-uses each activation load for more weights
// and keeps more bytes in flight per warp; narrow NT gives more warps when N is small; SCALE_AFTER
// only where its fp32 partial sums cost no occupancy. kTiles[i] is tile id i.
struct TileShape {
  int mt, nt, s;
  bool after;
};
constexpr TileShape kTiles[] = {{1, 1, 8, true},  {1, 2, 8, true}, {1, 4, 3, true}, {2, 1, 8, false},
                                {2, 4, 3, false}, {2, 2, 4, true}, {4, 2, 3, false}};
constexpr int kNumTiles = sizeof(kTiles) / sizeof(kTiles[0]);

// The fastest tile measured on an H100 (benchmarks/NOTES_gpu.md, `gpu_gemm.py --sweep`) by rows
// m and n-tiles: wide tiles once N gives every SM 4+ n-tiles, middle ones from 2+, else narrow
// ones that keep more warps busy; beyond 16 rows, passes of 32 rows.
int auto_tile(int M, int n_tiles, int num_sms) {
  if (M <= 8) return n_tiles >= 4 * num_sms ? 2 : n_tiles >= 2 * num_sms ? 1 : 0;
  if (M <= 16) return n_tiles >= 4 * num_sms ? 4 : n_tiles >= 2 * num_sms ? 5 : 3;
  return 6;
}

template <int BITS, typename T>
cudaError_t dispatch_tile(int tile, const void* x, int64_t ldx, const int32_t* qweight, const uint32_t* scales,
                          const uint32_t* zeros, const int32_t* kgroup, int group_size, const void* bias, void* out,
                          int M, int N, int K, int num_sms, const SplitK& split, cudaStream_t stream) {
#define QK_TILE(I)                                                                                                   \
  case I:                                                                                                            \
    return launch<BITS, T, kTiles[I].mt, kTiles[I].nt, kTiles[I].s, kTiles[I].after>(x, ldx, qweight, scales, zeros, kgroup,         \
                                                                   group_size, bias, out, M, N, K, num_sms, split, stream);
  switch (tile < 0 ? auto_tile(M, N / 16, num_sms) : tile) {
    QK_TILE(0)
    QK_TILE(1)
    QK_TILE(2)
    QK_TILE(3)
    QK_TILE(4)
    QK_TILE(5)
    QK_TILE(6)
    default:
      return cudaErrorInvalidValue;
  }
#undef QK_TILE
}
static_assert(kNumTiles == 7, "dispatch_tile lists every tile");

}  // namespace

cudaError_t wxa16_gemm(const void* x, int64_t ldx, const int32_t* qweight, const uint32_t* scales,
                       const uint32_t* zeros, const int32_t* kgroup, int group_size, const void* bias, void* out,
                       int M, int N, int K, int bits, ActDtype dtype, int num_sms, int tile, const SplitK& split,
                       cudaStream_t stream) {
  if (M <= 0 || N % 16 != 0 || K % chunk_cols(bits) != 0 || group_size % 16 != 0 || tile >= kNumTiles) return cudaErrorInvalidValue;
  if (bits == 4 && dtype == ActDtype::kF16)
    return dispatch_tile<4, __half>(tile, x, ldx, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, split, stream);
  if (bits == 4 && dtype == ActDtype::kBF16)
    return dispatch_tile<4, __nv_bfloat16>(tile, x, ldx, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, split, stream);
  if (bits == 8 && dtype == ActDtype::kF16)
    return dispatch_tile<8, __half>(tile, x, ldx, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, split, stream);
  if (bits == 8 && dtype == ActDtype::kBF16)
    return dispatch_tile<8, __nv_bfloat16>(tile, x, ldx, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, split, stream);
  return cudaErrorInvalidValue;
}

int wxa16_gemm_num_tiles() { return kNumTiles; }

}  // namespace cuda
}  // namespace qk
