"""The ASGI edge, before any route: Host names served, unambiguous body framing, the body's size and read
time, and `X-Content-Type-Options: nosniff` on every answer.

uvicorn (h11) parses HTTP/1.1 before this runs and itself answers 400 (text/plain, connection closed) to
conflicting or non-numeric Content-Length values and 501 to a Transfer-Encoding other than chunked; equal
duplicates ("5" twice, or "5, 5") it merges into one, as RFC 9112 §6.3 allows. It accepts Content-Length
together with chunked, reading the body as chunked: that is refused here with 400 JSON and the connection
closed, so that a proxy in front which framed the request by Content-Length cannot smuggle a second request
through this worker.
The size limit checks Content-Length up front and counts the stream as it arrives (chunked uploads have no
Content-Length, and a client may lie about it); the read-time limit covers the whole body, so a client
sending a byte a second cannot hold a worker's place for long.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lsmseg.service.errors import CLOSE_CONNECTION, BodyTimeout, RequestTooLarge, error_response

_NOSNIFF = (b"x-content-type-options", b"nosniff")


class RequestGuardMiddleware:
    def __init__(
        self, app: ASGIApp, *, max_bytes: int, body_timeout_s: float, hosts: list[str] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s
        self.hosts = None if hosts is None else frozenset(hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), _NOSNIFF]}
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send_nosniff)
            return
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s
        received = 0
        body_done = False

        async def guarded_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # afterwards only a disconnect can come, whenever it comes
                return await receive()
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.0))
            except TimeoutError:
                # Raised inside whatever reads the body, i.e. inside the route: the app's exception
                # handler answers with the usual JSON (as for the size limit below).
                raise BodyTimeout(self.body_timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLarge(self.max_bytes)
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, guarded_receive, send_nosniff)

    def _refusal(self, scope: Scope):
        """The error answer for a request refused on its headers alone, or None."""
        lengths = [value for name, value in scope["headers"] if name == b"content-length"]
        chunked = any(name == b"transfer-encoding" for name, _ in scope["headers"])
        if self.hosts is not None and _host_name(scope) not in self.hosts:
            message = "this server does not answer to that Host name"
            return error_response(400, "invalid_host", message, CLOSE_CONNECTION)
        if lengths and chunked:
            message = "give Content-Length or Transfer-Encoding: chunked, not both"
            return error_response(400, "bad_framing", message, CLOSE_CONNECTION)
        if lengths and int(lengths[0]) > self.max_bytes:  # h11 lets one number through, digits only
            error = RequestTooLarge(self.max_bytes)
            return error_response(error.status, error.code, error.message, error.headers)
        return None


def _host_name(scope: Scope) -> str | None:
    """The Host header's name, lower-case, without the port ("[::1]:8000" -> "::1")."""
    host = next((value for name, value in scope["headers"] if name == b"host"), None)
    if host is None:
        return None
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if ":" in text else text
