"""Conversation files (JSONL), the plays-dialogue set, and packing conversations into windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lmcore
from lmcore.conversation.dialogue import dialogue_from_text, offline_plays, plays_dialogue, scene_conversations
from lmcore.conversation.jsonl import ConversationError, ConversationFile, read_conversations
from lmcore.conversation.packing import pack, pack_windows
from lmcore.conversation.template import ChatTokens, add_chat_tokens, apply_chat_template
from lmcore.data.corpus import Corpus, DataError
from lmcore.tokenizer.char import CharTokenizer

IGNORE = lmcore.IGNORE_ID
GOOD = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello.", "weight": 1}], "id": 7}


def _write(tmp_path, lines: list[bytes | str]):
    path = tmp_path / "chat.jsonl"
    path.write_bytes(b"".join((x.encode() if isinstance(x, str) else x) + b"\n" for x in lines))
    return path


BAD_LINES = [
    ("{not json", "not JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    ('{"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}', "unknown role 'bot'"),
    ('{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]}', "empty content"),
    ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant turn"),
    ('{"messages": "hello"}', "expected an object"),
    ('[1, 2]', "expected an object"),
    ('{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "y"}]}', "surrogate"),
    ("[" * 100_000, "nested too deeply"),
]


def test_good_lines_are_read_and_extra_keys_dropped(tmp_path):
    path = _write(tmp_path, [json.dumps(GOOD), "", "   ", json.dumps(GOOD)])
    convs = read_conversations(path, strict=True)
    assert convs == [{"messages": [{"role": m["role"], "content": m["content"]} for m in GOOD["messages"]]}] * 2


@pytest.mark.parametrize("line, reason", BAD_LINES)
def test_a_bad_line_is_named_by_file_and_line(tmp_path, line, reason):
    path = _write(tmp_path, [json.dumps(GOOD), line, json.dumps(GOOD)])
    with pytest.raises(ConversationError, match=rf"chat\.jsonl:2: .*{reason}.*--strict"):
        read_conversations(path, strict=True)
    f = ConversationFile(path)
    assert len(list(f)) == 2 and f.skipped == 1
    assert f.summary() is not None and f"chat.jsonl:2: " in f.summary() and reason.split()[0] in f.summary()


def test_skipped_lines_are_counted_and_the_first_few_shown(tmp_path):
    path = _write(tmp_path, ["{bad"] * 8 + [json.dumps(GOOD)])
    f = ConversationFile(path)
    assert len(list(f)) == 1
    assert f.skipped == 8 and f.summary().startswith("skipped 8 bad line(s)") and "and 3 more" in f.summary()
    assert len(list(f)) == 1 and f.skipped == 8  # a second pass counts afresh
    assert ConversationFile(_write(tmp_path, [json.dumps(GOOD)])).summary() is None
    with pytest.raises(DataError, match="not found"):
        ConversationFile(tmp_path / "missing.jsonl")


def test_a_file_is_streamed(tmp_path):
    path = _write(tmp_path, [json.dumps(GOOD), "{bad"])
    it = iter(ConversationFile(path, strict=True))
    assert next(it)["messages"][0]["role"] == "system"  # read before the bad line is reached
    with pytest.raises(ConversationError, match=":2:"):
        next(it)


# --- plays-dialogue ---


def test_plays_dialogue_is_split_by_play_and_deterministic():
    plays = offline_plays()
    val = {p.title for p in plays if p.split == "val"}
    assert val == {"Othello", "Romeo and Juliet", "Timon of Athens"}
    assert len(plays) == 38
    train = list(plays_dialogue("train", plays))
    valid = list(plays_dialogue("val", plays))
    assert len(train) > 5000 and len(valid) > 500
    assert list(plays_dialogue("val")) == valid  # same files, same conversations
    for conv in train[:300] + valid[:300]:
        m = conv["messages"]
        assert m[0]["role"] == "system" and [x["role"] for x in m[1:]] == ["user", "assistant"] * ((len(m) - 1) // 2)
        assert 1 <= (len(m) - 1) // 2 <= 4
    assert all(any(t in c["messages"][0]["content"] for t in val) for c in valid)
    assert not any(any(t in c["messages"][0]["content"] for t in val) for c in train)
    with pytest.raises(ValueError, match="split"):
        next(plays_dialogue("test", plays))


def test_conversations_follow_alternating_speakers():
    speeches = [("A", "a1"), ("B", "b1"), ("A", "a2"), ("B", "b2"), ("A", "a3"), ("C", "c1"), ("C", "c2"),
                ("D", "d1"), ("C", "c3")]
    convs = [c["messages"] for c in scene_conversations("Play", speeches, max_exchanges=1)]
    assert [[m["content"] for m in c[1:]] for c in convs] == [["a1", "b1"], ["a2", "b2"], ["a3", "c1"], ["c2", "d1"]]
    assert convs[0][0]["content"] == "A scene from Play. You are B; A speaks to you."
    assert convs[2][0]["content"] == "A scene from Play. You are C; A speaks to you."
    both = [c["messages"] for c in scene_conversations("Play", speeches, max_exchanges=4)]
    assert [len(c) for c in both] == [5, 3, 3]


def test_a_text_without_plays_is_split_where_pretraining_splits_it():
    text = "".join(f"{'AB'[i % 2]}:\nline {i}\n\n" for i in range(100))
    plays = dialogue_from_text(Corpus.from_text("toy", text, "test"))
    train, val = list(plays_dialogue("train", plays)), list(plays_dialogue("val", plays))
    last_train = int(train[-1]["messages"][-1]["content"].split()[1])
    first_val = int(val[0]["messages"][1]["content"].split()[1])
    assert last_train < first_val and text.index(f"line {first_val}\n") >= int(len(text) * 0.9)
    assert "toy" in train[0]["messages"][0]["content"]


# --- packing ---

TOK = add_chat_tokens(CharTokenizer.from_text("abcdefgh ."))


def _conv(*pairs: tuple[str, str]) -> ChatTokens:
    msgs = [{"role": r, "content": c} for p in pairs for r, c in zip(("user", "assistant"), p)]
    return apply_chat_template(TOK, msgs)


def _check_windows(convs, x, y, block_size):
    assert x.shape == y.shape and x.shape[1] == block_size
    # every counted target is a reply token whose own conversation is what precedes it in the window
    learned = sorted(int(i) for c in convs for i in c.ids[c.learn])
    counted = y[y != IGNORE]
    assert sorted(counted.tolist()) == learned  # each reply token counted exactly once
    assert ((y == IGNORE) | (y >= 0)).all()


def test_packing_puts_whole_conversations_in_windows_and_masks_the_rest():
    convs = [_conv(("ab", "cd")), _conv(("e", "fgh"), ("a", "b")), _conv(("h", "a"))]
    x, y = pack(convs, block_size=16, pad_id=TOK.special_id("<|end|>"))
    _check_windows(convs, x, y, 16)
    # 8 + 14 + 6 tokens in windows of 17: in order, none fits after the one before
    n = [len(c.ids) for c in convs]
    assert n == [8, 14, 6] and len(x) == 3
    assert np.array_equal(x[0, :8], convs[0].ids) and (x[0, 8:] == TOK.special_id("<|end|>")).all()
    assert (y[0, 7:] == IGNORE).all()  # padding, and the start of no other conversation
    assert np.array_equal(x[2, :6], convs[2].ids)
    two = pack([convs[0], convs[2]], block_size=16, pad_id=0)[0]
    assert len(two) == 1 and np.array_equal(two[0, 8:14], convs[2].ids)  # 8 + 6 fit in one
    # the boundary: a conversation's first token is never a counted target
    for c in convs:
        assert not c.learn[0]
    one = pack(convs, 16, 0, one_per_window=True)[0]
    assert len(one) == 3 and np.array_equal(one[1, :14], convs[1].ids)


def test_packed_conversations_see_only_whole_conversations():
    convs = [_conv(("ab", "cd")), _conv(("e", "fg")), _conv(("h", "a"))]
    x, y = pack(convs, block_size=24, pad_id=0)
    assert len(x) == 1
    starts = np.cumsum([0] + [len(c.ids) for c in convs])
    for s in starts[1:-1]:
        assert y[0, s - 1] == IGNORE  # the target predicting the next conversation's first token


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.text("abcdefgh", min_size=1, max_size=9),
                                   st.text("abcdefgh .", min_size=1, max_size=9).filter(str.strip)),
                         min_size=1, max_size=4), max_size=8),
       st.integers(2, 20), st.booleans())
def test_packing_counts_every_reply_token_once(conversations, block_size, one_per_window):
    """Any conversations, any window (long conversations are cut into several windows): every
    assistant token and its end-of-turn is counted exactly once, nothing else is."""
    convs = [_conv(*c) for c in conversations]
    x, y = pack(convs, block_size, pad_id=1, one_per_window=one_per_window)
    if not convs:
        assert x.shape == (0, block_size)
        return
    _check_windows(convs, x, y, block_size)
    assert all((row != IGNORE).any() for row in y)  # no window without a counted target
    # and y is x shifted where both lie in the same window
    assert all(np.array_equal(np.where(yy != IGNORE, yy, 0)[:-1], np.where(yy[:-1] != IGNORE, xx[1:], 0))
               for xx, yy in zip(x, y))


def test_pack_windows_refuses_nonsense():
    with pytest.raises(ValueError, match="block_size"):
        list(pack_windows([], 0, 0))
    with pytest.raises(ValueError, match="learn flags"):
        list(pack_windows([ChatTokens(np.zeros(3, np.int64), np.zeros(2, bool))], 4, 0))


def test_a_model_learns_the_replies_of_packed_dialogue():
    """End to end: plays-dialogue, the template, packing, and masked train steps."""
    convs = [c["messages"] for c in plays_dialogue("train", offline_plays()[:1])][:24]
    tok = add_chat_tokens(CharTokenizer.from_text("".join(m["content"] for c in convs for m in c)))
    x, y = pack((apply_chat_template(tok, c) for c in convs), block_size=64, pad_id=tok.special_id("<|end|>"))
    assert len(x) >= 4 and (y == IGNORE).any() and (y != IGNORE).any()
    model = lmcore.Model(vocab_size=tok.vocab_size, d_model=32, n_head=2, n_layer=1, block_size=64, seed=1)
    first = model.train_step(x[:4], y[:4], 1e-2)[0]
    for _ in range(40):
        last = model.train_step(x[:4], y[:4], 1e-2)[0]
    assert last < first - 1.0
