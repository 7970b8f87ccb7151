// W4A16 / W8A16 GEMM on Hopper's warpgroup tensor-core instruction (wgmma, sm_90a): out = x @ W^T + b,
// for the middle and large m where the mma.sync kernels (wxa16_gemm_sm80.cu) run out of issue slots.
//
// Same formulation as those kernels, out^T = W x^T: the dequantized WEIGHTS are wgmma's A operand,
// taken from registers (m64nBNk16: each warp of a warpgroup holds 16 output channels, in the
// register layout of mma.m16n8k16's A operand, which is exactly what wxa16_common.cuh's
// dequant_run produces from the mma-shuffled weights of wxa16.h), and BN ACTIVATION rows are the B
// operand, read by the tensor cores from shared memory through a matrix descriptor. So the kernel
// reads the one weight copy the other kernels read; no second layout, no new prepare step.
//
// The shuffled layout permutes k inside a lane's run (the mma's logical k 2t, 2t+1, 2t+8, 2t+9 of
// k-tile j sit at physical columns (KC/4) t + 4j + {0, 1, 2, 3} of the chunk), so the activations
// must reach shared memory in the same logical order: a small pre-pass (wxa16_tile_x_kernel) writes
// x once per call in that order, cut into the tiles the kernel reads, each laid out as the
// no-swizzle K-major core matrices of the wgmma descriptor (M x K x 2 bytes each way, a few us).
//
// Output tile = NWG warpgroups (64 output channels each) x BN activation rows, one block per tile
// over all of K; or, when the launcher splits K (too few tiles for the SMs, a workspace given),
// stream-K: one wave of blocks shares the (tile, stage) items out evenly, a share may cross tiles,
// and a tile cut between blocks sums its parts in fp32 through the caller's self-zeroing workspace
// (wxa16.h), the last block to arrive storing it. K is consumed in
// stages of 64 columns (one 4-bit chunk or two 8-bit chunks; four k16 steps): the stage's activation
// tile (one contiguous run of the pre-cut tiles) and each lane's 16-byte weight slice, scale and
// zero go to shared memory by cp.async, S slots, S - 2 stages ahead. Per stage each warp dequantizes
// its 16 channels into 16 registers and the warpgroup issues four async wgmma; the next stage's
// dequantization runs while they execute (two register sets, wgmma.wait_group 1). Blocks of 4
// warpgroups (256 channels) keep the activation bytes a stage no larger than the weight bytes at
// 64 rows (both come through L2; the 08:51 run with 128-channel blocks was bound by them).
//
// Limits: N % 16 == 0, K % 64 == 0, group size % 16 == 0 (or per-channel), any M >= 1 (rows past M
// are zeros in the tiles and never stored). Built for sm_90a only: other targets compile the kernels
// empty and wxa16_gemm_wgmma_available() reports false, so callers fall back to wxa16_gemm.
// Test: PYTHONPATH=$PWD python -m pytest -q tests/test_cuda_wgmma.py (on an H100);
// benchmark: PYTHONPATH=$PWD python benchmarks/gpu_gemm.py --wgmma.
#include <algorithm>

#include "cuda/wxa16.h"
#include "cuda/wxa16_common.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define QK_HAVE_WGMMA 1
#endif

namespace qk {
namespace cuda {
namespace {

// 1 in the sm_90a image, 0 in every other one: the host reads the value of the image the driver
// loaded for the device (wxa16_gemm_wgmma_available).
#ifdef QK_HAVE_WGMMA
__device__ int g_wgmma_built = 1;
#else
__device__ int g_wgmma_built = 0;
#endif

constexpr int kStageCols = 64;  // K columns per pipeline stage: four k16 steps

__host__ __device__ constexpr int chunk_cols_c(int bits) { return bits == 4 ? 64 : 32; }

// Physical column (within a 64-column stage) of the even logical column 16 j + 2 t + 8 hi: the
// permutation of wxa16.h (a lane's run j holds logical k 2t, 2t+1 at i = 0, 1 and 2t+8, 2t+9 at i =
// 2, 3, at columns (KC/4) t + 4 j' + i of chunk j / (KC/16), j' = j % (KC/16)).
template <int BITS>
__host__ __device__ constexpr int phys_col(int j, int t, int hi) {
  return BITS == 4 ? 16 * t + 4 * j + 2 * hi : 32 * (j >> 1) + 8 * t + 4 * (j & 1) + 2 * hi;
}

// x -> the kernel's tiles: xt[mb, s] is the BN x 64 activation tile of rows BN mb .. and stage s,
// BN * 128 bytes laid out exactly as the kernel's shared memory wants it (one contiguous run a stage):
// 16-byte unit i is row 8 (i / 64) + i % 8, logical columns 8 u .. 8 u + 7, u = (i / 8) % 8 (the
// no-swizzle K-major core matrices of smem_desc), and logical column 16 j + p of a stage is
// physical column phys_col(j, p) of x. Rows past M are zeros.
template <int BITS>
__global__ void wxa16_tile_x_kernel(const uint32_t* __restrict__ x,  // [M, ldx / 2] pairs
                                    int64_t ldx2,                   // row stride of x, in pairs
                                    uint4* __restrict__ xt,         // [ceil(M / BN), K / 64, BN * 8]
                                    int M, int K, int bn) {
  pdl_wait_then_release();  // x may be the previous kernel's output
  const int stages = K / kStageCols;
  const int64_t units = static_cast<int64_t>((M + bn - 1) / bn) * stages * bn * 8;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < units;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int in_tile = static_cast<int>(i % (bn * 8));
    const int64_t tile = i / (bn * 8);
    const int s = static_cast<int>(tile % stages);
    const int64_t m = (tile / stages) * bn + (in_tile >> 6) * 8 + (in_tile & 7);
    const int u = (in_tile >> 3) & 7, j = u >> 1, hi = u & 1;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (m < M) {
      const uint32_t* src = x + m * ldx2 + s * (kStageCols / 2);
      v.x = __ldg(src + phys_col<BITS>(j, 0, hi) / 2);
      v.y = __ldg(src + phys_col<BITS>(j, 1, hi) / 2);
      v.z = __ldg(src + phys_col<BITS>(j, 2, hi) / 2);
      v.w = __ldg(src + phys_col<BITS>(j, 3, hi) / 2);
    }
    xt[i] = v;
  }
}

template <int N>
struct WgmmaN {};

#ifdef QK_HAVE_WGMMA
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(d), "l"(src) : "memory");
}

// Descriptor of a K-major B tile without swizzle: 8-row x 16-byte core matrices, the two of one
// k16 step 128 bytes apart (leading byte offset), row groups kStageCols * 16 bytes apart (stride).
__device__ __forceinline__ uint64_t smem_desc(const void* p) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  constexpr uint64_t lbo = 128 >> 4, sbo = (kStageCols * 16) >> 4;
  return static_cast<uint64_t>((a & 0x3FFFF) >> 4) | (lbo << 16) | (sbo << 32);
}

// The wgmma wrappers (m64nBNk16, A = four .b32 registers per thread, B = shared-memory descriptor,
// fp32 accumulators, D += A B). Generated text: one per BN of the config list.
template <bool BF16>
__device__ __forceinline__ void wgmma_rs(WgmmaN<32>, float (&d)[16], const uint32_t (&a)[4], uint64_t desc) {
  if constexpr (BF16)
    asm volatile("{ .reg .pred p; setp.ne.b32 p, %21, 0; "
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 0; }"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
  else
    asm volatile("{ .reg .pred p; setp.ne.b32 p, %21, 0; "
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 0; }"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

template <bool BF16>
__device__ __forceinline__ void wgmma_rs(WgmmaN<64>, float (&d)[32], const uint32_t (&a)[4], uint64_t desc) {
  if constexpr (BF16)
    asm volatile("{ .reg .pred p; setp.ne.b32 p, %37, 0; "
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0; }"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
  else
    asm volatile("{ .reg .pred p; setp.ne.b32 p, %37, 0; "
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0; }"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

template <bool BF16>
__device__ __forceinline__ void wgmma_rs(WgmmaN<128>, float (&d)[64], const uint32_t (&a)[4], uint64_t desc) {
  if constexpr (BF16)
    asm volatile("{ .reg .pred p; setp.ne.b32 p, %69, 0; "
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 0; }"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
  else
    asm volatile("{ .reg .pred p; setp.ne.b32 p, %69, 0; "
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 0; }"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}


__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// Ties the accumulators to the preceding asm (a wait): their reads cannot move above it.
template <int NA>
__device__ __forceinline__ void fence_acc(float (&d)[NA]) {
#pragma unroll
  for (int i = 0; i < NA; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
#endif

// Shared memory of one block: S stages of [activation tile BN x 64 columns][weights, scales, zeros
// of every thread's lane slots].
template <int BITS, int BN, int NWG, int S>
constexpr int wgmma_smem_bytes() {
  constexpr int cps = kStageCols / chunk_cols_c(BITS);
  return S * (BN * kStageCols * 2 + cps * NWG * 128 * (16 + 4 + 4));
}

template <int BITS, typename T, int BN, int NWG, int S, bool STREAM_K>
__global__ void __launch_bounds__(NWG * 128) wxa16_gemm_wgmma_kernel(
    const T* __restrict__ xt,              // activation tiles (wxa16_tile_x_kernel)
    const uint4* __restrict__ qw,          // [N/16, K/KC, 32] (16 bytes per lane)
    const uint32_t* __restrict__ scales,   // [G, N/16, 8]
    const uint32_t* __restrict__ zeros,    // [G, N/16, 8] or null
    const int32_t* __restrict__ kgroup,    // [K/16] or null
    int gsize,                             // columns per group
    const T* __restrict__ bias,            // [N] or null
    T* __restrict__ out,                   // [M, N]
    float* __restrict__ ws,                // [M, N] fp32 zeros, then one int counter per tile (split only)
    int M, int N, int K,
    int pdl_pf) {                          // prefetched chunk slices (pdl_prefetch_chunks)
#ifdef QK_HAVE_WGMMA
  constexpr int KC = BITS == 4 ? 64 : 32;
  constexpr int CPS = kStageCols / KC;  // chunks per stage
  constexpr int RUNS = KC / 16;         // k16 steps per chunk
  constexpr int WPR = BITS == 4 ? 1 : 2;
  constexpr int THREADS = NWG * 128;
  constexpr int XBYTES = BN * kStageCols * 2;
  constexpr int NA = BN / 2;  // accumulators per thread
  constexpr bool BF16 = std::is_same<T, __nv_bfloat16>::value;

  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* xs = smem;                                       // [S][BN / 8][8 units][8 rows][16 B]
  uint4* wbuf = reinterpret_cast<uint4*>(smem + S * XBYTES);  // [S][CPS][THREADS]
  uint32_t* sbuf = reinterpret_cast<uint32_t*>(wbuf + S * CPS * THREADS);
  uint32_t* zbuf = sbuf + S * CPS * THREADS;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int n_tiles = N >> 4, NC = K / KC;
  const int NS = K / kStageCols, m_blocks = (M + BN - 1) / BN;
  const int g = lane >> 2, t = lane & 3;
  const int lane_col = (lane & 3) * (KC / 4);
  const uint32_t zsym = [] {
    using T2 = typename ActTraits<T>::T2;
    const T z = ActTraits<T>::from_float(static_cast<float>(1 << (BITS - 1)));
    return as_u32(T2{z, z});
  }();
  __shared__ int s_last;

  if constexpr (!STREAM_K)  // the warp's 16 channels of the tile the grid gives this block
    prefetch_weights<1>(qw, static_cast<int>(blockIdx.x) / m_blocks * (4 * NWG) + warp, n_tiles, NC, lane, 0, NC,
                        pdl_pf);
  pdl_wait_then_release();  // nothing above read memory

  // Stages s_begin .. s_end - 1 of output tile `tile` (= n-block * m_blocks + m-block), one of `parts`
  // blocks that share the tile.
  auto run_tile = [&](int tile, int s_begin, int s_end, int parts) {
    const int mb = tile % m_blocks;
    const int nt = (tile / m_blocks) * (4 * NWG) + warp;  // this warp's 16 channels
    const int ntc = min(nt, n_tiles - 1);                 // past N: stream the last real tile, store nothing
    const int m0 = mb * BN;
    const int soff = ntc * 8 + (lane >> 2);
    if constexpr (STREAM_K) __syncthreads();  // every warp is done with the previous tile's slots

    // Copy stage s into slot `slot`, one cp.async group per call (maybe empty): the activation tile
    // (contiguous in xt, 16-byte unit i to byte 16 i), this lane's 16-byte weight slice of each chunk,
    // and its scale and zero.
    const T* xsrc = xt + static_cast<int64_t>(mb) * NS * (BN * kStageCols);
    auto issue = [&](int s, int slot) {
      if (s < s_end) {
        const uint4* xsrc4 = reinterpret_cast<const uint4*>(xsrc + static_cast<int64_t>(s) * (BN * kStageCols));
        uint4* xdst = reinterpret_cast<uint4*>(xs + slot * XBYTES);
#pragma unroll
        for (int i = tid; i < BN * 8; i += THREADS) cp_async16(xdst + i, xsrc4 + i);
#pragma unroll
        for (int cc = 0; cc < CPS; ++cc) {
          const int col = (s * CPS + cc) * KC + lane_col;
          const int gi = kgroup != nullptr ? __ldg(kgroup + (col >> 4)) : col / gsize;
          const int64_t goff = static_cast<int64_t>(gi) * n_tiles * 8 + soff;
          const int sl = (slot * CPS + cc) * THREADS + tid;
          cp_async16(wbuf + sl, qw + (static_cast<int64_t>(ntc) * NC + s * CPS + cc) * 32 + lane);
          cp_async4(sbuf + sl, scales + goff);
          if (zeros != nullptr) cp_async4(zbuf + sl, zeros + goff);
        }
      }
      asm volatile("cp.async.commit_group;" ::: "memory");
    };

    // This stage's A registers: 4 k16 steps x 4 registers, dequantized from the lane's slots.
    auto dequant_stage = [&](int slot, uint32_t (&a)[4][4]) {
#pragma unroll
      for (int cc = 0; cc < CPS; ++cc) {
        const int sl = (slot * CPS + cc) * THREADS + tid;
        const uint4 w = wbuf[sl];
        const DequantConsts dc = make_consts<BITS, T>(sbuf[sl], zeros != nullptr ? zbuf[sl] : zsym);
#pragma unroll
        for (int j = 0; j < RUNS; ++j)
          dequant_run<BITS, T>(reinterpret_cast<const uint32_t*>(&w) + j * WPR, dc, a[cc * RUNS + j]);
      }
    };

    float acc[NA];
#pragma unroll
    for (int i = 0; i < NA; ++i) acc[i] = 0.0f;

    auto mma_stage = [&](int slot, const uint32_t (&a)[4][4]) {
      const uint8_t* xt = xs + slot * XBYTES;
      wgmma_fence();  // the A registers were just written
#pragma unroll
      for (int j = 0; j < 4; ++j) wgmma_rs<BF16>(WgmmaN<BN>{}, acc, a[j], smem_desc(xt + j * 256));
      wgmma_commit();
    };

    // Stage s is consumed in iteration s - s_begin; its slot is rewritten (issue, S - 2 ahead) only
    // after every warpgroup's wgmma on it has completed: each waits for all but its latest group at
    // the end of an iteration, and the barrier at the start of the next orders that before the copy.
#pragma unroll
    for (int i = 0; i < S - 2; ++i) issue(s_begin + i, i);
    uint32_t a0[4][4], a1[4][4];  // two register sets: one is read by wgmma while the other is filled
    int it = 0;
    auto step = [&](uint32_t (&a)[4][4]) {
      const int slot = it % S;
      asm volatile("cp.async.wait_group %0;" ::"n"(S - 3) : "memory");  // this thread's copies of stage it
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");      // cp.async writes -> tensor-core reads
      __syncthreads();
      issue(s_begin + it + S - 2, (it + S - 2) % S);
      dequant_stage(slot, a);
      mma_stage(slot, a);
      wgmma_wait<1>();
      ++it;
    };
    const int n_iters = s_end - s_begin;
    while (it + 1 < n_iters) {
      step(a0);
      step(a1);
    }
    if (it < n_iters) step(a0);
    wgmma_wait<0>();
    fence_acc(acc);
    asm volatile("cp.async.wait_group 0;" ::: "memory");

    // acc[4 i + q] = out^T[channel 16 nt + g + 8 (q >> 1)][row m0 + 8 i + 2 t + (q & 1)].
    const bool valid = nt < n_tiles;
    auto for_each = [&](auto&& f) {
      if (!valid) return;
#pragma unroll
      for (int i = 0; i < NA; ++i) {
        const int m = m0 + 8 * (i >> 2) + 2 * t + (i & 1);
        if (m < M) f(acc[i], m, 16 * nt + g + 8 * ((i >> 1) & 1));
      }
    };
    if (parts > 1) {
      // The block that arrives last for this output tile takes the sum and leaves zeros behind.
      // The workspace is used transposed here, ws[n, m]: a thread's (m, m + 1) pairs are adjacent,
      // so they go as one 8-byte atomic (half the atomic operations of the L2, the split's cost).
      if (valid) {
#pragma unroll
        for (int i = 0; i < NA; i += 2) {
          const int m = m0 + 8 * (i >> 2) + 2 * t, n = 16 * nt + g + 8 * ((i >> 1) & 1);
          float* p = ws + static_cast<int64_t>(n) * M + m;
          if (m + 1 < M && (M & 1) == 0)
            atomicAdd(reinterpret_cast<float2*>(p), make_float2(acc[i], acc[i + 1]));
          else if (m < M) {
            atomicAdd(p, acc[i]);
            if (m + 1 < M) atomicAdd(p + 1, acc[i + 1]);
          }
        }
      }
      __threadfence();
      __syncthreads();
      if (tid == 0) {
        int* counter = reinterpret_cast<int*>(ws + static_cast<int64_t>(M) * N) + tile;
        const int prev = atomicAdd(counter, 1);
        s_last = prev == parts - 1;
        if (s_last) *counter = 0;
      }
      __syncthreads();
      if (!s_last) return;
      __threadfence();
      for_each([&](float& v, int m, int n) {
        float* p = ws + static_cast<int64_t>(n) * M + m;
        v = __ldcg(p);
        __stcg(p, 0.0f);
      });
    }
    for_each([&](float& v, int m, int n) {
      const float b = bias != nullptr ? ActTraits<T>::to_float(bias[n]) : 0.0f;
      out[static_cast<int64_t>(m) * N + n] = ActTraits<T>::from_float(v + b);
    });
  };

  if constexpr (!STREAM_K) {
    run_tile(blockIdx.x, 0, NS, 1);  // the grid is the tiles
  } else {
    // Stream-K: the (output tile, stage) items in tile-major order, an equal contiguous share per block
    // (every SM busy whatever the tile count); a share may cross tiles, and a tile cut between blocks
    // sums its parts through the workspace. owner(i) = the block whose share holds item i.
    const int64_t n_items = static_cast<int64_t>((n_tiles + 4 * NWG - 1) / (4 * NWG)) * m_blocks * NS;
    const int64_t G = gridDim.x;
    auto owner = [&](int64_t i) { return ((i + 1) * G - 1) / n_items; };
    const int64_t my_end = (blockIdx.x + 1) * n_items / G;
    for (int64_t pos = blockIdx.x * n_items / G; pos < my_end;) {
      const int tile = static_cast<int>(pos / NS);
      const int s_begin = static_cast<int>(pos - static_cast<int64_t>(tile) * NS);
      const int64_t left = my_end - static_cast<int64_t>(tile) * NS;  // the share's items from the tile's start
      const int s_end = left < NS ? static_cast<int>(left) : NS;
      pos = static_cast<int64_t>(tile) * NS + s_end;
      run_tile(tile, s_begin, s_end,
               static_cast<int>(owner(static_cast<int64_t>(tile + 1) * NS - 1) - owner(static_cast<int64_t>(tile) * NS)) + 1);
    }
  }
#endif
}

// The bounded list of tile shapes: BN activation rows per block (the wgmma's N), NWG warpgroups
// (64 output channels each), S pipeline stages. kConfigs[i] is config id i.
struct WgmmaConfig {
  int bn, nwg, s;
};
constexpr WgmmaConfig kConfigs[] = {{64, 4, 6}, {128, 4, 4}, {32, 4, 8}};
constexpr int kNumConfigs = sizeof(kConfigs) / sizeof(kConfigs[0]);

// The config by m and layer shape, from `gpu_gemm.py --wgmma` on an H100 (benchmarks/NOTES_gpu.md,
// 09:01 run): 64-row tiles up to 64 rows and, beyond, on layers under 2^27 weights (4096x14336
// m=128: 58.5 us against 90.8 with 128-row tiles), except past 128 rows on layers wider than deep
// (4096x14336 m=256: 79.2 against 120.3); 128-row tiles on the largest layers (8192x28672 m=128:
// 151.8 against 220.2 us). Measured and dropped: 256-row tiles (2 warpgroups; slower everywhere),
// 2-warpgroup 64-row tiles, and bulk copies (cp.async.bulk on an mbarrier) instead of cp.async
// (8192x28672 m=64: 138.8 against 110.9 us; m=128: 168.0 against 151.8).
int auto_config(int M, int N, int K) {
  const bool large = static_cast<int64_t>(N) * K >= (int64_t{1} << 27);
  if (M <= 32) return 2;
  if (M <= 64) return 0;
  if (M <= 128) return large ? 1 : 0;
  return large || N > K ? 1 : 0;
}

template <int BITS, typename T, int BN, int NWG, int S>
cudaError_t launch_wgmma(const void* x, int64_t ldx, void* xp, const int32_t* qweight, const uint32_t* scales,
                         const uint32_t* zeros, const int32_t* kgroup, int group_size, const void* bias, void* out,
                         int M, int N, int K, int num_sms, const SplitK& split, cudaStream_t stream) {
  constexpr int kSmem = wgmma_smem_bytes<BITS, BN, NWG, S>();
  constexpr int kThreads = NWG * 128;
  constexpr int kMinStages = 4, kMaxKs = 16;
  constexpr double kOverhead = 3.0;  // pipeline fill and epilogue, in stages (a guess)
  constexpr double kSplitGain = 0.85;  // a split must model 15% faster: its atomics load the L2
  auto kernel = wxa16_gemm_wgmma_kernel<BITS, T, BN, NWG, S, false>;
  auto kernel_sk = wxa16_gemm_wgmma_kernel<BITS, T, BN, NWG, S, true>;
  // Not a stream operation (legal while capturing a graph); per device, so set it every launch.
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err == cudaSuccess) err = cudaFuncSetAttribute(kernel_sk, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  static int blocks_per_sm = 0;  // occupancy calculator, once
  if (blocks_per_sm == 0) {
    int b = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, kernel_sk, kThreads, kSmem);
    if (err != cudaSuccess) return err;
    blocks_per_sm = b > 0 ? b : 1;
  }
  const int n_blocks = (N / 16 + 4 * NWG - 1) / (4 * NWG), m_blocks = (M + BN - 1) / BN;
  const int stages = K / kStageCols;
  const int64_t tiles = static_cast<int64_t>(n_blocks) * m_blocks, items = tiles * stages;
  const int64_t slots = static_cast<int64_t>(blocks_per_sm) * num_sms;
  const bool have_ws = split.ws != nullptr && split.ws_numel >= wxa16_gemm_workspace_floats(M, N);
  if (split.ksplit > 1 && !have_ws) return cudaErrorInvalidValue;
  // Split of K over blocks: the one with the least modelled time, waves x (stages per block +
  // kOverhead), at least kMinStages stages per block, and kSplitGain better than fewer blocks.
  int ks = 1;
  if (split.ksplit > 0) {
    ks = split.ksplit < stages ? split.ksplit : stages;
  } else if (have_ws) {
    double best = -1.0;
    for (int k = 1; k <= kMaxKs && k * kMinStages <= stages; ++k) {
      const int64_t blocks = tiles * k;
      const double waves = static_cast<double>((blocks + slots - 1) / slots);
      const double time = waves * (static_cast<double>(stages) / k + kOverhead);
      if (best < 0 || time < best * kSplitGain) {
        best = time;
        ks = k;
      }
    }
  }
  // When K is split, stream-K shares the stages out over one wave of the machine (forced: tiles x
  // ks blocks), so the last wave is not partial (09:27 run, 28672x8192 m=64: 110 against 121 us
  // with 4 blocks a tile). Without a split, one block per tile: there stream-K measured slower (its
  // fp32 atomics on the cut tiles; 8192x28672 m=64: 125 against 112 us with 112 tiles).
  int64_t grid = tiles;
  if (split.ksplit > 1)
    grid = tiles * ks;
  else if (ks > 1)
    grid = std::max(std::min(slots, items / kMinStages), std::min(tiles, slots));
  {
    const int64_t units = static_cast<int64_t>(m_blocks) * BN * (K / 8);
    const int blocks = static_cast<int>(units / 256 + 1 < 8L * num_sms ? units / 256 + 1 : 8L * num_sms);
    const cudaError_t err = launch_kernel(wxa16_tile_x_kernel<BITS>, dim3(blocks), dim3(256), 0, stream,
                                          static_cast<const uint32_t*>(x), ldx / 2, static_cast<uint4*>(xp), M, K, BN);
    if (err != cudaSuccess) return err;
  }
  return launch_kernel(ks > 1 ? kernel_sk : kernel, dim3(static_cast<unsigned>(grid)), dim3(kThreads), kSmem, stream,
                       static_cast<const T*>(xp), reinterpret_cast<const uint4*>(qweight), scales, zeros, kgroup,
                       group_size, static_cast<const T*>(bias), static_cast<T*>(out), split.ws, M, N, K,
                       pdl_prefetch_chunks(grid, num_sms));
}

template <int BITS, typename T>
cudaError_t dispatch_config(int config, const void* x, int64_t ldx, void* xp, const int32_t* qweight,
                            const uint32_t* scales, const uint32_t* zeros, const int32_t* kgroup, int group_size,
                            const void* bias, void* out, int M, int N, int K, int num_sms, const SplitK& split,
                            cudaStream_t stream) {
#define QK_CONFIG(I)                                                                                        \
  case I:                                                                                                   \
    return launch_wgmma<BITS, T, kConfigs[I].bn, kConfigs[I].nwg, kConfigs[I].s>(                            \
        x, ldx, xp, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, split, stream);
  switch (config < 0 ? auto_config(M, N, K) : config) {
    QK_CONFIG(0)
    QK_CONFIG(1)
    QK_CONFIG(2)
    default:
      return cudaErrorInvalidValue;
  }
#undef QK_CONFIG
}
static_assert(kNumConfigs == 3, "dispatch_config lists every config");

}  // namespace

bool wxa16_gemm_wgmma_available() {
  int built = 0;
  if (cudaMemcpyFromSymbol(&built, g_wgmma_built, sizeof(int)) != cudaSuccess) {
    (void)cudaGetLastError();  // no image of this file for the device: not available
    return false;
  }
  return built == 1;
}

int wxa16_gemm_wgmma_num_configs() { return kNumConfigs; }

cudaError_t wxa16_gemm_wgmma(const void* x, int64_t ldx, void* xp, const int32_t* qweight, const uint32_t* scales,
                             const uint32_t* zeros, const int32_t* kgroup, int group_size, const void* bias, void* out,
                             int M, int N, int K, int bits, ActDtype dtype, int num_sms, int config,
                             const SplitK& split, cudaStream_t stream) {
  if (M <= 0 || N % 16 != 0 || K % kStageCols != 0 || group_size % 16 != 0 || ldx % 2 != 0 ||
      config >= kNumConfigs)
    return cudaErrorInvalidValue;
  if (bits == 4 && dtype == ActDtype::kF16)
    return dispatch_config<4, __half>(config, x, ldx, xp, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, split, stream);
  if (bits == 4 && dtype == ActDtype::kBF16)
    return dispatch_config<4, __nv_bfloat16>(config, x, ldx, xp, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, split, stream);
  if (bits == 8 && dtype == ActDtype::kF16)
    return dispatch_config<8, __half>(config, x, ldx, xp, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, split, stream);
  if (bits == 8 && dtype == ActDtype::kBF16)
    return dispatch_config<8, __nv_bfloat16>(config, x, ldx, xp, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, split, stream);
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace qk
