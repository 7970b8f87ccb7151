"""Triton kernels for the quantized linear ops (imported only by the ``triton`` backend, on demand).

Importing this package imports triton; nothing else in quantkernels does so at import time.
"""

from .ops import INTERPRETED, force_config, m_bucket, triton_linear, tuning, workspace_floats

__all__ = ["INTERPRETED", "force_config", "m_bucket", "triton_linear", "tuning", "workspace_floats"]
