"""Forwards the outbox to the record core: one transaction of conditional creates per batch.

https://hl7.org/fhir/R4/http.html#trules and https://hl7.org/fhir/R4/http.html#ccreate — every
resource is created "if none exists" with its identifier, so sending a batch again (after a crash,
a lost answer, a re-sent stored record) creates nothing twice.

**Payload format** (what ``Outbox.mark_ready`` stores per reading, produced by the station from the
PHD mapper)::

    {
      "devices": {                        # the Device resources the observations refer to
        "phd": {"resourceType": "Device", "identifier": [...], ...},    # PhdDevice
        "phg": {"resourceType": "Device", "identifier": [...], ...}     # PhgDevice (the station)
      },
      "observations": [{"resourceType": "Observation", "identifier": [...], ...}, ...]
    }

- A device under key ``k`` is referenced from the observations as ``"urn:medikus:k"`` (so
  ``ObservationContext(device_reference="urn:medikus:phd", gateway_reference="urn:medikus:phg")``).
  A device's identity is its BTMAC identifier (``type.coding.code == "BTMAC"``), else its first
  identifier; the same device appears once per batch, as a conditional create on that identifier
  (a fresh ``urn:uuid`` fullUrl per batch). An existing Device is not updated.
- The *first* identifier of each observation is its de-dup identifier (PHD IG: a value without
  system; a system is used when present): the conditional create's criteria
  ``identifier=[system|]value``. Its fullUrl is ``devices.phd.identifiers.full_url(value)``, the
  urn the mapper uses for references between observations (``derivedFrom`` the panel, the glucose
  record, the Coincident Timestamp). Observations with the same identifier in one batch are sent
  once.

A ``urn:medikus:`` reference that names no device of its payload, or a malformed payload, sends
the reading to review before anything is sent.

Failures: a transient one (``UploadError``) retries the same batch after an exponential back-off
with jitter (capped); a refusal (``record_client.Refused``) is bisected until the refused reading is
alone — it goes to review with the record core's message, the others are uploaded.
"""

from __future__ import annotations

import asyncio
import copy
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

from devices.errors import UploadError
from devices.outbox import Item, Outbox
from devices.phd.identifiers import full_url
from devices.record_client import Refused

__all__ = ["PLACEHOLDER", "Transactions", "Uploader", "build_bundle"]

PLACEHOLDER = "urn:medikus:"
_BTMAC = "BTMAC"


class Transactions(Protocol):
    """What the uploader needs of ``RecordClient``."""

    async def transaction(self, bundle: Mapping[str, Any]) -> dict[str, Any]: ...


def _escape(text: str) -> str:
    """A token search value (R4 search §3.1.1.6 escaping)."""
    for char in ("\\", "|", ",", "$"):
        text = text.replace(char, "\\" + char)
    return text


def _token(identifier: Any, *, system_required: bool) -> str:
    """``[system|]value`` of an Identifier, for a token search."""
    if not isinstance(identifier, dict):
        raise ValueError("identifier is not an object")
    system, value = identifier.get("system"), identifier.get("value")
    if not isinstance(value, str) or not value:
        raise ValueError("identifier needs a value")
    if system is None and not system_required:
        return _escape(value)
    if not isinstance(system, str) or not system:
        raise ValueError("identifier needs system and value")
    return f"{_escape(system)}|{_escape(value)}"


def _device_key(device: Any) -> str:
    if not isinstance(device, dict) or device.get("resourceType") != "Device":
        raise ValueError("devices entries must be Device resources")
    identifiers = device.get("identifier")
    if not isinstance(identifiers, list) or not identifiers:
        raise ValueError("a Device needs an identifier")
    for identifier in identifiers:
        codings = (identifier.get("type") or {}).get("coding") or []
        if any(c.get("code") == _BTMAC for c in codings if isinstance(c, dict)):
            return _token(identifier, system_required=True)
    return _token(identifiers[0], system_required=True)


def _observation_key(observation: Any) -> tuple[str, str]:
    """(search token, fullUrl) of an Observation, from its de-dup identifier."""
    if not isinstance(observation, dict) or observation.get("resourceType") != "Observation":
        raise ValueError("observations entries must be Observation resources")
    identifiers = observation.get("identifier")
    if not isinstance(identifiers, list) or not identifiers:
        raise ValueError("an Observation needs its de-dup identifier")
    token = _token(identifiers[0], system_required=False)
    return token, full_url(identifiers[0]["value"])


def _rewrite(resource: dict[str, Any], placeholders: Mapping[str, str]) -> dict[str, Any]:
    """A copy with every placeholder reference replaced by its urn:uuid."""
    copied = copy.deepcopy(resource)
    stack: list[Any] = [copied]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            reference = node.get("reference")
            if isinstance(reference, str) and reference.startswith(PLACEHOLDER):
                if reference not in placeholders:
                    raise ValueError(f"unknown placeholder reference {reference!r}")
                node["reference"] = placeholders[reference]
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, dict | list))
    return copied


def _entry(urn: str, resource: dict[str, Any], key: str, resource_type: str) -> dict[str, Any]:
    return {
        "fullUrl": urn,
        "resource": resource,
        "request": {
            "method": "POST",
            "url": resource_type,
            "ifNoneExist": urlencode({"identifier": key}),
        },
    }


@dataclass
class _Batch:
    new_urn: Callable[[], str]
    # search token → (fullUrl, resource)
    devices: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    observations: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)

    def add(self, payload: Mapping[str, Any] | None) -> None:
        """Adds one reading's payload; ValueError (nothing added) if it is malformed."""
        if not isinstance(payload, Mapping):
            raise ValueError("payload missing")
        devices, observations = payload.get("devices") or {}, payload.get("observations")
        if not isinstance(devices, Mapping) or not isinstance(observations, list):
            raise ValueError("payload needs 'devices' (object) and 'observations' (list)")
        placeholders: dict[str, str] = {}
        new_devices: dict[str, tuple[str, dict[str, Any]]] = {}
        for name, device in devices.items():
            key = _device_key(device)
            urn = (self.devices.get(key) or new_devices.get(key) or (self.new_urn(), device))[0]
            new_devices.setdefault(key, (urn, device))
            placeholders[PLACEHOLDER + name] = urn
        keys = [_observation_key(o) for o in observations]
        rewritten = [_rewrite(o, placeholders) for o in observations]
        for key, value in new_devices.items():
            self.devices.setdefault(key, value)
        for (token, urn), observation in zip(keys, rewritten, strict=True):
            self.observations.setdefault(token, (urn, observation))

    def bundle(self) -> dict[str, Any]:
        entries = [_entry(u, r, k, "Device") for k, (u, r) in self.devices.items()]
        entries += [_entry(u, r, k, "Observation") for k, (u, r) in self.observations.items()]
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _new_urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def build_bundle(
    payloads: Sequence[Mapping[str, Any]], new_urn: Callable[[], str] = _new_urn
) -> dict[str, Any]:
    """The transaction Bundle for these payloads; ValueError if one is malformed."""
    batch = _Batch(new_urn)
    for payload in payloads:
        batch.add(payload)
    return batch.bundle()


class Uploader:
    """Sends ready outbox items in arrival order; :meth:`run` forever, :meth:`wake` on news."""

    def __init__(
        self,
        outbox: Outbox,
        client: Transactions,
        *,
        batch_size: int = 100,
        first_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        new_urn: Callable[[], str] = _new_urn,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._outbox = outbox
        self._client = client
        self._batch_size = batch_size
        self._first_backoff_s = first_backoff_s
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._jitter = jitter
        self._new_urn = new_urn
        self._wake = asyncio.Event()
        self.idle = asyncio.Event()  # set while waiting for news
        self.failures = 0  # consecutive transient failures (monitoring)
        self.last_error: str | None = None

    def wake(self) -> None:
        """New items are ready: upload now instead of waiting."""
        self._wake.set()

    async def run(self) -> None:
        """Uploads until cancelled; sleeps until :meth:`wake` when nothing is ready."""
        while True:
            self._wake.clear()  # before draining: a wake during the drain is not lost
            self.idle.clear()
            await self.drain()
            self.idle.set()  # everything ready went up (monitoring, tests)
            await self._wake.wait()

    async def drain(self) -> int:
        """Uploads every ready item (retrying transient failures); returns how many went up."""
        uploaded = 0
        while items := await asyncio.to_thread(self._outbox.pending, self._batch_size):
            uploaded += await self._deliver(await self._sendable(items))
        return uploaded

    async def _sendable(self, items: list[Item]) -> list[Item]:
        """Items whose payload is malformed go to review at once."""
        good = []
        for item in items:
            try:
                build_bundle([item.payload or {}], self._new_urn)
            except (ValueError, TypeError, AttributeError) as exc:
                reason = f"Nutzdaten ungültig / payload invalid: {exc}"
                await asyncio.to_thread(self._outbox.mark_review, item.id, reason)
            else:
                good.append(item)
        return good

    async def _deliver(self, items: list[Item]) -> int:
        if not items:
            return 0
        ids = [item.id for item in items]
        attempt = 0
        while True:
            bundle = build_bundle([item.payload or {} for item in items], self._new_urn)
            if not bundle["entry"]:  # readings that map to nothing (e.g. a bare glucose context)
                break
            try:
                answer = await self._client.transaction(bundle)
                _check_answer(answer, len(bundle["entry"]))
            except Refused as exc:
                return await self._bisect(items, exc)
            except UploadError as exc:
                self.failures, self.last_error = self.failures + 1, str(exc)
                await asyncio.to_thread(self._outbox.record_failure, ids, str(exc))
                await self._sleep(self._backoff(attempt))
                attempt += 1
                continue
            break
        self.failures, self.last_error = 0, None
        await asyncio.to_thread(self._outbox.mark_uploaded, ids)
        return len(ids)

    async def _bisect(self, items: list[Item], refusal: Refused) -> int:
        if len(items) == 1:
            await asyncio.to_thread(self._outbox.mark_review, items[0].id, str(refusal))
            return 0
        middle = len(items) // 2
        return await self._deliver(items[:middle]) + await self._deliver(items[middle:])

    def _backoff(self, attempt: int) -> float:
        """Exponential, capped, "equal jitter": between half and all of the step."""
        step = min(self._max_backoff_s, self._first_backoff_s * 2.0 ** min(attempt, 32))
        return step / 2 + self._jitter() * step / 2


def _check_answer(answer: Mapping[str, Any], expected: int) -> None:
    entries = answer.get("entry") or []
    if answer.get("type") != "transaction-response" or len(entries) != expected:
        raise UploadError("Unerwartete Antwort des Aktensystems / unexpected transaction response")
