"""The authorization server over HTTP: SMART discovery, login form, token, revocation, JWKS.

The only compliance module that imports FastAPI/Starlette; the logic is in oauth.py and
accounts.py. Routes:

- ``GET /.well-known/smart-configuration``, ``GET /auth/jwks``;
- ``GET /auth/authorize`` shows the German login form (user name, password, one-time code),
  ``POST /auth/authorize`` checks it and redirects (303) to the app with code, state and iss;
- ``POST /auth/token``, ``POST /auth/revoke`` (form-encoded, JSON answers, ``no-store``);
- ``POST /auth/join``: a patient without an account redeems a join link (``link=…``) or a phone
  code (``grant=…&code=…``) for a short-lived token for one appointment (join_links.py);
- ``GET|POST /auth/logout`` (the login cookie's session; or ``POST`` with a bearer token),
  ``GET|POST /auth/password`` (password change; ends every session).

Cookies are HttpOnly, Secure (also over plain HTTP in tests: a browser then drops them, which is
right outside TLS) and SameSite=Strict, with the ``__Host-`` prefix over HTTPS. Strict, not Lax:
the login cookie is only needed by these pages on our own origin (logout, the next form post),
never on the cross-site redirect that brings the user from an app to ``/auth/authorize`` — every
authorization asks for the credentials again (no silent single sign-on; BSI TR-03161 O.Auth_4).

Form posts carry a CSRF token: the HMAC of a random per-browser cookie (signed double-submit,
OWASP CSRF Cheat Sheet), plus an ``Origin`` check when the browser sends a real one. Login pages get
their own CSP, whose ``form-action`` names the app's redirect origin (browsers apply
``form-action`` to the redirect after the post). Pages are German only; an English variant via
Accept-Language is left out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from compliance.accounts import IdentityError, Login, LoginFailed
from compliance.auth import AuthServices
from compliance.identity import AuthenticationFailed, Joined, JoinRefused, JoinThrottled
from compliance.oauth import AuthorizationRequest, AuthorizeError, OAuthError
from compliance.scopes import parse_scopes

__all__ = ["install_auth"]

log = logging.getLogger(__name__)
MAX_FORM_BYTES = 16 * 1024
_FORM = "application/x-www-form-urlencoded"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_FORM_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            _FORM: {"schema": {"type": "object", "additionalProperties": {"type": "string"}}}
        },
    }
}
_CSRF_FIELD = "csrf_token"
_JOIN_SECRET = re.compile(r"[A-Za-z0-9_-]{1,128}", re.ASCII)  # link tokens and grant ids
_JOIN_CODE = re.compile(r"[0-9]{8}", re.ASCII)
# One answer for every refusal (unknown, used, expired, wrong code, attempts used up): a caller
# cannot tell an existing link from a made-up one. The reason goes to the audit trail only.
_JOIN_REFUSED = {
    "error": "invalid_grant",
    "error_description": "Der Link oder Code ist ungültig, abgelaufen oder schon benutzt. / "
    "The link or code is invalid, expired or already used.",
}


class _BadForm(Exception):
    """The request body is not one acceptable form."""


def install_auth(app: FastAPI, services: AuthServices) -> None:
    """Mounts the SMART discovery document and the ``/auth`` endpoints on ``app``."""
    _Endpoints(services).mount(app)


class _Endpoints:
    def __init__(self, services: AuthServices) -> None:
        self.s = services
        self.server = services.server
        self.identity = services.identity
        self._csrf_key = services.keyring.subkey("hmac:auth-csrf")

    def mount(self, app: FastAPI) -> None:
        r = APIRouter()
        # (path, handler, method, summary, operation id, form body): each in the API description.
        for path, handler, method, summary, operation, form in (
            ("/.well-known/smart-configuration", self.smart_configuration, "GET",
             "SMART configuration", "smart-configuration", False),
            ("/auth/jwks", self.jwks, "GET", "token signing keys", "auth-jwks", False),
            ("/auth/token", self.token, "POST", "token endpoint", "auth-token", True),
            ("/auth/revoke", self.revoke, "POST", "token revocation", "auth-revoke", True),
            ("/auth/join", self.join, "POST", "redeem a patient join link or phone code",
             "auth-join", True),
        ):  # fmt: skip
            r.add_api_route(
                path,
                handler,
                methods=[method],
                summary=summary,
                operation_id=operation,
                openapi_extra=_FORM_BODY if form else None,
            )
        # SMART App Launch 2.0 §2.1: discovery at "[fhir base]/.well-known/…" (mounted before the
        # FHIR routes, so that they do not take it for Type/id), the root one kept for clients
        # that look there.
        r.add_api_route(
            "/fhir/.well-known/smart-configuration",
            self.smart_configuration,
            methods=["GET"],
            include_in_schema=False,
        )
        # The HTML pages are for browsers, not part of the API description.
        for path, handler, methods in (
            ("/auth/authorize", self.authorize_form, ["GET"]),
            ("/auth/authorize", self.authorize_login, ["POST"]),
            ("/auth/logout", self.logout_form, ["GET"]),
            ("/auth/logout", self.logout, ["POST"]),
            ("/auth/password", self.password_form, ["GET"]),
            ("/auth/password", self.password_change, ["POST"]),
        ):
            r.add_api_route(path, handler, methods=methods, include_in_schema=False)
        app.include_router(r)

    # --- discovery ---

    async def smart_configuration(self) -> JSONResponse:
        return JSONResponse(self.server.smart_configuration())

    async def jwks(self) -> JSONResponse:
        keys = await run_in_threadpool(self.server.jwks)
        return JSONResponse(keys, headers={"Cache-Control": "public, max-age=60"})

    # --- token and revocation ---

    async def token(self, request: Request) -> Response:
        return await self._oauth_form(request, self.server.token, lambda answer: answer)

    async def revoke(self, request: Request) -> Response:
        return await self._oauth_form(request, self.server.revoke, lambda _: None)

    async def _oauth_form(
        self,
        request: Request,
        call: Callable[[Mapping[str, str], str | None], Any],
        body: Callable[[Any], Any],
    ) -> Response:
        try:
            form = await _read_form(request)
            answer = await run_in_threadpool(call, form, _address(request))
        except _BadForm as exc:
            return JSONResponse(
                {"error": "invalid_request", "error_description": str(exc)}, 400, _NO_STORE
            )
        except OAuthError as exc:
            return JSONResponse(exc.body(), exc.status, _NO_STORE)
        content = body(answer)
        if content is None:
            return Response(status_code=200, headers=_NO_STORE)
        return JSONResponse(content, 200, _NO_STORE)

    # --- join links and phone codes ---

    async def join(self, request: Request) -> Response:
        try:
            form = await _read_form(request)
            redeem = _join_call(form)
        except _BadForm as exc:
            return JSONResponse(
                {"error": "invalid_request", "error_description": str(exc)}, 400, _NO_STORE
            )
        try:
            joined: Joined = await run_in_threadpool(redeem, self.s, _address(request))
        except JoinRefused:
            return JSONResponse(_JOIN_REFUSED, 400, _NO_STORE)
        except JoinThrottled as exc:
            body = {
                "error": "slow_down",
                "error_description": "Zu viele Versuche; bitte später erneut versuchen. / "
                "Too many attempts; please try again later.",
            }
            headers = {"Retry-After": str(exc.retry_after_s), **_NO_STORE}
            return JSONResponse(body, 429, headers)
        claims = joined.claims
        answer = {
            "access_token": joined.token,
            "token_type": "Bearer",  # nosec B105 # the RFC 6750 token type, not a secret
            "expires_in": claims.exp - claims.iat,
            "scope": claims.scope,
            "purpose": joined.purpose,
            "patient": joined.patient,
        }
        return JSONResponse(answer, 200, _NO_STORE)

    # --- authorization (login form) ---

    async def authorize_form(self, request: Request) -> Response:
        checked = await self._authorization_request(request)
        if isinstance(checked, Response):
            return checked
        csrf_cookie = self._csrf_cookie_value(request) or secrets.token_urlsafe(32)
        response = self._login_page(request, checked, csrf_cookie, error=None, status=200)
        self._set_csrf_cookie(request, response, csrf_cookie)
        return response

    async def authorize_login(self, request: Request) -> Response:
        checked = await self._authorization_request(request)
        if isinstance(checked, Response):
            return checked
        refused = await self._refuse_forgery(request)
        if isinstance(refused, Response):
            return refused
        form = refused
        csrf_cookie = self._csrf_cookie_value(request) or ""
        try:
            login: Login = await run_in_threadpool(
                self.identity.login,
                form.get("username", ""),
                form.get("password", ""),
                form.get("totp") or None,
                _address(request),
                client_id=checked.client.client_id,
            )
        except LoginFailed as exc:
            status = 429 if exc.reason == "throttled" else 401
            response = self._login_page(request, checked, csrf_cookie, error=exc.de, status=status)
            if exc.retry_after_s:
                response.headers["Retry-After"] = str(exc.retry_after_s)
            return response
        try:
            location = await run_in_threadpool(self.server.authorize, checked, login)
        except AuthorizeError as exc:
            return RedirectResponse(exc.location(self.s.urls.issuer), 303)
        redirect = RedirectResponse(location, 303)
        self._set_cookie(
            request,
            redirect,
            "session",
            login.cookie,
            self.identity.policy.absolute_timeout_s,
        )
        return redirect

    async def _authorization_request(self, request: Request) -> AuthorizationRequest | Response:
        try:
            params = _single_params(parse_qsl(request.url.query, keep_blank_values=True))
        except _BadForm as exc:
            return _error_page(400, "Die Anfrage ist fehlerhaft.", str(exc))
        try:
            return await run_in_threadpool(self.server.check_authorization_request, params)
        except AuthorizeError as exc:
            if exc.redirect_uri is not None:
                return RedirectResponse(exc.location(self.s.urls.issuer), 302)
            return _error_page(
                400,
                "Die Anmeldung kann nicht beginnen: Die Anwendung ist unbekannt oder ihre "
                "Rücksprungadresse ist nicht registriert.",
                exc.description,
            )

    def _login_page(
        self,
        request: Request,
        checked: AuthorizationRequest,
        csrf_cookie: str,
        *,
        error: str | None,
        status: int,
    ) -> HTMLResponse:
        action = "/auth/authorize?" + request.url.query
        scopes = "".join(
            f"<li><code>{html.escape(s)}</code></li>" for s in _scope_list(checked.scope)
        )
        body = f"""<h1>Anmelden bei Medi-KUS</h1>
<p>Die Anwendung „{html.escape(checked.client.name)}“ möchte in Ihrem Namen auf Medi-KUS
zugreifen.</p>
{_error_html(error)}<form method="post" action="{html.escape(action)}">
{self._csrf_input(csrf_cookie)}
<p><label for="username">Benutzername</label><br>
<input id="username" name="username" type="text" autocomplete="username" autocapitalize="none"
 spellcheck="false" required></p>
<p><label for="password">Passwort</label><br>
<input id="password" name="password" type="password" autocomplete="current-password" required></p>
<p><label for="totp">Einmalcode aus der Authenticator-App</label><br>
<input id="totp" name="totp" type="text" inputmode="numeric" autocomplete="off" maxlength="7"
 aria-describedby="totp-hinweis"><br>
<small id="totp-hinweis">Sechs Ziffern; für Mitarbeitende Pflicht.</small></p>
<p><button type="submit">Anmelden</button></p>
</form>
<details><summary>Angefragte Berechtigungen</summary><ul>{scopes}</ul></details>"""
        csp = _page_csp(_origin_source(checked.redirect_uri))
        return _page("Anmelden – Medi-KUS", body, status, csp)

    # --- logout ---

    async def logout_form(self, request: Request) -> Response:
        session = await self._cookie_session(request)
        if session is None:
            return _page(
                "Abmelden – Medi-KUS", "<h1>Abmelden</h1>\n<p>Sie sind nicht angemeldet.</p>"
            )
        csrf_cookie = self._csrf_cookie_value(request) or secrets.token_urlsafe(32)
        body = f"""<h1>Abmelden</h1>
<form method="post" action="/auth/logout">
{self._csrf_input(csrf_cookie)}
<p><button type="submit">Abmelden</button></p>
</form>"""
        response = _page("Abmelden – Medi-KUS", body)
        self._set_csrf_cookie(request, response, csrf_cookie)
        return response

    async def logout(self, request: Request) -> Response:
        authorization = request.headers.get("authorization")
        if authorization is not None:
            return await self._bearer_logout(request, authorization)
        refused = await self._refuse_forgery(request)
        if isinstance(refused, Response):
            return refused
        session = await self._cookie_session(request)
        if session is not None:
            await run_in_threadpool(self.identity.logout, session, _address(request))
        response = _page(
            "Abgemeldet – Medi-KUS", "<h1>Abgemeldet</h1>\n<p>Sie sind abgemeldet.</p>"
        )
        self._delete_cookie(request, response, "session")
        return response

    async def _bearer_logout(self, request: Request, authorization: str) -> Response:
        try:
            principal = await run_in_threadpool(
                self.s.authenticate, authorization, _address(request)
            )
        except AuthenticationFailed as exc:
            return JSONResponse(
                {"error": exc.error or "invalid_token", "error_description": exc.description},
                exc.status,
                {"WWW-Authenticate": exc.www_authenticate(), **_NO_STORE},
            )
        if principal.session_id is None:
            return JSONResponse(
                {"error": "invalid_request", "error_description": "this token has no session"},
                400,
                _NO_STORE,
            )
        await run_in_threadpool(self.identity.logout, principal.session_id, _address(request))
        return Response(status_code=204, headers=_NO_STORE)

    # --- password change ---

    async def password_form(self, request: Request) -> Response:
        csrf_cookie = self._csrf_cookie_value(request) or secrets.token_urlsafe(32)
        response = self._password_page(csrf_cookie, None, 200)
        self._set_csrf_cookie(request, response, csrf_cookie)
        return response

    async def password_change(self, request: Request) -> Response:
        refused = await self._refuse_forgery(request)
        if isinstance(refused, Response):
            return refused
        form = refused
        csrf_cookie = self._csrf_cookie_value(request) or ""
        new = form.get("new_password", "")
        if new != form.get("new_password_repeat", ""):
            message = "Die beiden neuen Passwörter stimmen nicht überein."
            return self._password_page(csrf_cookie, message, 400)
        try:
            await run_in_threadpool(
                self.identity.change_password,
                form.get("username", ""),
                form.get("password", ""),
                form.get("totp") or None,
                new,
                _address(request),
            )
        except LoginFailed as exc:
            status = 429 if exc.reason == "throttled" else 401
            response = self._password_page(csrf_cookie, exc.de, status)
            if exc.retry_after_s:
                response.headers["Retry-After"] = str(exc.retry_after_s)
            return response
        except IdentityError as exc:
            return self._password_page(csrf_cookie, exc.de, 400)
        body = (
            "<h1>Passwort geändert</h1>\n<p>Ihr Passwort wurde geändert. Alle Sitzungen wurden "
            "beendet; bitte melden Sie sich in Ihren Anwendungen neu an.</p>"
        )
        response = _page("Passwort geändert – Medi-KUS", body)
        self._delete_cookie(request, response, "session")
        return response

    def _password_page(self, csrf_cookie: str, error: str | None, status: int) -> HTMLResponse:
        body = f"""<h1>Passwort ändern</h1>
{_error_html(error)}<form method="post" action="/auth/password">
{self._csrf_input(csrf_cookie)}
<p><label for="username">Benutzername</label><br>
<input id="username" name="username" type="text" autocomplete="username" autocapitalize="none"
 spellcheck="false" required></p>
<p><label for="password">Bisheriges Passwort</label><br>
<input id="password" name="password" type="password" autocomplete="current-password" required></p>
<p><label for="totp">Einmalcode aus der Authenticator-App</label><br>
<input id="totp" name="totp" type="text" inputmode="numeric" autocomplete="off" maxlength="7"></p>
<p><label for="new_password">Neues Passwort (mindestens 12 Zeichen)</label><br>
<input id="new_password" name="new_password" type="password" autocomplete="new-password" required
 minlength="12"></p>
<p><label for="new_password_repeat">Neues Passwort wiederholen</label><br>
<input id="new_password_repeat" name="new_password_repeat" type="password"
 autocomplete="new-password" required minlength="12"></p>
<p><button type="submit">Passwort ändern</button></p>
</form>"""
        return _page("Passwort ändern – Medi-KUS", body, status)

    # --- cookies and CSRF ---

    async def _refuse_forgery(self, request: Request) -> dict[str, str] | Response:
        """The posted form, or a 400/403 page when it is malformed or may be forged."""
        origin = request.headers.get("origin")
        # "null": browsers send it for every POST of a page with Referrer-Policy no-referrer
        # (Fetch §3.2.5), which all our pages have; the CSRF token is the defence then.
        if origin not in (None, "null") and origin not in self._own_origins(request):
            return _error_page(403, "Die Anfrage kam nicht von dieser Seite.", "origin mismatch")
        try:
            form = await _read_form(request)
        except _BadForm as exc:
            return _error_page(400, "Die Anfrage ist fehlerhaft.", str(exc))
        cookie = self._csrf_cookie_value(request)
        sent = form.get(_CSRF_FIELD, "")
        if not cookie or not hmac.compare_digest(sent.encode(), self._csrf_token(cookie).encode()):
            return _error_page(
                403,
                "Das Formular ist abgelaufen oder wurde nicht von dieser Seite gesendet. Bitte "
                "laden Sie die Seite neu.",
                "csrf token missing or wrong",
            )
        return form

    def _own_origins(self, request: Request) -> set[str]:
        parts = urlsplit(self.s.urls.base)
        return {f"{parts.scheme}://{parts.netloc}", f"{request.url.scheme}://{request.url.netloc}"}

    def _csrf_token(self, cookie: str) -> str:
        digest = hmac.new(self._csrf_key, b"csrf\x00" + cookie.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def _csrf_input(self, cookie: str) -> str:
        token = self._csrf_token(cookie)
        return f'<input type="hidden" name="{_CSRF_FIELD}" value="{token}">'

    def _csrf_cookie_value(self, request: Request) -> str | None:
        return request.cookies.get(_cookie_name(request, "csrf"))

    def _set_csrf_cookie(self, request: Request, response: Response, value: str) -> None:
        self._set_cookie(request, response, "csrf", value, 12 * 3600)

    @staticmethod
    def _set_cookie(
        request: Request, response: Response, kind: str, value: str, max_age: int
    ) -> None:
        response.set_cookie(
            _cookie_name(request, kind),
            value,
            max_age=max_age,
            path="/",
            secure=True,
            httponly=True,
            samesite="strict",
        )

    @staticmethod
    def _delete_cookie(request: Request, response: Response, kind: str) -> None:
        response.delete_cookie(
            _cookie_name(request, kind), path="/", secure=True, httponly=True, samesite="strict"
        )

    async def _cookie_session(self, request: Request) -> str | None:
        cookie = request.cookies.get(_cookie_name(request, "session"))
        if not cookie:
            return None
        session = await run_in_threadpool(self.identity.session_for_cookie, cookie)
        return None if session is None else session.id


# --- helpers ----------------------------------------------------------------------------------


def _cookie_name(request: Request, kind: str) -> str:
    # __Host-: only over HTTPS (the browser refuses the prefix otherwise), path /, no Domain.
    return f"__Host-medikus-{kind}" if request.url.scheme == "https" else f"medikus-{kind}"


def _address(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


async def _read_form(request: Request, limit: int = MAX_FORM_BYTES) -> dict[str, str]:
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media != _FORM:
        raise _BadForm(f"the body must be {_FORM}")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _BadForm(f"the form is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _BadForm(f"the form is larger than {limit} bytes")
    try:
        pairs = parse_qsl(
            body.decode("ascii"), keep_blank_values=True, errors="strict", max_num_fields=64
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise _BadForm("the form is not valid application/x-www-form-urlencoded") from exc
    return _single_params(pairs)


def _join_call(form: Mapping[str, str]) -> Callable[[AuthServices, str | None], Joined]:
    """What a join form asks for: a link (``link``) or a phone code (``grant`` and ``code``)."""
    link, grant, code = form.get("link"), form.get("grant"), form.get("code")
    if link is not None and grant is None and code is None:
        if _JOIN_SECRET.fullmatch(link) is None:
            raise _BadForm("link must be the token of a join link")
        return lambda s, address: s.join.join_by_link(link, address)
    if link is None and grant is not None and code is not None:
        digits = code.replace(" ", "").replace("-", "")  # as read out: "1234 5678"
        if _JOIN_SECRET.fullmatch(grant) is None or _JOIN_CODE.fullmatch(digits) is None:
            raise _BadForm("grant must be a grant id and code 8 digits")
        return lambda s, address: s.join.join_by_code(grant, digits, address)
    raise _BadForm("send either link, or grant and code")


def _single_params(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """RFC 6749 §3.1/§3.2: parameters must not be included more than once."""
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise _BadForm(f"parameter {name!r} is repeated")
        if "\x00" in name or "\x00" in value:
            raise _BadForm("parameters must not contain NUL")
        params[name] = value
    return params


def _scope_list(scope: str) -> list[str]:
    return [str(s) for s in parse_scopes(scope, ignore_unknown=True).resource] or [scope]


def _origin_source(uri: str) -> str:
    """The CSP source expression of a redirect URI's target."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.netloc}"
    return f"{parts.scheme}:"


def _page_csp(form_target: str | None = None) -> str:
    action = "'self'" + (f" {form_target}" if form_target else "")
    return f"default-src 'none'; form-action {action}; frame-ancestors 'none'; base-uri 'none'"


def _error_html(error: str | None) -> str:
    if error is None:
        return ""
    return f'<p role="alert" id="fehler"><strong>{html.escape(error)}</strong></p>\n'


def _page(title: str, body: str, status: int = 200, csp: str | None = None) -> HTMLResponse:
    document = f"""<!doctype html>
<html lang="de">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title></head>
<body><main>
{body}
</main></body>
</html>
"""
    headers = {"Content-Security-Policy": csp or _page_csp(), **_NO_STORE}
    return HTMLResponse(document, status, headers)


def _error_page(status: int, message: str, detail: str) -> HTMLResponse:
    body = (
        f'<h1>Fehler</h1>\n<p role="alert">{html.escape(message)}</p>\n'
        f"<p><small>Technische Angabe: <code>{html.escape(detail)}</code></small></p>"
    )
    return _page("Fehler – Medi-KUS", body, status)
