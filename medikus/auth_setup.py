"""Where the master keys are and how identity/authorization opens from the configuration.

The keyring (compliance/keyring.py) comes from the key file ``MEDIKUS_KEY_FILE`` if set, else
from ``MEDIKUS_MASTER_KEYS`` in the environment if set, else from ``<data_dir>/keys.json``.
keyring.py refuses a key file inside a git work tree (one ``git add`` away from the repository),
and a checkout's default data directory lies inside it: there ``medikus demo`` keeps its key
file in ``$XDG_DATA_HOME/medikus/keys.json`` (``~/.local/share/medikus``) and says so.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path

import httpx

from compliance.auth import AuthServices, system_clock
from compliance.auth_events import EventSink
from compliance.keyring import ENV_KEYS, Keyring, generate_key_file, load_keyring
from medikus.config import Config

__all__ = [
    "SystemTokens",
    "default_key_file",
    "demo_key_file",
    "ensure_demo_keys",
    "key_file_path",
    "keyring",
    "open_auth",
]


def default_key_file(config: Config) -> Path:
    return (config.data_dir / "keys.json").absolute()


def demo_key_file(config: Config) -> Path:
    """The default key file, or the user's data directory when that is inside a git tree."""
    candidate = default_key_file(config)
    if not _inside_git_tree(candidate):
        return candidate
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "medikus" / "keys.json"


def key_file_path(config: Config) -> Path | None:
    """The key file to use, or None when the keys come from the environment."""
    if config.key_file is not None:
        return config.key_file
    if os.environ.get(ENV_KEYS, "").strip():
        return None
    return default_key_file(config)


def keyring(config: Config) -> Keyring:
    """The master keys (raises compliance.keyring.KeyringError with the reason)."""
    return load_keyring(key_file_path(config), os.environ)


def keyring_from(key_file: Path | None) -> Keyring:
    """The master keys of ``key_file`` (a command's ``--key-file``), else as configured."""
    return load_keyring(key_file, os.environ) if key_file else keyring(Config())


def ensure_demo_keys(config: Config) -> tuple[Path | None, bool]:
    """The key file the demo uses (None: keys from the environment) and whether it was created
    now; sets ``MEDIKUS_KEY_FILE`` so the server processes started next find it."""
    if config.key_file is not None or os.environ.get(ENV_KEYS, "").strip():
        return config.key_file, False
    path = demo_key_file(config)
    os.environ["MEDIKUS_KEY_FILE"] = str(path)
    if path.exists():
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    generate_key_file(path)
    return path, True


def open_auth(
    config: Config,
    *,
    database_url: str | None = None,
    clock: Callable[[], int] = system_clock,
    on_event: EventSink | None = None,
) -> AuthServices:
    return AuthServices.open(
        database_url or config.resolved_database_url(),
        keyring(config),
        config.public_url,
        clock=clock,
        on_event=on_event,
    )


class SystemTokens(httpx.Auth):
    """Bearer tokens of Medi-KUS's own admin client for this machine's scripts (loader,
    benchmarks, tests), minted from the key file like ``medikus admin token`` and renewed a
    minute before they expire (access tokens live at most 5 minutes). An ``httpx.Auth``."""

    def __init__(
        self, open_services: Callable[[], AuthServices], scope: str = "system/*.cruds"
    ) -> None:
        self._open = open_services
        self._scope = scope
        self._current: tuple[str, int] | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_server(cls, database_url: str, public_url: str) -> SystemTokens:
        """Tokens for the server at ``public_url`` (their issuer and audience) on that database."""
        return cls(lambda: open_auth(Config(public_url=public_url), database_url=database_url))

    def value(self) -> str:
        with self._lock:
            if self._current is None or self._current[1] - time.time() < 60:
                services = self._open()
                try:
                    self._current = services.server.internal_token(self._scope)
                finally:
                    services.close()
            return self._current[0]

    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value()}"}

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.value()}"
        yield request


def _inside_git_tree(path: Path) -> bool:
    return any((directory / ".git").exists() for directory in path.parents)
