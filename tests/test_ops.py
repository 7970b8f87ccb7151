"""Every portable-format op passes torch.library.opcheck (schema, fake impl, autograd registration)."""

import pytest
import torch

import quantkernels  # noqa: F401
from quantkernels import reference
from quantkernels.formats import trivial_g_idx

ops = torch.ops.quantkernels


def _portable(bits, group, sym, n=64, k=128, scale_dtype=torch.float16):
    w = torch.randn(n, k)
    codes, scales, zeros = reference.quantize(w, bits, group, sym, scale_dtype)
    return reference.pack(codes.t(), bits, 0), reference.pack(zeros, bits, 1), scales, trivial_g_idx(k, group)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_opcheck_quantize_pack_unpack(bits):
    w = torch.randn(64, 128)
    torch.library.opcheck(ops.quantize.default, (w, bits, 32, False, torch.float16, None))
    torch.library.opcheck(ops.quantize.default, (w, bits, -1, True, torch.bfloat16, trivial_g_idx(128, -1)))
    codes = torch.randint(0, 2**bits, (128, 64), dtype=torch.uint8)
    torch.library.opcheck(ops.pack.default, (codes, bits, 0))
    torch.library.opcheck(ops.pack.default, (codes, bits, 1))
    packed = reference.pack(codes, bits, 0)
    torch.library.opcheck(ops.unpack.default, (packed, bits, 0))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_dequantize_linear(bits, dtype):
    qw, qz, s, g = _portable(bits, 32, False)
    torch.library.opcheck(ops.dequantize.default, (qw, qz, s, g, bits, dtype))
    x = torch.randn(3, 5, 128, dtype=dtype)
    bias = torch.randn(64, dtype=dtype)
    torch.library.opcheck(ops.linear.default, (x, qw, qz, s, g, bias, bits))
    torch.library.opcheck(ops.linear.default, (x[0], qw, qz, s, g, None, bits))
    xg = torch.randn(4, 128, dtype=torch.float32, requires_grad=True)
    torch.library.opcheck(ops.linear.default, (xg, qw, qz, s, g, None, bits))


def test_linear_matches_float64():
    """The reference linear equals float64 math up to fp32 accumulation error."""
    qw, qz, s, g = _portable(4, 32, False, n=96, k=256)
    x = torch.randn(7, 256)
    bias = torch.randn(96)
    out = ops.linear(x, qw, qz, s, g, bias, 4)
    w64 = reference.dequantize(qw, qz, s, g, 4, torch.float64)
    ref = x.double() @ w64.t() + bias.double()
    # fp32 dot products of length 256: relative error ~ sqrt(K) * 2^-24 << 1e-5
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


def test_linear_gradient_flows_to_input():
    qw, qz, s, g = _portable(4, 64, True)
    x = torch.randn(5, 128, dtype=torch.float64, requires_grad=True)
    out = ops.linear(x, qw, qz, s, g, None, 4)
    out.square().sum().backward()
    w = reference.dequantize(qw, qz, s, g, 4, torch.float64)
    expect = 2 * (x.detach() @ w.t()) @ w
    # forward and backward run in fp32: relative error ~1e-6, far below 1e-4
    assert ((x.grad - expect).norm() / expect.norm()).item() < 1e-4
