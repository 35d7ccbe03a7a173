"""Turn ``DATABASE_URL`` into a Django ``DATABASES`` entry (postgres:// and sqlite:// only)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit


def parse_database_url(url: str, base_dir: Path) -> dict:
    parts = urlsplit(url)
    if parts.scheme in ("postgres", "postgresql", "pgsql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
        }
    if parts.scheme == "sqlite":
        # sqlite:///relative/path or sqlite:////absolute/path
        path = parts.path[1:] if parts.path.startswith("//") else parts.path.lstrip("/")
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(base_dir / path) if path else ":memory:"}
    raise ValueError(f"DATABASE_URL scheme {parts.scheme!r} is not supported (use postgres:// or sqlite://)")
