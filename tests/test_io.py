"""quantkernels.io: GPTQ v1/v2 and AWQ GEMM checkpoints.

Fixtures are written by the plain-Python packers below, which follow the published layouts and
share no code with quantkernels (so a bug in our pack/unpack cannot hide in both sides):

* GPTQ ``qweight``: column n is the LSB-first bit stream of ``q[n, 0..K)`` cut into 32-bit words
  (3-bit values straddle words); ``qzeros``: row g is the bit stream of the stored zeros along N.
  v1 (AutoGPTQ) stores ``z - 1``, v2 (GPTQModel) stores ``z``.
* AWQ GEMM ``qweight [K, N/8]``: word j of row k holds channel ``8j + ORDER[i]`` in nibble i,
  ``ORDER = 0,2,4,6,1,3,5,7``; ``qzeros [G, N/8]`` likewise; real zeros; no g_idx.

Expected weights are ``(q - z) * s`` computed in numpy float32, which is exact for these integers and
fp16 scales, so every comparison is exact equality. CI runtime: a few seconds.
"""

import json
import os
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import quantkernels as qk
from quantkernels import io as qio
from quantkernels.nn import QuantLinear

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def fresh_rng():
    """numpy generator seeded from torch's (which conftest seeds afresh for every test)."""
    return np.random.default_rng(int(torch.randint(0, 2**31, ())))


# ---- the independent reference packers ----------------------------------------------------------
def stream_words(values, bits):
    """LSB-first bit stream of ``values`` as 32-bit words (Python ints)."""
    acc = 0
    for j, v in enumerate(values):
        assert 0 <= int(v) < (1 << bits)
        acc |= int(v) << (j * bits)
    return [(acc >> (32 * i)) & 0xFFFFFFFF for i in range(len(values) * bits // 32)]


def as_int32(words):
    return torch.from_numpy(np.array(words, dtype=np.uint64).astype(np.uint32).view(np.int32).copy())


def gptq_qweight(q, bits):  # q: [N, K] ints -> [K*bits/32, N]
    return as_int32([stream_words(q[n], bits) for n in range(q.shape[0])]).t().contiguous()


def gptq_qzeros(stored, bits):  # stored: [G, N] -> [G, N*bits/32]
    return as_int32([stream_words(stored[g], bits) for g in range(stored.shape[0])])


def awq_pack(vals):  # vals: [R, 8C] 4-bit ints -> [R, C]
    rows = []
    for r in range(vals.shape[0]):
        row = []
        for j in range(vals.shape[1] // 8):
            word = 0
            for i in range(8):
                word |= int(vals[r, 8 * j + AWQ_ORDER[i]]) << (4 * i)
            row.append(word)
        rows.append(row)
    return as_int32(rows)


def random_layer(rng, n, k, bits, group_size, act_order=False, sym=False, bias=False):
    """Codes, real zeros, fp16 scales, g_idx and bias of a random layer (numpy), never all-zero."""
    maxq = (1 << bits) - 1
    g = 1 if group_size == -1 else k // group_size
    gs = k if group_size == -1 else group_size
    q = rng.integers(0, maxq + 1, size=(n, k))
    z = np.full((g, n), 1 << (bits - 1)) if sym else rng.integers(1, maxq + 1, size=(g, n))  # v1 cannot store 0
    s = (rng.random((g, n)) * 0.1 + 0.01).astype(np.float16)
    g_idx = np.arange(k) // gs
    if act_order:
        g_idx = rng.permutation(g_idx)
    b = rng.standard_normal(n).astype(np.float16) if bias else None
    return q, z, s, g_idx.astype(np.int32), b


def expected_weight(q, z, s, g_idx):
    return ((q - z[g_idx].T) * s.astype(np.float32)[g_idx].T).astype(np.float32)


def write_dir(path, tensors, config, config_file="quantize_config.json", shards=1):
    """Write a checkpoint directory by hand (not with quantkernels' writer)."""
    os.makedirs(path, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i in range(shards):
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: tensors[k] for k in names[i::shards]}
            save_file(part, os.path.join(path, file), metadata={"format": "pt"})
            weight_map.update({k: file for k in part})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    if config_file == "config.json":
        config = {"model_type": "llama", "quantization_config": config}
    with open(os.path.join(path, config_file), "w") as f:
        json.dump(config, f)


def gptq_tensors(prefix, layer, bits, fmt):
    q, z, s, g_idx, b = layer
    stored = z - 1 if fmt == "gptq" else z
    t = {
        f"{prefix}.qweight": gptq_qweight(q, bits),
        f"{prefix}.qzeros": gptq_qzeros(stored, bits),
        f"{prefix}.scales": torch.from_numpy(s),
        f"{prefix}.g_idx": torch.from_numpy(g_idx),
    }
    if b is not None:
        t[f"{prefix}.bias"] = torch.from_numpy(b)
    return t


def gptq_config(bits, group_size, fmt, desc_act=False, sym=False):
    return {
        "bits": bits,
        "group_size": group_size,
        "desc_act": desc_act,
        "sym": sym,
        "static_groups": False,
        "true_sequential": True,
        "checkpoint_format": fmt,
        "quant_method": "gptq",
    }


# ---- reading fixtures written by the reference packer --------------------------------------------
CASES = [  # bits, group_size, fmt, act_order, sym, bias, (n, k), config file, shards
    (4, 32, "gptq", False, False, True, (48, 64), "quantize_config.json", 1),
    (4, 32, "gptq_v2", True, True, False, (48, 64), "config.json", 2),
    (3, 32, "gptq", True, False, False, (64, 96), "config.json", 1),
    (3, -1, "gptq_v2", False, False, True, (32, 64), "quantize_config.json", 3),
    (2, 16, "gptq", False, True, True, (32, 48), "quantize_config.json", 1),
    (2, 32, "gptq_v2", True, False, False, (48, 64), "config.json", 1),
    (8, 64, "gptq", True, True, True, (20, 128), "config.json", 2),
    (8, -1, "gptq_v2", False, False, False, (12, 40), "quantize_config.json", 1),
]


@pytest.mark.parametrize("bits,group_size,fmt,act_order,sym,bias,shape,config_file,shards", CASES)
def test_gptq_fixture_dequantizes_exactly(tmp_path, bits, group_size, fmt, act_order, sym, bias, shape, config_file, shards):
    rng = fresh_rng()
    n, k = shape
    layers = {
        "model.layers.0.mlp.up_proj": random_layer(rng, n, k, bits, group_size, act_order, sym, bias),
        "model.layers.0.mlp.down_proj": random_layer(rng, 32, k, bits, group_size, act_order, sym, not bias),
    }
    tensors = {"model.norm.weight": torch.randn(k)}
    for prefix, layer in layers.items():
        tensors.update(gptq_tensors(prefix, layer, bits, fmt))
    write_dir(tmp_path, tensors, gptq_config(bits, group_size, fmt, act_order, sym), config_file, shards)

    ckpt = qio.load(str(tmp_path))
    assert ckpt.config.checkpoint_format == fmt and ckpt.config.bits == bits
    assert set(ckpt.layers) == set(layers)
    assert set(ckpt.tensors) == {"model.norm.weight"}
    for prefix, (q, z, s, g_idx, b) in layers.items():
        layer = ckpt.layers[prefix]
        assert (layer.in_features, layer.out_features) == (q.shape[1], q.shape[0])
        assert layer.config.bits == bits and layer.config.act_order == act_order and layer.config.sym == sym
        w = layer.dequantize(torch.float32).numpy()
        np.testing.assert_array_equal(w, expected_weight(q, z, s, g_idx))
        assert torch.equal(layer.g_idx, torch.from_numpy(g_idx))
        if b is None:
            assert layer.bias is None
        else:
            assert torch.equal(layer.bias, torch.from_numpy(b))


@pytest.mark.parametrize("config_file", ["quant_config.json", "config.json"])
@pytest.mark.parametrize("group_size,bias", [(32, False), (64, True)])
def test_awq_gemm_fixture_dequantizes_exactly(tmp_path, config_file, group_size, bias):
    rng = fresh_rng()
    n, k = 40, 128
    g = k // group_size
    q = rng.integers(0, 16, size=(n, k))
    z = rng.integers(0, 16, size=(g, n))  # AWQ zeros are real: 0 and 15 are both fine
    s = (rng.random((g, n)) * 0.1 + 0.01).astype(np.float16)
    tensors = {
        "blk.proj.qweight": awq_pack(q.T),  # [K, N/8]
        "blk.proj.qzeros": awq_pack(z),  # [G, N/8]
        "blk.proj.scales": torch.from_numpy(s),
    }
    b = rng.standard_normal(n).astype(np.float16)
    if bias:
        tensors["blk.proj.bias"] = torch.from_numpy(b)
    if config_file == "quant_config.json":
        cfg = {"zero_point": True, "q_group_size": group_size, "w_bit": 4, "version": "GEMM"}
    else:
        cfg = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm"}
    write_dir(tmp_path, tensors, cfg, config_file)
    ckpt = qio.load(str(tmp_path))
    assert ckpt.config.checkpoint_format == "awq_gemm"
    layer = ckpt.layers["blk.proj"]
    g_idx = np.arange(k) // group_size
    np.testing.assert_array_equal(layer.dequantize(torch.float32).numpy(), expected_weight(q, z, s, g_idx))
    assert (layer.bias is not None) == bias
    x = torch.randn(3, k, dtype=torch.float16)
    ref = x.float() @ torch.from_numpy(expected_weight(q, z, s, g_idx)).T
    if bias:
        ref += torch.from_numpy(b).float()
    torch.testing.assert_close(layer(x).float(), ref, rtol=2e-3, atol=2e-3)  # fp16 output rounding only


# ---- our writer: round trips and the published layout ---------------------------------------------
def quantized(n, k, cfg, act_order=False, bias=True):
    """A QuantLinear on random codes, zeros (never 0: v1 cannot store it; tested apart) and scales."""
    q, z, s, g_idx, b = random_layer(fresh_rng(), n, k, cfg.bits, cfg.group_size, act_order, cfg.sym, bias)
    t = torch.from_numpy
    return QuantLinear.from_codes(
        t(q).to(torch.uint8), t(s), t(z).to(torch.int32), cfg, g_idx=t(g_idx), bias=None if b is None else t(b)
    )


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("bits,group_size,sym,act_order", [(4, 32, False, True), (4, -1, True, False), (3, 32, True, True), (2, 16, False, False), (8, 64, False, True)])
def test_round_trip_is_bit_exact_and_follows_layout(tmp_path, fmt, bits, group_size, sym, act_order):
    cfg = qk.QuantConfig(bits=bits, group_size=group_size, sym=sym, act_order=act_order)
    model = torch.nn.Sequential(quantized(64, 128, cfg, act_order), torch.nn.LayerNorm(64))
    qio.save(model, str(tmp_path), format=fmt)
    # ours -> file: the file holds what the reference packer makes of our codes and zeros.
    layer = model[0]
    codes = qk.reference.unpack(layer.portable_tensors()["qweight"], bits, 0).T.numpy()  # [N, K]
    zeros = qk.reference.unpack(layer.qzeros, bits, 1).numpy().astype(np.int64)
    file = load_file(str(tmp_path / "model.safetensors"))
    assert torch.equal(file["0.qweight"], gptq_qweight(codes, bits))
    assert torch.equal(file["0.qzeros"], gptq_qzeros(zeros - 1 if fmt == "gptq" else zeros, bits))
    qconf = json.load(open(tmp_path / "quantize_config.json"))
    assert qconf["checkpoint_format"] == fmt and qconf["bits"] == bits and qconf["desc_act"] == act_order
    # file -> ours: bit exact.
    back = qio.load(str(tmp_path))
    for k, v in layer.portable_tensors().items():
        assert torch.equal(back.layers["0"].portable_tensors()[k], v), k
    assert torch.equal(back.tensors["1.weight"], model[1].weight.detach())


def test_sharded_save_writes_index_and_reloads(tmp_path):
    cfg = qk.QuantConfig(bits=4, group_size=32)
    model = torch.nn.Sequential(*[QuantLinear.from_linear(torch.nn.Linear(64, 64), cfg) for _ in range(4)])
    qio.save(model, str(tmp_path), format="gptq_v2", max_shard_size=10_000)
    index = json.load(open(tmp_path / "model.safetensors.index.json"))
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "model.safetensors").exists()
    fresh = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(4)])
    qio.apply(fresh, str(tmp_path))
    x = torch.randn(5, 64)
    for a, b in zip(model, fresh):
        assert isinstance(b, QuantLinear)
        assert torch.equal(a(x), b(x))


def test_v1_writer_recentres_zero_point_zero_exactly(tmp_path):
    bits, n, k = 4, 16, 32
    rng = fresh_rng()
    codes = torch.from_numpy(rng.integers(0, 15, size=(n, k))).to(torch.uint8)  # never maxq=15
    zeros = torch.from_numpy(rng.integers(0, 16, size=(1, n))).to(torch.int32)
    zeros[0, :3] = 0
    scales = torch.rand(1, n, dtype=torch.float16) + 0.1
    layer = QuantLinear.from_codes(codes, scales, zeros, qk.QuantConfig(bits=bits, group_size=-1, sym=False))
    qio.save(torch.nn.Sequential(layer), str(tmp_path), format="gptq")
    file = load_file(str(tmp_path / "model.safetensors"))
    stored = qk.reference.unpack(file["0.qzeros"], bits, 1)
    assert stored[0, :3].tolist() == [0, 0, 0]  # real zero 1 after re-centring, stored minus one
    back = qio.load(str(tmp_path)).layers["0"]
    assert torch.equal(back.dequantize(torch.float32), layer.dequantize(torch.float32))


def test_v1_writer_refuses_unrepresentable_zero_point(tmp_path):
    n, k = 16, 32
    codes = torch.full((n, k), 3, dtype=torch.uint8)
    codes[5, 7] = 15  # maxq in the group whose zero is 0: no exact re-centring
    zeros = torch.full((1, n), 8, dtype=torch.int32)
    zeros[0, 5] = 0
    layer = QuantLinear.from_codes(codes, torch.ones(1, n, dtype=torch.float16), zeros, qk.QuantConfig(4, -1, sym=False))
    model = torch.nn.Sequential(torch.nn.Identity(), layer)
    with pytest.raises(ValueError, match=r"layer 1 has real zero point 0 in group 0, column 5.*gptq_v2"):
        qio.save(model, str(tmp_path), format="gptq")
    qio.save(model, str(tmp_path), format="gptq_v2")  # v2 stores it as is
    assert torch.equal(qio.load(str(tmp_path)).layers["1"].dequantize(), layer.dequantize())


# ---- v1 / v2 mislabels ------------------------------------------------------------------------------
def _sym_fixture(tmp_path, data_fmt, label):
    rng = fresh_rng()
    layer = random_layer(rng, 32, 64, 4, 32, sym=True)
    write_dir(tmp_path, gptq_tensors("l", layer, 4, data_fmt), gptq_config(4, 32, label, sym=True))
    return layer


@pytest.mark.parametrize("data_fmt,label", [("gptq_v2", "gptq"), ("gptq", "gptq_v2")])
def test_symmetric_mislabel_warns_and_override_reads_right(tmp_path, data_fmt, label):
    q, z, s, g_idx, _ = _sym_fixture(tmp_path, data_fmt, label)
    with pytest.warns(UserWarning, match=rf"labels this checkpoint '{label}'.*look like '{data_fmt}'.*l\.qzeros"):
        qio.load(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixed = qio.load(str(tmp_path), checkpoint_format=data_fmt).layers["l"]
    np.testing.assert_array_equal(fixed.dequantize(torch.float32).numpy(), expected_weight(q, z, s, g_idx))


def test_correct_symmetric_labels_do_not_warn(tmp_path):
    for fmt in ("gptq", "gptq_v2"):
        _sym_fixture(tmp_path / fmt, fmt, fmt)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            qio.load(str(tmp_path / fmt))


def test_v1_label_with_impossible_zero_point_is_an_error(tmp_path):
    rng = fresh_rng()
    q, z, s, g_idx, _ = layer = random_layer(rng, 32, 64, 4, 32)
    z[1, 2] = 15  # v2 data: stored 15 would mean real zero 16 in v1
    write_dir(tmp_path, gptq_tensors("a.b", layer, 4, "gptq_v2"), gptq_config(4, 32, "gptq"))
    with pytest.raises(qio.CheckpointError, match=r"a\.b\.qzeros stores zero point 15.*checkpoint_format='gptq_v2'"):
        qio.load(str(tmp_path))
    fixed = qio.load(str(tmp_path), checkpoint_format="gptq_v2").layers["a.b"]
    np.testing.assert_array_equal(fixed.dequantize(torch.float32).numpy(), expected_weight(q, z, s, g_idx))


# ---- malformed input: every error names the tensor or file ----------------------------------------
def _good(tmp_path, **config):
    rng = fresh_rng()
    t = gptq_tensors("m.fc", random_layer(rng, 32, 64, 4, 32, bias=True), 4, "gptq")
    c = gptq_config(4, 32, "gptq")
    c.update(config)
    return t, c


def _expect_error(tmp_path, tensors, config, match, config_file="quantize_config.json"):
    write_dir(tmp_path, tensors, config, config_file)
    with pytest.raises(qio.CheckpointError, match=match):
        qio.load(str(tmp_path))


@pytest.mark.parametrize("name", ["qweight", "qzeros", "scales"])
def test_missing_tensor_is_named(tmp_path, name):
    t, c = _good(tmp_path)
    del t[f"m.fc.{name}"]
    if name == "qweight":  # then m.fc is not a quantized layer; its other tensors are plain tensors
        t["m.other.qweight"] = t.pop("m.fc.qzeros")
        _expect_error(tmp_path, t, c, r"missing tensor 'm\.other\.(qzeros|scales)'")
    else:
        _expect_error(tmp_path, t, c, rf"missing tensor 'm\.fc\.{name}'")


def test_desc_act_without_g_idx_is_named(tmp_path):
    t, c = _good(tmp_path, desc_act=True)
    del t["m.fc.g_idx"]
    _expect_error(tmp_path, t, c, r"missing tensor 'm\.fc\.g_idx'.*desc_act")


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda t: t.__setitem__("m.fc.scales", t["m.fc.scales"][:1]), r"m\.fc\.scales has shape \(1, 32\), \(2, 32\)"),
        (lambda t: t.__setitem__("m.fc.qzeros", t["m.fc.qzeros"][:, :2]), r"m\.fc\.qzeros has shape"),
        (lambda t: t.__setitem__("m.fc.g_idx", t["m.fc.g_idx"][:40]), r"m\.fc\.g_idx has shape"),
        (lambda t: t.__setitem__("m.fc.bias", t["m.fc.bias"][:8]), r"m\.fc\.bias must be .* shape \(32,\)"),
        (lambda t: t.__setitem__("m.fc.qweight", t["m.fc.qweight"].to(torch.int64)), r"m\.fc\.qweight must be int32"),
        (lambda t: t.__setitem__("m.fc.qweight", t["m.fc.qweight"][:7]), r"m\.fc\.qweight \(7, 32\): in_features K=56 is not divisible by group_size=32"),
        (lambda t: t.__setitem__("m.fc.scales", t["m.fc.scales"].to(torch.int32)), r"m\.fc\.scales must be a 2-D float"),
        (lambda t: t["m.fc.g_idx"].__setitem__(0, 9), r"m\.fc\.g_idx has values in \[0, 9\], outside \[0, 2\)"),
        (lambda t: t["m.fc.g_idx"].copy_(t["m.fc.g_idx"].flip(0)), r"m\.fc\.g_idx is not the trivial grouping.*desc_act=false"),
    ],
)
def test_wrong_tensor_is_named(tmp_path, edit, match):
    t, c = _good(tmp_path)
    edit(t)
    _expect_error(tmp_path, t, c, match)


@pytest.mark.parametrize(
    "config,match",
    [
        ({"bits": 5}, r"bits=5 is not supported"),
        ({"bits": 8}, r"m\.fc\.(qzeros|scales|g_idx) has shape .*config disagrees"),
        ({"bits": 3}, r"m\.fc\.qweight has 8 rows, not a whole number of 3-bit packing blocks"),
        ({"bits": 2}, r"m\.fc\.(qzeros|scales|g_idx) has shape .*config disagrees"),
        ({"group_size": 16}, r"m\.fc\.(qzeros|scales) has shape .*config disagrees"),
        ({"group_size": 24}, r"group_size=24 is not supported"),
        ({"checkpoint_format": "marlin"}, r"checkpoint_format 'marlin' is not supported"),
        ({"quant_method": "bitsandbytes"}, r"quant_method 'bitsandbytes' is not supported"),
        ({"sym": "yes"}, r"sym must be true or false"),
    ],
)
def test_bad_config_is_named(tmp_path, config, match):
    t, c = _good(tmp_path, **config)
    _expect_error(tmp_path, t, c, match)


def test_awq_non_gemm_and_bad_bits_are_refused(tmp_path):
    t = {"x.qweight": torch.zeros(64, 4, dtype=torch.int32)}
    _expect_error(tmp_path / "a", t, {"w_bit": 4, "q_group_size": 32, "version": "gemv"}, r"AWQ version 'gemv'", "quant_config.json")
    _expect_error(tmp_path / "b", t, {"w_bit": 3, "q_group_size": 32, "version": "gemm"}, r"bits=3 is not supported for awq", "quant_config.json")
    t["x.qzeros"] = torch.zeros(2, 4, dtype=torch.int32)
    t["x.scales"] = torch.ones(3, 32, dtype=torch.float16)
    _expect_error(tmp_path / "c", t, {"w_bit": 4, "q_group_size": 32, "version": "gemm"}, r"x\.scales has shape \(3, 32\), \(2, 32\)", "quant_config.json")


def test_config_files_that_disagree_are_named(tmp_path):
    t, c = _good(tmp_path)
    write_dir(tmp_path, t, c)
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"quantization_config": dict(c, group_size=64)}, f)
    with pytest.raises(qio.CheckpointError, match=r"config\.json:quantization_config and quantize_config\.json disagree"):
        qio.load(str(tmp_path))


def test_missing_config_and_missing_shard_are_named(tmp_path):
    t, c = _good(tmp_path)
    write_dir(tmp_path, t, c, shards=2)
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(qio.CheckpointError, match=r"shard 'model-00002-of-00002\.safetensors' .* does not exist"):
        qio.load(str(tmp_path))
    os.remove(tmp_path / "quantize_config.json")
    with pytest.raises(qio.CheckpointError, match=r"no quantization config"):
        qio.load(str(tmp_path))


# ---- apply --------------------------------------------------------------------------------------------
class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 64)
        self.fc = torch.nn.Linear(64, 96)
        self.out = torch.nn.Linear(64, 50, bias=False)
        self.out.weight = self.emb.weight  # tied

    def forward(self, ids):
        h = self.emb(ids)
        return self.out(h + self.fc(h)[..., :64])


def test_apply_on_meta_model_loads_everything_and_keeps_ties(tmp_path):
    model = Tiny()
    qk.quantize_(model, qk.QuantConfig(bits=4, group_size=32, sym=False))
    assert isinstance(model.fc, QuantLinear) and not isinstance(model.out, QuantLinear)
    qio.save(model, str(tmp_path), format="gptq")
    assert "out.weight" not in load_file(str(tmp_path / "model.safetensors"))  # tied: written once
    with torch.device("meta"):
        fresh = Tiny()
    qio.apply(fresh, str(tmp_path), device="cpu")
    assert fresh.out.weight is fresh.emb.weight
    ids = torch.randint(0, 50, (2, 5))
    assert torch.equal(fresh(ids), model(ids))


def test_apply_names_mismatches_with_the_model(tmp_path):
    model = Tiny()
    qk.quantize_(model, qk.QuantConfig(bits=4, group_size=32))
    qio.save(model, str(tmp_path), format="gptq_v2")

    class Wider(Tiny):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 128)

    with pytest.raises(qio.CheckpointError, match=r"fc\.qweight \(8, 96\) holds a \[96, 64\].*model's layer is \[128, 64\]"):
        qio.apply(Wider(), str(tmp_path))

    class NoBias(Tiny):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 96, bias=False)

    with pytest.raises(qio.CheckpointError, match=r"fc\.bias: the model's fc has no bias"):
        qio.apply(NoBias(), str(tmp_path))

    class Extra(Tiny):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(64)

    with torch.device("meta"):
        extra = Extra()
    for model in (extra, Extra()):  # on meta, and initialised (where nothing would stay visibly unloaded)
        with pytest.raises(qio.CheckpointError, match=r"no tensor for the model's \['norm\.weight', 'norm\.bias'\]"):
            qio.apply(model, str(tmp_path))

    class Renamed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 64)
            self.proj = torch.nn.Linear(64, 96)

    with pytest.raises(qio.CheckpointError, match=r"fc\.qweight: the model has nothing at 'fc'"):
        qio.apply(Renamed(), str(tmp_path))
