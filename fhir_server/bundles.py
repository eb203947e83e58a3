"""Building response Bundles around stored JSON without re-parsing it (https://hl7.org/fhir/R4/bundle.html)."""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import urlencode

import orjson

from fhir_server._time import format_instant
from fhir_server.store import StoredVersion


def entry(base: str, stored: StoredVersion, **extra: Any) -> dict[str, Any]:
    """A Bundle.entry whose resource is the stored JSON, embedded as-is."""
    out: dict[str, Any] = {"fullUrl": f"{base}/{stored.type}/{stored.id}"}
    if stored.content is not None:
        out["resource"] = orjson.Fragment(stored.content)
    out.update(extra)
    return out


def encode_cursor(payload: Any) -> str:
    """An opaque page cursor (``_cursor``) carrying JSON: URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


def decode_cursor(cursor: str) -> Any:
    """The payload of :func:`encode_cursor`; raises ValueError for anything else."""
    try:
        return orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, orjson.JSONDecodeError) as exc:
        raise ValueError("not a cursor") from exc


def link(base: str, path: str, query: list[tuple[str, str]]) -> str:
    url = f"{base}/{path}" if path else base
    return f"{url}?{urlencode(query)}" if query else url


def bundle(
    kind: str,
    links: list[tuple[str, str]],
    entries: list[dict[str, Any]],
    total: int | None = None,
    now: int | None = None,
) -> bytes:
    out: dict[str, Any] = {"resourceType": "Bundle", "type": kind}
    if now is not None:
        out["timestamp"] = format_instant(now)
    if total is not None:
        out["total"] = total
    out["link"] = [{"relation": rel, "url": url} for rel, url in links]
    out["entry"] = entries
    return orjson.dumps(out)
