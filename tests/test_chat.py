"""``python -m lmcore.chat`` and its session: replies end at <|end|>, the conversation's cache is
kept between turns (the same tokens as re-feeding it all), a full window drops the oldest whole
exchanges but keeps the system line, Ctrl-C stops a reply and not the session, and the command
works through pipes and in a pseudo-terminal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_sft import SFT, write_chats

from cli_helpers import ENV, run_main, train
from lmcore.chat import ctrl_c_stops
from lmcore.chat import main as chat_main
from lmcore.checkpoint.state import model_from_checkpoint
from lmcore.conversation.template import apply_chat_template
from lmcore.inference.chat_session import ChatSession

SYSTEM = "You echo."


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny chat model (window 96: three exchanges and the system line), fine-tuned from scratch
    on the echo conversations until it answers them and ends its turns."""
    out = tmp_path_factory.mktemp("chat")
    chats = write_chats(out / "chats.jsonl", n=120)
    assert run_main([*SFT, "--data", str(chats), "--max-iters", "300", "--eval-interval", "300", "--lr", "1e-2", "--block-size", "96",
                     "--ckpt-interval", "300", "--sample-tokens", "0", "--threads", "1", "--out-dir", str(out)]) == 0
    return out


def session(chat_dir: Path, **kwargs) -> ChatSession:
    model, tok, _, _ = model_from_checkpoint(chat_dir / "ckpt.safetensors", weights_only=True)
    return ChatSession(model, tok, kwargs.pop("system", SYSTEM), **{"seed": 7, "max_new_tokens": 40, **kwargs})


MESSAGES = ["say king", "and rose?", "say love", "say ghost", "and heart?", "say crown", "and blood?"]


def test_the_model_answers_and_ends_its_turn(chat_dir):
    s = session(chat_dir, temperature=0)
    reply = s.reply("say king")
    assert reply.why == "end" and reply.text == "king king."
    assert s.turns[-1][1][-1] == s.end and s.turns[-2][0] == "user"


def test_kept_cache_and_refed_conversation_give_the_same_replies(chat_dir):
    """With a fixed seed, keeping the cache gives the tokens re-feeding gives, turn after turn
    (the window overflows on the way), while feeding only each new turn."""
    kept, refed = session(chat_dir), session(chat_dir, keep_cache=False)
    only_new = 0
    for i, message in enumerate(MESSAGES):
        lag = len(kept.tokens()) - kept.model.kv_len  # the last reply's tail, not fed yet
        turns = len(kept.turns)
        a, b = kept.reply(message), refed.reply(message)
        assert np.array_equal(a.ids, b.ids), (i, a.text, b.text)
        assert np.array_equal(kept.tokens(), refed.tokens())
        user = len(apply_chat_template(kept.tokenizer, [{"role": "user", "content": message}]).ids)
        if i > 0 and len(kept.turns) == turns + 2:  # nothing dropped: only the new tokens were fed
            assert lag in (1, 2) and a.fed == lag + user + 1 and b.fed > a.fed + len(kept.system)
            only_new += 1
    assert only_new >= 2
    # The kept cache is the conversation: its logits equal a fresh forward of all of it.
    lag = len(kept.tokens()) - kept.model.kv_len
    logits, fed = kept._sync()
    assert fed == lag
    full = kept.model.forward(kept.tokens()[None, :])[0][0, -1]
    np.testing.assert_allclose(logits[0], full, rtol=1e-4, atol=1e-4)


def test_a_full_window_drops_the_oldest_exchanges_and_keeps_the_system_line(chat_dir):
    s = session(chat_dir)
    system = s.system.copy()
    assert len(system) > 2
    dropped = False
    for message in MESSAGES:
        before = len(s.turns)
        s.reply(message)
        dropped |= len(s.turns) <= before
        assert np.array_equal(s.tokens()[:len(system)], system)
        assert s.turns[0][0] == "user" and len(s.tokens()) <= s.block + 2
        assert s.model.kv_len == s.cached
    assert dropped  # (a window of 96 holds three exchanges)
    s.set_system(None)
    s.reply("say rose")
    assert s.tokens()[0] == s.tokenizer.special_id("<|user|>") or s.tokens()[0] == s.tokenizer.special_id("<|assistant|>")
    with pytest.raises(ValueError, match="does not fit the model's window"):
        s.reply("say " + "king " * 25)
    s.reset()
    assert s.turns == []
    with pytest.raises(ValueError, match="leaves no room for a turn"):
        s.set_system("You echo. " * 10)
    s.set_system(SYSTEM)
    s.reply("say king")
    assert np.array_equal(s.tokens()[:len(system)], system) and s.model.kv_len == s.cached


def test_ctrl_c_stops_the_reply_and_keeps_the_session(chat_dir):
    s = session(chat_dir, temperature=2.0, max_new_tokens=40)
    with ctrl_c_stops() as flag:
        reply = s.reply("say king", on_text=lambda text: os.kill(os.getpid(), signal.SIGINT),
                        stop=lambda: flag["stop"])
    assert reply.why == "stopped" and len(reply.ids) == 1
    assert s.turns[-1][1][-1] == s.end  # the stopped reply is closed as a turn
    again = s.reply("say rose")
    assert again.why in ("end", "max", "window") and s.model.kv_len == s.cached


def chat_cli(chat_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lmcore.chat", "--out-dir", str(chat_dir), "--threads", "1", *args]


def test_pipes_one_line_one_reply_then_a_blank_line(chat_dir):
    lines = ["say king", "and rose?", "/reset", "say love", "/system You say.", "say ghost"]
    out = subprocess.run(chat_cli(chat_dir, "--system", SYSTEM, "--temperature", "0", "--seed", "7",
                                  "--max-new-tokens", "40"),
                         input="\n".join(lines) + "\n", env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("\n\n")
    replies = out.stdout[:-2].split("\n\n")
    s = session(chat_dir, temperature=0)
    expected = []
    for line in lines:
        if line == "/reset":
            s.reset()
        elif line.startswith("/system"):
            s.set_system(line.removeprefix("/system "))
        else:
            expected.append(s.reply(line).text)
    assert replies == expected and replies[0] == "king king."


def test_pipes_a_bad_message_gets_an_error_and_an_empty_reply(chat_dir):
    out = subprocess.run(chat_cli(chat_dir, "--temperature", "0"), input="say \u00e9\nsay king\n", env=ENV,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout.split("\n\n")[:2] == ["", "king king."]
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1


def test_a_checkpoint_without_chat_markers_is_refused(tmp_path, capsys):
    text = write_chats(tmp_path / "chats.jsonl")  # (read as plain text: a model without the markers)
    train(tmp_path / "plain", "--data", str(text), "--max-iters", "2")
    assert chat_main(["--out-dir", str(tmp_path / "plain")]) == 2
    assert "no chat template" in capsys.readouterr().err


def test_a_terminal_session(chat_dir):
    """Three turns in a pseudo-terminal, Ctrl-C (during or right after a reply) keeps the session,
    /system and /reset answer, Ctrl-D leaves."""
    pexpect = pytest.importorskip("pexpect")
    greedy = session(chat_dir, temperature=0, max_new_tokens=256)
    answers = [greedy.reply(m).text for m in ("say king", "and rose?", "say love")]
    after_reset = session(chat_dir, temperature=0, system="You say.").reply("say crown").text
    cmd = chat_cli(chat_dir, "--temperature", "0", "--system", SYSTEM)
    child = pexpect.spawn(cmd[0], cmd[1:], env={**ENV, "TERM": "dumb"}, encoding="utf-8", timeout=30)
    try:
        child.expect_exact("Ctrl-D leaves")
        for message, answer in zip(("say king", "and rose?", "say love"), answers):
            child.expect_exact("> ")
            child.sendline(message)
            child.expect_exact(message + "\r\n" + answer + "\r\n")
        child.expect_exact("> ")
        child.sendline("say ghost")
        child.expect_exact("say ghost\r\n")  # (read: the reply is being written, or just was)
        child.sendintr()
        child.expect_exact("> ")
        child.sendline("/system You say.")
        child.expect_exact("(system line: You say.)")
        child.sendline("/reset")
        child.expect_exact("(a new conversation)")
        child.sendline("say crown")
        child.expect_exact("say crown\r\n" + after_reset + "\r\n")
        child.expect_exact("> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
