// Dequantize the mma-shuffled 4/8-bit weight (layout in wxa16.h) to a dense row-major [N, K]
// fp16/bf16 matrix (columns in the sorted order): the large-m path feeds it to cuBLAS.
//
// Purely memory-bound: K*N*(bits/8 + 2) bytes moved, four fifths of them writes. One warp owns one
// n-tile (16 rows) x 256 columns: it issues all its 16-byte loads first (4 chunks of 64 columns
// for 4 bits, 8 of 32 for 8 bits, so several loads per lane are in flight), dequantizes them with
// the same code as the GEMM (so both paths round identically), transposes the 16 x 256 tile through
// its own shared memory, and writes each row's 512 bytes with one fully coalesced 16-byte store per
// lane. (Writing straight from the fragment layout would leave every store instruction touching
// 8 rows in half-sectors.) Warps are independent: no block barrier.
// Limits: N % 16 == 0, K % KC == 0. Test: tests/test_cuda_backend.py (test_dequantize_*);
// benchmark: benchmarks/gpu_gemm.py --dequant.
#include "cuda/wxa16.h"
#include "cuda/wxa16_common.cuh"

namespace qk {
namespace cuda {
namespace {

constexpr int kDqWarps = 4;
constexpr int kDqCols = 256;  // columns of one warp's tile: 512 bytes of each output row

// Bytes between two rows of a warp's shared-memory tile: 512 plus a pad that puts the rows of the
// 8 lanes of one 16-byte store phase (2 rows x 4 lanes) on distinct banks.
template <int BITS>
constexpr int dq_row_bytes() {
  return kDqCols * 2 + (BITS == 4 ? 16 : 64);
}

template <int BITS, typename T>
__global__ void __launch_bounds__(kDqWarps * 32) wxa16_dequant_kernel(
    const uint4* __restrict__ qw,          // [N/16, K/KC, 32]
    const uint32_t* __restrict__ scales,   // [G, N/16, 8]
    const uint32_t* __restrict__ zeros,    // [G, N/16, 8] or null
    const int32_t* __restrict__ kgroup,    // [K/16] or null
    int gs16,
    T* __restrict__ w,                     // [N, K]
    int N, int K,
    int pdl_pf) {                          // prefetched chunk slices (pdl_prefetch_chunks)
  using T2 = typename ActTraits<T>::T2;
  constexpr int KC = BITS == 4 ? 64 : 32;
  constexpr int RUNS = BITS == 4 ? 4 : 2;
  constexpr int KSPAN = KC / 4;            // columns of one row a lane holds per chunk
  constexpr int WPR = BITS == 4 ? 1 : 2;
  constexpr int CPW = kDqCols / KC;        // chunks per warp tile
  constexpr int ROW = dq_row_bytes<BITS>();
  __shared__ __align__(16) unsigned char tile[kDqWarps][16 * ROW];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int NC = K / KC, n_tiles = N / 16;
  const int col_blocks = (K + kDqCols - 1) / kDqCols;
  const int64_t wid = static_cast<int64_t>(blockIdx.x) * kDqWarps + warp;  // (n-tile, column block)
  if (wid >= static_cast<int64_t>(n_tiles) * col_blocks) return;           // whole warp
  const int nt = static_cast<int>(wid / col_blocks), cb = static_cast<int>(wid % col_blocks);
  const int c0 = cb * CPW;

  prefetch_weights<1>(qw, nt, n_tiles, NC, lane, c0, min(CPW, NC - c0), pdl_pf);
  pdl_wait_then_release();  // nothing above read memory

  uint4 q[CPW];
#pragma unroll
  for (int cc = 0; cc < CPW; ++cc)
    q[cc] = c0 + cc < NC ? __ldg(qw + (static_cast<int64_t>(nt) * NC + c0 + cc) * 32 + lane) : make_uint4(0, 0, 0, 0);

  const T zs = ActTraits<T>::from_float(static_cast<float>(1 << (BITS - 1)));
  const uint32_t zsym = as_u32(T2{zs, zs});
  unsigned char* my = tile[warp];
#pragma unroll
  for (int cc = 0; cc < CPW; ++cc) {
    if (c0 + cc >= NC) break;
    const int col0 = (c0 + cc) * KC + t * KSPAN;
    const int64_t si = (static_cast<int64_t>(group_of(kgroup, col0, gs16)) * n_tiles + nt) * 8 + g;
    const DequantConsts dc = make_consts<BITS, T>(__ldg(scales + si), zeros != nullptr ? __ldg(zeros + si) : zsym);
    const uint32_t* words = reinterpret_cast<const uint32_t*>(&q[cc]);
    uint32_t r0[RUNS * 2], r1[RUNS * 2];  // KSPAN values of rows g and g + 8, as pairs
#pragma unroll
    for (int j = 0; j < RUNS; ++j) {
      uint32_t a[4];
      dequant_run<BITS, T>(words + j * WPR, dc, a);
      r0[2 * j] = a[0];      // (r0; i0, i1)
      r0[2 * j + 1] = a[2];  // (r0; i2, i3)
      r1[2 * j] = a[1];
      r1[2 * j + 1] = a[3];
    }
    const int off = (cc * KC + t * KSPAN) * 2;
#pragma unroll
    for (int v = 0; v < RUNS / 2; ++v) {
      *reinterpret_cast<uint4*>(my + g * ROW + off + 16 * v) =
          make_uint4(r0[4 * v], r0[4 * v + 1], r0[4 * v + 2], r0[4 * v + 3]);
      *reinterpret_cast<uint4*>(my + (g + 8) * ROW + off + 16 * v) =
          make_uint4(r1[4 * v], r1[4 * v + 1], r1[4 * v + 2], r1[4 * v + 3]);
    }
  }
  __syncwarp();

  const int col = cb * kDqCols + lane * 8;  // K % 8 == 0, so a lane's 8 columns are all in or all out
  if (col >= K) return;
  T* dst = w + static_cast<int64_t>(nt) * 16 * K + col;
#pragma unroll
  for (int r = 0; r < 16; ++r)
    *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(r) * K) = *reinterpret_cast<const uint4*>(my + r * ROW + lane * 16);
}

template <int BITS, typename T>
cudaError_t launch(const int32_t* qweight, const uint32_t* scales, const uint32_t* zeros, const int32_t* kgroup,
                   int group_size, void* w, int N, int K, cudaStream_t stream) {
  const int64_t warps = static_cast<int64_t>(N / 16) * ((K + kDqCols - 1) / kDqCols);
  const int64_t blocks = (warps + kDqWarps - 1) / kDqWarps;
  return launch_kernel(wxa16_dequant_kernel<BITS, T>, dim3(static_cast<unsigned>(blocks)), dim3(kDqWarps * 32), 0,
                       stream, reinterpret_cast<const uint4*>(qweight), scales, zeros, kgroup, group_size / 16,
                       static_cast<T*>(w), N, K, pdl_enabled() ? kPdlPrefetchChunks : 0);  // many waves
}

}  // namespace
cudaError_t wxa16_dequantize(const int32_t* qweight, const uint32_t* scales, const uint32_t* zeros,
                             const int32_t* kgroup, int group_size, void* w, int N, int K, int bits,
                             ActDtype dtype, cudaStream_t stream) {
  if (N % 16 != 0 || K % chunk_cols(bits) != 0 || group_size % 16 != 0) return cudaErrorInvalidValue;
  if (bits == 4 && dtype == ActDtype::kF16) return launch<4, __half>(qweight, scales, zeros, kgroup, group_size, w, N, K, stream);
  if (bits == 4 && dtype == ActDtype::kBF16)
    return launch<4, __nv_bfloat16>(qweight, scales, zeros, kgroup, group_size, w, N, K, stream);
  if (bits == 8 && dtype == ActDtype::kF16) return launch<8, __half>(qweight, scales, zeros, kgroup, group_size, w, N, K, stream);
  if (bits == 8 && dtype == ActDtype::kBF16)
    return launch<8, __nv_bfloat16>(qweight, scales, zeros, kgroup, group_size, w, N, K, stream);
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace qk
