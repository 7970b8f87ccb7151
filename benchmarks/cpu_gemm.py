"""CPU quantized GEMM/GEMV benchmark: quantkernels' cpu backend against PyTorch's own CPU paths.

For each (K x N layer, m, threads) it times, in the same run and with the same thread count:
quantkernels W4A16 g128 (fp32 and bf16 activations), W8A16 per-channel, W4A8 g128 and W8A8
per-channel with dynamic per-token int8 activations; fp32 and bf16 ``torch.matmul``;
``aten._weight_int4pack_mm_for_cpu`` (g128; the faster of fp32/bf16 activations);
``aten._weight_int8pack_mm`` (the faster of fp32/bf16); ``torch.ao.quantization.quantize_dynamic``
(qint8, per-tensor activation scale). It also measures the read bandwidth (a read-only reduction of a
512 MiB buffer with the same threads, right before each m = 1 set, once on ordinary 4 KiB pages and
once on transparent huge pages, where our repacked weights live) and reports each int4 GEMV as a
fraction of the higher of the two.

Each cell runs its methods in interleaved rounds (``--rounds``, default 3: every method, and the
bandwidth probe before the GEMVs, once per round, in turn), so that baselines and kernels see the
same minutes of a shared machine's memory system; a method's time is the median over the rounds of
its per-round medians after warm-up. Layers whose weights are smaller than 4x the L3 (32 MiB) are
rotated over several copies so that every call streams its weights from DRAM, as in a real model.
GB/s counts the weight bytes each method reads (packed codes; int4 = 0.5 byte/weight, scales
excluded); GOP/s counts 2*m*N*K.

    PYTHONPATH=$PWD python benchmarks/cpu_gemm.py                       # full sweep (long on 2 cores)
    PYTHONPATH=$PWD python benchmarks/cpu_gemm.py --targets             # only what the issue's targets need
    PYTHONPATH=$PWD python benchmarks/cpu_gemm.py --shapes 4096x11008 --m 1 32 --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import gc
import platform
import statistics
import time
import warnings

import torch

from quantkernels import QuantConfig, _ext
from quantkernels.nn import QuantLinear

warnings.filterwarnings("ignore")
SHAPES = [(4096, 11008), (11008, 4096), (8192, 28672)]  # K x N (Llama-7B MLP, and a 70B-class MLP)
MS = [1, 8, 32, 128]
L3_BYTES = 32 << 20
OURS = {  # name -> (QuantConfig, activation dtype)
    "qk w4a16 g128": (QuantConfig(4, 128, sym=True), torch.float32),
    "qk w4a16 g128 bf16": (QuantConfig(4, 128, sym=True), torch.bfloat16),
    "qk w8a16 chan": (QuantConfig(8, -1, sym=True), torch.float32),
    "qk w4a8 g128": (QuantConfig(4, 128, sym=True, act_bits=8), torch.float32),
    "qk w8a8 chan": (QuantConfig(8, -1, sym=True, act_bits=8), torch.float32),
}
BASELINES = ["fp32 matmul", "bf16 matmul", "int4pack_mm", "int8pack_mm", "quantize_dynamic"]


def median_ms(fn, args_list, min_reps=5, budget_s=1.5):
    """Median wall time of fn(args) in ms, cycling through args_list (one entry per weight copy).

    Calls slower than half a second (bf16 matmul without AVX512-BF16 hardware can take seconds) get
    one warm-up and 3 timed runs, so that a sweep still ends."""
    t0 = time.perf_counter()
    fn(args_list[0])
    if time.perf_counter() - t0 > 0.5:
        min_reps, budget_s = 3, 0.0
    else:
        for a in args_list[1:2]:
            fn(a)
    times, i, start = [], 0, time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < 200):
        a = args_list[i % len(args_list)]
        t0 = time.perf_counter()
        fn(a)
        times.append(time.perf_counter() - t0)
        i += 1
    return statistics.median(times) * 1e3


def copies_for(nbytes):
    return max(1, min(8, -(-4 * L3_BYTES // max(1, nbytes))))


def read_bandwidth_gbs():
    """The machine's read bandwidth (GB/s) as (on ordinary 4 KiB pages, on transparent huge pages):
    torch.sum over a 512 MiB fp32 buffer. The repacked weights live on huge pages where the OS grants
    them (backends/cpu.py), so the probe reads both kinds and the GEMV is compared with the higher."""
    out = []
    for huge in (False, True):
        if huge:
            buf = torch.ops.quantkernels.cpu_empty_huge_pages(512 << 20).view(torch.float32).fill_(1.0)
        else:
            buf = torch.ones(128 << 20, dtype=torch.float32)  # 512 MiB
        ms = median_ms(lambda b: b.sum(), [buf], min_reps=5, budget_s=1.0)
        del buf
        out.append((512 << 20) / ms / 1e6)
    return tuple(out)


def make_ours(cfg, k, n, gen):
    g = cfg.num_groups(k)
    codes = torch.randint(0, cfg.maxq + 1, (n, k), dtype=torch.uint8, generator=gen)
    scales = (torch.rand(g, n, generator=gen) * 0.01 + 1e-3).to(torch.float16)
    zeros = torch.full((g, n), 1 << (cfg.bits - 1), dtype=torch.int32)
    return QuantLinear.from_codes(codes, scales, zeros, cfg)


def bench_shape(k, n, ms, threads, only, gen, rounds=3):
    rows = []
    w = torch.randn(n, k, generator=gen) * 0.02
    methods = {}

    def want(name):
        return only is None or name in only

    # ---- baselines ------------------------------------------------------------------------------
    if want("fp32 matmul"):
        ws = [w.t().contiguous() for _ in range(copies_for(4 * n * k))]
        methods["fp32 matmul"] = (lambda x, wt: torch.matmul(x, wt), ws, torch.float32, 4 * n * k)
    if want("bf16 matmul"):
        ws = [w.t().contiguous().to(torch.bfloat16) for _ in range(copies_for(2 * n * k))]
        methods["bf16 matmul"] = (lambda x, wt: torch.matmul(x, wt), ws, torch.bfloat16, 2 * n * k)
    if want("int4pack_mm"):
        q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
        packs = [torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1) for _ in range(copies_for(n * k // 2))]
        sz = torch.rand(k // 128, n, 2, generator=gen) * 0.01
        methods["int4pack_mm"] = ("int4pack", packs, sz, n * k // 2)
    if want("int8pack_mm"):
        q8 = [torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen) for _ in range(copies_for(n * k))]
        s8 = torch.rand(n, generator=gen) * 0.01
        methods["int8pack_mm"] = ("int8pack", q8, s8, n * k)
    if want("quantize_dynamic"):
        lins = []
        for _ in range(copies_for(n * k)):
            lin = torch.nn.Linear(k, n, bias=False)
            lin.weight.data.copy_(w)
            lins.append(torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8))
        methods["quantize_dynamic"] = (lambda x, mod: mod(x), lins, torch.float32, n * k)
    ours = {}
    for name, (cfg, adt) in OURS.items():
        if want(name):
            layers = [make_ours(cfg, k, n, gen) for _ in range(copies_for(n * k * cfg.bits // 8))]
            ours[name] = (layers, adt, n * k * cfg.bits // 8)

    for nt in threads:
        torch.set_num_threads(nt)
        for m in ms:
            x32 = torch.randn(m, k, generator=gen)
            timers = {}  # name -> (budget_s -> median ms over that method's weight copies, weight bytes)
            for name, spec in methods.items():
                if spec[0] in ("int4pack", "int8pack"):
                    _, ws, sc, nbytes = spec
                    op = (lambda xd, p, szd: torch.ops.aten._weight_int4pack_mm_for_cpu(xd, p, 128, szd)) if spec[0] == "int4pack" \
                        else (lambda xd, p, szd: torch.ops.aten._weight_int8pack_mm(xd, p, szd))
                    # the faster of fp32 and bf16 activations
                    timers[name] = (lambda budget, op=op, ws=ws, sc=sc: min(
                        median_ms(lambda p, xd=x32.to(dt), szd=sc.to(dt): op(xd, p, szd), ws, budget_s=budget)
                        for dt in (torch.float32, torch.bfloat16)), nbytes)
                else:
                    fn, args, dt, nbytes = spec
                    timers[name] = (lambda budget, fn=fn, args=args, xd=x32.to(dt): median_ms(lambda a: fn(xd, a), args, budget_s=budget), nbytes)
            for name, (layers, adt, nbytes) in ours.items():
                xd = x32.to(adt)
                assert layers[0](xd).shape == (m, n) and layers[0]._last_backend == "cpu"
                timers[name] = (lambda budget, layers=layers, xd=xd: median_ms(lambda l: l(xd), layers, budget_s=budget), nbytes)
            # Rounds: every method (and, before the GEMVs it is compared with, the bandwidth probe) once
            # per round, in turn, so that all of them see the same minutes of this shared machine's
            # memory system; each method's time is the median over rounds. A method slower than half
            # a second a call (bf16 matmul without AVX512-BF16) is timed in the first round only.
            samples, bws = {name: [] for name in timers}, []
            for r in range(rounds):
                if m == 1:
                    bw_small, bw_huge = read_bandwidth_gbs()
                    bws.append(max(bw_small, bw_huge))
                    print(f"# read bandwidth, {nt} thread(s), round {r + 1}/{rounds} before K={k} N={n} m=1: {bw_small:.1f} GB/s on "
                          f"4 KiB pages, {bw_huge:.1f} GB/s on huge pages (%readBW is against the higher)", flush=True)
                for name, (timer, _) in timers.items():
                    if r == 0 or samples[name][0] < 500:
                        samples[name].append(timer(1.5 / rounds))
            bw_gbs = statistics.median(bws) if bws else None
            res = {name: (statistics.median(samples[name]), nbytes) for name, (_, nbytes) in timers.items()}
            for name, (t, nbytes) in res.items():
                row = dict(K=k, N=n, m=m, threads=nt, method=name, ms=t, gbs=nbytes / t / 1e6, gops=2 * m * n * k / t / 1e6)
                for b in BASELINES:
                    if b in res and name.startswith("qk"):
                        row["x " + b] = res[b][0] / t
                if name.startswith("qk w4") and m == 1 and bw_gbs:
                    row["of read bw"] = row["gbs"] / bw_gbs
                rows.append(row)
                print(fmt_row(row), flush=True)
            del x32
    del methods, ours
    gc.collect()
    return rows


HEADER = (
    f"{'K':>6} {'N':>6} {'m':>4} {'thr':>3} {'method':<20} {'ms':>9} {'wGB/s':>7} {'GOP/s':>7} "
    + " ".join(f"{'x' + b.split()[0][:9]:>10}" for b in BASELINES)
    + f" {'%readBW':>8}"  # of the higher of the 4 KiB-page and huge-page probes
)


def fmt_row(r):
    s = f"{r['K']:>6} {r['N']:>6} {r['m']:>4} {r['threads']:>3} {r['method']:<20} {r['ms']:>9.3f} {r['gbs']:>7.1f} {r['gops']:>7.1f} "
    s += " ".join(f"{r['x ' + b]:>10.2f}" if "x " + b in r else f"{'':>10}" for b in BASELINES)
    if "of read bw" in r:
        s += f" {100 * r['of read bw']:>7.0f}%"
    return s


def find(rows, k, n, m, method, threads=2):
    for r in rows:
        if (r["K"], r["N"], r["m"], r["method"], r["threads"]) == (k, n, m, method, threads):
            return r
    return None


def report_targets(rows):
    print("\nTargets (2 threads):")

    def line(desc, value, goal, ok):
        state = "n/a" if value is None else ("MET" if ok else "not met")
        v = "-" if value is None else f"{value:.2f}"
        print(f"  {desc:<72} {v:>8}  (goal {goal})  {state}")

    r = find(rows, 8192, 28672, 1, "qk w4a16 g128")
    for key, goal, desc in (
        ("of read bw", 0.90, "W4A16 g128 m=1 8192x28672: fraction of read bandwidth"),
        ("x int4pack_mm", 1.4, "W4A16 g128 m=1 8192x28672: speedup vs _weight_int4pack_mm_for_cpu"),
        ("x fp32 matmul", 10.0, "W4A16 g128 m=1 8192x28672: speedup vs fp32 matmul"),
    ):
        v = r.get(key) if r else None
        line(desc, v, f">= {goal}", v is not None and v >= goal)
    if r:
        line("W4A16 g128 m=1 8192x28672: ms (llama.cpp Q4_0 reference: <= 2.7 ms)", r["ms"], "<= 2.7", r["ms"] <= 2.7)
    r = find(rows, 4096, 11008, 32, "qk w4a8 g128")
    for key, goal, desc in (
        ("x quantize_dynamic", 1.0, "W4A8 g128 m=32 4096x11008: speedup vs quantize_dynamic"),
        ("x bf16 matmul", 2.0, "W4A8 g128 m=32 4096x11008: speedup vs bf16 matmul"),
    ):
        v = r.get(key) if r else None
        line(desc, v, f">= {goal}", v is not None and v >= goal)
    for m in (32, 128):
        r = find(rows, 4096, 11008, m, "qk w8a8 chan")
        v = r.get("x quantize_dynamic") if r else None
        line(f"W8A8 per-token m={m} 4096x11008: speedup vs quantize_dynamic", v, ">= 1.1", v is not None and v >= 1.1)
    for name in ("qk w4a16 g128", "qk w4a16 g128 bf16"):
        r = find(rows, 4096, 11008, 128, name)
        v = r.get("x bf16 matmul") if r else None
        line(f"{name[3:]} m=128 4096x11008: speedup vs bf16 matmul", v, ">= 1.0", v is not None and v >= 1.0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="*", default=None, help="KxN, e.g. 4096x11008 (default: the issue's three)")
    p.add_argument("--m", nargs="*", type=int, default=MS)
    p.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    p.add_argument("--methods", nargs="*", default=None, help=f"subset of {list(OURS) + BASELINES}")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell (each method's time: median over rounds)")
    p.add_argument("--targets", action="store_true", help="only the (shape, m, method) cells the issue's targets use, 2 threads")
    args = p.parse_args()
    info = _ext.build_info()
    load = open("/proc/loadavg").read().split()[:3] if platform.system() == "Linux" else "?"
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, cpu isa {info.get('cpu_isa_selected')}, load avg {' '.join(load)}")
    gen = torch.Generator().manual_seed(0)
    rows = []
    with torch.no_grad():
        if args.targets:
            print(HEADER)
            plan = [
                ((8192, 28672), [1], ["qk w4a16 g128", "fp32 matmul", "int4pack_mm"]),
                ((4096, 11008), [32], ["qk w4a8 g128", "qk w8a8 chan", "bf16 matmul", "quantize_dynamic"]),
                ((4096, 11008), [128], ["qk w8a8 chan", "qk w4a16 g128", "qk w4a16 g128 bf16", "bf16 matmul", "quantize_dynamic"]),
            ]
            for (k, n), ms, methods in plan:
                rows += bench_shape(k, n, ms, [2], set(methods), gen, args.rounds)
        else:
            shapes = SHAPES if not args.shapes else [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
            print(HEADER)
            for k, n in shapes:
                rows += bench_shape(k, n, args.m, args.threads, set(args.methods) if args.methods else None, gen, args.rounds)
    report_targets(rows)


if __name__ == "__main__":
    main()
