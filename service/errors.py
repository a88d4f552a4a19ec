"""One error format for every failure: `{"error": {"code", "message"}}`, never an HTML page or a bare 500."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from lsmseg.model import UnsupportedK
from lsmseg.prompt_cache import NameConflictError, NotFoundError, ValidationError
from lsmseg.prompt_cache.names import EMPTY_CLASS_LIST
from lsmseg.service.exceptions import BuiltinVocabulary, Unavailable

logger = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "unavailable",
}
CLIENT_CLOSED_REQUEST = 499
CLOSE_CONNECTION = {"Connection": "close"}  # for answers sent before the body was read to its end
_MAX_DETAILS = 10
_MAX_MESSAGE_CHARS = 300


class ApiError(StarletteHTTPException):
    """An error answer; raise it anywhere below a route and the handler below writes the JSON body.
    (An HTTPException, so that FastAPI passes it on unchanged when it is raised while a body is read.)"""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        details: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(status, message, dict(headers or {}))
        self.status = status
        self.code = code
        self.message = message
        self.details = list(details) if details else None


class RequestTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        message = f"the request body is larger than {limit} bytes"
        super().__init__(413, "request_too_large", message, headers=CLOSE_CONNECTION)


class BodyTimeout(ApiError):
    def __init__(self, limit_s: float) -> None:
        # The rest of the body may still come: the connection cannot carry another request.
        message = f"the request body did not arrive within {limit_s:g} s"
        super().__init__(408, "body_timeout", message, headers=CLOSE_CONNECTION)


def retry_after(seconds: float) -> dict[str, str]:
    """The Retry-After header: whole seconds, at least one."""
    return {"Retry-After": str(max(1, int(seconds + 0.999)))}


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    details: Sequence[dict[str, Any]] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = list(details)
    return JSONResponse({"error": body}, status_code=status, headers=dict(headers or {}))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(Unavailable, _unavailable)
    app.add_exception_handler(BuiltinVocabulary, _builtin_vocabulary)
    app.add_exception_handler(UnsupportedK, _unsupported_k)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ValidationError, _prompt_cache_error)
    app.add_exception_handler(NotFoundError, _prompt_cache_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnected)
    # A genuine bug still answers in the API's format (Starlette logs the traceback and re-raises it).
    app.add_exception_handler(Exception, _unexpected_error)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers, exc.details)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Unavailable)
    # An admission refusal comes before the body is read; uvicorn then discards the body as it arrives and
    # keeps the connection for the client's next try (cheaper than a new one), or closes it after its
    # keep-alive timeout when no body comes.
    return error_response(503, exc.code, exc.message, retry_after(exc.retry_after_s))


async def _builtin_vocabulary(request: Request, exc: Exception) -> JSONResponse:
    return error_response(409, "builtin_vocab", _clip(str(exc)))


async def _unsupported_k(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UnsupportedK)
    fixed = exc.graph_k
    return error_response(
        422,
        "unsupported_top_k",
        f"this worker runs the ONNX backend, whose graph keeps k={fixed} classes: omit top_k or send {fixed} "
        "(other values need a worker with LSMSEG_BACKEND=torch)",
    )


async def _prompt_cache_error(request: Request, exc: Exception) -> JSONResponse:
    message = _clip(str(exc))
    if isinstance(exc, NameConflictError):
        return error_response(409, "name_conflict", message)
    if isinstance(exc, NotFoundError):
        return error_response(404, "vocab_not_found", message)
    return error_response(422, "validation_error", message)


def _clip(message: str) -> str:
    """Messages may quote the client's input: never send back more than a few hundred characters."""
    return message if len(message) <= _MAX_MESSAGE_CHARS else message[:_MAX_MESSAGE_CHARS] + "…"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        return error_response(400, "invalid_json", "the request body is not valid JSON")
    # Only where and what: echoing `input` back could return megabytes of the client's own data.
    details = [
        {"loc": [str(part) for part in error.get("loc", ())], "message": _validation_message(error)}
        for error in errors[:_MAX_DETAILS]
    ]
    summary = "; ".join(f"{'.'.join(detail['loc'])}: {detail['message']}" for detail in details[:3])
    return error_response(422, "validation_error", summary or "invalid request", details=details)


def _validation_message(error: dict[str, Any]) -> str:
    # The schema's minimum of one class says it in pydantic's words; say it as the class-list check does.
    if error.get("type") == "too_short" and tuple(error.get("loc", ()))[-1:] == ("classes",):
        return EMPTY_CLASS_LIST
    return str(error.get("msg", "")).removeprefix("Value error, ")[:200]


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):  # FastAPI reading a JSON body
        return error_response(400, "invalid_json", "the request body nests JSON too deeply")
    code = _STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.url.path[:200]!r}; see /docs"
    return error_response(exc.status_code, code, message, exc.headers)


async def _client_disconnected(request: Request, exc: Exception) -> Response:
    # The client left while sending its body: nobody reads this; 499 (nginx's code) keeps metrics honest.
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error; the incident was logged")
