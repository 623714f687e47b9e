"""Every preset's model leaves lmcore, and the architectures it leaves as come back (issue 26).

The shapes and blocks of --tiny, --small, --medium (GPT-2), --speedrun and --long (Llama: rotary,
RMSNorm, the gated SiLU MLP, an untied head), and a Qwen3 block (and --qk-norm, --no-bias), each
trained a few steps: exported with --to hf and --to gguf, transformers and llama.cpp give lmcore's
logits (1e-4) on random ids and its 100 greedy tokens. A tiny random model of each architecture made
by transformers imports with the same logits and fine-tunes. Without the peers: the layouts, the
refusals by name, the GGUF's names and its rotation pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmcore.config import PRESETS, RunConfig
from lmcore.interop.hf_format import ExportError, architecture, check_exportable
from lmcore.interop.hf_tokenizer import hf_tokenizer
from lmcore.training.run import init_weights
from lmcore.checkpoint.state import new_model

from cli_helpers import requires_corpus, run_main
from test_export import NEW_TOKENS, bpe_tokenizer, export, lmcore_greedy, load, peer, requires_peers

QWEN3 = ["--rope", "--rmsnorm", "--swiglu", "--qk-norm", "--no-bias", "--untied-head", "--zero-init"]
# name: (flags, transformers' class, llama.cpp's architecture)
MODELS = {
    "tiny": (["--tiny", "--block-size", "128"], "GPT2LMHeadModel", "gpt2"),  # (room for 100 new tokens)
    "small": (["--small"], "GPT2LMHeadModel", "gpt2"),
    "medium": (["--medium"], "GPT2LMHeadModel", "gpt2"),
    "speedrun": (["--speedrun"], "LlamaForCausalLM", "llama"),
    "long": (["--long"], "LlamaForCausalLM", "llama"),
    "qwen3": (["--tiny", "--block-size", "128", *QWEN3], "Qwen3ForCausalLM", "qwen3"),
}


@pytest.fixture(scope="module", params=list(MODELS))
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A few steps of the model's recipe at its shape, with a small batch and a short warmup (its
    shape and block are what export; the steps only make greedy choices clear)."""
    name = request.param
    out = tmp_path_factory.mktemp(name) / "run"
    assert run_main([*MODELS[name][0], "--max-iters", "40", "--batch-size", "4", "--warmup-iters", "5", "--lr", "3e-3",
                     "--eval-interval", "40", "--eval-iters", "1", "--no-eval-full", "--sample-tokens", "0",
                     "--threads", "1", "--out-dir", str(out)]) == 0
    return name, out


def test_the_presets_export_as_their_architectures() -> None:
    expected = {"tiny": "gpt2", "small": "gpt2", "medium": "gpt2", "speedrun": "llama", "long": "llama"}
    assert set(expected) == set(PRESETS)
    for name, arch in expected.items():
        cfg = RunConfig.from_dict({**RunConfig().to_dict(), **PRESETS[name]})
        check_exportable(cfg, "transformers")
        assert architecture(cfg) == arch
    assert architecture(RunConfig(rope=True, rmsnorm=True, swiglu=True, qk_norm=True, no_bias=True)) == "qwen3"
    assert architecture(RunConfig(rope=True, no_bias=True)) == "gpt_neox"


@pytest.mark.parametrize("options, flag", [
    (dict(logit_softcap=15.0), "--logit-softcap"),
    (dict(rmsnorm=True), "--rmsnorm without --swiglu"),
    (dict(rmsnorm=True, relu2=True), "--rmsnorm without --swiglu"),
    (dict(swiglu=True), "--swiglu without --rmsnorm"),
    (dict(swiglu=True, rmsnorm=True, rope=False), "--swiglu without --rope"),
    (dict(qk_norm=True), "--qk-norm without --swiglu"),
    (dict(qk_norm=True, swiglu=True, rmsnorm=True), "--qk-norm with biases"),
])
def test_what_no_standard_architecture_computes_is_refused_by_name(options: dict, flag: str) -> None:
    with pytest.raises(ExportError, match=flag) as e:
        check_exportable(RunConfig(**{"rope": True, **options}), "GGUF")
    assert "\n" not in str(e.value)


@requires_corpus
def test_llama_exports_split_and_pair_as_documented(tmp_path: Path) -> None:
    """The fused weights split into Llama's projections; llama.cpp's llama gets each head's query
    and key rows in adjacent rotation pairs, its qwen3 and transformers as lmcore keeps them."""
    gguf = pytest.importorskip("gguf")
    import safetensors.numpy

    out = tmp_path / "run"
    assert run_main(["--tiny", "--rope", "--rmsnorm", "--swiglu", "--untied-head", "--max-iters", "2",
                     "--eval-iters", "1", "--sample-tokens", "0", "--threads", "1", "--out-dir", str(out)]) == 0
    model, _, cfg, _ = load(out)
    export(out, "hf", tmp_path / "hf")
    export(out, "gguf", tmp_path / "m.gguf")
    c, hs = cfg.d_model, cfg.d_model // cfg.n_head
    fused = model.get_param("transformer.h.0.attn.c_attn.weight")
    fc = model.get_param("transformer.h.0.mlp.c_fc.weight")
    hf = safetensors.numpy.load_file(str(tmp_path / "hf" / "model.safetensors"))
    np.testing.assert_array_equal(hf["model.layers.0.self_attn.k_proj.weight"], fused[c:2 * c])
    np.testing.assert_array_equal(hf["model.layers.0.mlp.up_proj.weight"], fc[4 * c:])
    bias = model.get_param("transformer.h.0.attn.c_attn.bias")
    np.testing.assert_array_equal(hf["model.layers.0.self_attn.q_proj.bias"], bias[:c])
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    keys = ("model_type", "attention_bias", "mlp_bias", "intermediate_size")
    assert tuple(config[k] for k in keys) == ("llama", True, True, 4 * c)
    tensors = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors}
    q = tensors["blk.0.attn_q.weight"]
    np.testing.assert_array_equal(q[0], fused[0])              # pair 0 of head 0: channels 0 and hs/2
    np.testing.assert_array_equal(q[1], fused[hs // 2])
    np.testing.assert_array_equal(q[hs + 2], fused[hs + 1])    # pair 1 of head 1
    np.testing.assert_array_equal(tensors["blk.0.attn_v.weight"], fused[2 * c:])  # values keep their order
    assert set(tensors) == {f"blk.0.{n}.{k}" for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                                                       "ffn_down") for k in ("weight", "bias")} | \
        {"blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "token_embd.weight", "output_norm.weight", "output.weight"}
    params, _, base = init_weights(tmp_path / "hf", cfg)  # and back: the same parameters
    assert (base.swiglu, base.no_bias) == (True, False)
    assert all(np.array_equal(params[n], model.get_param(n)) for n in model.param_names())


@requires_corpus
def test_a_no_bias_gpt2_exports_with_zero_biases_and_qwen3_without(tmp_path: Path) -> None:
    import safetensors.numpy

    for name, flags, arch in [("gpt2", ["--no-bias"], "gpt2"), ("qwen3", QWEN3, "qwen3")]:
        out = tmp_path / name
        assert run_main(["--tiny", *flags, "--max-iters", "2", "--eval-iters", "1", "--sample-tokens", "0",
                         "--threads", "1", "--out-dir", str(out)]) == 0
        model, _, cfg, _ = load(out)
        assert not any(n.endswith("c_attn.bias") for n in model.param_names())
        export(out, "hf", tmp_path / f"{name}-hf")
        tensors = safetensors.numpy.load_file(str(tmp_path / f"{name}-hf" / "model.safetensors"))
        config = json.loads((tmp_path / f"{name}-hf" / "config.json").read_text())
        assert config["model_type"] == arch
        if arch == "gpt2":
            bias = tensors["transformer.h.0.mlp.c_fc.bias"]
            assert not tensors["transformer.h.0.attn.c_attn.bias"].any() and bias.shape == (4 * cfg.d_model,)
            continue
        assert config["attention_bias"] is False and not any(k.endswith("bias") for k in tensors)
        assert tensors["model.layers.0.self_attn.q_norm.weight"].shape == (cfg.d_model // cfg.n_head,)
        params, _, _ = init_weights(tmp_path / f"{name}-hf", cfg)  # and back
        assert all(np.array_equal(params[n], model.get_param(n)) for n in model.param_names())


# --- with the peers: transformers and llama.cpp ---


@requires_peers
@requires_corpus
def test_transformers_and_llama_cpp_run_every_preset(trained: tuple[str, Path], tmp_path: Path) -> None:
    name, run = trained
    model, tok, cfg, _ = load(run)
    hf_class, gguf_arch = MODELS[name][1:]
    export(run, "hf", tmp_path / "hf")
    export(run, "gguf", tmp_path / "m.gguf")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, tok.vocab_size, size=(2, cfg.block_size))
    prompt = tok.encode("ROMEO:\nBut soft").astype(np.int64)
    greedy, ours = lmcore_greedy(model, prompt), model.forward(ids)[0]
    answer = peer(tmp_path, {"op": "hf", "dir": str(tmp_path / "hf"), "ids": ids.tolist(), "prompt": prompt.tolist(),
                             "new_tokens": NEW_TOKENS, "logits_out": str(tmp_path / "hf-logits.npy")})
    assert answer["class"] == hf_class
    diff = np.abs(np.load(tmp_path / "hf-logits.npy") - ours).max()
    print(f"transformers {name}: logits within {diff:.2e}")
    assert diff < 1e-4
    assert answer["generated"] == greedy
    answer = peer(tmp_path, {"op": "gguf", "file": str(tmp_path / "m.gguf"), "n_ctx": cfg.block_size,
                             "prompt": prompt.tolist(), "new_tokens": NEW_TOKENS, "ids": ids[0].tolist(),
                             "logits_out": str(tmp_path / "gguf-logits.npy")})
    assert answer["generated"] == greedy
    # ggml computes GELU from a float16 table (GGML_GELU_FP16), which moves a GPT-2 block's logits
    # by a few 1e-4 (2.5e-4 measured); the SiLU of Llama's and Qwen3's is computed in float32.
    diff = np.abs(np.load(tmp_path / "gguf-logits.npy") - ours[0]).max()
    print(f"llama.cpp {name}: logits within {diff:.2e}")
    assert diff < (1e-4 if gguf_arch != "gpt2" else 1e-3)
    if gguf_arch != "gpt2":
        import gguf  # (the project's venv has it: requirements.txt)

        reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
        assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == gguf_arch


# transformers' config class, model class and config of a tiny random model of each architecture;
# the flags an lmcore run that starts from it names.
SHAPE = dict(vocab_size=0, hidden_size=32, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=2,
             intermediate_size=128, max_position_embeddings=64)
ARCHITECTURES = {
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {**SHAPE, "hidden_act": "gelu_new", "layer_norm_eps": 1e-5,
                                                         "use_parallel_residual": False, "rope_parameters": {
                                                             "rope_type": "default", "rope_theta": 10000.0,
                                                             "partial_rotary_factor": 1.0}},
                 ["--rope", "--untied-head"]),
    "llama": ("LlamaConfig", "LlamaForCausalLM", {**SHAPE, "rms_norm_eps": 1e-5, "attention_bias": True},
              ["--rope", "--rmsnorm", "--swiglu", "--untied-head"]),
    "llama-no-bias": ("LlamaConfig", "LlamaForCausalLM", {**SHAPE, "rms_norm_eps": 1e-5, "tie_word_embeddings": True},
                      ["--rope", "--rmsnorm", "--swiglu", "--no-bias"]),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**SHAPE, "rms_norm_eps": 1e-5, "head_dim": 16},
              ["--rope", "--rmsnorm", "--swiglu", "--qk-norm", "--no-bias", "--untied-head"]),
}


@requires_peers
@requires_corpus
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_a_transformers_model_of_each_architecture_is_imported_and_fine_tuned(arch: str, tmp_path: Path) -> None:
    config_class, model_class, config, flags = ARCHITECTURES[arch]
    tok = bpe_tokenizer()
    where = tmp_path / arch
    ids = np.random.default_rng(1).integers(0, tok.vocab_size, size=(2, 64))
    peer(tmp_path, {"op": "make_model", "config_class": config_class, "model_class": model_class, "dir": str(where),
                    "config": {**config, "vocab_size": tok.vocab_size}, "ids": ids.tolist(),
                    "logits_out": str(tmp_path / "logits.npy")})
    (where / "tokenizer.json").write_text(hf_tokenizer(tok).to_str(), encoding="utf-8")
    shape = ["--d-model", "32", "--n-head", "2", "--n-layer", "2", "--block-size", "64"]
    options = {f.lstrip("-").replace("-", "_"): True for f in flags}
    cfg = RunConfig(d_model=32, n_head=2, n_layer=2, block_size=64, **options)
    params, tok2, base = init_weights(where, cfg)
    assert tok2 == tok and all(getattr(base, k) for k in options)
    model = new_model(cfg, tok.vocab_size)
    for name in model.param_names():
        model.set_param(name, params[name])
    assert np.abs(np.load(tmp_path / "logits.npy") - model.forward(ids)[0]).max() < 1e-4
    out = tmp_path / "tuned"
    assert run_main(["--tiny", *shape, *flags, "--max-iters", "5", "--eval-interval", "5", "--eval-iters", "1",
                     "--sample-tokens", "0", "--threads", "1", "--init-from", str(where), "--out-dir", str(out)]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(np.isfinite(m["train_loss"]) for m in metrics if "train_loss" in m)
