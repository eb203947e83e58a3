"""FHIR over HTTP to the record core, as a SMART backend service.

https://hl7.org/fhir/smart-app-launch/backend-services.html — the token endpoint comes from the
SMART configuration; the station asks for a token with the client credentials grant, signed
by its key (``credentials.py``), keeps it until shortly before it expires and renews it at once
when the record core answers 401. https://hl7.org/fhir/R4/http.html for the interactions.

Failures become :class:`devices.errors.UploadError`; two kinds matter to the uploader:

- :class:`Refused` — the record core refused the *content* (400, 404, 409, 412, 422 …):
  permanent, sending it again gives the same answer. The message carries the
  OperationOutcome's diagnostics.
- any other ``UploadError`` — transport failure, timeout, 408, 429, 5xx, and also 401/403 and
  token-endpoint refusals: the station is not (yet) authorised, which is fixed by registering it,
  not by parking readings. Retry later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from devices import fhir_json
from devices.credentials import StationKey
from devices.errors import UploadError

__all__ = ["STATION_SCOPES", "RecordClient", "Refused"]

STATION_SCOPES = "system/Observation.crs system/Device.crus system/Patient.rs"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_FHIR_JSON = "application/fhir+json"
_RETRYABLE = frozenset({401, 403, 408, 425, 429})
_MAX_DIAGNOSTICS = 1000


class Refused(UploadError):
    """The record core refused the request's content (permanent)."""

    def __init__(self, status: int, diagnostics: str) -> None:
        super().__init__(
            f"Aktensystem lehnt ab / record core refused (HTTP {status}): {diagnostics}"
        )
        self.status = status
        self.diagnostics = diagnostics


class RecordClient:
    """An authenticated FHIR client for the record core at ``fhir_base`` (``…/fhir``).

    ``clock`` gives epoch seconds (token expiry, assertion times). Pass ``transport`` to inject
    faults or an in-process app. Use as ``async with`` or call :meth:`aclose`.
    """

    def __init__(
        self,
        fhir_base: str,
        client_id: str,
        key: StationKey,
        *,
        scope: str = STATION_SCOPES,
        token_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        renew_before_s: float = 30.0,
    ) -> None:
        self.fhir_base = fhir_base.rstrip("/")
        self._client_id = client_id
        self._key = key
        self._scope = scope
        self._token_url = token_url
        self._clock = clock
        self._renew_before_s = renew_before_s
        self._token: tuple[str, float] | None = None  # (access token, expires at)
        self._token_lock = asyncio.Lock()
        self._http = httpx.AsyncClient(
            transport=transport, timeout=timeout_s, headers={"accept": _FHIR_JSON}
        )

    async def __aenter__(self) -> RecordClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- FHIR interactions ---

    async def transaction(self, bundle: Mapping[str, Any]) -> dict[str, Any]:
        """POSTs a transaction (or batch) Bundle; returns the response Bundle."""
        # Decimals keep their digits (FHIR: "70.000" is not "70.0").
        response = await self._request("POST", self.fhir_base, content=fhir_json.dumps(bundle))
        return _json_body(response)

    async def search(self, resource_type: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        """The matching resources of the first page (``_count`` in ``params`` sets its size)."""
        response = await self._request("GET", f"{self.fhir_base}/{resource_type}", params=params)
        bundle = _json_body(response)
        return [
            entry["resource"]
            for entry in bundle.get("entry") or []
            if "resource" in entry and entry.get("search", {}).get("mode", "match") == "match"
        ]

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The resource, or ``None`` if it does not exist (404) or was deleted (410)."""
        try:
            response = await self._request("GET", f"{self.fhir_base}/{resource_type}/{resource_id}")
        except Refused as exc:
            if exc.status in (404, 410):
                return None
            raise
        return _json_body(response)

    # --- transport and authorisation ---

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = {"content-type": _FHIR_JSON} if "content" in kwargs else {}
        for attempt in range(2):
            token = await self._access_token(renew=attempt > 0)
            headers["authorization"] = f"Bearer {token}"
            response = await self._send(method, url, headers=headers, **kwargs)
            if response.status_code != 401:
                break
        _check(response)
        return response

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise UploadError(
                f"Aktensystem nicht erreichbar / record core unreachable: {exc!r}"
            ) from exc

    async def _access_token(self, *, renew: bool) -> str:
        async with self._token_lock:
            now = self._clock()
            if renew or self._token is None or self._token[1] - self._renew_before_s <= now:
                self._token = await self._fetch_token(now)
            return self._token[0]

    async def _fetch_token(self, now: float) -> tuple[str, float]:
        token_url = self._token_url or await self._discover_token_url()
        self._token_url = token_url
        form = {
            "grant_type": "client_credentials",
            "scope": self._scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self._key.assertion(self._client_id, token_url, int(now)),
        }
        response = await self._send("POST", token_url, data=form)
        if response.status_code != 200:
            raise UploadError(
                f"Anmeldung der Station abgelehnt / station token refused (HTTP "
                f"{response.status_code}): {_oauth_error(response)}"
            )
        answer = _json_body(response)
        token, lifetime = answer.get("access_token"), answer.get("expires_in")
        if not isinstance(token, str) or not isinstance(lifetime, int | float):
            raise UploadError("Token-Antwort unvollständig / token response incomplete")
        return token, now + lifetime

    async def _discover_token_url(self) -> str:
        """SMART places the document under the FHIR base; Medi-KUS serves it at the origin."""
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(self.fhir_base))
        for base in (self.fhir_base, origin):
            response = await self._send("GET", f"{base}/.well-known/smart-configuration")
            if 400 <= response.status_code < 500:  # not served here (Medi-KUS: 401 under /fhir)
                continue
            _check(response)
            endpoint = _json_body(response).get("token_endpoint")
            if isinstance(endpoint, str):
                return endpoint
        raise UploadError(
            f"SMART-Konfiguration ohne Token-Endpunkt / no token endpoint in the SMART "
            f"configuration of {self.fhir_base}"
        )


def _check(response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    if status >= 500 or status in _RETRYABLE:
        raise UploadError(
            f"Aktensystem vorübergehend nicht bereit / record core not available (HTTP "
            f"{status}): {_diagnostics(response)}"
        )
    raise Refused(status, _diagnostics(response))


def _json_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise UploadError(
            f"Antwort ist kein JSON / response is not JSON (HTTP {response.status_code})"
        ) from exc
    if not isinstance(body, dict):
        raise UploadError("Antwort ist kein JSON-Objekt / response is not a JSON object")
    return body


def _diagnostics(response: httpx.Response) -> str:
    """The OperationOutcome's issues (diagnostics or details), else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:_MAX_DIAGNOSTICS] or response.reason_phrase
    issues = body.get("issue") if isinstance(body, dict) else None
    if not isinstance(issues, list):
        return response.text[:_MAX_DIAGNOSTICS]
    texts = []
    for issue in issues:
        if not isinstance(issue, dict):
            continue
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
        where = ", ".join(issue.get("expression") or ())
        texts.append(f"{text} [{where}]" if where else str(text))
    return "; ".join(texts)[:_MAX_DIAGNOSTICS] or response.reason_phrase


def _oauth_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:_MAX_DIAGNOSTICS]
    if isinstance(body, dict) and "error" in body:
        return f"{body['error']}: {body.get('error_description', '')}"
    return response.text[:_MAX_DIAGNOSTICS]
