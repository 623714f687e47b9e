"""Chat fine-tuning through ``python -m lmcore.train --sft``: conversations from a JSONL file or
plays-dialogue, packed windows drawn by the run's sampler, the loss and the validation loss on the
replies only (token-weighted), the chat markers added to a pretrained checkpoint, bit-exact
``--resume``, and one-line errors for data that is not conversations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import lmcore
from cli_helpers import (
    CORPUS_FILE,
    assert_one_line_error,
    assert_same_checkpoint,
    assert_same_weights,
    metrics,
    requires_corpus,
    resume,
    run_main,
    train,
)
from lmcore.checkpoint.state import load_run, model_from_checkpoint
from lmcore.conversation.finetuning import chat_windows, load_chats
from lmcore.conversation.packing import pack
from lmcore.conversation.template import CHAT_SPECIALS, add_chat_tokens, apply_chat_template
from lmcore.tokenizer.char import CharTokenizer
from lmcore.training.evaluation import masked_loss
from lmcore.training.metrics import read_metrics

WORDS = ["king", "queen", "lord", "sword", "crown", "night", "love", "grave", "ghost", "blood", "heart", "rose"]
SFT = ["--tiny", "--sft", "--eval-interval", "10", "--eval-iters", "2", "--ckpt-interval", "10",
       "--log-interval", "5", "--warmup-iters", "5"]


def write_chats(path: Path, n: int = 60) -> Path:
    """Conversations in Shakespeare's characters: the reply repeats the word asked for."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        w, v = rng.choice(WORDS, 2)
        messages = [{"role": "system", "content": "You echo."}] if i % 3 == 0 else []
        messages += [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": f"{w} {w}."}]
        if i % 2:
            messages += [{"role": "user", "content": f"and {v}?"}, {"role": "assistant", "content": f"{v}, {v}!"}]
        lines.append(json.dumps({"messages": messages, "id": i}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny character model pretrained on tinyshakespeare for a few steps (no chat markers)."""
    out = tmp_path_factory.mktemp("pretrained")
    train(out, "--max-iters", "10", "--eval-interval", "10", recipe=True)
    return out / "ckpt.safetensors"


@requires_corpus
def test_sft_from_a_pretrained_checkpoint_adds_the_markers_and_resumes_bit_for_bit(tmp_path, pretrained):
    chats = write_chats(tmp_path / "chats.jsonl")
    base, base_tok, _, _ = model_from_checkpoint(pretrained, weights_only=True)
    plan = [*SFT, "--init-from", str(pretrained), "--data", str(chats), "--lr-decay-iters", "30"]
    train(tmp_path / "whole", *plan, "--max-iters", "30", recipe=False)
    train(tmp_path / "split", *plan, "--max-iters", "20", recipe=False)
    resume(tmp_path / "split", "--max-iters", "30")
    assert_same_weights(tmp_path / "whole", tmp_path / "split")
    assert_same_checkpoint(tmp_path / "whole", tmp_path / "split")
    assert metrics(tmp_path / "split") == metrics(tmp_path / "whole")

    model, tok, cfg, meta = model_from_checkpoint(tmp_path / "whole" / "ckpt.safetensors")
    assert cfg.sft and tok.specials == CHAT_SPECIALS and tok.vocab_size == base_tok.vocab_size + 4
    assert meta["dataset"]["path"] == str(chats.resolve()) and meta["sampler"]["data_len"] > 1
    # The ordinary embedding rows started from the pretrained ones (they have moved, but not far).
    moved = model.get_param("transformer.wte.weight")[:base_tok.vocab_size] - base.get_param("transformer.wte.weight")
    assert 0 < np.abs(moved).max() < 0.5
    # The logged validation loss is the token-weighted loss on the replies of the validation split.
    chats_data = load_chats(None, chats)
    windows = chat_windows(chats_data, tok, cfg.block_size)
    last = read_metrics(tmp_path / "whole" / "metrics.jsonl")[-1]
    assert last["step"] == 30
    assert last["val_loss"] == masked_loss(model, windows.val_x, windows.val_y, cfg.batch_size)
    first = read_metrics(tmp_path / "whole" / "metrics.jsonl")[0]
    assert last["val_loss"] < first["val_loss"] - 0.3  # it learned something of the replies


def test_masked_evaluation_is_the_token_weighted_mean():
    """The validation loss is the sum of the per-token losses over every counted target of the
    split divided by their number: windows with few reply tokens do not weigh as much as full ones."""
    tok = add_chat_tokens(CharTokenizer.from_text("abcdefgh ."))
    rng = np.random.default_rng(3)
    convs = []
    for i in range(9):
        reply = "".join(rng.choice(list("abcdefgh"), 1 + 7 * (i % 3)))  # replies of 1, 8 and 15 letters
        convs.append(apply_chat_template(tok, [{"role": "user", "content": "ab"}, {"role": "assistant", "content": reply}]))
    x, y = pack(convs, block_size=12, pad_id=0, one_per_window=True)
    model = lmcore.Model(vocab_size=tok.vocab_size, d_model=16, n_head=2, n_layer=1, block_size=12, seed=5,
                         dtype="float64")
    counted = y != lmcore.IGNORE_ID
    assert len(set(counted.sum(1))) > 2  # windows of different weights
    logits = model.forward(x, y)[0]
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, np.where(counted, y, 0)[..., None], -1)[..., 0]
    by_hand = nll[counted].sum() / counted.sum()
    for batch in (1, 2, 4, 100):
        assert masked_loss(model, x, y, batch) == pytest.approx(by_hand, rel=1e-12)
    mean_of_means = np.mean([nll[i][counted[i]].mean() for i in range(len(x))])
    assert abs(mean_of_means - by_hand) > 1e-3  # the other average would differ


def test_fresh_sft_on_plays_dialogue(tmp_path):
    """--dataset plays-dialogue from scratch: a char tokenizer of the conversations plus the markers;
    every logged loss is finite and the split is the plays' own."""
    out = tmp_path / "chat"
    assert run_main([*SFT, "--dataset", "plays-dialogue", "--max-iters", "5", "--eval-interval", "5",
                     "--sample-tokens", "20", "--threads", "1", "--out-dir", str(out)]) == 0
    _, meta = load_run(out / "ckpt.safetensors")
    assert meta["dataset"]["dataset"] == "plays-dialogue" and meta["config"]["sft"]
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 5]
    assert all(np.isfinite(r["val_loss"]) and r["val_bpc"] > 0 for r in rows if "val_loss" in r)


@requires_corpus
@pytest.mark.parametrize("args, message", [
    (["--sft"], "--sft trains on conversations"),
    (["--sft", "--dataset", "tinyshakespeare"], "--sft trains on conversations.*plain text"),
    (["--sft", "--data", str(CORPUS_FILE)], "is not conversation JSONL.*line 1: not JSON"),
    (["--dataset", "plays-dialogue"], "is conversations: train on it with --sft"),
])
def test_data_that_is_not_conversations_is_refused_in_one_line(tmp_path, capsys, args, message):
    code = run_main(["--tiny", "--sample-tokens", "0", "--out-dir", str(tmp_path / "out"), *args])
    assert_one_line_error(code, capsys.readouterr().err, message)
    assert not (tmp_path / "out").exists()


def test_bad_conversation_lines_are_skipped_or_refused_with_strict(tmp_path, capsys):
    chats = write_chats(tmp_path / "chats.jsonl")
    with open(chats, "a") as f:
        f.write('{"messages": [{"role": "user", "content": "no reply"}]}\n')
    argv = [*SFT, "--data", str(chats), "--max-iters", "2", "--sample-tokens", "0", "--threads", "1"]
    assert run_main([*argv, "--out-dir", str(tmp_path / "a")]) == 0
    assert "skipped 1 bad line(s)" in capsys.readouterr().err
    code = run_main([*argv, "--strict", "--out-dir", str(tmp_path / "b")])
    assert_one_line_error(code, capsys.readouterr().err, r"chats.jsonl:61: no assistant turn.*--strict")
