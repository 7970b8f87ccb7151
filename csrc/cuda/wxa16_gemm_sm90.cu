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
// over all of K. When the layer has too few tiles for the SMs the launcher splits K, whichever way
// its wave model says is faster: over the P blocks of a thread-block cluster (rank r takes 1/P of the
// stages; the parts are summed in distributed shared memory), or, given the caller's self-zeroing
// workspace (wxa16.h), stream-K: one wave of blocks shares the (tile, stage) items out evenly, a
// share may cross tiles, each block but the one holding a cut tile's last stage leaves its part in
// its own slot with plain stores, and that block adds them in block order. Both sum in a fixed order
// (deterministic) and need no atomics. K is consumed in stages of SC = 64 or 128 columns
// (SC / 16 k16 steps; a 4-bit chunk is 64 columns, an 8-bit one 32): the stage's activation tile
// (one contiguous run of the pre-cut tiles) and each lane's 16-byte weight slice, scale and zero of
// each chunk go to shared memory by cp.async, S slots, S - 2 stages ahead. A stage is one or two
// 64-column halves: per half each warp dequantizes its 16 channels into 16 registers and the
// warpgroup issues four async wgmma as one group; the next half's dequantization runs while they
// execute (two register sets, wgmma.wait_group 1). 128-column stages halve the barriers, copies'
// address arithmetic and waits per weight byte with the registers of 64-column ones. Blocks of 4
// warpgroups (256 channels) keep the activation bytes a stage no larger than the weight bytes at
// 64 rows (both come through L2; the 08:51 run with 128-channel blocks was bound by them).
//
// Limits: N % 16 == 0, K % 64 == 0, group size % 16 == 0 (or per-channel), any M >= 1 (rows past M
// are zeros in the tiles and never stored). Built for sm_90a only: other targets compile the kernels
// empty and wxa16_gemm_wgmma_available() reports false, so callers fall back to wxa16_gemm.
// Test: PYTHONPATH=$PWD python -m pytest -q tests/test_cuda_wgmma.py (on an H100);
// benchmark: PYTHONPATH=$PWD python benchmarks/gpu_gemm.py --wgmma.
#include <algorithm>
#include <type_traits>

#include <cooperative_groups.h>

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

__host__ __device__ constexpr int chunk_cols_c(int bits) { return bits == 4 ? 64 : 32; }

// Physical column (within an SC-column stage) of the even logical column 16 j + 2 t + 8 hi: the
// permutation of wxa16.h (a lane's run j holds logical k 2t, 2t+1 at i = 0, 1 and 2t+8, 2t+9 at i =
// 2, 3, at columns (KC/4) t + 4 j' + i of chunk j / (KC/16), j' = j % (KC/16)).
template <int BITS>
__host__ __device__ constexpr int phys_col(int j, int t, int hi) {
  return BITS == 4 ? 64 * (j >> 2) + 16 * t + 4 * (j & 3) + 2 * hi : 32 * (j >> 1) + 8 * t + 4 * (j & 1) + 2 * hi;
}

// x -> the kernel's tiles: xt[mb, s] is the BN x SC activation tile of rows BN mb .. and stage s,
// BN * SC * 2 bytes laid out exactly as the kernel's shared memory wants it (one contiguous run a
// stage): 16-byte unit i is row 8 (i / SC) + i % 8, logical columns 8 u .. 8 u + 7, u = (i / 8) %
// (SC / 8) (the no-swizzle K-major core matrices of smem_desc), and logical column 16 j + p of a
// stage is physical column phys_col(j, p) of x. Rows past M are zeros.
template <int BITS, int SC>
__global__ void wxa16_tile_x_kernel(const uint32_t* __restrict__ x,  // [M, ldx / 2] pairs
                                    int64_t ldx2,                   // row stride of x, in pairs
                                    uint4* __restrict__ xt,         // [ceil(M / BN), K / SC, BN * SC / 8]
                                    int M, int K, int bn) {
  pdl_wait_then_release();  // x may be the previous kernel's output
  const int stages = K / SC;
  const int tile_units = bn * (SC / 8);
  const int64_t units = static_cast<int64_t>((M + bn - 1) / bn) * stages * tile_units;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < units;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int in_tile = static_cast<int>(i % tile_units);
    const int64_t tile = i / tile_units;
    const int s = static_cast<int>(tile % stages);
    const int64_t m = (tile / stages) * bn + (in_tile / SC) * 8 + (in_tile & 7);
    const int u = (in_tile >> 3) % (SC / 8), j = u >> 1, hi = u & 1;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (m < M) {
      const uint32_t* src = x + m * ldx2 + s * (SC / 2);
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

// Most blocks of one cluster that split an output tile's K (the portable cluster size).
constexpr int kMaxClusterParts = 8;

// How the kernel splits K: not (one block a tile), over the blocks of a cluster (parts summed in
// distributed shared memory), or stream-K over one wave (parts summed through the workspace).
enum SplitMode : int { kNoSplit = 0, kClusterSplit = 1, kStreamK = 2 };

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
// k16 step 128 bytes apart (leading byte offset), row groups SC * 16 bytes apart (stride).
template <int SC>
__device__ __forceinline__ uint64_t smem_desc(const void* p) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  constexpr uint64_t lbo = 128 >> 4, sbo = (SC * 16) >> 4;
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

// One k16 step of a BN-row tile. BN = 256 (config 7): two m64n128k16 on the two 128-row halves of
// the B tile, sharing the A registers (one dequantization for both); the second half's accumulators
// are d[64 ..], so the mapping d[4 i + q] -> row 8 i + 2 t + (q & 1) carries on across the halves. A
// half's rows start 16 core matrices (8 rows each, SC * 16 bytes apart) into the tile.
template <bool BF16, int BN, int SC, int NA>
__device__ __forceinline__ void wgmma_step(float (&d)[NA], const uint32_t (&a)[4], uint64_t desc) {
  if constexpr (BN == 256) {
    constexpr uint64_t kHalf = (16 * SC * 16) >> 4;  // in the descriptor's 16-byte address units
    wgmma_rs<BF16>(WgmmaN<128>{}, *reinterpret_cast<float(*)[64]>(&d[0]), a, desc);
    wgmma_rs<BF16>(WgmmaN<128>{}, *reinterpret_cast<float(*)[64]>(&d[64]), a, desc + kHalf);
  } else {
    wgmma_rs<BF16>(WgmmaN<BN>{}, d, a, desc);
  }
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// Group of input column `col` without the table: col >> gshift (gshift from group_shift) or, for a
// group size that is not a power of two, a division (a uniform branch; the division costs ~20
// instructions, a shift one).
__device__ __forceinline__ int group_of(int col, int gsize, int gshift) {
  return gshift >= 0 ? col >> gshift : col / gsize;
}

// Ties the accumulators to the preceding asm (a wait): their reads cannot move above it.
template <int NA>
__device__ __forceinline__ void fence_acc(float (&d)[NA]) {
#pragma unroll
  for (int i = 0; i < NA; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Barrier 1 over the first THREADS threads of the block (the whole block of the plain kernel, the
// consumer warpgroups of the warp-specialized one, whose producers never reach it).
template <int THREADS>
__device__ __forceinline__ void bar_threads() {
  asm volatile("bar.sync 1, %0;" ::"n"(THREADS) : "memory");
}

// A block's runs of output tiles, in the order its threads walk them (producers and consumers of the
// warp-specialized kernel alike): f(tile, s_begin, s_end, parts, first) for stages s_begin ..
// s_end - 1 of `tile`. Without SK the tiles blockIdx.x, + gridDim.x, ..., each over all of K. With SK
// (stream-K) the first `whole` tiles (a multiple of gridDim.x: full waves) go so too, and the rest
// stream-K: the grid is `lanes` lanes (block b in lane b % lanes; gridDim.x a multiple of lanes), and
// the blocks of lane j share out the (tile, stage) items of the rest's tiles j, j + lanes, ... (after
// `whole`) in that order, an equal contiguous share per block (every SM busy). A share may
// cross tiles, and a tile cut between blocks has `parts` owners: blocks first, first + lanes, ..., the
// one holding its last stage. The share's tiles run last first: the last one, cut short, is the one
// whose partial goes to the workspace (its summing block waits for it), the first one the one this
// block may sum. With the lanes the m-blocks of one n-block (tiles n m_blocks + j) share out its
// weights' stages alike, so blocks of the same rank in every lane read the same weights at about the
// same time, once from DRAM, as whole tiles on neighbouring blocks do.
template <bool SK, typename F>
__device__ __forceinline__ void for_each_run(int tiles, int NS, int lanes, int whole, F&& f) {
  if constexpr (!SK) {
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) f(tile, 0, NS, 1, 0);
  } else {
    for (int tile = blockIdx.x; tile < whole; tile += gridDim.x) f(tile, 0, NS, 1, 0);
    const int rest = tiles - whole;
    const int lane = static_cast<int>(blockIdx.x) % lanes, rank = static_cast<int>(blockIdx.x) / lanes;
    const int64_t n_items = static_cast<int64_t>((rest - lane + lanes - 1) / lanes) * NS, G = gridDim.x / lanes;
    auto owner = [&](int64_t i) { return static_cast<int>(((i + 1) * G - 1) / n_items) * lanes + lane; };
    const int64_t my_begin = rank * n_items / G;
    for (int64_t end = (rank + 1) * n_items / G; end > my_begin;) {
      const int u = static_cast<int>((end - 1) / NS);  // the lane's u-th tile
      const int64_t t0 = static_cast<int64_t>(u) * NS;
      const int64_t begin = my_begin > t0 ? my_begin : t0;
      const int first = owner(t0);
      f(whole + u * lanes + lane, static_cast<int>(begin - t0), static_cast<int>(end - t0),
        (owner(t0 + NS - 1) - first) / lanes + 1, first);
      end = begin;
    }
  }
}

// Stream-K, the end of a block's run of a tile cut between blocks (for_each_run): the THREADS
// threads that hold the partial tile (NA accumulators each, thread `tid`) either leave it in the
// block's slot of the workspace `ws` ([gridDim.x][NA THREADS] fp32, then an int counter a tile; plain
// stores in this thread layout) and arrive on the tile's counter (returns false: nothing to store),
// or, in the block holding the tile's last stage (`last`), wait for the other parts, add the slots of
// blocks first, first + lanes, .. below blockIdx.x to acc in block order (the same sum whatever the timing:
// deterministic), zero them and the counter behind them (the workspace stays all zeros between
// launches), and return true: acc is the tile's total. A block waits only for lower-numbered blocks,
// which have their cut tile's part done first (for_each_run's order), and every block of the grid is
// resident (one wave). U slots at a time, QC float4 units of each at a time: all their loads in flight
// before the adds (a tile cut into 8 parts had the summing block wait out 7 round trips to the L2 in a
// row), within the caller's registers.
template <int NA, int THREADS, int U, int QC>
__device__ __forceinline__ bool streamk_sum(float (&acc)[NA], float* ws, int tile, bool last, int first, int lanes,
                                            int tid) {
  constexpr int64_t kSlotFloats = static_cast<int64_t>(NA) * THREADS;
  constexpr int Q = NA / 4;  // float4 units a thread
  static_assert(Q % QC == 0, "whole rounds of units");
  float4* slot0 = reinterpret_cast<float4*>(ws) + tid;  // slot b, unit q: slot0[(b Q + q) THREADS]
  int* counter = reinterpret_cast<int*>(ws + static_cast<int64_t>(gridDim.x) * kSlotFloats) + tile;
  if (!last) {
    float4* mine = slot0 + static_cast<int64_t>(blockIdx.x) * Q * THREADS;
#pragma unroll
    for (int q = 0; q < Q; ++q)
      __stcg(mine + q * THREADS, make_float4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]));
    __threadfence();
    bar_threads<THREADS>();
    if (tid == 0) atomicAdd(counter, 1);
    return false;
  }
  if (tid == 0) {
    const int parts_before = (static_cast<int>(blockIdx.x) - first) / lanes;
    while (*reinterpret_cast<volatile int*>(counter) < parts_before) __nanosleep(64);
    *counter = 0;
  }
  bar_threads<THREADS>();
  __threadfence();
  auto add_slots = [&](int b, auto u_count) {
    constexpr int UU = decltype(u_count)::value;
#pragma unroll
    for (int q0 = 0; q0 < Q; q0 += QC) {
      float4 v[UU][QC];
#pragma unroll
      for (int u = 0; u < UU; ++u)
#pragma unroll
        for (int q = 0; q < QC; ++q)
          v[u][q] = __ldcg(slot0 + (static_cast<int64_t>(b + u * lanes) * Q + q0 + q) * THREADS);
#pragma unroll
      for (int u = 0; u < UU; ++u)
#pragma unroll
        for (int q = 0; q < QC; ++q) {
          __stcg(slot0 + (static_cast<int64_t>(b + u * lanes) * Q + q0 + q) * THREADS,
                 make_float4(0.0f, 0.0f, 0.0f, 0.0f));
          acc[4 * (q0 + q)] += v[u][q].x;
          acc[4 * (q0 + q) + 1] += v[u][q].y;
          acc[4 * (q0 + q) + 2] += v[u][q].z;
          acc[4 * (q0 + q) + 3] += v[u][q].w;
        }
    }
  };
  int b = first;
  for (; b + (U - 1) * lanes < static_cast<int>(blockIdx.x); b += U * lanes)
    add_slots(b, std::integral_constant<int, U>{});
  for (; b < static_cast<int>(blockIdx.x); b += lanes) add_slots(b, std::integral_constant<int, 1>{});
  return true;
}
#endif

// Shared memory of one pipeline stage: [activation tile BN x SC columns][weights, scales, zeros of
// every thread's lane slots].
constexpr int wgmma_stage_bytes(int bits, int bn, int nwg, int sc) {
  return bn * sc * 2 + sc / chunk_cols_c(bits) * nwg * 128 * (16 + 4 + 4);
}

// fp32 values of one block's partial output tile (BN rows x 64 NWG channels): a stream-K slot.
constexpr int64_t wgmma_slot_floats(int bn, int nwg) { return static_cast<int64_t>(bn) * 64 * nwg; }

template <int BITS, typename T, int BN, int NWG, int S, int SC, int SPLIT, bool PLAIN>
__global__ void __launch_bounds__(NWG * 128) wxa16_gemm_wgmma_kernel(
    const T* __restrict__ xt,              // activation tiles (wxa16_tile_x_kernel)
    const uint4* __restrict__ qw,          // [N/16, K/KC, 32] (16 bytes per lane)
    const uint32_t* __restrict__ scales,   // [G, N/16, 8]
    const uint32_t* __restrict__ zeros,    // [G, N/16, 8] or null
    const int32_t* __restrict__ kgroup,    // [K/16] or null
    int gsize,                             // columns per group
    int gshift,                            // group_shift(gsize, K)
    const T* __restrict__ bias,            // [N] or null
    T* __restrict__ out,                   // [M, N]
    float* __restrict__ ws,                // kStreamK: zeros, [grid][BN * 64 NWG] fp32 slots, then an int counter a tile
    int M, int N, int K,
    int pdl_pf) {                          // prefetched chunk slices (pdl_prefetch_chunks)
#ifdef QK_HAVE_WGMMA
  if constexpr (PLAIN) {  // the launcher's promise: no group table, no zeros; their code drops out
    kgroup = nullptr;
    zeros = nullptr;
  }
  constexpr int KC = BITS == 4 ? 64 : 32;
  constexpr int CPS = SC / KC;     // chunks per stage
  constexpr int RUNS = KC / 16;    // k16 steps per chunk
  constexpr int WPR = BITS == 4 ? 1 : 2;
  constexpr int THREADS = NWG * 128;
  constexpr int XBYTES = BN * SC * 2;
  constexpr int XUNITS = BN * SC / 8;  // 16-byte units of an activation tile
  constexpr int NA = BN / 2;  // accumulators per thread
  static_assert(wgmma_slot_floats(BN, NWG) == static_cast<int64_t>(NA) * THREADS, "a stream-K slot");
  constexpr bool BF16 = std::is_same<T, __nv_bfloat16>::value;

  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* xs = smem;                                       // [S][BN / 8][8 units][8 rows][16 B]
  uint4* wbuf = reinterpret_cast<uint4*>(smem + S * XBYTES);  // [S][CPS][THREADS]
  uint32_t* sbuf = reinterpret_cast<uint32_t*>(wbuf + S * CPS * THREADS);
  uint32_t* zbuf = sbuf + S * CPS * THREADS;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int n_tiles = N >> 4, NC = K / KC;
  const int NS = K / SC, m_blocks = (M + BN - 1) / BN;
  const int g = lane >> 2, t = lane & 3;
  const int lane_col = (lane & 3) * (KC / 4);
  const uint32_t zsym = [] {
    using T2 = typename ActTraits<T>::T2;
    const T z = ActTraits<T>::from_float(static_cast<float>(1 << (BITS - 1)));
    return as_u32(T2{z, z});
  }();

  if constexpr (SPLIT == kNoSplit)  // the warp's 16 channels of the tile the grid gives this block
    prefetch_weights<1>(qw, static_cast<int>(blockIdx.x) / m_blocks * (4 * NWG) + warp, n_tiles, NC, lane, 0, NC,
                        pdl_pf);
  pdl_wait_then_release();  // nothing above read memory

  // Stages s_begin .. s_end - 1 of output tile `tile` (= n-block * m_blocks + m-block), one of `parts`
  // blocks that share the tile: kClusterSplit, rank `first` of the blocks of this cluster; kStreamK,
  // blocks first .. the one holding the tile's last stage.
  auto run_tile = [&](int tile, int s_begin, int s_end, int parts, int first) {
    const int mb = tile % m_blocks;
    const int nt = (tile / m_blocks) * (4 * NWG) + warp;  // this warp's 16 channels
    const int ntc = min(nt, n_tiles - 1);                 // past N: stream the last real tile, store nothing
    const int m0 = mb * BN;
    const int soff = ntc * 8 + (lane >> 2);
    if constexpr (SPLIT == kStreamK) __syncthreads();  // every warp is done with the previous tile's slots

    // Copy stage s into slot `slot`, one cp.async group per call (maybe empty): the activation tile
    // (contiguous in xt, 16-byte unit i to byte 16 i), this lane's 16-byte weight slice of each chunk,
    // and its scale and zero.
    const T* xsrc = xt + static_cast<int64_t>(mb) * NS * (BN * SC);
    const int gstride = n_tiles * 8;                                       // words a group of scales
    const uint32_t* ssrc = scales + soff;
    auto issue = [&](int s, int slot) {
      if (s < s_end) {
        const uint4* xsrc4 = reinterpret_cast<const uint4*>(xsrc + static_cast<int64_t>(s) * (BN * SC));
        uint4* xdst = reinterpret_cast<uint4*>(xs + slot * XBYTES);
#pragma unroll
        for (int r = 0; r < (XUNITS + THREADS - 1) / THREADS; ++r) {  // a fixed count: no loop code
          const int i = tid + r * THREADS;
          if (XUNITS % THREADS == 0 || i < XUNITS) cp_async16(xdst + i, xsrc4 + i);
        }
#pragma unroll
        for (int cc = 0; cc < CPS; ++cc) {
          const int col = (s * CPS + cc) * KC + lane_col;
          const int gi = kgroup != nullptr ? __ldg(kgroup + (col >> 4)) : group_of(col, gsize, gshift);
          const int64_t goff = static_cast<int64_t>(gi) * gstride;
          const int sl = (slot * CPS + cc) * THREADS + tid;
          cp_async16(wbuf + sl, qw + (static_cast<int64_t>(ntc) * NC + s * CPS + cc) * 32 + lane);
          cp_async4(sbuf + sl, ssrc + goff);
          if (zeros != nullptr) cp_async4(zbuf + sl, zeros + soff + goff);
        }
      }
      asm volatile("cp.async.commit_group;" ::: "memory");
    };

    // The A registers of half h of a stage (its 64 columns h * 64 ..; the whole stage when SC = 64):
    // 4 k16 steps x 4 registers, dequantized from the lane's slots.
    auto dequant_half = [&](int slot, int h, uint32_t (&a)[4][4]) {
#pragma unroll
      for (int c = 0; c < 64 / KC; ++c) {
        const int cc = h * (64 / KC) + c;
        const int sl = (slot * CPS + cc) * THREADS + tid;
        const uint4 w = wbuf[sl];
        const DequantConsts dc = make_consts<BITS, T>(sbuf[sl], zeros != nullptr ? zbuf[sl] : zsym);
#pragma unroll
        for (int j = 0; j < RUNS; ++j)
          dequant_run<BITS, T>(reinterpret_cast<const uint32_t*>(&w) + j * WPR, dc, a[c * RUNS + j]);
      }
    };

    float acc[NA];
#pragma unroll
    for (int i = 0; i < NA; ++i) acc[i] = 0.0f;

    // Dequantize half h into `a`, issue its four wgmma as one group, and wait for all but that group:
    // the other register set (the previous half's) is free again when this returns.
    auto mma_half = [&](int slot, int h, uint32_t (&a)[4][4]) {
      dequant_half(slot, h, a);
      // k16 step j starts 256 bytes after step j - 1: 16 in the descriptor's address field (bits
      // 0-13, address / 16; shared memory ends below 2^18 bytes, so the add never carries out of it).
      const uint64_t desc = smem_desc<SC>(xs + slot * XBYTES + h * 4 * 256);
      wgmma_fence();  // the A registers were just written
#pragma unroll
      for (int j = 0; j < 4; ++j) wgmma_rs<BF16>(WgmmaN<BN>{}, acc, a[j], desc + 16 * j);
      wgmma_commit();
      wgmma_wait<1>();
    };

    // Stage s is consumed in iteration s - s_begin; its slot is rewritten (issue, S - 2 ahead) only
    // after every warpgroup's wgmma on it has completed: each waits for all but its latest group at
    // the end of an iteration, and the barrier at the start of the next orders that before the copy.
#pragma unroll
    for (int i = 0; i < S - 2; ++i) issue(s_begin + i, i);
    uint32_t a0[4][4], a1[4][4];  // two register sets: one is read by wgmma while the other is filled
    int it = 0;
    auto begin_stage = [&]() {  // -> the slot of stage it, its copies visible to every thread
      asm volatile("cp.async.wait_group %0;" ::"n"(S - 3) : "memory");  // this thread's copies of stage it
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");      // cp.async writes -> tensor-core reads
      __syncthreads();
      issue(s_begin + it + S - 2, (it + S - 2) % S);
      return it % S;
    };
    const int n_iters = s_end - s_begin;
    static_assert(SC == 64 || SC == 128, "a stage is one or two 64-column halves");
    if constexpr (SC == 128) {
      for (; it < n_iters; ++it) {
        const int slot = begin_stage();
        mma_half(slot, 0, a0);
        mma_half(slot, 1, a1);
      }
    } else {
      for (; it + 1 < n_iters; ++it) {
        mma_half(begin_stage(), 0, a0);
        ++it;
        mma_half(begin_stage(), 0, a1);
      }
      if (it < n_iters) mma_half(begin_stage(), 0, a0);
    }
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
    if constexpr (SPLIT == kClusterSplit) {
      if (parts > 1) {
        // The cluster's parts of the tile are summed through distributed shared memory: each block
        // puts its fp32 part in its own shared memory (this thread layout: unit q of thread u at
        // red[q THREADS + u]; in rounds where the stage slots hold less than the whole part), and
        // after the cluster barrier rank r adds up, over ranks 0 .. parts - 1 in that order
        // (deterministic), its 1/parts of the units and stores them. No workspace, no atomics; the
        // barrier after keeps every block's shared memory alive until all have read it.
        namespace cg = cooperative_groups;
        const cg::cluster_group cluster = cg::this_cluster();
        const int rank = first;
        constexpr int Q = NA / 4;  // float4 units of a thread's part
        constexpr int QR = std::min(Q, S * wgmma_stage_bytes(BITS, BN, NWG, SC) / (16 * THREADS));  // units a round
        static_assert(QR >= 1, "a round holds one unit of every thread");
        float4* red = reinterpret_cast<float4*>(smem);
        __syncthreads();  // every warpgroup's wgmma is done with the stage slots, which red overlays
#pragma unroll
        for (int q0 = 0; q0 < Q; q0 += QR) {
          if (q0 > 0) cluster.sync();  // every block has read the previous round
#pragma unroll
          for (int q = q0; q < q0 + QR && q < Q; ++q)
            red[(q - q0) * THREADS + tid] = make_float4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]);
          cluster.sync();
          const int units = ((q0 + QR < Q ? q0 + QR : Q) - q0) * THREADS;
          const int e_end = (rank + 1) * units / parts;
          for (int e = rank * units / parts + tid; e < e_end; e += THREADS) {
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
            for (int j = 0; j < kMaxClusterParts; ++j) {
              if (j < parts) {
                const float4 w = *cluster.map_shared_rank(red + e, j);
                v.x += w.x;
                v.y += w.y;
                v.z += w.z;
                v.w += w.w;
              }
            }
            // unit e = (q - q0) THREADS + u: acc[4 q .. 4 q + 3] of thread u (warp u / 32, lane u % 32)
            const int q = q0 + e / THREADS, u = e % THREADS, lu = u & 31;
            const int ntu = (tile / m_blocks) * (4 * NWG) + u / 32;
            if (ntu < n_tiles) {
              const float vals[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
              for (int i = 0; i < 4; ++i) {
                const int m = m0 + 8 * q + 2 * (lu & 3) + (i & 1), n = 16 * ntu + (lu >> 2) + 8 * (i >> 1);
                const float b = bias != nullptr ? ActTraits<T>::to_float(bias[n]) : 0.0f;
                if (m < M) out[static_cast<int64_t>(m) * N + n] = ActTraits<T>::from_float(vals[i] + b);
              }
            }
          }
        }
        cluster.sync();
        return;
      }
    }
    if constexpr (SPLIT == kStreamK) {
      // A tile cut between blocks: parts summed through the workspace by the block holding its last
      // stage; all of a slot's units at once, kU slots (16 float4 registers at most).
      constexpr int kU = NA <= 16 ? 4 : NA <= 32 ? 2 : 1;
      if (parts > 1 && !streamk_sum<NA, THREADS, kU, NA / 4>(acc, ws, tile, s_end == NS, first, 1, tid)) return;
    }
    for_each([&](float& v, int m, int n) {
      const float b = bias != nullptr ? ActTraits<T>::to_float(bias[n]) : 0.0f;
      out[static_cast<int64_t>(m) * N + n] = ActTraits<T>::from_float(v + b);
    });
  };

  if constexpr (SPLIT == kNoSplit) {
    run_tile(blockIdx.x, 0, NS, 1, 0);  // the grid is the tiles
  } else if constexpr (SPLIT == kClusterSplit) {
    // A cluster of `parts` blocks per output tile, rank r taking stages r NS / parts ..
    unsigned rank, parts;
    asm("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    asm("mov.u32 %0, %%cluster_nctarank;" : "=r"(parts));
    const int r = static_cast<int>(rank), p = static_cast<int>(parts);
    run_tile(static_cast<int>(blockIdx.x) / p, r * NS / p, (r + 1) * NS / p, p, r);
  } else {
    for_each_run<true>((n_tiles + 4 * NWG - 1) / (4 * NWG) * m_blocks, NS, 1, 0, run_tile);
  }
#endif
}

#ifdef QK_HAVE_WGMMA
// mbarrier and bulk-copy helpers of the warp-specialized kernel below (shared::cta addresses).
__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
// Returns once the phase of parity `parity` of *bar has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n\t.reg .pred p;\n\tLAB_WAIT:\n\t"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n\t"
      "@p bra DONE;\n\tbra LAB_WAIT;\n\tDONE:\n\t}" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}
// `bytes` (a multiple of 16) from global src to shared dst (both 16-byte aligned), completing as
// transaction bytes on *bar.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}
#endif

// Shared memory of one stage slot of the warp-specialized kernel: the activation tile (BN x SC), the
// weights of the block's 16 NWG / 4 n-tiles (their SC columns: one contiguous run of the global
// layout each), and the scales and zeros of up to SC / 32 groups of those n-tiles.
constexpr int ws_groups_max(int sc) { return sc / 32; }
constexpr int ws_slot_bytes(int bits, int bn, int nwg, int sc) {
  return bn * sc * 2 + 4 * nwg * (sc / chunk_cols_c(bits)) * 512 + 2 * ws_groups_max(sc) * 4 * nwg * 32;
}
constexpr int kWsBarBytes = 16;  // a slot's two mbarriers (full, empty), after all the slots

// The large-m GEMM with warp specialization: NWG consumer warpgroups (64 output channels each, as in
// wxa16_gemm_wgmma_kernel; four of 128 rows, config 6, or two of 256, config 7, whose wgmma steps are two
// m64n128k16 on one set of dequantized registers) and a producer warpgroup, PW warps of which copy. The
// producers stream every stage of the block's tiles into S slots by bulk copies (cp.async.bulk, completing
// on the slot's `full` mbarrier), and reuse a slot once every consumer thread has arrived on its `empty`
// mbarrier; the consumers wait on `full`, dequantize from shared memory and issue wgmma as the other
// kernel does, and each releases a slot once its reads of it are done and its warpgroup's wgmma on it have
// completed. Every thread arrives (fourteenth session), not lane 0 of each warp after a __syncwarp:
// compute-sanitizer's racecheck reported the lanes' reads of a slot racing with the producers' next copies
// into it (6 hazards once the slots wrap: lane 0's arrive does not order the other lanes' reads for it),
// and the 07:21 run measured it faster in 18 of 24 cells, at most 2.2% slower in 4 (8192x28672 m=1024:
// 700.4-718.9 against 775.0-787.5 us). No block barrier in the loop, no copy address arithmetic in the
// consumers (about a fifth of their instructions in the other kernel), and the block is persistent: the
// producers fill the next tile's stages while the consumers store the last one. Needs: no group table, a
// power-of-two group size of at least 32 (or one group: per-channel), K % SC == 0; the dispatcher sends
// other layers to the other kernel. One tile a block at a time, or (SK, given the workspace) stream-K: the
// stages of all tiles shared out equally (for_each_run), a cut tile's parts summed through the workspace
// (streamk_sum). On an H100 (thirteenth session, 2026-11-24 05:08 run), four producer warps against one:
// 8192x28672 m=1024 745.5-746.0 against 812.3-866.8 us, 8192x8192 m=1024 204.8-219.9 against 243.6-245.1.
// Also measured and dropped there: 8 slots of 64 columns (8192x28672 m=1024 1088.1 against 755.0 us), and
// the weights, scales and zeros through 2-D TMA tensor maps (4 copies a stage instead of 19-20: within 2%
// on average, inside the run-to-run spread).
//
// Threads and registers a thread after setmaxnreg, by consumer warpgroups: NWG of them and a producer
// one. The block's pool is what it was launched with (ptxas's limit for the block's threads: 96 for
// 640, 168 for 384), and setmaxnreg.inc waits until the pool has the registers: the producer warpgroup
// gives up exactly what the consumers take (128 x 32 + 512 x 112 = 640 x 96; 128 x 40 + 256 x 232 =
// 384 x 168). Two consumer warpgroups (config 7) hold 256-row tiles: 128 accumulators a thread.
constexpr int ws_threads(int nwg) { return 128 * (nwg + 1); }
constexpr int ws_launch_regs(int nwg) { return nwg == 4 ? 96 : 168; }
constexpr int ws_producer_regs(int nwg) { return nwg == 4 ? 32 : 40; }
constexpr int ws_consumer_regs(int nwg) { return nwg == 4 ? 112 : 232; }
constexpr bool ws_pool_ok(int nwg) {
  return 128 * ws_producer_regs(nwg) + 128 * nwg * ws_consumer_regs(nwg) <= ws_threads(nwg) * ws_launch_regs(nwg) &&
         ws_launch_regs(nwg) * ws_threads(nwg) <= 65536;
}
static_assert(ws_pool_ok(4) && ws_pool_ok(2), "the block's pool");

template <int BITS, typename T, int BN, int NWG, int S, int SC, int PW, bool SK>
__global__ void __launch_bounds__(ws_threads(NWG), 1) wxa16_gemm_wgmma_ws_kernel(
    const T* __restrict__ xt,              // activation tiles (wxa16_tile_x_kernel)
    const uint4* __restrict__ qw,          // [N/16, K/KC, 32] (16 bytes per lane)
    const uint32_t* __restrict__ scales,   // [G, N/16, 8]
    const uint32_t* __restrict__ zeros,    // [G, N/16, 8] or null
    int gshift,                            // log2(group size), or 30: one group
    const T* __restrict__ bias,            // [N] or null
    T* __restrict__ out,                   // [M, N]
    float* __restrict__ ws,                // SK: zeros, [grid][BN * 64 NWG] fp32 slots, then an int counter a tile
    int whole,                             // SK: tiles run whole first (full waves; for_each_run)
    int M, int N, int K) {
#ifdef QK_HAVE_WGMMA
  constexpr int KC = BITS == 4 ? 64 : 32;
  constexpr int CPS = SC / KC;     // chunks per stage
  constexpr int RUNS = KC / 16;    // k16 steps per chunk
  constexpr int WPR = BITS == 4 ? 1 : 2;
  constexpr int NT = 4 * NWG;      // n-tiles (16 channels) a block: one a consumer warp
  constexpr int GMAX = ws_groups_max(SC);
  constexpr int XBYTES = BN * SC * 2;
  constexpr int WBYTES = NT * CPS * 512;
  constexpr int SLOT = ws_slot_bytes(BITS, BN, NWG, SC);
  constexpr int NA = BN / 2;
  constexpr bool BF16 = std::is_same<T, __nv_bfloat16>::value;
  // The output tile (BN rows x 64 NWG channels) leaves through a slot's activation tile, 128 channels
  // (rows of 256 bytes) a round: config 7 in one round, config 6 in two. Needs `out` 16-byte aligned,
  // which the launcher checks.
  constexpr int kRounds = 64 * NWG / 128;
  static_assert(BN * 128 * 2 <= XBYTES && 64 * NWG % 128 == 0, "a round of the output fits a slot's activation tile");
  static_assert(SC == 64 || SC == 128, "a stage is one or two 64-column halves");
  static_assert(SLOT % 128 == 0, "slots keep the activation tiles 128-byte aligned");
  static_assert(NWG == 4 || NWG == 2, "the register split of ws_consumer_regs");

  extern __shared__ __align__(128) uint8_t smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + S * SLOT);
  uint64_t* empty = full + S;
  auto xs_of = [&](int slot) { return smem + slot * SLOT; };
  auto wb_of = [&](int slot) { return reinterpret_cast<uint4*>(smem + slot * SLOT + XBYTES); };
  auto sb_of = [&](int slot) { return reinterpret_cast<uint32_t*>(smem + slot * SLOT + XBYTES + WBYTES); };
  auto zb_of = [&](int slot) { return sb_of(slot) + GMAX * NT * 8; };

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int n_tiles = N >> 4, NC = K / KC, NS = K / SC;
  const int m_blocks = (M + BN - 1) / BN;
  const int tiles = (n_tiles + NT - 1) / NT * m_blocks;
  // Groups a stage spans, and the first: one group when it is at least SC columns.
  const int gps = gshift >= 7 ? 1 : SC >> gshift;

  if (tid == 0) {
    for (int i = 0; i < S; ++i) {
      mbar_init(full + i, 1);
      mbar_init(empty + i, 4 * NWG * 32);  // every consumer thread arrives
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  pdl_wait_then_release();

  if (warp >= 4 * NWG) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(ws_producer_regs(NWG)));
    const int pw = warp - 4 * NWG;
    if (pw >= PW) return;
    // The producer warps. A stage's copies are items: n-tile i's weights (i < NT), the activation
    // tile (NT), the scales of each group, then the zeros of each; item i goes to lane i / PW of
    // producer warp i % PW. A warp issues its lanes' bulk copies one after the other (their
    // addresses go through uniform registers), so more warps shorten a stage's issue. A copy may
    // complete before the first warp's arrive.expect_tx: the transaction count goes below zero and
    // the phase still cannot complete before that arrival.
    const int gstride = n_tiles * 8;  // words a group of scales
    const int item = lane * PW + pw;
    int sg = 0;                       // stages streamed so far, over all of this block's runs
    for_each_run<SK>(tiles, NS, m_blocks, whole, [&](int tile, int s_begin, int s_end, int, int) {
      const int mb = tile % m_blocks, nb = tile / m_blocks;
      const int valid = min(NT, n_tiles - nb * NT);
      const uint32_t bytes = WBYTES + XBYTES + gps * valid * 32 * (zeros != nullptr ? 2 : 1);
      const T* xsrc = xt + static_cast<int64_t>(mb) * NS * (BN * SC);
      for (int s = s_begin; s < s_end; ++s, ++sg) {
        const int slot = sg % S;
        if (sg >= S) mbar_wait(empty + slot, ((sg / S) - 1) & 1);
        if (item == 0) mbar_arrive_expect_tx(full + slot, bytes);
        const int g0 = (s * SC) >> gshift;
        if (item < NT) {
          const int nt = min(nb * NT + item, n_tiles - 1);  // past N: a real tile, never stored
          bulk_copy(wb_of(slot) + item * CPS * 32, qw + (static_cast<int64_t>(nt) * NC + s * CPS) * 32, CPS * 512,
                    full + slot);
        } else if (item == NT) {
          bulk_copy(xs_of(slot), xsrc + static_cast<int64_t>(s) * (BN * SC), XBYTES, full + slot);
        } else if (item - NT - 1 < gps) {
          const int gi = item - NT - 1;
          bulk_copy(sb_of(slot) + gi * NT * 8, scales + static_cast<int64_t>(g0 + gi) * gstride + nb * NT * 8,
                    valid * 32, full + slot);
        } else if (zeros != nullptr && item - NT - 1 - gps < gps) {
          const int gi = item - NT - 1 - gps;
          bulk_copy(zb_of(slot) + gi * NT * 8, zeros + static_cast<int64_t>(g0 + gi) * gstride + nb * NT * 8,
                    valid * 32, full + slot);
        }
      }
    });
    return;
  }

  // Consumers: warp w dequantizes n-tile w of the block (16 channels) into wgmma's A registers.
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(ws_consumer_regs(NWG)));
  const int g = lane >> 2, t = lane & 3;
  const int lane_col = t * (KC / 4);
  const uint32_t zsym = [] {
    using T2 = typename ActTraits<T>::T2;
    const T z = ActTraits<T>::from_float(static_cast<float>(1 << (BITS - 1)));
    return as_u32(T2{z, z});
  }();
  // A stage is NG wgmma groups of KG k16 steps each; a group's A registers are dequantized while the
  // previous group's wgmma run (two register sets). Groups of two steps keep the two sets at 16
  // registers: with four (as the other kernel), ptxas serializes the wgmma at 120 registers (C7512).
  constexpr int KG = 2, NG = SC / 16 / KG;
  auto dequant_group = [&](int slot, int s, int q, uint32_t (&a)[KG][4]) {
    const int g0 = (s * SC) >> gshift;
#pragma unroll
    for (int r = 0; r < KG; ++r) {
      const int j = q * KG + r, cc = j / RUNS;  // k16 step j of the stage: run j % RUNS of chunk cc
      const uint4 w = wb_of(slot)[(warp * CPS + cc) * 32 + lane];
      const int lg = ((s * SC + cc * KC + lane_col) >> gshift) - g0;
      const int so = (lg * NT + warp) * 8 + g;
      const DequantConsts dc = make_consts<BITS, T>(sb_of(slot)[so], zeros != nullptr ? zb_of(slot)[so] : zsym);
      dequant_run<BITS, T>(reinterpret_cast<const uint32_t*>(&w) + (j % RUNS) * WPR, dc, a[r]);
    }
  };

  int sg = 0;
  for_each_run<SK>(tiles, NS, m_blocks, whole, [&](int tile, int s_begin, int s_end, int parts, int first) {
    const int mb = tile % m_blocks, nb = tile / m_blocks;
    uint32_t a[2][KG][4];
    float acc[NA];
#pragma unroll
    for (int i = 0; i < NA; ++i) acc[i] = 0.0f;
    int prev = -1;  // the slot whose wgmma may still run (its release waits for them)
    for (int s = s_begin; s < s_end; ++s, ++sg) {
      const int slot = sg % S;
      mbar_wait(full + slot, (sg / S) & 1);
      const uint64_t desc = smem_desc<SC>(xs_of(slot));  // k16 step j: + 16 j (256 bytes a step)
#pragma unroll
      for (int q = 0; q < NG; ++q) {
        dequant_group(slot, s, q, a[q & 1]);
        wgmma_fence();
#pragma unroll
        for (int r = 0; r < KG; ++r) wgmma_step<BF16, BN, SC>(acc, a[q & 1][r], desc + 16 * (q * KG + r));
        wgmma_commit();
        wgmma_wait<1>();  // the previous group has completed: its registers are free again
        if (q == 0 && prev >= 0) mbar_arrive(empty + prev);  // so has the previous stage: its slot is free
      }
      prev = slot;
    }
    wgmma_wait<0>();
    fence_acc(acc);
    // (The last stage's slot is released after the output has left through it, below.)
    // A tile cut between blocks (SK): its parts summed through the workspace by the block holding its
    // last stage, 8 float4 units at a time (within the consumers' registers: 64 or 128 accumulators).
    if constexpr (SK) {
      if (parts > 1 && !streamk_sum<NA, 128 * NWG, 1, 8>(acc, ws, tile, s_end == NS, first, m_blocks, tid)) {
        mbar_arrive(empty + prev);
        return;
      }
    }

    // acc[4 i + q] = out^T[channel 16 nt + g + 8 (q >> 1)][row m0 + 8 i + 2 t + (q & 1)].
    const int nt = nb * NT + warp, m0 = mb * BN;
    {
      // The tile goes out through the activation tile of its last stage's slot (held back from the
      // producers until then), 128 channels a round (config 7 in one, config 6 in two): stmatrix
      // (.trans) writes each warp's 16 channels of every row, then rows are copied out 16 bytes a
      // thread, whole 128-byte lines a warp, instead of 2-byte stores that touch 4 lines each (NA a
      // thread). Rows of 256 bytes; 16-byte segment s of row r at s ^ (r & 7), so that the 8 rows of an
      // 8 x 8 matrix fall in 8 bank groups. On an H100, config 7 (2026-11-24 20:35 run, two rounds,
      // configs 6 / 7 at 512-4096 rows on six layers) went from 0.97 of config 6's time (geometric mean,
      // 19:55-20:03 runs) to 0.93: 8192x28672 m=2048 1365.5 / 1392.5 us against 1424.5-1502.8 before;
      // config 6 at 384 rows (21:06 run against 20:46's two rounds): 8192x28672 272.0 against 298.9 /
      // 301.6 us, 4096x14336 86.0 against 93.4 / 94.5, 8192x8192 91.9 against 97.1 / 96.1, 28672x8192
      // 294.8 against 289.9 / 296.5.
      uint8_t* st = xs_of(prev);
      bar_threads<128 * NWG>();  // every warpgroup's wgmma on the slot have completed
      const float b0 = bias != nullptr && nt < n_tiles ? ActTraits<T>::to_float(bias[16 * nt + g]) : 0.0f;
      const float b1 = bias != nullptr && nt < n_tiles ? ActTraits<T>::to_float(bias[16 * nt + g + 8]) : 0.0f;
      using T2 = typename ActTraits<T>::T2;
      auto pack = [](float lo, float hi) {
        return as_u32(T2{ActTraits<T>::from_float(lo), ActTraits<T>::from_float(hi)});
      };
      const int mk = lane >> 3, mr = lane & 7;  // the matrix and row this lane addresses
#pragma unroll
      for (int r = 0; r < kRounds; ++r) {  // round r: the channels of warps 8 r .. 8 r + 7
        if (r > 0) bar_threads<128 * NWG>();  // the previous round is copied out
        if ((warp >> 3) == r) {
#pragma unroll
          for (int b = 0; b < NA / 4; b += 2) {  // blocks b, b + 1 of 8 rows: four 8 x 8 matrices
            const uint32_t r0 = pack(acc[4 * b] + b0, acc[4 * b + 1] + b0);
            const uint32_t r1 = pack(acc[4 * b + 2] + b1, acc[4 * b + 3] + b1);
            const uint32_t r2 = pack(acc[4 * b + 4] + b0, acc[4 * b + 5] + b0);
            const uint32_t r3 = pack(acc[4 * b + 6] + b1, acc[4 * b + 7] + b1);
            const int row = 8 * (b + (mk >> 1)) + mr, seg = 2 * (warp & 7) + (mk & 1);
            asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(
                             smem_addr(st + row * 256 + 16 * (seg ^ (row & 7)))),
                         "r"(r0), "r"(r1), "r"(r2), "r"(r3)
                         : "memory");
          }
        }
        bar_threads<128 * NWG>();
#pragma unroll 2
        for (int e = tid; e < BN * 16; e += 128 * NWG) {
          const int row = e >> 4, seg = e & 15;
          const int m = m0 + row, n = nb * 64 * NWG + 128 * r + 8 * seg;
          if (m < M && n < N)
            *reinterpret_cast<uint4*>(out + static_cast<int64_t>(m) * N + n) =
                *reinterpret_cast<const uint4*>(st + row * 256 + 16 * (seg ^ (row & 7)));
        }
      }
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // before the producers' bulk copies into it
      mbar_arrive(empty + prev);
    }
  });
#endif
}

// The bounded list of tile shapes: BN activation rows per block (the wgmma's N), NWG warpgroups
// (64 output channels each), S pipeline stages (at most: fewer where S stages of 8-bit weights would
// not fit), SC input columns a stage, and whether the config is the warp-specialized kernel
// (wxa16_gemm_wgmma_ws_kernel, with `pw` producer warps). kConfigs[i] is config id i; a config whose
// SC does not divide K runs as its 64-column twin (same BN and NWG), and the warp-specialized one, on
// a layer it does not serve (ws_serves), as config 5.
struct WgmmaConfig {
  int bn, nwg, s, sc;
  bool ws = false;
  int pw = 1;  // the warp-specialized kernel's producer warps
};
constexpr WgmmaConfig kConfigs[] = {{64, 4, 6, 64},  {128, 4, 4, 64},  {32, 4, 8, 64},
                                    {64, 4, 5, 128}, {32, 4, 6, 128}, {128, 4, 4, 128},
                                    {128, 4, 4, 128, true, 4}, {256, 2, 3, 128, true, 4}};
constexpr int kNumConfigs = sizeof(kConfigs) / sizeof(kConfigs[0]);
constexpr int kWsConfig = 6;    // the warp-specialized kernel: 256 channels x 128 rows
constexpr int kWsWideConfig = 7;  // and 128 channels x 256 rows (half the dequantization a flop)
constexpr int twin64(int c) { return c == 3 ? 0 : c == 4 ? 2 : c == 5 ? 1 : c; }
constexpr int kSmemBudget = 224 * 1024;  // of the 227 KB a block may have on sm_90
// Whether three stages of config c fit the budget with BITS-bit weights (128-row, 128-column stages
// of 8-bit weights do not: that config runs as its twin).
constexpr bool fits(int bits, const WgmmaConfig& c) {
  return 3 * wgmma_stage_bytes(bits, c.bn, c.nwg, c.sc) <= kSmemBudget;
}
// Whether three slots of warp-specialized config c (and their two mbarriers each) fit with BITS-bit
// weights (config 7's 256-row slots of 8-bit weights do not: it runs as config 6).
constexpr bool ws_fits(int bits, const WgmmaConfig& c) {
  return 3 * (ws_slot_bytes(bits, c.bn, c.nwg, c.sc) + kWsBarBytes) <= kSmemBudget;
}

// The config by m and layer shape, from `gpu_gemm.py --wgmma` on an H100 (benchmarks/NOTES_gpu.md, 21:21 run
// of 2026-11-23, configs 0-5, and the twelfth session's 02:53 run): 32-row tiles up to 32 rows; 64-row tiles
// up to 64 rows and, up to 128, on layers under 2^27 weights (14336x4096 m=128: 60.1 against 67.7 with
// 128-row tiles); 128-row tiles beyond, on the largest layers from 65 rows (8192x28672 m=128: 125.9 against
// 168.5) and on those at least as wide as deep from 129 (4096x14336 m=256: 64.0 against 82.1), and on all
// from 257 (21:34 run). Since the split of K over a cluster or stream-K (eleventh session), 64-row tiles also
// serve 33-64 rows of the layers wider than deep under 2^27 weights, which took 32-row tiles before
// (4096x14336 m=64: 25.0 against 31.4 us, m=48: 24.9 against 31.0; 02:53 run), and square layers take 128-row
// tiles from 129 rows (8192x8192 m=256: 67.8-70.4 against 77.3-80.0 us in the 02:45 and 02:50 runs;
// 14336x4096 stays at 64-row tiles: 70.9 against 78.5, 02:41 run). 128-column stages in all (8192x28672 m=64:
// 82.5 against 89.1 us with 64-column ones, 21:16 run). Measured and dropped here: 256-row tiles (2
// warpgroups, no warp specialization; slower everywhere at m <= 256), 2-warpgroup 64-row tiles, bulk
// copies (cp.async.bulk on an mbarrier) instead of cp.async (8192x28672 m=64: 138.8 against 110.9 us;
// m=128: 168.0 against 151.8, 09:01 run), 128-row tiles of 8 stages of 64 columns (8192x28672 m=256: 263.6
// against 235.8 us for config 5; twelfth session, 02:41 run).
//
// From 65 rows, where its 128 x 256 tiles give the GPU at least three quarters of a wave, the
// warp-specialized kernel (config 6). Thirteenth session, 2026-11-24 04:53 run (m = 128-2048 on the
// six layers, config 6 then with one producer warp): 8192x28672 m=1024 757.7 against 908.8 us for
// config 5, m=256 214.0 against 238.3; 4096x14336 m=256 (112 tiles) 60.0 against 63.8; 8192x8192
// m=512 (128 tiles) 117.4 against 126.6. With fewer tiles it loses to config 5's split of K
// (8192x8192 m=256, 64 tiles: 102.0 against 67.0). 05:30 run, four producer warps: 8192x28672 m=96
// 99.9 against 113.5 (config 5), m=128 109.9 against 129.8; at 64 rows the 64-row tiles stay
// (8192x28672: 75.7 against 88.0), and a warp-specialized kernel of 64-row tiles lost to them (90.3).
// Fourteenth session (2026-11-24 07:02 and 07:08 runs, configs 5 / 6 whole tiles / 6 stream-K, m =
// 128-1024, six layers): given the workspace, also from 128 rows on the deep layers (K >= 12288) with
// fewer tiles, in stream-K (the launcher's model): 28672x8192 m=128 (32 tiles) 115.9-116.4 against
// 133.8-135.0 us, m=256 196.8-202.3 against 239.5-245.0; 14336x4096 m=256 68.5-69.5 against 70.1-72.1,
// m=512 110.1-111.9 against 119.6-122.0. Not with 16 tiles (14336x4096 m=128: 56.0-57.4 against 42.1 for
// config 5), nor on K = 4096 or 8192 (4096x4096 m=256: 36.6 against 28.4-29.7; 8192x8192 m=256: 68.5-69.5
// against 65.9-67.2).
//
// Config 7 (128 channels x 256 rows: half config 6's dequantization a flop) where its tiles pad M by no more
// than 10% over 128-row ones (129-256 rows, 385-512, 641-768, ...) and give the GPU at least three quarters of
// a wave or, given the workspace and K >= 8192, an eighth (stream-K). First from 512 rows on the full-wave
// condition alone; after its stmatrix epilogue also at 129-256 rows and with stream-K (2026-11-24 20:46 run,
// us, fp16, two rounds, config 7 against the route before): 4096x14336 m=256 50.3 / 51.2 against 54.3 / 56.1,
// 14336x4096 m=256 66.4 / 67.0 against 69.5 / 69.7, 8192x28672 m=256 189.4 / 190.0 against 203.3 / 202.8,
// 28672x8192 m=256 195.9 / 201.5 against 202.4 / 207.6, 8192x8192 m=256 67.3 / 67.2 against 68.7 / 69.5 (the
// 20:35 run: 14336x4096 m=512 109.6 / 110.5 against 113.1 / 113.0); not on 4096x4096 (m=256 34.1 / 33.9
// against 28.1 for config 5's split), nor at 384 rows (512 padded: 8192x28672 347.8 / 346.9 against
// 298.9 / 301.6 for config 6). Before the epilogue (19:55 and 20:03 runs, KG = 2, fp16, us, config 7 against 6
// in three rounds): 8192x8192 m=1024 212.6 / 209.7 / 210.9 against 232.2 / 217.5 / 226.2, m=512
// 105.3 / 102.9 / 104.3 against 109.9 / 108.2 / 108.2; 28672x8192 m=512 346.9 / 346.8 / 344.7 against
// 374.0 / 369.6 / 360.8; over the six layers at 512-2048 rows 0.90-1.06 of config 6, 0.97 on average. Not at
// 256 rows (0.97-1.04), and not where it has fewer tiles (14336x4096 m=512, 64 tiles: 115.3-116.3 against
// 113.0-114.2 for config 6's stream-K). Nsight Compute at 8192x28672 m=1024 (clocks locked at 1.42 GHz):
// config 7 706.4 us, 135.3 M warp instructions, config 6 730.6 us, 228.5 M; the tensor pipes 87% busy in both
// (681 and 658 TFLOP/s against 768 at that clock).
int auto_config(int M, int N, int K, int num_sms, bool have_ws) {
  const bool large = static_cast<int64_t>(N) * K >= (int64_t{1} << 27), wide = N >= K;
  const int64_t ws_tiles = static_cast<int64_t>((N + 255) / 256) * ((M + 127) / 128);
  const int64_t wide_tiles = static_cast<int64_t>((N + 127) / 128) * ((M + 255) / 256);
  const int64_t rows128 = (M + 127) / 128 * 128, rows256 = (M + 255) / 256 * 256;
  if (M > 128 && 10 * rows256 <= 11 * rows128 &&
      (4 * wide_tiles >= 3 * static_cast<int64_t>(num_sms) || (have_ws && K >= 8192 && 8 * wide_tiles > num_sms)))
    return kWsWideConfig;
  if (M > 64 && 4 * ws_tiles >= 3 * static_cast<int64_t>(num_sms)) return kWsConfig;
  if (have_ws && M >= 128 && K >= 12288 && 8 * ws_tiles > num_sms) return kWsConfig;
  if (M <= 32) return 4;
  if (M <= 64) return 3;
  if (M <= 128) return large ? 5 : 3;
  if (M <= 256) return large || wide ? 5 : 3;
  return 5;  // 257-1024 rows on the layers the backend routes here (8192x8192 m=1024: 245.2 against 422.2)
}

// log2(gsize) for a power-of-two group size, 30 for one group over all of K (col >> 30 == 0), or
// -1: divide.
int group_shift(int gsize, int K) {
  if (gsize >= K) return 30;
  if ((gsize & (gsize - 1)) != 0) return -1;
  int shift = 0;
  while ((1 << shift) < gsize) ++shift;
  return shift;
}

// The activation pre-pass of both GEMMs: x cut into the BN x SC tiles their kernels read (one thread
// a 16-byte unit, at most 8 blocks of 256 an SM).
template <int BITS, int SC>
cudaError_t launch_tile_x(const void* x, int64_t ldx, void* xp, int M, int K, int bn, int num_sms,
                          cudaStream_t stream) {
  const int64_t units = static_cast<int64_t>((M + bn - 1) / bn) * bn * (K / 8);
  const int blocks = static_cast<int>(units / 256 + 1 < 8L * num_sms ? units / 256 + 1 : 8L * num_sms);
  return launch_kernel(wxa16_tile_x_kernel<BITS, SC>, dim3(blocks), dim3(256), 0, stream,
                       static_cast<const uint32_t*>(x), ldx / 2, static_cast<uint4*>(xp), M, K, bn);
}

template <int BITS, typename T, int BN, int NWG, int S0, int SC>
cudaError_t launch_wgmma(const void* x, int64_t ldx, void* xp, const int32_t* qweight, const uint32_t* scales,
                         const uint32_t* zeros, const int32_t* kgroup, int group_size, const void* bias, void* out,
                         int M, int N, int K, int num_sms, const SplitK& split, cudaStream_t stream) {
  constexpr int kStageBytes = wgmma_stage_bytes(BITS, BN, NWG, SC);
  constexpr int S = S0 * kStageBytes <= kSmemBudget ? S0 : kSmemBudget / kStageBytes;
  static_assert(S >= 3, "the pipeline needs 3 stages (dispatch_config runs only configs that fit)");
  constexpr int kSmem = S * kStageBytes;
  constexpr int kThreads = NWG * 128;
  constexpr int kMinStages = 256 / SC;
  constexpr int64_t kSlotFloats = wgmma_slot_floats(BN, NWG);  // a partial tile in the workspace
  // The time model, in stages: pipeline fill and epilogue of a block's run of a tile (a guess), and
  // the sum of a split tile's parts: a cluster's through distributed shared memory, per part; a
  // stream-K tile's from the workspace slots in L2, per slot read (H100, 11th session, against a build
  // that skipped the reads: 11 us for 7 slots at m = 64 on 14336x4096, 5.5 us for 3 on 8192x8192, 3.4
  // for 3.1 on 28672x8192; a stage of 128 columns takes about 1.2 us there). A slot holds BN rows, and
  // its cost grows with them: 180 / SC per slot of 32 rows. Seventeenth session (2026-11-24 17:15 and
  // 17:20 runs): at 180 / SC for every BN the model sent 8192x8192 at 48-64 rows to stream-K, which
  // measured 4-7% slower than the clusters of 3 it picks now (m = 64: 33.4 / 33.7 against 31.4 / 31.3
  // us); no other choice at 24-256 rows on the six benchmark layers moved. Doubling the cost of every
  // slot also sent the 32-row tiles there to clusters, 1-2% slower than stream-K.
  constexpr double kOverhead = 3.0 * 64 / SC;
  constexpr double kClusterSum = 32.0 / SC, kSlotSum = 180.0 / SC * BN / 32;
  constexpr double kSplitGain = 0.85;  // a split must model 15% faster than one block a tile
  // Layers without a group table or zeros (symmetric, no act_order) run the kernel's PLAIN twin,
  // whose copy and dequantization leave out the code for them (per 128-column stage of config 3, 286
  // instructions in the loop against 318): 32- and 64-row tiles only. On an H100 (23:21 run, int4
  // g128, same layer with and without explicit zeros of 8) the twin ran 3-21% faster at 32-128 rows
  // (8192x28672 m=64: 71.3 against 89.7 us), but with 128-row tiles (m = 256-512) from 4% faster to
  // 17% slower (8192x28672 m=512: 590.8 against 503.9 us; not explained).
  constexpr bool kPlainTwin = BN < 128;
  const bool plain = kPlainTwin && kgroup == nullptr && zeros == nullptr;
  auto kernel = wxa16_gemm_wgmma_kernel<BITS, T, BN, NWG, S, SC, kNoSplit, false>;
  auto kernel_cl = wxa16_gemm_wgmma_kernel<BITS, T, BN, NWG, S, SC, kClusterSplit, false>;
  auto kernel_sk = wxa16_gemm_wgmma_kernel<BITS, T, BN, NWG, S, SC, kStreamK, false>;
  if constexpr (kPlainTwin) {
    if (plain) {
      kernel = wxa16_gemm_wgmma_kernel<BITS, T, BN, NWG, S, SC, kNoSplit, true>;
      kernel_cl = wxa16_gemm_wgmma_kernel<BITS, T, BN, NWG, S, SC, kClusterSplit, true>;
      kernel_sk = wxa16_gemm_wgmma_kernel<BITS, T, BN, NWG, S, SC, kStreamK, true>;
    }
  }
  // Not a stream operation (legal while capturing a graph); per device, so set it every launch.
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err == cudaSuccess) err = cudaFuncSetAttribute(kernel_cl, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err == cudaSuccess) err = cudaFuncSetAttribute(kernel_sk, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  // Occupancy, once per twin: resident blocks per SM, and how many clusters of p blocks the GPU holds
  // at once (a cluster sits within one GPC, so not simply SMs / p).
  static int blocks_per_sm_of[2] = {0, 0};
  static int clusters_of[2][kMaxClusterParts + 1] = {};
  int& blocks_per_sm = blocks_per_sm_of[plain];
  int (&clusters)[kMaxClusterParts + 1] = clusters_of[plain];
  if (blocks_per_sm == 0) {
    int b = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, kernel_sk, kThreads, kSmem);
    if (err != cudaSuccess) return err;
    for (int p = 2; p <= kMaxClusterParts; ++p) {
      cudaLaunchAttribute attr;
      attr.id = cudaLaunchAttributeClusterDimension;
      attr.val.clusterDim.x = p;
      attr.val.clusterDim.y = 1;
      attr.val.clusterDim.z = 1;
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(p);
      cfg.blockDim = dim3(kThreads);
      cfg.dynamicSmemBytes = kSmem;
      cfg.attrs = &attr;
      cfg.numAttrs = 1;
      int c = 0;
      if (cudaOccupancyMaxActiveClusters(&c, kernel_cl, &cfg) != cudaSuccess) {
        (void)cudaGetLastError();
        c = 0;  // no clusters of p: never split that way
      }
      clusters[p] = c;
    }
    blocks_per_sm = b > 0 ? b : 1;
  }
  const int n_blocks = (N / 16 + 4 * NWG - 1) / (4 * NWG), m_blocks = (M + BN - 1) / BN;
  const int stages = K / SC;
  const int64_t tiles = static_cast<int64_t>(n_blocks) * m_blocks, items = tiles * stages;
  const int64_t slots = static_cast<int64_t>(blocks_per_sm) * num_sms;
  // Stream-K blocks: one wave at most, and no more than the workspace has partial-tile slots for.
  int64_t sk_blocks = 0;
  if (split.ws != nullptr) sk_blocks = std::min({slots, items / kMinStages, (split.ws_numel - tiles) / kSlotFloats});
  // Split of K. Automatic: the least modelled time, one block a tile (waves x (stages + kOverhead)),
  // a cluster of p blocks a tile (waves of the clusters the GPU holds; the stages of a rank, the fill,
  // the sum of p parts), or stream-K over one wave (a block's share, two fills, the sum of a tile's
  // parts, about sk_blocks / tiles); a split only when kSplitGain better than none. A cluster suits
  // tiles that fill the GPU's clusters (14336x4096 m=64: 16 tiles of 8 blocks), stream-K those that
  // do not (28672x8192 m=64: 32 tiles of 3 blocks in clusters, of 4.1 in stream-K). Forced (ksplit,
  // tuning): 1-8 blocks of a cluster (fewer where no cluster of that size fits), 0 stream-K (over as
  // many blocks as the workspace has slots for; none below two).
  int parts = 1;
  bool stream_k = false;
  if (split.ksplit > 1) {
    parts = std::min({split.ksplit, kMaxClusterParts, stages});
    while (parts > 1 && clusters[parts] == 0) --parts;
  } else if (split.ksplit == 0) {
    stream_k = sk_blocks >= 2;
  } else if (split.ksplit < 0) {
    const double one = static_cast<double>((tiles + slots - 1) / slots) * (stages + kOverhead);
    double best = one;
    for (int p = 2; p <= kMaxClusterParts && p * kMinStages <= stages; ++p) {
      if (clusters[p] == 0) continue;
      const double time = static_cast<double>((tiles + clusters[p] - 1) / clusters[p]) *
                          ((stages + p - 1) / p + kOverhead + kClusterSum * p);
      if (time < best) {
        best = time;
        parts = p;
      }
    }
    // (Not for 128-row tiles of 64-column stages: ptxas serializes the wgmma of that stream-K kernel
    // for want of registers, C7512.)
    if (sk_blocks > tiles && !(BN == 128 && SC == 64)) {
      const double time = static_cast<double>((items + sk_blocks - 1) / sk_blocks) + 2 * kOverhead +
                          kSlotSum * (static_cast<double>(sk_blocks) / tiles - 1);
      if (time < best) {
        best = time;
        stream_k = true;
      }
    }
    if (best >= kSplitGain * one) {
      parts = 1;
      stream_k = false;
    }
  }
  err = launch_tile_x<BITS, SC>(x, ldx, xp, M, K, BN, num_sms, stream);
  if (err != cudaSuccess) return err;
  const int64_t grid = stream_k ? sk_blocks : tiles * parts;
  return launch_kernel_cluster(stream_k ? kernel_sk : parts > 1 ? kernel_cl : kernel, dim3(static_cast<unsigned>(grid)),
                               dim3(kThreads), kSmem, stream, stream_k ? 1 : parts, static_cast<const T*>(xp),
                               reinterpret_cast<const uint4*>(qweight), scales, zeros, kgroup, group_size,
                               group_shift(group_size, K), static_cast<const T*>(bias), static_cast<T*>(out), split.ws,
                               M, N, K, pdl_prefetch_chunks(grid, num_sms));
}

// Whether the warp-specialized kernel serves the layer: no group table, a power-of-two group size of
// at least 32 columns or one group (gshift from group_shift), K % 128 == 0.
bool ws_serves(const int32_t* kgroup, int gshift, int K) { return kgroup == nullptr && gshift >= 5 && K % 128 == 0; }

// The warp-specialized kernel, persistent (one block an SM), whole tiles a block or, given the caller's
// workspace, stream-K in lanes of the m-blocks after full waves of whole tiles (for_each_run),
// whichever its wave model says is faster: whole tiles take ceil(tiles / SMs) tiles' stages in the
// busiest block; stream-K the full waves, an equal share of the rest's stages of a lane, and a block's
// fix-ups (kFixup: its cut tiles' partial written, fenced and counted, the other's parts waited for and
// summed). Both pay one pipeline fill (kOverhead): a block's runs follow each other without a gap.
// split.ksplit: -1 chosen so, 0 stream-K, else whole tiles (tuning).
template <int BITS, typename T, int BN, int NWG, int S0, int SC, int PW>
cudaError_t launch_wgmma_ws(const void* x, int64_t ldx, void* xp, const int32_t* qweight, const uint32_t* scales,
                            const uint32_t* zeros, int group_size, const void* bias, void* out, int M, int N, int K,
                            int num_sms, const SplitK& split, cudaStream_t stream) {
  constexpr int kSlot = ws_slot_bytes(BITS, BN, NWG, SC) + kWsBarBytes;
  constexpr int S = S0 * kSlot <= kSmemBudget ? S0 : kSmemBudget / kSlot;
  static_assert(S >= 3, "three slots at least (dispatch_config runs only configs that fit, ws_fits)");
  constexpr int kSmem = S * kSlot;
  constexpr int kThreads = ws_threads(NWG);  // NWG consumer warpgroups and a producer one (PW warps of it copy)
  constexpr int64_t kSlotFloats = wgmma_slot_floats(BN, NWG);
  // kFixup: 6.5 stages of 128 columns, from Nsight Compute (fourteenth session, call 8): at 4096x14336
  // m=256 the stream-K blocks (27.2 stages each, two fix-ups) spent 24% more SM cycles than whole
  // tiles on the same stages. With it the model picks whole tiles in every cell where they measured
  // faster or equal in the 07:02-07:21 runs (it models stream-K at 0.96-1.08 of them there) and
  // stream-K where it won (0.28-0.56). With the full waves first (07:55 run, each cell twice):
  // 4096x14336 m=1024 200.3-205.7 against 220.4-229.2 us whole, 8192x28672 m=512 356.1-379.6 (forced)
  // against 409.7-413.8, 8192x28672 m=256 192.1-197.4 against 196.7-200.4.
  constexpr double kOverhead = 3.0 * 64 / SC, kFixup = 832.0 / SC, kSplitGain = 0.95;
  const int64_t n_blocks = (N / 16 + 4 * NWG - 1) / (4 * NWG), m_blocks = (M + BN - 1) / BN;
  const int64_t tiles = n_blocks * m_blocks, stages = K / SC, lane_items = n_blocks * stages;
  int64_t grid = std::min<int64_t>(tiles, num_sms);
  // Stream-K: per_lane blocks in each of the m_blocks lanes, one block an SM in all, no more than the
  // workspace has slots for, and no more than a lane's stages (every block gets one at least: a block
  // with none would still count among a cut tile's owners).
  int64_t per_lane = 0;
  if (split.ws != nullptr && split.ws_numel > tiles)
    per_lane = std::min<int64_t>(std::min<int64_t>(num_sms, (split.ws_numel - tiles) / kSlotFloats) / m_blocks,
                                 lane_items);
  const int64_t sk_grid = per_lane * m_blocks;
  // Full waves of whole tiles first, as many as leave each block stages of the rest (one wave fewer if not).
  int64_t whole = sk_grid > 0 ? tiles / sk_grid * sk_grid : 0;
  if (whole > 0 && (tiles - whole) / m_blocks * stages < per_lane) whole -= sk_grid;
  bool stream_k = false;
  if (split.ksplit == 0) {
    stream_k = sk_grid >= 2;
  } else if (split.ksplit < 0 && per_lane >= 2) {
    const double one = static_cast<double>((tiles + grid - 1) / grid * stages) + kOverhead;
    const int64_t rest_items = (tiles - whole) / m_blocks * stages;
    const double sk = static_cast<double>(whole / sk_grid * stages + (rest_items + per_lane - 1) / per_lane) +
                      kOverhead + kFixup;
    stream_k = sk < kSplitGain * one;
  }
  if (stream_k) grid = sk_grid;
  auto kernel = stream_k ? wxa16_gemm_wgmma_ws_kernel<BITS, T, BN, NWG, S, SC, PW, true>
                         : wxa16_gemm_wgmma_ws_kernel<BITS, T, BN, NWG, S, SC, PW, false>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  err = launch_tile_x<BITS, SC>(x, ldx, xp, M, K, BN, num_sms, stream);
  if (err != cudaSuccess) return err;
  return launch_kernel(kernel, dim3(static_cast<unsigned>(grid)), dim3(kThreads), kSmem, stream,
                       static_cast<const T*>(xp), reinterpret_cast<const uint4*>(qweight), scales, zeros,
                       group_shift(group_size, K), static_cast<const T*>(bias), static_cast<T*>(out),
                       stream_k ? split.ws : nullptr, stream_k ? static_cast<int>(whole) : 0, M, N, K);
}

template <int BITS, typename T>
cudaError_t dispatch_config(int config, const void* x, int64_t ldx, void* xp, const int32_t* qweight,
                            const uint32_t* scales, const uint32_t* zeros, const int32_t* kgroup, int group_size,
                            const void* bias, void* out, int M, int N, int K, int num_sms, const SplitK& split,
                            cudaStream_t stream) {
  if (config < 0) config = auto_config(M, N, K, num_sms, split.ws != nullptr);
  if (kConfigs[config].ws) {
    if (ws_serves(kgroup, group_shift(group_size, K), K)) {
      if (!ws_fits(BITS, kConfigs[config])) config = kWsConfig;
      // (Both store their tiles 16 bytes at a time: an `out` not so aligned takes config 5.)
      if (reinterpret_cast<uintptr_t>(out) % 16 != 0) config = 5;
#define QK_WS_CONFIG(I)                                                                                           \
  if (config == I) {                                                                                              \
    if constexpr (ws_fits(BITS, kConfigs[I])) /* else remapped above: never instantiated */                       \
      return launch_wgmma_ws<BITS, T, kConfigs[I].bn, kConfigs[I].nwg, kConfigs[I].s, kConfigs[I].sc,             \
                             kConfigs[I].pw>(x, ldx, xp, qweight, scales, zeros, group_size, bias, out, M, N, K, \
                                             num_sms, split, stream);                                             \
    return cudaErrorInvalidValue;                                                                                 \
  }
      QK_WS_CONFIG(6)
      QK_WS_CONFIG(7)
#undef QK_WS_CONFIG
    }
    config = 5;
  }
  if (K % kConfigs[config].sc != 0 || !fits(BITS, kConfigs[config])) config = twin64(config);
#define QK_CONFIG(I)                                                                                         \
  case I:                                                                                                    \
    if constexpr (fits(BITS, kConfigs[I]))  /* else remapped above: never instantiated */                    \
      return launch_wgmma<BITS, T, kConfigs[I].bn, kConfigs[I].nwg, kConfigs[I].s, kConfigs[I].sc>(           \
          x, ldx, xp, qweight, scales, zeros, kgroup, group_size, bias, out, M, N, K, num_sms, split, stream); \
    return cudaErrorInvalidValue;
  switch (config) {
    QK_CONFIG(0)
    QK_CONFIG(1)
    QK_CONFIG(2)
    QK_CONFIG(3)
    QK_CONFIG(4)
    QK_CONFIG(5)
    default:
      return cudaErrorInvalidValue;
  }
#undef QK_CONFIG
}
static_assert(kNumConfigs == 8, "dispatch_config lists every config");
constexpr bool twins_ok() {
  for (int c = 0; c < kWsConfig; ++c) {
    const WgmmaConfig& t = kConfigs[twin64(c)];
    if (t.sc != 64 || t.bn != kConfigs[c].bn || t.nwg != kConfigs[c].nwg || !fits(8, t)) return false;
  }
  return true;
}
static_assert(twins_ok(), "every config's twin has its BN and NWG, 64-column stages, and fits 8-bit weights");

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
  if (M <= 0 || N % 16 != 0 || K % 64 != 0 || group_size % 16 != 0 || ldx % 2 != 0 ||
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
