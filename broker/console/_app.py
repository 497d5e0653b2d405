"""Routes, access control and the forms' handling (aiohttp)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDictProxy

from .._cli_format import parse_json
from . import _filters, _invocation, _keys, _pages
from ._admin import AdminError
from ._hosts import names_loopback
from ._html import Safe, h, notice, page, url

if TYPE_CHECKING:
    from . import Console

COOKIE = "broker_console_token"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HTTP = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_HEADERS = {
    # Nothing but this origin: no CDN, no outside fonts, no inline script.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _html(body: Safe, status: int = 200) -> web.Response:
    return web.Response(text=str(body), status=status, content_type="text/html", headers=_HEADERS)


class _PeerMistakes(logging.Filter):
    """Turns aiohttp's traceback for a request it could not read (a line or header too
    long, too many headers, a bad status line, a client gone mid-body) into one line:
    it is the client's mistake, answered 400, not a fault of the broker."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError | ConnectionError):
            return True
        reason = error.message if isinstance(error, HttpProcessingError) else str(error)
        first_line = str(reason).strip().splitlines()[0] if str(reason).strip() else ""
        said = record.getMessage()
        record.msg, record.args = "%s: %s", (said, first_line[:200] or type(error).__name__)
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def server_logger() -> logging.Logger:
    """The logger aiohttp's request handler reports to (see `_PeerMistakes`)."""
    logger = logging.getLogger("broker.console.http")
    if not any(isinstance(f, _PeerMistakes) for f in logger.filters):
        logger.addFilter(_PeerMistakes())
    return logger


async def _read_form(
    request: web.Request,
) -> MultiDictProxy[str | bytes | bytearray | web.FileField]:
    """The posted form; a body that is not a form (not UTF-8, broken multipart) is 400."""
    try:
        return await request.post()
    # UnicodeDecodeError, "Reading after EOF", LookupError (a charset nobody knows)
    except (ValueError, LookupError, HttpProcessingError) as e:
        reason = e.message if isinstance(e, HttpProcessingError) else str(e)
        raise web.HTTPBadRequest(text=f"the form could not be read: {reason}") from None


def _local_path(next_url: str) -> str:
    """`next_url` if it is a path on this site, else `/`. Browsers read `//host` and
    `/\\host` as another site (and drop tabs and newlines first): a redirect there would
    be an open redirect."""
    local = next_url.startswith("/") and next_url[1:2] not in ("/", "\\")
    if not local or any(ord(c) < 0x20 or c == "\x7f" for c in next_url):
        return "/"
    return next_url


def _bearer(authorization: str) -> str:
    scheme, _, credentials = authorization.strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def build(console: Console) -> web.Application:
    """The console's aiohttp application."""
    token = console.settings.admin_token

    def authorized(request: web.Request) -> bool:
        if not token:
            return True
        # Either will do: a stale cookie must not hide a right Authorization header.
        offered = (request.cookies.get(COOKIE), _bearer(request.headers.get("Authorization", "")))
        return any(g and hmac.compare_digest(g.encode(), token.encode()) for g in offered)

    def login_page(next_url: str, message: str = "", status: int = 401) -> web.Response:
        body = h(
            """<h1>Admin token needed</h1>{msg}<p>This broker's admin API requires a token
(<code>--admin-token</code>); the console asks for the same one and keeps it in a
cookie for this site only.</p>
<form method="post" action="/login"><input type="hidden" name="next" value="{next}">
<label>Admin token <input type="password" name="token" required autofocus
autocomplete="current-password"></label> <button type="submit">Sign in</button></form>""",
            msg=notice(message) if message else "",
            next=next_url,
        )
        return _html(page("Sign in", body), status)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if console.loopback and not names_loopback(request.host):
            # DNS rebinding: a page of another site whose name now resolves to
            # 127.0.0.1 is "same-origin" to the browser, and without a token it could
            # act; its requests name that site.
            return _html(
                page("Refused", notice("This console answers requests to its own address.")),
                421,
            )
        if request.method == "POST":
            # A cross-site form must not act with the operator's cookie (or, without a
            # token, act at all): browsers say where a request comes from.
            site = request.headers.get("Sec-Fetch-Site")
            origin = request.headers.get("Origin")
            if site is not None:
                cross = site not in ("same-origin", "none")
            else:  # an older browser: its Origin must be ours
                cross = origin is not None and origin.split("://", 1)[-1] != request.host
            if cross:
                return _html(page("Refused", notice("Cross-site request refused.")), 403)
        if request.path.startswith("/static/") or request.path == "/login":
            return await handler(request)
        if not authorized(request):
            return login_page(request.path_qs)
        try:
            return await handler(request)
        except AdminError as e:
            status = _HTTP.get(e.code, 500)
            return _html(page("Error", notice(e.message)), status)

    async def login(request: web.Request) -> web.StreamResponse:
        form = await _read_form(request)
        given, next_url = str(form.get("token", "")), _local_path(str(form.get("next", "/")))
        if not token or hmac.compare_digest(given.strip().encode(), token.encode()):
            response = web.HTTPSeeOther(next_url)
            if token:
                response.set_cookie(
                    COOKIE,
                    token,
                    httponly=True,
                    samesite="Strict",
                    secure=console.tls,
                    path="/",
                )
            raise response
        return login_page(next_url, "That is not the admin token.")

    async def overview(request: web.Request) -> web.StreamResponse:
        return _html(page("Overview", await _pages.overview(console), "/"))

    async def invocations(request: web.Request) -> web.StreamResponse:
        body, status = await _pages.invocations(console, request.query)
        return _html(page("Invocations", body, "/invocations"), status)

    async def invocation_rows(request: web.Request) -> web.StreamResponse:
        body, status = await _pages.invocation_rows(console, request.query)
        return _html(body, status)

    async def invocation(request: web.Request) -> web.StreamResponse:
        invocation_id = request.match_info["id"]
        raw = request.query.get("start", "0")
        if not _filters.is_number(raw):
            body = notice(f"start={raw!r} is not an entry number (0, 500, …)")
            return _html(page("Bad request", body), 400)
        done = request.query.get("done", "")
        # Beyond a uint32 is past any journal's end too (the first page is shown).
        start = min(int(raw), 0xFFFFFFFF)
        body = await _invocation.page(console, invocation_id, done, start)
        if request.query.get("fragment"):
            return _html(body)
        return _html(page(invocation_id, body, "/invocations"))

    async def action(request: web.Request) -> web.StreamResponse:
        invocation_id, name = request.match_info["id"], request.match_info["action"]
        if name not in _invocation.ACTIONS:
            raise web.HTTPNotFound()
        if request.method == "GET":
            # Asking to confirm an action on an invocation that does not exist would
            # only fail after the click: say so now (NOT_FOUND is a 404 page).
            await console.admin.describe(invocation_id)
            return _html(page(f"{name} {invocation_id}", _invocation.confirm(invocation_id, name)))
        form = await _read_form(request)
        if form.get("confirm") != "yes":
            return _html(page("Not confirmed", _invocation.confirm(invocation_id, name)), 400)
        await console.admin.control(name, invocation_id)
        if name == "purge":  # its page is gone with it
            raise web.HTTPSeeOther(url("/invocations", {"done": f"purged {invocation_id}"}))
        raise web.HTTPSeeOther(url(f"/invocations/{invocation_id}", {"done": f"{name}: done"}))

    async def find(request: web.Request) -> web.StreamResponse:
        ident = request.query.get("id", "").strip()
        if ident.startswith("inv_"):
            raise web.HTTPSeeOther(f"/invocations/{ident}")
        if ident.startswith("awk_"):
            raise web.HTTPSeeOther(f"/awaiting#{ident}")
        body = notice(f"{ident!r} is neither an invocation id (inv_…) nor an awakeable id (awk_…).")
        return _html(page("Not found", body), 400)

    async def key(request: web.Request) -> web.StreamResponse:
        service, k = request.query.get("service", ""), request.query.get("key", "")
        if not service or not k:
            return _html(page("Key", notice("Give a service and a key.")), 400)
        return _html(page(f"{service} {k}", await _keys.key_page(console, service, k)))

    async def awaiting(request: web.Request) -> web.StreamResponse:
        return _html(page("Awaiting", await _keys.awaiting_page(console), "/awaiting"))

    def _json_value(text: str) -> tuple[bytes | None, str]:
        try:
            parse_json(text)
        except (ValueError, RecursionError) as e:
            return (
                None,
                f'The value is not valid JSON ({e}); nothing was changed. Quote strings: "text".',
            )
        return text.strip().encode(), ""

    async def _form(request: web.Request) -> dict[str, str]:
        return {k: str(v) for k, v in (await _read_form(request)).items()}

    async def _redisplay_awaiting(
        values: dict[str, str], message: str, status: int
    ) -> web.Response:
        body = Safe(str(notice(message)) + str(await _keys.awaiting_page(console, values)))
        return _html(page("Awaiting", body, "/awaiting"), status)

    async def awakeable(request: web.Request) -> web.StreamResponse:
        values = await _form(request)
        awakeable_id = values.get("awakeable_id", "")
        try:
            if request.match_info["op"] == "resolve":
                value, problem = _json_value(values.get("value", ""))
                if value is None:
                    return await _redisplay_awaiting(values, problem, 400)
                await console.admin.resolve_awakeable(awakeable_id, value)
            else:
                reason = values.get("reason", "").strip()
                if not reason:
                    return await _redisplay_awaiting(
                        values, "Give a reason for the rejection.", 400
                    )
                await console.admin.reject_awakeable(awakeable_id, reason)
        except AdminError as e:
            return await _redisplay_awaiting(values, e.message, _HTTP.get(e.code, 500))
        body = Safe(
            str(notice(f"{awakeable_id}: {request.match_info['op']}d.", "info"))
            + str(await _keys.awaiting_page(console))
        )
        return _html(page("Awaiting", body, "/awaiting"))

    async def promise(request: web.Request) -> web.StreamResponse:
        values = await _form(request)
        service, k, name = (_keys.exact(values, f) for f in ("service", "key", "name"))
        value: bytes | None = None
        reason: str | None = None
        if request.match_info["op"] == "resolve":
            value, problem = _json_value(values.get("value", ""))
            if value is None:
                return await _redisplay_awaiting(values, problem, 400)
        else:
            reason = values.get("reason", "").strip()
            if not reason:
                return await _redisplay_awaiting(values, "Give a reason for the rejection.", 400)
        try:
            await console.admin.complete_promise(service, k, name, value, reason)
        except AdminError as e:
            return await _redisplay_awaiting(values, e.message, _HTTP.get(e.code, 500))
        raise web.HTTPSeeOther(url("/key", {"service": service, "key": k}))

    async def state(request: web.Request) -> web.StreamResponse:
        values = await _form(request)
        service, k, name = (_keys.exact(values, f) for f in ("service", "key", "name"))
        op = values.get("op", "set")

        async def again(message: str, status: int) -> web.Response:
            body = Safe(
                str(notice(message)) + str(await _keys.key_page(console, service, k, values))
            )
            return _html(page(f"{service} {k}", body), status)

        if not name.strip():
            return await again("Give the state value's name.", 400)
        value: bytes | None = None
        if op == "set":
            value, problem = _json_value(values.get("value", ""))
            if value is None:
                return await again(problem, 400)
        elif op != "clear":
            return await again(f"Unknown operation {op!r}: set or clear.", 400)
        try:
            await console.admin.set_state(service, k, name, value)
        except AdminError as e:
            if e.code == grpc.StatusCode.NOT_FOUND:
                raise
            return await again(e.message, _HTTP.get(e.code, 500))
        raise web.HTTPSeeOther(url("/key", {"service": service, "key": k}))

    app = web.Application(middlewares=[guard], client_max_size=console.settings.max_payload_bytes)
    app.router.add_get("/", overview)
    app.router.add_post("/login", login)
    app.router.add_get("/invocations", invocations)
    app.router.add_get("/invocations/rows", invocation_rows)
    app.router.add_get("/invocations/{id}", invocation)
    app.router.add_get("/invocations/{id}/{action}", action)
    app.router.add_post("/invocations/{id}/{action}", action)
    app.router.add_get("/find", find)
    app.router.add_get("/key", key)
    app.router.add_get("/awaiting", awaiting)
    app.router.add_post("/awakeables/{op:resolve|reject}", awakeable)
    app.router.add_post("/promises/{op:resolve|reject}", promise)
    app.router.add_post("/state", state)
    app.router.add_static("/static/", console.static_dir, append_version=False)
    return app
