"""The About page in a real browser: headless Chromium against the example project under gunicorn.

The server runs against the test database, so its elected runner writes real status rows; the
page is read twice, as anonymous readers see it and with the staff columns. Screenshots are kept
in ``artifacts/`` (about.png, about-staff.png) for a person to look at after the run.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from katello_events.models import HandlerStatus
from tests.support import ROOT, free_port, gunicorn_args, wait_for

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "artifacts"
SERVICES = ["katello_events", "candlepin_events"]

#: Quiet, offline, sandbox-free (CI runs as root) and of a fixed size, so screenshots compare.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1280,800",
]


def chromium(profile: Path, url: str, *args: str) -> str:
    """Run headless Chromium once on ``url``; its standard output."""
    done = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


def runner_is_up() -> bool:
    rows = {row.name: row for row in HandlerStatus.objects.filter(name__in=SERVICES)}
    return len(rows) == len(SERVICES) and rows["katello_events"].running


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary; install Debian's chromium package (dev.sh does)")
@pytest.mark.parametrize(
    ("audience", "screenshot"), [("staff", "about.png"), ("everyone", "about-staff.png")], ids=["anonymous", "staff"]
)
def test_about_page_renders_in_headless_chromium(start_server, tmp_path, audience, screenshot):
    port = free_port()
    start_server(
        gunicorn_args(port, 2),
        DJANGO_SETTINGS_MODULE="tests.browser_settings",
        KATELLO_EVENTS_DETAILS_VISIBLE_TO=audience,
    )
    wait_for(runner_is_up, 60, "the server's runner wrote both status rows")
    url = f"http://127.0.0.1:{port}/about/"

    dom = chromium(tmp_path / "profile", url, "--dump-dom")
    assert "Backend System Status" in dom
    for service in SERVICES:
        assert f'data-service="{service}"' in dom
    assert "Processed" in dom, "katello_events reports its counts"
    assert "<script" not in dom, "the page needs no JavaScript"
    runner = HandlerStatus.objects.get(name="katello_events")
    assert (f"{runner.hostname} (pid {runner.pid})" in dom) == (audience == "everyone")

    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / screenshot
    target.unlink(missing_ok=True)
    chromium(tmp_path / "profile", url, f"--screenshot={target}")
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
