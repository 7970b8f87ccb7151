"""QuantLinear as a drop-in nn.Linear: contract, error bounds, devices/dtypes, serialisation, bad input."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import quantkernels
from quantkernels import QuantConfig, backends
from quantkernels.nn import QuantLinear

from conftest import rel_err

# Output error of RTN on Gaussian weights and activations, relative to nn.Linear. The quantization
# step of b bits over a group's range is ~ (6 sigma) / 2^b; uniform rounding noise has std step/sqrt(12),
# so the relative output error is ~ 6 / (2^b sqrt(12)) ~ 1.7 / 2^b (symmetric grids waste half a step).
# Bounds below are that estimate with headroom; measured values are about half of them.
RTN_BOUND = {2: 0.75, 3: 0.3, 4: 0.13, 8: 0.01}


def make(bits=4, group=32, sym=False, k=256, n=96, bias=True, dtype=torch.float32, **cfg):
    lin = nn.Linear(k, n, bias=bias, dtype=dtype)
    return lin, QuantLinear.from_linear(lin, QuantConfig(bits=bits, group_size=group, sym=sym, **cfg))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group", [-1, 32, 128])
def test_matches_linear_within_rtn_error(bits, sym, group):
    lin, q = make(bits, group, sym)
    x = torch.randn(2, 7, 256)
    assert rel_err(q(x), lin(x)) < RTN_BOUND[bits]
    # and exactly the reference function of its own dequantized weight (fp32 rounding only)
    ref = x @ q.dequantize(torch.float32).t() + q.bias
    assert rel_err(q(x), ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_activation_dtypes_and_leading_dims(dtype):
    lin, q = make()
    for shape in [(256,), (5, 256), (2, 3, 4, 256)]:
        x = torch.randn(shape, dtype=dtype)
        y = q(x)
        assert y.dtype == dtype and y.shape == (*shape[:-1], 96)
        ref = (x.float() @ q.dequantize(torch.float32).t() + q.bias.float()).to(dtype)
        # output rounded to dtype: bf16 has 8 bits of mantissa (rel. 2^-9 per element)
        assert rel_err(y, ref) < {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]


@pytest.mark.parametrize("bits", [4, 8])
def test_built_and_run_under_inference_mode(bits):
    # Converting a model inside torch.inference_mode makes the buffers inference tensors, which have
    # no version counter (the CPU backend's g_idx check keyed its cache on it and raised).
    with torch.inference_mode():
        lin, q = make(bits, 32 if bits == 4 else -1)
        x = torch.randn(3, 256)
        ref = x @ q.dequantize(torch.float32).t() + q.bias
        assert rel_err(q(x), ref) < 1e-5
    assert rel_err(q(x.clone()), ref) < 1e-5  # and used afterwards outside it


def test_no_bias_and_empty_batch():
    lin, q = make(bias=False)
    assert q.bias is None
    x = torch.randn(4, 256)
    assert rel_err(q(x), x @ q.dequantize(torch.float32).t()) < 1e-5
    for shape in [(0, 256), (3, 0, 256)]:
        y = q(torch.randn(shape))
        assert y.shape == (*shape[:-1], 96)


def test_non_contiguous_and_sliced_inputs():
    lin, q = make()
    base = torch.randn(6, 512)
    sliced = base[:, ::2]  # stride 2 along K
    transposed = torch.randn(256, 6).t()
    for x in (sliced, transposed, base[1:5, 100:356]):
        assert not x.is_contiguous()
        assert rel_err(q(x), q(x.contiguous())) == 0


def test_nan_inf_propagate_like_linear():
    lin, q = make()
    x = torch.randn(3, 256)
    x[1, 7] = float("nan")
    x[2, 9] = float("inf")
    y, r = q(x), lin(x)
    # The same outputs are non-finite. (Where a dequantized weight is exactly 0, inf * 0 gives NaN
    # where nn.Linear gives +-inf: both are the IEEE result of the same product.)
    assert torch.equal(torch.isfinite(y), torch.isfinite(r))
    assert torch.isnan(y[1]).all() and torch.isfinite(y[0]).all()


def test_gradients_flow_to_input_only():
    lin, q = make()
    x = torch.randn(4, 256, requires_grad=True)
    q(x).sum().backward()
    w = q.dequantize(torch.float32)
    assert rel_err(x.grad, w.sum(0).expand(4, -1)) < 1e-5
    assert all(not t.requires_grad for t in q.buffers())
    assert list(q.parameters()) == []


def test_adapter_trains_on_quantized_base():
    lin, q = make()
    lora = nn.Linear(256, 96, bias=False)
    nn.init.zeros_(lora.weight)
    opt = torch.optim.SGD(lora.parameters(), lr=0.1)
    x, target = torch.randn(16, 256), torch.randn(16, 96)
    losses = []
    for _ in range(5):
        loss = (q(x) + lora(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_repr_shows_format_and_backend():
    _, q = make(bits=3, group=64, sym=True)
    q(torch.randn(1, 256))
    r = repr(q)
    for s in ("in_features=256", "out_features=96", "bits=3", "group_size=64", "sym=True", "backend=reference"):
        assert s in r


def test_to_dtype_keeps_integer_buffers():
    _, q = make()
    qw, qz, gi = q.qweight.clone(), q.qzeros.clone(), q.g_idx.clone()
    q2 = copy.deepcopy(q).to(torch.bfloat16)
    assert q2.scales.dtype == torch.bfloat16 and q2.bias.dtype == torch.bfloat16
    assert torch.equal(q2.qweight, qw) and torch.equal(q2.qzeros, qz) and torch.equal(q2.g_idx, gi)
    assert q2.qweight.dtype == torch.int32
    y = q2(torch.randn(2, 256, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    q3 = q.to("cpu")
    assert q3 is q and q3.qweight.device.type == "cpu"


def test_state_dict_roundtrip_bit_exact():
    _, q = make(bits=3, group=64)
    sd = q.state_dict()
    assert set(sd) == {"qweight", "qzeros", "scales", "g_idx", "bias"}
    fresh = QuantLinear(256, 96, q.config)
    fresh.load_state_dict(sd)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd[k]) and v.dtype == sd[k].dtype
    x = torch.randn(3, 256)
    assert torch.equal(fresh(x), q(x))


def test_safetensors_roundtrip(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    _, q = make(bits=4, group=128, scale_dtype=torch.bfloat16)
    path = tmp_path / "layer.safetensors"
    safetensors.save_file(q.state_dict(), str(path))
    loaded = safetensors.load_file(str(path))
    fresh = QuantLinear(256, 96, q.config)
    fresh.load_state_dict(loaded)
    for k, v in q.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_meta_device_then_assign():
    _, q = make()
    with torch.device("meta"):
        model = nn.Sequential(QuantLinear(256, 96, q.config))
    assert model[0].qweight.device.type == "meta"
    model.load_state_dict({"0." + k: v for k, v in q.state_dict().items()}, assign=True)
    assert model[0].qweight.device.type == "cpu"
    x = torch.randn(2, 256)
    assert torch.equal(model(x), q(x))


def test_deepcopy_and_pickle():
    _, q = make()
    x = torch.randn(2, 256)
    y = q(x)
    assert torch.equal(copy.deepcopy(q)(x), y)
    assert torch.equal(pickle.loads(pickle.dumps(q))(x), y)
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), y)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 32))
    quantkernels.quantize_(model, QuantConfig(bits=4, group_size=32, sym=False))
    x = torch.randn(3, 128)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)  # inductor, as users run it
    with torch.no_grad():
        assert rel_err(compiled(x), eager) < 1e-6


def test_setting_backend_repacks_at_once(monkeypatch):
    # The repacking reads the weights' values (symmetric or not, trivial g_idx or not), which a
    # torch.compile trace cannot branch on: setting `backend` does it before any trace.
    _, q = make()
    q.backend = "reference"
    assert "reference" in q._prepared
    x = torch.randn(3, 256)
    torch._dynamo.reset()
    assert rel_err(torch.compile(q, fullgraph=True)(x), x @ q.dequantize(torch.float32).t() + q.bias) < 1e-5
    with pytest.raises(ValueError, match="backend must be None or one of"):
        q.backend = "cuda_graphs"
    # A backend forced through the environment after loading has repacked nothing: compiling the
    # layer then says what to do instead of failing on a data-dependent branch inside the trace.
    q.backend = None
    monkeypatch.setenv("QUANTKERNELS_BACKEND", "reference")
    _, q2 = make()
    monkeypatch.delenv("QUANTKERNELS_BACKEND")
    torch._dynamo.reset()
    with pytest.raises(Exception, match="call the layer once outside torch.compile"):
        torch.compile(q2, fullgraph=True)(x)


# ---- bad input ----------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    _, q = make()
    with pytest.raises(TypeError, match="input dtype"):
        q(torch.randint(0, 5, (2, 256)))
    with pytest.raises(TypeError, match="input dtype"):
        q(torch.randn(2, 256, dtype=torch.float64))
    with pytest.raises(ValueError, match="in_features=256"):
        q(torch.randn(2, 255))
    with pytest.raises(ValueError, match="in_features=256"):
        q(torch.tensor(1.0))
    with pytest.raises(TypeError, match="must be a Tensor"):
        q([1.0] * 256)


def test_bad_construction():
    with pytest.raises(ValueError, match="not divisible by group_size=128"):
        QuantLinear(192, 64, QuantConfig(group_size=128))
    with pytest.raises(ValueError, match="multiple of 32"):
        QuantLinear(256, 48, QuantConfig(bits=3, group_size=-1))
    with pytest.raises(TypeError, match="config must be a QuantConfig"):
        QuantLinear(256, 64, {"bits": 4})
    with pytest.raises(TypeError, match="nn.Linear"):
        QuantLinear.from_linear(nn.Conv1d(3, 3, 1), QuantConfig())
    lin = nn.Linear(64, 32)
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        QuantLinear.from_linear(lin, QuantConfig(group_size=32))


def test_mismatched_buffers_are_rejected():
    _, q = make()
    sd = q.state_dict()
    bad = dict(sd, scales=sd["scales"][:, :10])
    with pytest.raises(RuntimeError, match="scales"):
        QuantLinear(256, 96, q.config).load_state_dict(bad)
    bad = dict(sd, qweight=sd["qweight"].to(torch.int64))
    with pytest.raises(RuntimeError, match="qweight must be torch.int32"):
        QuantLinear(256, 96, q.config).load_state_dict(bad)
    with pytest.raises(RuntimeError, match="qweight must be torch.int32"):
        QuantLinear(256, 96, q.config).load_state_dict(bad, assign=True)
    bad = dict(sd, g_idx=sd["g_idx"][:100])
    with pytest.raises(RuntimeError, match="g_idx"):
        QuantLinear(256, 96, q.config).load_state_dict(bad, assign=True)


def test_forced_backend_errors_clearly(monkeypatch):
    _, q = make()
    x = torch.randn(2, 256)
    monkeypatch.setenv("QUANTKERNELS_BACKEND", "nonsense")
    with pytest.raises(backends.BackendError, match="not a backend"):
        q(x)
    monkeypatch.setenv("QUANTKERNELS_BACKEND", "cuda")  # no GPU on CPU tensors
    with pytest.raises(backends.BackendError, match="'cuda' was forced but cannot serve"):
        q(x)
    monkeypatch.setenv("QUANTKERNELS_BACKEND", "reference")
    assert rel_err(q(x), x @ q.dequantize(torch.float32).t() + q.bias) < 1e-5


def test_device_mismatch_is_reported():
    _, q = make()
    x = torch.randn(2, 256, device="meta")
    with pytest.raises(ValueError, match="is on meta but the layer's weights are on cpu"):
        q(x)


class _ReplacingBackend:
    """A stand-in for a native backend whose layout replaces the portable qweight (here: the words
    reversed along K, an invertible repack), to test QuantLinear's bookkeeping without native code."""

    name = "cpu"

    class State:
        replaces_qweight = True

        def __init__(self, packed):
            self.packed = packed

    def unavailable_reason(self):
        return None

    def supports(self, layer, x):
        return None if x.dtype == torch.float32 else "float32 only"

    def prepare(self, layer):
        state = self.State(layer.qweight.flip(0).clone())
        layer.qweight = torch.empty(0, dtype=torch.int32)
        return state

    def to_portable(self, layer, state):
        return {"qweight": state.packed.flip(0), "qzeros": layer.qzeros, "scales": layer.scales, "g_idx": layer.g_idx}

    def linear(self, layer, state, x2d):
        w = torch.ops.quantkernels.dequantize(
            state.packed.flip(0), layer.qzeros, layer.scales, layer.g_idx, layer.config.bits, torch.float32
        )
        out = x2d @ w.t()
        return out if layer.bias is None else out + layer.bias


def test_backend_that_replaces_qweight(monkeypatch):
    monkeypatch.setitem(backends._cache, "cpu", _ReplacingBackend())
    lin, q_ref = make()
    q = QuantLinear.from_linear(lin, q_ref.config)
    portable = q_ref.state_dict()
    assert "cpu" in q._prepared and q.qweight.numel() == 0  # repacked once, no second copy
    x = torch.randn(3, 256)
    assert rel_err(q(x), q_ref(x)) < 1e-6 and q._last_backend == "cpu"
    # the saved form is always the portable one
    assert all(torch.equal(v, portable[k]) for k, v in q.state_dict().items())
    assert torch.equal(q.dequantize(torch.float32), q_ref.dequantize(torch.float32))
    # a call the replacing backend cannot serve gets the portable form back
    y16 = q(x.to(torch.bfloat16))
    assert q._last_backend == "reference" and q.qweight.shape == portable["qweight"].shape
    assert rel_err(y16, q_ref(x.to(torch.bfloat16))) == 0
    # and the replacing backend repacks again when it is next chosen
    assert rel_err(q(x), q_ref(x)) < 1e-6 and q.qweight.numel() == 0
    assert torch.equal(pickle.loads(pickle.dumps(q)).state_dict()["qweight"], portable["qweight"])
    q2 = copy.deepcopy(q).to(torch.bfloat16)
    assert q2.state_dict()["qweight"].shape == portable["qweight"].shape


def test_backend_choice_is_remembered_and_follows_what_can_change_it(monkeypatch):
    # QuantLinear remembers backends.select's answer (the checks cost more than a small layer's
    # kernel at m = 1); the answer must still follow the environment, the layer's override, the
    # activation dtype and a move of the buffers.
    _, q = make()
    x = torch.randn(2, 256)
    calls = []
    real_select = backends.select
    monkeypatch.setattr(backends, "select", lambda layer, x2d: calls.append(x2d.dtype) or real_select(layer, x2d))
    monkeypatch.delenv("QUANTKERNELS_BACKEND", raising=False)
    first = q(x)
    n_first = len(calls)
    for _ in range(3):
        torch.testing.assert_close(q(x), first, rtol=0, atol=0)
    assert len(calls) == n_first, "repeated calls with the same kind of input must not re-run the registry"
    native = q._last_backend

    monkeypatch.setenv("QUANTKERNELS_BACKEND", "reference")
    ref = x @ q.dequantize(torch.float32).t() + q.bias
    assert rel_err(q(x), ref) < 1e-5 and q._last_backend == "reference"
    monkeypatch.delenv("QUANTKERNELS_BACKEND")
    q(x)
    assert q._last_backend == native

    q.backend = "reference"
    q(x)
    assert q._last_backend == "reference"
    q.backend = None

    n = len(calls)
    q(x.to(torch.bfloat16))  # a new dtype is a new question
    assert len(calls) > n
    n = len(calls)
    q.to(torch.device("cpu"))  # _apply re-prepares: the remembered answers are dropped
    q(x)
    assert len(calls) > n
