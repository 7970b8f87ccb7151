"""Loading the compiled extension ``quantkernels._C`` without ever failing ``import quantkernels``.

The extension may be missing (pure-Python install), stale, or built against another torch. In each
case the reference backend still serves, and the first call that needs native code gets an error
saying what is missing and how to build it.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Optional

import torch

BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` in the quantkernels source tree "
    "(set QUANTKERNELS_BUILD_CUDA=1 and TORCH_CUDA_ARCH_LIST for CUDA kernels)"
)


class ExtensionUnavailable(RuntimeError):
    """The native extension cannot be used; the message says why and how to fix it."""


_LOADED = None  # (module or None, reason or None), computed once
_BUILD_INFO: dict = {}


def _load():
    """Returns (module or None, reason or None). A plain cached global, not ``functools.lru_cache``:
    torch.compile traces the backend checks on every call, and some dynamo versions inline an
    lru_cache'd function, which would re-run the import inside the traced graph."""
    global _LOADED
    if _LOADED is None:
        _LOADED = _import_extension()
    return _LOADED


def reset() -> None:
    """Forget the cached result (tests, or after building the extension in a running process)."""
    global _LOADED, _BUILD_INFO
    _LOADED, _BUILD_INFO = None, {}


def _import_extension():
    try:
        mod = importlib.import_module("quantkernels._C")
    except (ImportError, OSError) as e:
        return None, f"quantkernels._C could not be loaded ({type(e).__name__}: {e})"
    global _BUILD_INFO
    info = _BUILD_INFO = dict(mod.build_info())
    built_for = info.get("torch_version", "?")
    if built_for.split("+")[0] != torch.__version__.split("+")[0]:
        return None, f"quantkernels._C was built for torch {built_for} but torch {torch.__version__} is running"
    _warn_ignored_isa(info)
    return mod, None


def _warn_ignored_isa(info: dict) -> None:
    """QUANTKERNELS_CPU_ISA that names no instruction set, or one this CPU cannot run, is ignored (the
    best supported path runs, never an illegal instruction); say so instead of ignoring it silently."""
    status, env = info.get("cpu_isa_env_status"), info.get("cpu_isa_env")
    if status == "unknown":
        why = f"is not an instruction set name (expected one of {info.get('cpu_isas_compiled')})"
    elif status == "unsupported":
        why = "names an instruction set this CPU / OS does not support"
    else:
        return
    warnings.warn(f"QUANTKERNELS_CPU_ISA={env!r} {why}; the CPU kernels use {info.get('cpu_isa_selected')}",
                  RuntimeWarning)


def extension() -> Optional[object]:
    """The loaded ``_C`` module, or None."""
    return _load()[0]


def unavailable_reason() -> Optional[str]:
    return _load()[1]


def require() -> object:
    """The loaded ``_C`` module; raises :class:`ExtensionUnavailable` with a build hint otherwise."""
    mod, reason = _load()
    if mod is None:
        raise ExtensionUnavailable(f"{reason}; {BUILD_HINT}")
    return mod


def build_info() -> dict:
    """How the loaded extension was built (empty when none loaded); cached, so traceable."""
    return dict(_BUILD_INFO) if extension() is not None else {}
