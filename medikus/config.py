"""Configuration from environment variables (``MEDIKUS_*``), validated at start."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Config(BaseSettings):
    """Settings of one Medi-KUS process."""

    model_config = SettingsConfigDict(env_prefix="MEDIKUS_", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="Where the embedded database lives.")
    database_url: str = Field(
        default="", description="sqlite:///… or postgresql://…; empty: SQLite in data_dir."
    )
    migrate: bool = Field(default=True, description="Create/upgrade the schema at start.")
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    enforce_references: bool = Field(default=True, description="References must resolve on write.")
    allow_private_endpoints: bool = Field(
        default=False,
        description="Subscription rest-hooks to loopback/private/link-local addresses (tests, dev).",
    )
    pool_size: int = Field(default=10, gt=0)
    # Rate limits (medikus/rate_limit.py): shared by all workers through Redis when it is set.
    rate_limit: bool = Field(default=True, description="Rate limits per client (429).")
    redis_url: str | None = Field(
        default=None, description="redis://…: rate-limit state shared by all workers and hosts."
    )
    # Identity and authorization (medikus/auth_setup.py, compliance/auth.py).
    public_url: str = Field(
        default="http://127.0.0.1:8000",
        description="The URL clients reach this server at (token issuer; FHIR base = …/fhir).",
    )
    # Video consultations (video/turn.py): STUN/TURN servers offered to the browsers; TURN
    # credentials are time-limited, made from the secret shared with coturn (use-auth-secret).
    stun_urls: str = Field(default="", description="stun:host:3478, comma-separated")
    turn_urls: str = Field(
        default="", description="turn:host:3478?transport=udp,turns:host:5349, comma-separated"
    )
    turn_secret: str = Field(default="", description="coturn static-auth-secret")
    turn_ttl_s: int = Field(default=3600, gt=0, le=86400)
    key_file: Path | None = Field(
        default=None,
        description="The master key file (mode 600, outside git); default: data_dir/keys.json.",
    )

    def ice_servers(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(STUN URLs, TURN URLs) from the comma-separated settings."""

        def split(text: str) -> tuple[str, ...]:
            return tuple(u.strip() for u in text.split(",") if u.strip())

        return split(self.stun_urls), split(self.turn_urls)

    @model_validator(mode="after")
    def _turn_needs_secret(self) -> Config:
        if self.turn_urls.strip() and not self.turn_secret:
            raise ValueError(
                "MEDIKUS_TURN_URLS needs MEDIKUS_TURN_SECRET (coturn static-auth-secret)"
            )
        return self

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.data_dir / 'medikus.sqlite3').resolve()}"
