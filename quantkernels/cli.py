"""The ``quantkernels`` command line: ``python -m quantkernels <command>``.

Commands: ``info`` (versions and backends), ``quantize`` (quantize a real model and save it),
``eval`` (perplexity / embedding fidelity of a method and config against float), ``bench``
(greedy-decode tokens/s, quantized against float), and ``demo``, the main job: SmolLM2 quantized
to INT8 and INT4 (GPTQ) with the size table, perplexities, speed, samples and a plot.
The models come from PyPI packages (see :mod:`quantkernels.models`); texts are given by path.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import platform
import sys
from typing import Callable, Dict, List, Optional


def cmd_info(args) -> int:
    """Versions, how the extension was built, and which backends can serve here."""
    import torch

    import quantkernels
    from quantkernels import _ext, backends

    print(f"quantkernels {quantkernels.__version__}")
    print(f"python       {platform.python_version()} ({platform.machine()})")
    print(f"torch        {torch.__version__} (CUDA {torch.version.cuda or 'none'}, GPU available: {torch.cuda.is_available()})")
    try:
        import importlib.metadata as md

        print(f"triton       {md.version('triton')}")
    except Exception:
        print("triton       not installed")
    info = _ext.build_info()
    if info:
        print("extension    quantkernels._C")
        for key in sorted(info):
            print(f"  {key:<22} {info[key]}")
    else:
        print(f"extension    not loaded: {_ext.unavailable_reason()}")
    print("backends (in order of preference):")
    for name, reason in backends.status().items():
        print(f"  {name:<10} {'available' if reason is None else 'unavailable: ' + reason}")
    return 0


DEFAULT_DATA = os.environ.get("QUANTKERNELS_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "text"))
DEFAULT_CALIB = os.path.join(DEFAULT_DATA, "pride_and_prejudice.txt")
DEFAULT_EVAL = os.path.join(DEFAULT_DATA, "emma.txt")
DEFAULT_PROMPT = "Once upon a time, in a small village by the sea,"


def _config(args):
    from quantkernels import QuantConfig

    return QuantConfig(bits=args.bits, group_size=args.group_size, sym=args.sym)


def _method_options(args) -> dict:
    """GPTQ options that differ from its defaults (quantkernels.algorithms.gptq.DEFAULTS)."""
    if args.method != "gptq":
        return {}
    opts = {}
    if args.no_act_order:
        opts["act_order"] = False
    if args.permuted_groups:
        opts["static_groups"] = False
    if args.no_mse:
        opts["mse"] = False
    if args.damp_percent is not None:
        opts["damp_percent"] = args.damp_percent
    return opts


def _check_texts(args):
    for attr in ("calib_text", "eval_text"):
        path = getattr(args, attr, None)
        if path is not None and not os.path.isfile(path):
            raise SystemExit(f"quantkernels: --{attr.replace('_', '-')} {path!r} does not exist")
    if getattr(args, "calib_text", None) and getattr(args, "eval_text", None):
        if os.path.realpath(args.calib_text) == os.path.realpath(args.eval_text):
            raise SystemExit("quantkernels: calibrate on one text and evaluate on another (--calib-text == --eval-text)")


def load_model(name: str, device: str = "cpu"):
    """``(model, tokenizer)`` of a real model, on ``device`` (quantization and evaluation follow the
    model's device; files are saved from CPU copies)."""
    import torch

    from quantkernels import models

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("quantkernels: --device cuda, but torch sees no CUDA device")
    t = time.perf_counter()
    print(f"loading {name} ...", flush=True)
    if name == "smollm2":
        model, tok = models.load_smollm2()
    elif name == "minilm":
        model, tok = models.load_minilm()
    else:
        raise SystemExit(f"quantkernels: unknown model {name!r} (smollm2, minilm)")
    print(f"loaded {name} in {time.perf_counter() - t:.1f} s", flush=True)
    return model.to(device), tok


def calibration_batches(model_name: str, tok, path: str, windows: int, window: int = 512):
    from quantkernels.evaluate import read_text, sentences, token_windows
    from quantkernels.models.minilm import encode

    text = read_text(path)
    if model_name == "minilm":
        return encode(None, tok, sentences(text, windows * 8), batch_size=32)
    return token_windows(tok, text, window, windows)


def quantize_model(model, model_name, tok, method, config, calib_text, calib_windows, progress=True, **options):
    """Quantize ``model`` in place with ``method``; returns the :class:`QuantizeSummary`."""
    import quantkernels as qk

    cal = None
    if method != "rtn":
        cal = calibration_batches(model_name, tok, calib_text, calib_windows)
        print(f"{method}: calibrating on {os.path.basename(calib_text)}, {len(cal)} batches", flush=True)
    t = time.perf_counter()
    summary = qk.quantize_(model, config, method=method, calibration=cal, progress=progress, **options)
    print(f"{method} {config.describe()}: {summary} in {time.perf_counter() - t:.1f} s", flush=True)
    return summary


def _add_model_args(p, method_default="gptq"):
    p.add_argument("--model", default="smollm2", choices=["smollm2", "minilm"])
    p.add_argument("--method", default=method_default, choices=["rtn", "gptq", "awq"])
    p.add_argument("--bits", type=int, default=4, choices=[2, 3, 4, 8])
    p.add_argument("--group-size", type=int, default=64, help="-1 for one scale per output channel")
    p.add_argument("--sym", action="store_true", help="symmetric (default asymmetric)")
    p.add_argument("--no-act-order", action="store_true",
                   help="GPTQ: quantize columns left to right (default: by decreasing Hessian diagonal)")
    p.add_argument("--permuted-groups", action="store_true",
                   help="GPTQ with act_order: groups are runs of columns in that order, recorded in g_idx "
                        "(default: static groups of consecutive columns, trivial g_idx)")
    p.add_argument("--no-mse", action="store_true", help="GPTQ: group ranges from min/max (default: MSE grid search)")
    p.add_argument("--damp-percent", type=float, default=None, help="GPTQ: Hessian damping (default 0.01)")
    p.add_argument("--calib-text", default=DEFAULT_CALIB, help="text to calibrate on (gptq/awq)")
    p.add_argument("--calib-windows", type=int, default=32, help="512-token calibration windows (MiniLM: x8 sentences)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where the model is quantized and evaluated (the reference backend serves either)")
    p.add_argument("--no-progress", action="store_true")


def cmd_quantize(args) -> int:
    """Quantize a real model and save it (safetensors: portable quantized tensors, other weights in fp16)."""
    from quantkernels.models import save_model

    _check_texts(args)
    model, tok = load_model(args.model, args.device)
    quantize_model(model, args.model, tok, args.method, _config(args), args.calib_text, args.calib_windows,
                   progress=not args.no_progress, **_method_options(args))
    size = save_model(model, args.out, float_dtype=None if args.keep_fp32 else __import__("torch").float16)
    print(f"saved {args.out}: {size / 2**20:.2f} MiB")
    return 0


def _eval_one(model_name, model, tok, args, label, reference=None):
    from quantkernels import evaluate as E

    if model_name == "minilm":
        from quantkernels.models.minilm import encode

        sents = E.sentences(E.read_text(args.eval_text), args.sentences)
        batches = encode(model, tok, sents, batch_size=64)
        if reference is None:
            return {"sentences": len(sents), "cosine": 1.0, "sqnr_db": float("inf")}
        return E.embedding_fidelity(reference, model, batches)
    windows = E.token_windows(tok, E.read_text(args.eval_text), 512, args.eval_windows)
    return {"ppl": E.perplexity(model, windows, progress=not args.no_progress, label=label)}


def cmd_eval(args) -> int:
    """Quality of one method and config against the float model (perplexity, or MiniLM cosine/SQNR)."""
    from quantkernels.evaluate import dequantized

    _check_texts(args)
    model, tok = load_model(args.model, args.device)
    base = copy.deepcopy(model)
    f = _eval_one(args.model, base, tok, args, "float")
    quantize_model(model, args.model, tok, args.method, _config(args), args.calib_text, args.calib_windows,
                   progress=not args.no_progress, **_method_options(args))
    dequantized(model)  # same function as the QuantLinear layers; avoids unpacking at every call
    q = _eval_one(args.model, model, tok, args, args.method, reference=base)
    cfg = _config(args).describe()
    if args.model == "smollm2":
        print(f"| model | method | config | ppl float | ppl quantized | change |")
        print(f"| smollm2 | {args.method} | {cfg} | {f['ppl']:.3f} | {q['ppl']:.3f} | {100 * (q['ppl'] / f['ppl'] - 1):+.2f}% |")
    else:
        print(f"| model | method | config | sentences | mean cosine | hidden SQNR dB |")
        print(f"| minilm | {args.method} | {cfg} | {q['sentences']} | {q['cosine']:.5f} | {q['sqnr_db']:.2f} |")
    return 0


def cmd_bench(args) -> int:
    """Greedy-decode tokens/s (batch 1) of the quantized model against the float one, same run."""
    from quantkernels import evaluate as E

    if args.model != "smollm2":
        raise SystemExit("quantkernels bench: only --model smollm2 (a generator)")
    _check_texts(args)
    model, tok = load_model(args.model, args.device)
    base = copy.deepcopy(model)
    quantize_model(model, args.model, tok, args.method, _config(args), args.calib_text, args.calib_windows,
                   progress=not args.no_progress, **_method_options(args))
    tf = E.tokens_per_second(base, tok, args.prompt, args.new_tokens, args.repeats)
    tq = E.tokens_per_second(model, tok, args.prompt, args.new_tokens, args.repeats)
    backends = sorted({m._last_backend for m in model.modules() if getattr(m, "_last_backend", None)})
    print(f"| model | config | float tok/s | quantized tok/s | ratio | backend |")
    print(f"| smollm2 | {args.method} {_config(args).describe()} | {tf:.2f} | {tq:.2f} | {tq / tf:.2f}x | {','.join(backends)} |")
    return 0


def cmd_demo(args) -> int:
    """The main job: SmolLM2 -> INT8 (RTN) and INT4 (GPTQ); size, perplexity, speed, samples, plot."""
    import torch

    import quantkernels as qk
    from quantkernels import evaluate as E
    from quantkernels.models import save_model

    _check_texts(args)
    t_start = time.perf_counter()
    os.makedirs(args.out_dir, exist_ok=True)
    model, tok = load_model("smollm2")
    windows = E.token_windows(tok, E.read_text(args.eval_text), 512, args.eval_windows)
    print(f"evaluation: {os.path.basename(args.eval_text)}, {len(windows)} windows x 512 tokens "
          f"(--eval-windows sets how many; docs/EVAL.md's method table uses 16, with 128 calibration windows)", flush=True)
    rows = []

    def evaluate(label, bits, m, size, ppl_model):
        ppl = E.perplexity(ppl_model, windows, progress=not args.no_progress, label=label)
        rows.append({"label": label, "bits": bits, "bytes": size, "ppl": ppl, "model": m})
        print(f"{label}: {size / 2**20:.1f} MiB on disk, perplexity {ppl:.3f}", flush=True)

    evaluate("FP32", 32, model, save_model(model, os.path.join(args.out_dir, "smollm2-fp32.safetensors")), model)
    # FP16: the weights rounded to fp16 (what the file holds), computed in fp32 on the CPU
    fp16 = copy.deepcopy(model).half().float()
    evaluate("FP16", 16, None, save_model(model, os.path.join(args.out_dir, "smollm2-fp16.safetensors"), torch.float16), fp16)
    del fp16
    jobs = [("INT8 RTN", 8, "rtn", qk.QuantConfig(bits=8, group_size=-1, sym=True)),
            ("INT4 GPTQ", 4, "gptq", qk.QuantConfig(bits=4, group_size=64, sym=False))]
    if args.with_rtn4:
        jobs.insert(1, ("INT4 RTN", 4, "rtn", qk.QuantConfig(bits=4, group_size=64, sym=False)))
    for label, bits, method, cfg in jobs:
        m = copy.deepcopy(model)
        s = quantize_model(m, "smollm2", tok, method, cfg, args.calib_text, args.calib_windows, progress=not args.no_progress)
        path = os.path.join(args.out_dir, f"smollm2-{label.lower().replace(' ', '-')}.safetensors")
        # perplexity on a dequantized copy: the same function, without unpacking weights at every call
        evaluate(f"{label} ({cfg.describe()})", bits, m, save_model(m, path, torch.float16), E.dequantized(copy.deepcopy(m)))

    print("\nspeed (greedy decode, batch 1):", flush=True)
    speed = {}
    for r in rows:
        if r.get("model") is None:
            continue
        speed[r["label"]] = E.tokens_per_second(r["model"], tok, DEFAULT_PROMPT, args.new_tokens)
    backends = sorted({m._last_backend for r in rows if r.get("model") is not None for m in r["model"].modules()
                       if getattr(m, "_last_backend", None)})
    samples = {}
    for r in rows:
        if r.get("model") is not None:
            samples[r["label"]] = E.generate(r["model"], tok, DEFAULT_PROMPT, args.sample_tokens)

    fp32 = rows[0]
    print(f"\n== SmolLM2-135M-Instruct, perplexity on {os.path.basename(args.eval_text)} "
          f"({len(windows)} windows x 512 tokens), calibration {os.path.basename(args.calib_text)} "
          f"({args.calib_windows} windows) ==")
    print("| model | bits | saved size MiB | vs FP32 | perplexity | vs FP32 | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        tps = speed.get(r["label"])
        print(f"| {r['label']} | {r['bits']} | {r['bytes'] / 2**20:.1f} | {fp32['bytes'] / r['bytes']:.2f}x smaller | "
              f"{r['ppl']:.3f} | {100 * (r['ppl'] / fp32['ppl'] - 1):+.2f}% | {'-' if tps is None else f'{tps:.2f}'} |")
    print(f"(saved size: the whole model; quantized files hold the linears' portable tensors and the embedding and "
          f"norms in fp16. Speed: quantized layers served by backend(s) {', '.join(backends) or 'none'}.)")
    print("\ngreedy samples, prompt:", repr(DEFAULT_PROMPT))
    for label, text in samples.items():
        print(f"  [{label}] {text!r}")
    png = os.path.join(args.out_dir, "size_ppl_vs_bits.png")
    plot(rows, png, len(windows))
    print(f"\nplot: {png}\ntotal time {time.perf_counter() - t_start:.0f} s")
    return 0


def plot(rows, path, n_windows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(7, 4.2))
    bits = [r["bits"] for r in rows]
    ax1.plot(bits, [r["bytes"] / 2**20 for r in rows], "o-", color="tab:blue", label="saved size (MiB)")
    for r in rows:
        ax1.annotate(r["label"].split(" (")[0], (r["bits"], r["bytes"] / 2**20), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax1.set_xscale("log", base=2)
    ax1.set_xticks([4, 8, 16, 32], ["4", "8", "16", "32"])
    ax1.set_xlabel("weight bits")
    ax1.set_ylabel("saved model size (MiB)", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(bits, [r["ppl"] for r in rows], "s--", color="tab:red", label="perplexity")
    ax2.set_ylabel(f"perplexity ({n_windows} x 512 tokens)", color="tab:red")
    ax1.set_title("SmolLM2-135M: size and perplexity against weight bit width")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


COMMANDS: Dict[str, Callable] = {
    "info": cmd_info,
    "quantize": cmd_quantize,
    "eval": cmd_eval,
    "bench": cmd_bench,
    "demo": cmd_demo,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantkernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help=cmd_info.__doc__)

    p = sub.add_parser("quantize", help=cmd_quantize.__doc__)
    _add_model_args(p)
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--keep-fp32", action="store_true", help="keep non-quantized weights in fp32")

    p = sub.add_parser("eval", help=cmd_eval.__doc__)
    _add_model_args(p)
    p.add_argument("--eval-text", default=DEFAULT_EVAL)
    p.add_argument("--eval-windows", type=int, default=16, help="512-token evaluation windows (SmolLM2)")
    p.add_argument("--sentences", type=int, default=300, help="evaluation sentences (MiniLM)")

    p = sub.add_parser("bench", help=cmd_bench.__doc__)
    _add_model_args(p, method_default="rtn")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1)

    p = sub.add_parser("demo", help=cmd_demo.__doc__)
    p.add_argument("--calib-text", default=DEFAULT_CALIB)
    p.add_argument("--eval-text", default=DEFAULT_EVAL)
    p.add_argument("--calib-windows", type=int, default=32)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=16, help="tokens timed for tokens/s")
    p.add_argument("--sample-tokens", type=int, default=24)
    p.add_argument("--with-rtn4", action="store_true", help="also show INT4 RTN, to compare with GPTQ")
    p.add_argument("--out-dir", default="quantkernels-demo")
    p.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
