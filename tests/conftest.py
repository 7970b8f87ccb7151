import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def _seed_and_clean_env(monkeypatch):
    """Fresh random data per test (seeded for reproducibility) and no stray backend forcing."""
    torch.manual_seed(int.from_bytes(os.urandom(2), "little"))
    monkeypatch.delenv("QUANTKERNELS_BACKEND", raising=False)
    yield


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64."""
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@pytest.fixture(scope="module")
def one_thread():
    """For modules of many tiny ops (GPTQ, AWQ, model loaders): on a shared 2-core box intra-op
    threads only wait on each other (measured: 80 s -> 2 s for one AWQ test under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
