"""``QuantLinear``: a drop-in replacement for ``nn.Linear`` with quantized weights.

It holds the portable tensors of :mod:`quantkernels.formats` as buffers (what ``state_dict`` saves)
and knows nothing about kernels: each call asks :mod:`quantkernels.backends` which backend serves it.
A backend may repack the weights once per device into its own layout (``layer._prepared``); a
backend whose layout *replaces* the portable ``qweight`` (no second full-size copy) converts back
whenever the portable form is needed (``state_dict``, ``.to()``, pickling).
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import torch
from torch import nn

from . import backends, ops  # noqa: F401  (ops registers the op schemas)
from .formats import QuantConfig, trivial_g_idx

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class _InputGrad(torch.autograd.Function):
    """Gradient to the input only: the quantized weights are frozen."""

    @staticmethod
    def forward(ctx, x2d, layer):
        ctx.layer = layer
        return layer._forward_2d(x2d)

    @staticmethod
    def backward(ctx, grad):
        w = ctx.layer.dequantize(torch.float32)
        return torch.matmul(grad.to(torch.float32), w).to(grad.dtype), None


class QuantLinear(nn.Module):
    """``y = x @ dequantize(W).T + b`` with W stored in the portable quantized format.

    Args:
        in_features, out_features: as ``nn.Linear``.
        config: the :class:`~quantkernels.QuantConfig`.
        bias: whether the layer has a bias.
        device: where the buffers live (``"meta"`` for deferred loading with
            ``load_state_dict(assign=True)``).
        dtype: dtype of the float buffers (scales, bias); default ``config.scale_dtype``.
    """

    _backend: Optional[str] = None  # (class default: also for layers pickled before `backend` was a property)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: QuantConfig = QuantConfig(),
        bias: bool = True,
        device=None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        if not isinstance(config, QuantConfig):
            raise TypeError(f"QuantLinear: config must be a QuantConfig, got {type(config).__name__}")
        config.check_shape(in_features, out_features)
        self.in_features = in_features
        self.out_features = out_features
        self.config = config
        self._backend: Optional[str] = None  # per-layer override of the registry's choice (`backend`)
        fdtype = dtype or config.scale_dtype
        shapes = config.packed_shapes(in_features, out_features)
        self.register_buffer("qweight", torch.zeros(shapes["qweight"], dtype=torch.int32, device=device))
        self.register_buffer("qzeros", torch.zeros(shapes["qzeros"], dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.ones(shapes["scales"], dtype=fdtype, device=device))
        g_idx = trivial_g_idx(in_features, config.group_size, device="cpu").to(device)
        self.register_buffer("g_idx", g_idx)
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=fdtype, device=device))
        else:
            self.bias = None
        self._prepared: Dict[str, object] = {}
        self._last_backend: Optional[str] = None
        # backends.select's answer per (activation device and dtype, forced backend, interpreter
        # switch), valid while the buffers and the prepared states stay as they are: every place
        # that resets _prepared (load, .to(), a new state) resets it too.
        self._selected: Dict[tuple, str] = {}

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        config: QuantConfig,
        g_idx: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None,
    ) -> "QuantLinear":
        """From unpacked codes ``[N, K]``, scales ``[G, N]`` and integer zero points ``[G, N]``."""
        n, k = codes.shape
        layer = cls(k, n, config, bias=bias is not None, device="meta", dtype=scales.dtype)
        expected = (config.num_groups(k), n)
        for name, t in (("scales", scales), ("zeros", zeros)):
            if tuple(t.shape) != expected:
                raise ValueError(f"QuantLinear.from_codes: {name} must have shape {expected}, got {tuple(t.shape)}")
        if g_idx is None:
            g_idx = trivial_g_idx(k, config.group_size, device=codes.device)
        layer.qweight = torch.ops.quantkernels.pack(codes.t().contiguous(), config.bits, 0)
        layer.qzeros = torch.ops.quantkernels.pack(zeros.to(torch.int32), config.bits, 1)
        layer.scales = scales.contiguous()
        layer.g_idx = g_idx.to(device=codes.device, dtype=torch.int32).contiguous()
        if bias is not None:
            layer.bias = bias.detach().clone()
        layer._after_load()
        return layer

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, config: QuantConfig = QuantConfig(), g_idx: Optional[torch.Tensor] = None
    ) -> "QuantLinear":
        """Round-to-nearest quantization of an ``nn.Linear``'s weight (bias kept in its dtype)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QuantLinear.from_linear: linear must be nn.Linear, got {type(linear).__name__}")
        config.check_shape(linear.in_features, linear.out_features)
        w = linear.weight.detach()
        if w.device.type == "meta":
            raise ValueError("QuantLinear.from_linear: linear.weight is on the meta device; load its weights first")
        codes, scales, zeros = torch.ops.quantkernels.quantize(
            w, config.bits, config.group_size, config.sym, config.scale_dtype, g_idx
        )
        bias = None if linear.bias is None else linear.bias.detach()
        return cls.from_codes(codes, scales, zeros, config, g_idx=g_idx, bias=bias)

    # ---- the portable form, whatever a backend did with qweight --------------------------------
    def _replacing_backend(self):
        for name, state in self._prepared.items():
            if getattr(state, "replaces_qweight", False):
                return name, state
        return None, None

    def portable_tensors(self) -> Dict[str, torch.Tensor]:
        """The portable tensors (qweight, qzeros, scales, g_idx[, bias]) as a checkpoint stores them."""
        name, state = self._replacing_backend()
        if name is None:
            out = {"qweight": self.qweight, "qzeros": self.qzeros, "scales": self.scales, "g_idx": self.g_idx}
        else:
            out = dict(backends.get(name).to_portable(self, state))
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    def _restore_portable(self) -> None:
        name, _ = self._replacing_backend()
        if name is not None:
            self.qweight = self.portable_tensors()["qweight"]
        self._prepared = {}
        self._selected = {}

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._replacing_backend()[0] is not None:
            destination[prefix + "qweight"] = self.portable_tensors()["qweight"]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs):
        self._restore_portable()
        n_errs = len(errs)
        for name in ("qweight", "qzeros", "g_idx"):
            t = state_dict.get(prefix + name)
            if t is not None and t.dtype != torch.int32:
                errs.append(f"QuantLinear: {prefix}{name} must be torch.int32, got {t.dtype}")
        for name in ("scales", "bias"):
            # Float buffers take the checkpoint's dtype, so that loading is bit-exact.
            t, mine = state_dict.get(prefix + name), getattr(self, name, None)
            if t is not None and mine is not None and t.is_floating_point() and t.dtype != mine.dtype:
                setattr(self, name, torch.empty_like(mine, dtype=t.dtype))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs)
        if len(errs) == n_errs:  # otherwise load_state_dict raises with the collected messages
            self._after_load()

    def _apply(self, fn, recurse=True):
        self._restore_portable()
        result = super()._apply(fn, recurse)
        self._after_load()
        return result

    def __getstate__(self):
        self._restore_portable()
        return super().__getstate__()

    def _after_load(self) -> None:
        """Validate the buffers against each other and let the default backend repack once."""
        self._prepared = {}
        self._selected = {}
        if self.qweight.device.type == "meta":
            return
        self.check_buffers()
        self._prepare_selected()

    def _prepare_selected(self) -> None:
        """Repack once for the backend a call on this layer's device would select."""
        probe = torch.empty(0, self.in_features, dtype=self._activation_dtype_guess(), device=self.qweight.device)
        try:
            name = backends.select(self, probe)
        except backends.BackendError:
            return  # a forced backend that cannot serve reports itself at the first call
        self._prepare(name)

    @property
    def backend(self) -> Optional[str]:
        """The backend this layer is forced to (one of ``backends.ORDER``), or None for the registry's
        choice. Setting it repacks for that backend at once, so that the repacking (which reads the
        weights' values) never first runs inside a ``torch.compile`` trace."""
        return self._backend

    @backend.setter
    def backend(self, name: Optional[str]) -> None:
        if name is not None and name not in backends.ORDER:
            raise ValueError(f"QuantLinear: backend must be None or one of {backends.ORDER}, got {name!r}")
        self._backend = name
        self._selected = {}
        if self.qweight.device.type != "meta":
            self._prepare_selected()

    def _activation_dtype_guess(self) -> torch.dtype:
        """The activation dtype to prepare for at load. On a GPU, the scales' (half-precision models);
        on the CPU, the bias's (it follows the model's dtype), else float32. A wrong guess costs
        one repack at the first call."""
        if self.qweight.device.type != "cpu":
            return self.scales.dtype
        if self.bias is not None and self.bias.dtype in FLOAT_DTYPES:
            return self.bias.dtype
        return torch.float32

    def _prepare(self, name: str):
        if name not in self._prepared:
            holder, _ = self._replacing_backend()
            if holder is not None:
                # Another backend's layout stands in for qweight: every other backend reads the
                # portable form, so bring it back (one conversion) before preparing this one.
                self._restore_portable()
            state = backends.get(name).prepare(self)
            if getattr(state, "replaces_qweight", False):
                self._prepared = {}  # states prepared earlier may hold the portable qweight
            self._prepared[name] = state
            self._selected = {}  # a state can change what its backend supports (CUDA's `unsupported`)
        return self._prepared[name]

    def check_buffers(self) -> None:
        """Raise a ValueError naming the buffer when the buffers do not match each other."""
        shapes = self.config.packed_shapes(self.in_features, self.out_features)
        for name, dtype in (("qweight", torch.int32), ("qzeros", torch.int32), ("g_idx", torch.int32)):
            t = getattr(self, name)
            if t.dtype != dtype:
                raise ValueError(f"QuantLinear: buffer {name} must be {dtype}, got {t.dtype}")
            if tuple(t.shape) != tuple(shapes[name]):
                raise ValueError(f"QuantLinear: buffer {name} must have shape {tuple(shapes[name])}, got {tuple(t.shape)}")
        if tuple(self.scales.shape) != tuple(shapes["scales"]):
            raise ValueError(f"QuantLinear: buffer scales must have shape {tuple(shapes['scales'])}, got {tuple(self.scales.shape)}")
        if self.scales.dtype not in FLOAT_DTYPES:
            raise ValueError(f"QuantLinear: buffer scales must be float16/bfloat16/float32, got {self.scales.dtype}")
        if self.bias is not None and tuple(self.bias.shape) != (self.out_features,):
            raise ValueError(f"QuantLinear: buffer bias must have shape ({self.out_features},), got {tuple(self.bias.shape)}")
        devices = {t.device for t in (self.qweight, self.qzeros, self.scales, self.g_idx)}
        if len(devices) > 1:
            raise ValueError(f"QuantLinear: buffers are on different devices: {sorted(map(str, devices))}")

    # ---- compute --------------------------------------------------------------------------------
    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The float weight ``[out_features, in_features]`` (default dtype: the scales')."""
        t = self.portable_tensors()
        return torch.ops.quantkernels.dequantize(
            t["qweight"], t["qzeros"], t["scales"], t["g_idx"], self.config.bits, dtype or self.scales.dtype
        )

    def _select(self, x2d: torch.Tensor) -> str:
        """backends.select, remembered: the registry's checks cost more than a small layer's kernel."""
        if torch.compiler.is_compiling():
            return backends.select(self, x2d)
        env = os.environ
        key = (x2d.device, x2d.dtype, self.backend, env.get(backends.ENV_VAR), env.get("TRITON_INTERPRET"))
        name = self._selected.get(key)
        if name is None:
            name = backends.select(self, x2d)
            self._selected[key] = name
        if name != self._last_backend:
            self._last_backend = name
        return name

    def _forward_2d(self, x2d: torch.Tensor) -> torch.Tensor:
        name = self._select(x2d)
        if name in self._prepared:  # (a backend's state may be None: test membership, not the value)
            state = self._prepared[name]
        elif torch.compiler.is_compiling():
            raise RuntimeError(
                f"QuantLinear: the {name!r} backend has not repacked this layer's weights yet, and that "
                "repacking cannot run inside torch.compile; call the layer once outside torch.compile "
                "(or set layer.backend) before compiling"
            )
        else:
            state = self._prepare(name)
        return backends.get(name).linear(self, state, x2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Kept lean: a decode step runs every quantized layer at m = 1, where this Python is a large
        # part of a small layer's time (buffers are read from _buffers, not through Module.__getattr__).
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"QuantLinear: input must be a Tensor, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"QuantLinear: input dtype must be float32, float16 or bfloat16, got {x.dtype}")
        shape = x.shape
        if not shape or shape[-1] != self.in_features:
            raise ValueError(
                f"QuantLinear: input's last dimension must be in_features={self.in_features}, got shape {tuple(shape)}"
            )
        weight_device = self._buffers["qweight"].device
        if x.device != weight_device:
            raise ValueError(f"QuantLinear: input is on {x.device} but the layer's weights are on {weight_device}")
        x2d = (x if len(shape) == 2 else x.reshape(-1, self.in_features)).contiguous()
        if x2d.shape[0] == 0:
            return x.new_empty((*shape[:-1], self.out_features))
        if x.requires_grad and torch.is_grad_enabled():
            out = _InputGrad.apply(x2d, self)
        else:
            out = self._forward_2d(x2d)
        return out if len(shape) == 2 else out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        c = self.config
        backend = self.backend or self._last_backend or "auto"
        s = (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={c.bits}, "
            f"group_size={c.group_size}, sym={c.sym}, bias={self.bias is not None}, backend={backend}"
        )
        if c.act_bits is not None:
            s += f", act_bits={c.act_bits}"
        return s
