"""Loaders on the real packages (installed by requirements-dev.txt). Kept fast: one load of each."""

import os

import pytest
import torch

from quantkernels import evaluate as E
from quantkernels.models import load_minilm, load_smollm2
from quantkernels.models.smollm2 import unpermute_rope


pytestmark = pytest.mark.usefixtures("one_thread")


def data_file(name):
    """The shared texts lie in ../shared beside the checkout (CI and worktrees) or in ./shared."""
    here = os.path.dirname(os.path.abspath(__file__))
    for root in (os.path.join(here, "..", "..", "shared"), os.path.join(here, "..", "shared")):
        path = os.path.join(root, "data", "text", name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"shared/data/text/{name} not found beside the checkout")


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


def test_smollm2_config_from_gguf(smollm2):
    model, tok = smollm2
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (30, 576, 1536)
    assert (c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (9, 3, 49152)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as in the GGUF (no output.weight)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (192, 576)
    w = model.model.layers[3].mlp.down_proj.weight
    assert w.dtype == torch.float32 and torch.isfinite(w).all() and w.abs().sum() > 0


def test_smollm2_tokenizer_roundtrip(smollm2):
    _, tok = smollm2
    text = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text.split()) * 2  # a real BPE vocabulary, not characters


def test_smollm2_perplexity_is_that_of_a_language_model(smollm2):
    model, tok = smollm2
    path = data_file("emma.txt")
    windows = E.token_windows(tok, E.read_text(path)[50000:70000], 256, 1)
    ppl = E.perplexity(model, windows, verbose=False)
    # A wrong rotary permutation or tokenizer gives perplexities in the hundreds (measured: ~200 with
    # the q/k rows left permuted); SmolLM2-135M on Austen is in the tens.
    assert 5 < ppl < 80, ppl


def test_unpermute_rope_inverts_llama_cpp_permutation():
    n_head, d, k = 3, 8, 5
    w = torch.randn(n_head * d, k)
    # llama.cpp's conversion: per head, (2, d/2) -> (d/2, 2)
    permuted = w.reshape(n_head, 2, d // 2, k).transpose(1, 2).reshape(n_head * d, k)
    assert torch.equal(unpermute_rope(permuted, n_head), w)


def test_minilm_embeddings(minilm):
    from quantkernels.models.minilm import embed, encode

    model, tok = minilm
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    sents = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    (batch,) = encode(model, tok, sents)
    e, h = embed(model, batch)
    assert e.shape == (3, 384) and torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    sim = e @ e.t()
    assert sim[0, 1] > 0.6 and sim[0, 1] > sim[0, 2] + 0.3  # paraphrases close, unrelated far


def test_minilm_rtn_int8_fidelity(minilm):
    import copy

    import quantkernels as qk
    from quantkernels.models.minilm import encode

    model, tok = minilm
    q = copy.deepcopy(model)
    qk.quantize_(q, qk.QuantConfig(bits=8, group_size=-1, sym=True))
    batches = encode(model, tok, ["The weather is lovely today.", "She read the letter twice before answering."])
    r = E.embedding_fidelity(model, E.dequantized(q), batches)
    assert r["cosine"] > 0.999 and r["sqnr_db"] > 25


def test_perplexity_batched_windows_equal_one_at_a_time(smollm2):
    model, tok = smollm2
    windows = E.token_windows(tok, E.read_text(data_file("emma.txt"))[100000:120000], 64, 3)
    one = E.perplexity(model, windows, verbose=False)
    batched = E.perplexity(model, windows, verbose=False, batch_size=2)  # a full batch and a partial one
    # Each window is scored on its own either way; only the fp32 summation order differs (~1e-6).
    assert abs(batched / one - 1) < 1e-4, (one, batched)
    assert 5 < one < 200


def _quality_script():
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "quality.py")
    spec = importlib.util.spec_from_file_location("quality_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quality_script_runs_on_the_device_it_is_given(tmp_path, capsys):
    quality = _quality_script()
    out = tmp_path / "q.jsonl"
    quality.main(["--device", "cpu", "--models", "minilm", "--methods", "rtn", "--configs", "int8-ch-sym",
                  "--sentences", "8", "--calib-text", data_file("pride_and_prejudice.txt"),
                  "--eval-text", data_file("emma.txt"), "--out", str(out)])
    import json

    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["device"] == "cpu" and row["sentences"] == 8
    assert 0.999 < row["cosine"] <= 1.0  # int8 per-channel RTN on MiniLM: measured 0.9995 on 300 sentences
    assert "| int8 channel sym | rtn |" in capsys.readouterr().out
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            quality.main(["--device", "cuda", "--models", "minilm", "--out", str(tmp_path / "c.jsonl")])
    with pytest.raises(SystemExit, match="must all differ"):
        quality.main(["--val-text", data_file("emma.txt"), "--out", str(tmp_path / "v.jsonl")])


def test_quality_table_chooses_gptq_options_on_validation_not_evaluation():
    quality = _quality_script()

    def row(config, method, ppl, val_ppl):
        return dict(model="smollm2", config=config, method=method, describe=config, ppl=ppl, val_ppl=val_ppl,
                    windows=4, tokens=2044, eval_text="emma.txt", val_text="mansfield_park.txt", val_windows=2,
                    calib_text="pride_and_prejudice.txt", calib_windows=8, file_bytes=2**20, linear_bytes=2**20,
                    seconds=1.0)

    rows = [row("float", "float", 30.0, 31.0), row("int4-g64-asym", "rtn", 40.0, 41.0),
            # the better evaluation perplexity, but the worse validation one: must not be chosen
            row("int4-g64-asym", "gptq", 33.0, 36.0), row("int4-g64-asym", "gptq:damp_percent=0.1", 34.0, 35.0)]
    by = {(r["model"], r["config"], r["method"]): r for r in rows}
    assert quality.chosen_on_validation(by, "int4-g64-asym")["method"] == "gptq:damp_percent=0.1"
    assert quality.chosen_on_validation(by, "int3-g64-asym") is None
    text = quality.table(rows)
    assert "| int4-g64-asym | gptq:damp_percent=0.1 | 35.000 | 34.000 | 60.0% |" in text
