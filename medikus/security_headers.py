"""Security headers on every HTTP response (BSI TR-03161 Part 2 O.Arch_9; OWASP ASVS 5.0 V3.4).

A pure ASGI middleware (https://asgi.readthedocs.io/en/latest/specs/www.html) without any
framework import: the app wraps its whole middleware stack in it, so the responses of the error
middleware (500) carry the headers as well. Websocket handshakes pass through untouched.

- Content-Security-Policy (https://www.w3.org/TR/CSP3/) fit for a Vite-built single-page app
  served from the same origin: scripts, styles and connections only from ``'self'``, plus the
  ``ws:``/``wss:`` origin of the request's host for the video signalling websocket; Vite inlines
  small images and fonts as ``data:`` URLs. No framing (clickjacking), no plugins, no ``<base>``.
- Strict-Transport-Security (RFC 6797) only on requests that arrived over HTTPS, directly or
  through the TLS-terminating proxy (``X-Forwarded-Proto``); browsers ignore it over HTTP anyway.
- No framing anywhere: ``X-Frame-Options: DENY``, and ``frame-ancestors 'none'`` is added to a CSP
  the app set itself when that policy does not say otherwise.
- Cookies (BSI TR-03161-2 O.Data_16/17): every ``Set-Cookie`` gets ``HttpOnly``, ``SameSite=Lax``
  and, over HTTPS, ``Secure`` unless it states them itself: a safety net under the login pages,
  which set their own (stricter) attributes.
- ``Cache-Control: no-store`` on every FHIR response: PHI must not stay in shared or browser
  caches (RFC 9111 §5.2.2.5). Other responses get it unless they chose their own caching.
- ``X-Request-Id``: a well-formed incoming id is kept, otherwise a UUID is generated; the app sees
  the effective id as a request header (for the audit's ``entity[transaction]``, IHE BALP) and the
  client gets it back, for correlation.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from functools import lru_cache
from typing import Any, Final

# The ASGI callable types, spelled out so this module needs no framework.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

HSTS: Final = b"max-age=63072000; includeSubDomains"
# Video consultations need camera and microphone, on this origin only.
PERMISSIONS_POLICY: Final = b"camera=(self), microphone=(self), geolocation=(), payment=()"
_COMMON: Final = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", PERMISSIONS_POLICY),
    (b"cross-origin-opener-policy", b"same-origin"),
    # No other site may embed our responses (no-cors loads; CORS fetches are unaffected).
    (b"cross-origin-resource-policy", b"same-origin"),
    # frame-ancestors supersedes it; kept for browsers without CSP Level 2.
    (b"x-frame-options", b"DENY"),
)
_LOCKDOWN: Final = "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
# Swagger UI (FastAPI's /docs) loads its bundle from jsDelivr and starts it with an inline script;
# only the documentation pages get this policy, never the API or the app.
DOCS_POLICY: Final = (
    "default-src 'self'; script-src 'self' https://cdn.jsdelivr.net 'unsafe-inline'; "
    "style-src 'self' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
    f"{_LOCKDOWN}"
).encode()
# Ids from proxies and clients are echoed and logged: a bounded, harmless alphabet only.
_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._:@-]{1,128}")
# A host name, IPv4 or bracketed IPv6 address with an optional port; anything else (it would be
# copied into the CSP) falls back to 'self' alone.
_HOST: Final = re.compile(rb"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


@lru_cache(maxsize=256)
def content_security_policy(host: bytes, https: bool) -> bytes:
    """The app's CSP; ``host`` (the request's Host header) names the signalling websocket."""
    connect = "connect-src 'self'"
    if _HOST.fullmatch(host):
        name = host.decode("ascii").lower()
        # A page loaded over HTTPS may not open ws:// (mixed content), so it gets wss:// only.
        connect += f" wss://{name}" if https else f" ws://{name} wss://{name}"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"font-src 'self' data:; {connect}; {_LOCKDOWN}"
    ).encode()


class SecurityHeaders:
    """Adds the security headers to every HTTP response of ``app``.

    ``fhir_prefix``: responses under it always get ``Cache-Control: no-store``. ``docs_paths``:
    the interactive API documentation pages, which get ``DOCS_POLICY`` as CSP."""

    def __init__(
        self, app: ASGIApp, *, fhir_prefix: str = "/fhir", docs_paths: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.fhir_prefix = fhir_prefix.rstrip("/")
        self.docs_paths = frozenset(docs_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id, host, forwarded_proto = b"", b"", b""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value
            elif name == b"host":
                host = value
            elif name == b"x-forwarded-proto":
                forwarded_proto = value
        if not _REQUEST_ID.fullmatch(request_id):
            request_id = str(uuid.uuid4()).encode()
            scope = dict(scope)
            scope["headers"] = [
                *((n, v) for n, v in scope["headers"] if n != b"x-request-id"),
                (b"x-request-id", request_id),
            ]
        # The client-facing hop is the first of a proxy chain ("https, http").
        https = (
            scope.get("scheme") == "https"
            or forwarded_proto.split(b",")[0].strip().lower() == b"https"
        )
        path: str = scope["path"]
        fhir = path == self.fhir_prefix or path.startswith(self.fhir_prefix + "/")
        csp = DOCS_POLICY if path in self.docs_paths else content_security_policy(host, https)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = _secured(
                    message.get("headers", ()), csp, https=https, fhir=fhir, request_id=request_id
                )
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _secured(
    headers: Iterable[tuple[bytes, bytes]],
    csp: bytes,
    *,
    https: bool,
    fhir: bool,
    request_id: bytes,
) -> Headers:
    """The response headers with the security headers added; a header the app set itself wins,
    except that FHIR responses are never cacheable and the request id is always the effective one."""
    drop = {b"x-request-id", b"cache-control"} if fhir else {b"x-request-id"}
    result: Headers = [
        (n, _hardened(n.lower(), v, https)) for n, v in headers if n.lower() not in drop
    ]
    present = {n.lower() for n, _ in result}
    extra: Headers = [*_COMMON, (b"content-security-policy", csp), (b"cache-control", b"no-store")]
    if https:
        extra.append((b"strict-transport-security", HSTS))
    result.extend((n, v) for n, v in extra if n not in present)
    result.append((b"x-request-id", request_id))
    return result


def _hardened(name: bytes, value: bytes, https: bool) -> bytes:
    """An app-set CSP without ``frame-ancestors`` gets ``'none'``; a cookie gets the attributes
    it lacks (attribute names are case-insensitive, RFC 6265 §5.2)."""
    if name == b"content-security-policy" and b"frame-ancestors" not in value.lower():
        return value.rstrip(b"; ") + b"; frame-ancestors 'none'"
    if name != b"set-cookie":
        return value
    attributes = {a.split(b"=")[0].strip().lower() for a in value.split(b";")[1:]}
    for attribute, add in ((b"httponly", True), (b"samesite", True), (b"secure", https)):
        if add and attribute not in attributes:
            value += _COOKIE_ATTRIBUTES[attribute]
    return value


_COOKIE_ATTRIBUTES: Final = {
    b"httponly": b"; HttpOnly",
    b"samesite": b"; SameSite=Lax",
    b"secure": b"; Secure",
}
