"""Shared pytest setup for the whole suite."""
import os

import torch

# Kernel tests run the Triton code on CPU tensors through the interpreter when there is no GPU.
# This must happen before anything imports triton, hence here, at collection time.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
