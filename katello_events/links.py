"""Where the published documentation lives: the one base URL that hints and messages link to.

A user who installed the package with pip has no ``docs/`` folder, so system-check hints name
pages of the published documentation (built from ``docs/`` by MkDocs), never repository paths.
"""

from __future__ import annotations

#: The published documentation (setup.cfg ``project_urls``, mkdocs.yml ``site_url``).
DOCS_URL = "https://katello-events.readthedocs.io/en/latest/"


def docs_url(page: str, anchor: str = "") -> str:
    """The published page built from ``docs/<page>.md``: ``docs_url("candlepin", "options")``
    is ``<DOCS_URL>candlepin/#options`` (MkDocs' directory URLs)."""
    return f"{DOCS_URL}{page}/" + (f"#{anchor}" if anchor else "")
