"""``python -m lmcore.chat``: talk with a chat model (one fine-tuned with ``--sft``) in the terminal.

    python -m lmcore.chat --out-dir out/chat --system "A scene from Hamlet. You are HORATIO; HAMLET speaks to you."

Each reply streams as it is sampled and ends at the model's end-of-turn token. The conversation
stays in the key/value cache between turns (``inference/chat_session.py``): a turn feeds only its own
tokens; when the window is full the oldest whole exchanges are dropped (the system line stays).
Commands: ``/reset`` (a new conversation, same system line), ``/system TEXT`` (a new system line;
``/system`` alone removes it), ``/quit``. Ctrl-C stops the reply being written, Ctrl-D leaves.
With a terminal, lines are edited with readline and kept in a history (``<cache>/chat_history``);
without one (a pipe), each input line is one user turn and each reply is printed on its own
line(s) (blank lines inside it collapsed) followed by one blank line, for scripts (a turn that
fails prints its error on stderr and an empty reply; commands print nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator
from typing import Any

from lmcore import cli
from lmcore.checkpoint.state import find_checkpoint, model_from_checkpoint
from lmcore.data.corpus import cache_dir
from lmcore.inference.chat_session import ChatSession

HELP = "/reset: new conversation; /system TEXT: new system line; /quit. Ctrl-C stops a reply, Ctrl-D leaves."


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lmcore.chat", description=__doc__.split("\n")[0])
    cli.add_checkpoint_flags(p)
    p.add_argument("--system", default=None, help="the system line the conversation starts with (default: none)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest reply, in tokens (default %(default)s)")
    cli.add_sampling_flags(p)
    p.add_argument("--seed", type=int, default=1337, help="seed of the sampling (default %(default)s)")
    cli.add_threads_flag(p)
    p.add_argument("--no-cache", action="store_true",
                   help="re-feed the whole conversation at every turn instead of keeping its cache (for checking)")
    return p


class Output:
    """The reply's text to stdout as it comes. In a pipe, newlines are held back until more text
    follows (so a reply never ends in, or holds, a blank line: one blank line ends a reply)."""

    def __init__(self, pipe: bool) -> None:
        self.pipe, self.held = pipe, ""

    def __call__(self, text: str) -> None:
        if self.pipe:
            text = self.held + text
            body = text.rstrip("\n")
            self.held = "\n" if len(body) < len(text) else ""
            while "\n\n" in body:
                body = body.replace("\n\n", "\n")
            text = body
        sys.stdout.write(text)
        sys.stdout.flush()

    def end(self, note: str = "") -> None:
        self.held = ""
        sys.stdout.write(note + ("\n\n" if self.pipe else "\n"))
        sys.stdout.flush()


@contextlib.contextmanager
def ctrl_c_stops() -> Iterator[dict[str, bool]]:
    """While a reply is written, SIGINT only asks it to stop (the session stays whole)."""
    flag = {"stop": False}

    def note(signum: int, frame: Any) -> None:
        flag["stop"] = True

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def start_readline() -> Any:
    """readline's editing and a history file kept between sessions (None if unavailable)."""
    try:
        import readline
    except ImportError:
        return None
    path = cache_dir() / "chat_history"
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(1000)
    return lambda: _save_history(readline, path)


def _save_history(readline: Any, path: Any) -> None:
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(path)


def command(session: ChatSession, line: str, interactive: bool) -> bool:
    """Run a /command; False for /quit."""
    name, _, arg = line.partition(" ")
    if name == "/quit":
        return False
    if name == "/reset":
        session.reset()
        note = "(a new conversation)"
    elif name == "/system":
        session.set_system(arg)
        note = f"(system line: {arg.strip()})" if arg.strip() else "(no system line)"
    else:
        raise ValueError(f"unknown command {name}; {HELP}")
    if interactive:
        print(note)
    return True


def read_line(interactive: bool) -> str | None:
    """The next input line (None at the end); Ctrl-C at a terminal's prompt gives an empty one."""
    if not interactive:
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    try:
        return input("> ")
    except EOFError:
        print()
        return None
    except KeyboardInterrupt:
        print()
        return ""


def converse(session: ChatSession, interactive: bool) -> None:
    while (line := read_line(interactive)) is not None:
        if not line.strip():
            continue
        if line.startswith("/"):
            try:
                if not command(session, line.strip(), interactive):
                    return
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
            continue
        try:
            out = Output(pipe=not interactive)
            with ctrl_c_stops() as flag:
                reply = session.reply(line, on_text=out, stop=lambda: flag["stop"])
            out.end({"stopped": " [stopped]", "window": " [the window is full]"}.get(reply.why, "") if interactive else "")
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            if not interactive:
                print("\n", flush=True)  # an empty reply: a script reading replies stays in step


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cli.use_threads(args.threads)
        model, tokenizer, _, _ = model_from_checkpoint(find_checkpoint(args.out_dir, args.checkpoint), weights_only=True)
        session = ChatSession(model, tokenizer, args.system, **cli.sampling(args), seed=args.seed,
                              max_new_tokens=args.max_new_tokens, keep_cache=not args.no_cache)
    except cli.REPORTED_ERRORS as e:
        return cli.report(e)
    interactive = sys.stdin.isatty()
    save_history = start_readline() if interactive else None
    if interactive:
        print(f"lmcore chat: {model.num_params:,} parameters, window {session.block} tokens. {HELP}")
    try:
        converse(session, interactive)
    except KeyboardInterrupt:  # Ctrl-C outside a reply, in a pipe
        return 130
    finally:
        if save_history is not None:
            save_history()
    return 0


if __name__ == "__main__":
    sys.exit(main())
