"""The HTTP side: Starlette routes over the engine's worker.

A completion request is read (``body.py``), checked and tokenized (``schemas.py``) and queued
(``worker.py``) before any byte of the response is sent, so every refusal is a plain JSON error
with its status; once a stream has begun, an error is a ``data: {"error": ...}`` event. A task
waits for the client's disconnect meanwhile and cancels the job, streaming or not.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from lmcore.serving.body import parse_json_object, read_body
from lmcore.serving.errors import ApiError, server_error
from lmcore.serving.responses import DONE, Shapes, sse
from lmcore.serving.schemas import Generation, parse_request
from lmcore.serving.worker import Job, Worker
from lmcore.tokenizer import Tokenizer

STATIC = Path(__file__).resolve().parent / "static"
# The page loads nothing from anywhere else (no CDN), and says so to the browser.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:", "Cache-Control": "no-cache"}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class Served:
    model_id: str
    created: int
    tokenizer: Tokenizer
    window: int
    worker: Worker
    api_key: str | None
    params: int


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def _check_key(served: Served, request: Request) -> None:
    if served.api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), served.api_key.encode()):
        what = "No API key provided" if not given else "Incorrect API key provided"
        raise ApiError(401, f"{what}: send the server's --api-key as 'Authorization: Bearer KEY'",
                       "invalid_request_error", None, "invalid_api_key")


async def _watch_disconnect(request: Request, job: Job) -> None:
    """Wait for the client to leave (after the body, ``receive`` yields only that) and cancel its job."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel()


def build_app(served: Served) -> Starlette:
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def model_card() -> dict[str, Any]:
        return {"id": served.model_id, "object": "model", "created": served.created, "owned_by": "lmcore",
                "context_length": served.window, "parameters": served.params}

    async def models(request: Request) -> Response:
        _check_key(served, request)
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def one_model(request: Request) -> Response:
        _check_key(served, request)
        name = request.path_params["name"]
        if name != served.model_id:
            raise ApiError(404, f"The model '{name[:100]}' does not exist", "invalid_request_error", "model",
                           "model_not_found")
        return JSONResponse(model_card())

    async def complete(request: Request, kind: str) -> Response:
        _check_key(served, request)
        doc = parse_json_object(await read_body(request))
        gen = parse_request(doc, kind, served.tokenizer, served.model_id, served.window)
        if await request.is_disconnected():  # gone already (a page's Stop before the server got to it)
            return Response(status_code=499)
        job = Job(gen, asyncio.get_running_loop())
        served.worker.submit(job)  # 503 at once when full
        watcher = asyncio.create_task(_watch_disconnect(request, job))
        shapes = Shapes(kind, served.model_id)
        if gen.stream:
            return StreamingResponse(_stream(job, gen, shapes, watcher), media_type="text/event-stream",
                                     headers=SSE_HEADERS)
        try:
            return await _whole(job, shapes)
        finally:
            watcher.cancel()
            job.cancel()  # (nothing, if it ended)

    async def chat(request: Request) -> Response:
        return await complete(request, "chat")

    async def completions(request: Request) -> Response:
        return await complete(request, "completion")

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def api_error(request: Request, e: Exception) -> Response:
        assert isinstance(e, ApiError)
        return error_response(e)

    async def http_error(request: Request, e: Exception) -> Response:
        assert isinstance(e, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return error_response(ApiError(e.status_code, message, "invalid_request_error", None, code))

    async def fault(request: Request, e: Exception) -> Response:  # a bug of the server's: logged, a 500 to the client
        return error_response(server_error(f"internal server error ({type(e).__name__})"))

    routes = [
        Route("/", page), Route("/health", health), Route("/v1/models", models),
        Route("/v1/models/{name:path}", one_model), Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: fault})


async def _whole(job: Job, shapes: Shapes) -> Response:
    texts: list[str] = []
    while True:
        event = await job.events.get()
        if event[0] == "text":
            texts.append(event[1])
        elif event[0] == "error":
            return error_response(event[1])
        else:
            _, finish, prompt_tokens, completion_tokens = event
            if finish == "cancelled":  # the client left: nobody reads this
                return Response(status_code=499)
            return JSONResponse(shapes.whole("".join(texts), finish, prompt_tokens, completion_tokens))


async def _stream(job: Job, gen: Generation, shapes: Shapes, watcher: asyncio.Task[None]) -> AsyncIterator[bytes]:
    usage = gen.include_usage
    try:
        if gen.kind == "chat":
            yield sse(shapes.chunk(first=True, with_usage=usage))
        while True:
            event = await job.events.get()
            if event[0] == "text":  # one chunk per token's text, as OpenAI streams
                yield sse(shapes.chunk(text=event[1], with_usage=usage))
            elif event[0] == "error":
                yield sse(event[1].body())
                return
            else:
                _, finish, prompt_tokens, completion_tokens = event
                if finish == "cancelled":
                    return
                yield sse(shapes.chunk(finish=finish, with_usage=usage))
                if usage:
                    yield sse(shapes.usage_chunk(prompt_tokens, completion_tokens))
                yield DONE
                return
    finally:  # the end, or the client left (the generator is closed): stop generating either way
        watcher.cancel()
        job.cancel()
