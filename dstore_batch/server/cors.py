"""CORS for browser consumers (``--cors-origins``): a page from a listed origin may call
the client API (``/v1/*``: gets, lists, watches, puts) with its bearer token.

Off unless origins are listed. A preflight (``OPTIONS`` with
``Access-Control-Request-Method``) from a listed origin is answered here, before the
token check: browsers send no ``Authorization`` on a preflight. The request that
follows still needs the token. The allow-origin header is set when a response's headers
are prepared, so streams (``/v1/watch``) and error answers carry it too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

__all__ = ["ALLOW_HEADERS", "ALLOW_METHODS", "MAX_AGE_S", "install_cors"]

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, Accept, Last-Event-ID"
EXPOSE_HEADERS = "Retry-After"
MAX_AGE_S = 600  # how long a browser may keep a preflight's answer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def install_cors(app: web.Application, origins: tuple[str, ...]) -> None:
    """Answer CORS for ``origins`` (``*``: any origin) on ``app``'s ``/v1/`` paths;
    nothing at all when ``origins`` is empty."""
    if not origins:
        return
    any_origin = "*" in origins
    listed = frozenset(origins)

    def allowed(request: web.Request) -> str | None:
        origin = request.headers.get("Origin")
        if origin is None or not request.path.startswith("/v1/"):
            return None
        return origin if any_origin or origin in listed else None

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers \
                or not request.path.startswith("/v1/"):
            return await handler(request)
        origin = allowed(request)
        if origin is None:
            return web.json_response(
                {"error": {"code": "origin_not_allowed",
                           "message": f"origin {request.headers.get('Origin')!r} is not in "
                                      "this node's --cors-origins"}}, status=403)
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": str(MAX_AGE_S)})

    async def allow_origin(request: web.Request, response: web.StreamResponse) -> None:
        origin = allowed(request)
        if origin is not None and "Access-Control-Allow-Origin" not in response.headers:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
            response.headers.add("Vary", "Origin")

    app.middlewares.insert(0, preflight)
    app.on_response_prepare.append(allow_origin)
