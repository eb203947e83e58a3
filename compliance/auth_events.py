"""Security events of identity and authorization (BSI TR-03161 O.Ntwk_7/8, ASVS 5.0 16.3.1/16.3.2).

Logins (succeeded, failed, throttled), logouts, password changes, account and client changes,
token issuance and refusals, detected code or refresh-token replays and join-link redemptions are
reported as ``(kind, details)`` to one sink, which the composition root connects to the audit
trail. Details are short strings: ids, the user name as typed, the client address, a reason
code — never a password, TOTP code, token or link (O.Pass_4).

The sink is called synchronously; if it raises, the operation fails (an event that cannot be
recorded must not pass silently).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

__all__ = ["EventSink", "Events"]

EventSink = Callable[[str, Mapping[str, str]], None]


class Events:
    """The event channel of one set of auth services; :meth:`connect` sets the sink later."""

    def __init__(self, sink: EventSink | None = None) -> None:
        self._sink = sink

    def connect(self, sink: EventSink | None) -> None:
        self._sink = sink

    def emit(self, event: str, /, **details: str | None) -> None:
        if self._sink is not None:
            self._sink(event, {k: v for k, v in details.items() if v is not None})
