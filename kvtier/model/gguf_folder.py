"""A GGUF file converted once into a HuggingFace folder (`config.json`, `model.safetensors`, the
tokenizer) under a cache directory, so later loads skip parsing and dequantizing.

The folder is built under a temporary name beside its final one, fsynced, and renamed into place,
so a reader never sees half a conversion and a conversion killed midway leaves only a temporary
folder (removed by the next one). `source.json` names the GGUF file it came from (name, size,
mtime); a changed file is converted again. Two processes converting at once both finish; the
last rename wins and both folders are complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kvtier.config import dtype_name, parse_dtype
from kvtier.model.gguf import gguf_tensors, hf_config_from_gguf, open_gguf
from kvtier.model.hf_config import model_config_from_hf

SOURCE_FILE = "source.json"


def converted_folder(gguf_path: str | Path, cache_dir: str | Path, *, dtype: str = "float32",
                     progress: bool = False) -> Path:
    """`<cache_dir>/models/<file stem>-<dtype>/`, converting `gguf_path` into it unless it is current.

    Raises:
        UnsupportedModelError: the file cannot be read or is a model this decoder cannot run.
        OSError: the cache directory cannot be written (the message names it).
    """
    source = Path(gguf_path).resolve()
    name = dtype_name(parse_dtype(dtype))
    dest = Path(cache_dir) / "models" / f"{source.stem}-{name}"
    if _source_of(dest) != _identity(source):
        convert_gguf(source, dest, dtype=name, progress=progress)
    return dest


def convert_gguf(gguf_path: Path, dest: Path, *, dtype: str, progress: bool = False) -> None:
    """Write the HF folder of `gguf_path` at `dest` atomically (replacing an older one)."""
    reader = open_gguf(gguf_path)
    config = hf_config_from_gguf(reader, dtype)
    model_config = model_config_from_hf(config, name=dest.name)  # refuses what cannot run before any work
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(dest)
    build = Path(tempfile.mkdtemp(prefix=f".{dest.name}.build-", dir=dest.parent))
    try:
        from safetensors.torch import save_file

        state = gguf_tensors(reader, config, model_config.dtype, progress=progress)
        if model_config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(build / "model.safetensors"), metadata={"format": "pt"})
        del state
        (build / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if "tokenizer.ggml.tokens" in reader.fields:
            _save_tokenizer(gguf_path, build)
        (build / SOURCE_FILE).write_text(json.dumps(_identity(gguf_path)) + "\n")
        _fsync_tree(build)
        _replace(build, dest)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _save_tokenizer(gguf_path: Path, folder: Path) -> None:
    """The file's tokenizer through transformers' GGUF reader, saved as tokenizer.json; skipped
    without transformers or a vocabulary in the file (the folder then serves token ids only)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        print("kvtier: transformers is not installed; the converted model has no tokenizer", file=sys.stderr)
        return
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.save_pretrained(str(folder))


def _identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"file": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _source_of(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(build: Path, dest: Path) -> None:
    """Rename `build` to `dest`; an existing `dest` is first renamed aside, then removed."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        with contextlib.suppress(FileNotFoundError):  # NOTE: another converter may have moved it first
            os.replace(dest, old / "folder")
    try:
        os.replace(build, dest)
    except OSError:
        if not dest.exists():  # NOTE: another converter renamed its complete folder in; keep that one
            raise
    _fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale_builds(dest: Path) -> None:
    """Leftovers of conversions killed midway (build and old folders of this name)."""
    for leftover in dest.parent.glob(f".{dest.name}.*-*"):
        if leftover.is_dir() and _is_stale(leftover):
            shutil.rmtree(leftover, ignore_errors=True)


def _is_stale(folder: Path) -> bool:
    """A leftover is stale once no process could still be writing it: older than an hour."""
    try:
        return time.time() - folder.stat().st_mtime > 3600
    except FileNotFoundError:
        return False
