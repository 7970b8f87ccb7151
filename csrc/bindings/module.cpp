// The Python module object of quantkernels._C: build information only. Ops are registered with the
// dispatcher by the other files in this folder (schemas are defined in quantkernels/ops.py).
#include <torch/extension.h>

#include <cstdlib>
#include <string>

#include "cpu/cpu_features.h"
#include "cpu/qlinear.h"

namespace {

// The instruction sets this build has kernels for, by the names QUANTKERNELS_CPU_ISA accepts.
std::string compiled_isas() {
  std::string names;
  for (qk::cpu::Isa isa : qk::cpu::kAllIsas) {
    if (!qk::cpu::float_tiles_for(isa) || !qk::cpu::int8_tiles_for(isa)) continue;
    names += (names.empty() ? "" : ",") + std::string(qk::cpu::isa_name(isa));
  }
  return names;
}

pybind11::dict build_info() {
  pybind11::dict d;
  d["torch_version"] = QK_TORCH_VERSION;
  d["cpu_isas_compiled"] = compiled_isas();
  const char* env = std::getenv("QUANTKERNELS_CPU_ISA");
  d["cpu_isa_env"] = env ? env : "";
  d["cpu_isa_env_status"] = qk::cpu::isa_env_status();
  d["cpu_isa_best"] = qk::cpu::isa_name(qk::cpu::best_supported_isa());
  d["cpu_isa_selected"] = qk::cpu::isa_name(qk::cpu::selected_isa());
  // Whether the AVX2 int4 GEMV may read codes as denormal floats (AMD cores; see cpu_features.h).
  d["cpu_fast_denormals"] = qk::cpu::features().fast_denormals;
#ifdef _OPENMP
  d["openmp"] = true;  // at::parallel_for in the bindings runs on torch's OpenMP threads
#else
  d["openmp"] = false;  // at::parallel_for compiles to a serial loop: one thread whatever torch says
#endif
#ifdef QK_WITH_CUDA
  d["cuda"] = true;
  d["cuda_archs"] = QK_CUDA_ARCHS;
#else
  d["cuda"] = false;
  d["cuda_archs"] = "";
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "quantkernels native kernels (see quantkernels/ops.py for the op schemas)";
  m.def("build_info", &build_info, "How this extension was built and what the CPU supports");
}
