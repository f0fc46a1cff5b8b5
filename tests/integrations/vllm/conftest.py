"""vLLM's CPU build lives in its own venv (`make vllm-venv`); these tests drive it in subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
VLLM_PYTHON = Path(os.environ.get("KVTIER_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
BLOCK = 128  # vLLM's CPU platform uses 128-token blocks


def vllm_python() -> Path:
    if not VLLM_PYTHON.exists():
        pytest.fail(f"vLLM's CPU build is not installed at {VLLM_PYTHON}: run `make vllm-venv` (or set "
                    f"KVTIER_VLLM_PYTHON), or deselect these tests with -m 'not vllm'")
    return VLLM_PYTHON


def run_engine(spec: dict, workdir: Path, name: str, *, background: bool = False):
    """Run driver.py on `spec` in vLLM's venv; its result (or, in the background, the Popen and the path)."""
    spec_path, out_path, log_path = workdir / f"{name}.json", workdir / f"{name}.out.json", workdir / f"{name}.log"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    cmd = [str(vllm_python()), "-m", "tests.integrations.vllm.driver", str(spec_path), str(out_path)]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if background:
        return proc, out_path, log_path
    return finish(proc, out_path, log_path)


def finish(proc: subprocess.Popen, out_path: Path, log_path: Path, timeout: float = 600) -> dict:
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    if rc != 0:
        tail = log_path.read_text()[-4000:]
        raise AssertionError(f"vLLM driver exited {rc}; log tail:\n{tail}")
    return json.loads(out_path.read_text())


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random Llama (GQA, 4 layers) saved the way HuggingFace checkpoints are."""
    import torch
    import transformers

    path = tmp_path_factory.mktemp("vllm-model")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


if sys.platform != "linux":  # pragma: no cover
    pytest.skip("vLLM's CPU build is Linux-only", allow_module_level=True)
