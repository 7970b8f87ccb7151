"""The ``quantkernels`` command line: ``python -m quantkernels <command>``."""

from __future__ import annotations

import argparse
import platform
import sys
from typing import Callable, Dict, List, Optional


def cmd_info(args) -> int:
    """Versions, how the extension was built, and which backends can serve here."""
    import torch

    import quantkernels
    from quantkernels import _ext, backends

    print(f"quantkernels {quantkernels.__version__}")
    print(f"python       {platform.python_version()} ({platform.machine()})")
    print(f"torch        {torch.__version__} (CUDA {torch.version.cuda or 'none'}, GPU available: {torch.cuda.is_available()})")
    try:
        import importlib.metadata as md

        print(f"triton       {md.version('triton')}")
    except Exception:
        print("triton       not installed")
    info = _ext.build_info()
    if info:
        print("extension    quantkernels._C")
        for key in sorted(info):
            print(f"  {key:<22} {info[key]}")
    else:
        print(f"extension    not loaded: {_ext.unavailable_reason()}")
    print("backends (in order of preference):")
    for name, reason in backends.status().items():
        print(f"  {name:<10} {'available' if reason is None else 'unavailable: ' + reason}")
    return 0


COMMANDS: Dict[str, Callable] = {"info": cmd_info}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantkernels", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help=cmd_info.__doc__)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
