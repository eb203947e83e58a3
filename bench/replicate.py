"""Synthea transaction bundles replicated N times with fresh ids and identifiers per copy.

Bundles are FHIR transactions (https://hl7.org/fhir/R4/http.html#transaction) whose entries refer
to each other by ``urn:uuid`` fullUrls (https://hl7.org/fhir/R4/bundle.html#references). Each copy
gets new UUIDs for every fullUrl, resource id and UUID-valued identifier (the same old UUID maps to
the same new one throughout a copy, so references stay consistent) and a copy suffix on every
other identifier. Organizations, Practitioners and the like keep their identifiers: the loader's
conditional creates (``ifNoneExist``) share them between copies, as in a real population.
Patient names are kept, so a name matches one patient per copy.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from medikus.loader import SHARED_TYPES, read_bundle

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID_TEXT = re.compile(_UUID.pattern.decode())
# Stands for the copy number in identifier values; cannot occur in Synthea data.
_MARK = b"~copy~"


@dataclass(frozen=True)
class Facts:
    """What the searches draw their parameter values from, for the patient of one bundle."""

    patient_entry: int  # index of the Patient entry (and of its transaction response entry)
    names: tuple[str, ...]  # family and given names
    vital_sign_codes: tuple[str, ...]  # system|code of Observations in category vital-signs
    encounter_dates: tuple[str, ...]  # YYYY-MM-DD of Encounter.period.start
    condition_codes: tuple[str, ...]  # system|code
    observation_codes: tuple[str, ...]  # system|code, once per Observation (a weighted draw)


@dataclass(frozen=True)
class Template:
    """One bundle, serialised with placeholders, and the UUIDs a copy replaces."""

    name: str
    body: bytes
    resources: int
    fresh: frozenset[bytes]  # UUIDs that get a new value in every copy
    facts: Facts | None  # None when the bundle has no Patient


def template(path: Path) -> Template:
    bundle = read_bundle(path)
    entries = bundle.get("entry") or []
    fresh = {_uuid_of(e.get("fullUrl") or "") for e in entries} - {None}
    shared: set[str] = set()
    for entry in entries:
        resource = entry.get("resource") or {}
        for identifier in resource.get("identifier") or []:
            value = identifier.get("value")
            if not isinstance(value, str):
                continue
            if resource.get("resourceType") in SHARED_TYPES:
                shared.add(value)
            elif _UUID_TEXT.fullmatch(value):
                fresh.add(value)
            else:
                identifier["value"] = value + "-" + _MARK.decode()
    # A shared resource's identifier (an Organization's is its own fullUrl UUID) must stay as it is
    # for ifNoneExist to find the first copy's resource.
    keep = frozenset(u.encode() for u in fresh if u is not None and u not in shared)
    return Template(path.name, orjson.dumps(bundle), len(entries), keep, facts(entries))


def _uuid_of(full_url: str) -> str | None:
    value = full_url.removeprefix("urn:uuid:")
    return value if value != full_url and _UUID_TEXT.fullmatch(value) else None


def copy(tpl: Template, number: int, seed: int) -> bytes:
    """Copy ``number`` of the bundle: the same new UUID for each old one, wherever it occurs."""
    rng = random.Random(f"{seed}/{number}/{tpl.name}")
    new: dict[bytes, bytes] = {
        old: str(uuid.UUID(int=rng.getrandbits(128), version=4)).encode()
        for old in sorted(tpl.fresh)
    }
    body = _UUID.sub(lambda m: new.get(m.group(), m.group()), tpl.body)
    return body.replace(_MARK, f"c{number}".encode())


@dataclass(frozen=True)
class Spooled:
    """One copy of one bundle, written to ``path``; what the loader posts."""

    template: Template
    number: int
    path: Path


def spool(templates: Sequence[Template], count: int, folder: Path, seed: int) -> Iterator[Spooled]:
    """Writes ``count`` bundles to ``folder``: copy 0 of every template, then copy 1, and so on.

    Loading them in this order grows the database evenly, as a population would."""
    for n in range(count):
        number, index = divmod(n, len(templates))
        tpl = templates[index]
        path = folder / f"c{number:03d}-{index:03d}-{tpl.name.removesuffix('.gz')}"
        path.write_bytes(copy(tpl, number, seed))
        yield Spooled(tpl, number, path)


def facts(entries: Sequence[dict[str, Any]]) -> Facts | None:
    resources = [e.get("resource") or {} for e in entries]
    patients = [i for i, r in enumerate(resources) if r.get("resourceType") == "Patient"]
    if not patients:
        return None
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        by_type.setdefault(resource.get("resourceType", ""), []).append(resource)
    observations = by_type.get("Observation", [])
    vital_signs = [o for o in observations if "vital-signs" in _category_codes(o)]
    return Facts(
        patient_entry=patients[0],
        names=_names(resources[patients[0]]),
        vital_sign_codes=_first_codes(vital_signs),
        encounter_dates=tuple(
            start[:10]
            for e in by_type.get("Encounter", [])
            if len(start := (e.get("period") or {}).get("start") or "") >= 10
        ),
        condition_codes=_first_codes(by_type.get("Condition", [])),
        observation_codes=_first_codes(observations),
    )


def _first_codes(resources: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    return tuple(c for r in resources for c in _codes(r.get("code"))[:1])


def _names(patient: dict[str, Any]) -> tuple[str, ...]:
    out: list[str] = []
    for name in patient.get("name") or []:
        if isinstance(name.get("family"), str):
            out.append(name["family"])
        out += [g for g in name.get("given") or [] if isinstance(g, str)]
    return tuple(dict.fromkeys(out))


def _codes(concept: Any) -> list[str]:
    if not isinstance(concept, dict):
        return []
    return [
        f"{c['system']}|{c['code']}"
        for c in concept.get("coding") or []
        if isinstance(c.get("system"), str) and isinstance(c.get("code"), str)
    ]


def _category_codes(resource: dict[str, Any]) -> set[str]:
    return {
        c.get("code")
        for category in resource.get("category") or []
        for c in category.get("coding") or []
    }
