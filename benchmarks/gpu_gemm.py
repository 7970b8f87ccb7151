"""Benchmark of the CUDA backend against cuBLAS (dense fp16/bf16) and torch's int4 tinygemm.

    PYTHONPATH=$PWD python benchmarks/gpu_gemm.py [--quick] [--out DIR]

Per (K, N, m, format, dtype): median time (CUDA events around a captured CUDA graph of many calls
that cycle through enough copies of the weights to exceed the L2 cache, so every call reads its
weights from HBM), effective GB/s (weights + scales + activations + output, each read or written
once), TFLOP/s (2 m N K / time), and speedup over cuBLAS of the same dtype and over tinygemm
(bf16 activations: that kernel takes no fp16), both timed in the same run. The `triton` column is
QuantLinear with ``layer.backend = "triton"`` when that backend is available. cuBLAS and the kernels
of one (m, dtype) are timed interleaved: each has its graph, and ten rounds replay every graph once,
so that the GPU's clock and power drift over the run fall on all of them alike (time_interleaved).

For m >= 64 it also times both CUDA paths (the fused mma kernel and dequantize + cuBLAS) to set
``quantkernels.backends.cuda.GEMM_MAX_M``. The table goes to stdout (and DIR/gpu_gemm.md, .csv).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from quantkernels import QuantConfig, backends, reference  # noqa: E402
from quantkernels.backends import cuda as qk_cuda  # noqa: E402
from quantkernels.nn import QuantLinear  # noqa: E402

# (K, N) = (in_features, out_features): LLaMA-3-8B / Mistral-7B projections and a 70B-class layer.
SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192), (8192, 28672), (28672, 8192)]
M_LIST = [1, 4, 16, 64, 256, 1024, 4096]
L2_BYTES = 50 * 2**20


def time_interleaved(groups, target_ms=8.0, replays=10):
    """Median per-call µs of each group of calls, {name: (µs, mode)}: per group a CUDA graph of R calls
    cycling through its ``fns`` (one per weight copy), then ``replays`` rounds that replay every group's
    graph once, in an order rotated each round. Interleaved so that a clock or power drift of the GPU
    over the run (seen at m >= 1024: the same launch up to 15% apart a few seconds later) falls on the
    baseline and the kernels alike. A group whose capture fails is timed as an eager loop."""
    runs = {}
    for name, fns in groups.items():
        for f in fns:  # warm-up: lazy init, cuBLAS handles, autotuning
            f()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for f in fns:
            f()
        torch.cuda.synchronize()
        est = max((time.perf_counter() - t0) / len(fns), 1e-6)
        reps = max(len(fns), min(400, math.ceil(target_ms * 1e-3 / est)))
        reps = math.ceil(reps / len(fns)) * len(fns)
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.stream(stream):
                with torch.cuda.graph(graph, stream=stream):
                    for i in range(reps):
                        fns[i % len(fns)]()
            torch.cuda.current_stream().wait_stream(stream)
            graph.replay()
            runs[name] = (graph.replay, reps, "graph")
        except Exception as e:  # noqa: BLE001  (a backend that cannot be captured is timed eagerly)
            print(f"  (graph capture failed: {type(e).__name__}: {str(e)[:80]}; timing eagerly)", flush=True)

            def run(fns=fns, reps=reps):
                for i in range(reps):
                    fns[i % len(fns)]()

            runs[name] = (run, reps, "eager")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = {name: [] for name in runs}
    names = list(runs)
    for r in range(replays):
        for name in names[r % len(names):] + names[:r % len(names)]:
            run, reps, _ = runs[name]
            start.record()
            run()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end) * 1e3 / reps)
    return {name: (statistics.median(times[name]), runs[name][2]) for name in names}


def time_us(fns, target_ms=8.0, replays=10):
    """Median per-call µs of one group of calls (time_interleaved), and the timing mode."""
    return time_interleaved({"fns": fns}, target_ms, replays)["fns"]


def times_us(groups):
    """{name: median per-call µs} of the groups, timed interleaved (time_interleaved)."""
    return {name: v[0] for name, v in time_interleaved(groups).items()}


def dq_cublas_fns(x, states, group_size=128, bits=4):
    """Dequantize + cuBLAS (the CUDA backend's large-m path) on x, one call per weight copy."""
    return [lambda s=s: torch.nn.functional.linear(x, torch.ops.quantkernels.cuda_wxa16_dequantize(
        s.qweight, s.scales[x.dtype], None, None, group_size, bits)) for s in states]


def copies_for(nbytes):
    return max(1, math.ceil(2.5 * L2_BYTES / nbytes))


@dataclasses.dataclass
class Row:
    K: int
    N: int
    m: int
    fmt: str
    dtype: str
    us: float
    gbs: float
    tflops: float
    cublas_us: float
    speedup: float
    tinygemm_us: float = float("nan")
    vs_tinygemm: float = float("nan")
    triton_us: float = float("nan")
    fused_us: float = float("nan")
    dq_cublas_us: float = float("nan")


def make_quant(k, n, bits, group_size, device="cuda"):
    torch.manual_seed(k * 7 + n)
    w = torch.randn(n, k, device=device) * 0.02
    return reference.quantize(w, bits, group_size, True, torch.float16)  # codes, scales, zeros


def prepared_copies(codes, scales, zeros, cfg, ncopies):
    layer = QuantLinear.from_codes(codes, scales, zeros, cfg)
    layer.backend = "cuda"
    state = layer._prepared["cuda"]
    states = [state]
    for _ in range(ncopies - 1):
        states.append(
            dataclasses.replace(
                state,
                qweight=state.qweight.clone(),
                scales={d: s.clone() for d, s in state.scales.items()},
            )
        )
    return layer, states


def tinygemm_copies(codes, k, n, ncopies):
    """torch's int4 kernel: codes [N, K] -> its packed layout; scales/zeros bf16 [K/128, N, 2]."""
    try:
        packed_u8 = ((codes[:, 1::2] << 4) | codes[:, ::2]).to(torch.uint8).contiguous()
        sz = torch.rand(k // 128, n, 2, device="cuda", dtype=torch.bfloat16) * 0.01
        out = []
        for _ in range(ncopies):
            p = torch.ops.aten._convert_weight_to_int4pack(packed_u8, 8)
            out.append((p, sz.clone()))
        return out, None
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {str(e)[:100]}"


def variants_line(label, res):
    """One printed line of a variant comparison: every time in µs, the fastest variant, and each
    variant's speedup over res["cublas"]."""
    best = min((v, key) for key, v in res.items() if key != "cublas")
    line = f"{label}: " + " ".join(f"{key}={v:.1f}" for key, v in res.items())
    return line + f" best={best[1]} | x" + " ".join(
        f"{key}={res['cublas'] / v:.2f}" for key, v in res.items() if key != "cublas")


def save_lines(out_dir, name, lines):
    """Write a mode's printed lines to out_dir/name (nothing without --out)."""
    if out_dir:
        with open(os.path.join(out_dir, name), "w") as f:
            f.write("\n".join(lines) + "\n")


def sweep_tiles(shapes, out_dir):
    """Time every GEMM tile shape (the kernel's `tile` argument) per (shape, m) to set auto_tile in
    csrc/cuda/wxa16_gemm_sm80.cu, and dequantize + cuBLAS to set GEMM_MAX_M."""
    n_tiles_total = 7
    lines = []
    for k, n in shapes:
        for bits, gs in ((4, 128), (8, -1)):
            codes, scales, zeros = make_quant(k, n, bits, gs)
            cfg = QuantConfig(bits=bits, group_size=gs, sym=True)
            qbytes = n * k * bits // 8 + scales.numel() * 2
            _, states = prepared_copies(codes, scales, zeros, cfg, copies_for(qbytes))
            gsz = states[0].group_size
            for m in ((1, 16, 32, 64, 96, 128) if bits == 4 else (1, 16)):
                x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                groups = {}
                tiles = range(n_tiles_total) if m <= 16 else (4, 5, 6)
                ws = None  # no split over blocks (see csrc/cuda/wxa16_gemm_sm80.cu, launch)
                for tile in tiles:
                    groups[f"t{tile}"] = [
                        lambda s=s, tile=tile: torch.ops.quantkernels.cuda_wxa16_gemm(
                            x, s.qweight, s.scales[x.dtype], None, None, gsz, None, bits, ws, tile) for s in states]
                groups["auto"] = [
                    lambda s=s: torch.ops.quantkernels.cuda_wxa16_gemm(
                        x, s.qweight, s.scales[x.dtype], None, None, gsz, None, bits, ws) for s in states]
                if m >= 96:
                    groups["dq+cublas"] = dq_cublas_fns(x, states, gsz, bits)
                res = times_us(groups)
                best = min((v, key) for key, v in res.items())
                line = f"{k}x{n} int{bits} m={m}: " + " ".join(f"{key}={v:.1f}" for key, v in res.items())
                line += f"  best={best[1]}"
                print(line, flush=True)
                lines.append(line)
            del states
            torch.cuda.empty_cache()
    save_lines(out_dir, "tile_sweep.txt", lines)


def triton_copies(codes, scales, zeros, cfg, ncopies):
    """QuantLinear layers on the triton backend (its own layout), or None if that fails."""
    saved = os.environ.get(backends.ENV_VAR)
    os.environ[backends.ENV_VAR] = "triton"  # only the triton backend prepares these layers
    try:
        layers = []
        for _ in range(ncopies):
            lay = QuantLinear.from_codes(codes, scales, zeros, cfg)
            lay.backend = "triton"
            layers.append(lay)
        return layers
    except Exception as e:  # noqa: BLE001
        print(f"# triton layers failed: {type(e).__name__}: {e}", flush=True)
        return None
    finally:
        if saved is None:
            del os.environ[backends.ENV_VAR]
        else:
            os.environ[backends.ENV_VAR] = saved


MID_TILES = (10, 11)  # csrc/cuda/wxa16_gemm_sm80.cu, kMidTiles: 64 rows a pass, 2 or 4 n-tiles a warp


def mid_m(shapes, m_list, out_dir, with_triton):
    """Middle m, int4 g128 fp16: cuBLAS; the plain kernel's 32-row tile 6 (`plain6`, no workspace:
    the previous path for 16 < m <= 128); each middle-m tile forced with a workspace (`tN`: K split
    in the block and over blocks as the launcher picks) and tile 10 without one (`t10nows`: in the
    block only); `auto` (what QuantLinear runs now); dequantize + cuBLAS; the triton backend."""
    lines = []
    for k, n in shapes:
        codes, scales, zeros = make_quant(k, n, 4, 128)
        cfg = QuantConfig(bits=4, group_size=128, sym=True)
        qbytes = n * k // 2 + scales.numel() * 2
        layer, states = prepared_copies(codes, scales, zeros, cfg, copies_for(qbytes))
        tri = triton_copies(codes, scales, zeros, cfg, copies_for(qbytes)) if with_triton else None
        dense = torch.randn(n, k, device="cuda", dtype=torch.float16)
        dense = [dense] + [dense.clone() for _ in range(copies_for(n * k * 2) - 1)]
        dt = torch.float16
        for m in m_list:
            x = torch.randn(m, k, device="cuda", dtype=dt)
            ws = torch.zeros(qk_cuda.workspace_floats(m, n), dtype=torch.float32, device="cuda")
            groups = {"cublas": [lambda w=w: torch.nn.functional.linear(x, w) for w in dense]}

            def gemm(tile, w):
                return [lambda s=s: torch.ops.quantkernels.cuda_wxa16_gemm(
                    x, s.qweight, s.scales[dt], None, None, 128, None, 4, w, tile) for s in states]

            groups["plain6"] = gemm(6, None)
            for tile in MID_TILES:
                groups[f"t{tile}"] = gemm(tile, ws)
            groups["t10nows"] = gemm(10, None)
            groups["auto"] = [lambda s=s: qk_cuda.BACKEND.linear(layer, s, x) for s in states]
            groups["dq+cublas"] = dq_cublas_fns(x, states)
            if tri is not None:
                groups["triton"] = [lambda lay=lay: lay(x) for lay in tri]
            res = times_us(groups)
            line = variants_line(f"{k}x{n} m={m}", res)
            print(line, flush=True)
            lines.append(line)
        del states, tri, dense
        torch.cuda.empty_cache()
    save_lines(out_dir, "mid_m.txt", lines)


# --small's forced (tile, ksplit) variants (tile ids: csrc/cuda/wxa16_gemm_sm80.cu, kTiles / kLateTiles;
# 7-9, 14 = stream-K (14 with staged activations); ksplit > 1 splits K over that many blocks through
# the workspace)
STREAMK_TILES = (7, 8, 9, 14)
SMALL_VARIANTS_M8 = ((7, -1), (12, -1), (14, -1), (2, -1), (12, 2))  # m <= 8
SMALL_VARIANTS_M16 = ((4, -1), (13, -1), (5, -1), (15, -1), (4, 2), (13, 2), (15, 2))  # 8 < m <= 16


WGMMA_CONFIGS = 8  # csrc/cuda/wxa16_gemm_sm90.cu, kConfigs


def wgmma_m(shapes, m_list, out_dir, with_triton, configs, dtypes=(torch.float16,)):
    """The Hopper wgmma GEMM, int4 g128, per activation dtype: cuBLAS; `old` = the CUDA backend's path
    without it (mma.sync GEMM up to GEMM_MAX_M rows, else dequantize + cuBLAS); each wgmma config forced
    (`cN`, with a workspace, as QuantLinear gives it); `auto` (what QuantLinear runs now); the triton
    backend."""
    lines = []
    for k, n in shapes:
        codes, scales, zeros = make_quant(k, n, 4, 128)
        cfg = QuantConfig(bits=4, group_size=128, sym=True)
        qbytes = n * k // 2 + scales.numel() * 2
        layer, states = prepared_copies(codes, scales, zeros, cfg, copies_for(qbytes))
        if not states[0].wgmma:
            print(f"# {k}x{n}: no wgmma GEMM on this GPU / build", flush=True)
            return
        old_states = [dataclasses.replace(s, wgmma=False) for s in states]
        tri = triton_copies(codes, scales, zeros, cfg, copies_for(qbytes)) if with_triton else None
        for dt in dtypes:
            dense = torch.randn(n, k, device="cuda", dtype=dt)
            dense = [dense] + [dense.clone() for _ in range(copies_for(n * k * 2) - 1)]
            for m in m_list:
                x = torch.randn(m, k, device="cuda", dtype=dt)
                ws = torch.zeros(qk_cuda.wgmma_workspace_floats(m, n, qk_cuda.num_sms(0)), dtype=torch.float32,
                                 device="cuda")
                groups = {"cublas": [lambda w=w: torch.nn.functional.linear(x, w) for w in dense],
                          "old": [lambda s=s: qk_cuda.BACKEND.linear(layer, s, x) for s in old_states]}
                for c in configs:  # "C" or "C:KS" (config C, split forced: KS blocks of a cluster a tile, 0 stream-K)
                    cfg_id, _, ks = str(c).partition(":")
                    groups[f"c{c}"] = [
                        lambda s=s, c=int(cfg_id), ks=int(ks or -1): torch.ops.quantkernels.cuda_wxa16_gemm_wgmma(
                            x, s.qweight, s.scales[dt], None, None, 128, None, 4, ws, c, ks) for s in states]
                groups["auto"] = [lambda s=s: qk_cuda.BACKEND.linear(layer, s, x) for s in states]
                if tri is not None:
                    groups["triton"] = [lambda lay=lay: lay(x) for lay in tri]
                res = times_us(groups)
                line = variants_line(f"{k}x{n} m={m} {str(dt).split('.')[-1]}", res)
                print(line, flush=True)
                lines.append(line)
            del dense
        del states, old_states, tri
        torch.cuda.empty_cache()
    save_lines(out_dir, "wgmma_m.txt", lines)


def small_m(shapes, m_list, out_dir, dtypes=(torch.float16, torch.bfloat16)):
    """m <= 16, the memory-bound cells: per shape and m, cuBLAS and the GEMM without a workspace
    (`plain`: the plain tiles), with one (`auto`: what QuantLinear runs), and the forced variants of
    SMALL_VARIANTS_M8 / _M16 (`tN`: tile N; `tNkS`: tile N with K split over S blocks through the
    workspace; `sk7`: the stream-K tile), for int4 g128 fp16 / bf16 and int8 per-channel fp16
    (`dtypes` narrows the int4 activation dtypes)."""
    lines = []
    for k, n in shapes:
        for bits, gs, dts in ((4, 128, dtypes), (8, -1, (torch.float16,))):
            codes, scales, zeros = make_quant(k, n, bits, gs)
            cfg = QuantConfig(bits=bits, group_size=gs, sym=True)
            qbytes = n * k * bits // 8 + scales.numel() * 2
            _, states = prepared_copies(codes, scales, zeros, cfg, copies_for(qbytes))
            gsz = states[0].group_size
            dense = torch.randn(n, k, device="cuda", dtype=torch.float16)
            for m in m_list:
                for dt in dts:
                    x = torch.randn(m, k, device="cuda", dtype=dt)
                    copies = [dense.to(dt).clone() for _ in range(copies_for(n * k * 2))]
                    groups = {"cublas": [lambda w=w: torch.nn.functional.linear(x, w) for w in copies]}
                    ws = torch.zeros(qk_cuda.workspace_floats(m, n), dtype=torch.float32, device="cuda")
                    variants = [("plain", -1, None, -1), ("auto", -1, ws, -1)]
                    forced = SMALL_VARIANTS_M8 if m <= 8 else SMALL_VARIANTS_M16 if m <= 16 else ()
                    variants += [(f"t{t}" + (f"k{ks}" if ks > 1 else ""), t, ws if ks > 1 or t in STREAMK_TILES else None, ks)
                                 for t, ks in forced]
                    for name, tile, w, ks in variants:
                        groups[name] = [
                            lambda s=s, tile=tile, w=w, ks=ks: torch.ops.quantkernels.cuda_wxa16_gemm(
                                x, s.qweight, s.scales[dt], None, None, gsz, None, bits, w, tile, ks)
                            for s in states]
                    res = times_us(groups)
                    del groups, copies
                    line = f"{k}x{n} m={m} int{bits} {str(dt).split('.')[-1]}: " + " ".join(
                        f"{key}={v:.1f}" for key, v in res.items())
                    line += " | x" + " ".join(f"{key}={res['cublas'] / v:.2f}" for key, v in res.items() if key != "cublas")
                    print(line, flush=True)
                    lines.append(line)
            del states
            torch.cuda.empty_cache()
    save_lines(out_dir, "small_m.txt", lines)


def dequant_and_threshold(shapes, out_dir):
    """The large-m path in parts: the dequantize kernel alone (GB/s against a device-to-device copy
    timed in the same run), and at m = 64 .. 4096 the fused kernel (m <= 256) and dequantize +
    cuBLAS against cuBLAS: sets GEMM_MAX_M in quantkernels/backends/cuda.py."""
    nbytes = 1 << 30
    src = torch.empty(nbytes // 2, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(src)
    copy_us, _ = time_us([lambda: dst.copy_(src)], target_ms=20)
    copy_gbs = 2 * nbytes / copy_us / 1e3
    del src, dst
    lines = [f"# device-to-device copy of 1 GiB: {copy_us:.0f} us = {copy_gbs:.0f} GB/s (read + write)"]
    print(lines[0], flush=True)
    for k, n in shapes:
        codes, scales, zeros = make_quant(k, n, 4, 128)
        cfg = QuantConfig(bits=4, group_size=128, sym=True)
        qbytes = n * k // 2 + scales.numel() * 2
        layer, states = prepared_copies(codes, scales, zeros, cfg, copies_for(qbytes))
        dt = torch.float16
        dq = [lambda s=s: torch.ops.quantkernels.cuda_wxa16_dequantize(s.qweight, s.scales[dt], None, None, 128, 4)
              for s in states]
        dq_us, _ = time_us(dq)
        moved = qbytes + n * k * 2
        line = f"{k}x{n} dequant int4-g128 f16: {dq_us:.1f} us, {moved / dq_us / 1e3:.0f} GB/s"
        print(line, flush=True)
        lines.append(line)
        w = reference.dequantize(layer.portable_tensors()["qweight"], layer.qzeros, scales, layer.g_idx, 4, dt)
        dense = [w] + [w.clone() for _ in range(copies_for(n * k * 2) - 1)]
        for m in (64, 96, 128, 256, 1024, 4096):
            x = torch.randn(m, k, device="cuda", dtype=dt)
            groups = {"cublas": [lambda w=w: torch.nn.functional.linear(x, w) for w in dense]}
            if m <= 256:
                groups["fused"] = [lambda s=s: torch.ops.quantkernels.cuda_wxa16_gemm(
                    x, s.qweight, s.scales[dt], None, None, 128, None, 4) for s in states]
            groups["dq+cublas"] = dq_cublas_fns(x, states)
            res = times_us(groups)
            line = f"{k}x{n} m={m}: " + " ".join(f"{key}={v:.1f}" for key, v in res.items())
            line += "  vs cublas: " + " ".join(f"{key}={res['cublas'] / v:.2f}" for key, v in res.items() if key != "cublas")
            print(line, flush=True)
            lines.append(line)
        del states, dense
        torch.cuda.empty_cache()
    save_lines(out_dir, "dequant.txt", lines)


def profile_once(out_dir):
    """One launch of the fused kernel per case, nothing else, for Nsight Compute
    (`ncu -k regex:wxa16_gemm_kernel --section ... python3 benchmarks/gpu_gemm.py --profile`)."""
    k, n = 8192, 28672
    codes, scales, zeros = make_quant(k, n, 4, 128)
    layer, states = prepared_copies(codes, scales, zeros, QuantConfig(bits=4, group_size=128, sym=True), 1)
    s = states[0]
    for m in (1, 16, 32, 64):
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        torch.ops.quantkernels.cuda_wxa16_gemm(x, s.qweight, s.scales[x.dtype], None, None, 128, None, 4)
    torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="two shapes, m in 1,16,64,256,1024")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="directory for gpu_gemm.md/.csv")
    ap.add_argument("--no-triton", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="time every GEMM tile shape instead (tuning)")
    ap.add_argument("--dequant", action="store_true", help="time the large-m path in parts instead")
    ap.add_argument("--profile", action="store_true", help="one launch per case, for ncu")
    ap.add_argument("--small", action="store_true", help="m <= 16 variants (plain / stream-K tiles) instead")
    ap.add_argument("--mid", action="store_true", help="16 < m <= 256 variants (plain / middle-m tiles) instead")
    ap.add_argument("--wgmma", action="store_true", help="the Hopper wgmma GEMM's configs against the old path instead")
    ap.add_argument("--configs", help="wgmma configs to force in --wgmma, comma-separated C or C:KSPLIT (default: all)")
    ap.add_argument("--shapes", help="subset of KxN shapes, comma-separated (default: all six)")
    ap.add_argument("--ms", help="subset of m values, comma-separated")
    ap.add_argument("--dtypes", default="float16,bfloat16", help="--small, --wgmma: int4 activation dtypes, comma-separated")
    args = ap.parse_args()
    shape_sel = SHAPES if not args.shapes else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    m_sel = None if not args.ms else [int(v) for v in args.ms.split(",")]
    if args.small:
        print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
        small_m(shape_sel, m_sel or [1, 4, 16], args.out, [getattr(torch, d) for d in args.dtypes.split(",")])
        return
    if args.mid:
        print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
        mid_m(shape_sel, m_sel or [16, 32, 64, 128, 256], args.out, not args.no_triton and backends.unavailable_reason("triton") is None)
        return
    if args.wgmma:
        print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
        configs = range(WGMMA_CONFIGS) if args.configs is None else [c for c in args.configs.split(",") if c]
        wgmma_m(shape_sel, m_sel or [16, 32, 64, 128, 256], args.out,
                not args.no_triton and backends.unavailable_reason("triton") is None, configs,
                [getattr(torch, d) for d in args.dtypes.split(",")])
        return
    if args.profile:
        profile_once(args.out)
        return
    if args.dequant:
        print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
        dequant_and_threshold(SHAPES, args.out)
        return
    if args.sweep:
        print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
        sweep_tiles(SHAPES, args.out)
        return
    shapes = [(4096, 4096), (8192, 28672)] if args.quick else shape_sel
    m_list = [1, 16, 64, 256, 1024] if args.quick else m_sel or M_LIST
    dev = torch.cuda.get_device_name()
    print(f"# {dev}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    triton_reason = "disabled" if args.no_triton else backends.unavailable_reason("triton")
    print(f"# triton backend: {'available' if triton_reason is None else triton_reason}", flush=True)

    rows = []
    for k, n in shapes:
        t_shape = time.perf_counter()
        codes4, scales4, zeros4 = make_quant(k, n, 4, 128)
        cfg4 = QuantConfig(bits=4, group_size=128, sym=True)
        q4_bytes = n * k // 2 + scales4.numel() * 2
        layer4, states4 = prepared_copies(codes4, scales4, zeros4, cfg4, copies_for(q4_bytes))
        codes8, scales8, zeros8 = make_quant(k, n, 8, -1)
        cfg8 = QuantConfig(bits=8, group_size=-1, sym=True)
        q8_bytes = n * k + scales8.numel() * 2
        layer8, states8 = prepared_copies(codes8, scales8, zeros8, cfg8, copies_for(q8_bytes))
        dense = {}
        for dt in (torch.float16, torch.bfloat16):
            w = reference.dequantize(layer4.portable_tensors()["qweight"], layer4.qzeros, scales4, layer4.g_idx, 4, dt)
            dense[dt] = [w] + [w.clone() for _ in range(copies_for(n * k * 2) - 1)]
        tg, tg_err = tinygemm_copies(codes4, k, n, copies_for(q4_bytes))
        if tg is None:
            print(f"# tinygemm unavailable: {tg_err}", flush=True)
        triton_layers = triton_copies(codes4, scales4, zeros4, cfg4, copies_for(q4_bytes)) if triton_reason is None else None

        for m in m_list:
            for dt in (torch.float16, torch.bfloat16):
                x = torch.randn(m, k, device="cuda", dtype=dt)
                # cuBLAS and every kernel of this (m, dtype) timed interleaved (time_interleaved)
                groups = {"cublas": [lambda w=w: torch.nn.functional.linear(x, w) for w in dense[dt]],
                          "ours": [lambda s=s: qk_cuda.BACKEND.linear(layer4, s, x) for s in states4]}
                if dt == torch.bfloat16 and tg is not None:
                    groups["tinygemm"] = [lambda p=p, sz=sz: torch.ops.aten._weight_int4pack_mm(x, p, 128, sz)
                                          for p, sz in tg]
                if dt == torch.float16 and triton_layers is not None:
                    groups["triton"] = [lambda lay=lay: lay(x) for lay in triton_layers]
                if dt == torch.float16 and m <= 64:
                    groups["int8"] = [lambda s=s: qk_cuda.BACKEND.linear(layer8, s, x) for s in states8]
                if m in (64, 256):  # both CUDA paths, for the dispatch threshold
                    groups["fused"] = [lambda s=s: torch.ops.quantkernels.cuda_wxa16_gemm(
                        x, s.qweight, s.scales[dt], None, None, 128, None, 4) for s in states4]
                    groups["dq+cublas"] = dq_cublas_fns(x, states4)
                try:
                    t = time_interleaved(groups)
                except Exception as e:  # noqa: BLE001  (a triton failure must not lose the CUDA row)
                    print(f"# interleaved timing failed at m={m}: {type(e).__name__}: {e}; without triton", flush=True)
                    groups.pop("triton", None)
                    t = time_interleaved(groups)
                cub_us, (us, mode) = t["cublas"][0], t["ours"]
                act = (m * k + m * n) * 2
                row = Row(k, n, m, "int4-g128", str(dt).split(".")[-1], us, (q4_bytes + act) / us / 1e3,
                          2 * m * n * k / us / 1e6, cub_us, cub_us / us)
                if "tinygemm" in t:
                    row.tinygemm_us = t["tinygemm"][0]
                    row.vs_tinygemm = row.tinygemm_us / us
                if "triton" in t:
                    row.triton_us = t["triton"][0]
                if "fused" in t:
                    row.fused_us, row.dq_cublas_us = t["fused"][0], t["dq+cublas"][0]
                rows.append(row)
                print(f"  {k}x{n} m={m} {row.dtype} int4: {us:.1f} us ({mode}), cuBLAS {cub_us:.1f} us, "
                      f"x{row.speedup:.2f}", flush=True)
                if "int8" in t:  # against the cuBLAS fp16 time of the same rounds
                    us8 = t["int8"][0]
                    int8_row = Row(k, n, m, "int8-ch", "float16", us8, (q8_bytes + act) / us8 / 1e3,
                                   2 * m * n * k / us8 / 1e6, cub_us, cub_us / us8)
            if m <= 64:
                rows.append(int8_row)
        del states4, states8, dense, tg, triton_layers
        torch.cuda.empty_cache()
        print(f"# shape {k}x{n} done in {time.perf_counter() - t_shape:.0f} s", flush=True)

    header = ["K", "N", "m", "format", "dtype", "µs", "GB/s", "TFLOP/s", "cuBLAS µs", "vs cuBLAS",
              "tinygemm µs", "vs tinygemm", "triton µs", "fused µs", "dq+cuBLAS µs"]

    def fmt(v):
        if isinstance(v, float):
            return "-" if math.isnan(v) else (f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}")
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        vals = [r.K, r.N, r.m, r.fmt, r.dtype.replace("float", "f"), r.us, r.gbs, r.tflops, r.cublas_us, r.speedup,
                r.tinygemm_us, r.vs_tinygemm, r.triton_us, r.fused_us, r.dq_cublas_us]
        lines.append("| " + " | ".join(fmt(v) for v in vals) + " |")
    table = "\n".join(lines)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_gemm.md"), "w") as f:
            f.write(f"{dev}, torch {torch.__version__}\n\n{table}\n")
        with open(os.path.join(args.out, "gpu_gemm.csv"), "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow([fl.name for fl in dataclasses.fields(Row)])
            for r in rows:
                wr.writerow(dataclasses.astuple(r))
    print(table)
    # bf16 vs fp16 of our kernel, per point (target: within 5%)
    worst = max(
        ((r.us / next(q.us for q in rows if (q.K, q.N, q.m, q.fmt, q.dtype) == (r.K, r.N, r.m, r.fmt, "float16")), r)
         for r in rows if r.dtype == "bfloat16"),
        key=lambda pair: pair[0],
    )
    print(f"# worst bf16/fp16 time ratio: {worst[0]:.3f} at {worst[1].K}x{worst[1].N} m={worst[1].m}")


if __name__ == "__main__":
    main()
