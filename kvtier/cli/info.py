"""`kvtier info`: versions, devices and which kernel implementation kvtier.ops will use."""
from __future__ import annotations

import argparse
import json
import platform
from typing import Any


def register(commands: Any) -> None:
    parser = commands.add_parser("info", help="show versions, devices and kernel dispatch")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def collect() -> dict[str, Any]:
    import torch

    import kvtier

    try:
        import triton
        triton_version: str | None = triton.__version__
    except ImportError:
        triton_version = None
    cuda = torch.cuda.is_available()
    return {
        "kvtier": kvtier.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda_available": cuda,
        "device_name": torch.cuda.get_device_name(0) if cuda else None,
        "kernels": "triton" if cuda and triton_version else "torch-reference",
    }


def run(args: argparse.Namespace) -> int:
    facts = collect()
    if args.json:
        print(json.dumps(facts))
    else:
        for key, value in facts.items():
            print(f"{key:>15}: {value}")
    return 0
