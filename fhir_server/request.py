"""Framework-free request and response of the FHIR RESTful API (https://hl7.org/fhir/R4/http.html).

Interactions are functions ``(FhirRequest, Context) -> FhirResponse``; the HTTP layer and the
batch/transaction processor both build FhirRequests, so a bundle entry runs the same code as a
plain HTTP call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from compliance.principal import Principal
from fhir_server import fhir_json
from fhir_server._time import format_http_date, format_instant
from fhir_server.errors import Category, FhirError, information
from fhir_server.store import StoredVersion

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
_JSON_TYPES = frozenset({FHIR_JSON, "application/json", "application/json+fhir"})


@dataclass(frozen=True, slots=True)
class FhirRequest:
    """One FHIR interaction request. ``path`` is relative to the FHIR base, without leading slash."""

    method: str
    path: str
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    base: str = ""  # absolute FHIR base URL, for Location and fullUrl
    parsed: Any = None  # the body already parsed (bundle entries), instead of ``body``
    # Who asks (fhir_server/access.py decides); None: the system itself, in process.
    principal: Principal | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def prefer(self, key: str) -> str | None:
        """A token of the Prefer header (https://hl7.org/fhir/R4/http.html#ops), e.g. return."""
        for part in (self.headers.get("prefer") or "").split(","):
            name, _, value = part.strip().partition("=")
            if name.strip().lower() == key:
                return value.strip().strip('"')
        return None

    def media_type(self) -> str:
        return (self.headers.get("content-type") or "").split(";")[0].strip().lower()

    def json_body(self) -> Any:
        if self.parsed is not None:
            return self.parsed
        if self.media_type() not in _JSON_TYPES:
            shown = self.media_type() or "none"
            raise FhirError(
                Category.UNSUPPORTED_MEDIA_TYPE,
                f"Content type '{shown}' is not supported; send application/fhir+json.",
            )
        return parse_json(self.body)

    def resource_body(self) -> dict[str, Any]:
        body = self.json_body()
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise FhirError(
                Category.INVALID,
                "The body must be a FHIR resource (a JSON object with resourceType).",
            )
        return body


# JSON can carry control characters only as escapes (\u0000-\u001f, \b, \f); FHIR strings must
# not contain them except tab, LF and CR (datatypes.html#string).
_CONTROL = re.compile(rb"\\(?:u00(?:0[0-8bcefBCEF]|1[0-9a-fA-F])|[bf])")


def _has_control_character(body: bytes) -> bool:
    for match in _CONTROL.finditer(body):
        before = match.start() - 1
        while before >= 0 and body[before] == 0x5C:  # backslashes right before this one
            before -= 1
        if (match.start() - 1 - before) % 2 == 0:  # not itself escaped ("\\u0000" is text)
            return True
    return False


MAX_INT32 = 2**31 - 1


def is_whole_number(value: str, maximum: int = MAX_INT32) -> bool:
    """ASCII digits only (``"²".isdigit()`` is true) and within the database's integer range."""
    return value.isascii() and value.isdigit() and int(value) <= maximum


def whole_number(value: str | None, default: int, name: str, maximum: int = MAX_INT32) -> int:
    """A non-negative integer parameter such as ``_count``; 400 when it is anything else."""
    if value is None:
        return default
    if not is_whole_number(value, maximum):
        raise FhirError(
            Category.INVALID,
            f"{name} must be a whole number from 0 to {maximum}.",
            expression=(name,),
        )
    return int(value)


def parse_json(body: bytes) -> Any:
    if not body:
        raise FhirError(Category.INVALID, "The request has no body.")
    try:
        parsed = fhir_json.loads(body)  # decimals keep their digits (datatypes.html#decimal)
    except orjson.JSONDecodeError as exc:
        raise FhirError(Category.INVALID, f"The body is not valid JSON: {exc}") from exc
    if _has_control_character(body):
        raise FhirError(
            Category.INVALID,
            "The body contains control characters, which FHIR strings must not contain.",
        )
    return parsed


@dataclass(slots=True)
class FhirResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Parsed resource for bundle processing, when it is cheap to have (avoid re-parsing).
    resource: dict[str, Any] | None = None
    last_updated: int | None = None  # of the version a write produced

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> FhirResponse:
        return cls(
            status,
            fhir_json.dumps(payload),
            headers or {},
            payload if isinstance(payload, dict) else None,
        )

    @classmethod
    def error(cls, error: FhirError) -> FhirResponse:
        return cls.json(error.status, error.outcome())


def version_headers(stored: StoredVersion, base: str) -> dict[str, str]:
    headers = {
        "etag": f'W/"{stored.version}"',
        "last-modified": format_http_date(stored.last_updated),
    }
    if base:
        headers["location"] = f"{base}/{stored.type}/{stored.id}/_history/{stored.version}"
    return headers


def write_response(
    request: FhirRequest, stored: StoredVersion, status: int, message: str
) -> FhirResponse:
    """The response to a write, shaped by ``Prefer: return=...`` (http.html#ops)."""
    headers = version_headers(stored, request.base)
    preference = request.prefer("return")
    if preference == "minimal" or stored.content is None:
        response = FhirResponse(status, b"", headers)
    elif preference == "OperationOutcome":
        response = FhirResponse.json(status, information(message), headers)
    else:
        response = FhirResponse(status, stored.content, headers)
    response.last_updated = stored.last_updated
    return response


def meta_of(stored: StoredVersion) -> dict[str, str]:
    return {"versionId": str(stored.version), "lastUpdated": format_instant(stored.last_updated)}
