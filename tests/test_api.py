"""quantize_: which layers are replaced, what is skipped and why, and the summary."""

import re
import warnings

import pytest
import torch
from torch import nn

import quantkernels
from quantkernels import QuantConfig
from quantkernels.nn import QuantLinear

from conftest import rel_err


class TinyLM(nn.Module):
    def __init__(self, vocab=64, d=64, tie=True):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"q_proj": nn.Linear(d, d), "up": nn.Linear(d, 4 * d), "down": nn.Linear(4 * d, d)})
            for _ in range(2)
        )
        self.odd = nn.Linear(d, 24)  # 24 outputs: not servable by 3-bit packing (needs multiples of 32)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.tied_out = nn.Linear(d, vocab, bias=False)
        if tie:
            self.tied_out.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids)
        for b in self.blocks:
            h = h + b["down"](torch.relu(b["up"](b["q_proj"](h))))
        return self.lm_head(h)


def test_replaces_linears_and_reports_bytes():
    model = TinyLM()
    ids = torch.randint(0, 64, (2, 5))
    ref = model(ids)
    summary = quantkernels.quantize_(model, QuantConfig(bits=8, group_size=32))
    assert isinstance(model.blocks[0]["q_proj"], QuantLinear)
    assert isinstance(model.odd, QuantLinear)  # 24 outputs are fine for 8 bits (multiple of 4)
    assert type(model.lm_head) is nn.Linear and type(model.tied_out) is nn.Linear
    assert "lm_head" in summary.skipped and "tied_out" in summary.skipped
    assert len(summary.replaced) == 7
    assert summary.bytes_after < summary.bytes_before / 3
    measured = sum(
        t.numel() * t.element_size() for n in summary.replaced for t in model.get_submodule(n).state_dict().values()
    )
    assert summary.bytes_after == measured
    assert rel_err(model(ids), ref) < 0.02
    assert "7 layers quantized" in str(summary)


def test_skip_by_exact_name_and_regex():
    model = TinyLM()
    summary = quantkernels.quantize_(model, QuantConfig(bits=4, group_size=32), skip=["odd", re.compile(r"blocks\.1\..*")])
    assert type(model.odd) is nn.Linear and type(model.blocks[1]["up"]) is nn.Linear
    assert isinstance(model.blocks[0]["up"], QuantLinear)
    model = TinyLM()
    quantkernels.quantize_(model, QuantConfig(bits=4, group_size=32), skip=r".*\.down")
    assert type(model.blocks[0]["down"]) is nn.Linear and isinstance(model.blocks[0]["up"], QuantLinear)


def test_unservable_layer_stays_float_with_warning():
    model = TinyLM()
    with pytest.warns(UserWarning, match="keeping odd in full precision: out_features N=24 must be a multiple of 32"):
        summary = quantkernels.quantize_(model, QuantConfig(bits=3, group_size=32))
    assert type(model.odd) is nn.Linear and "odd" in summary.skipped


def test_warns_when_nothing_replaced():
    model = nn.Sequential(nn.Conv1d(3, 3, 1))
    with pytest.warns(UserWarning, match="no nn.Linear layer was replaced"):
        summary = quantkernels.quantize_(model, QuantConfig())
    assert summary.replaced == []


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        quantkernels.quantize_("model", QuantConfig())
    with pytest.raises(TypeError, match="config must be a QuantConfig"):
        quantkernels.quantize_(TinyLM(), {"bits": 4})
    with pytest.raises(ValueError, match="method must be one of"):
        quantkernels.quantize_(TinyLM(), QuantConfig(group_size=32), method="magic")
    with pytest.raises(ValueError, match="needs calibration data"):
        quantkernels.quantize_(TinyLM(), QuantConfig(group_size=32), method="gptq")


def test_quantize_twice_leaves_quantized_layers_alone():
    model = TinyLM()
    quantkernels.quantize_(model, QuantConfig(bits=4, group_size=32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = quantkernels.quantize_(model, QuantConfig(bits=4, group_size=32))
    assert summary.replaced == []


def test_dynamic_activation_config_runs_on_reference():
    model = TinyLM()
    ids = torch.randint(0, 64, (2, 5))
    ref = model(ids)
    quantkernels.quantize_(model, QuantConfig(bits=8, group_size=-1, act_bits=8))
    # int8 weights and int8 per-token activations: ~1% output error
    assert rel_err(model(ids), ref) < 0.03
