"""Identity and the SMART authorization server assembled on one database (the public entry point).

``AuthServices.open(database_url, keyring, base_url)`` opens compliance's tables on the record
core's database, creates the first token signing key if there is none, and wires accounts
(accounts.py), the authenticator and join links (identity.py) and the authorization server
(oauth.py) to one clock and one event channel (auth_events.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from compliance._sqlstore import AuthStore
from compliance.auth_events import Events, EventSink
from compliance.identity import (
    AuthenticationFailed,
    Authenticator,
    Identity,
    JoinAccess,
    PrefixedFailures,
    SessionPolicy,
)
from compliance.join_links import JoinLinks
from compliance.keyring import Keyring
from compliance.oauth import AuthorizationServer, AuthUrls
from compliance.passwords import PasswordHasher
from compliance.principal import Principal
from compliance.signing import SigningKeyManager
from compliance.throttle import LoginThrottle
from compliance.tokens import AccessTokenClaims

__all__ = ["AuthServices", "AuthenticationFailed", "system_clock"]

Clock = Callable[[], int]


def system_clock() -> int:
    """Epoch microseconds."""
    return time.time_ns() // 1000


@dataclass(frozen=True)
class AuthServices:
    store: AuthStore
    events: Events
    identity: Identity
    signing: SigningKeyManager
    authenticator: Authenticator
    server: AuthorizationServer
    join: JoinAccess
    urls: AuthUrls
    keyring: Keyring

    @classmethod
    def open(
        cls,
        database_url: str,
        keyring: Keyring,
        base_url: str,
        *,
        clock: Clock = system_clock,
        on_event: EventSink | None = None,
        policy: SessionPolicy | None = None,
        hasher: PasswordHasher | None = None,
        pool_size: int = 5,
        cache_s: float = 2.0,
    ) -> AuthServices:
        """``base_url``: the public URL of this server (``https://medikus.example``); the FHIR
        base is ``<base_url>/fhir`` (the tokens' audience), the issuer is ``base_url``."""
        urls = AuthUrls(base_url)
        store = AuthStore.open(
            database_url, clock_s=lambda: clock() // 1_000_000, pool_size=pool_size
        )
        try:
            events = Events(on_event)
            signing = SigningKeyManager(
                store, keyring, clock, issuer=urls.issuer, audience=urls.fhir
            )
            signing.ensure_key()
            identity = Identity(store, keyring, clock, events=events, policy=policy, hasher=hasher)
            authenticator = Authenticator(identity, signing, store, cache_s=cache_s)
            server = AuthorizationServer(store, identity, signing, urls, events=events)
            join_throttle = LoginThrottle(PrefixedFailures(store.failures, "join:"), clock)
            join = JoinAccess(
                JoinLinks(store.join_grants, clock), signing, events, throttle=join_throttle
            )
        except BaseException:
            store.close()
            raise
        return cls(store, events, identity, signing, authenticator, server, join, urls, keyring)

    def authenticate(self, authorization: str | None, address: str | None) -> Principal:
        """The caller of a request (see identity.Authenticator); raises
        :class:`~compliance.identity.AuthenticationFailed`."""
        return self.authenticator.authenticate(authorization, address)

    def redeem_join_link(
        self, token: str, address: str | None = None
    ) -> tuple[str, AccessTokenClaims]:
        """A short-lived patient token for a join link (single use); raises
        :class:`~compliance.join_links.JoinRefused` or, after many refusals from ``address``,
        :class:`~compliance.identity.JoinThrottled`."""
        return self.join.redeem_link(token, address)

    def redeem_join_code(
        self, grant_id: str, code: str, address: str | None = None
    ) -> tuple[str, AccessTokenClaims]:
        """A short-lived patient token for the phone code of join grant ``grant_id`` (single
        use, a few attempts); raises :class:`~compliance.join_links.JoinRefused`."""
        return self.join.redeem_code(grant_id, code, address)

    def close(self) -> None:
        self.store.close()
