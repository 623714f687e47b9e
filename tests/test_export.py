"""Export to Hugging Face transformers and GGUF, and import of GPT-2 directories (issue 16).

Without the peers: the tokenizers JSON keeps lmcore's ids (char and BPE, specials too), an export
imports back to the same weights, unsupported options and foreign directories are refused in one
line, the GGUF file holds the weights and metadata. With the peers (LMCORE_PEERS_PYTHON, set by
scripts/test.sh from scripts/peers.sh): transformers loads the export with no network and no custom
code and its logits and greedy text equal lmcore's; llama.cpp's greedy tokens equal lmcore's; a
tiny random GPT-2 made by transformers is imported with equal logits and fine-tuned."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cli_helpers import CORPUS_FILE, requires_corpus, run_main
from lmcore.checkpoint.state import model_from_checkpoint, new_model
from lmcore.conversation.template import add_chat_tokens, apply_chat_template
from lmcore.export import main as export_main
from lmcore.inference.sampling import generate
from lmcore.interop.hf_format import ExportError, check_exportable
from lmcore.interop.hf_tokenizer import hf_tokenizer, tokenizer_config, tokenizer_from_hf
from lmcore.tokenizer.bpe import BpeTokenizer
from lmcore.tokenizer.char import CharTokenizer
from lmcore.config import RunConfig
from lmcore.training.run import init_weights

PEERS = os.environ.get("LMCORE_PEERS_PYTHON")
requires_peers = pytest.mark.skipif(
    not PEERS, reason="LMCORE_PEERS_PYTHON is unset: run scripts/peers.sh (scripts/test.sh does) for the interop tests")
PEER_CHECK = Path(__file__).with_name("peer_check.py")
TEXT = "ROMEO:\nBut soft, what light  through yonder window breaks?\n\n It is the east. "
NEW_TOKENS = 100


def peer(tmp: Path, request: dict) -> dict:
    """Run tests/peer_check.py in the peers' python; its JSON answer."""
    path = tmp / f"request-{request['op']}.json"
    path.write_text(json.dumps(request), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp / "hf-home")}
    proc = subprocess.run([PEERS, str(PEER_CHECK), str(path)], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tiny(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> Path:
    """A quiet 200-step tiny run with a 128-token block (room for a prompt and 100 new tokens), trained
    enough that greedy choices are not near-ties."""
    out = tmp_path_factory.mktemp(name) / "run"
    assert run_main(["--tiny", "--block-size", "128", "--max-iters", "200", "--eval-interval", "200", "--eval-iters", "2",
                     "--sample-tokens", "0", "--threads", "1", "--out-dir", str(out), *args]) == 0
    return out


@pytest.fixture(scope="module")
def char_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny(tmp_path_factory, "char")


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny(tmp_path_factory, "bpe", "--tokenizer", "bpe", "--vocab-size", "300")


@pytest.fixture(scope="module")
def modern_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The options GPT-2 holds besides its block: ReLU^2, an untied head, zero-initialised projections."""
    return tiny(tmp_path_factory, "modern", "--relu2", "--untied-head", "--zero-init")


@pytest.fixture(scope="module")
def rope_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rotary embeddings: GPT-NeoX's architecture (transformers' GPTNeoXForCausalLM, llama.cpp's gptneox)."""
    return tiny(tmp_path_factory, "rope", "--rope")


@pytest.fixture(scope="module")
def rope_modern_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny(tmp_path_factory, "rope_modern", "--rope", "--relu2", "--untied-head")


def load(run: Path):
    return model_from_checkpoint(run / "ckpt.safetensors", weights_only=True)


def export(run: Path, to: str, dest: Path) -> None:
    assert export_main(["--out-dir", str(run), "--to", to, str(dest)]) == 0


def exported(request: pytest.FixtureRequest, run_name: str, to: str, dest: Path) -> tuple[Any, Any, RunConfig]:
    """The model, tokenizer and configuration of the run fixture ``run_name``, exported as ``to`` to ``dest``."""
    run = request.getfixturevalue(run_name)
    model, tok, cfg, _ = load(run)
    export(run, to, dest)
    return model, tok, cfg


def char_tokenizer() -> CharTokenizer:
    return CharTokenizer(TEXT + "xyz")


def bpe_tokenizer() -> BpeTokenizer:
    return BpeTokenizer.train([CORPUS_FILE.read_text(encoding="utf-8")[:200_000]], 400)


# --- the tokenizer ---


def test_char_tokenizer_json_keeps_ids_newlines_and_spaces() -> None:
    tok = char_tokenizer()
    hf = hf_tokenizer(tok)
    ids = tok.encode(TEXT).tolist()
    assert hf.encode(TEXT, add_special_tokens=False).ids == ids
    assert hf.decode(ids) == TEXT
    assert hf.get_vocab_size() == tok.vocab_size


@requires_corpus
def test_bpe_tokenizer_json_keeps_ids() -> None:
    tok = bpe_tokenizer()
    hf = hf_tokenizer(tok)
    text = CORPUS_FILE.read_text(encoding="utf-8")[300_000:302_000] + " naïve café ☃"
    assert hf.encode(text, add_special_tokens=False).ids == tok.encode(text).tolist()
    assert hf.decode(tok.encode(text).tolist()) == text


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_chat_specials_keep_their_ids_and_the_template(kind: str) -> None:
    if kind == "bpe" and not CORPUS_FILE.is_file():
        pytest.skip("shared corpus missing")
    tok = add_chat_tokens(char_tokenizer() if kind == "char" else bpe_tokenizer())
    hf = hf_tokenizer(tok)
    for s in tok.specials:
        assert hf.token_to_id(s) == tok.special_id(s)
    config = tokenizer_config(tok, 128)
    assert config["chat_template"] == tok.chat_template and config["eos_token"] == "<|end|>"
    assert config["clean_up_tokenization_spaces"] is False
    # and back: the same tokenizer, specials and template included
    assert tokenizer_from_hf(hf.to_str(), config) == tok


def test_tokenizer_import_refuses_other_models() -> None:
    from tokenizers import Tokenizer, models

    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).to_str()
    with pytest.raises(ValueError, match="WordPiece"):
        tokenizer_from_hf(wordpiece, {})
    shuffled = json.loads(hf_tokenizer(CharTokenizer("abc")).to_str())
    shuffled["model"]["vocab"] = {"b": 0, "a": 1, "c": 2}
    with pytest.raises(ValueError, match="code-point order"):
        tokenizer_from_hf(json.dumps(shuffled), {})


# --- refusals ---


@pytest.mark.parametrize("option, value, flag", [("rmsnorm", True, "--rmsnorm"), ("qk_norm", True, "--qk-norm"),
                                                 ("logit_softcap", 15.0, "--logit-softcap")])
def test_options_no_standard_architecture_has_are_refused_by_name(option: str, value: object, flag: str) -> None:
    with pytest.raises(ExportError, match=flag) as e:
        check_exportable(RunConfig(rope=True, **{option: value}), "Hugging Face transformers")
    assert "\n" not in str(e.value)
    # these map (--rope to GPT-NeoX)
    check_exportable(RunConfig(rope=True, relu2=True, untied_head=True, zero_init=True), "Hugging Face transformers")


@requires_corpus
def test_export_cli_refuses_in_one_line(tmp_path_factory: pytest.TempPathFactory, modern_run: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    rms = tiny(tmp_path_factory, "rms", "--rmsnorm", "--max-iters", "2")
    capsys.readouterr()
    dest = tmp_path_factory.mktemp("refused") / "x"
    assert export_main(["--out-dir", str(rms), "--to", "hf", str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and "--rmsnorm" in err
    assert not dest.exists()  # nothing written
    assert export_main(["--out-dir", str(modern_run), "--to", "gguf", str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--relu2" in err
    assert export_main(["--out-dir", str(dest / "none"), "--to", "hf", str(dest)]) == 2
    assert capsys.readouterr().err.startswith("error: no checkpoint")


# --- export and import back ---


@requires_corpus
@pytest.mark.parametrize("run_name", ["char_run", "bpe_run", "modern_run"])
def test_export_imports_back_to_the_same_weights(run_name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model, tok, cfg = exported(request, run_name, "hf", tmp_path / "hf")
    files = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert files == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    params, tok2, cfg2 = init_weights(tmp_path / "hf", cfg)
    assert tok2 == tok
    assert (cfg2.d_model, cfg2.n_head, cfg2.n_layer, cfg2.untied_head) == (cfg.d_model, cfg.n_head, cfg.n_layer, cfg.untied_head)
    assert sorted(params) == sorted(model.param_names())
    for name in model.param_names():
        np.testing.assert_array_equal(params[name], model.get_param(name))


@requires_corpus
def test_init_from_an_export_fine_tunes(char_run: Path, tmp_path: Path) -> None:
    export(char_run, "hf", tmp_path / "hf")
    out = tmp_path / "tuned"
    assert run_main(["--tiny", "--block-size", "128", "--max-iters", "3", "--eval-interval", "3", "--eval-iters", "1",
                     "--sample-tokens", "0", "--threads", "1", "--init-from", str(tmp_path / "hf"), "--out-dir", str(out)]) == 0
    assert (out / "ckpt.safetensors").is_file()


def _edited(src: Path, dest: Path, **changes: object) -> Path:
    import shutil

    shutil.copytree(src, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(changes)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


@requires_corpus
def test_init_from_refuses_what_lmcore_does_not_implement(char_run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    export(char_run, "hf", tmp_path / "hf")
    base = ["--tiny", "--block-size", "128", "--max-iters", "2", "--sample-tokens", "0", "--threads", "1"]
    cases = [
        (_edited(tmp_path / "hf", tmp_path / "bert", model_type="bert"), [], "'bert' model"),
        (_edited(tmp_path / "hf", tmp_path / "gelu", activation_function="gelu"), [], "activation_function 'gelu'"),
        (_edited(tmp_path / "hf", tmp_path / "eps", layer_norm_epsilon=1e-6), [], "layer_norm_epsilon"),
        (_edited(tmp_path / "hf", tmp_path / "wide", n_inner=7), [], "n_inner 7"),
        (_edited(tmp_path / "hf", tmp_path / "short", n_positions=64), [], "64 positions"),
        (tmp_path / "hf", ["--d-model", "64"], "d_model"),
        (tmp_path / "hf", ["--rmsnorm"], "--rmsnorm"),
    ]
    pickle_only = _edited(tmp_path / "hf", tmp_path / "pickle")
    (pickle_only / "model.safetensors").rename(pickle_only / "pytorch_model.bin")
    cases.append((pickle_only, [], "never a pickle"))
    for i, (where, flags, expected) in enumerate(cases):
        assert run_main([*base, *flags, "--init-from", str(where), "--out-dir", str(tmp_path / f"o{i}")]) == 2, expected
        err = capsys.readouterr().err
        assert expected in err and err.strip().count("\n") == 0, (expected, err)


# --- GGUF, read back with the gguf package ---


@requires_corpus
@pytest.mark.parametrize("run_name", ["char_run", "bpe_run"])
def test_gguf_holds_the_weights_and_the_vocabulary(run_name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    model, tok, cfg = exported(request, run_name, "gguf", tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    fields = reader.fields
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "gpt2"
    assert int(fields["gpt2.block_count"].parts[-1][0]) == cfg.n_layer
    assert int(fields["gpt2.context_length"].parts[-1][0]) == cfg.block_size
    assert len(fields["tokenizer.ggml.tokens"].data) == tok.vocab_size
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    np.testing.assert_array_equal(tensors["token_embd.weight"], model.get_param("transformer.wte.weight"))
    np.testing.assert_array_equal(tensors["blk.0.attn_qkv.weight"], model.get_param("transformer.h.0.attn.c_attn.weight"))
    assert "output.weight" not in tensors  # tied: llama.cpp uses the token embedding
    assert len(tensors) == len(model.param_names())


def test_char_merges_join_the_bytes_of_each_character() -> None:
    from lmcore.interop.gguf_format import char_merges, gguf_vocab

    tokens, types, merges = gguf_vocab(CharTokenizer("ab\n é☃"))
    assert tokens == ["Ċ", "Ġ", "a", "b", "Ã©", "âĺĥ"]  # GPT-2's byte symbols of \n, space, a, b, é, ☃
    assert merges == ["Ã ©", "â ĺ", "âĺ ĥ"] and set(types) == {1}
    assert len(char_merges(["a", "Ġ"])) == 1  # an all-ASCII vocabulary: the one inert NUL merge


@requires_corpus
def test_gguf_of_a_rope_model_is_gptneox(rope_run: Path, tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    model, _, cfg, _ = load(rope_run)
    export(rope_run, "gguf", tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "gptneox"
    assert int(reader.fields["gptneox.rope.dimension_count"].parts[-1][0]) == cfg.d_model // cfg.n_head
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert "position_embd.weight" not in tensors
    np.testing.assert_array_equal(tensors["output.weight"], model.get_param("transformer.wte.weight"))  # tied, written out


# --- with the peers: transformers and llama.cpp ---


def lmcore_greedy(model, prompt: np.ndarray) -> list[int]:
    return generate(model, prompt[None, :], NEW_TOKENS, temperature=0.0)[0].tolist()


@requires_peers
@requires_corpus
@pytest.mark.parametrize("run_name", ["char_run", "bpe_run", "modern_run", "rope_run", "rope_modern_run"])
def test_transformers_loads_the_export_and_agrees(run_name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model, tok, cfg = exported(request, run_name, "hf", tmp_path / "hf")
    ids = np.random.default_rng(0).integers(0, tok.vocab_size, size=(2, cfg.block_size))
    prompt = tok.encode("ROMEO:\nBut soft").astype(np.int64)
    answer = peer(tmp_path, {"op": "hf", "dir": str(tmp_path / "hf"), "ids": ids.tolist(), "prompt": prompt.tolist(),
                             "new_tokens": NEW_TOKENS, "logits_out": str(tmp_path / "logits.npy"),
                             "texts": [TEXT], "decode": [tok.encode(TEXT).tolist()]})
    assert answer["class"] == ("GPTNeoXForCausalLM" if cfg.rope else "GPT2LMHeadModel")
    theirs, ours = np.load(tmp_path / "logits.npy"), model.forward(ids)[0]
    assert np.abs(theirs - ours).max() < 1e-4
    greedy = lmcore_greedy(model, prompt)
    assert answer["generated"] == greedy
    assert answer["generated_text"] == tok.decode(greedy)
    assert answer["encoded"] == [tok.encode(TEXT).tolist()] and answer["decoded"] == [TEXT]


@requires_peers
def test_transformers_chat_template_gives_lmcore_ids(tmp_path: Path) -> None:
    from lmcore.interop.writer import write_hf_tokenizer

    tok = add_chat_tokens(char_tokenizer())
    write_hf_tokenizer(tmp_path / "tok", tok, 128)
    chat = [{"role": "user", "content": "But soft, what light"}, {"role": "assistant", "content": "It is the east."}]
    answer = peer(tmp_path, {"op": "hf", "dir": str(tmp_path / "tok"), "tokenizer_only": True, "chat": chat})
    assert answer["chat_ids"] == apply_chat_template(tok, chat, add_generation_prompt=True).ids.tolist()


@requires_peers
@requires_corpus
@pytest.mark.parametrize("run_name", ["char_run", "bpe_run", "rope_run"])
def test_llama_cpp_greedy_tokens_equal_lmcore(run_name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model, tok, cfg = exported(request, run_name, "gguf", tmp_path / "m.gguf")
    prompt = tok.encode("ROMEO:\nBut soft").astype(np.int64)
    answer = peer(tmp_path, {"op": "gguf", "file": str(tmp_path / "m.gguf"), "n_ctx": cfg.block_size,
                             "prompt": prompt.tolist(), "new_tokens": NEW_TOKENS, "texts": [TEXT]})
    greedy = lmcore_greedy(model, prompt)
    assert answer["n_vocab"] == tok.vocab_size
    assert answer["generated"] == greedy  # (fed lmcore's ids: the comparison does not hang on tokenizing)
    assert answer["generated_text"] == tok.decode(greedy[len(prompt):])
    assert answer["encoded"] == [tok.encode(TEXT).tolist()]  # and llama.cpp's own tokenizing agrees


@requires_peers
@requires_corpus
def test_a_transformers_gpt2_is_imported_and_fine_tuned(tmp_path: Path) -> None:
    tok = bpe_tokenizer()
    where = tmp_path / "gpt2"
    ids = np.random.default_rng(1).integers(0, tok.vocab_size, size=(2, 64))
    config = dict(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    peer(tmp_path, {"op": "make_model", "config_class": "GPT2Config", "model_class": "GPT2LMHeadModel",
                    "dir": str(where), "config": config, "ids": ids.tolist(),
                    "logits_out": str(tmp_path / "logits.npy")})
    (where / "tokenizer.json").write_text(hf_tokenizer(tok).to_str(), encoding="utf-8")
    shape = ["--d-model", "32", "--n-head", "2", "--n-layer", "2", "--block-size", "64"]
    cfg = RunConfig(d_model=32, n_head=2, n_layer=2, block_size=64)
    params, tok2, _ = init_weights(where, cfg)
    assert tok2 == tok
    model = new_model(cfg, tok.vocab_size)
    for name, value in params.items():
        model.set_param(name, value)
    assert np.abs(np.load(tmp_path / "logits.npy") - model.forward(ids)[0]).max() < 1e-4
    out = tmp_path / "tuned"
    assert run_main(["--tiny", *shape, "--max-iters", "5", "--eval-interval", "5", "--eval-iters", "1",
                     "--sample-tokens", "0", "--threads", "1", "--init-from", str(where), "--out-dir", str(out)]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(np.isfinite(m["train_loss"]) for m in metrics if "train_loss" in m)
