"""The import graph of the package: every arrow points down, and the Django glue sits on top.

docs/architecture.md ("Direction of imports") states the rules; this test reads every module's
imports (``ast``, including imports inside functions) and holds the tree to them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "katello_events"

#: Layers from the bottom up: a module may import modules of its own layer or below, never above.
LAYERS: list[tuple[str, ...]] = [
    # 0: leaves, shared types and helpers
    (
        "errors", "redaction", "stats", "memory", "autostart", "pgdriver", "event_queue.types", "links",
        "status.snapshot", "candlepin.recent", "signals", "candlepin", "event_queue", "status",
        "tasks.compat",
    ),
    # 1: settings, tables, logging
    ("conf", "models", "log", "libpq", "registry"),
    # 2: the parts
    (
        "fencing", "election", "candlepin.options", "candlepin.message", "candlepin.diagnosis",
        "candlepin.connection", "candlepin.depth_probe", "event_queue.batch", "event_queue.push",
        "event_queue.gauges", "event_queue.careful_lock", "event_queue.listener", "event_queue.maintenance",
        "tasks.policy",
    ),
    # (with the Django Tasks backend's part the runner runs: execute, upkeep)
    ("handlers.base", "event_queue.consumer", "candlepin.dispatch", "tasks.execute", "tasks.upkeep"),
    ("candlepin.burst", "events", "testing", "tasks.summary"),
    # the Django Tasks backend: what callers use
    ("tasks.results", "tasks.backend"),
    # 3: the status rows, written (store) and read (report), below everything that runs
    ("status.store", "status.depth_warnings", "status.report"),
    # 4: the handlers that assemble the parts, and their supervision
    ("handlers",),
    ("supervisor",),
    # 5: the runner, and what starts it
    ("runner",),
    ("lifecycle",),
    # 6: Django glue
    (
        "checks", "views", "metrics", "admin", "templatetags", "urls", "contrib", "management", "apps", "__init__",
        "tasks",
    ),
]  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


#: Packages whose own ``__init__`` is listed: the entry names that module only, not its children.
PACKAGES = {"candlepin", "event_queue", "status"}


def layer_of(module: str) -> int:
    """The layer of the longest entry naming ``module`` or a package above it."""
    best: tuple[int, int] | None = None
    for index, layer in enumerate(LAYERS):
        for entry in layer:
            names_it = module == entry or (entry not in PACKAGES and module.startswith(entry + "."))
            if names_it and (best is None or len(entry) > best[1]):
                best = (index, len(entry))
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "katello_events":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("katello_events."):
                found.add(node.module.removeprefix("katello_events."))
        elif isinstance(node, ast.Import):
            found.update(
                a.name.removeprefix("katello_events.") for a in node.names if a.name.startswith("katello_events.")
            )
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p) or "katello_events")
def test_every_import_points_down(path: Path):
    here = module_name(path)
    mine = layer_of(here)
    upward = sorted(target for target in imports_of(path) if layer_of(target) > mine)
    assert not upward, f"{here} (layer {mine}) imports from above: {upward}"


def test_no_two_modules_share_a_name_for_different_jobs():
    names: dict[str, list[str]] = {}
    for path in MODULES:
        if path.name != "__init__.py":
            names.setdefault(path.stem, []).append(module_name(path))
    shared = {stem: found for stem, found in names.items() if len(found) > 1}
    assert shared == {}, shared
