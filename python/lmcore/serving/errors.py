"""Errors as OpenAI sends them: ``{"error": {"message", "type", "param", "code"}}`` with a status.

Every refusal of a request is an ``ApiError``; the app turns it into JSON (or, once a stream has
begun, into a ``data: {"error": ...}`` event). 4xx is the client's fault, 5xx the server's (clients
retry those).
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400: the request itself is wrong."""
    return ApiError(400, message, "invalid_request_error", param, code)


def server_error(message: str, status: int = 500, code: str | None = None) -> ApiError:
    return ApiError(status, message, "server_error", None, code)


def overloaded() -> ApiError:
    return server_error("the server is busy: every slot is generating and the queue is full; retry later",
                        503, "server_overloaded")


def shutting_down() -> ApiError:
    return server_error("the server is shutting down", 503, "server_shutting_down")
