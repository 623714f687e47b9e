"""The chat template: how a conversation becomes token ids, and which of them a model learns.

Each message is ``<|role|>`` + its content's ordinary tokens + ``<|end|>``; with
``add_generation_prompt`` an ``<|assistant|>`` follows, for the model to answer. The four markers
are special tokens (``tokenizer/base.py``): ids after the ordinary vocabulary, which ``encode`` never
produces, so a user who types "<|user|>" gets characters, not a marker. The tokens a model learns
are the assistant's content and the ``<|end|>`` that closes it (it must learn to stop); the role
markers and the other turns are context only.

The template is stored with the tokenizer (its dict, so in checkpoints) as ``CHAT_TEMPLATE``, a
Hugging Face-style Jinja string for readers; lmcore does not run Jinja: it checks that a
tokenizer's template is this one, which ``apply_chat_template`` implements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from lmcore.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")
END = "<|end|>"
CHAT_SPECIALS = tuple(f"<|{role}|>" for role in ROLES) + (END,)
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


class ChatTokens(NamedTuple):
    """A templated conversation: ``ids`` (int64) and ``learn``, True at the tokens to learn."""

    ids: np.ndarray
    learn: np.ndarray


def add_chat_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer`` with the chat markers appended as special tokens and the template recorded
    (itself if it has them already). Ordinary ids do not move, so a model trained with the old
    one is extended by new embedding rows (``training/vocab_extend.py``)."""
    if tokenizer.chat_template == CHAT_TEMPLATE and set(CHAT_SPECIALS) <= set(tokenizer.specials):
        return tokenizer
    return tokenizer.with_specials(CHAT_SPECIALS, CHAT_TEMPLATE)


def message_problem(message: Any) -> str | None:
    """Why ``message`` is not a chat message (``{"role": ..., "content": "..."}``), or None."""
    if not isinstance(message, dict):
        return f"a message must be an object, got {type(message).__name__}"
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        return f"unknown role {str(role)[:40]!r} (known: {', '.join(ROLES)})"
    if not isinstance(content, str):
        return f"the content of a {role} message must be a string, got {type(content).__name__}"
    if not content.strip():
        return f"a {role} message has empty content"
    return None


def apply_chat_template(tokenizer: Tokenizer, messages: Sequence[dict[str, str]],
                        add_generation_prompt: bool = False) -> ChatTokens:
    """The ids of ``messages`` in the chat template, and which of them to learn.

    A ValueError names a bad message, or a tokenizer without the chat tokens (extend it with
    ``add_chat_tokens``), or content that the tokenizer cannot encode (a character tokenizer
    knows only the characters of its training text)."""
    if tokenizer.chat_template != CHAT_TEMPLATE:
        raise ValueError("this tokenizer has no chat template (or another one); extend it with add_chat_tokens")
    end = tokenizer.special_id(END)
    ids: list[np.ndarray] = []
    learn: list[np.ndarray] = []
    for i, message in enumerate(messages):
        if (problem := message_problem(message)) is not None:
            raise ValueError(f"message {i}: {problem}")
        try:
            content = tokenizer.encode(message["content"]).astype(np.int64)
        except ValueError as e:
            raise ValueError(f"message {i} ({message['role']}): {e}") from None
        reply = message["role"] == "assistant"
        ids += [np.array([tokenizer.special_id(f"<|{message['role']}|>")]), content, np.array([end])]
        learn += [np.zeros(1, bool), np.full(len(content) + 1, reply)]
    if add_generation_prompt:
        ids.append(np.array([tokenizer.special_id("<|assistant|>")]))
        learn.append(np.zeros(1, bool))
    if not ids:
        return ChatTokens(np.zeros(0, np.int64), np.zeros(0, bool))
    return ChatTokens(np.concatenate(ids).astype(np.int64), np.concatenate(learn))
