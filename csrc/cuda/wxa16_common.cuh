// Device helpers shared by the W4A16 / W8A16 kernels: activation-dtype traits, in-register
// dequantization of one lane's run of weights (layout in wxa16.h), and the m16n8k16 mma.
// Needs sm_80 or newer (bf16 half2 arithmetic, mma.sync with bf16 inputs).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace qk {
namespace cuda {

// ---- Programmatic dependent launch (PDL, sm_90 and newer) ----
// Every kernel here is launched with cudaLaunchAttributeProgrammaticStreamSerialization where the
// device supports it (launch_kernel below), so that it may start while the kernel before it on the
// stream is still finishing. Before pdl_wait() a kernel does only what cannot depend on that
// kernel: address arithmetic and L2 prefetches of its weights (a prefetch never yields a value, so
// it cannot read anything stale). pdl_wait() returns once the previous grid has completed and its
// memory is visible; every read of the activations, bias, scales, workspace and every store comes
// after it. pdl_launch_dependents(), right after the wait, lets the next such kernel launch (and
// prefetch) while this one runs; calling it only after the wait keeps at most two grids in flight.
// Both are no-ops when the launch did not ask for PDL, and compile to nothing before sm_90.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Both of the above, in the order every kernel uses them.
__device__ __forceinline__ void pdl_wait_then_release() {
  pdl_wait();
  pdl_launch_dependents();
}

// A hint to bring the 128-byte line holding p into L2 (no register written, no fault on use).
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// Before pdl_wait(): L2 prefetches of a warp's weights in the mma-shuffled layout (qw [N/16, K/KC,
// 32] 16-byte lane slices, wxa16.h), chunks c_begin .. of n-tiles nt0 .. nt0 + NT - 1 (clamped to
// the last n-tile), at most `pf` slices in all (the kernel's pdl_pf), by one lane per 128-byte
// line. Not inlined: inlined, it cost the GEMM's stream-K kernel an 8-byte register spill on sm_80.
template <int NT>
__device__ __noinline__ void prefetch_weights(const uint4* qw, int nt0, int n_tiles, int nc, int lane, int c_begin,
                                              int chunks, int pf) {
  if ((lane & 7) != 0) return;
  chunks = min(chunks, pf / NT);
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const uint4* p = qw + (static_cast<int64_t>(min(nt0 + n, n_tiles - 1)) * nc + c_begin) * 32 + lane;
    for (int c = 0; c < chunks; ++c) prefetch_l2(p + c * 32);
  }
}

// Attribute A of the current device, queried once per device (0 where the query fails; a failed
// query is not cached).
template <cudaDeviceAttr A>
inline int current_device_attribute() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
    (void)cudaGetLastError();
    return 0;
  }
  static std::array<std::atomic<int>, 64> cache{};  // 0 unknown, else the value + 1
  int v = cache[dev].load(std::memory_order_relaxed);
  if (v == 0) {
    int a = 0;
    if (cudaDeviceGetAttribute(&a, A, dev) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    v = a + 1;
    cache[dev].store(v, std::memory_order_relaxed);
  }
  return v - 1;
}

// Whether launches on the current device ask for PDL: compute capability 9.0 or newer, unless the
// environment variable QUANTKERNELS_CUDA_PDL is "0" (read once per process; for A/B timing and as
// a workaround).
inline bool pdl_enabled() {
  static const bool allowed = [] {
    const char* v = std::getenv("QUANTKERNELS_CUDA_PDL");
    return v == nullptr || !(v[0] == '0' && v[1] == '\0');
  }();
  return allowed && current_device_attribute<cudaDevAttrComputeCapabilityMajor>() >= 9;
}

// The kernels' `pdl_pf` argument: how many chunk slices (512 bytes of one warp's weights, at most
// kPdlPrefetchChunks: about 8 KB a warp) a warp prefetches into L2 before pdl_wait(). Only for
// grids of more blocks than SMs, whose next launch finds the SMs full and so starts (and prefetches)
// as this one's blocks drain; a grid of at most one block an SM leaves room for the next one's
// blocks at once, and their prefetches then compete with this kernel's own loads from its start.
// H100, `gpu_gemm.py`, m = 1, int4 g128 fp16 (2026-11-23 19:24, us, prefetch 0 / 16): N = 4096
// (128 blocks): 4096x4096 5.66 / 6.62, 14336x4096 13.7 / 15.7; more blocks than SMs: 4096x14336
// 14.7 / 13.2, 8192x8192 16.0 / 15.3. Triggering the next launch after the main loop instead of
// after the wait measured slower (14336x4096 m = 16: 25.4 against 18.1 us). 0 without PDL.
constexpr int kPdlPrefetchChunks = 16;
inline int pdl_prefetch_chunks(int64_t blocks, int num_sms) {
  return blocks > num_sms && pdl_enabled() ? kPdlPrefetchChunks : 0;
}

// kernel<<<grid, block, smem, stream>>>(args...) with the blocks grouped in clusters of `cluster`
// along x (1: no cluster), with PDL where pdl_enabled(); returns the launch's error.
template <typename... KArgs, typename... Args>
cudaError_t launch_kernel_cluster(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                                  int cluster, Args... args) {
  cudaLaunchAttribute attr[2];
  int n = 0;
  if (pdl_enabled()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (cluster > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster;
    attr[n].val.clusterDim.y = 1;
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = n > 0 ? attr : nullptr;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
}

// kernel<<<grid, block, smem, stream>>>(args...), with PDL where pdl_enabled(); returns the launch's error.
template <typename... KArgs, typename... Args>
cudaError_t launch_kernel(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          Args... args) {
  return launch_kernel_cluster(kernel, grid, block, smem, stream, 1, args...);
}

template <typename T>
struct ActTraits;

// Magic numbers: OR-ing a small integer v into the low mantissa bits of `magic` gives magic + v
// exactly (fp16: 1024 + v for v < 1024; bf16: 128 + v for v < 128).
template <>
struct ActTraits<__half> {
  using T2 = __half2;
  static constexpr uint32_t kMagic2 = 0x64006400u;  // (1024, 1024)
  static constexpr float kMagic = 1024.0f;
  __device__ static float to_float(__half v) { return __half2float(v); }
  __device__ static __half from_float(float v) { return __float2half_rn(v); }
};

template <>
struct ActTraits<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint32_t kMagic2 = 0x43004300u;  // (128, 128)
  static constexpr float kMagic = 128.0f;
  __device__ static float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

template <typename T2>
__device__ __forceinline__ T2 as_t2(uint32_t u) {
  return *reinterpret_cast<T2*>(&u);
}

template <typename T2>
__device__ __forceinline__ uint32_t as_u32(T2 v) {
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ __half2 bcast_lo(__half2 v) { return __low2half2(v); }
__device__ __forceinline__ __half2 bcast_hi(__half2 v) { return __high2half2(v); }
__device__ __forceinline__ __nv_bfloat162 bcast_lo(__nv_bfloat162 v) { return __low2bfloat162(v); }
__device__ __forceinline__ __nv_bfloat162 bcast_hi(__nv_bfloat162 v) { return __high2bfloat162(v); }

// (a & b) | c in one instruction.
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// The operands of one (chunk, n-tile)'s dequantization, prepared once and shared by its runs:
// the row scales and zero terms, each broadcast to both halves of a pair. `sc` is (s[r0], s[r1])
// and `zraw` is (z[r0], z[r1]), both as T values.
struct DequantConsts {
  uint32_t s0, s1;  // (s[r0], s[r0]), (s[r1], s[r1])
  uint32_t z0, z1;  // what the r0 / r1 registers subtract (see make_consts)
};

template <int BITS, typename T>
__device__ __forceinline__ DequantConsts make_consts(uint32_t sc, uint32_t zraw) {
  using T2 = typename ActTraits<T>::T2;
  const T2 s2 = as_t2<T2>(sc), z2 = as_t2<T2>(zraw);
  DequantConsts c;
  c.s0 = as_u32(bcast_lo(s2));
  c.s1 = as_u32(bcast_hi(s2));
  if constexpr (BITS == 8 && !std::is_same<T, __half>::value) {
    // 8-bit codes with bf16 go through fp32 (dequant_run): the raw zeros.
    c.z0 = as_u32(bcast_lo(z2));
    c.z1 = as_u32(bcast_hi(z2));
  } else if constexpr (BITS == 4 && std::is_same<T, __half>::value) {
    // r0 registers hold magic + q: subtract magic + z. r1 registers hold magic + 16 q (their
    // nibbles sit 4 bits higher and are not shifted down): fma with 1/16 and -(magic/16 + z).
    c.z0 = as_u32(bcast_lo(__hadd2(z2, as_t2<T2>(ActTraits<T>::kMagic2))));
    c.z1 = as_u32(bcast_hi(__hneg2(__hadd2(z2, as_t2<T2>(0x54005400u)))));  // (64, 64)
  } else {
    const T2 zm = __hadd2(z2, as_t2<T2>(ActTraits<T>::kMagic2));
    c.z0 = as_u32(bcast_lo(zm));
    c.z1 = as_u32(bcast_hi(zm));
  }
  return c;
}

// One lane's run of one k-tile -> the four mma A registers (rows r0/r1 x logical k pairs), each
// (q - z) * s with q - z exact and the product rounded once to T (so every path rounds alike).
// With SCALE = false the registers hold q - z itself (exact in T: |q - z| < 256), for a caller
// that applies the scale to the fp32 result instead. `w` points at the run's 1 (4-bit) or 2
// (8-bit) words.
template <int BITS, typename T, bool SCALE = true>
__device__ __forceinline__ void dequant_run(const uint32_t* w, const DequantConsts& c, uint32_t a[4]) {
  using T2 = typename ActTraits<T>::T2;
  const auto mul = [](T2 v, T2 s) { return SCALE ? __hmul2(v, s) : v; };
  const T2 s_r0 = as_t2<T2>(c.s0), s_r1 = as_t2<T2>(c.s1);
  const T2 z_r0 = as_t2<T2>(c.z0), z_r1 = as_t2<T2>(c.z1);
  if constexpr (BITS == 4 && std::is_same<T, __half>::value) {
    // Register e takes nibbles e and e + 4: e = 0, 2 (row r0) from bits 0-3 / 16-19 of w and of
    // w >> 8; e = 1, 3 (row r1) from bits 4-7 / 20-23 of the same words, left in place (one shift
    // per run instead of three). 1024 + 16 q is exact in fp16 and so is the fma below.
    const uint32_t w8 = w[0] >> 8;
    const T2 sixteenth = as_t2<T2>(0x2C002C00u);  // (1/16, 1/16)
    a[0] = as_u32(mul(__hsub2(as_t2<T2>(and_or(w[0], 0x000F000Fu, ActTraits<T>::kMagic2)), z_r0), s_r0));
    a[1] = as_u32(mul(__hfma2(as_t2<T2>(and_or(w[0], 0x00F000F0u, ActTraits<T>::kMagic2)), sixteenth, z_r1), s_r1));
    a[2] = as_u32(mul(__hsub2(as_t2<T2>(and_or(w8, 0x000F000Fu, ActTraits<T>::kMagic2)), z_r0), s_r0));
    a[3] = as_u32(mul(__hfma2(as_t2<T2>(and_or(w8, 0x00F000F0u, ActTraits<T>::kMagic2)), sixteenth, z_r1), s_r1));
  } else if constexpr (BITS == 4) {
    // bf16 has 7 mantissa bits: a nibble cannot stay 4 bits up, so each register shifts.
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const T2 v = as_t2<T2>(and_or(w[0] >> (4 * e), 0x000F000Fu, ActTraits<T>::kMagic2));
      a[e] = as_u32(mul(__hsub2(v, (e & 1) ? z_r1 : z_r0), (e & 1) ? s_r1 : s_r0));
    }
  } else if constexpr (std::is_same<T, __half>::value) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const T2 v = as_t2<T2>(__byte_perm(w[e >> 1], 0x64646464u, (e & 1) ? 0x4342 : 0x4140));
      a[e] = as_u32(mul(__hsub2(v, (e & 1) ? z_r1 : z_r0), (e & 1) ? s_r1 : s_r0));
    }
  } else {
    // 8-bit codes with bf16: 128 + v is not exact in bf16 for v >= 128, so go through fp32
    // (2**23 + v is exact), then round the product once to bf16.
    const float s0 = SCALE ? __low2float(s_r0) : 1.0f, s1 = SCALE ? __low2float(s_r1) : 1.0f;
    const float z0 = __low2float(z_r0) + 8388608.0f, z1 = __low2float(z_r1) + 8388608.0f;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const uint32_t word = w[e >> 1];
      const int sh = (e & 1) ? 16 : 0;
      const float lo = __uint_as_float(0x4B000000u | ((word >> sh) & 0xFF));
      const float hi = __uint_as_float(0x4B000000u | ((word >> (sh + 8)) & 0xFF));
      const float z = (e & 1) ? z1 : z0, s = (e & 1) ? s1 : s0;
      a[e] = as_u32(__floats2bfloat162_rn((lo - z) * s, (hi - z) * s));
    }
  }
}

// c += A (16x16, row) * B (16x8, col), fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same<T, __half>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Group of the lane's run of 16 sorted columns starting at column k (k % 16 == 0).
__device__ __forceinline__ int group_of(const int32_t* __restrict__ kgroup, int k, int gs16) {
  return kgroup != nullptr ? __ldg(kgroup + (k >> 4)) : (k >> 4) / gs16;
}

}  // namespace cuda
}  // namespace qk
