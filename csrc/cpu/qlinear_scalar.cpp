// Portable scalar twin of every quantized-linear kernel (see qlinear.h for the layouts and the
// math). It serves CPUs without a SIMD path and is the oracle of the NEON harness
// (tests/cpu_harness/). Test: PYTHONPATH=$PWD python -m pytest -q tests/test_cpu_backend.py
#include <algorithm>
#include <cstring>

#include "cpu/qlinear.h"

namespace qk::cpu {

void linear_float_tiles_scalar(const FloatLinearArgs& a, int64_t t0, int64_t t1) {
  const int per = 32 / a.bits;
  const uint32_t mask = (1u << a.bits) - 1;
  const int64_t rows = a.K / per, group_rows = rows / a.G;
  for (int64_t t = t0; t < t1; ++t) {
    const uint32_t* wt = a.w + t * rows * kTileN;
    for (int64_t m = 0; m < a.M; ++m) {
      const float* xs = a.xs + m * a.ldx;
      float out[kTileN];
      for (int i = 0; i < kTileN; ++i) out[i] = a.bias ? a.bias[t * kTileN + i] : 0.0f;
      for (int64_t g = 0; g < a.G; ++g) {
        float acc[kTileN] = {};
        for (int64_t r = g * group_rows; r < (g + 1) * group_rows; ++r) {
          for (int i = 0; i < kTileN; ++i) {
            const uint32_t w = wt[r * kTileN + i];
            for (int j = 0; j < per; ++j) {
              // The same pre-shifted arithmetic as the SIMD paths: q * 2^(bits*j) times the
              // pre-scaled activation.
              const uint32_t q = j == per - 1 ? w >> (a.bits * j) : w & (mask << (a.bits * j));
              acc[i] += static_cast<float>(static_cast<int32_t>(q)) * xs[r * per + j];
            }
          }
        }
        const float xsum = a.xsum[m * a.G + g];
        for (int i = 0; i < kTileN; ++i) {
          const int64_t n = t * kTileN + i;
          const int64_t p = param_index(a.G, g, n);
          out[i] += param_at(a.scales, a.params_fp16, p) * (acc[i] - zero_at(a.zeros, a.params_fp16, a.zero, p) * xsum);
        }
      }
      std::memcpy(a.out + m * a.N + t * kTileN, out, sizeof(out));
    }
  }
}

namespace {

// Integer dot product of channel i of tile t with row xq over columns [k0, k1) (multiples of 32).
int32_t dot_int8_scalar(const Int8LinearArgs& a, int64_t t, int i, const int8_t* xq, int64_t k0, int64_t k1) {
  const int64_t KB = a.Kp / kBlockK;
  int32_t s = 0;
  for (int64_t kb = k0 / kBlockK; kb < k1 / kBlockK; ++kb) {
    if (a.bits == 4) {
      const uint8_t* blk = a.w + (t * KB + kb) * 128 + (i % 4) * 32 + (i / 4) * 16;
      for (int c = 0; c < 16; ++c) {
        s += (blk[c] & 0xF) * xq[kb * kBlockK + c];
        s += (blk[c] >> 4) * xq[kb * kBlockK + 16 + c];
      }
    } else {
      const int8_t* blk = reinterpret_cast<const int8_t*>(a.w) + ((t * KB + kb) * kTileN + i) * kBlockK;
      for (int c = 0; c < kBlockK; ++c) s += blk[c] * xq[kb * kBlockK + c];
    }
  }
  return s;
}

}  // namespace

void linear_int8_tiles_scalar(const Int8LinearArgs& a, int64_t t0, int64_t t1) {
  const int64_t KB = a.Kp / kBlockK;
  const int64_t group = a.G == 1 ? a.Kp : a.K / a.G;
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t m = 0; m < a.M; ++m) {
      const int8_t* xq = a.xq + m * a.ldq;
      float out[kTileN];
      for (int i = 0; i < kTileN; ++i) out[i] = a.bias ? a.bias[t * kTileN + i] : 0.0f;
      for (int64_t k0 = 0; k0 < a.Kp; k0 += a.segment) {
        const int64_t k1 = std::min(a.Kp, k0 + a.segment);
        const int64_t g = k0 / group;
        int32_t xseg = 0;
        for (int64_t b = k0 / kBlockK; b < k1 / kBlockK; ++b) xseg += a.xblock[m * KB + b];
        const float xscale = a.xscale[a.act_per_block ? m * KB + k0 / kBlockK : m];
        for (int i = 0; i < kTileN; ++i) {
          const int64_t n = t * kTileN + i;
          const float d = static_cast<float>(dot_int8_scalar(a, t, i, xq, k0, k1));
          const int64_t p = param_index(a.G, g, n);
          out[i] += (d - zero_at(a.zeros, false, a.zero, p) * static_cast<float>(xseg)) * (a.scales[p] * xscale);
        }
      }
      std::memcpy(a.out + m * a.N + t * kTileN, out, sizeof(out));
    }
  }
}

}  // namespace qk::cpu
