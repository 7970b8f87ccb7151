// Thin torch binding of the CUDA W4A16 / W8A16 kernels (csrc/cuda/wxa16.h): argument checks,
// then a launch on the caller's current stream. Schemas live in quantkernels/ops.py (CUDA section);
// the layouts are built by quantkernels/backends/cuda.py.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <array>
#include <atomic>
#include <string>

#include "bindings/check.h"
#include "cuda/wxa16.h"

namespace {

using qk::cuda::ActDtype;

using qk::binding::shape;

ActDtype act_dtype(const at::Tensor& t, const char* name) {
  QK_CHECK(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16, name,
              " must be float16 or bfloat16, got ", t.scalar_type());
  return t.scalar_type() == at::kHalf ? ActDtype::kF16 : ActDtype::kBF16;
}

void check_cuda(const at::Tensor& t, const char* name, const at::Device& dev) {
  QK_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
  QK_CHECK(t.device() == dev, name, " is on ", t.device(), " but the weight is on ", dev);
}

// Multiprocessor count of a device, queried once (not a sync, but not free either).
int num_sms(int device) {
  static std::array<std::atomic<int>, 64> cache{};
  if (device < 0 || device >= 64) device = 0;
  int v = cache[device].load(std::memory_order_relaxed);
  if (v == 0) {
    QK_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device) == cudaSuccess,
                "cudaDeviceGetAttribute(MultiProcessorCount) failed");
    cache[device].store(v, std::memory_order_relaxed);
  }
  return v;
}

struct Layout {
  int64_t n, k, groups;
};

// Checks the shuffled weight, scales, zeros and group table against each other; returns N, K, G.
Layout check_layout(const at::Tensor& qweight, const at::Tensor& scales, const std::optional<at::Tensor>& zeros,
                    const std::optional<at::Tensor>& kgroup, int64_t group_size, int64_t bits) {
  QK_CHECK(bits == 4 || bits == 8, "bits must be 4 or 8 for the CUDA kernels, got ", bits);
  const int64_t kc = qk::cuda::chunk_cols(static_cast<int>(bits));
  QK_CHECK(qweight.scalar_type() == at::kInt && qweight.dim() == 4 && qweight.size(2) == 32 &&
                  qweight.size(3) == 4 && qweight.is_contiguous(),
              "qweight must be a contiguous int32 tensor [N/16, K/", kc, ", 32, 4] (the mma-shuffled layout), got ",
              qweight.scalar_type(), " ", shape(qweight));
  const at::Device dev = qweight.device();
  QK_CHECK(qweight.is_cuda(), "qweight must be a CUDA tensor, got device ", dev);
  const int64_t n = qweight.size(0) * 16, k = qweight.size(1) * kc;
  QK_CHECK(n > 0 && k > 0, "qweight is empty: ", shape(qweight));
  QK_CHECK(group_size > 0 && group_size % 16 == 0 && k % group_size == 0,
              "group_size must be a positive multiple of 16 that divides K=", k, " (K for per-channel), got ",
              group_size);
  check_cuda(scales, "scales", dev);
  QK_CHECK(scales.dim() == 4 && scales.size(1) == n / 16 && scales.size(2) == 8 && scales.size(3) == 2 &&
                  scales.is_contiguous(),
              "scales must be contiguous [G, N/16=", n / 16, ", 8, 2], got ", shape(scales));
  act_dtype(scales, "scales");
  const int64_t groups = scales.size(0);
  if (zeros) {
    check_cuda(*zeros, "zeros", dev);
    QK_CHECK(zeros->sizes().equals(scales.sizes()) && zeros->scalar_type() == scales.scalar_type() &&
                    zeros->is_contiguous(),
                "zeros must match scales (", shape(scales), " ", scales.scalar_type(), "), got ", shape(*zeros),
                " ", zeros->scalar_type());
  }
  if (kgroup) {
    check_cuda(*kgroup, "kgroup", dev);
    QK_CHECK(kgroup->scalar_type() == at::kInt && kgroup->dim() == 1 && kgroup->size(0) == k / 16 &&
                    kgroup->is_contiguous(),
                "kgroup must be a contiguous int32 tensor [K/16=", k / 16, "], got ", kgroup->scalar_type(), " ",
                shape(*kgroup));
  } else {
    QK_CHECK(groups == k / group_size, "scales has ", groups, " groups but K=", k, " / group_size=", group_size,
                " = ", k / group_size);
  }
  return {n, k, groups};
}

at::Tensor wxa16_gemm(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                      const std::optional<at::Tensor>& zeros, const std::optional<at::Tensor>& kgroup,
                      int64_t group_size, const std::optional<at::Tensor>& bias, int64_t bits,
                      const std::optional<at::Tensor>& workspace, int64_t tile, int64_t ksplit) {
  const Layout L = check_layout(qweight, scales, zeros, kgroup, group_size, bits);
  QK_CHECK(tile >= -1 && tile < qk::cuda::wxa16_gemm_num_tiles(), "tile must be -1 (auto) or in [0, ",
              qk::cuda::wxa16_gemm_num_tiles(), "), got ", tile);
  check_cuda(x, "x", qweight.device());
  const ActDtype dt = act_dtype(x, "x");
  QK_CHECK(x.scalar_type() == scales.scalar_type(), "x (", x.scalar_type(), ") and scales (",
              scales.scalar_type(), ") must have the same dtype");
  QK_CHECK(x.dim() == 2 && x.size(1) == L.k, "x must be [M, K=", L.k, "], got ", shape(x));
  if (bias) {
    check_cuda(*bias, "bias", qweight.device());
    QK_CHECK(bias->dim() == 1 && bias->size(0) == L.n && bias->scalar_type() == x.scalar_type() &&
                    bias->is_contiguous(),
                "bias must be a contiguous [N=", L.n, "] ", x.scalar_type(), " tensor, got ", shape(*bias), " ",
                bias->scalar_type());
  }
  qk::cuda::SplitK split;
  split.ksplit = static_cast<int>(ksplit);
  QK_CHECK(ksplit == -1 || (ksplit >= 1 && ksplit <= 64), "ksplit must be -1 (auto) or in [1, 64], got ", ksplit);
  if (workspace) {
    check_cuda(*workspace, "workspace", qweight.device());
    QK_CHECK(workspace->scalar_type() == at::kFloat && workspace->is_contiguous(),
                "workspace must be a contiguous float32 tensor of zeros, got ", workspace->scalar_type());
    split.ws = workspace->data_ptr<float>();
    split.ws_numel = workspace->numel();
  }
  const int64_t need = qk::cuda::wxa16_gemm_workspace_floats(static_cast<int>(x.size(0)), static_cast<int>(L.n));
  QK_CHECK(ksplit <= 1 || split.ws_numel >= need, "ksplit=", ksplit, " needs a zeroed float32 workspace of at least ",
              need, " elements, got ", split.ws_numel);
  const c10::cuda::CUDAGuard guard(qweight.device());
  const int64_t m = x.size(0);
  at::Tensor out = at::empty({m, L.n}, x.options());
  if (m == 0) return out;
  // The kernel reads 16-byte runs of each row: unit column stride, row stride a multiple of 8.
  at::Tensor xc = x;
  if (x.stride(1) != 1 || x.stride(0) % 8 != 0 || reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0)
    xc = x.contiguous();
  if (reinterpret_cast<uintptr_t>(xc.data_ptr()) % 16 != 0) xc = xc.clone();
  QK_CHECK(m <= INT32_MAX / 2, "x has too many rows: ", m);
  const int sms = num_sms(qweight.device().index());
  const cudaError_t err = qk::cuda::wxa16_gemm(
      xc.data_ptr(), xc.stride(0), qweight.data_ptr<int32_t>(), static_cast<const uint32_t*>(scales.data_ptr()),
      zeros ? static_cast<const uint32_t*>(zeros->data_ptr()) : nullptr,
      kgroup ? kgroup->data_ptr<int32_t>() : nullptr, static_cast<int>(group_size),
      bias ? bias->data_ptr() : nullptr, out.data_ptr(), static_cast<int>(m), static_cast<int>(L.n),
      static_cast<int>(L.k), static_cast<int>(bits), dt, sms, static_cast<int>(tile), split, c10::cuda::getCurrentCUDAStream().stream());
  QK_CHECK(err == cudaSuccess, "quantkernels::cuda_wxa16_gemm failed: ", cudaGetErrorString(err));
  return out;
}

at::Tensor wxa16_dequantize(const at::Tensor& qweight, const at::Tensor& scales,
                            const std::optional<at::Tensor>& zeros, const std::optional<at::Tensor>& kgroup,
                            int64_t group_size, int64_t bits) {
  const Layout L = check_layout(qweight, scales, zeros, kgroup, group_size, bits);
  const c10::cuda::CUDAGuard guard(qweight.device());
  at::Tensor w = at::empty({L.n, L.k}, scales.options());
  const cudaError_t err = qk::cuda::wxa16_dequantize(
      qweight.data_ptr<int32_t>(), static_cast<const uint32_t*>(scales.data_ptr()),
      zeros ? static_cast<const uint32_t*>(zeros->data_ptr()) : nullptr,
      kgroup ? kgroup->data_ptr<int32_t>() : nullptr, static_cast<int>(group_size), w.data_ptr(),
      static_cast<int>(L.n), static_cast<int>(L.k), static_cast<int>(bits), act_dtype(scales, "scales"),
      c10::cuda::getCurrentCUDAStream().stream());
  QK_CHECK(err == cudaSuccess, "quantkernels::cuda_wxa16_dequantize failed: ", cudaGetErrorString(err));
  return w;
}

int64_t wxa16_gemm_tile(const at::Tensor& qweight, int64_t m, int64_t n, int64_t k, int64_t bits, bool with_workspace,
                        int64_t smem_optin) {
  QK_CHECK(qweight.is_cuda(), "qweight must be a CUDA tensor, got device ", qweight.device());
  QK_CHECK(m >= 1 && m <= INT32_MAX / 2 && n >= 16 && n <= INT32_MAX && k >= 1 && k <= INT32_MAX, "m, n, k must be ",
           "positive 32-bit sizes (n >= 16), got ", m, ", ", n, ", ", k);
  QK_CHECK(bits == 4 || bits == 8, "bits must be 4 or 8, got ", bits);
  QK_CHECK(smem_optin >= 0 && smem_optin <= INT32_MAX, "smem_optin must be 0 (the device's) or a byte count, got ",
           smem_optin);
  const c10::cuda::CUDAGuard guard(qweight.device());
  const int tile = qk::cuda::wxa16_gemm_auto_tile(static_cast<int>(m), static_cast<int>(n), static_cast<int>(k),
                                                  static_cast<int>(bits), with_workspace,
                                                  num_sms(qweight.device().index()), static_cast<int>(smem_optin));
  QK_CHECK(tile >= 0, "no tile for n=", n, ", k=", k, ", bits=", bits, ": n % 16 == 0 and k % ", bits == 4 ? 64 : 32,
           " == 0 are required");
  return tile;
}

// ---- The Hopper wgmma GEMM (csrc/cuda/wxa16_gemm_sm90.cu): same arguments as wxa16_gemm, `config`
// in place of `tile`; only where cuda_wxa16_wgmma_available says so.

bool wxa16_wgmma_available(const at::Tensor& qweight) {
  QK_CHECK(qweight.is_cuda(), "qweight must be a CUDA tensor, got device ", qweight.device());
  static std::array<std::atomic<int>, 64> cache{};  // 0: not asked yet, 1: yes, 2: no
  const int dev = qweight.device().index();
  std::atomic<int>* slot = dev >= 0 && dev < 64 ? &cache[dev] : nullptr;
  if (slot != nullptr && slot->load(std::memory_order_relaxed) != 0) return slot->load() == 1;
  const c10::cuda::CUDAGuard guard(qweight.device());
  const bool ok = qk::cuda::wxa16_gemm_wgmma_available();
  if (slot != nullptr) slot->store(ok ? 1 : 2, std::memory_order_relaxed);
  return ok;
}

at::Tensor wxa16_gemm_wgmma(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                            const std::optional<at::Tensor>& zeros, const std::optional<at::Tensor>& kgroup,
                            int64_t group_size, const std::optional<at::Tensor>& bias, int64_t bits,
                            const std::optional<at::Tensor>& workspace, int64_t config, int64_t ksplit) {
  const Layout L = check_layout(qweight, scales, zeros, kgroup, group_size, bits);
  QK_CHECK(L.k % 64 == 0, "the wgmma GEMM needs K % 64 == 0, got K=", L.k);
  QK_CHECK(config >= -1 && config < qk::cuda::wxa16_gemm_wgmma_num_configs(), "config must be -1 (auto) or in [0, ",
           qk::cuda::wxa16_gemm_wgmma_num_configs(), "), got ", config);
  QK_CHECK(wxa16_wgmma_available(qweight),
           "the wgmma GEMM needs a Hopper GPU (sm_90) and an extension built for sm_90a (TORCH_CUDA_ARCH_LIST=9.0a)");
  // The same x / bias / workspace rules as cuda_wxa16_gemm: one place states them.
  check_cuda(x, "x", qweight.device());
  const ActDtype dt = act_dtype(x, "x");
  QK_CHECK(x.scalar_type() == scales.scalar_type() && x.dim() == 2 && x.size(1) == L.k, "x must be [M, K=", L.k,
           "] ", scales.scalar_type(), " (the dtype of scales), got ", shape(x), " ", x.scalar_type());
  if (bias) {
    check_cuda(*bias, "bias", qweight.device());
    QK_CHECK(bias->dim() == 1 && bias->size(0) == L.n && bias->scalar_type() == x.scalar_type() &&
                 bias->is_contiguous(),
             "bias must be a contiguous [N=", L.n, "] ", x.scalar_type(), " tensor, got ", shape(*bias), " ",
             bias->scalar_type());
  }
  QK_CHECK(ksplit >= -1 && ksplit <= 8,
           "ksplit must be -1 (auto), 0 (stream-K) or 1-8 (blocks of a cluster per output tile), got ", ksplit);
  qk::cuda::SplitK split;
  split.ksplit = static_cast<int>(ksplit);
  if (workspace) {
    check_cuda(*workspace, "workspace", qweight.device());
    QK_CHECK(workspace->scalar_type() == at::kFloat && workspace->is_contiguous(),
             "workspace must be a contiguous float32 tensor of zeros, got ", workspace->scalar_type());
    split.ws = workspace->data_ptr<float>();
    split.ws_numel = workspace->numel();
  }
  const int64_t m = x.size(0);
  QK_CHECK(m <= INT32_MAX / 2, "x has too many rows: ", m);
  QK_CHECK(ksplit != 0 || workspace, "ksplit=0 (stream-K) needs a zeroed float32 workspace (a wave of partial tiles: ",
           qk::cuda::wxa16_gemm_wgmma_workspace_floats(static_cast<int>(m), static_cast<int>(L.n),
                                                       num_sms(qweight.device().index())),
           " elements for this call)");
  const c10::cuda::CUDAGuard guard(qweight.device());
  at::Tensor out = at::empty({m, L.n}, x.options());
  if (m == 0) return out;
  // The column pre-pass reads 4-byte pairs: unit column stride, even row stride, 4-byte aligned.
  at::Tensor xc = x;
  if (x.stride(1) != 1 || x.stride(0) % 2 != 0 || reinterpret_cast<uintptr_t>(x.data_ptr()) % 4 != 0)
    xc = x.contiguous();
  at::Tensor xp = at::empty({qk::cuda::wxa16_gemm_wgmma_scratch_rows(m), L.k}, x.options());  // x in the kernel's tiles
  const cudaError_t err = qk::cuda::wxa16_gemm_wgmma(
      xc.data_ptr(), xc.stride(0), xp.data_ptr(), qweight.data_ptr<int32_t>(),
      static_cast<const uint32_t*>(scales.data_ptr()), zeros ? static_cast<const uint32_t*>(zeros->data_ptr()) : nullptr,
      kgroup ? kgroup->data_ptr<int32_t>() : nullptr, static_cast<int>(group_size), bias ? bias->data_ptr() : nullptr,
      out.data_ptr(), static_cast<int>(m), static_cast<int>(L.n), static_cast<int>(L.k), static_cast<int>(bits), dt,
      num_sms(qweight.device().index()), static_cast<int>(config), split, c10::cuda::getCurrentCUDAStream().stream());
  QK_CHECK(err == cudaSuccess, "quantkernels::cuda_wxa16_gemm_wgmma failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(quantkernels, CUDA, m) {
  m.impl("cuda_wxa16_gemm", &wxa16_gemm);
  m.impl("cuda_wxa16_dequantize", &wxa16_dequantize);
  m.impl("cuda_wxa16_gemm_tile", &wxa16_gemm_tile);
  m.impl("cuda_wxa16_gemm_wgmma", &wxa16_gemm_wgmma);
  m.impl("cuda_wxa16_wgmma_available", &wxa16_wgmma_available);
}
