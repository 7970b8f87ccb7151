// Torch-facing layer of the CPU quantized-linear kernels (csrc/cpu/qlinear*.cpp): argument checks,
// activation preparation, the choice of instruction set, and at::parallel_for over output tiles.
// Schemas: quantkernels/ops.py (CPU section). Python side: quantkernels/backends/cpu.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <iterator>
#include <string>

#include "bindings/check.h"
#include "cpu/cpu_features.h"
#include "cpu/huge_pages.h"
#include "cpu/qlinear.h"

namespace {

using qk::binding::shape;
using qk::cpu::Isa;

// The instruction set a call runs: the process-wide choice, or the one named by `isa` (tests).
Isa resolve_isa(c10::string_view name) {
  if (name.empty()) return qk::cpu::selected_isa();
  Isa isa;
  const std::string s(name);
  QK_CHECK(qk::cpu::parse_isa(s.c_str(), &isa), "quantkernels cpu: unknown isa '", s,
           "' (expected scalar, avx2, avx_vnni, avx512, avx512_vnni, neon or i8mm)");
  QK_CHECK(qk::cpu::isa_supported(isa), "quantkernels cpu: isa '", s, "' is not supported by this CPU/OS");
  return isa;
}

// The best kernel this build has at or below `isa` (an ISA may lack its own file for one family).
template <class Fn>
Fn kernel_at_or_below(Isa isa, Fn (*table)(Isa)) {
  const Isa x86[] = {Isa::kAvx512Vnni, Isa::kAvx512, Isa::kAvxVnni, Isa::kAvx2, Isa::kScalar};
  const Isa arm[] = {Isa::kI8mm, Isa::kNeon, Isa::kScalar};
  const bool is_arm = isa == Isa::kNeon || isa == Isa::kI8mm;
  bool reached = false;
  for (Isa cand : is_arm ? std::vector<Isa>(std::begin(arm), std::end(arm)) : std::vector<Isa>(std::begin(x86), std::end(x86))) {
    reached = reached || cand == isa;
    if (reached && table(cand)) return table(cand);
  }
  return table(Isa::kScalar);
}

// Runs fn(t0, t1) over [0, tiles) in chunks handed to the threads on demand (an atomic counter)
// rather than one equal slice per thread: on a shared machine a thread that loses its core for a
// while then takes fewer chunks instead of holding up the whole call. The first ~3/4 of the tiles go
// in long chunks of 1/4 of a thread's share (each chunk rebuilds the int8 kernels' activation
// copies, and long chunks keep the L2 tile groups and prefetch whole), the rest in chunks an eighth
// as long, so that the threads finish together. W4A8 m = 32 4096x11008, 2 threads, interleaved A/B
// runs: long chunks of 1/8 of a share were 1-2% faster than ~16 equal chunks per thread, and 1/4
// of a share 1-2% faster again.
// `work_per_tile` (weight bytes x rows) sets how many threads are worth waking: each gets at least
// kMinWorkPerThread, so a small layer runs on the calling thread alone. SmolLM2-sized layers at
// m = 1 (W4A16 g64, through the op, 11:52 UTC, other work on the second core): 576x192 (55 KB of
// weights) 11.7 us on one thread against 12.5 us on two (11.3 us with this rule); from 576x576
// (166 KB) up, two threads were faster in some runs and slower in others on this busy machine, so
// the threshold stays below that.
constexpr int64_t kMinWorkPerThread = 64 << 10;

template <class Fn>
void parallel_over_tiles(int64_t tiles, int64_t work_per_tile, const Fn& fn) {
  const int64_t wanted = std::max<int64_t>(1, tiles * work_per_tile / kMinWorkPerThread);
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), wanted));
  if (threads == 1) {  // no parallel region at all (waking the pool costs microseconds)
    fn(0, tiles);
    return;
  }
  // A multiple of 4 tiles: the kernels' 2- and 4-tile passes then cover the same tiles whatever the
  // thread count, so results are bit-identical for any torch.get_num_threads().
  const int64_t big = (std::max<int64_t>(4, tiles / (threads * 4)) + 3) / 4 * 4;
  const int64_t small = (std::max<int64_t>(4, big / 8) + 3) / 4 * 4;
  const int64_t split = (tiles * 3 / 4) / big * big, nbig = split / big;
  const int64_t chunks = nbig + (tiles - split + small - 1) / small;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, chunks), 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      const int64_t b = c < nbig ? c * big : split + (c - nbig) * small;
      const int64_t e = c < nbig ? b + big : std::min(tiles, b + small);
      fn(b, e);
    }
  });
}

// half_ok: scales (and zeros, in the same dtype) may be float16 as well as float32 (the float-activation op).
void check_common(const at::Tensor& x, const at::Tensor& scales, const std::optional<at::Tensor>& zeros,
                  double zero_point, const std::optional<at::Tensor>& bias, const char* op, bool half_ok) {
  QK_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2, op,
           ": x must be a 2-D float32 CPU tensor [M, K], got ", x.scalar_type(), " ", shape(x), " on ",
           x.device());
  const bool dtype_ok = scales.scalar_type() == at::kFloat || (half_ok && scales.scalar_type() == at::kHalf);
  QK_CHECK(dtype_ok && scales.dim() == 3 && scales.size(2) == qk::cpu::kTileN && scales.is_contiguous(), op,
           ": scales must be contiguous ", half_ok ? "float32 or float16" : "float32", " tile-major [N/8, G, 8], got ",
           scales.scalar_type(), " ", shape(scales));
  if (zeros) {
    QK_CHECK(zeros->scalar_type() == scales.scalar_type() && zeros->sizes() == scales.sizes() &&
                 zeros->is_contiguous(),
             op, ": zeros must be None or contiguous with the dtype and shape of scales (", scales.scalar_type(), " ",
             shape(scales), "), got ", zeros->scalar_type(), " ", shape(*zeros));
  } else {
    QK_CHECK(std::isfinite(zero_point), op, ": zero_point (every zero point, zeros being None) must be finite, got ",
             zero_point);
  }
  const int64_t N = scales.size(0) * qk::cpu::kTileN, G = scales.size(1), K = x.size(1);
  QK_CHECK(N > 0, op, ": N = 8 * scales.size(0) must be positive, got scales ", shape(scales));
  QK_CHECK(G > 0 && K % G == 0, op, ": K = x.size(1) = ", K, " must be divisible by G = scales.size(1) = ", G);
  if (bias) {
    QK_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->size(0) == N && bias->is_contiguous(),
             op, ": bias must be contiguous float32 [N = ", N, "], got ", bias->scalar_type(), " ", shape(*bias));
  }
}

at::Tensor linear_float(const at::Tensor& x_in, const at::Tensor& w, const at::Tensor& scales,
                        const std::optional<at::Tensor>& zeros, double zero_point,
                        const std::optional<at::Tensor>& bias, int64_t bits, c10::string_view isa_name) {
  const char* op = "quantkernels::cpu_linear_float";
  check_common(x_in, scales, zeros, zero_point, bias, op, /*half_ok=*/true);
  QK_CHECK(bits == 4 || bits == 8, op, ": bits must be 4 or 8, got ", bits);
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  const int64_t M = x.size(0), K = x.size(1), G = scales.size(1), N = scales.size(0) * qk::cpu::kTileN, per = 32 / bits;
  QK_CHECK((K / G) % per == 0, op, ": the group length K / G = ", K / G, " must be a multiple of ", per);
  QK_CHECK(w.scalar_type() == at::kInt && w.is_contiguous() && w.numel() == N * K * bits / 32, op,
           ": w must be the contiguous int32 float layout [N/8, K*bits/32, 8] = [", N / 8, ", ", K * bits / 32,
           ", 8], got ", w.scalar_type(), " ", shape(w));
  const Isa isa = resolve_isa(isa_name);
  auto out = at::empty({M, N}, x.options());
  if (M == 0) return out;
  const int64_t ldxs = qk::cpu::staggered_stride(K, sizeof(float));
  auto xs = at::empty({M, ldxs}, x.options());
  auto xsum = at::empty({M, G}, x.options());
  const float* xp = x.data_ptr<float>();
  const int64_t ldx = x.stride(0);
  at::parallel_for(0, M, 1, [&](int64_t m0, int64_t m1) {
    qk::cpu::prepare_float_activations(xp + m0 * ldx, ldx, m1 - m0, K, G, static_cast<int>(bits),
                                       xs.data_ptr<float>() + m0 * ldxs, ldxs, xsum.data_ptr<float>() + m0 * G);
  });
  qk::cpu::FloatLinearArgs a;
  a.w = reinterpret_cast<const uint32_t*>(w.data_ptr<int32_t>());
  a.scales = scales.data_ptr();
  a.zeros = zeros ? zeros->data_ptr() : nullptr;
  a.params_fp16 = scales.scalar_type() == at::kHalf;
  a.zero = static_cast<float>(zero_point);
  a.bias = bias ? bias->data_ptr<float>() : nullptr;
  a.xs = xs.data_ptr<float>();
  a.xsum = xsum.data_ptr<float>();
  a.out = out.data_ptr<float>();
  a.M = M, a.N = N, a.K = K, a.G = G, a.ldx = ldxs, a.bits = static_cast<int>(bits);
  const auto fn = kernel_at_or_below(isa, qk::cpu::float_tiles_for);
  parallel_over_tiles(N / qk::cpu::kTileN, M * K * bits, [&](int64_t t0, int64_t t1) { fn(a, t0, t1); });
  return out;
}

at::Tensor linear_int8(const at::Tensor& x_in, const at::Tensor& w, const at::Tensor& scales,
                       const std::optional<at::Tensor>& zeros, double zero_point,
                       const std::optional<at::Tensor>& bias, int64_t bits, int64_t act_group_size,
                       c10::string_view isa_name) {
  const char* op = "quantkernels::cpu_linear_int8";
  using qk::cpu::kBlockK;
  check_common(x_in, scales, zeros, zero_point, bias, op, /*half_ok=*/false);
  QK_CHECK(bits == 4 || bits == 8, op, ": bits must be 4 or 8, got ", bits);
  QK_CHECK(act_group_size == -1 || act_group_size == kBlockK, op, ": act_group_size must be -1 or 32, got ",
           act_group_size);
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  const int64_t M = x.size(0), K = x.size(1), G = scales.size(1), N = scales.size(0) * qk::cpu::kTileN;
  const int64_t Kp = (K + kBlockK - 1) / kBlockK * kBlockK, KB = Kp / kBlockK;
  const bool per_block = act_group_size == kBlockK;
  QK_CHECK(!per_block || K % kBlockK == 0, op, ": per-32-column activation scales need K % 32 == 0, got K = ", K);
  QK_CHECK(G == 1 || (K / G) % kBlockK == 0, op, ": the group length K / G = ", K / G,
           " must be a multiple of 32 (or G = 1)");
  const int64_t wbytes = bits == 4 ? N * Kp / 2 : N * Kp;
  QK_CHECK(w.scalar_type() == (bits == 4 ? at::kByte : at::kChar) && w.is_contiguous() && w.numel() == wbytes,
           op, ": w must be the contiguous ", bits == 4 ? "uint8" : "int8", " int8-activation layout of ", wbytes,
           " bytes (N = ", N, ", K padded to ", Kp, "), got ", w.scalar_type(), " ", shape(w));
  const Isa isa = resolve_isa(isa_name);
  auto out = at::empty({M, N}, x.options());
  if (M == 0) return out;
  const int64_t ldq = qk::cpu::staggered_stride(Kp, 1);
  auto xq = at::empty({M, ldq}, x.options().dtype(at::kChar));
  auto xscale = at::empty({M, per_block ? KB : 1}, x.options());
  auto xblock = at::empty({M, KB}, x.options().dtype(at::kInt));
  const float* xp = x.data_ptr<float>();
  const int64_t ldx = x.stride(0), A = xscale.size(1);
  at::parallel_for(0, M, 1, [&](int64_t m0, int64_t m1) {
    qk::cpu::quantize_activations_int8(xp + m0 * ldx, ldx, m1 - m0, K, Kp, per_block, xq.data_ptr<int8_t>() + m0 * ldq,
                                       ldq, xscale.data_ptr<float>() + m0 * A, xblock.data_ptr<int32_t>() + m0 * KB);
  });
  qk::cpu::Int8LinearArgs a;
  a.w = static_cast<const uint8_t*>(w.data_ptr());
  a.scales = scales.data_ptr<float>();
  a.zeros = zeros ? zeros->data_ptr<float>() : nullptr;
  a.zero = static_cast<float>(zero_point);
  a.bias = bias ? bias->data_ptr<float>() : nullptr;
  a.xq = xq.data_ptr<int8_t>();
  a.xscale = xscale.data_ptr<float>();
  a.xblock = xblock.data_ptr<int32_t>();
  a.out = out.data_ptr<float>();
  a.M = M, a.N = N, a.K = K, a.Kp = Kp, a.G = G, a.ldq = ldq;
  a.segment = qk::cpu::int8_segment_length(K, Kp, G, per_block);
  a.bits = static_cast<int>(bits);
  a.act_per_block = per_block;
  const auto fn = kernel_at_or_below(isa, qk::cpu::int8_tiles_for);
  parallel_over_tiles(N / qk::cpu::kTileN, M * Kp * bits, [&](int64_t t0, int64_t t1) { fn(a, t0, t1); });
  return out;
}

// A uint8 [nbytes] CPU tensor for a repacked weight: on transparent huge pages where the OS grants
// them (cpu/huge_pages.h: untouched, 2 MiB aligned, advised before the repack first writes it), an
// ordinary allocation otherwise.
at::Tensor empty_huge_pages(int64_t nbytes) {
  QK_CHECK(nbytes >= 0, "quantkernels::cpu_empty_huge_pages: nbytes must be >= 0, got ", nbytes);
  const auto opts = at::TensorOptions().dtype(at::kByte).device(at::kCPU);
  void* p = qk::cpu::huge_page_alloc(static_cast<size_t>(nbytes));
  if (p == nullptr) return at::empty({nbytes}, opts);
  const size_t n = static_cast<size_t>(nbytes);
  return at::from_blob(p, {nbytes}, [n](void* q) { qk::cpu::huge_page_free(q, n); }, opts);
}

bool isa_supported(c10::string_view name) {
  Isa isa;
  const std::string s(name);
  return qk::cpu::parse_isa(s.c_str(), &isa) && qk::cpu::isa_supported(isa);
}

}  // namespace

TORCH_LIBRARY_IMPL(quantkernels, CPU, m) {
  m.impl("cpu_linear_float", &linear_float);
  m.impl("cpu_linear_int8", &linear_int8);
}

TORCH_LIBRARY_IMPL(quantkernels, CompositeExplicitAutograd, m) {
  m.impl("cpu_isa_supported", &isa_supported);
  m.impl("cpu_empty_huge_pages", &empty_huge_pages);
}
