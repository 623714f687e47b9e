"""Conversation files: JSONL, one conversation a line, as Hugging Face chat datasets and OpenAI
fine-tuning files have them::

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}

Read line by line (a file need not fit in memory). A bad line (bytes that are not UTF-8, not
JSON, not an object with a ``messages`` list, a message with an unknown role or empty content,
no assistant turn) is reported as ``FILE:LINE: reason``: with ``strict`` the first one is a
``ConversationError``; otherwise it is skipped and counted, and ``ConversationFile.summary()``
says how many were skipped and shows the first few. Lines holding only whitespace are not
conversations and are passed over silently. Keys other than ``role`` and ``content`` (a
message's ``name``, a line's ``id``) are allowed and dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmcore.conversation.template import message_problem
from lmcore.data.corpus import DataError
from lmcore.tokenizer.base import LONE_SURROGATE

Conversation = dict[str, list[dict[str, str]]]
SHOWN_PROBLEMS = 5  # bad lines quoted in a summary; all are counted


class ConversationError(DataError):
    """A bad line of a conversation file in strict mode: ``FILE:LINE: reason``."""


def conversation_problem(obj: Any) -> str | None:
    """Why a parsed JSON line is not a conversation, or None."""
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        return 'expected an object {"messages": [...]}'
    messages = obj["messages"]
    for i, message in enumerate(messages):
        if (problem := message_problem(message)) is not None:
            return f"message {i}: {problem}"
        if LONE_SURROGATE.search(message["content"]):
            return f"message {i}: a lone surrogate escape (not valid Unicode) in its content"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn (nothing to learn)"
    return None


class ConversationFile:
    """The conversations of one JSONL file, read as they are iterated (each pass re-reads it)."""

    def __init__(self, path: str | os.PathLike[str], strict: bool = False) -> None:
        self.path = Path(path)
        self.strict = strict
        self.skipped = 0
        self.problems: list[str] = []  # the first SHOWN_PROBLEMS, as "FILE:LINE: reason"
        if not self.path.is_file():
            raise DataError(f"conversation file not found: {self.path}")

    def __iter__(self) -> Iterator[Conversation]:
        self.skipped, self.problems = 0, []
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                conversation, problem = _parse_line(raw)
                if problem is not None:
                    self._bad(number, problem)
                elif conversation is not None:
                    yield conversation

    def _bad(self, number: int, problem: str) -> None:
        where = f"{self.path}:{number}: {problem}"
        if self.strict:
            raise ConversationError(f"{where} (--strict refuses the file)")
        self.skipped += 1
        if len(self.problems) < SHOWN_PROBLEMS:
            self.problems.append(where)

    def summary(self) -> str | None:
        """After a pass: one line on the skipped lines (None if there were none)."""
        if not self.skipped:
            return None
        more = f"; and {self.skipped - len(self.problems)} more" if self.skipped > len(self.problems) else ""
        return f"skipped {self.skipped} bad line(s) of {self.path}: " + "; ".join(self.problems) + more


def _parse_line(raw: bytes) -> tuple[Conversation | None, str | None]:
    """(conversation, None), (None, problem), or (None, None) for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"bytes that are not UTF-8 at column {e.start + 1}"
    if not text.strip():
        return None, None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg} at column {e.colno})"
    except RecursionError:
        return None, "not JSON that can be read (nested too deeply)"
    if (problem := conversation_problem(obj)) is not None:
        return None, problem
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in obj["messages"]]}, None


def first_line_problem(path: str | os.PathLike[str]) -> tuple[int, str] | None:
    """The first non-blank line's number and problem if it is not a conversation (None if it is,
    or if there is none): a file failing this is not conversation JSONL at all."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            conversation, problem = _parse_line(raw)
            if problem is not None:
                return number, problem
            if conversation is not None:
                return None
    return None


def read_conversations(path: str | os.PathLike[str], strict: bool = False) -> list[Conversation]:
    """All conversations of a file at once (for small files and tests); see ``ConversationFile``."""
    return list(ConversationFile(path, strict))
