// Scalar definitions of the AVX-512 intrinsics that csrc/cpu/qlinear_avx512.cpp,
// csrc/cpu/qlinear_avx512vnni.cpp and the 512-bit templates of qlinear_x86.h use, and of AVX-VNNI's
// vpdpbusd (csrc/cpu/qlinear_avxvnni.cpp), so that those kernels' logic can be tested on an x86 CPU
// without AVX-512 or AVX-VNNI (this VM and CI's). Included by
// avx512_emulated.cpp after <immintrin.h> and before the kernel source: each intrinsic name is
// redefined as a macro for the emu_ function below, which computes the documented result lane by
// lane (integer products exact, wrap-around where the instruction wraps, saturation where it
// saturates, fused multiply-adds with one rounding). Tests correctness only, never speed.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace qk::emu {

// Lane views of a 512-bit value.
template <typename T>
struct Lanes {
  static constexpr int kCount = 64 / sizeof(T);
  T v[kCount];
};
template <typename T, typename V>
inline Lanes<T> lanes(V x) {
  static_assert(sizeof(V) == 64, "a 512-bit value");
  Lanes<T> l;
  std::memcpy(l.v, &x, 64);
  return l;
}
template <typename V, typename T>
inline V pack(const Lanes<T>& l) {
  V x;
  std::memcpy(&x, l.v, 64);
  return x;
}
template <typename T, typename F>
inline __m512i map_i(__m512i a, __m512i b, F f) {
  const Lanes<T> la = lanes<T>(a), lb = lanes<T>(b);
  Lanes<T> r;
  for (int i = 0; i < Lanes<T>::kCount; ++i) r.v[i] = f(la.v[i], lb.v[i]);
  return pack<__m512i>(r);
}
template <typename F>
inline __m512 map_f(__m512 a, __m512 b, F f) {
  const Lanes<float> la = lanes<float>(a), lb = lanes<float>(b);
  Lanes<float> r;
  for (int i = 0; i < 16; ++i) r.v[i] = f(la.v[i], lb.v[i]);
  return pack<__m512>(r);
}
template <typename T>
inline T wrap(int64_t v) {  // two's complement truncation, as the instructions do
  return static_cast<T>(static_cast<std::make_unsigned_t<T>>(static_cast<uint64_t>(v)));
}
inline int16_t saturate16(int32_t v) { return static_cast<int16_t>(v < -32768 ? -32768 : v > 32767 ? 32767 : v); }

// ---- set / load / store ----
template <typename T>
inline __m512i splat(T v) {
  Lanes<T> r;
  for (auto& x : r.v) x = v;
  return pack<__m512i>(r);
}
inline __m512i emu_set1_epi8(char v) { return splat<int8_t>(static_cast<int8_t>(v)); }
inline __m512i emu_set1_epi16(short v) { return splat<int16_t>(v); }
inline __m512i emu_set1_epi32(int v) { return splat<int32_t>(v); }
inline __m512 emu_set1_ps(float v) {
  Lanes<float> r;
  for (auto& x : r.v) x = v;
  return pack<__m512>(r);
}
inline __m512i emu_setzero_si512() { return splat<int32_t>(0); }
inline __m512 emu_setzero_ps() { return emu_set1_ps(0.0f); }
inline __m512i emu_set_epi32(int e15, int e14, int e13, int e12, int e11, int e10, int e9, int e8, int e7, int e6,
                             int e5, int e4, int e3, int e2, int e1, int e0) {
  const int32_t v[16] = {e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11, e12, e13, e14, e15};
  Lanes<int32_t> r;
  std::memcpy(r.v, v, 64);
  return pack<__m512i>(r);
}
inline __m512i emu_loadu_si512(const void* p) {
  __m512i x;
  std::memcpy(&x, p, 64);
  return x;
}
inline __m512 emu_loadu_ps(const float* p) {
  __m512 x;
  std::memcpy(&x, p, 64);
  return x;
}
inline void emu_storeu_ps(float* p, __m512 x) { std::memcpy(p, &x, 64); }

// ---- casts, halves, broadcasts (bytes moved as they are) ----
template <typename W, typename H>
inline H half_of(W x, int i) {
  H h;
  std::memcpy(&h, reinterpret_cast<const char*>(&x) + 32 * (i & 1), 32);
  return h;
}
template <typename W, typename H>
inline W with_half(W x, H h, int i) {
  std::memcpy(reinterpret_cast<char*>(&x) + 32 * (i & 1), &h, 32);
  return x;
}
inline __m256i emu_castsi512_si256(__m512i x) { return half_of<__m512i, __m256i>(x, 0); }
inline __m256i emu_extracti64x4_epi64(__m512i x, int i) { return half_of<__m512i, __m256i>(x, i); }
inline __m256 emu_extractf32x8_ps(__m512 x, int i) { return half_of<__m512, __m256>(x, i); }
// The upper halves of the widening casts are undefined on hardware; zero here.
inline __m512i emu_castsi256_si512(__m256i h) { return with_half(emu_setzero_si512(), h, 0); }
inline __m512 emu_castps256_ps512(__m256 h) { return with_half(emu_setzero_ps(), h, 0); }
inline __m512i emu_inserti64x4(__m512i x, __m256i h, int i) { return with_half(x, h, i); }
inline __m512 emu_insertf32x8(__m512 x, __m256 h, int i) { return with_half(x, h, i); }
inline __m512i emu_broadcast_i64x4(__m256i h) { return with_half(with_half(emu_setzero_si512(), h, 0), h, 1); }
inline __m512i emu_broadcast_i32x4(__m128i q) {
  __m512i x;
  for (int i = 0; i < 4; ++i) std::memcpy(reinterpret_cast<char*>(&x) + 16 * i, &q, 16);
  return x;
}

// ---- integer ----
inline __m512i emu_and_si512(__m512i a, __m512i b) {
  return map_i<uint64_t>(a, b, [](uint64_t x, uint64_t y) { return x & y; });
}
inline __m512i emu_srli_epi16(__m512i a, int n) {
  return map_i<uint16_t>(a, a, [n](uint16_t x, uint16_t) { return static_cast<uint16_t>(n > 15 ? 0 : x >> n); });
}
inline __m512i emu_srli_epi32(__m512i a, int n) {
  return map_i<uint32_t>(a, a, [n](uint32_t x, uint32_t) { return n > 31 ? 0u : x >> n; });
}
inline __m512i emu_add_epi16(__m512i a, __m512i b) {
  return map_i<int16_t>(a, b, [](int16_t x, int16_t y) { return wrap<int16_t>(int64_t{x} + y); });
}
inline __m512i emu_add_epi32(__m512i a, __m512i b) {
  return map_i<int32_t>(a, b, [](int32_t x, int32_t y) { return wrap<int32_t>(int64_t{x} + y); });
}
inline __m512i emu_abs_epi8(__m512i a) {  // |-128| stays 0x80
  return map_i<int8_t>(a, a, [](int8_t x, int8_t) { return wrap<int8_t>(x < 0 ? -int64_t{x} : x); });
}
inline __mmask64 emu_movepi8_mask(__m512i a) {
  const Lanes<int8_t> l = lanes<int8_t>(a);
  __mmask64 k = 0;
  for (int i = 0; i < 64; ++i) k |= static_cast<__mmask64>(l.v[i] < 0) << i;
  return k;
}
inline __m512i emu_mask_sub_epi8(__m512i src, __mmask64 k, __m512i a, __m512i b) {
  const Lanes<int8_t> ls = lanes<int8_t>(src), la = lanes<int8_t>(a), lb = lanes<int8_t>(b);
  Lanes<int8_t> r;
  for (int i = 0; i < 64; ++i) r.v[i] = (k >> i & 1) ? wrap<int8_t>(int64_t{la.v[i]} - lb.v[i]) : ls.v[i];
  return pack<__m512i>(r);
}
// vpmaddubsw: u8 x s8 pairs summed with signed saturation to 16 bits.
inline __m512i emu_maddubs_epi16(__m512i a, __m512i b) {
  const Lanes<uint8_t> la = lanes<uint8_t>(a);
  const Lanes<int8_t> lb = lanes<int8_t>(b);
  Lanes<int16_t> r;
  for (int i = 0; i < 32; ++i)
    r.v[i] = saturate16(la.v[2 * i] * lb.v[2 * i] + la.v[2 * i + 1] * lb.v[2 * i + 1]);
  return pack<__m512i>(r);
}
// vpmaddwd: s16 x s16 pairs summed to 32 bits (wraps only for two -32768 x -32768 products).
inline __m512i emu_madd_epi16(__m512i a, __m512i b) {
  const Lanes<int16_t> la = lanes<int16_t>(a), lb = lanes<int16_t>(b);
  Lanes<int32_t> r;
  for (int i = 0; i < 16; ++i)
    r.v[i] = wrap<int32_t>(int64_t{la.v[2 * i]} * lb.v[2 * i] + int64_t{la.v[2 * i + 1]} * lb.v[2 * i + 1]);
  return pack<__m512i>(r);
}
// vpdpbusd: four u8 x s8 products added to each s32 lane, wrapping, no intermediate saturation. V is the
// 512-bit type (AVX-512-VNNI) or the 256-bit one (AVX-VNNI's VEX form, csrc/cpu/qlinear_avxvnni.cpp).
template <typename V>
inline V dpbusd_lanes(V src, V a, V b) {
  constexpr int kLanes = sizeof(V) / 4;
  int32_t s32[kLanes];
  uint8_t u8[4 * kLanes];
  int8_t s8[4 * kLanes];
  std::memcpy(s32, &src, sizeof(V));
  std::memcpy(u8, &a, sizeof(V));
  std::memcpy(s8, &b, sizeof(V));
  for (int i = 0; i < kLanes; ++i) {
    int64_t s = s32[i];
    for (int j = 0; j < 4; ++j) s += int64_t{u8[4 * i + j]} * s8[4 * i + j];
    s32[i] = wrap<int32_t>(s);
  }
  V r;
  std::memcpy(&r, s32, sizeof(V));
  return r;
}
inline __m512i emu_dpbusd_epi32(__m512i src, __m512i a, __m512i b) { return dpbusd_lanes(src, a, b); }
inline __m256i emu_dpbusd_avx_epi32(__m256i src, __m256i a, __m256i b) { return dpbusd_lanes(src, a, b); }

// ---- float ----
inline __m512 emu_add_ps(__m512 a, __m512 b) {
  return map_f(a, b, [](float x, float y) { return x + y; });
}
inline __m512 emu_fmadd_ps(__m512 a, __m512 b, __m512 c) {
  const Lanes<float> la = lanes<float>(a), lb = lanes<float>(b), lc = lanes<float>(c);
  Lanes<float> r;
  for (int i = 0; i < 16; ++i) r.v[i] = std::fma(la.v[i], lb.v[i], lc.v[i]);
  return pack<__m512>(r);
}
inline __m512 emu_fnmadd_ps(__m512 a, __m512 b, __m512 c) {
  const Lanes<float> la = lanes<float>(a), lb = lanes<float>(b), lc = lanes<float>(c);
  Lanes<float> r;
  for (int i = 0; i < 16; ++i) r.v[i] = std::fma(-la.v[i], lb.v[i], lc.v[i]);
  return pack<__m512>(r);
}
inline __m512 emu_cvtepi32_ps(__m512i a) {  // round to nearest even, as MXCSR's default
  const Lanes<int32_t> l = lanes<int32_t>(a);
  Lanes<float> r;
  for (int i = 0; i < 16; ++i) r.v[i] = static_cast<float>(l.v[i]);
  return pack<__m512>(r);
}
inline __m512 emu_permutexvar_ps(__m512i idx, __m512 a) {
  const Lanes<int32_t> li = lanes<int32_t>(idx);
  const Lanes<float> la = lanes<float>(a);
  Lanes<float> r;
  for (int i = 0; i < 16; ++i) r.v[i] = la.v[li.v[i] & 15];
  return pack<__m512>(r);
}
inline __m512 emu_maskz_permutexvar_ps(__mmask16 k, __m512i idx, __m512 a) {
  const Lanes<float> p = lanes<float>(emu_permutexvar_ps(idx, a));
  Lanes<float> r;
  for (int i = 0; i < 16; ++i) r.v[i] = (k >> i & 1) ? p.v[i] : 0.0f;
  return pack<__m512>(r);
}

}  // namespace qk::emu

#define _mm512_set1_epi8 qk::emu::emu_set1_epi8
#define _mm512_set1_epi16 qk::emu::emu_set1_epi16
#define _mm512_set1_epi32 qk::emu::emu_set1_epi32
#define _mm512_set1_ps qk::emu::emu_set1_ps
#define _mm512_setzero_si512 qk::emu::emu_setzero_si512
#define _mm512_setzero_ps qk::emu::emu_setzero_ps
#define _mm512_set_epi32 qk::emu::emu_set_epi32
#define _mm512_loadu_si512 qk::emu::emu_loadu_si512
#define _mm512_loadu_ps qk::emu::emu_loadu_ps
#define _mm512_storeu_ps qk::emu::emu_storeu_ps
#define _mm512_castsi512_si256 qk::emu::emu_castsi512_si256
#define _mm512_extracti64x4_epi64 qk::emu::emu_extracti64x4_epi64
#define _mm512_extractf32x8_ps qk::emu::emu_extractf32x8_ps
#define _mm512_castsi256_si512 qk::emu::emu_castsi256_si512
#define _mm512_castps256_ps512 qk::emu::emu_castps256_ps512
#define _mm512_inserti64x4 qk::emu::emu_inserti64x4
#define _mm512_insertf32x8 qk::emu::emu_insertf32x8
#define _mm512_broadcast_i64x4 qk::emu::emu_broadcast_i64x4
#define _mm512_broadcast_i32x4 qk::emu::emu_broadcast_i32x4
#define _mm512_and_si512 qk::emu::emu_and_si512
#define _mm512_srli_epi16 qk::emu::emu_srli_epi16
#define _mm512_srli_epi32 qk::emu::emu_srli_epi32
#define _mm512_add_epi16 qk::emu::emu_add_epi16
#define _mm512_add_epi32 qk::emu::emu_add_epi32
#define _mm512_abs_epi8 qk::emu::emu_abs_epi8
#define _mm512_movepi8_mask qk::emu::emu_movepi8_mask
#define _mm512_mask_sub_epi8 qk::emu::emu_mask_sub_epi8
#define _mm512_maddubs_epi16 qk::emu::emu_maddubs_epi16
#define _mm512_madd_epi16 qk::emu::emu_madd_epi16
#define _mm512_dpbusd_epi32 qk::emu::emu_dpbusd_epi32
#define _mm256_dpbusd_avx_epi32 qk::emu::emu_dpbusd_avx_epi32
#define _mm512_add_ps qk::emu::emu_add_ps
#define _mm512_fmadd_ps qk::emu::emu_fmadd_ps
#define _mm512_fnmadd_ps qk::emu::emu_fnmadd_ps
#define _mm512_cvtepi32_ps qk::emu::emu_cvtepi32_ps
#define _mm512_permutexvar_ps qk::emu::emu_permutexvar_ps
#define _mm512_maskz_permutexvar_ps qk::emu::emu_maskz_permutexvar_ps
