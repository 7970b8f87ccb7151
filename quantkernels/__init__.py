"""quantkernels: INT8 / INT4 / INT3 / INT2 linear layers for PyTorch, on hand-written kernels.

Public names: :class:`QuantConfig`, :class:`quantkernels.nn.QuantLinear`, :func:`quantize_`.
Importing this package never imports triton and never fails because the native extension is
missing: the reference backend always serves.
"""

from . import ops  # noqa: F401  (registers the op schemas and reference kernels)
from . import nn
from .api import QuantizeSummary, quantize_
from .formats import QuantConfig

__version__ = "0.1.0"
__all__ = ["QuantConfig", "QuantizeSummary", "nn", "quantize_", "__version__"]
