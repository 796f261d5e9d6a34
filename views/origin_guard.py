"""An ASGI guard in front of the dashboard against DNS rebinding and cross-origin WebSockets.

Streamlit's own checks leave two gaps (1.67): ``server.allowedHosts`` is enforced on the WebSocket
only, and a WebSocket from *any* port on localhost (another local web app) counts as same-site.
This guard refuses, on every request, a Host outside ``server.allowedHosts`` and, on WebSockets,
an Origin that is neither the page's own (scheme-less ``host:port`` equal to Host) nor listed in
``server.corsAllowedOrigins``. ``serve.py`` installs it; `make run` serves ``serve.py``.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from streamlit import config
from streamlit.web.server.starlette.starlette_websocket import is_host_allowed

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def origin_allowed(origin: str | None, host: str | None) -> bool:
    """No Origin (a program, not a page) or the page's own origin, or one listed in the config."""
    if origin is None:
        return True
    if origin.strip() in {o.strip() for o in config.get_option("server.corsAllowedOrigins")}:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and host is not None and parts.netloc.lower() == host.lower()


class OriginGuard:
    """Refuse requests with a foreign Host (HTTP 403 / WebSocket close 1008) before Streamlit sees them."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host, origin = _header(scope, b"host"), _header(scope, b"origin")
        if not is_host_allowed(host):
            return await self._refuse(scope, send, f"Host {host!r} is not in server.allowedHosts")
        if scope["type"] == "websocket" and not origin_allowed(origin, host):
            return await self._refuse(scope, send, f"Origin {origin!r} is not this page's nor in "
                                                   "server.corsAllowedOrigins")
        return await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, why: str) -> None:
        if scope["type"] == "websocket":  # closing before accepting: the server answers the upgrade 403
            await send({"type": "websocket.close", "code": 1008, "reason": why[:120]})
            return
        body = f"refused: {why}. See docs/RELIABILITY.md (Exposure) to serve other names.\n".encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
