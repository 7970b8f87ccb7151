// W4A16 / W8A16 GEMM on the tensor cores (mma.sync m16n8k16, sm_80 and newer): out = x @ W^T + b.
//
// Computes out^T = W x^T so that the quantized weights are the mma's A operand (16 output rows per
// tile) and the few activation rows are its B operand (8 per tile): small m wastes no weight reads
// and every weight byte is read from memory once per pass of up to 32 rows. Each lane streams its
// 16-byte slices of the mma-shuffled weight (layout in wxa16.h), with its scales and zeros, into
// its own shared-memory slots with cp.async, S chunks ahead (lane-private slots need no barrier:
// cp.async.wait_group makes a thread's own copies visible to it), dequantizes them with
// magic-number arithmetic and accumulates in fp32. Activations are re-read through L1/L2 (small,
// shared by all warps); their loads are issued before the dequantization to overlap it. Tiles 12
// and 13 instead copy them into the lane's slots with the weights (cp.async.ca, S - 1 chunks
// ahead): a warp with few chunks no longer waits out an L1/L2 round trip every chunk.
//
// Small m is bound by instruction issue, not memory (Nsight Compute on an H100, NOTES_gpu.md), so
// the loop keeps per-weight work low: addresses are loop-invariant pointers plus the chunk offset
// (edge tiles and rows are clamped rather than branched around), groups advance by comparison,
// and the MT = 1 tiles multiply the fp32 result of each chunk by its scale instead of every weight
// (ScaleMode; per-channel weights read their scales once and scale the sums at the end).
// A block is 8 warps: WN n-slices x WK k-slices (WN * WK = 8); the k-slices are summed through
// shared memory in a fixed order (deterministic), so no workspace and no atomics: every launch is
// CUDA-graph safe. Up to 8 rows, given the caller's zeroed workspace, tall 8-bit layers run the
// stream-K variant (wxa16_gemm_streamk_kernel): equal ranges of the weight stream per warp, partial
// tiles summed with fp32 atomics in the workspace, which the kernel leaves zeroed again.
//
// Middle m (tiles 10-11, wxa16_gemm_mid_kernel): the same weight pipeline, with the block's
// activations (64 rows) staged in shared memory next to the weights, so each weight is
// dequantized once per 64 rows instead of once per 32; K split in the block and, given a
// workspace, over blocks. It beats the plain kernel only at 64 < m <= 128 on large layers
// (auto_tile; NOTES_gpu.md, `gpu_gemm.py --mid`).
//
// Limits: N % 16 == 0, K % KC == 0 (KC = 64 for 4 bits, 32 for 8 bits), group size % 16 == 0,
// x rows 16-byte aligned; any M >= 1 (passes of 8 * MT rows (at most 64) along grid.x).
// Test: PYTHONPATH=$PWD python -m pytest -q tests/test_cuda_backend.py (on a GPU);
// benchmark: PYTHONPATH=$PWD python benchmarks/gpu_gemm.py [--sweep].
#include "cuda/wxa16.h"
#include "cuda/wxa16_common.cuh"

namespace qk {
namespace cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;

// Where the group scale is applied (the zero point always goes with the dequantization):
// kPerWeight: every dequantized weight is (q - z) * s in T (any grouping); kPerChunk: the mma runs
// on the exact q - z and each chunk's fp32 partial sum is scaled (one group per chunk: group size %
// KC == 0, no group table); kAtEnd: one group for the whole of K (per-channel, no group table): the
// lane's scales and zeros are read once before the loop instead of copied and unpacked every chunk,
// and the fp32 accumulators are scaled once before the sum and store. kPerChunkSym: kPerChunk
// without zeros, whose zero-point constants are made once before the loop instead of every chunk.
enum ScaleMode : int { kPerWeight = 0, kPerChunk = 1, kAtEnd = 2, kPerChunkSym = 3 };

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
}

// L1-allocating twin of cp_async16, for data many warps of an SM read (the activations): .cg
// copies of one small activation row by every warp of the GPU all went to the same few L2 slices
// (tiles 12-13 ran 4-7x slower than their twins, 08:36 run).
__device__ __forceinline__ void cp_async16_ca(void* dst, const void* src) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
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

// The stage after `slot` in a ring of S (a mask where S is a power of two).
template <int S>
__device__ __forceinline__ int next_slot(int slot) {
  if constexpr ((S & (S - 1)) == 0)
    return (slot + 1) & (S - 1);
  else
    return slot == S - 1 ? 0 : slot + 1;
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Dynamic shared memory of one block: S stages of (weights, scales, zeros) slots per thread and
// n-tile, then with XS S stages of the thread's activations (MT m-tiles of at most 32 bytes); after
// the main loop the k-slice reduction buffer (WK >= 2 means at most 4 n-slices per block) reuses
// the same bytes.
template <int MT, int NT, int S, bool XS = false>
constexpr int smem_bytes() {
  constexpr int stages = S * NT * kThreads * (16 + 4 + 4) + (XS ? S * MT * kThreads * 32 : 0);
  constexpr int red = 4 * NT * MT * 4 * 32 * 4;
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

// acc = 0.
template <int NT, int MT>
__device__ __forceinline__ void zero_acc(float (&acc)[NT][MT][4]) {
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[n][mt][q] = 0.0f;
}

// The symmetric zero point 2**(bits-1), twice, as T values (a T2 bit pattern).
template <int BITS, typename T>
__device__ __forceinline__ uint32_t sym_zero2() {
  using T2 = typename ActTraits<T>::T2;
  const T zs = ActTraits<T>::from_float(static_cast<float>(1 << (BITS - 1)));
  return as_u32(T2{zs, zs});
}

// Partial sums through the fp32 workspace ws [M, N]: add this lane's outputs ...
template <int NT, int MT>
__device__ __forceinline__ void add_to_ws(float (&acc)[NT][MT][4], const bool (&valid)[NT], int nt0, int m0, int M,
                                          int N, int g, int t, float* ws) {
  for_each_output(acc, valid, nt0, m0, M, g, t, [&](float& v, int m, int n) {
    atomicAdd(ws + static_cast<int64_t>(m) * N + n, v);
  });
}

// ... and, by the last contributor, take the totals back into acc, leaving zeros behind.
template <int NT, int MT>
__device__ __forceinline__ void take_from_ws(float (&acc)[NT][MT][4], const bool (&valid)[NT], int nt0, int m0,
                                             int M, int N, int g, int t, float* ws) {
  for_each_output(acc, valid, nt0, m0, M, g, t, [&](float& v, int m, int n) {
    float* p = ws + static_cast<int64_t>(m) * N + n;
    v = __ldcg(p);
    __stcg(p, 0.0f);
  });
}

// out = acc + bias, rounded once to T.
template <typename T, int NT, int MT>
__device__ __forceinline__ void store_out(float (&acc)[NT][MT][4], const bool (&valid)[NT], int nt0, int m0, int M,
                                          int N, int g, int t, const T* bias, T* out) {
  for_each_output(acc, valid, nt0, m0, M, g, t, [&](float& v, int m, int n) {
    const float b = bias != nullptr ? ActTraits<T>::to_float(bias[n]) : 0.0f;
    out[static_cast<int64_t>(m) * N + n] = ActTraits<T>::from_float(v + b);
  });
}

// A warp's weight stream: for each of its NT n-tiles the lane's source at the next chunk to copy
// and the lane's scale/zero slot, and the group of the columns it copies next. An n-tile past N (in
// a partial last group) is clamped to the last real one: it streams real memory and its results
// are never stored, so the loops have no per-tile branches. Chunks are copied in increasing order,
// one after another, so the sources advance by one chunk per copy and, without a group table, the
// group (and its scale offset) by comparison, not by a division per chunk. The advancing pointers
// are loop-carried on purpose: written as chunk-0 pointers plus c * 32, ptxas rematerialized the
// addresses from the kernel arguments every chunk (sm_90a SASS loop of tile (1,4,3), fp16,
// symmetric g128: 394 -> 360 instructions per chunk with this; NOTES_gpu.md "Small-m round 5").
template <int NT, int KC>
struct ChunkSource {
  const uint4* wsrc[NT];  // [N/16, K/KC, 32] lane slices of the n-tile at the next chunk
  int srel[NT];           // scale slot of n-tile n relative to n-tile 0's: 8 n (clamped edge tiles aside)
  int64_t goff;           // group * N/16 * 8 + n-tile 0's slot: the next copy's scales / zeros offset
  int group, group_end;   // group of the next copy (no group table)

  __device__ __forceinline__ void start(const uint4* qw, int nt0, int n_tiles, int nc, int lane, int c, int gsize) {
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const int nt = min(nt0 + n, n_tiles - 1);
      wsrc[n] = qw + (static_cast<int64_t>(nt) * nc + c) * 32 + lane;
      srel[n] = (nt - min(nt0, n_tiles - 1)) * 8;
    }
    group = (c * KC + (lane & 3) * (KC / 4)) / gsize;
    group_end = (group + 1) * gsize;
    goff = static_cast<int64_t>(group) * n_tiles * 8 + min(nt0, n_tiles - 1) * 8 + (lane >> 2);
  }

  // Copy chunk c (the chunk after the previous copy, or the one start() was given) with its
  // scales and zeros (weights only with SCALES = false) into stage `slot` of the lane's slots.
  // MODE (ScaleMode) states what the launcher guarantees: the per-chunk modes have no group table
  // and one group per chunk (a copy moves at most one group on), kPerChunkSym no zeros. Their code
  // is then left out of the loop: the main loop of tile 12 (sm_90a SASS, fp16, symmetric g128) went
  // from 222 to 174 instructions, and that of its stream-K twin 14 from about 300 to 232.
  template <int S, bool SCALES = true, int MODE = kPerWeight>
  __device__ __forceinline__ void copy(uint4* smem, int slot, int tid, int c, const uint32_t* scales,
                                       const uint32_t* zeros, const int32_t* kgroup, int gsize, int n_tiles) {
    constexpr bool kPerChunkMode = MODE == kPerChunk || MODE == kPerChunkSym;
    if constexpr (kPerChunkMode) kgroup = nullptr;
    if constexpr (MODE == kPerChunkSym) zeros = nullptr;
    uint4* wbuf = smem;
    uint32_t* sbuf = reinterpret_cast<uint32_t*>(wbuf + S * NT * kThreads);
    uint32_t* zbuf = sbuf + S * NT * kThreads;
    if constexpr (!SCALES) {
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        cp_async16(wbuf + (slot * NT + n) * kThreads + tid, wsrc[n]);
        wsrc[n] += 32;
      }
      return;
    }
    const int col = c * KC + (tid & 3) * (KC / 4);
    int64_t gof;
    if (kgroup != nullptr) {
      // `group` keeps start()'s value here (goff is that group's offset)
      gof = goff + static_cast<int64_t>(__ldg(kgroup + (col >> 4)) - group) * n_tiles * 8;
    } else if constexpr (kPerChunkMode) {
      if (col >= group_end) {
        ++group;
        group_end += gsize;
        goff += n_tiles * 8;
      }
      gof = goff;
    } else {
      while (col >= group_end) {
        ++group;
        group_end += gsize;
        goff += n_tiles * 8;
      }
      gof = goff;
    }
    const uint32_t* sg = scales + gof;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const int sl = (slot * NT + n) * kThreads + tid;
      cp_async16(wbuf + sl, wsrc[n]);
      wsrc[n] += 32;
      cp_async4(sbuf + sl, sg + srel[n]);
      if (zeros != nullptr) cp_async4(zbuf + sl, zeros + gof + srel[n]);
    }
  }
};

// The lane's dequantization constants of group 0 (kAtEnd: the only group), read once: nt0 is
// the warp's first n-tile, clamped like ChunkSource's.
template <int BITS, typename T, int NT>
__device__ __forceinline__ void row_consts(const uint32_t* __restrict__ scales, const uint32_t* __restrict__ zeros,
                                           uint32_t zsym, int nt0, int n_tiles, int g, DequantConsts (&dc)[NT]) {
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const int i = min(nt0 + n, n_tiles - 1) * 8 + g;
    dc[n] = make_consts<BITS, T>(__ldg(scales + i), zeros != nullptr ? __ldg(zeros + i) : zsym);
  }
}

// kPerChunkSym: the symmetric zero's part of the constants (the scale part is unused there), the
// same for every chunk, so made once instead of per chunk.
template <int BITS, typename T, int NT>
__device__ __forceinline__ void sym_consts(uint32_t zsym, DequantConsts (&dc)[NT]) {
#pragma unroll
  for (int n = 0; n < NT; ++n) dc[n] = make_consts<BITS, T>(0u, zsym);
}

// kAtEnd: acc (sums of x times q - z over the whole of K) times the row scales of group 0.
template <typename T, int NT, int MT>
__device__ __forceinline__ void scale_rows(float (&acc)[NT][MT][4], const uint32_t* __restrict__ scales, int nt0,
                                           int n_tiles, int g) {
  using T2 = typename ActTraits<T>::T2;
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const T2 s2 = as_t2<T2>(__ldg(scales + min(nt0 + n, n_tiles - 1) * 8 + g));
    const float s[2] = {ActTraits<T>::to_float(s2.x), ActTraits<T>::to_float(s2.y)};
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[n][mt][q] *= s[q >> 1];
  }
}

// One chunk of the main loop, once its copies have landed in stage `slot`: load this lane's
// weights, scales and zeros from its slots (kAtEnd: weights only; dc_end holds the constants;
// kPerChunkSym: dc_end holds the symmetric zero's constants, made once), dequantize, and accumulate x (xv: this lane's activations of the chunk, MT m-tiles) times the
// weights into acc. Shared by both GEMM kernels.
template <int BITS, typename T, int MT, int NT, int S, int MODE>
__device__ __forceinline__ void consume_chunk(const uint4* smem, int slot, int tid, bool has_zeros, uint32_t zsym,
                                              const DequantConsts (&dc_end)[NT],
                                              const uint4 (&xv)[MT][BITS == 4 ? 2 : 1], int m0, int M,
                                              float (&acc)[NT][MT][4]) {
  using T2 = typename ActTraits<T>::T2;
  constexpr bool SCALE_AFTER = MODE == kPerChunk || MODE == kPerChunkSym;
  constexpr int RUNS = BITS == 4 ? 4 : 2;  // k-tiles per chunk
  constexpr int WPR = BITS == 4 ? 1 : 2;   // words per run
  const uint4* wbuf = smem;
  const uint32_t* sbuf = reinterpret_cast<const uint32_t*>(wbuf + S * NT * kThreads);
  const uint32_t* zbuf = sbuf + S * NT * kThreads;
  uint4 w[NT];
  DequantConsts dc[NT];
  float srow[NT][2];  // SCALE_AFTER: (s[r0], s[r1]) in fp32
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const int sl = (slot * NT + n) * kThreads + tid;
    w[n] = lds128(wbuf + sl);
    if constexpr (MODE == kAtEnd) {
      dc[n] = dc_end[n];
      continue;
    }
    const uint32_t sc = sbuf[sl];
    if constexpr (MODE == kPerChunkSym)
      dc[n] = dc_end[n];
    else
      dc[n] = make_consts<BITS, T>(sc, has_zeros ? zbuf[sl] : zsym);
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
      dequant_run<BITS, T, MODE == kPerWeight>(reinterpret_cast<const uint32_t*>(&w[n]) + j * WPR, dc[n], a[n]);
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

// XS: copy this lane's activations of the next chunk (MT m-tiles of XV 16-byte units, through L1)
// into stage `slot` of its activation slots, xbuf [S][MT][XV][kThreads], and advance its pointers
// one chunk (loop-carried: ptxas otherwise rebuilds the addresses from the arguments every chunk).
template <typename T, int MT, int XV, int KC>
__device__ __forceinline__ void copy_x_chunk(uint4* xbuf, int slot, int tid, const T* (&xcp)[MT]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int v = 0; v < XV; ++v) cp_async16_ca(xbuf + ((slot * MT + mt) * XV + v) * kThreads + tid, xcp[mt] + v * 8);
    xcp[mt] += KC;
  }
}

// XS: this lane's activations of the chunk in stage `slot`, once its copies have landed.
template <int MT, int XV>
__device__ __forceinline__ void read_x_chunk(const uint4* xbuf, int slot, int tid, uint4 (&xv)[MT][XV]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int v = 0; v < XV; ++v) xv[mt][v] = lds128(xbuf + ((slot * MT + mt) * XV + v) * kThreads + tid);
}

// This lane's activations of chunk c (XV 16-byte loads per m-tile; zeros for m-tiles past M).
template <int BITS, typename T, int MT>
__device__ __forceinline__ void load_x(const T* const (&xsrc)[MT], int c, int m0, int M,
                                       uint4 (&xv)[MT][BITS == 4 ? 2 : 1]) {
  constexpr int KC = BITS == 4 ? 64 : 32;
  constexpr int XV = BITS == 4 ? 2 : 1;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    if (m0 + mt * 8 < M) {  // block-uniform; m-tiles wholly past M skip their mma
      const uint4* xp = reinterpret_cast<const uint4*>(xsrc[mt] + c * KC);
#pragma unroll
      for (int v = 0; v < XV; ++v) xv[mt][v] = __ldg(xp + v);
    } else {
#pragma unroll
      for (int v = 0; v < XV; ++v) xv[mt][v] = make_uint4(0, 0, 0, 0);
    }
  }
}

// The end of a block of the plain and middle-m kernels: sum the WK warp k-slices through shared
// memory (`red` overlays the pipeline slots), then, split over KS blocks, through the workspace,
// and store. Warp k-slice r adds into the buffer in turn, highest first (fixed order).
template <typename T, int NT, int MT>
__device__ __forceinline__ void finish_block(float (&acc)[NT][MT][4], const bool (&valid)[NT], float* red, int nt0,
                                             int m0, int M, int N, int tid, int wn, int wk, int WK, int KS,
                                             float* __restrict__ ws, const T* __restrict__ bias, T* __restrict__ out) {
  const int lane = tid & 31, g = lane >> 2, t = lane & 3;
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
    if (wk == 0) add_to_ws(acc, valid, nt0, m0, M, N, g, t, ws);
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
    if (wk == 0) take_from_ws(acc, valid, nt0, m0, M, N, g, t, ws);
  }
  if (wk != 0) return;
  store_out(acc, valid, nt0, m0, M, N, g, t, bias, out);
}

// MODE (ScaleMode): kPerChunk (one group per chunk: group size % KC == 0 and no group table): the
// mma runs on the exact q - z and the chunk's fp32 result is scaled once per output element, rather
// than every weight being scaled in half precision: fewer instructions per weight, for the
// memory-bound small-m tiles (MT = 1) whose extra fp32 registers cost no occupancy. kAtEnd (one
// group in all): no scale traffic in the loop at all, any tile.
// XS: the lane's activations go through the same cp.async pipeline as its weights (S - 1 chunks
// ahead, into its own slots) instead of a load from L1/L2 each chunk, whose latency a warp with few
// chunks (small layers, K split over 8 warps) otherwise waits out once per chunk.
template <int BITS, typename T, int MT, int NT, int S, int MODE, bool XS>
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
    int M, int N, int K, int wk_log2,
    int pdl_pf) {                          // prefetched chunk slices (pdl_prefetch_chunks)
  constexpr int KC = BITS == 4 ? 64 : 32;   // columns per chunk
  constexpr int KSPAN = KC / 4;             // consecutive columns a lane owns per chunk
  constexpr int XV = KSPAN / 8;             // 16-byte activation loads per row per chunk

  extern __shared__ uint4 smem[];
  // smem: weights, scales, zeros, each [S][NT][kThreads] (ChunkSource::copy, consume_chunk)
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

  prefetch_weights<NT>(qw, nt0, n_tiles, NC, lane, c_begin, c_end - c_begin, pdl_pf);
  pdl_wait_then_release();  // nothing above read memory

  const uint32_t zsym = sym_zero2<BITS, T>();
  DequantConsts dc_end[NT];  // kAtEnd: the constants of the one group; kPerChunkSym: of the symmetric zero
  if constexpr (MODE == kAtEnd) row_consts<BITS, T, NT>(scales, zeros, zsym, nt0, n_tiles, g, dc_end);
  if constexpr (MODE == kPerChunkSym) sym_consts<BITS, T, NT>(zsym, dc_end);

  float acc[NT][MT][4];
  zero_acc(acc);

  // Loop-invariant parts of the addresses (ChunkSource); a row past M is clamped to row M - 1.
  const int gsize = gs16 * 16;
  ChunkSource<NT, KC> src;
  src.start(qw, nt0, n_tiles, NC, lane, c_begin, gsize);
  // The lane's activations at the next chunk to load (xld) or, with XS, to copy (xcp); advanced one
  // chunk at a time, like ChunkSource's pointers, so that ptxas keeps them rather than rebuilding
  // them from the arguments every chunk. So are the stage slots (no % S per chunk).
  const T* xld[MT];
  const T* xcp[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    xld[mt] = x + min(m0 + mt * 8 + g, M - 1) * ldx + t * KSPAN + c_begin * KC;
    xcp[mt] = xld[mt];
  }

  uint4* xbuf = smem + S * NT * kThreads * 3 / 2;  // XS: [S][MT][XV][kThreads], after 24 bytes per weight slot

  // Copy chunk c (the one after the previous call's) into stage `slot` (one group per call, maybe empty).
  auto issue = [&](int c, int slot) {
    if (c < c_end) {
      src.template copy<S, MODE != kAtEnd, MODE>(smem, slot, tid, c, scales, zeros, kgroup, gsize, n_tiles);
      if constexpr (XS) copy_x_chunk<T, MT, XV, KC>(xbuf, slot, tid, xcp);
    }
    cp_async_commit();
  };

#pragma unroll
  for (int s = 0; s < S - 1; ++s) issue(c_begin + s, s);

  for (int c = c_begin, rslot = 0, wslot = S - 1; c < c_end; ++c) {
    issue(c + S - 1, wslot);
    wslot = next_slot<S>(wslot);
    // Activations for this chunk first: their latency overlaps the wait and the dequantization.
    uint4 xv[MT][XV];
    if constexpr (!XS) {
      load_x<BITS, T, MT>(xld, 0, m0, M, xv);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) xld[mt] += KC;
    }
    cp_async_wait<S - 1>();  // this thread's copies of chunk c have landed
    if constexpr (XS) read_x_chunk<MT, XV>(xbuf, rslot, tid, xv);  // rows past M: clamped, skipped by consume_chunk
    consume_chunk<BITS, T, MT, NT, S, MODE>(smem, rslot, tid, zeros != nullptr, zsym, dc_end, xv, m0, M, acc);
    rslot = next_slot<S>(rslot);
  }
  cp_async_wait<0>();
  if constexpr (MODE == kAtEnd) scale_rows<T>(acc, scales, nt0, n_tiles, g);

  finish_block<T>(acc, valid, red, nt0, m0, M, N, tid, wn, wk, WK, KS, ws, bias, out);
}

// ---- Middle m (tiles 10-11): the weight slice dequantized once per block and chunk for 64 rows.
// The plain kernel above reads each lane's activations from L1/L2 into registers, which caps
// a pass at 32 rows (MT = 4): at m = 64 every weight is read and dequantized twice, at 256 eight
// times. Here the warps of one k-slice stage their chunk of activations, BM = 8 MT rows, in shared
// memory with cp.async next to the weights (same S-stage pipeline, one block-wide barrier per chunk, the
// same count for every k-slice), and each warp reads its m-tiles from there just in time with one conflict-free 16-byte
// load per m-tile and pair of k-tiles (the layout's k order makes a lane's B operands one contiguous
// run, so a plain ld.shared.v4 does what ldmatrix would: 4 registers per instruction; rows are
// padded so that rows g and g + 1 of a quarter-warp fall in different banks).

// Row of staged activations in 16-byte units: KC columns, plus one unit of padding for 4 bits
// (lanes read at byte 32 t (+16) of rows g, g + 1: a row stride of 144 bytes = 16 mod 128 puts the
// two rows in different banks); 8-bit rows are 64 bytes, so rows g and g + 1 fill 128 bytes.
template <int BITS>
constexpr int xrow_units() {
  return BITS == 4 ? 9 : 4;
}

// Dynamic shared memory of the middle-m kernel with WK k-slices: the plain kernel's weight slots,
// then S stages of BM staged rows per k-slice; the k-slice reduction buffer overlays both.
template <int BITS, int MT, int NT, int S>
int mid_smem_bytes(int wk) {
  const int weights = S * NT * kThreads * (16 + 4 + 4);
  const int acts = S * wk * 8 * MT * xrow_units<BITS>() * 16;
  const int red = wk > 1 ? (kWarps / wk) * NT * MT * 4 * 32 * 4 : 0;
  return weights + acts > red ? weights + acts : red;
}

// One chunk of the middle-m kernel from stage `slot`: this lane's weights, scales and zeros from
// its slots (consume_chunk), dequantized two k-tiles at a time, times every live m-tile's
// activations from xs ([BM][XU] 16-byte units of this stage and k-slice).
template <int BITS, typename T, int MT, int NT, int S, int MB>
__device__ __forceinline__ void consume_chunk_mid(const uint4* smem, const uint4* xs, int slot, int tid,
                                                  bool has_zeros, uint32_t zsym, int mt_live,
                                                  float (&acc)[NT][MT][4]) {
  constexpr int RUNS = BITS == 4 ? 4 : 2;
  constexpr int WPR = BITS == 4 ? 1 : 2;
  constexpr int XU = xrow_units<BITS>();
  constexpr int LANE_UNITS = BITS == 4 ? 2 : 1;  // a lane's KC/4 columns, in 16-byte units
  const uint4* wbuf = smem;
  const uint32_t* sbuf = reinterpret_cast<const uint32_t*>(wbuf + S * NT * kThreads);
  const uint32_t* zbuf = sbuf + S * NT * kThreads;
  const int lane = tid & 31;
  uint4 w[NT];
  DequantConsts dc[NT];
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const int sl = (slot * NT + n) * kThreads + tid;
    w[n] = lds128(wbuf + sl);
    dc[n] = make_consts<BITS, T>(sbuf[sl], has_zeros ? zbuf[sl] : zsym);
  }
  const uint4* xl = xs + (lane >> 2) * XU + (lane & 3) * LANE_UNITS;
#pragma unroll
  for (int jj = 0; jj < RUNS / 2; ++jj) {
    uint32_t a[NT][2][4];
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        dequant_run<BITS, T>(reinterpret_cast<const uint32_t*>(&w[n]) + (2 * jj + h) * WPR, dc[n], a[n][h]);
    // m-tiles in groups of MB: the group's loads first, then its mma ordered so that the two on one
    // accumulator (k-tiles 2 jj and 2 jj + 1) are MB x NT apart (the asm is volatile: issue order is
    // program order, and back-to-back dependent mma would wait out each other's latency).
#pragma unroll
    for (int m0 = 0; m0 < MT; m0 += MB) {
      if (m0 >= mt_live) break;  // block-uniform
      uint4 b[MB];
#pragma unroll
      for (int i = 0; i < MB; ++i)
        if (m0 + i < mt_live) b[i] = lds128(xl + (m0 + i) * 8 * XU + jj);
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int i = 0; i < MB; ++i) {
          if (m0 + i >= mt_live) break;
#pragma unroll
          for (int n = 0; n < NT; ++n)
            mma_16816<T>(acc[n][m0 + i], a[n][h], h ? b[i].z : b[i].x, h ? b[i].w : b[i].y);
        }
    }
  }
}

template <int BITS, typename T, int MT, int NT, int S>
__global__ void __launch_bounds__(kThreads) wxa16_gemm_mid_kernel(
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
    int M, int N, int K, int wk_log2,
    int pdl_pf) {                          // prefetched chunk slices (pdl_prefetch_chunks)
  constexpr int KC = BITS == 4 ? 64 : 32;
  constexpr int BM = 8 * MT;
  constexpr int XU = xrow_units<BITS>();
  constexpr int UPR = KC / 8;  // 16-byte units of activations per row and chunk

  extern __shared__ uint4 smem[];
  // smem: weights, scales, zeros [S][NT][kThreads] (ChunkSource::copy), then activations
  // [WK][S][BM][XU] 16-byte units; the k-slice reduction buffer overlays them after the loop.
  float* red = reinterpret_cast<float*>(smem);

  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int WK = 1 << wk_log2, WN = kWarps >> wk_log2;
  const int wn = warp >> wk_log2, wk = warp & (WK - 1);
  const int n_tiles = N >> 4;
  const int nt0 = (blockIdx.y * WN + wn) * NT;
  const int m0 = blockIdx.x * BM;
  const int mt_live = min(MT, (M - m0 + 7) / 8);
  const int NC = K / KC, KS = gridDim.z;
  const int slice = blockIdx.z * WK + wk;
  const int c_begin = static_cast<int>(static_cast<int64_t>(slice) * NC / (KS * WK));
  const int c_end = static_cast<int>(static_cast<int64_t>(slice + 1) * NC / (KS * WK));
  bool valid[NT];
#pragma unroll
  for (int n = 0; n < NT; ++n) valid[n] = nt0 + n < n_tiles;
  prefetch_weights<NT>(qw, nt0, n_tiles, NC, lane, c_begin, c_end - c_begin, pdl_pf);
  pdl_wait_then_release();  // nothing above read memory
  const uint32_t zsym = sym_zero2<BITS, T>();

  float acc[NT][MT][4];
  zero_acc(acc);

  const int gsize = gs16 * 16;
  ChunkSource<NT, KC> src;
  src.start(qw, nt0, n_tiles, NC, lane, c_begin, gsize);
  uint4* xs = smem + S * NT * kThreads * 3 / 2 + wk * S * BM * XU;  // after 24 bytes per slot
  const int r = wn * 32 + lane;  // this thread's index among the k-slice's WN warps

  // Copy chunk c (weights: this lane's slots; activations: the k-slice's share, rows past M
  // clamped to M - 1, never used) into stage `slot`, one cp.async group per call.
  auto issue = [&](int c, int slot) {
    if (c < c_end) {
      src.template copy<S>(smem, slot, tid, c, scales, zeros, kgroup, gsize, n_tiles);
      for (int p = r; p < BM * UPR; p += 32 * WN) {
        const int row = p / UPR, u = p % UPR;
        cp_async16(xs + (slot * BM + row) * XU + u, x + static_cast<int64_t>(min(m0 + row, M - 1)) * ldx + c * KC + u * 8);
      }
    }
    cp_async_commit();
  };

#pragma unroll
  for (int s = 0; s < S - 1; ++s) issue(c_begin + s, s);

  // Every k-slice runs the same number of iterations (the longest slice's; the others idle through
  // their last one), so one block-wide barrier per chunk serves all of them. Per-slice named
  // barriers (`barrier.sync id, count`), run a different number of times by slices of unequal
  // length, left compute-sanitizer's racecheck reporting hazards in the k-slice sum (07:03 run).
  const int iters = (NC + KS * WK - 1) / (KS * WK);  // slices hold floor or ceil of NC / (KS * WK)
  for (int it = 0; it < iters; ++it) {
    const int c = c_begin + it;
    cp_async_wait<S - 2>();  // this thread's copies of chunk c have landed ...
    __syncthreads();         // ... and every thread's; all are done with chunk c - 1's stage
    issue(c + S - 1, (it + S - 1) % S);
    constexpr int MB = MT < 8 ? MT : 8;
    if (c < c_end)
      consume_chunk_mid<BITS, T, MT, NT, S, MB>(smem, xs + (it % S) * BM * XU, it % S, tid, zeros != nullptr, zsym,
                                            mt_live, acc);
  }
  cp_async_wait<0>();
  finish_block<T>(acc, valid, red, nt0, m0, M, N, tid, wn, wk, WK, KS, ws, bias, out);
}

// Stream-K variant for one pass of rows (M <= 8 * MT): the (n-slice of NT n-tiles, chunk) work
// items, slice by slice, are cut into one equal contiguous range per warp of the whole grid, so
// every SM streams the same number of weight bytes whatever N / (NT * 16) is (the plain kernel's
// whole-slice blocks leave SMs with unequal work when the slice count is not a multiple of the SM
// count: 448 slices on 132 SMs is 4 against 3.4 on average). A warp whose range holds a whole
// slice stores it; partial slices are summed in the fp32 workspace, and the warp that completes a
// slice's count of chunks converts it and zeroes its workspace entries and counter again (graph
// safe, no memset; the sum order, hence the last bits, can vary between launches). kAtEnd reads the
// scales and zeros of each slice the warp starts, and scales before the sum.
template <int BITS, typename T, int MT, int NT, int S, int MODE, bool XS>
__global__ void __launch_bounds__(kThreads) wxa16_gemm_streamk_kernel(
    const T* __restrict__ x,               // [M, ldx]
    int64_t ldx,
    const uint4* __restrict__ qw,          // [N/16, K/KC, 32] (16 bytes per lane)
    const uint32_t* __restrict__ scales,   // [G, N/16, 8]
    const uint32_t* __restrict__ zeros,    // [G, N/16, 8] or null
    const int32_t* __restrict__ kgroup,    // [K/16] or null
    int gs16,                              // group size / 16
    const T* __restrict__ bias,            // [N] or null
    T* __restrict__ out,                   // [M, N]
    float* __restrict__ ws,                // [M, N] fp32 zeros, then one int counter per n-slice (zeros)
    int M, int N, int K,
    int pdl_pf) {                          // prefetched chunk slices (pdl_prefetch_chunks)
  constexpr int KC = BITS == 4 ? 64 : 32;
  constexpr int KSPAN = KC / 4;
  constexpr int XV = KSPAN / 8;

  extern __shared__ uint4 smem[];  // as in wxa16_gemm_kernel
  int* counters = reinterpret_cast<int*>(ws + static_cast<int64_t>(M) * N);

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int n_tiles = N >> 4, NC = K / KC;
  const int n_slices = (n_tiles + NT - 1) / NT;
  const int64_t items = static_cast<int64_t>(n_slices) * NC;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  const int64_t gw = static_cast<int64_t>(blockIdx.x) * kWarps + (tid >> 5);
  // int: the launcher keeps items below 2**31
  const int u_begin = static_cast<int>(gw * items / warps), u_end = static_cast<int>((gw + 1) * items / warps);
  if (u_begin >= u_end) return;  // warp-uniform; no block-wide barrier follows
  prefetch_weights<NT>(qw, (u_begin / NC) * NT, n_tiles, NC, lane, u_begin % NC,
                       min(u_end - u_begin, NC - u_begin % NC), pdl_pf);
  pdl_wait_then_release();  // nothing above read memory

  const uint32_t zsym = sym_zero2<BITS, T>();
  const T* xsrc[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) xsrc[mt] = x + min(mt * 8 + g, M - 1) * ldx + t * KSPAN;
  const int gsize = gs16 * 16;

  // Issue side: the next item to copy (slice is, chunk ic) and that slice's addresses.
  int is = u_begin / NC, ic = u_begin % NC;
  int left = u_end - u_begin;  // items still to issue
  ChunkSource<NT, KC> src;
  src.start(qw, is * NT, n_tiles, NC, lane, ic, gsize);
  // XS: as in wxa16_gemm_kernel; the lane's activations at the next chunk to copy, advanced one chunk
  // at a time (loop-carried, like ChunkSource's pointers) and rewound at each new slice.
  uint4* xbuf = smem + S * NT * kThreads * 3 / 2;
  const T* xcp[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) xcp[mt] = xsrc[mt] + ic * KC;
  auto issue = [&](int slot) {
    if (left > 0) {
      src.template copy<S, MODE != kAtEnd, MODE>(smem, slot, tid, ic, scales, zeros, kgroup, gsize, n_tiles);
      if constexpr (XS) copy_x_chunk<T, MT, XV, KC>(xbuf, slot, tid, xcp);
      --left;
      if (++ic == NC) {
        ic = 0;
        ++is;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) xcp[mt] = xsrc[mt];
        if (left > 0) src.start(qw, is * NT, n_tiles, NC, lane, 0, gsize);
      }
    }
    cp_async_commit();
  };

#pragma unroll
  for (int s = 0; s < S - 1; ++s) issue(s);

  float acc[NT][MT][4];
  zero_acc(acc);

  // Consume side: slice cs, chunk cc; the current slice's items began at chunk c0.
  int cs = u_begin / NC, cc = u_begin % NC, c0 = cc;
  DequantConsts dc_end[NT];  // kAtEnd: the constants of slice cs; kPerChunkSym: of the symmetric zero
  if constexpr (MODE == kAtEnd) row_consts<BITS, T, NT>(scales, zeros, zsym, cs * NT, n_tiles, g, dc_end);
  if constexpr (MODE == kPerChunkSym) sym_consts<BITS, T, NT>(zsym, dc_end);
  for (int u = u_begin, it = 0; u < u_end; ++u, ++it) {
    issue((it + S - 1) % S);
    uint4 xv[MT][XV];
    if constexpr (!XS) load_x<BITS, T, MT>(xsrc, cc, 0, M, xv);
    cp_async_wait<S - 1>();
    if constexpr (XS) read_x_chunk<MT, XV>(xbuf, it % S, tid, xv);
    consume_chunk<BITS, T, MT, NT, S, MODE>(smem, it % S, tid, zeros != nullptr, zsym, dc_end, xv, 0, M, acc);
    ++cc;
    if (cc < NC && u + 1 < u_end) continue;
    // End of this warp's part of slice cs: chunks [c0, cc).
    if constexpr (MODE == kAtEnd) {
      scale_rows<T>(acc, scales, cs * NT, n_tiles, g);
      if (u + 1 < u_end) row_consts<BITS, T, NT>(scales, zeros, zsym, (cs + 1) * NT, n_tiles, g, dc_end);
    }
    bool valid[NT];
#pragma unroll
    for (int n = 0; n < NT; ++n) valid[n] = cs * NT + n < n_tiles;
    bool store = c0 == 0 && cc == NC;  // the whole slice: no other warp touches it
    if (!store) {
      add_to_ws(acc, valid, cs * NT, 0, M, N, g, t, ws);
      __threadfence();
      __syncwarp();
      int last = 0;
      if (lane == 0) {
        const int prev = atomicAdd(counters + cs, cc - c0);
        last = prev + (cc - c0) == NC;
        if (last) counters[cs] = 0;
      }
      store = __shfl_sync(0xffffffffu, last, 0) != 0;
      if (store) {
        __threadfence();
        take_from_ws(acc, valid, cs * NT, 0, M, N, g, t, ws);
      }
    }
    if (store) store_out(acc, valid, cs * NT, 0, M, N, g, t, bias, out);
    zero_acc(acc);
    ++cs;
    cc = c0 = 0;
  }
  cp_async_wait<0>();
}

// The stream-K kernel over the whole grid: num_sms times as many blocks per SM as are resident,
// fewer when that would leave a warp under kMinItems work items (a pipeline worth filling).
template <int BITS, typename T, int MT, int NT, int S, bool AFTER_OK, bool XS>
cudaError_t launch_streamk(int mode, const void* x, int64_t ldx, const int32_t* qweight, const uint32_t* scales,
                           const uint32_t* zeros, const int32_t* kgroup, int group_size, const void* bias, void* out,
                           int M, int N, int K, int num_sms, float* ws, cudaStream_t stream) {
  constexpr int KC = BITS == 4 ? 64 : 32;
  constexpr int kSmem = smem_bytes<MT, NT, S, XS>();
  constexpr int kMinItems = 4;
  auto kernel = wxa16_gemm_streamk_kernel<BITS, T, MT, NT, S, kPerWeight, XS>;
  if (mode == kAtEnd) kernel = wxa16_gemm_streamk_kernel<BITS, T, MT, NT, S, kAtEnd, XS>;
  if constexpr (AFTER_OK) {
    if (mode == kPerChunk) kernel = wxa16_gemm_streamk_kernel<BITS, T, MT, NT, S, kPerChunk, XS>;
    if (mode == kPerChunkSym) kernel = wxa16_gemm_streamk_kernel<BITS, T, MT, NT, S, kPerChunkSym, XS>;
  }
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  static int blocks_per_sm_of[4] = {0, 0, 0, 0};  // per ScaleMode
  int& blocks_per_sm = blocks_per_sm_of[mode];
  if (blocks_per_sm == 0) {
    int b = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, kernel, kThreads, kSmem);
    if (err != cudaSuccess) return err;
    blocks_per_sm = b > 0 ? b : 1;
  }
  const int64_t items = static_cast<int64_t>((N / 16 + NT - 1) / NT) * (K / KC);
  const int64_t per_sm = items / (static_cast<int64_t>(kWarps) * kMinItems * num_sms);
  const int b = static_cast<int>(per_sm < 1 ? 1 : per_sm < blocks_per_sm ? per_sm : blocks_per_sm);
  return launch_kernel(kernel, dim3(b * num_sms), dim3(kThreads), kSmem, stream, static_cast<const T*>(x), ldx,
                       reinterpret_cast<const uint4*>(qweight), scales, zeros, kgroup, group_size / 16,
                       static_cast<const T*>(bias), static_cast<T*>(out), ws, M, N, K,
                       pdl_prefetch_chunks(b * num_sms, num_sms));
}

template <int BITS, typename T, int MT, int NT, int S, bool AFTER_OK, bool STREAMK, bool XS>
cudaError_t launch(const void* x, int64_t ldx, const int32_t* qweight, const uint32_t* scales,
                   const uint32_t* zeros, const int32_t* kgroup, int group_size, const void* bias, void* out,
                   int M, int N, int K, int num_sms, const SplitK& split, cudaStream_t stream) {
  constexpr int KC = BITS == 4 ? 64 : 32;
  constexpr int kSmem = smem_bytes<MT, NT, S, XS>();
  const int mode = kgroup == nullptr && group_size == K                       ? kAtEnd
                   : AFTER_OK && kgroup == nullptr && group_size % KC == 0 ? (zeros == nullptr ? kPerChunkSym : kPerChunk)
                                                                           : kPerWeight;
  // Stream-K needs one pass of rows and the caller's workspace; otherwise the plain kernel serves.
  if constexpr (STREAMK)
    if (M <= 8 * MT && split.ksplit <= 0 && split.ws != nullptr &&
        static_cast<int64_t>(N / 16) * (K / KC) < (int64_t{1} << 31) &&
        split.ws_numel >= wxa16_gemm_workspace_floats(M, N))
      return launch_streamk<BITS, T, MT, NT, S, AFTER_OK, XS>(mode, x, ldx, qweight, scales, zeros, kgroup, group_size,
                                                             bias, out, M, N, K, num_sms, split.ws, stream);
  auto kernel = wxa16_gemm_kernel<BITS, T, MT, NT, S, kPerWeight, XS>;
  if (mode == kAtEnd) kernel = wxa16_gemm_kernel<BITS, T, MT, NT, S, kAtEnd, XS>;
  if constexpr (AFTER_OK) {
    if (mode == kPerChunk) kernel = wxa16_gemm_kernel<BITS, T, MT, NT, S, kPerChunk, XS>;
    if (mode == kPerChunkSym) kernel = wxa16_gemm_kernel<BITS, T, MT, NT, S, kPerChunkSym, XS>;
  }
  // Not a stream operation (legal while capturing a graph); per device, so set it every launch.
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  static int blocks_per_sm_of[4] = {0, 0, 0, 0};  // resident blocks per SM (occupancy calculator) per ScaleMode, once
  int& blocks_per_sm = blocks_per_sm_of[mode];
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
  return launch_kernel(kernel, grid, dim3(kThreads), kSmem, stream, static_cast<const T*>(x), ldx,
                       reinterpret_cast<const uint4*>(qweight), scales, zeros, kgroup, group_size / 16,
                       static_cast<const T*>(bias), static_cast<T*>(out), split.ws, M, N, K, wk_log2,
                       pdl_prefetch_chunks(static_cast<int64_t>(grid.x) * grid.y * grid.z, num_sms));
}

// The middle-m kernel: WK k-slices per block (in-block sum) and KS blocks per output tile
// (workspace sum) chosen by a time model, waves x (chunks per warp + kOverhead), waves over
// num_sms x resident blocks: splitting fills idle SMs but each piece pays the pipeline's fill and
// the epilogue (kOverhead chunks' worth, a guess checked by the tile timings in NOTES_gpu.md); at
// least kMinChunks chunks per warp. Ties (within 2%) go to fewer k-slices, then fewer blocks: a
// k-slice needs its own staged activations (shared memory), a block split its fp32 atomics. KS > 1
// needs the caller's workspace (or split.ksplit forces it, for tuning).
template <int BITS, typename T, int MT, int NT, int S>
cudaError_t launch_mid(const void* x, int64_t ldx, const int32_t* qweight, const uint32_t* scales,
                       const uint32_t* zeros, const int32_t* kgroup, int group_size, const void* bias, void* out,
                       int M, int N, int K, int num_sms, const SplitK& split, cudaStream_t stream) {
  constexpr int KC = BITS == 4 ? 64 : 32;
  constexpr int kMinChunks = 8, kMaxKs = 16;
  constexpr double kOverhead = 4.0;
  auto kernel = wxa16_gemm_mid_kernel<BITS, T, MT, NT, S>;
  static int blocks_per_sm_of[4] = {0, 0, 0, 0};  // per wk_log2 (occupancy calculator), once
  const int n_tiles = N / 16, nc = K / KC;
  const int passes = (M + 8 * MT - 1) / (8 * MT);
  const int64_t ws_needed = wxa16_gemm_workspace_floats(M, N);
  const bool have_ws = split.ws != nullptr && split.ws_numel >= ws_needed;
  if (split.ksplit > 1 && !have_ws) return cudaErrorInvalidValue;
  // Every k-slice gets at least one chunk, also when the split is forced: compute-sanitizer's
  // racecheck reported hazards in the k-slice sum (finish_block) when some slices had none (06:50
  // run, a forced split of 2 over 6 chunks with 4 k-slices), so that case is never launched.
  const int ks_min = split.ksplit > 0 ? (split.ksplit < nc ? split.ksplit : nc) : 1;
  const int ks_max = split.ksplit > 0 ? ks_min : have_ws ? kMaxKs : 1;
  int wk_log2 = 0, ks = ks_min;
  double best = -1.0;  // modelled time of the choice so far
  for (int l = 0; l <= 3 && (1 << l) <= nc; ++l) {
    int& bps = blocks_per_sm_of[l];
    if (bps == 0) {
      const int smem = mid_smem_bytes<BITS, MT, NT, S>(1 << l);
      cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
      if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bps, kernel, kThreads, smem);
      if (err != cudaSuccess || bps <= 0) {
        (void)cudaGetLastError();  // too much shared memory on this GPU: not a candidate
        bps = -1;
      }
    }
    if (bps < 0) continue;
    const int64_t slots = static_cast<int64_t>(bps) * num_sms;
    for (int k = ks_min; k <= ks_max; ++k) {
      if ((1 << l) * k > nc) continue;
      if ((1 << l) * k * kMinChunks > nc && (l + k > 1) && split.ksplit <= 0) continue;
      const int wn = kWarps >> l;
      const int64_t blocks = static_cast<int64_t>((n_tiles + NT * wn - 1) / (NT * wn)) * passes * k;
      const double waves = static_cast<double>((blocks + slots - 1) / slots);
      const double time = waves * (static_cast<double>(nc) / ((1 << l) * k) + kOverhead);
      if (best < 0 || time < best * 0.98) {
        best = time;
        wk_log2 = l;
        ks = k;
      }
    }
  }
  if (best < 0) return cudaErrorInvalidValue;
  const int smem = mid_smem_bytes<BITS, MT, NT, S>(1 << wk_log2);
  // Not a stream operation (legal while capturing a graph); per device, so set it every launch.
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const int wn = kWarps >> wk_log2;
  dim3 grid(passes, (n_tiles + NT * wn - 1) / (NT * wn), ks);
  return launch_kernel(kernel, grid, dim3(kThreads), smem, stream, static_cast<const T*>(x), ldx,
                       reinterpret_cast<const uint4*>(qweight), scales, zeros, kgroup, group_size / 16,
                       static_cast<const T*>(bias), static_cast<T*>(out), split.ws, M, N, K, wk_log2,
                       pdl_prefetch_chunks(static_cast<int64_t>(grid.x) * grid.y * grid.z, num_sms));
}

// The bounded list of tile shapes: (MT m-tiles of 8 rows, NT n-tiles of 16 rows per warp, S
// pipeline stages, SCALE_AFTER allowed, stream-K when the caller gives a workspace and m fits one
// pass). Wide NT re-uses each activation load for more weights and keeps more bytes in flight per
// warp; narrow NT gives more warps when N is small; SCALE_AFTER only where its fp32 partial sums
// cost no occupancy. kTiles[i] is tile id i.
struct TileShape {
  int mt, nt, s;
  bool after, streamk;
  bool xs = false;  // activations staged through the cp.async pipeline (wxa16_gemm_kernel's XS)
};
constexpr TileShape kTiles[] = {{1, 1, 8, true, false}, {1, 2, 8, true, false}, {1, 4, 3, true, false},
                                {2, 1, 8, false, false}, {2, 4, 3, false, false}, {2, 2, 4, true, false},
                                {4, 2, 3, false, false}, {1, 4, 3, true, true},  {1, 2, 8, true, true},
                                {1, 1, 8, true, true}};
constexpr int kNumPlainTiles = sizeof(kTiles) / sizeof(kTiles[0]);
// Middle-m tiles (wxa16_gemm_mid_kernel): (MT, NT, S); tile id kNumPlainTiles + i; 64 rows per
// pass, each weight dequantized once per pass and block. Measured and dropped (NOTES_gpu.md, 06:40):
// (4, 2, 4), slower than the plain tile 6 at 32 rows; (16, 2, 3), 255 registers, slower than two
// passes of (8, 4, 3); (8, 2, 3) and (8, 1, 4) capped at 128 registers for 2 blocks per SM, no gain.
struct MidTileShape {
  int mt, nt, s;
};
constexpr MidTileShape kMidTiles[] = {{8, 2, 3}, {8, 4, 3}};
constexpr int kNumMidTiles = sizeof(kMidTiles) / sizeof(kMidTiles[0]);
// Later tiles, tile id kNumPlainTiles + kNumMidTiles + i: tiles 1 and 5 with staged activations
// (XS) and 4 stages (2 blocks per SM); 14, the stream-K twin of 12 (staged activations, the
// workspace sums of stream-K); 15, a wide 16-row tile (MT = 2, NT = 4) with staged activations that
// scales each chunk's fp32 sums (164 registers: one block of 8 warps per SM), for 9-16 rows on
// layers whose n-tiles give every SM a block of them. Measured and dropped (08:46 run, `--small`):
// the staged twins of tile 0 (8 stages) and tile 2, never faster than these by more than noise;
// (22:58 run) the staged stream-K twin of tile 7, (1, 4, 3): within 1.5% of tile 14, slower on
// 8-bit layers; (2026-11-24 09:05-09:17 runs, `--small`) tile 13 scaled per weight (slower on every
// 4-bit layer), the wide 16-row tile scaled per weight with 2, 3 or 4 stages (2 blocks per SM with
// 2 stages; slower than tile 15 on every layer), tile 15 with 4 stages (slower), (1, 4, 3|4)
// scaled after, for up to 8 rows (no faster than tiles 12 / 14 anywhere), and (09:50 run) the
// stream-K twin of tile 15 with a workspace (slower on every layer at 9 and 16 rows: 14336x4096 m=16
// 22.5 against 17.9 us for tile 13, 4096x14336 29.0 against 15.2).
constexpr TileShape kLateTiles[] = {{1, 2, 4, true, false, true}, {2, 2, 4, true, false, true},
                                     {1, 2, 4, true, true, true}, {2, 4, 3, true, false, true}};
constexpr int kNumTiles = kNumPlainTiles + kNumMidTiles + sizeof(kLateTiles) / sizeof(kLateTiles[0]);

// Shared memory a block may opt in to on the current device (48 KB, what every GPU allows, where
// the query fails).
int smem_optin() {
  const int v = current_device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>();
  return v > 0 ? v : 48 * 1024;
}

// The fastest tile measured on an H100 (benchmarks/NOTES_gpu.md, `gpu_gemm.py --sweep` and
// `--small`) by rows m, n-tiles and chunks nc: wide tiles once N gives every SM 4+ n-tiles, middle
// ones from 2+, else narrow ones that keep more warps busy; beyond 16 rows, passes of 32 rows. Up
// to 8 rows, with a workspace, tall layers (K/KC more than twice the slices of 4 n-tiles:
// 14336x4096, 28672x8192) take the wide stream-K tile: their few slices leave the plain kernel
// with narrow tiles or idle SMs (28672x8192 m=1: 57.3 -> 53.3 us); on the others it measured
// slower than the plain tiles (8192x28672 m=1: 55.7 against 50.4 us; 4096x4096 8-bit, exactly
// twice: 13.6 against 12.8 us). At 64 < m <= 128 the middle-m tiles, where `gpu_gemm.py --mid`
// measured them faster than the plain tile 6 and than dequantize + cuBLAS: the wide one on the
// largest layers (8192x28672: 352 -> 269 us, 28672x8192: 334 -> 271 us at m = 128), the narrow one
// once N gives every SM 6+ n-tiles (4096x14336: 110 -> 92 us); not on 8192x8192 or 14336x4096
// (equal or slower), nor at m <= 64 (within +-5% of tile 6, slower on four of five shapes).
// Since the 08:46 run (`gpu_gemm.py --small`, every tile forced; NOTES_gpu.md), up to 16 rows the
// tiles with staged activations (12, 13) serve all but the widest layers (N/16 >= 8 x SMs: tiles 2
// and 4), also the tall ones, where they beat stream-K for 4 bits (m = 1: 14336x4096 15.2 against
// 18.5 us, 28672x8192 49.2 against 53.2; m = 16 on 14336x4096: 19.2 against 27.3 for tile 3).
// 8 bits up to 8 rows: stream-K on tall layers with N/16 >= 2 x SMs (28672x8192: 87.0 against 92.3
// us), else tile 12. Since the 15:36 run (round 6), tile 12 also serves the widest layers up to 8
// rows: with the loop-carried addresses tile 2 holds 2 blocks per SM, not 3, and tile 12 beat it
// (8192x28672 m=1: 50.6 against 51.6-52.1 us), as it beat tile 0 for 8 bits (88.9 against 90.5).
// Since the tenth session (runs of 22:58 and 23:16, the second after the leaner copy of the per-chunk
// modes), with a workspace the stream-K tile with staged activations (14) serves m = 1 on 8-bit
// layers from 2^25 weights (8192x28672: 85.0 against 94.1 us for tile 12; 4096x14336: 24.1 against
// 25.3; not 4096x4096: 10.5 against 8.3) and on 4-bit layers from 2^27 (8192x28672: 47.6 against
// 49.9; 28672x8192: 45.2 against 46.8; not 8192x8192: 15.7 against 14.9), and 2-8 rows on 8-bit
// layers from 2^27 weights (m = 4: 92.0 against 94.6 (tile 12) and 85.9 against 88.5 (tile 7)).
// Tile 12's whole slices leave SMs unequally loaded where the slices do not divide evenly
// (8192x28672: 896 slices of 2 n-tiles on 2 x 132 block slots fill the last wave to 85%).
// Since the fifteenth session (2026-11-24 09:11 and 09:17 runs, `--small`, two machines), 9-16 rows
// take tile 15 where its slices of 4 n-tiles give nearly every SM a block (N/16 >= 3.75 x SMs): 4-bit
// m = 16 4096x14336 15.2 against 16.9 us (tile 13), 8192x8192 17.4-17.5 against 20.2-20.4,
// 28672x8192 50.8-51.2 against 62.7-62.8, 8192x28672 50.7-52.2 against 54.2-55.4 (tile 4); not
// 14336x4096 or 4096x4096 (64 blocks: 22.1 against 17.7, 8.9 against 7.1). 8-bit layers only below
// tile 4's width: 8192x8192 29.1 against 31.9, 28672x8192 96.0-96.4 against 105.9-106.8 (on
// 8192x28672 tile 4 stays: 94.0 against 96.4).
//
// smem_optin: the device's shared memory a block may opt in to. Tiles 13 (112 KB) and 15 (120 KB)
// need more than GPUs of compute capability 8.6 / 8.9 allow (99 KB), where their unstaged twins (5,
// and 4 or 5) serve instead. Every other tile it picks fits in 99 KB: the plain ones need at most 96
// KB, and the middle-m launcher skips the splits of K that do not fit.
int auto_tile(int M, int n_tiles, int nc, int bits, bool have_ws, int num_sms, int smem_optin) {
  constexpr int kStaged1 = kNumPlainTiles + kNumMidTiles, kStaged5 = kStaged1 + 1;  // tiles 1, 5 staged
  constexpr int kStreamKStaged = kStaged1 + 2, kWide16 = kStaged1 + 3;              // tiles 14, 15
  constexpr TileShape w16 = kLateTiles[3], s5 = kLateTiles[1];
  static_assert(w16.mt == 2 && w16.nt == 4 && w16.xs && s5.mt == 2 && s5.nt == 2 && s5.xs, "tiles 15 and 13");
  if (M <= 8) {
    const int64_t weights = static_cast<int64_t>(n_tiles) * 16 * nc * (bits == 4 ? 64 : 32);
    if (have_ws && M == 1 && weights >= (int64_t{1} << (bits == 8 ? 25 : 27))) return kStreamKStaged;
    if (have_ws && bits == 8 && weights >= (int64_t{1} << 27)) return kStreamKStaged;
    if (bits == 8 && have_ws && nc > 2 * ((n_tiles + 3) / 4) && n_tiles >= 2 * num_sms) return 7;
    return kStaged1;
  }
  if (M <= 16) {
    const bool block_per_sm = 4 * n_tiles >= 15 * num_sms;  // tile 15's slices of 4 n-tiles fill ~all SMs
    if (block_per_sm && (bits == 4 || n_tiles < 4 * num_sms) &&
        smem_bytes<w16.mt, w16.nt, w16.s, true>() <= smem_optin)
      return kWide16;
    if (n_tiles >= (bits == 8 ? 4 : 8) * num_sms) return 4;
    return smem_bytes<s5.mt, s5.nt, s5.s, true>() <= smem_optin ? kStaged5 : 5;
  }
  if (M > 64 && M <= 128) {
    if (static_cast<int64_t>(n_tiles) * nc >= (int64_t{1} << 17)) return kNumPlainTiles + 1;
    if (n_tiles >= 6 * num_sms) return kNumPlainTiles;
  }
  return 6;
}

template <int BITS, typename T>
cudaError_t dispatch_tile(int tile, const void* x, int64_t ldx, const int32_t* qweight, const uint32_t* scales,
                          const uint32_t* zeros, const int32_t* kgroup, int group_size, const void* bias, void* out,
                          int M, int N, int K, int num_sms, const SplitK& split, cudaStream_t stream) {
#define QK_TILE(I)                                                                                                   \
  case I:                                                                                                            \
    return launch<BITS, T, kTiles[I].mt, kTiles[I].nt, kTiles[I].s, kTiles[I].after, kTiles[I].streamk, kTiles[I].xs>(x, ldx, qweight, scales, zeros, kgroup,         \
                                                                   group_size, bias, out, M, N, K, num_sms, split, stream);
  if (tile < 0) tile = auto_tile(M, N / 16, K / chunk_cols(BITS), BITS, split.ws != nullptr, num_sms, smem_optin());
  switch (tile) {
    QK_TILE(0)
    QK_TILE(1)
    QK_TILE(2)
    QK_TILE(3)
    QK_TILE(4)
    QK_TILE(5)
    QK_TILE(6)
    QK_TILE(7)
    QK_TILE(8)
    QK_TILE(9)
#define QK_MID_TILE(I)                                                                                     \
  case kNumPlainTiles + I:                                                                                 \
    return launch_mid<BITS, T, kMidTiles[I].mt, kMidTiles[I].nt, kMidTiles[I].s>(                          \
        x, ldx, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, split, stream);
    QK_MID_TILE(0)
    QK_MID_TILE(1)
#undef QK_MID_TILE
#define QK_LATE_TILE(I)                                                                                      \
  case kNumPlainTiles + kNumMidTiles + I:                                                                    \
    return launch<BITS, T, kLateTiles[I].mt, kLateTiles[I].nt, kLateTiles[I].s, kLateTiles[I].after,         \
                  kLateTiles[I].streamk, kLateTiles[I].xs>(x, ldx, qweight, scales, zeros, kgroup, group_size, \
                                                           bias, out, M, N, K, num_sms, split, stream);
    QK_LATE_TILE(0)
    QK_LATE_TILE(1)
    QK_LATE_TILE(2)
    QK_LATE_TILE(3)
#undef QK_LATE_TILE
    default:
      return cudaErrorInvalidValue;
  }
#undef QK_TILE
}
static_assert(kNumPlainTiles == 10 && kNumMidTiles == 2 && kNumTiles == 16, "dispatch_tile lists every tile");

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

int wxa16_gemm_auto_tile(int M, int N, int K, int bits, bool have_ws, int num_sms, int smem_optin_bytes) {
  if (M <= 0 || N % 16 != 0 || (bits != 4 && bits != 8) || K % chunk_cols(bits) != 0) return -1;
  return auto_tile(M, N / 16, K / chunk_cols(bits), bits, have_ws, num_sms,
                   smem_optin_bytes > 0 ? smem_optin_bytes : smem_optin());
}

}  // namespace cuda
}  // namespace qk
