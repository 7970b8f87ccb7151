import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def _seed_and_clean_env(request, monkeypatch):
    """Fresh random data per test and no stray backend forcing.

    The seed is drawn anew for every test and printed with a failure's report ("random seed");
    `QUANTKERNELS_TEST_SEED=N pytest ...` replays that test on the same data.
    """
    seed = int(os.environ.get("QUANTKERNELS_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    torch.manual_seed(seed)
    request.node.user_properties.append(("random seed", seed))
    monkeypatch.delenv("QUANTKERNELS_BACKEND", raising=False)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.failed:
        for name, value in item.user_properties:
            if name == "random seed":
                report.sections.append(("random seed", f"QUANTKERNELS_TEST_SEED={value}"))


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
