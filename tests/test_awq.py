import copy

import pytest
import torch

import quantkernels as qk
from quantkernels.algorithms import awq
from quantkernels.algorithms import blocks as B
from quantkernels.nn import QuantLinear

from toy_models import ToyModel, toy_calibration


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_llama(kv_heads):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # uneven norm gains, as trained models have
        for n, p in model.named_parameters():
            if n.endswith("layernorm.weight"):
                p.copy_(0.5 + 2 * torch.rand_like(p))
    return model


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=64)
    return BertModel(cfg, add_pooling_layer=False).eval()


def _fold_everything(model, calib):
    """Search and fold AWQ scales in every block, without quantizing; return the folds made."""
    _, blocks = B.find_blocks(model)
    inputs = B.capture_block_inputs(model, blocks[0], calib)
    kinds = []
    for block in blocks:
        mine = {n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
        groups = B.input_groups(block, mine, inputs[0])
        producers = awq.find_producers(block, mine, groups, inputs[0])
        stats = awq.collect_all(block, inputs, {g[0]: mine[g[0]] for g in groups})
        for names in groups:
            if names[0] in producers:
                kind, prod = producers[names[0]]
                # a deliberately uneven scale, so that a wrong fold cannot hide
                s = stats[names[0]].abs_mean().clamp(min=1e-3).pow(0.7)
                awq.fold_scale(kind, prod, [mine[n] for n in names], s)
                kinds.append((names[0], kind))
        inputs = B.run_block(block, inputs)
    return kinds


@pytest.mark.parametrize("which", ["toy", "llama_mha", "llama_gqa", "bert"])
def test_folding_keeps_float_function(which):
    if which == "toy":
        model, calib = ToyModel(), toy_calibration(n=2)
        run = lambda m, x: m(x)
    elif which.startswith("llama"):
        model = _tiny_llama(4 if which == "llama_mha" else 2)
        calib = [torch.randint(0, 64, (1, 16)) for _ in range(2)]
        run = lambda m, x: m(x).logits
    else:
        model = _tiny_bert()
        calib = [{"input_ids": torch.randint(0, 64, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}]
        run = lambda m, x: m(**x).last_hidden_state
    before = copy.deepcopy(model)
    kinds = _fold_everything(model, calib)
    folded = {name.rsplit(".", 1)[-1] if "." in name else name: kind for name, kind in kinds}
    expected = {
        # LLaMA: both norms; v -> o only when v and o have the same width (not with GQA); up -> down
        "toy": {"q_proj": "norm", "o_proj": "linear", "gate_proj": "norm", "down_proj": "linear"},
        "llama_mha": {"q_proj": "norm", "o_proj": "linear", "gate_proj": "norm", "down_proj": "linear"},
        "llama_gqa": {"q_proj": "norm", "gate_proj": "norm", "down_proj": "linear"},
        # BERT: value -> attention.output.dense; the attention LayerNorm also feeds the residual, so
        # folding into it would change the function and is refused
        "bert": {"dense": "linear"},
    }[which]
    assert folded == expected
    probe = calib[0]
    with torch.no_grad():
        torch.testing.assert_close(run(model, probe), run(before, probe), rtol=1e-4, atol=1e-4)
        # the fold changed the weights, not just kept them
        changed = [n for (n, p), (_, q) in zip(model.named_parameters(), before.named_parameters()) if not torch.equal(p, q)]
        assert changed


@pytest.mark.parametrize("cfg", [qk.QuantConfig(bits=4, group_size=32, sym=False),
                                 qk.QuantConfig(bits=4, group_size=-1, sym=True),
                                 qk.QuantConfig(bits=3, group_size=32, sym=False)], ids=lambda c: c.describe())
def test_awq_beats_rtn_on_reconstruction(cfg):
    model = ToyModel()
    ref = copy.deepcopy(model)
    rtn = copy.deepcopy(model)
    qk.quantize_(rtn, cfg, skip="head")
    summary = qk.quantize_(model, cfg, method="awq", calibration=toy_calibration(), progress=False, skip="head")
    assert len(summary.replaced) == 14
    assert all(isinstance(model.get_submodule(n), QuantLinear) for n in summary.replaced)
    for name, rep in summary.report.items():
        # alpha = 0 and clip ratio 1 reproduce RTN, so the search can only do as well or better
        assert rep["error"] <= rep["rtn_error"] * (1 + 1e-4), (name, rep)
    assert sum(r["error"] for r in summary.report.values()) < 0.9 * sum(r["rtn_error"] for r in summary.report.values())
    with torch.no_grad():
        test = toy_calibration(seed=5)
        err = lambda m: sum(float((m(t) - ref(t)).pow(2).mean()) for t in test)
        assert err(model) < err(rtn)


def test_clip_search_never_worse_than_rtn():
    g = torch.Generator().manual_seed(3)
    cfg = qk.QuantConfig(bits=3, group_size=32, sym=False)
    w = torch.randn(32, 64, generator=g)
    w[:, 7] *= 10  # an outlier column: clipping should trade it off
    x = torch.randn(256, 64, generator=g)
    h = 2 * x.t() @ x / 256
    wc = awq.clip_weights(w, h, cfg)
    e_clip = awq.output_error(w, awq.rtn_dequant(wc, cfg), h)
    e_rtn = awq.output_error(w, awq.rtn_dequant(w, cfg), h)
    assert e_clip <= e_rtn


def test_awq_unknown_option():
    with pytest.raises(TypeError, match="unknown options"):
        qk.quantize_(ToyModel(n_layers=1), qk.QuantConfig(), method="awq", calibration=toy_calibration(n=1),
                     progress=False, skip="head", alpha=0.5)


@pytest.mark.parametrize("cfg", [qk.QuantConfig(bits=4, group_size=32, sym=False), qk.QuantConfig(bits=3, group_size=-1, sym=True),
                                 qk.QuantConfig(bits=8, group_size=64, sym=True, scale_dtype=torch.bfloat16)],
                         ids=lambda c: c.describe())
def test_search_rtn_matches_reference(cfg):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(64, 128, generator=g) * torch.rand(1, 128, generator=g)
    w[3, :32] = 0  # an all-zero group
    lin = torch.nn.Linear(128, 64, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    ref = QuantLinear.from_linear(lin, cfg).dequantize(torch.float32)
    torch.testing.assert_close(awq.rtn_dequant(w, cfg), ref, rtol=0, atol=0)
