"""Where the cache end-to-end tests put the device pool: always CPU, and CUDA (`gpu` mark) when present."""
import pytest
import torch

POOL_DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA")])]
