"""Generation: the key/value cache changes nothing but speed, seeds are reproducible, temperature 0
and top-k 1 are greedy, top-p keeps the nucleus, and ``python -m lmcore.generate`` prints the
prompt and its continuation or a one-line error."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lmcore
from cli_helpers import ENV, run_main
from cli_helpers import requires_corpus as needs_corpus
from lmcore.checkpoint.state import model_from_checkpoint
from lmcore.inference.sampling import generate, sample_next


def random_model(block_size: int = 8, vocab_size: int = 13, **options: object) -> lmcore.Model:
    """A float64 model whose random weights are large enough that its logits are far from flat."""
    model = lmcore.Model(vocab_size=vocab_size, d_model=16, n_head=2, n_layer=2, block_size=block_size,
                         dtype="float64", seed=0, **options)
    rng = np.random.default_rng(42)
    for name in model.param_names():
        shape = model.get_param(name).shape
        model.set_param(name, rng.standard_normal(shape) * (1.0 if len(shape) == 1 else 0.6))
    return model


def tiny_run(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> Path:
    """The output directory of a quiet, one-thread tiny run with these extra flags."""
    out = tmp_path_factory.mktemp(name) / "run"
    assert run_main(["--tiny", "--eval-iters", "2", "--sample-tokens", "0", "--threads", "1", "--out-dir", str(out),
                     *args]) == 0
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output directory of a 40-step tiny run."""
    return tiny_run(tmp_path_factory, "generate", "--max-iters", "40", "--eval-interval", "20", "--ckpt-interval", "10",
                    "--log-interval", "5")


@pytest.fixture(scope="module")
def trained_model(trained: Path) -> tuple[lmcore.Model, object]:
    model, tokenizer, _, _ = model_from_checkpoint(trained / "ckpt.safetensors", weights_only=True)
    return model, tokenizer


def greedy_reference(model: lmcore.Model, prompt: np.ndarray, n: int) -> np.ndarray:
    """Argmax of a full forward pass over everything so far (for prompt + n <= block_size)."""
    tokens = np.array(prompt, dtype=np.int64, ndmin=2)
    for _ in range(n):
        logits = model.forward(tokens)[0][:, -1, :]
        tokens = np.concatenate([tokens, logits.argmax(axis=-1)[:, None]], axis=1)
    return tokens


# --- cached and uncached generation are the same generation ---


@pytest.mark.parametrize(
    "prompt_len, temperature, top_k, top_p",
    [(1, 1.0, None, None), (5, 0.7, 5, None), (12, 1.3, None, 0.9), (3, 1.0, 4, 0.8), (8, 0.0, None, None)],
)
def test_cache_gives_the_same_tokens_float64(prompt_len: int, temperature: float, top_k: int | None,
                                              top_p: float | None) -> None:
    model = random_model(block_size=8)
    prompt = np.random.default_rng(prompt_len).integers(0, 13, size=(3, prompt_len))
    assert np.ptp(model.forward(prompt[:, -8:])[0][:, -1, :]) > 3  # far from uniform: sampling matters
    # 40 new tokens through a window of 8: the window restarts (and the cache refills) many times;
    # a 12-token prompt starts beyond the window.
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=7)
    cached = generate(model, prompt, 40, use_cache=True, **kw)
    uncached = generate(model, prompt, 40, use_cache=False, **kw)
    assert cached.shape == (3, prompt_len + 40)
    np.testing.assert_array_equal(cached[:, :prompt_len], prompt)
    np.testing.assert_array_equal(cached, uncached)
    if temperature > 0:
        assert len(np.unique(cached[:, prompt_len:])) > 1  # sampled, not stuck on one token


ALL_OPTIONS = dict(rope=True, rmsnorm=True, qk_norm=True, relu2=True, untied_head=True, zero_init=True,
                   logit_softcap=3.0)
# The gated SiLU MLP instead of ReLU^2 (one activation at a time): Llama's and Qwen3's block.
LLAMA_OPTIONS = {**{k: v for k, v in ALL_OPTIONS.items() if k not in ("relu2", "logit_softcap")}, "swiglu": True}
OPTION_SETS = [{k: v} for k, v in ALL_OPTIONS.items()] + [ALL_OPTIONS, {"swiglu": True}, LLAMA_OPTIONS]


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "all" if o is ALL_OPTIONS else "+".join(o))
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cache_gives_the_same_tokens_with_block_options(options: dict, temperature: float) -> None:
    """Every block option, alone and all together: the cache (RoPE at absolute positions, across
    window restarts) gives the tokens a full forward gives."""
    model = random_model(block_size=8, **options)
    prompt = np.random.default_rng(3).integers(0, 13, size=(2, 5))
    kw = dict(temperature=temperature, seed=11)
    cached = generate(model, prompt, 30, use_cache=True, **kw)
    np.testing.assert_array_equal(cached, generate(model, prompt, 30, use_cache=False, **kw))
    if temperature == 0:
        np.testing.assert_array_equal(cached[:, :8], greedy_reference(model, prompt, 3))
    # The cache's logits are the forward's, not just their argmax.
    model.kv_start(2)
    pushed = model.kv_push(cached[:, :7])
    np.testing.assert_allclose(pushed, model.forward(cached[:, :7])[0][:, -1, :], rtol=1e-10, atol=1e-12)
    if "logit_softcap" in options:
        assert np.abs(model.forward(cached[:, :8])[0]).max() < 3.0


@needs_corpus
@pytest.mark.parametrize("temperature, top_k, top_p", [(0.8, None, None), (1.0, 10, None), (1.0, None, 0.9)])
def test_cache_gives_the_same_tokens_trained_float32(trained_model, temperature, top_k, top_p) -> None:
    model, tok = trained_model
    assert model.dtype == "float32"
    prompt = tok.encode("ROMEO:")[None, :]
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=1)
    cached = generate(model, prompt, 100, use_cache=True, **kw)  # 106 tokens through a window of 32
    np.testing.assert_array_equal(cached, generate(model, prompt, 100, use_cache=False, **kw))


@pytest.mark.parametrize("chunks", [[8], [1] * 8, [3, 1, 4], [5, 3], [1, 6, 1]])
def test_pushing_a_window_in_chunks_matches_a_full_forward(chunks: list[int]) -> None:
    """kv_push takes (B,) or (B, P): however a window is fed, the logits after each chunk are the
    full forward's at that position."""
    model = random_model(block_size=8)
    tokens = np.random.default_rng(sum(chunks) * len(chunks)).integers(0, 13, size=(2, 8))
    model.kv_start(2)
    end = 0
    for p in chunks:
        part = tokens[:, end:end + p]
        logits = model.kv_push(part[:, 0] if p == 1 and end % 2 else part)  # both shapes of one token
        end += p
        assert model.kv_len == end
        np.testing.assert_allclose(logits, model.forward(tokens[:, :end])[0][:, -1, :], rtol=1e-10, atol=1e-12)


def test_a_window_that_does_not_fit_is_refused_and_changes_nothing() -> None:
    model = random_model(block_size=8)
    model.kv_start(1)
    before = model.kv_push(np.array([[1, 2, 3, 4, 5]]))
    with pytest.raises(lmcore.LmcoreError, match="do not fit"):
        model.kv_push(np.array([[1, 2, 3, 4]]))
    assert model.kv_len == 5
    np.testing.assert_allclose(model.kv_push(np.array([6])), model.forward(np.array([[1, 2, 3, 4, 5, 6]]))[0][:, -1])
    assert before.shape == (1, 13)


# --- seeds, greedy, top-k ---


@needs_corpus
def test_same_seed_same_text_other_seed_other_text(trained_model) -> None:
    model, tok = trained_model
    prompt = tok.encode("\n")[None, :]
    text = {seed: tok.decode(generate(model, prompt, 60, temperature=0.8, seed=seed)[0]) for seed in (1, 2)}
    assert tok.decode(generate(model, prompt, 60, temperature=0.8, seed=1)[0]) == text[1]
    assert text[1] != text[2]


@needs_corpus
def test_temperature_zero_is_greedy(trained_model) -> None:
    model, tok = trained_model
    prompt = tok.encode("ROMEO:")[None, :]
    expected = greedy_reference(model, prompt, 20)  # 26 tokens: within one window of 32
    for use_cache in (True, False):
        for seed in (0, 1):
            np.testing.assert_array_equal(generate(model, prompt, 20, temperature=0, seed=seed, use_cache=use_cache),
                                          expected)


def test_temperature_zero_is_greedy_float64() -> None:
    model = random_model(block_size=16)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(generate(model, prompt, 12, temperature=0), greedy_reference(model, prompt, 12))


@needs_corpus
def test_top_k_one_is_greedy(trained_model) -> None:
    model, tok = trained_model
    prompt = tok.encode("ROMEO:")[None, :]
    greedy = generate(model, prompt, 60, temperature=0)
    for seed in (0, 5):
        np.testing.assert_array_equal(generate(model, prompt, 60, temperature=1.0, top_k=1, seed=seed), greedy)
    model64 = random_model()
    prompt64 = np.array([[0, 1]])
    np.testing.assert_array_equal(generate(model64, prompt64, 30, temperature=1.5, top_k=1, seed=3),
                                  generate(model64, prompt64, 30, temperature=0))


# --- sample_next on hand-made logits ---

PROBS = np.array([0.5, 0.3, 0.15, 0.05])
ROWS = 20_000


def frequencies(logits: np.ndarray, **kw) -> np.ndarray:
    picks = sample_next(np.tile(logits, (ROWS, 1)), np.random.default_rng(0), **kw)
    return np.bincount(picks, minlength=len(logits)) / ROWS


def test_sample_next_greedy_and_plain_sampling() -> None:
    logits = np.log(PROBS)
    rows = np.array([[0.1, 3.0, -1.0], [5.0, 4.9, 0.0]])
    for seed in range(3):
        np.testing.assert_array_equal(sample_next(rows, np.random.default_rng(seed), temperature=0), [1, 0])
    np.testing.assert_allclose(frequencies(logits), PROBS, atol=0.015)
    np.testing.assert_allclose(frequencies(logits + 100.0), PROBS, atol=0.015)  # only differences matter
    hot = frequencies(logits, temperature=2.0)
    np.testing.assert_allclose(hot, np.sqrt(PROBS) / np.sqrt(PROBS).sum(), atol=0.015)


def test_sample_next_top_k() -> None:
    logits = np.array([1.0, 5.0, 3.0, 4.0])
    freq = frequencies(logits, top_k=2)
    assert set(np.flatnonzero(freq)) == {1, 3}
    assert freq[1] == pytest.approx(np.exp(1) / (np.exp(1) + 1), abs=0.015)
    assert set(np.flatnonzero(frequencies(logits, top_k=1))) == {1}
    assert set(np.flatnonzero(frequencies(logits, top_k=10))) == {0, 1, 2, 3}


@pytest.mark.parametrize(
    "top_p, nucleus",
    [(1e-9, [0]), (0.5, [0]), (0.7, [0, 1]), (0.9, [0, 1, 2]), (0.99, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])],
)
def test_sample_next_top_p_keeps_the_nucleus(top_p: float, nucleus: list[int]) -> None:
    order = np.array([2, 0, 3, 1])  # ids out of probability order: the nucleus is found by sorting
    logits = np.empty(4)
    logits[order] = np.log(PROBS)
    freq = frequencies(logits, top_p=top_p)
    kept = order[nucleus]
    assert set(np.flatnonzero(freq)) == set(kept)
    np.testing.assert_allclose(freq[kept], PROBS[nucleus] / PROBS[nucleus].sum(), atol=0.015)


@pytest.mark.parametrize(
    "logits, u, kw, message",
    [
        (np.array([[0.0, np.nan]]), np.array([0.5]), {}, "row 0: .*logit 1 is NaN"),
        (np.array([[0.0, 1.0], [np.inf, 0.0]]), np.array([0.5, 0.5]), {}, "row 1: .*logit 0 is inf"),
        (np.full((1, 3), -np.inf), np.array([0.5]), {}, "every logit is -inf"),
        (np.zeros((2, 3)), np.array([0.5]), {}, "1 uniform numbers for logits of shape"),
        (np.zeros(3), np.array([0.5]), {}, "must be 2-D"),
        (np.zeros((1, 0)), np.array([0.5]), {}, "shape \\(1, 0\\)"),
        (np.zeros((1, 3)), np.array([1.0]), {}, "u must lie in"),
        (np.zeros((1, 3)), np.array([0.5]), {"top_k": 0}, "top-k must be at least 1"),
        (np.zeros((1, 3)), np.array([0.5]), {"top_k": -2}, "top-k must be at least 1, got -2"),
        (np.zeros((1, 3)), np.array([0.5]), {"top_p": 1.5}, "top-p must be in"),
        (np.zeros((1, 3)), np.array([0.5]), {"temperature": np.nan}, "temperature must be"),
    ],
)
def test_the_sampler_refuses_bad_input(logits, u, kw, message) -> None:
    with pytest.raises(ValueError, match=message):
        lmcore._core.sample(logits, u, **kw)


# --- the command line ---


def run_generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lmcore.generate", *args], env=ENV, capture_output=True,
                          text=True, encoding="utf-8", timeout=120)


@needs_corpus
def test_cli_prints_the_prompt_then_the_text(trained: Path, trained_model) -> None:
    args = ["--out-dir", str(trained), "--threads", "1", "--prompt", "ROMEO:", "--max-new-tokens", "50", "--seed", "1"]
    first, second = run_generate(*args), run_generate(*args)
    assert first.returncode == 0 and first.stderr == "", first.stderr
    assert first.stdout.startswith("ROMEO:") and first.stdout.endswith("\n")
    assert len(first.stdout) == len("ROMEO:") + 50 + 1
    assert second.stdout == first.stdout  # deterministic
    model, tok = trained_model  # and exactly the library's generation (default temperature 0.8)
    lmcore.set_num_threads(1)
    expected = generate(model, tok.encode("ROMEO:")[None, :], 50, temperature=0.8, seed=1)
    assert first.stdout == tok.decode(expected[0]) + "\n"

    other = run_generate(*args[:-1], "2")
    assert other.returncode == 0 and other.stdout.startswith("ROMEO:") and other.stdout != first.stdout
    by_file = run_generate("--checkpoint", str(trained / "ckpt.safetensors"), *args[2:])  # same, by file
    assert by_file.stdout == first.stdout
    uncached = run_generate(*args, "--no-cache")
    assert uncached.stdout == first.stdout


@needs_corpus
def test_cli_several_samples(trained: Path) -> None:
    args = ["--out-dir", str(trained), "--prompt", "ROMEO:", "--max-new-tokens", "30", "--temperature", "1.0"]
    both = run_generate(*args, "--seed", "1", "--num-samples", "2")
    assert both.returncode == 0, both.stderr
    one, two = run_generate(*args, "--seed", "1"), run_generate(*args, "--seed", "2")
    assert both.stdout == f"--- sample 1 ---\n{one.stdout}--- sample 2 ---\n{two.stdout}"


@needs_corpus
@pytest.mark.parametrize(
    "args, message",
    [
        (["--out-dir", "EMPTY"], r"no checkpoint at .*ckpt\.safetensors"),
        (["--checkpoint", "EMPTY/nope.safetensors"], r"no checkpoint at .*nope\.safetensors"),
        (["--prompt", "ROMEO: \u2603"], r"'\u2603'.*not in the tokenizer vocabulary"),
        (["--prompt", ""], r"prompt must not be empty"),
        (["--top-p", "0"], r"top-p must be in \(0, 1\]"),
        (["--top-p", "1.5"], r"top-p must be in \(0, 1\]"),
        (["--temperature", "-1"], r"temperature must be a finite number >= 0"),
        (["--temperature", "nan"], r"temperature must be a finite number >= 0"),
        (["--top-k", "0"], r"top-k must be at least 1"),
        (["--max-new-tokens", "-1"], r"--max-new-tokens must be >= 0"),
        (["--num-samples", "0"], r"--num-samples >= 1"),
        ([], r"give --out-dir DIR or --checkpoint PATH"),
    ],
    ids=["missing-checkpoint", "missing-checkpoint-file", "char-not-in-vocab", "empty-prompt", "top-p-0",
         "top-p-1.5", "temperature-negative", "temperature-nan", "top-k-0", "max-new-tokens-negative",
         "num-samples-0", "no-source"],
)
def test_cli_errors_are_one_line(trained: Path, tmp_path: Path, args: list[str], message: str) -> None:
    args = [a.replace("EMPTY", str(tmp_path)) for a in args]
    has_source = any(a in ("--out-dir", "--checkpoint") for a in args) or not args
    done = run_generate(*([] if has_source else ["--out-dir", str(trained)]), *args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert re.search(message, lines[0]), lines[0]


@needs_corpus
def test_cli_refuses_a_corrupt_checkpoint(trained: Path, tmp_path: Path) -> None:
    raw = bytearray((trained / "ckpt.safetensors").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (tmp_path / "ckpt.safetensors").write_bytes(bytes(raw))
    done = run_generate("--out-dir", str(tmp_path), "--max-new-tokens", "5")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and "corrupt" in done.stderr and done.stderr.count("\n") == 1


# --- a byte-level BPE model ---


@pytest.fixture(scope="module")
def trained_bpe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output directory of a 30-step tiny run with a 400-token byte-level BPE."""
    return tiny_run(tmp_path_factory, "generate-bpe", "--max-iters", "30", "--eval-interval", "30",
                    "--tokenizer", "bpe", "--vocab-size", "400")


@needs_corpus
def test_bpe_model_generates_valid_text(trained_bpe: Path) -> None:
    """Any prompt can be encoded (bytes), and every token streamed out, even one holding part of a
    character, adds up to the library's decoding of the whole output: valid, printable text."""
    prompt = "ROMEO: caf\u00e9 \u2603"
    args = ["--out-dir", str(trained_bpe), "--threads", "1", "--prompt", prompt, "--max-new-tokens", "60",
            "--temperature", "1.5", "--seed", "3"]
    done = run_generate(*args)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    model, tok, _, _ = model_from_checkpoint(trained_bpe / "ckpt.safetensors", weights_only=True)
    assert tok.kind == "bpe" and tok.vocab_size == 400
    lmcore.set_num_threads(1)
    out = generate(model, tok.encode(prompt)[None, :], 60, temperature=1.5, seed=3)
    assert out.shape == (1, len(tok.encode(prompt)) + 60)
    text = tok.decode(out[0])
    text.encode("utf-8")  # valid Unicode: no lone surrogates
    assert done.stdout == text + "\n" and text.startswith(prompt) and len(text) > len(prompt)
    assert run_generate(*args).stdout == done.stdout  # deterministic
