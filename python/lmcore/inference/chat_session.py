"""A multi-turn conversation with a chat model, kept in the engine's key/value cache between turns.

The conversation is an optional system line and whole turns, each ``<|role|>content<|end|>``
(``conversation/template.py``). A user's message is fed as its turn plus ``<|assistant|>``, and the
reply is sampled one token at a time until ``<|end|>`` (or ``max_new_tokens``, a stop request, or
a window with nothing left to drop). The cache holds the conversation's tokens, so a new turn
feeds only its own tokens (and the ``<|end|>`` that closed the last reply, which is never fed on
its own); ``keep_cache=False`` re-feeds the whole conversation at every turn instead (for checking
and for measuring what the cache saves: the same tokens, the same logits but for rounding).

When a turn (with room for one reply token) or a growing reply would overflow the model's window,
the oldest whole exchanges (a user turn and the reply to it) are dropped, the system line is kept,
and the cache is rebuilt from the kept tokens in one pass. A message that cannot fit even then is
refused (``ValueError``) and changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from lmcore import Model
from lmcore.conversation.template import CHAT_TEMPLATE, END, apply_chat_template
from lmcore.inference.sampling import sample_next, validate_sampling
from lmcore.tokenizer import Tokenizer


class Reply(NamedTuple):
    text: str
    ids: np.ndarray  # the reply's tokens, without its <|end|>
    first_token_s: float  # from the message to the first reply token (feeding included)
    total_s: float
    fed: int  # tokens fed to the model before the first reply token
    why: str  # "end" (the model ended its turn), "max" (max_new_tokens), "stopped", "window"


class ChatSession:
    def __init__(self, model: Model, tokenizer: Tokenizer, system: str | None = None, *,
                 temperature: float = 0.8, top_k: int | None = None, top_p: float | None = None,
                 seed: int = 1337, max_new_tokens: int = 256, keep_cache: bool = True,
                 stop_at_end: bool = True) -> None:
        if tokenizer.chat_template != CHAT_TEMPLATE:
            raise ValueError("this model has no chat template (its tokenizer lacks the chat markers): "
                             "fine-tune it first with python -m lmcore.train --sft --init-from CKPT")
        validate_sampling(temperature, top_k, top_p)
        if max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
        self.model, self.tokenizer = model, tokenizer
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        self.rng = np.random.default_rng(seed)
        self.max_new_tokens, self.keep_cache = max_new_tokens, keep_cache
        self.stop_at_end = stop_at_end  # False: every reply runs to max_new_tokens (benchmarks)
        self.block = int(model.config["block_size"])
        self.end, self.assistant = tokenizer.special_id(END), tokenizer.special_id("<|assistant|>")
        self.system = np.zeros(0, np.int64)
        self.turns: list[tuple[str, np.ndarray]] = []  # (role, ids) of every kept turn, in order
        self.cached: int | None = None  # tokens of tokens() in the cache (None: the cache is stale)
        self.set_system(system)

    # --- the conversation ---

    def tokens(self) -> np.ndarray:
        """The conversation's tokens: the system line and every kept turn."""
        return np.concatenate([self.system, *(ids for _, ids in self.turns)])

    def set_system(self, text: str | None) -> None:
        """A new system line (None or blank: none); the turns so far are kept."""
        if text is None or not text.strip():
            system = np.zeros(0, np.int64)
        else:
            system = apply_chat_template(self.tokenizer, [{"role": "system", "content": text}]).ids
            if len(system) + 5 > self.block:  # (the shortest turn: <|user|>, a token, <|end|>, <|assistant|>, a reply token)
                raise ValueError(f"the system line is {len(system)} tokens; it leaves no room for a turn in the "
                                 f"model's window of {self.block}")
        self.system, self.cached = system, None

    def reset(self) -> None:
        """Forget the turns (the system line stays)."""
        self.turns, self.cached = [], None

    def _drop_oldest_exchange(self, keep: int = 0) -> bool:
        """Drop the oldest user turn and the reply to it, never one of the last ``keep`` turns (the
        exchange in progress); False if there is none to drop."""
        if len(self.turns) <= keep:
            return False
        self.turns.pop(0)
        if len(self.turns) > keep and self.turns[0][0] == "assistant":
            self.turns.pop(0)
        self.cached = None
        return True

    def _sync(self) -> tuple[np.ndarray, int]:
        """Bring the cache to tokens() and return the logits after its last token, and how many
        tokens were fed: only those it lacks, or (a stale cache) all."""
        conversation = self.tokens()
        if self.cached is None:
            self.model.kv_start(1)
            self.cached = 0
        todo = conversation[self.cached:]
        logits = self.model.kv_push(todo[None, :])
        self.cached = len(conversation)
        return logits, len(todo)

    # --- a turn ---

    def reply(self, message: str, on_text: Callable[[str], None] | None = None,
              stop: Callable[[], bool] | None = None) -> Reply:
        """Add the user's ``message``, sample the reply (``on_text`` gets its text as it comes;
        ``stop()`` True ends it early) and keep it as the assistant's turn."""
        start = time.perf_counter()
        user = apply_chat_template(self.tokenizer, [{"role": "user", "content": message}]).ids
        need = len(user) + 2  # the turn, <|assistant|> and room for one reply token
        if len(self.system) + need > self.block:
            raise ValueError(f"the message is {len(user)} tokens; with the system line ({len(self.system)}) and "
                             f"room for a reply it does not fit the model's window of {self.block}")
        while len(self.tokens()) + need > self.block:
            self._drop_oldest_exchange()
        self.turns += [("user", user), ("assistant", np.array([self.assistant], np.int64))]
        if not self.keep_cache:  # the whole conversation again; the reply itself is decoded with the cache
            self.cached = None
        logits, fed = self._sync()
        decode = self.tokenizer.stream_decoder(skip_special=True)
        ids: list[int] = []
        first_token_s, why = 0.0, "max"
        while True:
            nxt = int(sample_next(logits, self.rng, **self.sampling)[0])
            if not ids:
                first_token_s = time.perf_counter() - start
            if nxt == self.end and self.stop_at_end:
                why = "end"
                break
            ids.append(nxt)
            self.turns[-1] = ("assistant", np.append(self.turns[-1][1], nxt))
            if on_text is not None:
                on_text(decode([nxt]))
            if len(ids) >= self.max_new_tokens:
                break
            if stop is not None and stop():
                why = "stopped"
                break
            while len(self.tokens()) > self.block and self._drop_oldest_exchange(keep=2):
                pass  # the window is full: the oldest exchanges go, the cache is rebuilt
            if len(self.tokens()) > self.block:
                why = "window"
                break
            logits, _ = self._sync()
        if on_text is not None:
            on_text(decode([], final=True))
        # The reply's <|end|> (and its last token, sampled but not fed) enter the cache with the next turn.
        self.turns[-1] = ("assistant", np.append(self.turns[-1][1], self.end))
        reply_ids = np.array(ids, np.int64)
        return Reply(self.tokenizer.decode(reply_ids, skip_special=True), reply_ids, first_token_s,
                     time.perf_counter() - start, fed, why)
