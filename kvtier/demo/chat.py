"""The demo's chat: a shared system prompt and document, per-conversation questions, and the token
ids of each turn's prompt.

A turn's prompt continues the previous one token for token (its prompt, the reply's tokens, then
the template's text for the next question), the way a serving engine keeps a conversation, so the
cache can serve every full block of the history. With a tokenizer the chat template renders the
text; without one (`--model tiny`) the ids are synthetic.
"""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYSTEM_PROMPT = ("You are the support assistant of kvtier, an open-source library that manages the KV cache "
                 "of LLM inference. Answer from the document below, briefly and plainly. If the document does "
                 "not say, answer that it does not say.")
QUESTIONS = (
    ("In one sentence, what does kvtier do?", "Which storage tiers can it use?",
     "What does it do with a block that fails its checksum?"),
    ("Who is kvtier written for?", "What does `kvtier bench storage` measure?",
     "Does it keep the cache across a restart?"),
    ("What is a block in kvtier?", "Can two tenants share cached blocks?", "How is the cache configured?"),
)


def document_text() -> str:
    """The document the chat is about: kvtier's own README (the package's long description)."""
    try:
        text = importlib.metadata.metadata("kvtier").get_payload()  # type: ignore[attr-defined]
    except importlib.metadata.PackageNotFoundError:
        text = None
    if not text:
        readme = Path(__file__).resolve().parents[2] / "README.md"
        text = readme.read_text(encoding="utf-8") if readme.is_file() else SYSTEM_PROMPT * 200
    return str(text)


@dataclass(slots=True)
class Turn:
    conversation: int
    index: int
    question: str
    prompt: list[int]
    reply: list[int] = field(default_factory=list)
    reply_text: str = ""


class ChatTokens:
    """Turn prompts as token ids: through the tokenizer's chat template, or synthetic without one."""

    def __init__(self, tokenizer: Any | None, vocab_size: int, eos_token_ids: tuple[int, ...],
                 document_tokens: int) -> None:
        self.tokenizer, self.vocab_size, self.eos = tokenizer, vocab_size, set(eos_token_ids)
        if tokenizer is None:
            self.system: Any = [(7 * i + 3) % vocab_size for i in range(document_tokens)]
        else:
            ids = tokenizer.encode(document_text(), add_special_tokens=False)[:document_tokens]
            self.system = f"{SYSTEM_PROMPT}\n\n# Document\n\n{tokenizer.decode(ids)}"

    def first(self, question: str, conversation: int) -> list[int]:
        if self.tokenizer is None:
            return list(self.system) + self._synthetic_question(conversation, 0)
        return self._encode(self._render([("user", question)], generation=True))

    def next(self, turns: list[Turn], question: str) -> list[int]:
        """The prompt after `turns` (this conversation's so far, replies included) for `question`."""
        last = turns[-1]
        reply = [t for t in last.reply if t not in self.eos]
        if self.tokenizer is None:
            return last.prompt + reply + self._synthetic_question(last.conversation, last.index + 1)
        history = [m for t in turns for m in (("user", t.question), ("assistant", t.reply_text))]
        before = self._render(history[:-1], generation=True) + last.reply_text
        after = self._render([*history, ("user", question)], generation=True)
        if not after.startswith(before):  # NOTE: a template that rewrites history: only the system prefix is shared
            return self._encode(after)
        return last.prompt + reply + self._encode(after[len(before):])

    def text(self, token_ids: list[int]) -> str:
        if self.tokenizer is None:
            return " ".join(str(t) for t in token_ids)
        return str(self.tokenizer.decode([t for t in token_ids if t not in self.eos], skip_special_tokens=True))

    def _render(self, messages: list[tuple[str, str]], generation: bool) -> str:
        assert self.tokenizer is not None
        chat = [{"role": "system", "content": self.system}] + [{"role": r, "content": c} for r, c in messages]
        return str(self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation))

    def _encode(self, text: str) -> list[int]:
        assert self.tokenizer is not None
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _synthetic_question(self, conversation: int, index: int) -> list[int]:
        return [(31 * conversation + 17 * index + 5 * i + 1) % self.vocab_size for i in range(24)]
