// The Python module object of quantkernels._C: build information only. Ops are registered with the
// dispatcher by the other files in this folder (schemas are defined in quantkernels/ops.py).
#include <torch/extension.h>

#include "cpu/cpu_features.h"

namespace {

pybind11::dict build_info() {
  pybind11::dict d;
  d["torch_version"] = QK_TORCH_VERSION;
  d["cpu_isas_compiled"] = QK_CPU_ISAS;
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
