"""The serving parts in-process: stop strings across any split of the streamed text (hypothesis),
and the request checks that front-ends rely on (OpenAI's neutral values accepted, the rest refused
by name)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcore.conversation.template import add_chat_tokens
from lmcore.serving.errors import ApiError
from lmcore.serving.schemas import parse_request
from lmcore.serving.stops import StopMatcher
from lmcore.tokenizer import CharTokenizer

TEXT = st.text(alphabet="abc", max_size=30)


@settings(max_examples=400, deadline=None)
@given(TEXT, st.lists(st.text(alphabet="abc", min_size=1, max_size=4), max_size=4), st.lists(st.integers(0, 30), max_size=8))
def test_stop_strings_cut_the_text_at_the_first_one_however_it_is_split(text, stops, cuts):
    cuts = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    matcher, sent, hit = StopMatcher(stops), "", False
    for a, b in zip(cuts, cuts[1:]):
        piece, hit = matcher.feed(text[a:b])
        sent += piece
        if hit:
            break
    if not hit:
        sent += matcher.flush()
    # Generation stops at the first piece after which the text holds a stop string, just before
    # the earliest one it holds then (a stop that would have ended later was never generated).
    first = -1
    for b in cuts[1:]:
        if found := [text[:b].find(s) for s in stops if s in text[:b]]:
            first = min(found)
            break
    assert hit == (first >= 0)
    assert sent == (text[:first] if first >= 0 else text)


TOKENIZER = add_chat_tokens(CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz ?.,!"))
CHAT = {"messages": [{"role": "user", "content": "say king"}]}


def parse(doc, kind="chat"):
    return parse_request(doc, kind, TOKENIZER, "m", 64)


def test_neutral_values_of_unimplemented_fields_are_accepted():
    gen = parse({**CHAT, "model": "m", "frequency_penalty": 0, "presence_penalty": 0.0, "logprobs": False,
                 "user": "u", "n": 1, "response_format": {"type": "text"}, "tool_choice": "none", "stream": True,
                 "stream_options": {"include_usage": True}, "max_completion_tokens": 5, "seed": -1, "top_k": 0})
    assert gen.stream and gen.include_usage and gen.max_tokens == 5 and gen.seed == 2**64 - 1 and gen.top_k is None
    assert gen.prompt[-1] == TOKENIZER.special_id("<|assistant|>")


def test_text_parts_and_the_developer_role_are_read():
    doc = {"messages": [{"role": "developer", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
                        {"role": "user", "content": "hi"}]}
    ids = parse(doc).prompt
    assert TOKENIZER.decode(ids) == "<|system|>be brief<|end|><|user|>hi<|end|><|assistant|>"


def test_completion_prompts_as_text_or_token_ids():
    assert np.array_equal(parse({"prompt": "ab"}, "completion").prompt, [0 + TOKENIZER.encode("a")[0], TOKENIZER.encode("b")[0]])
    assert np.array_equal(parse({"prompt": [[3, 4]]}, "completion").prompt, [3, 4])
    assert np.array_equal(parse({"prompt": ["ab"]}, "completion").prompt, TOKENIZER.encode("ab"))


@pytest.mark.parametrize("doc, param", [
    ({**CHAT, "logit_bias": {"1": 5}}, "logit_bias"),
    ({**CHAT, "tools": [{"type": "function"}]}, "tools"),
    ({**CHAT, "max_tokens": 2.5}, "max_tokens"),
    ({**CHAT, "temperature": True}, "temperature"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": "   "}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": "x" * 70}]}, "messages"),
])
def test_refusals_name_the_field(doc, param):
    with pytest.raises(ApiError) as e:
        parse(doc)
    assert e.value.status == 400 and e.value.param == param


class FailingModel:
    """A model whose cache breaks after ``good`` pushes: the engine's fault, in the middle of a reply."""

    config = {"block_size": 64}

    def __init__(self, good: int) -> None:
        self.good = good

    def kv_start(self, rows: int) -> None:
        pass

    def kv_push(self, tokens: np.ndarray) -> np.ndarray:
        if self.good == 0:
            raise MemoryError("out of memory (a test's)")
        self.good -= 1
        logits = np.full((1, TOKENIZER.vocab_size), -30.0, np.float32)
        logits[0, TOKENIZER.encode("a")[0]] = 0.0
        return logits


def test_an_engine_fault_mid_reply_is_an_error_event_and_the_worker_goes_on():
    import asyncio

    from lmcore.serving.worker import Job, Worker

    async def run() -> list[tuple]:
        worker = Worker([FailingModel(good=4)], TOKENIZER, 64, None, queue_size=2, log=False)
        worker.start()
        loop = asyncio.get_running_loop()
        jobs = [Job(parse({"prompt": "ab", "temperature": 0}, "completion"), loop) for _ in range(2)]
        for job in jobs:
            worker.submit(job)
        events = []
        for job in jobs:
            while True:
                event = await asyncio.wait_for(job.events.get(), 30)
                events.append(event)
                if event[0] != "text":
                    break
        worker.close()
        assert not worker.thread.is_alive()
        return events

    events = asyncio.run(run())
    # The first reply: the prompt's push and 3 tokens' work, the 4th token's fails: 3 tokens of text, the error.
    assert [e[1] for e in events[:3]] == ["a"] * 3
    assert events[3][0] == "error" and events[3][1].status == 500 and "out of memory" in events[3][1].message
    assert len(events) == 5 and events[4][0] == "error"  # the second one finds the model still broken, and is told so too
