"""Every op schema of the ``quantkernels`` namespace, with its fake (meta) implementation.

Portable-format ops (``quantize``, ``pack``, ``unpack``, ``dequantize``, ``linear``) take the GPTQ
layout of :mod:`quantkernels.formats`; their reference implementation (:mod:`quantkernels.reference`)
is registered for every device. Backend ops take a backend's own repacked layout; their schemas are
declared here too, in the backend's section, and their kernels are registered by the backend (C++
``TORCH_LIBRARY_IMPL`` or ``torch.library``). Fake implementations let ``torch.compile`` trace any op.
"""

from __future__ import annotations

import torch

from . import reference

LIB = torch.library.Library("quantkernels", "FRAGMENT")


def _define(schema: str) -> str:
    LIB.define(schema)
    return "quantkernels::" + schema.split("(", 1)[0]


# ---------------------------------------------------------------------------------------------------
# Portable-format ops: reference kernels serve every device.
# ---------------------------------------------------------------------------------------------------
_define(
    "quantize(Tensor w, int bits, int group_size, bool sym, ScalarType scale_dtype, Tensor? g_idx=None)"
    " -> (Tensor codes, Tensor scales, Tensor zeros)"
)
_define("pack(Tensor codes, int bits, int dim=0) -> Tensor")
_define("unpack(Tensor packed, int bits, int dim=0) -> Tensor")
_define(
    "dequantize(Tensor qweight, Tensor qzeros, Tensor scales, Tensor g_idx, int bits, ScalarType dtype) -> Tensor"
)
_define(
    "linear(Tensor x, Tensor qweight, Tensor qzeros, Tensor scales, Tensor g_idx, Tensor? bias, int bits) -> Tensor"
)

for _name, _fn in {
    "quantize": reference.quantize,
    "pack": reference.pack,
    "unpack": reference.unpack,
    "dequantize": reference.dequantize,
    "linear": reference.linear,
}.items():
    LIB.impl(_name, _fn, "CompositeExplicitAutograd")


@torch.library.register_fake("quantkernels::quantize")
def _quantize_fake(w, bits, group_size, sym, scale_dtype, g_idx=None):
    n, k = w.shape
    g = 1 if group_size == -1 else k // group_size
    return (
        w.new_empty((n, k), dtype=torch.uint8),
        w.new_empty((g, n), dtype=scale_dtype),
        w.new_empty((g, n), dtype=torch.int32),
    )


def _scaled_shape(shape, dim, num, den):
    shape = list(shape)
    shape[dim] = shape[dim] * num // den
    return shape


@torch.library.register_fake("quantkernels::pack")
def _pack_fake(codes, bits, dim=0):
    return codes.new_empty(_scaled_shape(codes.shape, dim, bits, 32), dtype=torch.int32)


@torch.library.register_fake("quantkernels::unpack")
def _unpack_fake(packed, bits, dim=0):
    return packed.new_empty(_scaled_shape(packed.shape, dim, 32, bits), dtype=torch.uint8)


@torch.library.register_fake("quantkernels::dequantize")
def _dequantize_fake(qweight, qzeros, scales, g_idx, bits, dtype):
    return qweight.new_empty((scales.shape[1], g_idx.shape[0]), dtype=dtype)


@torch.library.register_fake("quantkernels::linear")
def _linear_fake(x, qweight, qzeros, scales, g_idx, bias, bits):
    return x.new_empty((*x.shape[:-1], scales.shape[1]))


def _linear_setup_context(ctx, inputs, output):
    _, qweight, qzeros, scales, g_idx, _, bits = inputs
    ctx.save_for_backward(qweight, qzeros, scales, g_idx)
    ctx.bits = bits


def _linear_backward(ctx, grad):
    qweight, qzeros, scales, g_idx = ctx.saved_tensors
    w = torch.ops.quantkernels.dequantize(qweight, qzeros, scales, g_idx, ctx.bits, torch.float32)
    gx = torch.matmul(grad.to(torch.float32), w).to(grad.dtype)
    return gx, None, None, None, None, None, None


# Weights are frozen: the gradient flows to the input only (adapters train on top).
torch.library.register_autograd("quantkernels::linear", _linear_backward, setup_context=_linear_setup_context)


# ---------------------------------------------------------------------------------------------------
# CPU backend ops (layouts in csrc/cpu/; kernels registered by csrc/bindings/cpu_ops.cpp).
# ---------------------------------------------------------------------------------------------------
# Layouts: csrc/cpu/qlinear.h (built by quantkernels/backends/cpu.py); scales and zeros are fp32
# tile-major [N/8, G, 8]; zeros None means every zero point is zero_point (symmetric layers: the
# kernels then read no zero-point stream). x is fp32 [M, K]; the output is fp32 [M, N], bias
# included. `isa` names the instruction set ("" = the process-wide choice; tests pass one explicitly
# to cover every path the machine runs).
_define(
    "cpu_linear_float(Tensor x, Tensor w, Tensor scales, Tensor? zeros, float zero_point, Tensor? bias, int bits,"
    " str isa='') -> Tensor"
)
_define(
    "cpu_linear_int8(Tensor x, Tensor w, Tensor scales, Tensor? zeros, float zero_point, Tensor? bias, int bits,"
    " int act_group_size, str isa='') -> Tensor"
)
_define("cpu_isa_supported(str isa) -> bool")
# uint8 [nbytes] for a repacked weight, on transparent huge pages where the OS grants them (Linux THP;
# an ordinary allocation elsewhere). See csrc/cpu/huge_pages.h.
_define("cpu_empty_huge_pages(int nbytes) -> Tensor")


@torch.library.register_fake("quantkernels::cpu_linear_float")
def _cpu_linear_float_fake(x, w, scales, zeros, zero_point, bias, bits, isa=""):
    return x.new_empty((x.shape[0], scales.shape[0] * 8), dtype=torch.float32)


@torch.library.register_fake("quantkernels::cpu_linear_int8")
def _cpu_linear_int8_fake(x, w, scales, zeros, zero_point, bias, bits, act_group_size, isa=""):
    return x.new_empty((x.shape[0], scales.shape[0] * 8), dtype=torch.float32)


@torch.library.register_fake("quantkernels::cpu_empty_huge_pages")
def _cpu_empty_huge_pages_fake(nbytes):
    return torch.empty(nbytes, dtype=torch.uint8)


# ---------------------------------------------------------------------------------------------------
# CUDA backend ops (layouts in csrc/cuda/; kernels registered by csrc/bindings/cuda_ops.cpp).
# ---------------------------------------------------------------------------------------------------
# ``qweight`` is the mma-shuffled int32 layout [N/16, K/KC, 32, 4] (KC = 64 for 4 bits, 32 for 8;
# csrc/cuda/wxa16.h); ``scales``/``zeros`` are [G, N/16, 8, 2] in the activation dtype; ``kgroup``
# is the int32 group of each run of 16 sorted input columns (None: column // group_size). ``tile``
# (-1: automatic) forces one of the GEMM's tile shapes, for tuning (benchmarks/gpu_gemm.py).
# ``workspace`` is a float32 buffer of zeros that lets the GEMM split K over blocks; the kernel
# leaves it all zeros again (values unchanged, so it is not declared as mutated); ``ksplit``
# (-1: automatic) forces the number of blocks along K.
_define(
    "cuda_wxa16_gemm(Tensor x, Tensor qweight, Tensor scales, Tensor? zeros, Tensor? kgroup, int group_size,"
    " Tensor? bias, int bits, Tensor? workspace=None, int tile=-1, int ksplit=-1) -> Tensor"
)
_define(
    "cuda_wxa16_dequantize(Tensor qweight, Tensor scales, Tensor? zeros, Tensor? kgroup, int group_size,"
    " int bits) -> Tensor"
)
# The tile cuda_wxa16_gemm's automatic choice takes for m rows of an n x k layer on qweight's device (with
# or without a workspace; ``smem_optin`` > 0 stands in for the device's per-block shared-memory limit).
_define(
    "cuda_wxa16_gemm_tile(Tensor qweight, int m, int n, int k, int bits, bool with_workspace, int smem_optin=0)"
    " -> int"
)


def _cuda_chunk_cols(bits):
    return 64 if bits == 4 else 32


@torch.library.register_fake("quantkernels::cuda_wxa16_gemm")
def _cuda_wxa16_gemm_fake(x, qweight, scales, zeros, kgroup, group_size, bias, bits, workspace=None, tile=-1, ksplit=-1):
    return x.new_empty((x.shape[0], qweight.shape[0] * 16))


@torch.library.register_fake("quantkernels::cuda_wxa16_dequantize")
def _cuda_wxa16_dequantize_fake(qweight, scales, zeros, kgroup, group_size, bits):
    return scales.new_empty((qweight.shape[0] * 16, qweight.shape[1] * _cuda_chunk_cols(bits)))


# The Hopper wgmma GEMM (csrc/cuda/wxa16_gemm_sm90.cu): cuda_wxa16_gemm's arguments and result, with
# ``config`` (-1: by m) in place of ``tile``; ``workspace`` (zeros, wgmma_workspace_floats in
# quantkernels/backends/cuda.py) lets it split K stream-K; ``ksplit``: -1 by shape, 0 stream-K, 1-8
# blocks of a cluster per output tile. K % 64 == 0. Only where cuda_wxa16_wgmma_available(qweight)
# (a Hopper GPU and an sm_90a build); quantkernels/backends/cuda.py picks it by m.
_define(
    "cuda_wxa16_gemm_wgmma(Tensor x, Tensor qweight, Tensor scales, Tensor? zeros, Tensor? kgroup, int group_size,"
    " Tensor? bias, int bits, Tensor? workspace=None, int config=-1, int ksplit=-1) -> Tensor"
)
_define("cuda_wxa16_wgmma_available(Tensor qweight) -> bool")


@torch.library.register_fake("quantkernels::cuda_wxa16_gemm_wgmma")
def _cuda_wxa16_gemm_wgmma_fake(x, qweight, scales, zeros, kgroup, group_size, bias, bits, workspace=None, config=-1,
                                ksplit=-1):
    return x.new_empty((x.shape[0], qweight.shape[0] * 16))



# ---------------------------------------------------------------------------------------------------
# Triton backend ops: defined with torch.library.triton_op in quantkernels/triton/ (imported lazily,
# so that importing quantkernels never imports triton).
# ---------------------------------------------------------------------------------------------------
