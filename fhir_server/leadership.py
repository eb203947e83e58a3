"""Work that one process per database does at a time (the subscription dispatcher, the audit
chainer): take the lease, lead while it lasts, and when it is lost or the work fails, wait and
try again — another process may have taken over meanwhile."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from fhir_server.store import Lease


def lead_until_stopped(
    take: Callable[[], Lease | None],
    lead: Callable[[Lease], None],
    stop: threading.Event,
    retry_s: float,
    what: str,
    log: logging.Logger,
) -> None:
    """Runs ``lead`` whenever this process holds the lease, until ``stop`` is set."""
    while not stop.is_set():
        try:
            lease = take()
        except Exception:  # the database or the lock file: try again later
            log.warning("cannot take the %s lease", what, exc_info=True)
            lease = None
        if lease is None:
            stop.wait(retry_s)
            continue
        try:
            lead(lease)
        except Exception:
            log.exception("the %s failed; it starts again", what)
            stop.wait(retry_s)
        finally:
            lease.release()
