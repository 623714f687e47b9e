"""A request's JSON fields checked, in OpenAI's terms, into a ``Generation``.

Every field OpenAI defines for the two endpoints is known: those lmcore implements are checked
(type, range) and used; those it does not are accepted only at their neutral value (a front-end
that sends ``frequency_penalty: 0`` works, one that asks for 0.5 is told it is not supported);
a field no OpenAI endpoint has is refused by name, as OpenAI does. The prompt is tokenized here,
so a prompt longer than the model's window is refused before anything is queued or sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmcore.conversation.template import CHAT_TEMPLATE, apply_chat_template, message_problem
from lmcore.serving.errors import ApiError, invalid
from lmcore.tokenizer import Tokenizer

MAX_STOPS = 4  # as OpenAI
SAMPLING = ("model", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "stream", "stream_options", "n")
# Fields lmcore does not implement, and the values that mean "not asked for".
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0, 0.0), "presence_penalty": (None, 0, 0.0), "logprobs": (None, False),
    "top_logprobs": (None, 0), "logit_bias": (None, {}), "tools": (None, []), "tool_choice": (None, "none", "auto"),
    "functions": (None, []), "function_call": (None, "none", "auto"), "response_format": (None, {"type": "text"}),
    "echo": (None, False), "best_of": (None, 1), "suffix": (None, ""), "store": (None, False),
    "modalities": (None, ["text"]), "audio": (None,), "prediction": (None,), "reasoning_effort": (None,),
}
FREE = ("user", "metadata", "service_tier", "parallel_tool_calls")  # any value: they change nothing here
CHAT_ONLY = ("messages", "max_completion_tokens", "tools", "tool_choice", "functions", "function_call",
             "response_format", "parallel_tool_calls", "store", "modalities", "audio", "prediction",
             "reasoning_effort", "metadata", "service_tier")
COMPLETION_ONLY = ("prompt", "echo", "best_of", "suffix")


@dataclass
class Generation:
    kind: str  # "chat" or "completion"
    model: str
    prompt: np.ndarray  # int64 token ids
    max_tokens: int | None
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False


def _type_name(v: Any) -> str:
    return "null" if v is None else {bool: "boolean", int: "integer", float: "number", str: "string",
                                     list: "array", dict: "object"}.get(type(v), type(v).__name__)


def _number(doc: dict[str, Any], name: str, lo: float, hi: float, lo_open: bool = False) -> float | None:
    v = doc.get(name)
    if v is None:
        return None
    if type(v) not in (int, float):
        raise invalid(f"{name} must be a number, got {_type_name(v)}", name, "invalid_type")
    if not ((lo < v if lo_open else lo <= v) and v <= hi):
        raise invalid(f"{name} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v}", name, "invalid_value")
    return float(v)


def _integer(doc: dict[str, Any], name: str, lo: int | None = None) -> int | None:
    v = doc.get(name)
    if v is None:
        return None
    if type(v) is float and v.is_integer():
        v = int(v)
    if type(v) is not int:
        raise invalid(f"{name} must be an integer, got {_type_name(v)}", name, "invalid_type")
    if lo is not None and v < lo:
        raise invalid(f"{name} must be at least {lo}, got {v}", name, "invalid_value")
    return v


def _boolean(doc: dict[str, Any], name: str) -> bool:
    v = doc.get(name)
    if v is not None and type(v) is not bool:
        raise invalid(f"{name} must be a boolean, got {_type_name(v)}", name, "invalid_type")
    return bool(v)


def _stops(v: Any) -> list[str]:
    stops = [] if v is None else [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise invalid(f"stop must be a string or an array of strings, got {_type_name(v)}", "stop", "invalid_type")
    if len(stops) > MAX_STOPS:
        raise invalid(f"stop holds at most {MAX_STOPS} strings, got {len(stops)}", "stop", "invalid_value")
    return [s for s in stops if s]


def _check_fields(doc: dict[str, Any], kind: str) -> None:
    other = COMPLETION_ONLY if kind == "chat" else CHAT_ONLY
    for name, value in doc.items():
        known = name in SAMPLING or name in NEUTRAL or name in FREE or name in CHAT_ONLY or name in COMPLETION_ONLY
        if not known or name in other:
            raise invalid(f"Unrecognized request argument supplied: {name[:60]}", name[:60], "unknown_parameter")
        if name in NEUTRAL and not any(type(value) is type(n) and value == n for n in NEUTRAL[name]):
            raise invalid(f"{name} is not supported by this server (only its default)", name, "unsupported_value")


def _sampling(doc: dict[str, Any], kind: str, served: str) -> dict[str, Any]:
    model = doc.get("model", served)
    if not isinstance(model, str):
        raise invalid(f"model must be a string, got {_type_name(model)}", "model", "invalid_type")
    if model != served:
        raise ApiError(404, f"The model '{model[:100]}' does not exist (this server serves '{served}')",
                       "invalid_request_error", "model", "model_not_found")
    n = _integer(doc, "n", 1)
    if n not in (None, 1):
        raise invalid(f"n must be 1 (one choice per request), got {n}", "n", "invalid_value")
    max_tokens = _integer(doc, "max_tokens", 1)
    if kind == "chat" and doc.get("max_completion_tokens") is not None:
        max_tokens = _integer(doc, "max_completion_tokens", 1)
    temperature = _number(doc, "temperature", 0, 2)
    top_k = _integer(doc, "top_k")
    seed = _integer(doc, "seed")
    stream = _boolean(doc, "stream")
    options = doc.get("stream_options")
    if options is not None:
        if not stream:
            raise invalid("stream_options is only allowed when stream is true", "stream_options", "invalid_value")
        if not isinstance(options, dict) or set(options) - {"include_usage", "include_obfuscation"}:
            raise invalid("stream_options must be an object with include_usage", "stream_options", "invalid_value")
    return dict(model=model, max_tokens=max_tokens, temperature=1.0 if temperature is None else temperature,
                top_p=_number(doc, "top_p", 0, 1, lo_open=True), top_k=top_k if top_k and top_k > 0 else None,
                stop=_stops(doc.get("stop")), seed=None if seed is None else seed % 2**64, stream=stream,
                include_usage=_boolean(options or {}, "include_usage"))


def _text_content(content: Any, i: int) -> Any:
    """OpenAI's content as a string, or as an array of text parts (joined)."""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise invalid(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            parts.append(part["text"])
        return "".join(parts)
    return content


def chat_prompt(doc: dict[str, Any], tokenizer: Tokenizer) -> np.ndarray:
    if tokenizer.chat_template != CHAT_TEMPLATE:
        raise invalid("this model has no chat template (it was not fine-tuned with --sft); use /v1/completions",
                      "messages", "model_not_chat")
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid(f"messages must be a non-empty array, got {_type_name(messages)}", "messages",
                      "invalid_type" if not isinstance(messages, list) else "invalid_value")
    plain = []
    for i, m in enumerate(messages):
        if isinstance(m, dict):
            role = "system" if m.get("role") == "developer" else m.get("role")
            m = {"role": role, "content": _text_content(m.get("content"), i)}
        if (problem := message_problem(m)) is not None:
            raise invalid(f"messages[{i}]: {problem}", f"messages[{i}]")
        plain.append(m)
    try:
        return apply_chat_template(tokenizer, plain, add_generation_prompt=True).ids
    except ValueError as e:  # content the tokenizer cannot encode
        raise invalid(str(e), "messages") from None


def completion_prompt(doc: dict[str, Any], tokenizer: Tokenizer) -> np.ndarray:
    prompt = doc.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        try:
            ids = np.asarray(tokenizer.encode(prompt), np.int64)
        except ValueError as e:
            raise invalid(f"prompt: {e}", "prompt") from None
    elif isinstance(prompt, list) and all(type(t) is int for t in prompt):
        ids = np.asarray(prompt, np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
            raise invalid(f"prompt: token ids must be in [0, {tokenizer.vocab_size})", "prompt", "invalid_value")
    elif isinstance(prompt, list):
        raise invalid("prompt: one prompt per request (a string, or an array of token ids)", "prompt", "invalid_value")
    else:
        raise invalid(f"prompt must be a string or an array of token ids, got {_type_name(prompt)}", "prompt",
                      "invalid_type")
    if len(ids) == 0:
        raise invalid("prompt must not be empty", "prompt", "invalid_value")
    return ids


def parse_request(doc: dict[str, Any], kind: str, tokenizer: Tokenizer, served: str, window: int) -> Generation:
    """The request ``doc`` of a ``kind`` ("chat" or "completion") endpoint, checked; ApiError if not."""
    _check_fields(doc, kind)
    sampling = _sampling(doc, kind, served)
    prompt = chat_prompt(doc, tokenizer) if kind == "chat" else completion_prompt(doc, tokenizer)
    if len(prompt) > window:
        what = "messages" if kind == "chat" else "prompt"
        raise invalid(f"This model's maximum context length is {window} tokens. However, your {what} resulted in "
                      f"{len(prompt)} tokens.", what, "context_length_exceeded")
    return Generation(kind=kind, prompt=prompt, **sampling)
