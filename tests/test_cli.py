"""The command line: argument handling, and quick real runs on MiniLM (the small model)."""

import os
import subprocess
import sys

import pytest
import torch

from quantkernels import cli


pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _text(name):
    for root in (os.path.join(ROOT, "..", "shared"), os.path.join(ROOT, "shared")):
        path = os.path.join(root, "data", "text", name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(name)


def test_info_still_works(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "quantkernels" in out and "reference" in out


def test_module_entry_point_help():
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "quantkernels", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0
    for cmd in ("quantize", "eval", "bench", "demo", "info"):
        assert cmd in r.stdout


def test_parser_defaults_and_choices():
    p = cli.build_parser()
    a = p.parse_args(["eval", "--bits", "3", "--group-size", "-1", "--sym"])
    assert (a.model, a.method, a.bits, a.group_size, a.sym, a.eval_windows) == ("smollm2", "gptq", 3, -1, True, 16)
    d = p.parse_args(["demo"])
    assert d.calib_windows == 32 and d.eval_windows == 16
    with pytest.raises(SystemExit):
        p.parse_args(["eval", "--bits", "5"])
    with pytest.raises(SystemExit):
        p.parse_args(["quantize"])  # --out is required
    assert a.device == "cpu" and p.parse_args(["bench", "--device", "cuda"]).device == "cuda"
    with pytest.raises(SystemExit):
        p.parse_args(["eval", "--device", "tpu"])
    if not torch.cuda.is_available():  # on a GPU machine the same call would simply run there
        with pytest.raises(SystemExit, match="no CUDA device"):
            cli.main(["eval", "--model", "minilm", "--device", "cuda", "--no-progress"])


def test_gptq_options_reach_quantize():
    p = cli.build_parser()
    assert cli._method_options(p.parse_args(["eval"])) == {}  # the library's defaults
    a = p.parse_args(["eval", "--no-act-order", "--no-mse", "--permuted-groups", "--damp-percent", "0.1"])
    assert cli._method_options(a) == {"act_order": False, "mse": False, "static_groups": False, "damp_percent": 0.1}
    assert cli._method_options(p.parse_args(["eval", "--method", "awq", "--no-mse"])) == {}


def test_same_text_for_calibration_and_evaluation_is_refused():
    path = _text("emma.txt")
    with pytest.raises(SystemExit, match="calibrate on one text"):
        cli.main(["eval", "--model", "minilm", "--calib-text", path, "--eval-text", path])
    with pytest.raises(SystemExit, match="does not exist"):
        cli.main(["eval", "--model", "minilm", "--eval-text", "/nonexistent.txt"])


def test_quantize_minilm_writes_smaller_file(tmp_path, capsys):
    out = tmp_path / "minilm-int4.safetensors"
    rc = cli.main(["quantize", "--model", "minilm", "--method", "rtn", "--bits", "4", "--group-size", "64",
                   "--out", str(out), "--no-progress"])
    assert rc == 0 and out.exists()
    # fp32 MiniLM is ~87 MiB; int4 linears plus fp16 embeddings must be well under half of it
    assert out.stat().st_size < 30 * 2**20
    assert "saved" in capsys.readouterr().out


def test_eval_minilm_awq(capsys):
    rc = cli.main(["eval", "--model", "minilm", "--method", "awq", "--bits", "4", "--group-size", "64",
                   "--calib-text", _text("pride_and_prejudice.txt"), "--eval-text", _text("emma.txt"),
                   "--calib-windows", "1", "--sentences", "16", "--no-progress"])
    assert rc == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| minilm | awq")][0]
    cosine = float(line.split("|")[5])
    assert 0.9 < cosine <= 1.0
