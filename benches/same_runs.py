"""The same short runs through the four commands (char, resumed, BPE, every block option with Muon,
--sft from the char run; generate, chat, export), written to one JSON file: hashes of the weights,
the checkpoint's tensors and its metadata (wall time left out), the losses and everything printed.
Two builds made the same runs when their files are equal (issue 24's refactor was checked so):

    LMCORE_DATA_DIR=../shared/data PYTHONPATH=OTHER_CHECKOUT/python .venv/bin/python benches/same_runs.py old.json
    LMCORE_DATA_DIR=../shared/data .venv/bin/python benches/same_runs.py new.json && cmp old.json new.json
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import safetensors.numpy

PY = sys.executable
TIMING = {"elapsed_s", "tok_s", "rss_mb", "arena_mb"}
QUICK = ["--eval-iters", "4", "--log-interval", "5", "--threads", "1"]
RUNS = {
    "char": ["--tiny", "--max-iters", "40", "--eval-interval", "20", "--ckpt-interval", "20", "--sample-tokens", "80"],
    "char_resumed": None,  # char, then --resume to 60
    "bpe": ["--tiny", "--tokenizer", "bpe", "--vocab-size", "300", "--max-iters", "30", "--eval-interval", "15",
            "--sample-tokens", "40"],
    "modern": ["--tiny", "--rope", "--rmsnorm", "--qk-norm", "--relu2", "--untied-head", "--zero-init",
               "--logit-softcap", "15", "--optimizer", "muon", "--schedule", "wsd", "--eval-full", "--dropout", "0.1",
               "--max-iters", "30", "--eval-interval", "15", "--sample-tokens", "40"],
    "sft": ["--tiny", "--sft", "--dataset", "plays-dialogue", "--max-iters", "20", "--eval-interval", "10",
            "--sample-tokens", "40"],
}


def tensors_digest(path: Path) -> str:
    tensors = safetensors.numpy.load_file(str(path))
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode() + tensors[name].tobytes())
    return h.hexdigest()


def meta_of(path: Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), "numpy") as f:
        meta = json.loads(f.metadata()["lmcore"])
    for key in ("elapsed_s", "state_sha256"):
        meta.pop(key, None)
    meta["dataset"].pop("path", None)
    return meta


def run(args: list[str], env: dict) -> str:
    p = subprocess.run([PY, "-m", "lmcore.train", *args, *QUICK], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return "\n".join(line for line in p.stdout.splitlines() if not line.startswith(("run:", "done:", "target")))


def record(out: Path, stdout: str) -> dict:
    metrics = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
               for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"weights": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest(),
            "ckpt_tensors": tensors_digest(out / "ckpt.safetensors"),
            "ckpt_meta": hashlib.sha256(json.dumps(meta_of(out / "ckpt.safetensors"), sort_keys=True).encode()).hexdigest(),
            "metrics": metrics, "stdout": stdout}


def main() -> None:
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "XDG_CACHE_HOME": f"{tmp}/cache"}
        for name, args in RUNS.items():
            out = Path(tmp) / name
            if name == "char_resumed":
                stdout = run(RUNS["char"] + ["--out-dir", str(out), "--max-iters", "20"], env)
                stdout += run(RUNS["char"] + ["--out-dir", str(out), "--resume", "--max-iters", "40"], env)
            elif name == "sft":
                stdout = run(args + ["--out-dir", str(out), "--init-from", str(Path(tmp) / "char" / "ckpt.safetensors")], env)
            else:
                stdout = run(args + ["--out-dir", str(out)], env)
            result[name] = record(out, stdout)
        gen = subprocess.run([PY, "-m", "lmcore.generate", "--out-dir", f"{tmp}/bpe", "--prompt", "ROMEO:",
                              "--max-new-tokens", "60", "--num-samples", "2", "--top-k", "20", "--threads", "1"],
                             env=env, capture_output=True, text=True)
        chat = subprocess.run([PY, "-m", "lmcore.chat", "--out-dir", f"{tmp}/sft", "--max-new-tokens", "30",
                               "--threads", "1", "--top-p", "0.9"], input="Good morrow\nHow now?\n",
                              env=env, capture_output=True, text=True)
        exp = subprocess.run([PY, "-m", "lmcore.export", "--out-dir", f"{tmp}/char", "--to", "hf", f"{tmp}/hf"],
                             env=env, capture_output=True, text=True)
        result["generate"] = [gen.returncode, gen.stdout, gen.stderr]
        result["chat"] = [chat.returncode, chat.stdout, chat.stderr]
        result["export"] = [exp.returncode, {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                                             for p in sorted(Path(f"{tmp}/hf").iterdir())}]
    Path(sys.argv[1]).write_text(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
