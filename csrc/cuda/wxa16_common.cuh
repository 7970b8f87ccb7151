// Device helpers shared by the W4A16 / W8A16 kernels: activation-dtype traits, in-register
// dequantization of one lane's run of weights (layout in wxa16.h), and the m16n8k16 mma.
// Needs sm_80 or newer (bf16 half2 arithmetic, mma.sync with bf16 inputs).
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace qk {
namespace cuda {

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

// The zero operand a run's dequantization subtracts, prepared once per (chunk, n-tile).
// `zraw` is (z[r0], z[r1]) as T values; the half2 paths subtract magic + z, the fp32 path (8-bit
// codes with bf16, whose 128 + v would not be exact) subtracts z as a float.
template <int BITS, typename T>
__device__ __forceinline__ uint32_t prepare_zero(uint32_t zraw) {
  using T2 = typename ActTraits<T>::T2;
  if constexpr (BITS == 8 && !std::is_same<T, __half>::value) return zraw;
  return as_u32(__hadd2(as_t2<T2>(zraw), as_t2<T2>(ActTraits<T>::kMagic2)));
}

// One lane's run of one k-tile -> the four mma A registers (rows r0/r1 x logical k pairs), each
// (q - z) * s rounded once to T. `w` points at the run's 1 (4-bit) or 2 (8-bit) words; `sc` is
// (s[r0], s[r1]) and `zm` comes from prepare_zero.
template <int BITS, typename T>
__device__ __forceinline__ void dequant_run(const uint32_t* w, uint32_t sc, uint32_t zm, uint32_t a[4]) {
  using T2 = typename ActTraits<T>::T2;
  const T2 s2 = as_t2<T2>(sc), z2 = as_t2<T2>(zm);
  const T2 s_r0 = bcast_lo(s2), s_r1 = bcast_hi(s2);
  const T2 z_r0 = bcast_lo(z2), z_r1 = bcast_hi(z2);
  if constexpr (BITS == 4) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const T2 v = as_t2<T2>(and_or(w[0] >> (4 * e), 0x000F000Fu, ActTraits<T>::kMagic2));
      a[e] = as_u32(__hmul2(__hsub2(v, (e & 1) ? z_r1 : z_r0), (e & 1) ? s_r1 : s_r0));
    }
  } else if constexpr (std::is_same<T, __half>::value) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const T2 v = as_t2<T2>(__byte_perm(w[e >> 1], 0x64646464u, (e & 1) ? 0x4342 : 0x4140));
      a[e] = as_u32(__hmul2(__hsub2(v, (e & 1) ? z_r1 : z_r0), (e & 1) ? s_r1 : s_r0));
    }
  } else {
    // 8-bit codes with bf16: 128 + v is not exact in bf16 for v >= 128, so go through fp32
    // (2**23 + v is exact), then round the product once to bf16.
    const float s0 = __low2float(s2), s1 = __high2float(s2);
    const float z0 = __low2float(z2) + 8388608.0f, z1 = __high2float(z2) + 8388608.0f;
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
