"""The triton backend (quantkernels/backends/triton.py, quantkernels/triton/) against the reference.

The cases live in ``tests/triton_cases.py``. With a GPU they run here, in process, on the compiled
kernels. Without one they run in a child pytest under the Triton interpreter: ``TRITON_INTERPRET=1``
must be set before triton is first imported (triton 3.9 builds its own ``tl.zeros``, ``tl.sum``...
for the interpreter only then), which a process that already imported triton cannot undo, and the
variable must not leak into the other test files. Budget: about 1 minute on the 2-core CI machine.
"""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

HERE = os.path.dirname(os.path.abspath(__file__))

if torch.cuda.is_available():
    sys.path.insert(0, HERE)
    from triton_cases import *  # noqa: E402,F401,F403
else:

    def test_triton_cases_under_interpreter():
        env = dict(os.environ, TRITON_INTERPRET="1")
        root = os.path.dirname(HERE)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.join(HERE, "triton_cases.py")]
        r = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        assert " passed" in r.stdout and "failed" not in r.stdout, r.stdout[-3000:]
