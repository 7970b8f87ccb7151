"""The backend registry: which implementation serves a given ``QuantLinear`` call.

Backends, in order of preference: ``cuda`` (hand-written CUDA kernels), ``triton``, ``cpu`` (native
SIMD kernels) and ``reference`` (pure PyTorch, always able to serve). Each call takes the first one
that can serve it, judged by the activation's device and dtype and the layer's format. The
environment variable ``QUANTKERNELS_BACKEND`` (or a layer's ``backend`` attribute) forces one; a
forced backend that cannot serve the call raises :class:`BackendError` saying why.

A backend is a module in this package exposing a ``BACKEND`` object with this interface:

``name``
    its registry name.
``unavailable_reason() -> str | None``
    why it cannot run on this machine at all (missing extension, no GPU, no triton), or None.
``supports(layer, x) -> str | None``
    why it cannot serve this layer with this activation (dtype, device, format, shape), or None.
``prepare(layer) -> state``
    repack the layer's portable tensors into the backend's layout; called once per device (at
    load, on ``.to()``), never on the hot path. The state lives in ``layer._prepared[name]``.
``linear(layer, state, x2d) -> Tensor``
    ``x2d`` is ``[M, K]`` (M >= 1), contiguous; returns ``[M, N]`` in ``x2d.dtype``, bias included.
``dequantize(layer, state, dtype) -> Tensor`` (optional)
    the float weight ``[N, K]`` from the backend's layout; only needed when ``state`` replaces the
    portable ``qweight`` (``getattr(state, "replaces_qweight", False)``), in which case the backend
    must also provide ``to_portable(layer, state) -> dict`` of the portable tensors.
"""

from __future__ import annotations

import importlib
import os
from typing import Dict, List, Optional

ORDER: List[str] = ["cuda", "triton", "cpu", "reference"]
ENV_VAR = "QUANTKERNELS_BACKEND"

_cache: Dict[str, object] = {}
_import_errors: Dict[str, str] = {}


class BackendError(RuntimeError):
    """A backend was asked for (by name or environment) that cannot serve the call."""


def get(name: str):
    """The backend object for ``name``, or None if its module is not present."""
    if name not in ORDER:
        raise BackendError(f"unknown backend {name!r}; expected one of {ORDER}")
    if name not in _cache:
        try:
            _cache[name] = importlib.import_module(f"{__name__}.{name}").BACKEND
        except ImportError as e:  # a backend module may legitimately be absent
            _import_errors[name] = f"{type(e).__name__}: {e}"
            _cache[name] = None
    return _cache[name]


def unavailable_reason(name: str) -> Optional[str]:
    b = get(name)
    if b is None:
        return f"backend module not importable ({_import_errors.get(name, 'missing')})"
    return b.unavailable_reason()


def reason_cannot_serve(name: str, layer, x) -> Optional[str]:
    reason = unavailable_reason(name)
    if reason is None:
        reason = get(name).supports(layer, x)
    return reason


def forced_backend(layer=None) -> Optional[str]:
    name = getattr(layer, "backend", None) or os.environ.get(ENV_VAR) or None
    if name is not None and name not in ORDER:
        raise BackendError(f"{ENV_VAR}={name!r} is not a backend; expected one of {ORDER}")
    return name


def select(layer, x) -> str:
    """Name of the backend that serves ``layer(x)``."""
    forced = forced_backend(layer)
    if forced is not None:
        reason = reason_cannot_serve(forced, layer, x)
        if reason is not None:
            raise BackendError(f"backend {forced!r} was forced but cannot serve this call: {reason}")
        return forced
    for name in ORDER:
        if reason_cannot_serve(name, layer, x) is None:
            return name
    raise BackendError("no backend can serve this call (the reference backend should always serve)")


def status() -> Dict[str, Optional[str]]:
    """For ``python -m quantkernels info``: each backend's machine-level availability."""
    return {name: unavailable_reason(name) for name in ORDER}
