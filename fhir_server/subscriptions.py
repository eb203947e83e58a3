"""Subscription resources (https://hl7.org/fhir/R4/subscription.html): what this server accepts, and
their parsed form for the dispatcher (``notifications``).

Accepted: ``criteria`` ``Type`` or ``Type?query`` that a search of Type would accept; channel type
rest-hook with an http(s) endpoint, or websocket (subscription.html#channels); ``payload`` absent
(notification only) or JSON; ``header`` entries ``Name: value``. Anything else is refused with 422.
A rest-hook endpoint on a loopback, private, link-local or otherwise special address (or named
``localhost``) is refused unless ``Settings.allow_private_endpoints``: the server must not be
made to send requests into its own network (SSRF). Known limit: a host name is not resolved, so a
public name pointing at a private address passes. Who is notified of what: subscription_owner.
A client submits status requested, active or off (R4B: "a client can only submit requested or
off"; active is accepted so that a read-modify-write works); requested becomes active at once.
Only the server sets error (delivery failed repeatedly) and off (``end`` passed).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

import orjson

from fhir_server._time import parse_period
from fhir_server.context import Context, Validator
from fhir_server.errors import Category, FhirError
from fhir_server.search_type import matching_ids
from fhir_server.store import StoredVersion
from fhir_server.subscription_owner import Owner, owner_of

CHANNELS = ("rest-hook", "websocket")
CLIENT_STATUSES = ("requested", "active", "off")
# Statuses whose subscriptions get notifications: error keeps queueing while the endpoint is down.
LIVE_STATUSES = ("active", "error")
_PAYLOADS = ("application/fhir+json", "application/json")
_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_HEADER = re.compile(r"^(?P<name>[!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(?P<value>[^\r\n]*)$")


@dataclass(frozen=True, slots=True)
class Subscription:
    """What the dispatcher needs of one Subscription version."""

    id: str
    version: int
    status: str
    type: str  # the resource type of the criteria
    query: str  # the criteria's query string ("": every resource of the type)
    channel: str
    endpoint: str | None
    payload: bool  # send the version (PUT [endpoint]/[type]/[id]) or just notify (POST, no body)
    headers: tuple[tuple[str, str], ...]
    end: int | None  # epoch µs after which the server turns the subscription off
    error: str | None
    owner: Owner  # whose access bounds the notifications

    @property
    def live(self) -> bool:
        return self.status in LIVE_STATUSES


class SubscriptionRules:
    """The validator, plus this server's rules for Subscription resources (which it also
    activates: ``requested`` becomes ``active``). Wraps the injected validator, so creates,
    updates, patches and transaction entries all pass here."""

    def __init__(self, inner: Validator, ctx: Context) -> None:
        self._inner = inner
        self._ctx = ctx  # for the criteria check (its store and search parameters)

    def validate(self, resource: dict[str, Any]) -> None:
        self._inner.validate(resource)
        if resource.get("resourceType") == "Subscription":
            accept(self._ctx, resource)

    def warm_up(self, types: frozenset[str]) -> None:
        self._inner.warm_up(types)

    def elements(self, rtype: str) -> tuple[frozenset[str], frozenset[str]]:
        return self._inner.elements(rtype)

    def __getattr__(self, name: str) -> Any:
        # Whatever else the validator offers (its protocol grows) passes through unchanged.
        return getattr(self._inner, name)


def accept(ctx: Context, resource: dict[str, Any]) -> None:
    """Checks a submitted Subscription (422 if refused) and sets it active if requested."""
    status = resource.get("status")
    if status not in CLIENT_STATUSES:
        _refuse(
            "Subscription.status",
            f"A client submits status requested, active or off, not '{status}' (error is set "
            "by the server; submit requested to activate the subscription again).",
        )
    check_criteria(ctx, resource.get("criteria"))
    _check_channel(resource.get("channel"), ctx.settings.allow_private_endpoints)
    if status in ("requested", "active"):
        resource["status"] = "active"
        resource.pop("error", None)  # the error of an earlier failure no longer holds


def check_criteria(ctx: Context, criteria: Any) -> tuple[str, str]:
    """(type, query) of ``Type?query`` criteria that a search would accept."""
    if not isinstance(criteria, str):
        _refuse("Subscription.criteria", "Subscription.criteria is required.")
    rtype, _, query = criteria.partition("?")
    if not _TYPE.match(rtype):
        _refuse(
            "Subscription.criteria",
            f"Subscription.criteria '{criteria}' must be a resource type with an optional "
            "search query (Type?query), relative to this server.",
        )
    try:
        matching_ids(ctx, rtype, query, ())
    except FhirError as error:
        _refuse(
            "Subscription.criteria",
            f"Subscription.criteria '{criteria}' is not a search this server runs: "
            f"{error.diagnostics}",
        )
    return rtype, query


def _check_channel(channel: Any, allow_private: bool) -> None:
    if not isinstance(channel, dict) or channel.get("type") not in CHANNELS:
        kind = channel.get("type") if isinstance(channel, dict) else None
        _refuse(
            "Subscription.channel.type",
            f"Channel type '{kind}' is not supported; this server delivers rest-hook and websocket.",
        )
    if channel["type"] == "rest-hook" and not _is_http_url(channel.get("endpoint")):
        _refuse(
            "Subscription.channel.endpoint",
            f"A rest-hook needs an http or https endpoint, not '{channel.get('endpoint')}'.",
        )
    if (
        channel["type"] == "rest-hook"
        and not allow_private
        and private_endpoint(channel["endpoint"])
    ):
        _refuse(
            "Subscription.channel.endpoint",
            "Endpunkt in einem privaten oder lokalen Netz ist nicht erlaubt / an endpoint on a "
            f"loopback, private or link-local address is not allowed: '{channel['endpoint']}'.",
        )
    payload = channel.get("payload")
    if payload is not None and _media_type(payload) not in _PAYLOADS:
        _refuse(
            "Subscription.channel.payload",
            f"Payload '{payload}' is not supported; use application/fhir+json or leave it out "
            "(a notification without body).",
        )
    for i, header in enumerate(channel.get("header") or []):
        if not isinstance(header, str) or not _HEADER.match(header):
            _refuse(f"Subscription.channel.header[{i}]", f"'{header}' is not 'Name: value'.")


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. a malformed IPv6 host or port
        return False


def private_endpoint(url: str) -> bool:
    """Whether ``url`` names this host or an address outside the public internet (by its
    literal address or the name localhost; names are not resolved)."""
    try:
        host = (urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:
        return True
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host)
    except ValueError:
        try:  # the forms inet_aton reads too: "127.1", "2130706433", "0x7f.1"
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return False  # a name
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def _media_type(value: Any) -> str | None:
    return value.split(";")[0].strip().lower() if isinstance(value, str) else None


def _refuse(expression: str, message: str) -> NoReturn:
    raise FhirError(Category.UNPROCESSABLE, message, expression=(expression,))


def parse(stored: StoredVersion) -> Subscription | None:
    """The dispatcher's view of a stored Subscription; None if it cannot be served (a stored
    version predating these rules, say)."""
    if stored.content is None:
        return None
    resource = orjson.loads(stored.content)
    channel = resource.get("channel") or {}
    criteria = resource.get("criteria")
    owner = owner_of(resource)
    if not isinstance(criteria, str) or channel.get("type") not in CHANNELS or owner is None:
        return None
    rtype, _, query = criteria.partition("?")
    headers = []
    for header in channel.get("header") or []:
        match = _HEADER.match(header) if isinstance(header, str) else None
        if match:
            headers.append((match["name"], match["value"]))
    end = parse_period(resource["end"]) if isinstance(resource.get("end"), str) else None
    return Subscription(
        id=stored.id,
        version=stored.version,
        status=str(resource.get("status")),
        type=rtype,
        query=query,
        channel=channel["type"],
        endpoint=channel.get("endpoint"),
        payload=_media_type(channel.get("payload")) in _PAYLOADS,
        headers=tuple(headers),
        end=end[0] if end else None,
        error=resource.get("error"),
        owner=owner,
    )
