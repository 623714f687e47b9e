"""Run by the interop tests (tests/test_export.py) in the peers' python (scripts/peers.sh), never by
lmcore's: loads an exported model in transformers or llama.cpp, or makes a tiny random GPT-2 with
transformers, and answers in JSON on stdout (logits as .npy files). One request per run, given as
a JSON file: {"op": "hf" | "gguf" | "make_model", ...}. No network: HF_HUB_OFFLINE is set."""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402


def as_ids(x) -> list[int]:
    """apply_chat_template's ids, whether it returns a list or a mapping with input_ids."""
    if hasattr(x, "keys"):
        x = x["input_ids"]
    x = x.tolist() if hasattr(x, "tolist") else list(x)
    return [int(i) for i in (x[0] if x and isinstance(x[0], list) else x)]


def hf(req: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    torch.set_num_threads(1)
    out: dict = {}
    tok = AutoTokenizer.from_pretrained(req["dir"])
    out["encoded"] = [tok.encode(t, add_special_tokens=False) for t in req.get("texts", [])]
    out["decoded"] = [tok.decode(ids) for ids in req.get("decode", [])]
    if req.get("chat"):
        out["chat_ids"] = as_ids(tok.apply_chat_template(req["chat"], tokenize=True, add_generation_prompt=True))
    if not req.get("tokenizer_only"):
        model = AutoModelForCausalLM.from_pretrained(req["dir"], dtype=torch.float32)
        model.eval()
        out["class"] = type(model).__name__
        with torch.no_grad():
            logits = model(torch.tensor(req["ids"], dtype=torch.long)).logits
            np.save(req["logits_out"], logits.numpy().astype(np.float32))
            prompt = torch.tensor([req["prompt"]], dtype=torch.long)
            gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=req["new_tokens"],
                                 do_sample=False, min_new_tokens=req["new_tokens"])
        out["generated"] = gen[0].tolist()
        out["generated_text"] = tok.decode(gen[0].tolist())
    return out


def gguf(req: dict) -> dict:
    from llama_cpp import Llama

    # logits_all: llama-cpp-python keeps the logits (its `scores`) only then.
    # Keys and values cached in float32 (type 0), not llama.cpp's default float16, so that logits compare.
    llm = Llama(model_path=req["file"], n_ctx=req["n_ctx"], n_batch=req["n_ctx"], n_threads=1, logits_all=True,
                type_k=0, type_v=0, verbose=False)
    # lmcore's token ids go in directly (no llama.cpp tokenization), greedy as lmcore's generate.
    tokens = list(req["prompt"])
    llm.eval(tokens)
    for _ in range(req["new_tokens"]):
        nxt = int(np.argmax(np.asarray(llm.scores[llm.n_tokens - 1])))
        tokens.append(nxt)
        llm.eval([nxt])
    text = llm.detokenize(tokens[len(req["prompt"]):]).decode("utf-8", "replace")
    if req.get("ids"):  # the logits of every position of one row of ids, from a fresh context
        llm.reset()
        llm.eval(list(req["ids"]))
        np.save(req["logits_out"], np.asarray(llm.scores[:len(req["ids"])], dtype=np.float32))
    encoded = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) for t in req.get("texts", [])]
    return {"generated": tokens, "generated_text": text, "n_vocab": llm.n_vocab(), "encoded": encoded}


def make_model(req: dict) -> dict:
    """A tiny random model of transformers' class ``model_class`` (config ``config_class``), saved."""
    import torch
    import transformers

    torch.manual_seed(req.get("seed", 0))
    config = getattr(transformers, req["config_class"])(**req["config"])
    model = getattr(transformers, req["model_class"])(config)
    with torch.no_grad():  # biases and norm gains start at 0 and 1: move them so they are tested
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(req["dir"], safe_serialization=True)
    with torch.no_grad():
        logits = model(torch.tensor(req["ids"], dtype=torch.long)).logits
    np.save(req["logits_out"], logits.numpy().astype(np.float32))
    return {"saved": sorted(os.listdir(req["dir"]))}


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        request = json.load(f)
    result = {"hf": hf, "gguf": gguf, "make_model": make_model}[request["op"]](request)
    print(json.dumps(result))
