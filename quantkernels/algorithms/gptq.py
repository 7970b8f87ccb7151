"""GPTQ (Frantar et al., ICLR 2023): quantize a weight column by column, pushing each column's
rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the layer's
reconstruction loss ``||X W^T - X Wq^T||^2`` (``H = 2 X^T X / n``).

:func:`gptq_quantize` is the per-layer algorithm; :func:`run` drives it over a model block by block
(see :mod:`.blocks`), in true-sequential order inside each block.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .. import reference
from ..formats import QuantConfig, trivial_g_idx
from . import blocks as B
from .blocks import relative_error
from .common import range_params

log = logging.getLogger("quantkernels.gptq")


# GPTQ's quantizer with ``mse=True``: shrink the range by p = 1, 0.99, ... 0.21 and keep, per row,
# the p whose rounding error has the smallest 2.4-norm (the published code's defaults).
MSE_GRID, MSE_MAX_SHRINK, MSE_NORM = 100, 0.8, 2.4
MSE_CHUNK = 8


def group_params(w: torch.Tensor, config: QuantConfig, mse: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scale and zero point of one group of columns ``w [N, cols]``: ``(scale in config.scale_dtype
    [N], scale as fp32 [N], zero as fp32 [N])``. Plain min/max exactly as the reference chooses them,
    or with ``mse`` the shrunk range with the smallest rounding error (see ``MSE_GRID``)."""
    lo = w.amin(1).clamp(max=0)
    hi = w.amax(1).clamp(min=0)
    if not mse:
        return range_params(lo, hi, config)
    shrink = 1.0 - torch.arange(int(MSE_MAX_SHRINK * MSE_GRID), device=w.device, dtype=torch.float32) / MSE_GRID
    cand = range_params(shrink[:, None] * lo, shrink[:, None] * hi, config)  # each [P, N]
    errs = []
    for p in range(0, shrink.numel(), MSE_CHUNK):  # a few grid points at a time bounds the memory
        s32, z = cand[1][p : p + MSE_CHUNK, :, None], cand[2][p : p + MSE_CHUNK, :, None]
        # clamp(round(w/s) + z, 0, maxq) - z == clamp(round(w/s), -z, maxq - z): z is an integer
        e = torch.clamp(torch.round(w / s32), -z, config.maxq - z).mul_(s32).sub_(w)
        errs.append(e.abs_().pow_(MSE_NORM).sum(-1))
    best = torch.argmin(torch.cat(errs), dim=0, keepdim=True)  # the first (largest) p among equals
    return tuple(c.gather(0, best)[0] for c in cand)


def cholesky_inverse_upper(h: torch.Tensor, damp_percent: float, max_damp: float = 10.0, name: str = "layer"):
    """Upper Cholesky factor ``U`` of ``(H + damp * mean(diag H) * I)^-1`` (``U^T U = H^-1``).

    The damping is multiplied by 10 and the factorization retried (with a log line) while it fails,
    up to ``max_damp``. Returns ``(U, damp used)``."""
    k = h.shape[0]
    mean_diag = torch.mean(torch.diag(h)).item()
    mean_diag = mean_diag if mean_diag > 0 else 1.0
    damp = damp_percent
    eye = torch.eye(k, dtype=h.dtype, device=h.device)
    while True:
        # H = R R^T with R upper (the lower factor of H with rows and columns reversed, reversed back);
        # then H^-1 = R^-T R^-1, so U = R^-1 is the upper Cholesky factor of H^-1. One factorization
        # and one triangular solve: MKL's cholesky_inverse was the slowest step of a block on a busy CPU.
        hd = h + (damp * mean_diag) * eye
        lower, info = torch.linalg.cholesky_ex(hd.flip(0, 1))
        if int(info) == 0:
            upper = torch.linalg.solve_triangular(lower.flip(0, 1), eye, upper=True)
            if torch.isfinite(upper).all():
                return upper, damp
        if damp * 10 > max_damp:
            raise RuntimeError(f"GPTQ {name}: Hessian is not positive definite even with damp_percent={damp}")
        log.warning("GPTQ %s: Cholesky failed with damp_percent=%g, retrying with %g", name, damp, damp * 10)
        damp *= 10


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    h: torch.Tensor,
    config: QuantConfig,
    *,
    blocksize: int = 128,
    damp_percent: float = 0.01,
    act_order: Optional[bool] = None,
    static_groups: bool = False,
    mse: bool = False,
    name: str = "layer",
):
    """Quantize ``weight [N, K]`` given the Hessian ``h [K, K]`` of its inputs.

    Returns ``(codes uint8 [N, K], scales [G, N], zeros int32 [G, N], g_idx int32 [K], info dict)``
    in the portable conventions of :mod:`quantkernels.formats` (original column order). ``info`` has
    the damping used and the dequantized weight GPTQ chose (``dequant``), for error reports.

    act_order: quantize columns in order of decreasing ``diag(H)`` (default: ``config.act_order``).
    With groups and without ``static_groups`` the groups are then runs of consecutive columns in
    that order, recorded in ``g_idx``; ``static_groups`` fixes every group's parameters from the
    original consecutive columns before any update, so ``g_idx`` stays trivial.
    mse: choose each group's range by GPTQ's MSE grid (:func:`group_params`) instead of min/max.
    """
    if act_order is None:
        act_order = config.act_order
    n, k = weight.shape
    device = weight.device
    w = weight.detach().to(torch.float32).clone()
    h = h.detach().to(torch.float32).clone()
    maxq = config.maxq
    gs = config.effective_group_size(k)
    num_groups = config.num_groups(k)

    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    scales = torch.empty(num_groups, n, dtype=config.scale_dtype, device=device)
    zeros = torch.empty(num_groups, n, dtype=torch.float32, device=device)
    static = static_groups or config.group_size == -1
    if static:
        for g in range(num_groups):
            scales[g], _, zeros[g] = group_params(w[:, g * gs : (g + 1) * gs], config, mse)

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        w = w[:, perm]
        h = h[perm][:, perm]
        invperm = torch.argsort(perm)
    # The column loop reads the permutation as Python ints: indexing a CUDA tensor would wait for
    # the device at every column.
    perm_list = perm.tolist() if perm is not None else None

    u, damp = cholesky_inverse_upper(h, damp_percent, name=name)
    del h

    # Work on the transpose so that a column of W is a contiguous row (the inner loop is column by
    # column, on vectors of N values).
    wt = w.t().contiguous()  # [K, N]
    del w
    codes = torch.empty(k, n, dtype=torch.float32, device=device)
    qw = torch.empty(k, n, dtype=torch.float32, device=device)
    pos_group = [0] * k  # group of each processed position (Python ints, like perm_list)
    s_cur = z_cur = None
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # the column loop is many tiny ops: threads only add sync cost
    try:
        for i1 in range(0, k, blocksize):
            i2 = min(i1 + blocksize, k)
            w1 = wt[i1:i2].clone()
            err1 = torch.zeros_like(w1)
            u1 = u[i1:i2, i1:i2]
            for i in range(i2 - i1):
                col = i1 + i
                orig = perm_list[col] if perm is not None else col
                if static:
                    g = orig // gs
                    s_cur, z_cur = scales[g].to(torch.float32), zeros[g]
                elif col % gs == 0:
                    # The group starts here: its parameters come from the columns as updated so far.
                    g = col // gs
                    end = col + gs
                    cur = w1[i:] if end >= i2 else w1[i : i + gs]
                    if end > i2:
                        cur = torch.cat([cur, wt[i2:end]], dim=0)
                    scales[g], s_cur, z_cur = group_params(cur.t(), config, mse)
                    zeros[g] = z_cur
                else:
                    g = col // gs
                pos_group[col] = orig // gs if static else g
                x = w1[i]
                q = torch.clamp(torch.round(x / s_cur) + z_cur, 0, maxq)
                dq = (q - z_cur) * s_cur
                codes[col] = q
                qw[col] = dq
                e = (x - dq) / u1[i, i]
                w1[i:] -= u1[i, i:].unsqueeze(1) * e.unsqueeze(0)
                err1[i] = e
            if i2 < k:
                if device.type == "cpu":
                    torch.set_num_threads(threads)
                wt[i2:] -= u[i1:i2, i2:].t() @ err1
                if device.type == "cpu":
                    torch.set_num_threads(1)
    finally:
        torch.set_num_threads(threads)
    codes, qw = codes.t(), qw.t()
    pos_group = torch.tensor(pos_group, dtype=torch.int64, device=device)

    if perm is not None:
        codes = codes[:, invperm]
        qw = qw[:, invperm]
        g_idx = pos_group[invperm].to(torch.int32)
    else:
        g_idx = pos_group.to(torch.int32)
    if static:
        g_idx = trivial_g_idx(k, config.group_size, device=device)
    info = {"damp_percent": damp, "dequant": qw, "dead_columns": int(dead.sum())}
    return codes.to(torch.uint8), scales, zeros.to(torch.int32), g_idx, info


def _rtn_dequant(w: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    codes, scales, zeros = reference.quantize(w, config.bits, config.group_size, config.sym, config.scale_dtype)
    g = trivial_g_idx(w.shape[1], config.group_size, device=w.device).long()
    return (codes.float() - zeros.t().float()[:, g]) * scales.t().float()[:, g]


def quantize_group(
    names, linears: Dict[str, nn.Linear], h: torch.Tensor, config: QuantConfig, options: dict
) -> Tuple[Dict[str, "QuantLinear"], Dict[str, dict]]:
    """GPTQ for linears that share one input (and so one Hessian): rows are independent given H, so
    their weights are stacked and quantized in one pass. Each linear's weight is overwritten by its
    dequantized value, so later stages of the block see the quantized layer."""
    from ..nn import QuantLinear

    t0 = time.perf_counter()
    weights = [linears[n].weight.detach().to(torch.float32) for n in names]
    w = torch.cat(weights, dim=0)
    label = names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} sharing its input)"
    codes, scales, zeros, g_idx, info = gptq_quantize(
        w, h, config,
        blocksize=options.get("blocksize", DEFAULTS["blocksize"]),
        damp_percent=options.get("damp_percent", DEFAULTS["damp_percent"]),
        act_order=options.get("act_order", DEFAULTS["act_order"]),
        static_groups=options.get("static_groups", DEFAULTS["static_groups"]),
        mse=options.get("mse", DEFAULTS["mse"]),
        name=label,
    )
    elapsed = time.perf_counter() - t0
    out, report = {}, {}
    row = 0
    for name, wt in zip(names, weights):
        lin = linears[name]
        r = slice(row, row + wt.shape[0])
        row += wt.shape[0]
        bias = None if lin.bias is None else lin.bias.detach()
        layer = QuantLinear.from_codes(codes[r], scales[:, r], zeros[:, r], config, g_idx=g_idx.clone(), bias=bias)
        dq = info["dequant"][r]
        report[name] = {
            "rtn_error": relative_error(wt, _rtn_dequant(wt, config), h),
            "error": relative_error(wt, dq, h),
            "damp_percent": info["damp_percent"],
            "dead_columns": info["dead_columns"],
            "seconds": elapsed / len(names),
        }
        lin.weight.data.copy_(dq.to(lin.weight.dtype))
        out[name] = layer
    return out, report


# The defaults of method="gptq" (docs/EVAL.md measures each against the others on SmolLM2).
# act_order with static_groups quantizes columns by decreasing diag(H) while every group keeps its
# consecutive columns, so g_idx stays trivial and the fast kernels serve the result as they are.
DEFAULTS = {
    "blocksize": 128,
    "damp_percent": 0.01,
    "act_order": True,
    "static_groups": True,
    "mse": True,
    "true_sequential": True,
    "batch_tokens": 65536,
}


def _quantize_in_one_pass(block: nn.Module, entry, mine: Dict[str, nn.Linear], config: QuantConfig, options: dict):
    """True-sequential GPTQ of one block in a single forward pass over the whole calibration set
    (one batched input). Each linear's pre-hook builds its input's Hessian (shared with the linears
    that read the same tensor), quantizes the linear and overwrites its weight before it runs, so
    every later linear sees the outputs of the quantized ones: the order of the published method
    without re-running the block once per stage. Returns ``(next block input, layers, report)``;
    linears the pass never reached are left out."""
    hessians = {}  # (address, shape, stride) of an input -> (the input, kept alive; its H)
    layers, report, handles = {}, {}, {}

    def hook(mod, args, name):
        handles.pop(name).remove()
        x = args[0]
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()))
        if key not in hessians:
            stats = B.InputStats(mod.in_features, mod.weight.device)
            stats.add(x)
            hessians[key] = (x, stats.hessian())
        q, rep = quantize_group([name], mine, hessians[key][1], config, options)
        layers.update(q)
        report.update(rep)

    for name, lin in mine.items():
        handles[name] = lin.register_forward_pre_hook(lambda mod, args, name=name: hook(mod, args, name))
    try:
        out = B.run_block(block, [entry])
    finally:
        for h in handles.values():
            h.remove()
    return out, layers, report


def _quantize_by_stage(block: nn.Module, inputs, mine: Dict[str, nn.Linear], config: QuantConfig, options: dict):
    """GPTQ of one block over several stored inputs: per group of linears sharing an input, one pass
    to accumulate H (ending at that group), then quantize; with ``true_sequential`` each pass sees the
    groups quantized before it. Returns ``(layers, report)``; the caller runs the block afterwards."""
    layers, report = {}, {}
    groups = B.input_groups(block, mine, B.probe_input(inputs[0]))
    sequential = options.get("true_sequential", DEFAULTS["true_sequential"])
    pending = []
    for names in groups:
        stats = B.collect_stats(block, inputs, mine[names[0]])
        if stats.count == 0:
            continue  # never reached on the calibration data: left to the caller
        pending.append((names, stats.hessian()))
        if sequential:
            for done in _quantize_pending(pending, mine, config, options):
                layers.update(done[0])
                report.update(done[1])
    for done in _quantize_pending(pending, mine, config, options):
        layers.update(done[0])
        report.update(done[1])
    return layers, report


def _quantize_pending(pending, mine, config, options):
    while pending:
        names, h = pending.pop(0)
        yield quantize_group(names, mine, h, config, options)


def run(model: nn.Module, layers: Dict[str, nn.Linear], config: QuantConfig, calibration, progress: bool = True, **options):
    """GPTQ over the whole model: block by block, in true-sequential order inside each block.

    Options (defaults in ``DEFAULTS``): ``blocksize``, ``damp_percent``, ``act_order``,
    ``static_groups``, ``mse`` (see :func:`gptq_quantize`); ``true_sequential``; ``batch_tokens``:
    calibration sequences are concatenated into batches of at most this many tokens. When the whole
    calibration set fits in one batch (128 windows of 512 tokens by default), each block is quantized
    in one forward pass (:func:`_quantize_in_one_pass`); otherwise the block is re-run per stage."""
    from ..nn import QuantLinear
    from .common import BlockPlan, progress_bar, quantize_outside_blocks

    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"gptq: unknown options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    plan = BlockPlan(model, layers)
    inputs = B.capture_block_inputs(model, plan.blocks[0], calibration)
    inputs = B.batch_inputs(inputs, options.get("batch_tokens", DEFAULTS["batch_tokens"]))
    one_pass = len(inputs) == 1 and options.get("true_sequential", DEFAULTS["true_sequential"])
    new_layers, report = quantize_outside_blocks(plan, config, "not inside a repeated block: RTN")
    for bi, block in enumerate(progress_bar(plan.blocks, progress, "GPTQ")):
        mine = plan.block_linears(bi)
        if one_pass:
            inputs, q, rep = _quantize_in_one_pass(block, inputs[0], mine, config, options)
        else:
            q, rep = _quantize_by_stage(block, inputs, mine, config, options)
            inputs = B.run_block(block, inputs)
        for name, lin in mine.items():
            if name not in q:  # never ran on the calibration data: nothing to calibrate with
                q[name] = QuantLinear.from_linear(lin, config)
                rep[name] = {"note": "not reached by the calibration data: RTN"}
        new_layers.update({plan.full_name(bi, n): v for n, v in q.items()})
        report.update({plan.full_name(bi, n): v for n, v in rep.items()})
    return new_layers, report
