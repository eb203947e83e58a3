"""References inside resources: finding local ones and rewriting them (https://hl7.org/fhir/R4/references.html).

Walks are iterative: resources may nest deeply and must not exhaust the Python stack.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from fhir_server.resource_types import r4_types

_LOCAL = re.compile(
    r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)


def reference_holders(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every object in ``resource`` that carries a ``reference`` string (Reference datatypes)."""
    containers = (dict, list)
    stack: list[Any] = [resource]
    while stack:
        node = stack.pop()
        if type(node) is dict:
            if type(node.get("reference")) is str:
                yield node
            stack.extend(v for v in node.values() if isinstance(v, containers))
        else:
            stack.extend(v for v in node if isinstance(v, containers))


def local_target(reference: str) -> tuple[str, str] | None:
    """(type, id) for a relative reference to a resource on this server, else None."""
    match = _LOCAL.match(reference)
    if match is None or match["type"] not in r4_types():
        return None
    return match["type"], match["id"]


# In serialised JSON a quote inside a string is always escaped, so this only matches real
# ``"reference": "…"`` members; scanning bytes is ~20x faster than walking the dict.
_REFERENCE_MEMBER = re.compile(rb'"reference":"((?:[^"\\]|\\.)*)"')


def references_in(content: bytes) -> list[str]:
    """Every Reference.reference string in a compactly serialised (orjson) resource."""
    return [m.decode() for m in _REFERENCE_MEMBER.findall(content)]


def is_unresolved(reference: str) -> bool:
    """urn:uuid and conditional references only mean something inside a transaction bundle."""
    return reference.startswith("urn:uuid:") or ("?" in reference and "://" not in reference)
