"""Configuration from environment variables (``MEDIKUS_*``), validated at start."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
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
    pool_size: int = Field(default=10, gt=0)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.data_dir / 'medikus.sqlite3').resolve()}"
