"""Check and tune the Triton W4A16/W8A16 kernels on a GPU; time them against cuBLAS fp16.

    PYTHONPATH=$PWD python benchmarks/triton_gemm.py            # check + sweep + table
    PYTHONPATH=$PWD python benchmarks/triton_gemm.py --only table --shapes 8192x28672

Method: the "graph" columns (the ones the targets are about) use ``time_us`` from
benchmarks/gpu_gemm.py: a CUDA graph of many calls cycling through weight copies totalling > 2x L2
(every call reads its weights from HBM), median over replays; the eager columns are
``triton.testing.do_bench`` medians (L2 flushed, same copies) and include the Python launch path.
The baseline is ``torch.mm`` (cuBLAS) on dense fp16 weights, timed the same way in the same run.
Shapes are K x N (in_features x out_features).

* ``check``: every format (4/8 bits, groups 32/64/128/channel, sym/asym, act_order g_idx,
  fp16/bf16, with/without bias) at real sizes through ``QuantLinear`` with the backend forced,
  against the fp32 reference; also under ``torch.compile``.
* ``sweep``: times (graph method) every candidate configuration of each m bucket (int4 g128 sym
  fp16) and prints the fastest, which is how the lists in quantkernels/triton/ops.py were chosen.
* ``table``: the autotuned op against cuBLAS, the numbers the issue's targets are about.
* ``asm`` (no GPU needed): compiles every 4-bit candidate for sm_90 with the local triton and
  ptxas and prints its registers, stack (spills), shared memory and the SASS of its K loop
  (instruction count, HGMMAs): how a CPU-only session checks a kernel change before GPU time.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import subprocess
import sys
import time

import torch
import triton
import triton.testing

import quantkernels as qk
from quantkernels import reference
from quantkernels.nn import QuantLinear

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_gemm import time_us  # noqa: E402  (graph timing with rotated weights, as the target table)

SHAPES = ["4096x4096", "4096x14336", "14336x4096", "8192x8192", "8192x28672", "28672x8192"]
MS = [1, 4, 16, 64, 256, 1024, 4096]
L2_BYTES = 50 * 2**20


def parse_shape(s):
    k, n = s.lower().split("x")
    return int(k), int(n)


def make_layer(k, n, cfg, bias=False, act_order=False, device="cuda"):
    lin = torch.nn.Linear(k, n, bias=bias, dtype=torch.float32, device=device)
    torch.nn.init.normal_(lin.weight, std=0.02)
    if bias:
        torch.nn.init.normal_(lin.bias, std=0.1)
    g_idx = None
    if act_order:
        gs = k if cfg.group_size == -1 else cfg.group_size
        g_idx = (torch.randperm(k, device=device) // gs).to(torch.int32)
    layer = QuantLinear.from_linear(lin, cfg, g_idx=g_idx)
    layer.backend = "triton"
    return layer


def rel_err(out, ref):
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


# ---------------------------------------------------------------------------------------------------
def check_cases():
    """(config, K, N, dtype, bias, ms): every format once at a real size, plus dtype/shape variants."""
    cases = []
    for bits in (4, 8):
        for gs in (32, 64, 128, -1):
            for sym in (True, False):
                cfg = qk.QuantConfig(bits=bits, group_size=gs, sym=sym)
                cases.append((cfg, 4096, 14336, torch.float16, bits == 8, (1, 16, 33, 100, 513)))
    for bits, gs, sym in ((4, 128, False), (8, 32, True)):
        cfg = qk.QuantConfig(bits=bits, group_size=gs, sym=sym, act_order=True)
        cases.append((cfg, 14336, 4096, torch.float16, False, (1, 7, 64, 1000)))
    for gs, sym in ((128, True), (64, False)):
        cfg = qk.QuantConfig(bits=4, group_size=gs, sym=sym)
        cases.append((cfg, 8192, 8192, torch.bfloat16, True, (1, 3, 16, 64, 256, 600)))
    cases.append((qk.QuantConfig(bits=4, group_size=-1, sym=False), 1000, 776, torch.float16, True, (1, 5, 129)))
    cases.append((qk.QuantConfig(bits=8, group_size=-1, sym=True), 1000, 776, torch.bfloat16, False, (1, 5, 129)))
    return cases


def check(log, only_ms=None):
    """Fixed configurations (no autotuning: one compile per kernel and format) on every format.

    ``only_ms``: check only these m (and only their families' candidate configurations)."""
    from quantkernels.triton import ops as tops

    # Modest tiles (every format compiles within shared memory), split-K on to exercise the reduce.
    fixed = {
        "gemv": tops._cfg(BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, num_warps=4, num_stages=3),
        "small": tops._gemm(16, 64, 128, 2, 4, 3, True),
        "medium": tops._gemm(32, 64, 64, 2, 4, 3, False, False),
        "large": tops._gemm(64, 128, 64, 1, 4, 3, False),
        "dequant": tops._cfg(BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=1),
    }
    fixed_nk4 = {  # 4-bit layers (nk4 layout)
        "gemv": tops._nk4(16, 64, 128, 2, 4, 3),
        "small": tops._nk4(16, 64, 128, 2, 4, 3),
        "medium": tops._nk4(32, 64, 128, 2, 4, 3),
        "large": tops._nk4(64, 128, 128, 1, 4, 3),
        "dequant": tops._nk4_dequant(64, 128),
    }
    rows, fails = [], 0
    for cfg, k, n, dtype, bias, ms in check_cases():
        ms = [m for m in ms if only_ms is None or m in only_ms]
        with tops.force_config(fixed_nk4 if cfg.bits == 4 else fixed):
            layer = make_layer(k, n, cfg, bias=bias, act_order=cfg.act_order)
            w = layer.dequantize(torch.float32)
            # fp16 output rounding is 2**-11 ~ 4.9e-4 relative, bf16's 2**-8 ~ 3.9e-3; the weights are
            # rounded once more to the activation dtype at most: 4x headroom over the output rounding.
            bound = 2e-3 if dtype == torch.float16 else 1e-2
            for m in ms:
                x = torch.randn(m, k, device="cuda", dtype=dtype)
                ref = x.float() @ w.t()
                if layer.bias is not None:
                    ref = ref + layer.bias.float()
                out = layer(x)
                err = rel_err(out, ref)
                ok = math.isfinite(err) and err <= bound and layer._last_backend == "triton"
                fails += not ok
                rows.append((cfg.describe() + (" act_order" if cfg.act_order else ""), k, n, str(dtype)[6:], bias, m, err, ok))
                if not ok:
                    print("FAIL", rows[-1], flush=True)
    # Every candidate configuration of every family (split-K 2..8, swap-AB, unpack modes) is right.
    for cfg in (qk.QuantConfig(bits=4, group_size=128), qk.QuantConfig(bits=4, group_size=32, sym=False)):
        layer = make_layer(4096, 14336, cfg)
        w = layer.dequantize(torch.float32)
        for fam, m in (("gemv", 1), ("small", 16), ("medium", 64), ("large", 200), ("dequant", 300)):
            if only_ms is not None and m not in only_ms:
                continue
            x = torch.randn(m, 4096, device="cuda", dtype=torch.float16)
            ref = x.float() @ w.t()
            for c in tops._configs(fam, nk4=cfg.bits == 4, device=x.device, bits=cfg.bits, group_size=cfg.group_size,
                                   has_zeros=not cfg.sym):
                with tops.force_config(c):
                    err = rel_err(layer(x), ref)
                ok = err <= 2e-3
                fails += not ok
                rows.append((f"config {cfg.describe()} {fam} {c}", 4096, 14336, "float16", False, m, err, ok))
                if not ok:
                    print("FAIL", rows[-1], flush=True)
    log.write("\n".join(map(str, rows)) + "\n")
    log.flush()
    fails += check_compile(log, rows, only_ms)
    worst = max(r[6] for r in rows)
    msg = f"check: {len(rows)} cases, {fails} failures, worst rel err {worst:.2e}"
    print(msg, flush=True)
    log.write(msg + "\n" + "\n".join(map(str, rows[-5:])) + "\n")
    return fails


def check_compile(log, rows, only_ms=None):
    """torch.compile traces through the triton_op; appends its cases to rows, returns the failures."""
    fails = 0
    # torch.compile traces through the triton_op (tuned path; the first call is traced before any
    # eager call has tuned, so it uses each family's first candidate).
    layer = make_layer(4096, 4096, qk.QuantConfig(bits=4, group_size=128), bias=True)
    f = torch.compile(lambda t: layer(t) * 2.0, fullgraph=True)
    for m in (1, 16, 64, 200, 300) if only_ms is None else only_ms:
        x = torch.randn(m, 4096, device="cuda", dtype=torch.float16)
        try:
            err = rel_err(f(x), x.float() @ layer.dequantize(torch.float32).t() * 2.0 + layer.bias.float() * 2.0)
        except Exception as e:
            print(f"FAIL torch.compile m={m}: {type(e).__name__}: {str(e)[:1500]}", flush=True)
            err = float("nan")
        ok = err <= 1e-3
        fails += not ok
        rows.append(("compile int4 g128", 4096, 4096, "float16", True, m, err, ok))
        print(f"compile m={m}: rel err {err:.2e} {'ok' if ok else 'FAIL'}", flush=True)
    return fails


# ---------------------------------------------------------------------------------------------------
class Rotating:
    """Several copies of a layer's weights (> 2x L2 in total); each call uses the next copy."""

    def __init__(self, k, n, cfg, dtype):
        layer = make_layer(k, n, cfg)
        nbytes = cfg.nbytes(k, n)
        self.copies = max(2, math.ceil(2 * L2_BYTES / nbytes))
        base = layer.portable_tensors()
        import quantkernels.triton  # noqa: F401  (defines torch.ops.quantkernels.triton_linear)

        state = layer._prepare("triton")  # the layer may have prepared already (on .to / at load)
        self.args = []
        for _ in range(self.copies):
            qw = base["qweight"] if state.qweight is None else state.qweight  # nk4 layout for 4 bits
            # Each copy stands for another layer, with its own split-K workspace (as the backend gives it).
            ws = torch.zeros_like(state.workspace)
            self.args.append((qw.clone(), base["scales"].clone().to(dtype), state.zeros, state.g_idx, ws))
        self.i = 0
        self.bits, self.gs = cfg.bits, cfg.group_size

    def __call__(self, x):
        self.i = (self.i + 1) % self.copies
        return self.at(self.i, x)

    def at(self, i, x):
        qw, s, z, g, ws = self.args[i]
        return torch.ops.quantkernels.triton_linear(x, qw, s, z, g, None, self.bits, self.gs, ws)


class RotatingDense:
    def __init__(self, k, n, dtype):
        nbytes = 2 * k * n
        self.ws = [torch.randn(k, n, device="cuda", dtype=dtype) * 0.02 for _ in range(max(2, math.ceil(2 * L2_BYTES / nbytes)))]
        self.i = 0

    def __call__(self, x):
        self.i = (self.i + 1) % len(self.ws)
        return torch.mm(x, self.ws[self.i])


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def sweep(shapes, ms, log):
    from quantkernels.triton import ops as tops

    cfg = qk.QuantConfig(bits=4, group_size=128, sym=True)
    best = {}
    for s in shapes:
        k, n = parse_shape(s)
        rot = Rotating(k, n, cfg, torch.float16)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            fam = tops._family(m)
            res = []
            for c in tops._configs(fam, nk4=True, device=x.device, group_size=128, has_zeros=False):
                with tops.force_config(c):
                    try:
                        t = time_us([lambda i=i: rot.at(i, x) for i in range(rot.copies)], target_ms=4.0, replays=5)[0] * 1e-3
                    except Exception as e:  # a config the GPU cannot run (shared memory): skip it
                        log.write(f"{s} m={m} {c} failed: {type(e).__name__}: {str(e)[:200]}\n")
                        continue
                res.append((t, str(c)))
            res.sort()
            for t, c in res:
                log.write(f"{s} m={m} {t * 1e3:9.1f} us  {c}\n")
            log.flush()
            best[f"{s} m={m}"] = res[0] if res else None
            print(f"sweep {s:>11} m={m:<5} best {res[0][0] * 1e3:8.1f} us {res[0][1]}  (worst {res[-1][0] * 1e3:.1f})", flush=True)
    return best


def table(shapes, ms, log):
    cfg = qk.QuantConfig(bits=4, group_size=128, sym=True)
    rows = []
    for s in shapes:
        k, n = parse_shape(s)
        rot = Rotating(k, n, cfg, torch.float16)
        dense = RotatingDense(k, n, torch.float16)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            rot(x)  # autotune outside the timing
            t_q = bench(lambda: rot(x))
            t_d = bench(lambda: dense(x))
            # The target table's method (benchmarks/gpu_gemm.py): a CUDA graph cycling the copies.
            t_qg = time_us([lambda i=i: rot.at(i, x) for i in range(rot.copies)])[0] * 1e-3
            t_dg = time_us([lambda w=w: torch.mm(x, w) for w in dense.ws])[0] * 1e-3
            gb = (cfg.nbytes(k, n) + 2 * m * (k + n)) / (t_q * 1e-3) / 1e9
            tf = 2 * m * k * n / (t_q * 1e-3) / 1e12
            rows.append((s, m, t_q * 1e3, t_d * 1e3, t_d / t_q, gb, tf, t_qg * 1e3, t_dg * 1e3))
            print(f"{s:>11} m={m:<5} triton {t_q * 1e3:9.1f} us  cublas {t_d * 1e3:9.1f} us  {t_d / t_q:5.2f}x  {gb:7.0f} GB/s {tf:6.1f} TFLOP/s"
                  f"  | graphs: {t_qg * 1e3:.1f} vs {t_dg * 1e3:.1f} us {t_dg / t_qg:.2f}x", flush=True)
    from quantkernels.triton import ops as tops

    def label(key):  # the tuner's keys hold (family, m bucket, N, K, ...): named here as K x N
        return f"{key[0]} m<={key[1]} KxN {key[3]}x{key[2]} {key}"

    log.write(json.dumps({label(k): str(v) for k, v in tops.CHOSEN.items()}, indent=1) + "\n")
    for key, times in tops.TIMINGS.items():  # every candidate the tuner timed (CUDA graph, same weights)
        log.write(f"{label(key)}\n" + "".join(f"  {t * 1e3:9.1f} us  {c}\n" for t, c in times))
    return rows


# ---------------------------------------------------------------------------------------------------
def sm90_compile(cfg, zeros=False, dtype="fp16", fn=None):
    """``qgemm_nk4_kernel`` (its stream-K twin for STREAM_K candidates, or ``fn``) compiled for sm_90 without a GPU, int4 g128, EVEN_K, with the
    pointer and size arguments marked 16-divisible as a real launch specialises them (without that
    Triton neither vectorises nor pipelines the loads and the counts mean nothing)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from quantkernels.triton import kernels

    if fn is None:
        fn = kernels.qgemm_nk4_streamk_kernel if cfg.kwargs.get("STREAM_K") else kernels.qgemm_nk4_kernel
    names = fn.arg_names
    ptrs = {"x_ptr": dtype, "qt_ptr": "u8", "s_ptr": dtype, "z_ptr": "u8" if zeros else dtype, "gidx_ptr": "i32",
            "bias_ptr": dtype, "out_ptr": dtype, "ws_ptr": "fp32", "cnt_ptr": "i32"}
    const = dict(GROUP_SIZE=128, HAS_ZEROS=zeros, HAS_GIDX=False, HAS_BIAS=False, USE_ASM=True, EVEN_K=True,
                 DOT_F32=False, **cfg.kwargs)
    sig = {a: "constexpr" if a in const else ("*" + ptrs[a] if a in ptrs else "i32") for a in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(names) if sig[a] != "constexpr" and a != "M"}
    src = ASTSource(fn, sig, {(names.index(a),): v for a, v in const.items() if a in names}, attrs)
    opts = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)


def sass_summary(compiled, tool_dir):
    """(registers, stack bytes, shared bytes, K-loop instruction count, Counter of its opcodes).

    The K loop is the innermost (shortest) backward branch whose body holds an HGMMA (or FFMA)."""
    path = os.path.join(tool_dir, "kernel.cubin")
    with open(path, "wb") as f:
        f.write(compiled.asm["cubin"])
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    env = dict(os.environ, PATH=os.environ.get("PATH", "") + os.pathsep + bindir)
    usage = subprocess.run(["cuobjdump", "--dump-resource-usage", path], capture_output=True, text=True, env=env).stdout
    sass = subprocess.run(["nvdisasm", "-c", path], capture_output=True, text=True, env=env).stdout
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))
    ins, labels, pending = [], {}, []
    for line in sass.splitlines():
        lab = re.match(r"\s*\.L_x_(\d+):", line)
        if lab:
            pending.append(lab.group(1))
            continue
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            addr = int(m.group(1), 16)
            for name in pending:
                labels[name] = addr
            pending = []
            ins.append((addr, m.group(2).strip()))
    loop = []
    for addr, text in ins:
        t = re.search(r"BRA.*\.L_x_(\d+)", text)
        if t and labels.get(t.group(1), addr + 1) < addr:
            body = [x for a, x in ins if labels[t.group(1)] <= a <= addr]
            if any("HGMMA" in x or "FFMA" in x for x in body) and (not loop or len(body) < len(loop)):
                loop = body
    ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", x).split()[0].split(".")[0] for x in loop)
    return regs, stack, compiled.metadata.shared, len(loop), ops


def asm_report(out_dir):
    """Every 4-bit candidate (int4 g128 sym fp16) compiled for sm_90: resources and K-loop SASS."""
    from quantkernels.triton import ops as tops

    seen = set()
    for fam, cands in tops.CONFIGS_NK4.items():
        for c in cands:
            if c.kwargs.get("DEQUANT") or str(c) in seen:
                continue
            seen.add(str(c))
            regs, stack, smem, n, ops = sass_summary(sm90_compile(c), out_dir)
            top = " ".join(f"{o}:{k}" for o, k in ops.most_common(8))
            flags = " ".join(f"{k}={v}" for k, v in c.kwargs.items())
            print(f"{fam:>7} {flags} warps={c.num_warps} stages={c.num_stages}\n        regs {regs} stack {stack} smem {smem // 1024} KiB | K loop {n} instr: {top}",
                  flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["check", "compile", "sweep", "table", "asm"], action="append")
    p.add_argument("--shapes", nargs="*", default=SHAPES)
    p.add_argument("--ms", nargs="*", type=int, default=MS)
    p.add_argument("--check-ms", nargs="*", type=int, default=None, help="check: only these m")
    p.add_argument("--sweep-ms", nargs="*", type=int, default=[1, 16, 64, 1024])
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    a = p.parse_args()
    parts = a.only or ["check", "sweep", "table"]
    if parts == ["asm"]:
        asm_report(a.out)
        return
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}", flush=True)
    fails = 0
    if "check" in parts:
        with open(os.path.join(a.out, "triton_check.log"), "w") as log:
            t0 = time.time()
            fails = check(log, a.check_ms)
            print(f"check took {time.time() - t0:.0f}s", flush=True)
    if "compile" in parts:  # only the torch.compile cases of check
        with open(os.path.join(a.out, "triton_compile.log"), "w") as log:
            fails += check_compile(log, [], a.check_ms)
    if "sweep" in parts:
        with open(os.path.join(a.out, "triton_sweep.log"), "w") as log:
            t0 = time.time()
            sweep(a.shapes, a.sweep_ms, log)
            print(f"sweep took {time.time() - t0:.0f}s", flush=True)
    if "table" in parts:
        with open(os.path.join(a.out, "triton_table.log"), "w") as log:
            rows = table(a.shapes, a.ms, log)
        print("\nint4 g128 sym fp16, median us, rotated weights, speedup = cuBLAS / triton")
        print("(eager: do_bench, includes the Python launch path; graph: gpu_gemm.time_us, the target method)")
        print(f"{'KxN':>11} {'m':>5} {'triton':>9} {'cuBLAS':>9} {'speedup':>7} {'graph tr':>9} {'graph cb':>9} {'speedup':>7}")
        for s, m, tq, td, sp, gb, tf, tqg, tdg in rows:
            print(f"{s:>11} {m:>5} {tq:9.1f} {td:9.1f} {sp:6.2f}x {tqg:9.1f} {tdg:9.1f} {tdg / tqg:6.2f}x")
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
