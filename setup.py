"""Builds quantkernels and its one extension, ``quantkernels._C``.

Sources, by convention (no list to keep in sync):

* ``csrc/bindings/*.cpp``: the thin torch-facing layer (argument checks, dispatcher registration).
  ``csrc/bindings/cuda_*.cpp`` only in a CUDA build.
* ``csrc/cpu/*.cpp``: torch-free CPU kernels. A file named ``*_<isa>.cpp`` is compiled on its own
  with exactly that instruction set's flags (table ``CPU_ISA_FLAGS``) and linked in; runtime
  dispatch (``csrc/cpu/cpu_features.cpp``) only calls it on a CPU and OS that support it.
* ``csrc/cuda/*.cu``: torch-free CUDA kernels, in a CUDA build only. Files ending ``_sm90.cu`` hold
  Hopper-only code, guarded inside by ``__CUDA_ARCH__`` so the other architectures compile empty.

Environment:

* ``QUANTKERNELS_BUILD_CUDA=0/1``: force the CUDA part off/on (default: on when a CUDA toolkit and a
  CUDA-enabled torch are both present).
* ``TORCH_CUDA_ARCH_LIST``: honoured; default ``8.0;8.6;8.9;9.0a``.
* ``MAX_JOBS``: parallel compile jobs (ninja, and the ISA objects).
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
import platform
import shlex
import subprocess
import sys
import sysconfig

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686")
IS_ARM = platform.machine().lower() in ("aarch64", "arm64")

# Per-instruction-set compile flags, keyed by the file-name suffix. Files for another architecture
# are skipped.
CPU_ISA_FLAGS = {
    "avx2": (IS_X86, ["-mavx2", "-mfma", "-mf16c"]),
    "avxvnni": (IS_X86, ["-mavx2", "-mfma", "-mf16c", "-mavxvnni"]),
    "avx512": (IS_X86, ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma", "-mf16c"]),
    "avx512vnni": (
        IS_X86,
        ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mavx512bf16", "-mfma", "-mf16c"],
    ),
    "neon": (IS_ARM, ["-march=armv8.2-a+dotprod+fp16"]),
    "i8mm": (IS_ARM, ["-march=armv8.6-a+dotprod+i8mm+fp16"]),
}
BASE_CXXFLAGS = ["-O3", "-std=c++17", "-fPIC", "-fno-strict-aliasing", "-Wall"]
DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0a"


def _isa_of(path: str):
    stem = os.path.splitext(os.path.basename(path))[0]
    suffix = stem.rsplit("_", 1)[-1]
    return suffix if suffix in CPU_ISA_FLAGS else None


def _want_cuda(torch, cuda_home) -> bool:
    env = os.environ.get("QUANTKERNELS_BUILD_CUDA")
    if env is not None:
        return env.strip() not in ("0", "", "false", "False")
    return cuda_home is not None and torch.version.cuda is not None


def _compile_isa_objects(sources, build_dir, cxx):
    """Compile each ISA file alone with its own flags; returns the object paths."""
    os.makedirs(build_dir, exist_ok=True)
    headers = glob.glob(os.path.join(ROOT, "csrc", "**", "*.h"), recursive=True)
    newest_header = max((os.path.getmtime(h) for h in headers), default=0)
    jobs = []
    for src in sources:
        isa = _isa_of(src)
        flags = BASE_CXXFLAGS + (CPU_ISA_FLAGS[isa][1] if isa else [])
        obj = os.path.join(build_dir, os.path.basename(src) + ".o")
        fresh = os.path.exists(obj) and os.path.getmtime(obj) >= max(os.path.getmtime(src), newest_header)
        cmd = [*shlex.split(cxx), *flags, "-I", os.path.join(ROOT, "csrc"), "-c", src, "-o", obj]
        jobs.append((obj, None if fresh else cmd))
    workers = int(os.environ.get("MAX_JOBS", os.cpu_count() or 1))

    def run(job):
        obj, cmd = job
        if cmd is not None:
            print(" ".join(cmd), flush=True)
            subprocess.check_call(cmd)
        return obj

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(run, jobs))


def make_ext_modules():
    import torch
    from torch.utils import cpp_extension

    cpu_sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    cpu_sources = [s for s in cpu_sources if _isa_of(s) is None or CPU_ISA_FLAGS[_isa_of(s)][0]]
    bindings = sorted(glob.glob(os.path.join(ROOT, "csrc", "bindings", "*.cpp")))
    with_cuda = _want_cuda(torch, cpp_extension.CUDA_HOME)
    if not with_cuda:
        bindings = [b for b in bindings if not os.path.basename(b).startswith("cuda_")]

    rel = lambda paths: [os.path.relpath(p, ROOT) for p in paths]  # noqa: E731
    defines = [
        f'-DQK_TORCH_VERSION="{torch.__version__}"',
    ]
    extra = {"cxx": ["-O3", "-std=c++20", *defines]}
    # at::parallel_for is a header template: without -fopenmp in *this* build it compiles to a
    # serial loop, and the CPU kernels would ignore torch.get_num_threads(). Link the same OpenMP
    # runtime torch uses (GCC's libgomp, whose soname torch's wheel ships), only where torch itself
    # was built with OpenMP.
    openmp = torch._C.has_openmp and sys.platform.startswith("linux")
    if openmp:
        extra["cxx"].append("-fopenmp")
    kwargs = dict(
        name="quantkernels._C",
        sources=rel(bindings),
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"] if openmp else [],
        extra_objects=[],  # filled in by BuildExt with the ISA objects
    )
    if with_cuda:
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        extra["cxx"] += ["-DQK_WITH_CUDA", f'-DQK_CUDA_ARCHS="{archs}"']
        extra["nvcc"] = ["-O3", "-std=c++20", "-lineinfo", "-DQK_WITH_CUDA", "--expt-relaxed-constexpr"]
        if os.environ.get("QK_PTXAS_VERBOSE"):  # print registers / spills per kernel
            extra["nvcc"].append("-Xptxas=-v")
        kwargs["sources"] += rel(sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))))
        ext = cpp_extension.CUDAExtension(**kwargs)
    else:
        extra["cxx"] += ['-DQK_CUDA_ARCHS=""']
        ext = cpp_extension.CppExtension(**kwargs)
    ext._qk_cpu_sources = cpu_sources
    return [ext]


def make_cmdclass():
    from torch.utils import cpp_extension

    class BuildExt(cpp_extension.BuildExtension):
        def build_extensions(self):
            cxx = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
            for ext in self.extensions:
                srcs = getattr(ext, "_qk_cpu_sources", [])
                objdir = os.path.join(self.build_temp, "qk_cpu")
                ext.extra_objects = _compile_isa_objects(srcs, objdir, cxx)
            super().build_extensions()

    return {"build_ext": BuildExt.with_options(use_ninja=True)}


def _setup_kwargs():
    try:
        import torch  # noqa: F401
    except ImportError:  # metadata-only invocations (no torch yet): pure-Python package
        return {}
    return {"ext_modules": make_ext_modules(), "cmdclass": make_cmdclass()}


setup(
    name="quantkernels",
    version="0.1.0",
    description="INT8/INT4/INT3/INT2 quantized linear layers for PyTorch on hand-written CPU, CUDA and Triton kernels",
    packages=find_packages(include=["quantkernels", "quantkernels.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "test": ["pytest", "hypothesis", "safetensors"],
        "triton": ["triton"],
        "models": ["gguf", "safetensors", "transformers", "tqdm", "matplotlib", "sentencepiece", "tokenizers"],
    },
    entry_points={"console_scripts": ["quantkernels=quantkernels.cli:main"]},
    **_setup_kwargs(),
)
