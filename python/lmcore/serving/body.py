"""A request body: at most ``MAX_BODY`` bytes (413 past it, told by Content-Length or found while
reading), UTF-8, and one JSON object; anything else is a 400 that says which."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

from lmcore.serving.errors import ApiError, invalid

MAX_BODY = 1 << 20  # 1 MB: far above any prompt a model's window holds


def _too_large() -> ApiError:
    return ApiError(413, f"the request body is larger than {MAX_BODY} bytes", "invalid_request_error", None,
                    "request_too_large")


def _no_constants(name: str) -> Any:
    # json accepts NaN and Infinity, which are not JSON and which no sampling setting may be.
    raise ValueError(f"{name} is not valid JSON")


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise _too_large()
    chunks, size = [], 0
    try:
        async for chunk in request.stream():  # a chunked body has no Content-Length: count as it comes
            size += len(chunk)
            if size > MAX_BODY:
                raise _too_large()
            chunks.append(chunk)
    except ClientDisconnect:  # nobody reads the answer; this only keeps it out of the faults
        raise invalid("the client disconnected before the end of the body") from None
    return b"".join(chunks)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise invalid("the request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(f"the request body is not UTF-8 (byte {e.start})") from None
    try:
        doc = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise invalid("the request body is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError is one
        raise invalid(f"the request body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise invalid(f"the request body must be a JSON object, got {type(doc).__name__}")
    return doc
