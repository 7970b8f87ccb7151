"""GPTQ checkpoints, v1 (AutoGPTQ) and v2 (GPTQModel), to and from ``QuantLinear``.

Per quantized module ``<m>`` a GPTQ file holds ``<m>.qweight`` int32 ``[K*bits/32, N]``,
``<m>.qzeros`` int32 ``[G, N*bits/32]``, ``<m>.scales`` ``[G, N]``, ``<m>.g_idx`` int32 ``[K]`` and
optionally ``<m>.bias`` ``[N]``: exactly our portable layout (:mod:`quantkernels.formats`), so
``qweight`` is taken as it is. The formats differ only in the zero points packed in ``qzeros``:

* ``gptq_v2`` stores the real zero ``z``; ``W = (q - z) * s``.
* ``gptq`` (v1, AutoGPTQ) stores ``z - 1``; its kernels add 1 back. Reading adds 1. A real zero of 0
  has no v1 encoding (``-1`` does not fit in ``bits`` bits; AutoGPTQ's packer lets it spill into the
  neighbouring zero points), so the v1 *writer* re-centres such a group when that is exact (no code
  in the group uses the top value ``maxq``: codes and zero both move up by one, the weights are
  unchanged) and otherwise refuses with an error naming the layer, group and column.

Mislabels (a v2 file labelled v1 or the reverse) are told apart where the data allows:

* symmetric checkpoints have one zero point for all groups: v1 stores ``2**(bits-1) - 1``, v2 stores
  ``2**(bits-1)``. Seeing the other one gives a warning; the label is still followed (it is what
  the writing tool's own loader does), and ``checkpoint_format=`` overrides it.
* a "v1" file whose stored zero is ``maxq`` would mean a real zero ``maxq + 1``, which no GPTQ
  quantizer produces and the format cannot hold: the file is v2, or a v1 file whose packer let a
  real zero of 0 (stored -1) spill into its neighbours. That is an error naming the tensor,
  suggesting ``checkpoint_format="gptq_v2"``.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from ..formats import QuantConfig, block_words, is_trivial_g_idx, trivial_g_idx
from ..nn import QuantLinear
from .config import CheckpointConfig, CheckpointError
from .files import TensorFiles

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _pack(codes: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    return torch.ops.quantkernels.pack(codes, bits, dim)


def _unpack(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    return torch.ops.quantkernels.unpack(packed, bits, dim)


def check_layer_tensors(
    prefix: str,
    t: Dict[str, Optional[torch.Tensor]],
    bits: int,
    group_size: int,
    expect: Optional[Tuple[int, int]] = None,
) -> Tuple[int, int]:
    """Check a GPTQ-layout layer's tensors against each other and the config; return ``(K, N)``.

    ``t`` maps qweight/qzeros/scales/g_idx/bias to tensors (g_idx and bias may be None). ``expect``
    is the ``(in_features, out_features)`` of the module they will replace.
    """
    qweight, qzeros, scales, g_idx, bias = (t.get(k) for k in ("qweight", "qzeros", "scales", "g_idx", "bias"))
    for name, x in (("qweight", qweight), ("qzeros", qzeros)):
        if x.dtype != torch.int32:
            raise CheckpointError(f"tensor {prefix}.{name} must be int32, got {x.dtype}")
        if x.dim() != 2:
            raise CheckpointError(f"tensor {prefix}.{name} must be 2-D, got shape {tuple(x.shape)}")
    if scales.dtype not in FLOAT_DTYPES or scales.dim() != 2:
        raise CheckpointError(
            f"tensor {prefix}.scales must be a 2-D float16/bfloat16/float32 tensor, got {scales.dtype} {tuple(scales.shape)}"
        )
    rows, n = qweight.shape
    if rows % block_words(bits):
        raise CheckpointError(
            f"tensor {prefix}.qweight has {rows} rows, not a whole number of {bits}-bit packing blocks "
            f"({block_words(bits)} words); does bits={bits} in the config match the file?"
        )
    k = rows * 32 // bits
    if expect is not None and (k, n) != tuple(expect):
        raise CheckpointError(
            f"tensor {prefix}.qweight {tuple(qweight.shape)} holds a [{n}, {k}] weight at {bits} bits, but the "
            f"model's layer is [{expect[1]}, {expect[0]}] (out_features, in_features)"
        )
    cfg = QuantConfig(bits=bits, group_size=group_size)
    err = cfg.shape_error(k, n)
    if err:
        raise CheckpointError(f"tensor {prefix}.qweight {tuple(qweight.shape)}: {err}")
    shapes = cfg.packed_shapes(k, n)
    hint = f"expected for K={k}, N={n}, bits={bits}, group_size={group_size}"
    for name, x in (("qzeros", qzeros), ("scales", scales), ("g_idx", g_idx)):
        if x is not None and tuple(x.shape) != tuple(shapes[name]):
            raise CheckpointError(
                f"tensor {prefix}.{name} has shape {tuple(x.shape)}, {tuple(shapes[name])} {hint}: "
                "the config disagrees with the tensors"
            )
    if g_idx is not None:
        if g_idx.dtype not in (torch.int32, torch.int64):
            raise CheckpointError(f"tensor {prefix}.g_idx must be int32, got {g_idx.dtype}")
        lo, hi = int(g_idx.min()), int(g_idx.max())
        if lo < 0 or hi >= shapes["scales"][0]:
            raise CheckpointError(
                f"tensor {prefix}.g_idx has values in [{lo}, {hi}], outside [0, {shapes['scales'][0]}) groups"
            )
    if bias is not None and (bias.dtype not in FLOAT_DTYPES or tuple(bias.shape) != (n,)):
        raise CheckpointError(f"tensor {prefix}.bias must be a float tensor of shape ({n},), got {bias.dtype} {tuple(bias.shape)}")
    return k, n


def zero_format_evidence(stored: torch.Tensor, bits: int, sym: bool) -> Optional[str]:
    """Which format the stored zero points prove (``"gptq"``/``"gptq_v2"``), or None if they do not tell."""
    half, maxq = 1 << (bits - 1), (1 << bits) - 1
    if sym:
        if bool((stored == half).all()):
            return "gptq_v2"
        if bool((stored == half - 1).all()):
            return "gptq"
        return None
    return "gptq_v2" if bool((stored == maxq).any()) else None


def read_layer(
    files: TensorFiles,
    prefix: str,
    ckpt: CheckpointConfig,
    expect: Optional[Tuple[int, int]] = None,
    device=None,
) -> Tuple[QuantLinear, Optional[str]]:
    """One GPTQ layer -> ``QuantLinear``, and what its zero points say about the format (for warnings)."""
    why = f"{ckpt.checkpoint_format} layer {prefix}"
    t = {k: files.require(f"{prefix}.{k}", why) for k in ("qweight", "qzeros", "scales")}
    t["g_idx"] = files.get(f"{prefix}.g_idx")
    t["bias"] = files.get(f"{prefix}.bias")
    bits = ckpt.bits
    k, n = check_layer_tensors(prefix, t, bits, ckpt.group_size, expect)
    if t["g_idx"] is None:
        if ckpt.desc_act:
            files.require(f"{prefix}.g_idx", f"{why}: desc_act=true needs the column groups")
    elif not ckpt.desc_act and not is_trivial_g_idx(t["g_idx"], ckpt.group_size):
        raise CheckpointError(
            f"tensor {prefix}.g_idx is not the trivial grouping k // group_size but the config says desc_act=false "
            "(kernels that trust desc_act would ignore it): the config disagrees with the tensors"
        )
    stored = _unpack(t["qzeros"], bits, 1).to(torch.int32)
    evidence = zero_format_evidence(stored, bits, ckpt.sym)
    if ckpt.checkpoint_format == "gptq":
        maxq = (1 << bits) - 1
        if bool((stored == maxq).any()):
            raise CheckpointError(
                f"tensor {prefix}.qzeros stores zero point {maxq}, which in a v1 ('gptq') checkpoint means a real "
                f"zero of {maxq + 1}: impossible at {bits} bits. The file is probably gptq_v2 without the label "
                "(pass checkpoint_format='gptq_v2' to read it so), or a v1 file whose writer wrapped a real zero of 0 "
                "into the neighbouring zero points (AutoGPTQ's packer does), which cannot be recovered"
            )
        qzeros = _pack(stored + 1, bits, 1)
    else:
        qzeros = t["qzeros"]
    cfg = ckpt.quant_config(t["scales"].dtype)
    if cfg.sym and not bool((_unpack(qzeros, bits, 1) == (1 << (bits - 1))).all()):
        # sym=true but per-group zeros: the zeros are what the tensors mean; record them as asymmetric.
        cfg = QuantConfig(bits=bits, group_size=cfg.group_size, sym=False, act_order=cfg.act_order, scale_dtype=cfg.scale_dtype)
    g_idx = t["g_idx"].to(torch.int32) if t["g_idx"] is not None else trivial_g_idx(k, ckpt.group_size)
    return make_layer(cfg, t["qweight"], qzeros, t["scales"], g_idx, t["bias"], device), evidence


def make_layer(cfg: QuantConfig, qweight, qzeros, scales, g_idx, bias, device) -> QuantLinear:
    """A ``QuantLinear`` holding these portable tensors (already checked against each other)."""
    k, n = g_idx.numel(), scales.shape[1]
    layer = QuantLinear(k, n, cfg, bias=bias is not None, device="meta", dtype=scales.dtype)
    layer.qweight = qweight.contiguous().to(device)
    layer.qzeros = qzeros.contiguous().to(device)
    layer.scales = scales.contiguous().to(device)
    layer.g_idx = g_idx.contiguous().to(device)
    if bias is not None:
        layer.bias = bias.to(device)
    layer._after_load()
    return layer


def recentre_zero_groups(prefix: str, layer_tensors: Dict[str, torch.Tensor], bits: int) -> Dict[str, torch.Tensor]:
    """Portable tensors with every real zero point 0 moved to 1 (codes +1), for the v1 writer.

    Exact: ``(q + 1) - 1 == q - 0``. Impossible when a code of that group and column is ``maxq``;
    then raises ``ValueError`` naming the layer, group and column.
    """
    zeros = _unpack(layer_tensors["qzeros"], bits, 1).to(torch.int32)  # [G, N]
    bad = zeros == 0
    if not bool(bad.any()):
        return layer_tensors
    maxq = (1 << bits) - 1
    codes = _unpack(layer_tensors["qweight"], bits, 0).to(torch.int32)  # [K, N]
    gi = layer_tensors["g_idx"].to(torch.int64)
    index = gi.unsqueeze(1).expand_as(codes)
    group_max = torch.zeros_like(zeros).scatter_reduce(0, index, codes, "amax", include_self=True)  # [G, N]
    stuck = bad & (group_max == maxq)
    if bool(stuck.any()):
        g, c = (int(v) for v in stuck.nonzero()[0])
        raise ValueError(
            f"save(format='gptq'): layer {prefix} has real zero point 0 in group {g}, column {c} "
            f"({int(stuck.sum())} such groups in all), which v1 cannot store (it stores zero - 1), and the group "
            f"uses code {maxq}, so it cannot be re-centred exactly. Save with format='gptq_v2' instead"
        )
    bump = bad[gi]  # [K, N]: columns of groups that move up
    out = dict(layer_tensors)
    out["qweight"] = _pack((codes + bump.to(torch.int32)).to(torch.uint8), bits, 0)
    out["qzeros"] = _pack(torch.where(bad, torch.ones_like(zeros), zeros), bits, 1)
    return out


def layer_tensors_for_file(prefix: str, layer: QuantLinear, checkpoint_format: str) -> Dict[str, torch.Tensor]:
    """The tensors a GPTQ file holds for ``layer`` (names relative to the module)."""
    t = {k: v.detach() for k, v in layer.portable_tensors().items()}
    bits = layer.config.bits
    if checkpoint_format == "gptq":
        t = recentre_zero_groups(prefix, t, bits)
        stored = _unpack(t["qzeros"], bits, 1).to(torch.int32) - 1
        t["qzeros"] = _pack(stored.to(torch.uint8), bits, 1)
    elif checkpoint_format != "gptq_v2":
        raise ValueError(f"save: format must be 'gptq' or 'gptq_v2', got {checkpoint_format!r}")
    return t
