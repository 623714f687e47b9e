"""``python -m lmcore.serve``: an OpenAI-compatible HTTP server for a trained model.

    python -m lmcore.serve --out-dir out/chat --port 8000 --parallel 4

``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` (a chat model: one fine-tuned
with ``--sft``), ``POST /v1/completions`` (any model), streaming as OpenAI's Server-Sent Events,
and a chat page at ``/``. ``--parallel N`` sequences are generated at once, each in its own
model's key/value cache, one token each in turn; ``--queue M`` more wait, and a request beyond
those is answered 503 at once. Ctrl-C or SIGTERM stops it (open streams end with an error event).
The parts are in ``lmcore/serving/``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from pathlib import Path

from lmcore import cli
from lmcore.checkpoint.state import find_checkpoint, model_from_checkpoint
from lmcore.conversation.template import CHAT_TEMPLATE, END


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lmcore.serve", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint_file", nargs="?", metavar="CHECKPOINT", help="a checkpoint file (or give --out-dir)")
    cli.add_checkpoint_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s; 0: any free one, printed)")
    p.add_argument("--api-key", default=os.environ.get("LMCORE_API_KEY") or None,
                   help="require 'Authorization: Bearer KEY' on /v1/ (default: $LMCORE_API_KEY, else none)")
    p.add_argument("--parallel", type=int, default=4, help="sequences generated at once (default %(default)s)")
    p.add_argument("--queue", type=int, default=16,
                   help="requests that may wait for a sequence; more get 503 at once (default %(default)s)")
    p.add_argument("--model-name", default=None, help="the model's id in the API (default: the checkpoint's folder name)")
    cli.add_threads_flag(p)
    return p


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use is a one-line error (and port 0 works)."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(512)
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def model_id(path: Path, name: str | None) -> str:
    return name or (path.parent.resolve().name if path.name == "ckpt.safetensors" else path.stem) or "lmcore"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        import uvicorn

        from lmcore.serving.app import Served, build_app
        from lmcore.serving.worker import Worker
    except ImportError as e:
        print(f"error: serving needs starlette and uvicorn ({e}); pip install 'lmcore[serve]'", file=sys.stderr)
        return 2
    try:
        if args.parallel < 1 or args.queue < 0:
            raise ValueError(f"--parallel must be at least 1 and --queue at least 0 (got {args.parallel}, {args.queue})")
        if args.api_key is not None and not args.api_key.strip():
            raise ValueError("--api-key must not be empty")
        cli.use_threads(args.threads)
        path = find_checkpoint(args.out_dir, args.checkpoint or args.checkpoint_file)
        # One model per sequence: each has its own key/value cache (the weights are small beside it).
        models, tokenizer = [], None
        for _ in range(args.parallel):
            model, tokenizer, _, _ = model_from_checkpoint(path, weights_only=True)
            models.append(model)
        sock = listen(args.host, args.port)
    except cli.REPORTED_ERRORS as e:
        return cli.report(e)
    assert tokenizer is not None
    chat = tokenizer.chat_template == CHAT_TEMPLATE
    window = int(models[0].config["block_size"])
    worker = Worker(models, tokenizer, window, tokenizer.special_id(END) if chat else None, args.queue)
    served = Served(model_id(path, args.model_name), int(path.stat().st_mtime), tokenizer, window, worker,
                    args.api_key, models[0].num_params)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            worker.begin_close()  # open streams end now, so the graceful shutdown has nothing to wait for
            super().handle_exit(sig, frame)

    config = uvicorn.Config(build_app(served), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=5)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"lmcore serve: {served.model_id} ({served.params:,} parameters, window {window} tokens, "
          f"{'chat and completions' if chat else 'completions only: no chat template'}) on http://{shown}:{port}/ "
          f"(parallel {args.parallel}, queue {args.queue})", flush=True)
    # uvicorn re-raises the signal that stopped it once it is done: these handlers take it instead.
    stopped: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, f: stopped.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    worker.start()
    start = time.monotonic()
    try:
        Server(config).run(sockets=[sock])
    finally:
        worker.close()
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"lmcore serve: stopped after {time.monotonic() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
