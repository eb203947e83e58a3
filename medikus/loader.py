"""Loads transaction bundles (Synthea and the like) into a running record core over HTTP."""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import orjson

# Synthea posts the same Organizations and Practitioners in every bundle; conditional creates on
# their identifier keep one copy each (https://hl7.org/fhir/R4/http.html#ccreate).
SHARED_TYPES = frozenset({"Organization", "Practitioner", "Location", "PractitionerRole"})


def synthea_bundles() -> list[Path]:
    folder = resources.files("medikus") / "demo_data" / "synthea-r4"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".json.gz"))


def read_bundle(path: Path) -> dict[str, Any]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    bundle: dict[str, Any] = orjson.loads(data)
    return deduplicate_shared(bundle)


def deduplicate_shared(bundle: dict[str, Any]) -> dict[str, Any]:
    """Turns POSTs of shared resources into conditional creates on their first identifier."""
    for entry in bundle.get("entry", []):
        resource = entry.get("resource") or {}
        request = entry.get("request") or {}
        identifiers = resource.get("identifier") or []
        if (
            resource.get("resourceType") in SHARED_TYPES
            and request.get("method") == "POST"
            and identifiers
        ):
            first = identifiers[0]
            request.setdefault(
                "ifNoneExist", f"identifier={first.get('system', '')}|{first['value']}"
            )
    return bundle


@dataclass(frozen=True)
class LoadResult:
    path: Path
    entries: int
    status: int
    detail: str = ""


class LoadError(Exception):
    """A bundle was refused by the server."""


MAX_THROTTLED_RETRIES = 20


def post_bundle(
    client: httpx.Client, bundle: dict[str, Any], token: Callable[[], str] | None = None
) -> httpx.Response:
    """Posts a transaction; waits out rate limits (429, Retry-After) instead of failing."""
    body = orjson.dumps(bundle)
    for _ in range(MAX_THROTTLED_RETRIES):
        headers = {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token()}"
        response = client.post("/", content=body, headers=headers)
        if response.status_code != 429:
            return response
        time.sleep(_retry_after(response))
    return response


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    return min(float(value), 60.0) if value.isdigit() else 1.0


def load(
    base_url: str,
    paths: Iterable[Path],
    *,
    workers: int = 2,
    timeout: float = 300,
    token: Callable[[], str] | None = None,
) -> Iterator[LoadResult]:
    """Posts each bundle as a transaction, ``workers`` at a time; yields results as they finish.
    ``token`` supplies the bearer token for each request (fresh ones as they expire)."""
    # No keep-alive: a fresh connection per bundle is taken by whichever server worker is idle.
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=base_url, timeout=timeout, limits=limits) as client:

        def one(path: Path) -> LoadResult:
            bundle = read_bundle(path)
            response = post_bundle(client, bundle, token)
            detail = "" if response.status_code == 200 else response.text[:500]
            return LoadResult(path, len(bundle.get("entry", [])), response.status_code, detail)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            yield from pool.map(one, paths)
