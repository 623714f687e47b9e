"""Special tokens, the chat template and a model's vocabulary grown for them."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lmcore
from lmcore.conversation.template import CHAT_SPECIALS, CHAT_TEMPLATE, END, add_chat_tokens, apply_chat_template
from lmcore.tokenizer import tokenizer_from_dict
from lmcore.tokenizer.bpe import BpeTokenizer
from lmcore.tokenizer.char import CharTokenizer
from lmcore.training.vocab_extend import extend_vocab

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET:\nAy me! <|user|> said I.\n" * 8
CHAR = CharTokenizer.from_text(TEXT)
BPE = BpeTokenizer.train([TEXT * 4], 300)
TOKENIZERS = {"char": CHAR, "bpe": BPE}
CONV = [{"role": "system", "content": "A night."}, {"role": "user", "content": "But soft!"},
        {"role": "assistant", "content": "Ay me!"}, {"role": "user", "content": "what light?"},
        {"role": "assistant", "content": "yonder window"}]


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_specials_follow_the_vocabulary_and_encode_never_makes_them(kind):
    plain = TOKENIZERS[kind]
    tok = add_chat_tokens(plain)
    assert tok.base_vocab_size == plain.vocab_size and tok.vocab_size == plain.vocab_size + 4
    assert [tok.special_id(t) for t in CHAT_SPECIALS] == list(range(plain.vocab_size, plain.vocab_size + 4))
    typed = "ROMEO: <|user|> <|end|>" if kind == "bpe" else "<|user|>"[:1] + "ROMEO"  # char: only its chars
    ids = tok.encode(typed)
    assert ids.max() < tok.base_vocab_size and np.array_equal(ids, plain.encode(typed))
    assert tok.decode(ids) == typed
    marker = tok.special_id("<|user|>")
    assert tok.decode([marker, *ids]) == "<|user|>" + typed
    assert tok.decode([marker, *ids, tok.special_id(END)], skip_special=True) == typed
    feed = tok.stream_decoder(skip_special=True)
    assert feed([marker]) + feed(list(ids)) == typed
    assert add_chat_tokens(tok) is tok
    with pytest.raises(KeyError, match="not a special token"):
        plain.special_id(END)


def test_a_user_typing_a_marker_gets_characters():
    tok = add_chat_tokens(BPE)
    ids, learn = apply_chat_template(tok, [{"role": "user", "content": "<|user|><|end|>"},
                                           {"role": "assistant", "content": "<|assistant|>"}])
    specials = [int(i) for i in ids if i >= tok.base_vocab_size]
    assert specials == [tok.special_id(t) for t in ("<|user|>", END, "<|assistant|>", END)]
    assert tok.decode(ids) == "<|user|><|user|><|end|><|end|><|assistant|><|assistant|><|end|>"


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_old_tokenizers_keep_their_dict_and_fingerprint(kind):
    """A tokenizer without specials is what it was before they existed: same dict keys, and for
    characters the fingerprint is still the sha256 of the vocabulary."""
    plain = TOKENIZERS[kind]
    d = plain.to_dict()
    assert "specials" not in d and "chat_template" not in d
    if kind == "char":
        assert d["fingerprint"] == hashlib.sha256(CHAR.chars.encode()).hexdigest()
    assert tokenizer_from_dict(json.loads(json.dumps(d))) == plain
    tok = add_chat_tokens(plain)
    assert tok.fingerprint() != plain.fingerprint()
    back = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert back == tok and back.specials == CHAT_SPECIALS and back.chat_template == CHAT_TEMPLATE
    assert back.fingerprint() == tok.fingerprint() and back.vocab_size == tok.vocab_size
    tampered = {**tok.to_dict(), "specials": list(CHAT_SPECIALS[::-1])}
    with pytest.raises(ValueError, match="fingerprint"):
        tokenizer_from_dict(tampered)
    with pytest.raises(ValueError, match="special tokens must be"):
        tokenizer_from_dict({**tok.to_dict(), "specials": ["<|a|>", "<|a|>"]})


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_template_layout_and_learn_mask(kind):
    tok = add_chat_tokens(TOKENIZERS[kind])
    ids, learn = apply_chat_template(tok, CONV)
    assert ids.dtype == np.int64 and learn.dtype == bool and len(ids) == len(learn)
    assert tok.decode(ids) == "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in CONV)
    # learned: exactly the assistant contents and the <|end|> closing each
    want = np.concatenate([np.full(len(tok.encode(m["content"])) + 2, m["role"] == "assistant") for m in CONV])
    starts = np.cumsum([0] + [len(tok.encode(m["content"])) + 2 for m in CONV])[:-1]
    want[starts] = False  # role markers
    assert np.array_equal(learn, want)
    assert tok.decode(ids[learn]) == "Ay me!<|end|>yonder window<|end|>"
    prompt, plearn = apply_chat_template(tok, CONV[:2], add_generation_prompt=True)
    assert int(prompt[-1]) == tok.special_id("<|assistant|>") and not plearn.any()


@pytest.mark.parametrize("messages, problem", [
    ([{"role": "bot", "content": "x"}], "unknown role 'bot'"),
    ([{"role": "user", "content": "  "}], "empty content"),
    ([{"role": "user", "content": 3}], "must be a string"),
    (["hello"], "must be an object"),
])
def test_template_refuses_bad_messages(messages, problem):
    with pytest.raises(ValueError, match=f"message 0: .*{problem}"):
        apply_chat_template(add_chat_tokens(BPE), messages)


def test_template_needs_the_chat_tokens_and_encodable_text():
    with pytest.raises(ValueError, match="add_chat_tokens"):
        apply_chat_template(BPE, CONV)
    with pytest.raises(ValueError, match=r"message 0 \(user\): character 'Z'"):
        apply_chat_template(add_chat_tokens(CHAR), [{"role": "user", "content": "Zounds"}])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]),
                          st.text(st.sampled_from(sorted(set(TEXT))), min_size=1)), max_size=6))
def test_template_round_trips_any_conversation(turns):
    turns = [(r, c) for r, c in turns if c.strip()]
    tok = add_chat_tokens(CHAR)
    ids, learn = apply_chat_template(tok, [{"role": r, "content": c} for r, c in turns])
    assert tok.decode(ids) == "".join(f"<|{r}|>{c}<|end|>" for r, c in turns)
    assert tok.decode(ids[learn]) == "".join(f"{c}<|end|>" for r, c in turns if r == "assistant")


def test_extending_a_model_keeps_its_ordinary_logits():
    """A trained model's weights, grown by four rows, in a model of the larger vocabulary: the
    logits of the old tokens are unchanged, and the new rows are the mean embedding."""
    tiny = dict(d_model=8, n_head=2, n_layer=1, block_size=6, dtype="float64")
    old = lmcore.Model(vocab_size=11, **tiny)
    rng = np.random.default_rng(0)
    for _ in range(3):
        old.train_step(rng.integers(0, 11, (2, 6)), rng.integers(0, 11, (2, 6)), 1e-2)
    params = {n: old.get_param(n) for n in old.param_names()}
    grown = extend_vocab(params, 11, 15)
    new = lmcore.Model(vocab_size=15, **tiny)
    for name, value in grown.items():
        new.set_param(name, value)
    wte = grown["transformer.wte.weight"]
    assert wte.shape == (15, 8) and np.array_equal(wte[:11], params["transformer.wte.weight"])
    np.testing.assert_allclose(wte[11:], np.tile(params["transformer.wte.weight"].mean(0), (4, 1)), rtol=1e-15)
    x = rng.integers(0, 11, (2, 6))
    np.testing.assert_allclose(new.forward(x)[0][..., :11], old.forward(x)[0], rtol=1e-12, atol=1e-14)
    assert new.forward(np.array([[13, 14, 1]]))[0].shape == (1, 3, 15)  # the new ids embed
    assert extend_vocab(params, 11, 11)["transformer.wte.weight"].shape == (11, 8)
    with pytest.raises(ValueError, match="only grow"):
        extend_vocab(params, 11, 10)
    with pytest.raises(ValueError, match="expected"):
        extend_vocab(params, 12, 15)


def test_an_old_checkpoint_loads_and_its_extension_round_trips(tmp_path):
    """A checkpoint written by a pretraining run (no special tokens) loads as before; grown by the
    chat tokens (tokenizer and weights) and saved, it loads back with its template."""
    from cli_helpers import train
    from lmcore.checkpoint.state import model_from_checkpoint, save_run

    out = tmp_path / "run"
    train(out, "--tiny", "--max-iters", "2", "--eval-iters", "1")
    path = out / "ckpt.safetensors"
    model, tok, cfg, meta = model_from_checkpoint(path, weights_only=True)
    assert tok.specials == () and "specials" not in meta["tokenizer"]
    chat = add_chat_tokens(tok)
    grown = extend_vocab({n: model.get_param(n) for n in model.param_names()}, tok.vocab_size, chat.vocab_size)
    new = lmcore.Model(**cfg.model_settings(chat.vocab_size))
    for name, value in grown.items():
        new.set_param(name, value)
    save_run(tmp_path / "chat.safetensors", new, {**meta, "tokenizer": chat.to_dict(), "vocab_size": chat.vocab_size})
    back, back_tok, _, _ = model_from_checkpoint(tmp_path / "chat.safetensors", weights_only=True)
    assert back_tok == chat and back_tok.chat_template == CHAT_TEMPLATE
    ids = apply_chat_template(back_tok, [{"role": "user", "content": "ROMEO"}], add_generation_prompt=True).ids
    assert back.forward(ids[None, :])[0].shape == (1, len(ids), chat.vocab_size)
