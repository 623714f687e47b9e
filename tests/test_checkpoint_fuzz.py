"""A checkpoint from a stranger cannot crash, hang or fool the loader.

One real training checkpoint (a 2-step tiny run) is built once; each case breaks a copy of its
bytes (truncation, flipped bytes, a rewritten header length, a rewritten JSON header with
overflowing shapes, offsets outside the file, duplicate, missing or renamed tensors, unknown dtypes)
or rewrites its contents and seals them again with a valid sha256, as a stranger could (wrong
dtypes and shapes, missing and extra tensors, nonsense configurations, NaN weights). ``load_run``,
``model_from_checkpoint`` and ``load_weights`` must then raise ``CheckpointError`` with a one-line
message or, when the change does not matter, load a model of exactly the configured shape: never
another exception, never a hang. A resume from it must fail with an error ``python -m lmcore.train``
reports in one line, or succeed.

The hypothesis test runs LMCORE_FUZZ_EXAMPLES cases (default 400); a longer run:
``LMCORE_FUZZ_EXAMPLES=20000 python -m pytest tests/test_checkpoint_fuzz.py -k fuzz_broken -s``.
"""

from __future__ import annotations

import collections
import json
import os
import urllib.error
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmcore
import lmcore.cli
import lmcore.data.datasets
import lmcore.train
from cli_helpers import ENV, join_safetensors, split_safetensors, train
from lmcore.checkpoint.file import METADATA_KEY, CheckpointError, load_checkpoint, load_weights
from lmcore.checkpoint.state import DIGEST_KEY, load_run, model_from_checkpoint, param_shapes, state_digest
from lmcore.config import RunConfig

FUZZ_EXAMPLES = int(os.environ.get("LMCORE_FUZZ_EXAMPLES", "400"))
TEXT = "".join(f"{w} the quick brown fox {i % 7} jumps; over the lazy dog!\n" for i, w in
               enumerate(["First", "Second", "Third", "ROMEO:", "JULIET:"] * 40))


@pytest.fixture(scope="module", autouse=True)
def offline() -> Any:
    """A broken checkpoint may name another dataset: never fetch it, never touch the user's cache."""
    def no_network(url: str, timeout: float) -> bytes:
        raise urllib.error.URLError("network disabled in tests")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lmcore.data.datasets, "_fetch_url", no_network)
        mp.setenv("XDG_CACHE_HOME", ENV["XDG_CACHE_HOME"])
        yield


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a real checkpoint: a 2-step tiny run on a small text (no corpus needed)."""
    root = tmp_path_factory.mktemp("fuzz-source")
    data = root / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    train(root / "run", "--data", str(data), "--max-iters", "2", "--eval-iters", "1", "--block-size", "16",
          "--d-model", "16", "--dropout", "0.1")
    return (root / "run" / "ckpt.safetensors").read_bytes()


@pytest.fixture(scope="module")
def work_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "ckpt.safetensors"


def seal(tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    """A checkpoint file of `tensors` and `meta` with a correct sha256, as a stranger could write one."""
    meta = {k: v for k, v in meta.items() if k != DIGEST_KEY}
    try:
        digest = state_digest(tensors, meta)
    except (TypeError, ValueError):  # (meta that json cannot even write)
        digest = "x"
    doc = json.dumps({**meta, DIGEST_KEY: digest})
    return safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, {METADATA_KEY: doc})


def resume_state(path: Path) -> dict[str, Any]:
    """Everything ``--resume`` builds from the checkpoint in path's directory (data, sampler, model)."""
    return lmcore.train.prepare(lmcore.train.parse_args(["--resume", "--out-dir", str(path.parent)]))


def outcome_of(path: Path) -> str:
    """'refused' or 'loaded'. The loaders must raise nothing but a CheckpointError with a one-line
    message; a resume (which also reads the data the checkpoint names) nothing but the errors
    ``python -m lmcore.train`` reports in one line."""
    try:
        resume_state(path)
    except lmcore.cli.REPORTED_ERRORS as e:
        assert str(e) and "\n" not in str(e) and len(str(e)) < 600, str(e)
    outcomes = []
    for load in (load_weights, load_run, lambda p: model_from_checkpoint(p, weights_only=True), model_from_checkpoint):
        try:
            result = load(path)
        except CheckpointError as e:
            message = str(e)
            assert message and "\n" not in message and len(message) < 600, message
            outcomes.append("refused")
            continue
        if isinstance(result, tuple) and isinstance(result[0], lmcore.Model):
            model, _, cfg, meta = result
            shapes = {name: model.get_param(name).shape for name in model.param_names()}
            assert shapes == param_shapes(cfg, meta["vocab_size"])
        outcomes.append("loaded")
    return "loaded" if outcomes[-1] == "loaded" else "refused"


# --- the engine and the loader agree on the model's layout ---


@pytest.mark.parametrize("d_model, n_head, n_layer, block_size, vocab", [(8, 2, 1, 4, 5), (32, 4, 3, 16, 65)])
def test_param_shapes_match_the_engine(d_model: int, n_head: int, n_layer: int, block_size: int, vocab: int) -> None:
    cfg = RunConfig(d_model=d_model, n_head=n_head, n_layer=n_layer, block_size=block_size)
    model = lmcore.Model(vocab_size=vocab, d_model=d_model, n_head=n_head, n_layer=n_layer, block_size=block_size)
    engine = {name: model.get_param(name).shape for name in model.param_names()}
    assert engine == param_shapes(cfg, vocab)
    assert all(model.get_param(name).dtype == np.float32 for name in engine)


# --- named cases: a stranger's sealed checkpoint that does not fit its own configuration ---


def _tensors_and_meta(original: bytes, path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    path.write_bytes(original)
    return load_checkpoint(path)


def _first(tensors: dict[str, np.ndarray], group: str = "param", ndim: int = 2) -> str:
    return sorted(k for k, v in tensors.items() if k.startswith(group + "/") and v.ndim == ndim)[0]


def _config(**changes: Any) -> Callable[[dict, dict], None]:
    def edit(tensors: dict, meta: dict) -> None:
        meta["config"].update(changes)
    return edit


def _meta(**changes: Any) -> Callable[[dict, dict], None]:
    def edit(tensors: dict, meta: dict) -> None:
        meta.update(changes)
    return edit


def _tensor(fn: Callable[[dict, str], None], group: str = "param", ndim: int = 2) -> Callable[[dict, dict], None]:
    return lambda tensors, meta: fn(tensors, _first(tensors, group, ndim))


SEALED = [
    ("wrong-dtype", _tensor(lambda t, k: t.update({k: t[k].astype(np.float64)})), r"is float64 .*expected float32"),
    ("wrong-shape", _tensor(lambda t, k: t.update({k: t[k].T})), r"expected float32 \["),
    ("wrong-rank", _tensor(lambda t, k: t.update({k: t[k][None]})), r"expected float32 \["),
    ("missing-moment", _tensor(lambda t, k: t.pop(k), "adam_v"), r"group 'adam_v' missing \["),
    ("extra-tensor", _tensor(lambda t, k: t.update({k + "x": t[k]})), r"unexpected \['transformer"),
    ("unknown-group", _tensor(lambda t, k: t.update({"secret/" + k: t[k]})), r"unexpected tensor groups \['secret'\]"),
    ("nan-weight", _tensor(lambda t, k: t[k].__setitem__((0, 0), np.nan)), r"non-finite"),
    ("negative-adam-v", _tensor(lambda t, k: t[k].__setitem__((0, 0), -1.0), "adam_v"), r"non-negative"),
    ("huge-n-layer", _config(n_layer=10**12), r"n_layer 1000000000000, but \d+ parameter tensors"),
    ("huge-d-model", _config(d_model=2**40, n_head=1), r"expected float32 \["),
    ("huge-vocab", _meta(vocab_size=10**15), r"tokenizer has \d+ symbols"),
    ("unknown-optimizer", _meta(optimizer="lion"), r"written by an optimizer this lmcore does not have: .*\"lion\""),
    ("optimizer-not-the-recipes", _meta(optimizer="muon"), r"holds muon's state, but its recipe says --optimizer adamw"),
    ("recipe-not-the-optimizers", _config(optimizer="muon"), r"holds adamw's state, but its recipe says --optimizer muon"),
    ("unknown-optimizer-in-recipe", _config(optimizer="sgd"), r"invalid configuration: --optimizer must be one of"),
    ("optimizer-not-a-string", _config(optimizer=1), r"--optimizer must be a name"),
    ("optimizer-not-a-name", _meta(optimizer=3), r"optimizer is 3, expected an optimizer's name"),
    ("string-d-model", _config(d_model="16"), r"--d-model must be an integer"),
    ("float-overflowing-lr", _config(lr=10**400), r"invalid configuration"),
    ("nan-dropout", _config(dropout=float("nan")), r"--dropout"),
    ("missing-setting", lambda t, m: m["config"].pop("n_head"), r"config is .*every setting"),
    ("unknown-setting", _config(evil="rm -rf /"), r"config is .*every setting"),
    ("iter-num-string", _meta(iter_num="7"), r"iter_num is '7', expected an integer >= 0"),
    ("rope-not-a-bool", _config(rope=1), r"--rope must be true or false"),
    ("negative-softcap", _config(logit_softcap=-1.0), r"--logit-softcap must be a finite number >= 0"),
    ("rope-on-a-classic-model", _config(rope=True), r"unexpected \['transformer.wpe.weight'\]"),
    ("untied-head-missing", _config(untied_head=True), r"missing \['lm_head.weight'\]"),
    ("adam-step-negative", _meta(adam_step=-1), r"adam_step is -1"),
    ("rng-state-garbage", _meta(rng_state="0x12"), r"rng_state is '0x12'"),
    ("rng-state-too-big", _meta(rng_state=str(2**64)), r"rng_state"),
    ("tokenizer-not-a-dict", _meta(tokenizer=["a"]), r"tokenizer is \['a'\], expected a JSON object"),
    ("tokenizer-unsorted", lambda t, m: m["tokenizer"].update(chars=m["tokenizer"]["chars"][::-1]),
     r"invalid configuration: char tokenizer"),
    ("dataset-no-sha", lambda t, m: m["dataset"].pop("sha256"), r"dataset is"),
    ("best-val-string", _meta(best_val_loss="low"), r"best_val_loss"),
    ("elapsed-negative", _meta(elapsed_s=-1.0), r"elapsed_s is -1.0, expected a finite number of seconds"),
    ("elapsed-nan", _meta(elapsed_s=float("nan")), r"elapsed_s is nan"),
    ("schedule-unknown", _config(schedule="cosine; rm -rf /"), r"invalid configuration: --schedule must be"),
    ("eval-full-not-a-bool", _config(eval_full=1), r"invalid configuration: --eval-full must be true or false"),
]


@pytest.mark.parametrize("edit, message", [c[1:] for c in SEALED], ids=[c[0] for c in SEALED])
def test_sealed_checkpoint_that_does_not_fit_its_config_is_refused(
    original: bytes, tmp_path: Path, edit: Callable[[dict, dict], None], message: str
) -> None:
    path = tmp_path / "ckpt.safetensors"
    tensors, meta = _tensors_and_meta(original, path)
    edit(tensors, meta)
    path.write_bytes(seal(tensors, meta))
    with pytest.raises(CheckpointError, match=message) as e:
        model_from_checkpoint(path)
    assert "\n" not in str(e.value)


def test_the_unbroken_checkpoint_loads(original: bytes, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    tensors, meta = _tensors_and_meta(original, path)
    path.write_bytes(seal(tensors, meta))  # sealing again changes nothing
    assert outcome_of(path) == "loaded"


# --- the fuzz test ---

JUNK_INTS = st.sampled_from([0, 1, -1, 3, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63, 2**64, 2**64 + 5, 10**30])
JUNK = st.recursive(
    st.none() | st.booleans() | JUNK_INTS | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
SHAPES = st.one_of(
    st.lists(JUNK_INTS, min_size=0, max_size=4),
    st.lists(st.integers(min_value=0, max_value=40), min_size=0, max_size=3),
    JUNK,
)
OFFSETS = st.one_of(st.lists(st.integers(min_value=-10, max_value=300_000), min_size=2, max_size=2),
                    st.lists(JUNK_INTS, min_size=2, max_size=2), JUNK)
DTYPES = st.one_of(st.sampled_from(["F32", "F64", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "f32", "", "F99"]),
                   JUNK)
ENTRY_EDITS = st.one_of(
    st.tuples(st.just("shape"), SHAPES),
    st.tuples(st.just("data_offsets"), OFFSETS),
    st.tuples(st.just("dtype"), DTYPES),
    st.tuples(st.just("replace"), JUNK),
    st.tuples(st.just("drop"), st.none()),
    st.tuples(st.just("duplicate"), st.booleans()),
    st.tuples(st.just("rename"), st.text(max_size=30)),
)
CONFIG_KEYS = sorted(RunConfig.__dataclass_fields__)
META_KEYS = ["iter_num", "adam_step", "rng_state", "vocab_size", "sampler", "tokenizer", "dataset",
             "best_val_loss", "elapsed_s", "format_version", DIGEST_KEY, "lmcore_version"]
TENSOR_OPS = st.sampled_from(["drop", "float64", "float16", "int32", "transpose", "flatten", "add-axis", "shrink",
                              "rename", "copy-under-new-name", "nan", "inf", "negative", "empty"])

MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(min_value=0, max_value=1, exclude_max=True)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                                        min_size=1, max_size=8)),
    st.tuples(st.just("flip-header"), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                                               min_size=1, max_size=4)),
    st.tuples(st.just("header-length"), st.one_of(st.tuples(st.just("set"), st.integers(0, 2**64 - 1)),
                                                  st.tuples(st.just("shift"), st.integers(-64, 64).filter(bool)))),
    st.tuples(st.just("entry"), st.integers(0, 10**6), ENTRY_EDITS),
    st.tuples(st.just("metadata-text"), st.integers(0, 10**6), st.text(min_size=1, max_size=6)),
    st.tuples(st.just("sealed-config"), st.sampled_from(CONFIG_KEYS), JUNK),
    st.tuples(st.just("sealed-meta"), st.sampled_from(META_KEYS), st.one_of(JUNK, st.just("<delete>"))),
    st.tuples(st.just("sealed-tensor"), st.integers(0, 10**6), TENSOR_OPS),
)


def mutate(original: bytes, path: Path, mutation: tuple) -> bytes:
    kind, *args = mutation
    raw = bytearray(original)
    header_len = int.from_bytes(original[:8], "little")
    if kind == "truncate":
        return bytes(raw[: int(args[0] * len(raw))])
    if kind in ("flip", "flip-header"):
        span = len(raw) if kind == "flip" else 8 + header_len
        flipped = set()
        for where, mask in args[0]:
            at = int(where * span)
            if at not in flipped:  # (a second flip of the same byte could undo the first)
                raw[at] ^= mask
                flipped.add(at)
        return bytes(raw)
    if kind == "header-length":
        how, n = args[0]
        value = n if how == "set" else max(0, header_len + n)
        return value.to_bytes(8, "little") + original[8:]
    header, data = split_safetensors(original)
    names = sorted(k for k in header if k != "__metadata__")
    if kind == "entry":
        name = names[args[0] % len(names)]
        op, value = args[1]
        if op == "drop":
            del header[name]
        elif op == "duplicate":
            entry = header[names[0]] if value else header[name]
            text = json.dumps(header)
            twice = text.replace("{", "{" + json.dumps(name) + ": " + json.dumps(entry) + ", ", 1)
            return join_safetensors(twice, data)
        elif op == "rename":
            header[value] = header.pop(name)
        elif op == "replace":
            header[name] = value
        else:
            header[name][op] = value
        return join_safetensors(json.dumps(header), data)
    if kind == "metadata-text":
        text = header["__metadata__"][METADATA_KEY]
        at = args[0] % (len(text) + 1)
        header["__metadata__"][METADATA_KEY] = text[:at] + args[1] + text[at + len(args[1]):]
        return join_safetensors(json.dumps(header), data)
    tensors, meta = _tensors_and_meta(original, path)
    if kind == "sealed-config":
        meta["config"][args[0]] = args[1]
    elif kind == "sealed-meta":
        if args[1] == "<delete>":
            meta.pop(args[0], None)
        else:
            meta[args[0]] = args[1]
    else:  # sealed-tensor
        name = sorted(tensors)[args[0] % len(tensors)]
        t = tensors[name]
        op = args[1]
        if op == "drop":
            del tensors[name]
        elif op in ("float64", "float16", "int32"):
            tensors[name] = t.astype(op)
        elif op == "transpose":
            tensors[name] = t.T
        elif op == "flatten":
            tensors[name] = t.reshape(-1)
        elif op == "add-axis":
            tensors[name] = t[None]
        elif op == "shrink":
            tensors[name] = t[:-1]
        elif op == "rename":
            tensors[name + ".x"] = tensors.pop(name)
        elif op == "copy-under-new-name":
            tensors[name.replace("/", "/copy.", 1)] = t
        elif op == "empty":
            tensors[name] = t[:0]
        else:
            t.reshape(-1)[0] = {"nan": np.nan, "inf": np.inf, "negative": -1.0}[op]
    return seal(tensors, meta)


@pytest.fixture(scope="module")
def tally() -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    yield counts
    print(f"\ncheckpoint fuzz: {sum(counts.values())} broken checkpoints tried: " +
          ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


@settings(max_examples=FUZZ_EXAMPLES, deadline=timedelta(seconds=10), database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mutation=MUTATIONS)
def test_fuzz_broken_checkpoints_are_refused_or_harmless(
    original: bytes, work_file: Path, tally: collections.Counter[str], mutation: tuple
) -> None:
    work_file.write_bytes(mutate(original, work_file, mutation))
    outcome = outcome_of(work_file)
    tally[f"{mutation[0]}: {outcome}"] += 1


def test_a_checkpoint_from_before_optimizers_were_named_still_loads(original: bytes, tmp_path: Path) -> None:
    """Issue 3's format has no "optimizer" field: it was AdamW's, and loads as such."""
    path = tmp_path / "ckpt.safetensors"
    tensors, meta = _tensors_and_meta(original, path)
    assert meta.pop("optimizer") == "adamw"
    path.write_bytes(seal(tensors, meta))
    model, _, _, loaded = model_from_checkpoint(path)
    assert model.optimizer == "adamw" and "optimizer" not in loaded
    for key in [k for k in tensors if k.startswith("adam_m/")]:
        name = key.removeprefix("adam_m/")
        assert np.array_equal(model.get_optimizer_state(name, "adam_m"), tensors[key])


def test_a_checkpoint_from_before_the_block_options_still_loads_and_resumes(original: bytes, tmp_path: Path) -> None:
    """A configuration without the block options' fields (written before they existed) is GPT-2's
    block: it loads with every option off and resumes as before."""
    path = tmp_path / "ckpt.safetensors"
    tensors, meta = _tensors_and_meta(original, path)
    for name in ("rope", "rmsnorm", "qk_norm", "relu2", "untied_head", "zero_init", "logit_softcap"):
        assert meta["config"].pop(name) in (False, 0.0)
    path.write_bytes(seal(tensors, meta))
    model, _, cfg, _ = model_from_checkpoint(path)
    assert not (cfg.rope or cfg.untied_head or cfg.logit_softcap) and "transformer.wpe.weight" in model.param_names()
    for key in [k for k in tensors if k.startswith("param/")]:
        assert np.array_equal(model.get_param(key.removeprefix("param/")), tensors[key])
    run = resume_state(path)
    assert run.iter_num == meta["iter_num"] and run.cfg == cfg
