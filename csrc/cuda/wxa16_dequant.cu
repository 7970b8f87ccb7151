// Dequantize the mma-shuffled 4/8-bit weight (layout in wxa16.h) to a dense row-major [N, K]
// fp16/bf16 matrix (columns in the sorted order): the large-m path feeds it to cuBLAS.
//
// One thread per (n-tile, chunk, lane): it reads its 16 bytes once, dequantizes them with the same
// code as the GEMM (so both paths round identically) and writes KC/4 consecutive columns of its
// two rows with 16-byte stores. Purely memory-bound: K*N*(bits/8 + 2) bytes moved.
// Limits: N % 16 == 0, K % KC == 0. Test: tests/test_cuda_backend.py (test_dequantize_*).
#include "cuda/wxa16.h"
#include "cuda/wxa16_common.cuh"

namespace qk {
namespace cuda {
namespace {

template <int BITS, typename T>
__global__ void __launch_bounds__(256) wxa16_dequant_kernel(
    const uint4* __restrict__ qw,          // [N/16, K/KC, 32]
    const uint32_t* __restrict__ scales,   // [G, N/16, 8]
    const uint32_t* __restrict__ zeros,    // [G, N/16, 8] or null
    const int32_t* __restrict__ kgroup,    // [K/16] or null
    int gs16,
    T* __restrict__ w,                     // [N, K]
    int N, int K) {
  using T2 = typename ActTraits<T>::T2;
  constexpr int KC = BITS == 4 ? 64 : 32;
  constexpr int RUNS = BITS == 4 ? 4 : 2;
  constexpr int KSPAN = KC / 4;
  constexpr int WPR = BITS == 4 ? 1 : 2;
  const int NC = K / KC, n_tiles = N / 16;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (nt, c, lane)
  if (idx >= static_cast<int64_t>(n_tiles) * NC * 32) return;
  const int lane = static_cast<int>(idx & 31);
  const int c = static_cast<int>((idx >> 5) % NC);
  const int nt = static_cast<int>((idx >> 5) / NC);
  const int g = lane >> 2, t = lane & 3;

  const uint4 q = __ldg(qw + idx);
  const int col0 = c * KC + t * KSPAN;
  const int gi = group_of(kgroup, col0, gs16);
  const int64_t si = (static_cast<int64_t>(gi) * n_tiles + nt) * 8 + g;
  const T zs = ActTraits<T>::from_float(static_cast<float>(1 << (BITS - 1)));
  const uint32_t zraw = zeros != nullptr ? __ldg(zeros + si) : as_u32(T2{zs, zs});
  const uint32_t zm = prepare_zero<BITS, T>(zraw);
  const uint32_t sc = __ldg(scales + si);

  const uint32_t* words = reinterpret_cast<const uint32_t*>(&q);
  uint32_t r0[RUNS * 2], r1[RUNS * 2];  // KSPAN values of each row, as pairs
#pragma unroll
  for (int j = 0; j < RUNS; ++j) {
    uint32_t a[4];
    dequant_run<BITS, T>(words + j * WPR, sc, zm, a);
    r0[2 * j] = a[0];  // (r0; i0, i1)
    r0[2 * j + 1] = a[2];  // (r0; i2, i3)
    r1[2 * j] = a[1];
    r1[2 * j + 1] = a[3];
  }
  const int row0 = nt * 16 + g;
  uint4* p0 = reinterpret_cast<uint4*>(w + static_cast<int64_t>(row0) * K + col0);
  uint4* p1 = reinterpret_cast<uint4*>(w + static_cast<int64_t>(row0 + 8) * K + col0);
#pragma unroll
  for (int v = 0; v < RUNS / 2; ++v) {
    p0[v] = make_uint4(r0[4 * v], r0[4 * v + 1], r0[4 * v + 2], r0[4 * v + 3]);
    p1[v] = make_uint4(r1[4 * v], r1[4 * v + 1], r1[4 * v + 2], r1[4 * v + 3]);
  }
}

template <int BITS, typename T>
cudaError_t launch(const int32_t* qweight, const uint32_t* scales, const uint32_t* zeros, const int32_t* kgroup,
                   int group_size, void* w, int N, int K, cudaStream_t stream) {
  constexpr int KC = BITS == 4 ? 64 : 32;
  const int64_t threads = static_cast<int64_t>(N / 16) * (K / KC) * 32;
  const int64_t blocks = (threads + 255) / 256;
  wxa16_dequant_kernel<BITS, T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
      reinterpret_cast<const uint4*>(qweight), scales, zeros, kgroup, group_size / 16, static_cast<T*>(w), N, K);
  return cudaGetLastError();
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
