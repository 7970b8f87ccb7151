import copy
import logging

import pytest
import torch

import quantkernels as qk
from quantkernels.algorithms.gptq import gptq_quantize
from quantkernels.nn import QuantLinear

from toy_models import ToyModel, toy_calibration


pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = [
    qk.QuantConfig(bits=4, group_size=32, sym=False),
    qk.QuantConfig(bits=4, group_size=-1, sym=True),
    qk.QuantConfig(bits=3, group_size=32, sym=False),
    qk.QuantConfig(bits=8, group_size=-1, sym=True),
    qk.QuantConfig(bits=2, group_size=64, sym=False),
]


def correlated_problem(n=64, k=96, tokens=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, 12, generator=g) @ torch.randn(12, k, generator=g) + 0.3 * torch.randn(tokens, k, generator=g)
    x[:, :3] *= 5
    w = torch.randn(n, k, generator=g) * 0.05
    h = 2 * x.t() @ x / tokens
    return w, h, x


def rel_out_err(w, wq, x):
    return float(((x @ (w - wq).t()).norm() / (x @ w.t()).norm()) ** 2)


def layer_of(codes, scales, zeros, g_idx, cfg):
    return QuantLinear.from_codes(codes, scales, zeros, cfg, g_idx=g_idx)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.describe())
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_layer_exact_and_better_than_rtn(cfg, act_order):
    w, h, x = correlated_problem(k=128 if cfg.bits != 3 else 96)
    codes, scales, zeros, g_idx, info = gptq_quantize(w, h, cfg, act_order=act_order)
    layer = layer_of(codes, scales, zeros, g_idx, cfg)
    # The stored tensors reproduce exactly the weights GPTQ chose (same rounding of the scales).
    torch.testing.assert_close(layer.dequantize(torch.float32), info["dequant"], rtol=0, atol=0)
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    rtn = QuantLinear.from_linear(lin, cfg)
    e_gptq = rel_out_err(w, info["dequant"], x)
    e_rtn = rel_out_err(w, rtn.dequantize(torch.float32), x)
    # GPTQ minimises exactly this loss greedily; on correlated inputs it must win clearly.
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)


@pytest.mark.parametrize("static_groups", [False, True])
def test_act_order_g_idx_is_valid(static_groups):
    cfg = qk.QuantConfig(bits=4, group_size=32, sym=False, act_order=True)
    w, h, _ = correlated_problem(k=128)
    h = h + torch.diag(torch.linspace(0, 5, 128))  # make the order clearly non-trivial
    codes, scales, zeros, g_idx, info = gptq_quantize(w, h, cfg, static_groups=static_groups)
    assert g_idx.dtype == torch.int32 and g_idx.shape == (128,)
    counts = torch.bincount(g_idx.long(), minlength=4)
    assert counts.tolist() == [32, 32, 32, 32]  # every group holds group_size columns
    trivial = torch.arange(128) // 32
    if static_groups:
        assert torch.equal(g_idx.long(), trivial)
    else:
        assert not torch.equal(g_idx.long(), trivial)
        # the first group holds the columns with the largest diag(H)
        top = torch.argsort(torch.diag(h), descending=True)[:32]
        assert set(top.tolist()) == set(torch.nonzero(g_idx == 0).flatten().tolist())
    layer = layer_of(codes, scales, zeros, g_idx, cfg)
    torch.testing.assert_close(layer.dequantize(torch.float32), info["dequant"], rtol=0, atol=0)


def test_damping_retry_is_logged(caplog):
    cfg = qk.QuantConfig(bits=4, group_size=-1, sym=True)
    w, h, _ = correlated_problem(k=64)
    # Make H indefinite: the smallest eigenvalue at -5% of the mean diagonal fails with 1% damping
    # and succeeds after one retry at 10%.
    evals, evecs = torch.linalg.eigh(h)
    shift = evals[0] + 0.05 * torch.diag(h).mean()
    h_bad = h - shift * torch.eye(64)
    with caplog.at_level(logging.WARNING, logger="quantkernels.gptq"):
        codes, scales, zeros, g_idx, info = gptq_quantize(w, h_bad, cfg, damp_percent=0.01)
    assert info["damp_percent"] == pytest.approx(0.1)
    assert any("retrying" in r.getMessage() for r in caplog.records)
    assert torch.isfinite(info["dequant"]).all()


def test_dead_columns_become_zero():
    cfg = qk.QuantConfig(bits=4, group_size=32, sym=False)
    w, h, _ = correlated_problem(k=64)
    h[5, :] = 0
    h[:, 5] = 0
    codes, scales, zeros, g_idx, info = gptq_quantize(w, h, cfg)
    assert info["dead_columns"] == 1
    assert torch.all(info["dequant"][:, 5] == 0)


def test_quantize_gptq_on_toy_model_beats_rtn():
    torch.manual_seed(0)
    model = ToyModel()
    cal = toy_calibration()
    cfg = qk.QuantConfig(bits=3, group_size=32, sym=False)
    ref = copy.deepcopy(model)
    rtn = copy.deepcopy(model)
    qk.quantize_(rtn, cfg, skip="head")
    gptq = copy.deepcopy(model)
    summary = qk.quantize_(gptq, cfg, method="gptq", calibration=cal, progress=False, skip="head")
    assert len(summary.replaced) == 2 * 7
    assert all(isinstance(gptq.get_submodule(n), QuantLinear) for n in summary.replaced)
    for name, rep in summary.report.items():
        assert rep["error"] < rep["rtn_error"], (name, rep)
    test = toy_calibration(seed=7)
    with torch.no_grad():
        def err(m):
            return sum(float((m(t) - ref(t)).pow(2).mean()) for t in test)
        assert err(gptq) < err(rtn)


def test_gptq_options_and_errors():
    model = ToyModel(n_layers=1)
    cfg = qk.QuantConfig(bits=4, group_size=32, sym=True)
    with pytest.raises(TypeError, match="unknown options"):
        qk.quantize_(model, cfg, method="gptq", calibration=toy_calibration(n=2), progress=False, skip="head", bogus=1)
    with pytest.raises(ValueError, match="calibration"):
        qk.quantize_(copy.deepcopy(model), cfg, method="gptq", progress=False, skip="head")
    s = qk.quantize_(copy.deepcopy(model), cfg, method="gptq", calibration=toy_calibration(n=2), progress=False, skip="head",
                     true_sequential=False, static_groups=True, act_order=True)
    assert s.report and all(r["error"] <= r["rtn_error"] * 1.01 for r in s.report.values() if "error" in r)


def test_saved_gptq_model_has_every_buffer(tmp_path):
    from safetensors.torch import load_file

    from quantkernels.models import save_model

    model = ToyModel(n_layers=1)
    qk.quantize_(model, qk.QuantConfig(bits=4, group_size=32, sym=False), method="gptq",
                 calibration=toy_calibration(n=2), progress=False, skip="head")
    path = str(tmp_path / "m.safetensors")
    save_model(model, path, torch.float16)
    saved = load_file(path)
    assert set(saved) == set(model.state_dict())  # no buffer dropped as a "duplicate" (shared g_idx)
