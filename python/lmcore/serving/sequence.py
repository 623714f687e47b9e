"""One request's tokens through one model's key/value cache: the prompt fed in one pass, then one
token per ``step`` (sampled by ``sampling.sample_next``, decoded by the tokenizer's stream decoder,
cut at a stop string), until the model's end-of-turn token, ``max_tokens`` or the window.

The window is the model's context: a prompt of P tokens leaves room for ``block - P + 1`` new ones
(the last one is sampled, never fed), and a longer ``max_tokens`` ends there with ``length``.
"""

from __future__ import annotations

import numpy as np

from lmcore import Model
from lmcore.inference.sampling import sample_next
from lmcore.serving.schemas import Generation
from lmcore.serving.stops import StopMatcher
from lmcore.tokenizer import Tokenizer


class Sequence:
    def __init__(self, gen: Generation, tokenizer: Tokenizer, window: int, end_id: int | None) -> None:
        self.gen, self.end_id = gen, end_id
        self.rng = np.random.default_rng(gen.seed)  # no seed: fresh entropy
        self.decode = tokenizer.stream_decoder(skip_special=True)
        self.stops = StopMatcher(gen.stop)
        room = window - len(gen.prompt) + 1
        self.limit = room if gen.max_tokens is None else min(gen.max_tokens, room)
        self.count = 0  # tokens sampled
        self.logits: np.ndarray | None = None
        self.finish: str | None = None  # "stop" or "length" once done

    def step(self, model: Model) -> str:
        """Sample one token; the text that may be sent now (empty while held back)."""
        if self.logits is None:
            model.kv_start(1)
            self.logits = model.kv_push(self.gen.prompt[None, :])
        g = self.gen
        nxt = int(sample_next(self.logits, self.rng, g.temperature, g.top_k, g.top_p)[0])
        self.count += 1
        ended = nxt == self.end_id
        last = ended or self.count >= self.limit
        piece = "" if ended else self.decode([nxt])
        if last:
            piece += self.decode([], final=True)
        text, hit = self.stops.feed(piece)
        if hit or last:
            self.finish = "stop" if hit or ended else "length"
            return text if hit else text + self.stops.flush()
        self.logits = model.kv_push(np.array([nxt], np.int64))
        return text
