"""``python -m lmcore.train``'s input: bad input gets a one-line error that leaves the output
directory untouched, ``--init-from`` starts a new run from a checkpoint's weights, the block option
flags train and resume bit for bit, and a byte-level BPE run on a directory of text files keeps its
tokenizer and reports bits per character (split from test_train.py, which has the resumed runs).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import safetensors.numpy

import lmcore.train
import lmcore.training.data
import lmcore.training.loop
import lmcore.training.run
import lmcore.training.saving
from cli_helpers import (
    CORPUS_FILE, ENV, QUIET, RECIPE, assert_one_line_error, assert_same_checkpoint, assert_same_tensors,
    assert_same_weights, cli, flip, header_end, losses_after, metrics, requires_corpus, resume, run_main,
    snapshot, train,
)
from lmcore.checkpoint.state import load_run
from lmcore.data.datasets import resolve_corpus
from lmcore.data.tokens import tokenize
from lmcore.tokenizer import tokenizer_from_dict
from lmcore.config import RunConfig

pytestmark = requires_corpus


# --- 6. bad input ---


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncate(run: Path) -> None:
    ckpt = run / "ckpt.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])


def _flip_header(run: Path) -> None:
    flip(run / "ckpt.safetensors", 8, 12)  # the start of the JSON header


def _flip_tensor_bits(run: Path) -> None:
    """The lowest mantissa bit of one weight: a plausible value that nothing else would notice."""
    ckpt = run / "ckpt.safetensors"
    header = json.loads(ckpt.read_bytes()[8 : header_end(ckpt)])
    name = sorted(k for k in header if k.startswith("param/"))[0]
    start, end = header[name]["data_offsets"]
    flip(ckpt, header_end(ckpt) + (start + end) // 2 // 4 * 4, 1, mask=0x01)


def _flip_metadata_digit(run: Path) -> None:
    ckpt = run / "ckpt.safetensors"
    raw = ckpt.read_bytes()
    at = raw.index(b'\\"iter_num\\": 20')  # metadata is a JSON string inside the JSON header
    ckpt.write_bytes(raw[: at + 15] + b"1" + raw[at + 16 :])  # still valid JSON, iter_num 21


# (id, where: "fresh" (a new run into an existing directory without a checkpoint) or "run" (the
# directory of a finished run), arguments (DATA: a directory of test files, RUN: the finished run),
# what to break first, what the error must say)
BAD_INPUT = [
    ("missing-data", "fresh", ["--data", "DATA/nope.txt"], None, r"not found.*nope\.txt"),
    ("empty-data", "fresh", ["--data", "DATA/empty.txt"], None, r"empty.*empty\.txt"),
    ("non-utf8-data", "fresh", ["--data", "DATA/latin1.txt"], None, r"not UTF-8.*latin1\.txt"),
    ("data-shorter-than-a-block", "fresh", ["--data", "DATA/short.txt"], None, r"fewer than one block of 32"),
    ("binary-data", "fresh", ["--data", "DATA/binary.txt"], None, r"looks binary.*binary\.txt"),
    ("empty-data-directory", "fresh", ["--data", "DATA/emptydir"], None, r"no \.txt file.*emptydir"),
    ("vocab-size-below-256", "fresh", ["--tokenizer", "bpe", "--vocab-size", "255"], None,
     r"--vocab-size: .*256 \(one token per byte\) to 65,536 tokens, got 255"),
    ("vocab-size-absurd", "fresh", ["--tokenizer", "bpe", "--vocab-size", "10000000"], None,
     r"--vocab-size: .*got 10,000,000"),
    ("vocab-size-without-bpe", "fresh", ["--vocab-size", "512"], None, r"--vocab-size needs --tokenizer bpe"),
    ("bpe-data-shorter-than-a-block", "fresh", ["--data", "DATA/short.txt", "--tokenizer", "bpe", "--vocab-size",
     "256"], None, r"training split has 18 tokens, fewer than one block of 32"),
    ("bpe-vocab-too-big-for-the-data", "fresh", ["--data", "DATA/short.txt", "--tokenizer", "bpe", "--vocab-size",
     "1000"], None, r"too few distinct byte pairs for 1,000 BPE tokens"),
    ("resume-without-checkpoint", "fresh", ["--resume"], None, r"--resume: no checkpoint"),
    ("truncated-checkpoint", "run", ["--resume"], _truncate, r"truncated|corrupt"),
    ("corrupt-checkpoint-header", "run", ["--resume"], _flip_header, r"corrupt"),
    ("corrupt-checkpoint-tensor", "run", ["--resume"], _flip_tensor_bits, r"corrupt"),
    ("corrupt-checkpoint-metadata", "run", ["--resume"], _flip_metadata_digit, r"corrupt"),
    ("negative-batch-size", "fresh", ["--batch-size", "-1"], None, r"--batch-size must be at least 1, got -1"),
    ("negative-d-model", "fresh", ["--d-model", "-32"], None, r"--d-model must be at least 1"),
    ("heads-do-not-divide", "fresh", ["--n-head", "3", "--d-model", "32"], None,
     r"--n-head 3 does not divide --d-model 32"),
    ("zero-threads", "fresh", ["--threads", "0"], None, r"--threads must be at least 1"),
    ("batch-size-beyond-64-bits", "fresh", ["--batch-size", str(2**64)], None,
     r"--batch-size 18446744073709551616 with --block-size 32: "),
    ("max-iters-zero-alone", "fresh", ["--max-iters", "0"], None, r"--max-iters 0 plans no steps: pass --lr-decay-iters"),
    ("batch-larger-than-memory", "fresh", ["--data", "DATA/big.txt", "--block-size", "300000"], None,
     # (attention's tiles alone need 360 GB: refused on any machine the tests run on)
     r"--batch-size 8 with --block-size 300000: out of memory: .* needs at least [\d.]+ GiB"),
    ("negative-sample-tokens", "fresh", ["--sample-tokens", "-1"], None, r"--sample-tokens must not be negative"),
    ("fresh-run-over-checkpoint", "run", [], None, r"already holds a checkpoint.*--resume"),
    ("resume-changes-lr", "run", ["--resume", "--lr", "0.5"], None, r"--lr cannot change on --resume"),
    ("resume-changes-batch", "run", ["--resume", "--batch-size", "4"], None, r"--batch-size cannot change"),
    ("resume-changes-dropout", "run", ["--resume", "--dropout", "0.1"], None, r"--dropout cannot change"),
    ("resume-other-tokenizer", "run", ["--resume", "--tokenizer", "bpe"], None,
     r"trained with the char tokenizer, not --tokenizer bpe"),
    ("resume-below-checkpoint-step", "run", ["--resume", "--max-iters", "10"], None,
     r"--max-iters 10 is below the checkpoint's step 20"),
    ("resume-other-data", "run", ["--resume", "--data", "DATA/other.txt"], None, r"data differs.*--init-from"),
    ("resume-missing-data", "run", ["--resume", "--data", "DATA/nope.txt"], None, r"not found.*nope\.txt"),
    ("resume-and-init-from", "run", ["--resume", "--init-from", "RUN/ckpt.safetensors"], None,
     r"--resume .*--init-from .*one of them"),
    ("schedule-unknown", "fresh", ["--schedule", "linear"], None, r"--schedule must be cosine or wsd, got 'linear'"),
    ("decay-frac-zero", "fresh", ["--schedule", "wsd", "--decay-frac", "0"], None, r"--decay-frac must be in \(0, 1\]"),
    ("decay-frac-above-one", "fresh", ["--decay-frac", "1.5"], None, r"--decay-frac must be in \(0, 1\], got 1.5"),
    ("final-lr-ratio-negative", "fresh", ["--final-lr-ratio", "-0.1"], None, r"--final-lr-ratio must be in \[0, 1\]"),
    ("final-lr-ratio-nan", "fresh", ["--final-lr-ratio", "nan"], None,
     r"--final-lr-ratio must be in \[0, 1\], got nan"),
    ("target-loss-zero", "fresh", ["--target-loss", "0"], None, r"--target-loss must be a finite number > 0"),
    ("target-loss-inf", "run", ["--resume", "--target-loss", "inf"], None, r"--target-loss must be a finite number"),
    ("resume-changes-schedule", "run", ["--resume", "--schedule", "wsd"], None, r"--schedule cannot change on --resume"),
    ("resume-changes-eval-full", "run", ["--resume", "--eval-full"], None,
     r"--eval-full cannot change on --resume"),
    ("init-from-missing", "fresh", ["--init-from", "DATA/nope.safetensors"], None, r"no checkpoint.*nope\.safetensors"),
    ("init-from-corrupt", "fresh", ["--init-from", "RUN/ckpt.safetensors"], _flip_tensor_bits, r"corrupt"),
    ("init-from-other-tokenizer", "fresh", ["--init-from", "RUN/ckpt.safetensors", "--tokenizer", "bpe",
     "--vocab-size", "512"], None, r"--init-from: the checkpoint .* trained with the char tokenizer"),
    ("init-from-other-shape", "fresh", ["--init-from", "RUN/ckpt.safetensors", "--d-model", "64"], None,
     r"--init-from: the checkpoint's model is \[32, 2, 1, 32\]"),
    ("init-from-other-layout", "fresh", ["--init-from", "RUN/ckpt.safetensors", "--untied-head"], None,
     r"--init-from: the checkpoint's model has --untied-head off, this run asks for it on"),
]


def bad_input_case(tmp_path: Path, finished_run: Path, case: tuple) -> tuple[list[str], list[Path]]:
    """Set up one BAD_INPUT case; returns the command line and the directories that must not change."""
    _, where, args, setup, _ = case
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "empty.txt", b"")
    _write(data / "latin1.txt", "First Citizen: caf\u00e9\n".encode("latin-1") * 10)
    assert len(_write(data / "short.txt", b"To be, or not to be:").read_text()) == 20  # block is 32
    _write(data / "binary.txt", b"PK\x03\x04\x00\x00" + bytes(range(256)))
    (data / "emptydir").mkdir()
    _write(data / "other.txt", CORPUS_FILE.read_bytes()[:20_000])
    if "DATA/big.txt" in args:  # validation text for a block of 300,000 characters
        _write(data / "big.txt", CORPUS_FILE.read_bytes() * 3)  # (under 4 MiB: no progress bar)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    if setup is not None:
        setup(run)
    if where == "fresh":
        out = tmp_path / "fresh"
        out.mkdir()
        _write(out / "notes.txt", b"an earlier attempt\n")
        _write(out / "metrics.jsonl", b'{"step": 0, "train_loss": 4.2}\n')
    else:
        out = run
    argv = [a.replace("DATA", str(data)).replace("RUN", str(run)) for a in args]
    recipe = [] if "--resume" in argv else [*RECIPE, "--max-iters", "20"]
    return [*recipe, "--sample-tokens", "0", "--threads", "1", "--out-dir", str(out), *argv], [run, out]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_a_one_line_error_and_changes_nothing(
    tmp_path: Path, finished_run: Path, case: tuple, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, watched = bad_input_case(tmp_path, finished_run, case)
    before = {d: snapshot(d) for d in watched}
    monkeypatch.setenv("LMCORE_DATA_DIR", ENV["LMCORE_DATA_DIR"])
    monkeypatch.setenv("XDG_CACHE_HOME", ENV["XDG_CACHE_HOME"])
    capsys.readouterr()
    code = lmcore.train.main(argv)
    assert_one_line_error(code, capsys.readouterr().err, case[-1])
    assert {d: snapshot(d) for d in watched} == before


CLI_CASES = ["non-utf8-data", "corrupt-checkpoint-tensor", "negative-batch-size", "resume-changes-lr"]


@pytest.mark.parametrize("case", [c for c in BAD_INPUT if c[0] in CLI_CASES], ids=CLI_CASES)
def test_bad_input_on_the_command_line(tmp_path: Path, finished_run: Path, case: tuple) -> None:
    argv, watched = bad_input_case(tmp_path, finished_run, case)
    before = {d: snapshot(d) for d in watched}
    done = cli(*argv)
    assert done.returncode == 2
    assert_one_line_error(done.returncode, done.stderr, case[-1])
    assert {d: snapshot(d) for d in watched} == before


def test_ctrl_c_outside_the_training_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(lmcore.training.data, "resolve_corpus", interrupted)  # Ctrl-C while the corpus loads
    capsys.readouterr()
    try:
        code = lmcore.train.main([*RECIPE, *QUIET, "--out-dir", str(tmp_path / "run")])
    except KeyboardInterrupt:  # (uncaught, it would stop the whole test session)
        pytest.fail("KeyboardInterrupt escaped lmcore.train.main")
    assert code == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert not (tmp_path / "run").exists()


def test_init_from_fine_tunes_from_step_zero(tmp_path: Path, finished_run: Path) -> None:
    base_tensors, base_meta = load_run(finished_run / "ckpt.safetensors")
    out = tmp_path / "finetune"
    train(out, "--max-iters", "10", "--init-from", str(finished_run / "ckpt.safetensors"))
    log = metrics(out)
    # Step 0 evaluates the base model's weights: the same val batches give the base's last val loss.
    assert log[0]["step"] == 0
    assert log[0]["val_loss"] == [r for r in metrics(finished_run) if "val_loss" in r][-1]["val_loss"]
    _, meta = load_run(out / "ckpt.safetensors")
    assert meta["iter_num"] == 10 and meta["adam_step"] == 10  # a new run, a new optimizer
    assert meta["tokenizer"] == base_meta["tokenizer"]
    assert [r["step"] for r in log][:3] == [0, 5, 10]
    # And with no steps, the fine-tune's weights are the base's.
    train(tmp_path / "zero", "--max-iters", "0", "--lr-decay-iters", "10",
          "--init-from", str(finished_run / "ckpt.safetensors"))
    assert_same_tensors(safetensors.numpy.load_file(str(tmp_path / "zero" / "model.safetensors")),
                        base_tensors["param"])


def whole_and_resumed(tmp_path: Path, plan: list[str], n: int = 10) -> None:
    """`plan` trained for 2n steps in one run ("whole") and in two ("split": n, then --resume to 2n):
    the same weights."""
    plan = [*plan, "--lr-decay-iters", str(2 * n)]
    train(tmp_path / "whole", *plan, "--max-iters", str(2 * n))
    train(tmp_path / "split", *plan, "--max-iters", str(n))
    resume(tmp_path / "split", "--max-iters", str(2 * n))
    assert_same_weights(tmp_path / "whole", tmp_path / "split")


def test_block_option_flags_train_and_resume_bit_for_bit(tmp_path: Path) -> None:
    """The block options as flags: stored in the checkpoint, kept by --resume (which stays bit-exact),
    and the final weights have the options' layout (an untied head, no wpe, no norm biases)."""
    whole_and_resumed(tmp_path, ["--rope", "--rmsnorm", "--qk-norm", "--relu2", "--untied-head", "--zero-init",
                                 "--logit-softcap", "15"])
    assert_same_checkpoint(tmp_path / "whole", tmp_path / "split")
    _, meta = load_run(tmp_path / "whole" / "ckpt.safetensors")
    cfg = RunConfig.from_dict(meta["config"])
    assert (cfg.rope, cfg.rmsnorm, cfg.qk_norm, cfg.relu2, cfg.untied_head, cfg.zero_init) == (True,) * 6
    assert cfg.logit_softcap == 15.0
    weights = safetensors.numpy.load_file(str(tmp_path / "whole" / "model.safetensors"))
    assert weights["lm_head.weight"].shape == (65, 32) and weights["lm_head.weight"].any()  # trained off zero
    assert "transformer.wpe.weight" not in weights and not any(k.endswith("ln_1.bias") for k in weights)
    assert "transformer.h.0.attn.q_norm.weight" in weights
    assert metrics(tmp_path / "whole")[-1]["train_loss"] < metrics(tmp_path / "whole")[0]["train_loss"]
    # An option cannot change on --resume.
    code = run_main(["--resume", "--no-rope", *QUIET, "--out-dir", str(tmp_path / "split"), "--max-iters", "30"])
    assert code == 2


def test_block_option_flags_parse() -> None:
    args = lmcore.train.parse_args(["--rope", "--no-rmsnorm", "--logit-softcap", "30"])
    assert (args.rope, args.rmsnorm, args.qk_norm, args.logit_softcap) == (True, False, None, 30.0)
    assert RunConfig.from_dict(lmcore.training.run.explicit_settings(args)).rope is True
    assert not any(getattr(RunConfig(), n) for n in ("rope", "rmsnorm", "qk_norm", "relu2", "untied_head",
                                                    "zero_init", "logit_softcap"))  # presets: all off
    args = lmcore.train.parse_args(["--swiglu", "--no-bias"])
    assert (args.swiglu, args.no_bias) == (True, True)
    assert lmcore.train.parse_args(["--no-bias", "--bias"]).no_bias is False


def test_the_llama_block_trains_and_resumes_bit_for_bit_with_muon(tmp_path: Path) -> None:
    """--swiglu and --no-bias (Qwen3's block with --qk-norm), Muon orthogonalising the fused gate and up."""
    whole_and_resumed(tmp_path, ["--rope", "--rmsnorm", "--qk-norm", "--swiglu", "--no-bias", "--untied-head",
                                 "--optimizer", "muon"])
    weights = safetensors.numpy.load_file(str(tmp_path / "whole" / "model.safetensors"))
    assert weights["transformer.h.0.mlp.c_fc.weight"].shape == (256, 32) and not any(k.endswith("c_fc.bias") for k in weights)
    assert metrics(tmp_path / "whole")[-1]["train_loss"] < metrics(tmp_path / "whole")[0]["train_loss"]


# --- 8. byte-level BPE on a directory of text files ---


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two .txt files: the first 80,000 characters of tinyshakespeare, cut in two after a line."""
    data = tmp_path_factory.mktemp("bpe-data")
    text = CORPUS_FILE.read_text(encoding="utf-8")[:80_000]
    cut = text.index("\n", 50_000) + 1
    (data / "part1.txt").write_text(text[:cut], encoding="utf-8")
    (data / "part2.txt").write_text(text[cut:], encoding="utf-8")
    return data


BPE = ["--tokenizer", "bpe", "--vocab-size", "300", "--lr-decay-iters", "20"]


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory: pytest.TempPathFactory, bpe_data: Path) -> Path:
    out = tmp_path_factory.mktemp("bpe") / "run"
    train(out, "--data", str(bpe_data), *BPE, "--max-iters", "20")
    return out


def test_bpe_run_stores_its_tokenizer_and_reports_bits_per_char(bpe_run: Path, bpe_data: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", ENV["XDG_CACHE_HOME"])  # (the test session's token cache)
    _, meta = load_run(bpe_run / "ckpt.safetensors")
    assert meta["tokenizer"]["type"] == "bpe" and meta["tokenizer"]["vocab_size"] == meta["vocab_size"] == 300
    assert meta["dataset"]["name"] == bpe_data.name and meta["dataset"]["path"] == str(bpe_data)
    corpus = resolve_corpus(None, bpe_data)
    tokens = tokenize(corpus, tokenizer_from_dict(meta["tokenizer"]))
    assert corpus.text == CORPUS_FILE.read_text(encoding="utf-8")[:80_000]
    assert tokens.val_chars == 8_000 and len(tokens.val) < 6_000  # BPE tokens hold several characters
    evals = [r for r in metrics(bpe_run) if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 20]
    for r in evals:
        assert r["val_bpc"] == pytest.approx(r["val_loss"] * len(tokens.val) / 8_000 / math.log(2), rel=1e-12)


def test_bpe_run_resumes_bit_for_bit(tmp_path: Path, bpe_run: Path, bpe_data: Path) -> None:
    out = tmp_path / "split"
    train(out, "--data", str(bpe_data), *BPE, "--max-iters", "10")
    resume(out, "--max-iters", "20", "--tokenizer", "bpe", "--vocab-size", "300")  # (the same tokenizer: fine)
    assert_same_weights(bpe_run, out)
    assert_same_checkpoint(bpe_run, out)
    assert losses_after(out, 10) == losses_after(bpe_run, 10)  # (the first run evaluated at its end, step 10)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--resume", "--tokenizer", "char"], r"trained with the bpe tokenizer, not --tokenizer char"),
     (["--resume", "--tokenizer", "bpe", "--vocab-size", "512"], r"has a 300-token vocabulary, not --vocab-size 512"),
     (["--init-from", "RUN/ckpt.safetensors", "--tokenizer", "char", "--max-iters", "5"],
      r"--init-from: the checkpoint .* trained with the bpe tokenizer, not --tokenizer char")],
    ids=["resume-char", "resume-other-vocab", "init-from-char"],
)
def test_bpe_checkpoint_refuses_another_tokenizer(tmp_path: Path, bpe_run: Path, args: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(bpe_run, run)
    out = run if "--resume" in args else tmp_path / "fresh"
    before = snapshot(run)
    capsys.readouterr()
    code = run_main([*QUIET, "--out-dir", str(out), *(a.replace("RUN", str(run)) for a in args)])
    assert_one_line_error(code, capsys.readouterr().err, message)
    assert snapshot(run) == before and not (tmp_path / "fresh").exists()
