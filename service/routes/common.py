"""What the routers share: the API-key check, and the error answers and headers the OpenAPI document shows."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lsmseg.service.errors import ApiError
from lsmseg.service.schemas import ErrorBody

_bearer = HTTPBearer(auto_error=False, description="needed only when the server sets LSMSEG_API_KEY")

OPEN = {"security": []}  # openapi_extra of the routes anyone may call (probes, metrics)
RETRY_AFTER = {
    "Retry-After": {
        "description": "whole seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_ERRORS = {
    400: "Bad image, base64, JSON, body framing or Host name",
    401: "Missing or wrong API key",
    404: "Unknown vocabulary or route",
    408: "The request body did not arrive in time (LSMSEG_BODY_TIMEOUT_S)",
    409: "The name is taken, or the vocabulary is built in",
    413: "Body or image too large (LSMSEG_MAX_REQUEST_BYTES, LSMSEG_MAX_IMAGE_PIXELS)",
    415: "Not PNG, JPEG or WebP, or not multipart/form-data or JSON",
    422: "Invalid fields (the message and `details` say which)",
    503: "The model is loading or failed, the queue is full, or no result came in time",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these error statuses: the error body, and Retry-After on 503."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {"model": ErrorBody, "description": _ERRORS[status]}
        if status == 503:
            response["headers"] = RETRY_AFTER
        if status == 401:
            response["headers"] = {
                "WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}
            }
        responses[status] = response
    return responses


async def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    expected = request.app.state.service.settings.api_key
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise ApiError(
            401, "unauthorized", "missing or wrong API key; send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )


def protected_router(tag: str) -> APIRouter:
    """A router whose routes need the API key (when one is set)."""
    return APIRouter(tags=[tag], dependencies=[Depends(require_api_key)], responses=error_responses(401))
