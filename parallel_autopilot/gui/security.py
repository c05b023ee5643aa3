"""Who may talk to the GUI: Host names, the CSRF token, Origin, the access token.

The pane controls containers on this machine, so a web page from anywhere
else must not be able to drive it through the user's browser:

* **DNS rebinding**: a page on ``evil.example`` that re-resolves its name to
  127.0.0.1 reaches us with ``Host: evil.example:8787``. Only local names
  (``127.0.0.1``, ``localhost``, ``[::1]``) on the port we listen on are
  accepted; anything else is a 400.
* **CSRF**: a state-changing request (POST...) must carry the page's
  per-process token in ``X-CSRF-Token`` (a cross-site form cannot set a
  header, and cannot read the page to learn the token) AND, when the browser
  says where it comes from (``Origin``, else ``Referer``), come from this very
  host. Otherwise 403.
* **Public binding**: listening on a non-local address needs ``--public`` and
  a token; every request must then carry it (``Authorization: Bearer``,
  ``X-Autopilot-Token`` or ``?token=`` for the first page load and the event
  streams, which cannot set headers). Otherwise 401.

Everything here is a pure ASGI middleware so it guards the event streams too.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import parse_qs, urlsplit

from ..errors import InvalidInput

#: Host names a local browser uses for this machine (IPv6 in URL brackets).
LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_HEADER = "x-csrf-token"
TOKEN_HEADER = "x-autopilot-token"

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


def new_token() -> str:
    """A random token (256 bits), URL-safe."""
    return secrets.token_urlsafe(32)


def is_local_address(host: str) -> bool:
    """True for addresses only this machine can reach (loopback, ``localhost``)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, public: bool, token: str | None) -> None:
    """Refuse to listen on a non-local address without ``--public`` and a token."""
    if is_local_address(host):
        return
    if not public:
        raise InvalidInput(
            f"refusing to listen on {host}: anyone who can reach it could drive your agents; "
            "use the default 127.0.0.1, or pass --public with --token SECRET")
    if not token or len(token) < 16:
        raise InvalidInput(
            f"listening on {host} needs --token SECRET (16 characters or more) so that every request "
            "must carry it")


def split_host(header: str) -> tuple[str, int | None]:
    """``"[::1]:8787"`` -> ``("[::1]", 8787)``; ``"localhost"`` -> ``("localhost", None)``."""
    header = header.strip().lower()
    if header.startswith("["):
        name, bracket, rest = header.partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(header)
        name, colon, port = name + "]", rest[:1], rest[1:]
    else:
        name, colon, port = header.partition(":")
    if not name or name == "[]":
        raise ValueError(header)
    if not colon:
        return name, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(header)
    return name, int(port)


def url_name(host: str) -> str:
    """A bind address as it appears in a URL's host part (IPv6 in brackets)."""
    host = host.strip()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass
class Guard:
    """The policy: which Host names pass, the CSRF token, the optional access token."""

    csrf_token: str = field(default_factory=new_token)
    token: str | None = None
    names: frozenset[str] = frozenset(LOCAL_NAMES)
    any_host: bool = False  # public on 0.0.0.0/::: the token is the guard, names are unknown

    @classmethod
    def for_bind(cls, bind_host: str = "127.0.0.1", *, token: str | None = None,
                 extra_names: Iterable[str] = ()) -> "Guard":
        """The policy for a server listening on ``bind_host``."""
        names = set(LOCAL_NAMES) | {n.lower() for n in extra_names}
        wildcard = bind_host.strip("[]") in ("0.0.0.0", "::", "")
        if not is_local_address(bind_host) and not wildcard:
            names.add(url_name(bind_host).lower())
        return cls(token=token, names=frozenset(names), any_host=wildcard and token is not None)

    # -- the checks, each returning None (pass) or (status, one-line reason) --

    def check_host(self, host_header: str | None, server_port: int | None) -> tuple[int, str] | None:
        """DNS rebinding: the Host header must be a known name on our port."""
        if not host_header:
            return 400, "missing Host header"
        try:
            name, port = split_host(host_header)
        except ValueError:
            return 400, "malformed Host header"
        if not self.any_host and name not in self.names:
            return 400, (f"Host {name!r} is not allowed (DNS rebinding protection): "
                         f"open http://127.0.0.1:{server_port or 8787}/ instead")
        wanted = server_port if server_port not in (None, 0) else None
        if wanted is not None and (port or 80) != wanted:
            return 400, f"Host port {port or 80} is not the port this server listens on ({wanted})"
        return None

    def check_token(self, headers: dict[str, str], query: str) -> tuple[int, str] | None:
        """With a token configured, every request must present it."""
        if self.token is None:
            return None
        offered = headers.get(TOKEN_HEADER)
        auth = headers.get("authorization", "")
        if offered is None and auth.lower().startswith("bearer "):
            offered = auth[7:].strip()
        if offered is None:
            offered = (parse_qs(query).get("token") or [None])[0]
        if offered is None or not hmac.compare_digest(offered.encode(), self.token.encode()):
            return 401, "missing or wrong access token: open the URL `inv gui` printed (it ends in ?token=...)"
        return None

    def check_csrf(self, method: str, headers: dict[str, str]) -> tuple[int, str] | None:
        """A state-changing request needs the page's CSRF token and a same-origin source."""
        if method not in UNSAFE_METHODS:
            return None
        offered = headers.get(CSRF_HEADER, "")
        if not offered or not hmac.compare_digest(offered.encode(), self.csrf_token.encode()):
            return 403, f"missing or wrong CSRF token: use the page, or send the {CSRF_HEADER} header it embeds"
        if headers.get("sec-fetch-site") == "cross-site":
            return 403, "cross-site request refused"
        host = headers.get("host", "").lower()
        source = headers.get("origin")
        if source is None and headers.get("referer"):
            parts = urlsplit(headers["referer"])
            source = f"{parts.scheme}://{parts.netloc}"
        if source is not None:
            parts = urlsplit(source.lower())
            if source == "null" or parts.netloc != host or parts.scheme not in ("http", "https"):
                return 403, f"request from another origin ({source[:80]}) refused"
        return None


def _headers(scope: Scope) -> dict[str, str]:
    # the last value wins for repeated headers; none of ours is legitimately repeated
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def send_error(send: Callable, status: int, message: str) -> None:
    """Answer with ``{"error": message}`` (the GUI's one error shape)."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})


#: Sent with every response: no framing (clickjacking), no MIME sniffing,
#: the Referer stays on this origin.
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class GuardMiddleware:
    """Apply a :class:`Guard` to every HTTP request before the app sees it."""

    def __init__(self, app: ASGIApp, guard: Guard):
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":  # no WebSocket endpoint exists: refuse outright
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        server = scope.get("server") or (None, None)
        public_asset = scope.get("path", "").startswith("/static/")  # script and style: no secrets
        refusal = (self.guard.check_host(headers.get("host"), server[1])
                   or (None if public_asset else
                       self.guard.check_token(headers, scope.get("query_string", b"").decode("latin-1")))
                   or self.guard.check_csrf(scope["method"], headers))
        if refusal:
            await send_error(send, *refusal)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


__all__ = ["Guard", "GuardMiddleware", "LOCAL_NAMES", "check_bind", "is_local_address", "new_token",
           "split_host", "url_name", "send_error", "CSRF_HEADER", "TOKEN_HEADER"]
