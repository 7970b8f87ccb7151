"""The package imports and serves without the native extension, and says how to build it."""

import os
import subprocess
import sys

import pytest

import quantkernels
from quantkernels import _ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, **env):
    e = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=300)


def test_import_and_serve_without_extension():
    """A broken/missing _C (simulated by a finder that refuses it) must not break import or forward."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'quantkernels._C': raise ImportError('simulated: built for another torch')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, quantkernels\n"
        "from quantkernels import _ext\n"
        "q = quantkernels.nn.QuantLinear.from_linear(torch.nn.Linear(64, 32), quantkernels.QuantConfig(group_size=32))\n"
        "print(q(torch.randn(2, 64)).shape)\n"
        "try:\n"
        "    _ext.require()\n"
        "except _ext.ExtensionUnavailable as e:\n"
        "    print('ERR', e)\n"
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert "torch.Size([2, 32])" in r.stdout
    assert "ERR quantkernels._C could not be loaded" in r.stdout and "pip install --no-build-isolation -e ." in r.stdout


def test_stale_extension_is_refused(monkeypatch):
    class FakeC:
        @staticmethod
        def build_info():
            return {"torch_version": "1.0.0"}

    monkeypatch.setattr(_ext.importlib, "import_module", lambda name: FakeC)
    _ext.reset()
    try:
        assert _ext.extension() is None
        assert "built for torch 1.0.0" in _ext.unavailable_reason()
        with pytest.raises(_ext.ExtensionUnavailable, match="built for torch 1.0.0 but torch"):
            _ext.require()
    finally:
        _ext.reset()


def test_info_command():
    r = _run("from quantkernels.cli import main; main(['info'])")
    assert r.returncode == 0, r.stderr
    assert "quantkernels " + quantkernels.__version__ in r.stdout
    assert "reference  available" in r.stdout
    assert "extension" in r.stdout


def test_import_does_not_import_triton():
    r = _run("import sys, quantkernels, torch; print('triton' in sys.modules)")
    assert r.returncode == 0, r.stderr
    # torch itself may import triton on GPU builds; quantkernels must not add it on a CPU build
    assert r.stdout.strip() == "False"
