"""The MLflow UI as a person sees it: `gentrain ui` on a store, pages rendered by headless
Chromium (Debian's `chromium`, which .ci/run installs), read from the DOM they end with."""

import html
import os
import re
import shutil
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import GENTRAIN, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed")


@dataclass(frozen=True)
class Page:
    html: str  # the DOM once the page has rendered
    text: str  # what it shows, as one line of words


def start_ui(workdir: Path, port: int, env: dict[str, str], *more: str) -> subprocess.Popen:
    """`gentrain ui --port PORT MORE...` in a session of its own (stop it by killing the whole
    session); what it prints goes to workdir/ui.log."""
    with (workdir / "ui.log").open("wb") as log:
        return subprocess.Popen(
            [*GENTRAIN, "ui", "--port", str(port), *more],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


@contextmanager
def ui_server(workdir: Path, tracking_uri: str | None = None):
    """`gentrain ui` in `workdir` (its store: `tracking_uri`, else the directory's); yields the
    address it serves once it answers."""
    port = free_port()
    ui = start_ui(workdir, port, {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri or ""})
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/health", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the UI did not come up"
                time.sleep(0.5)
        yield address
    finally:
        os.killpg(ui.pid, 9)
        ui.wait()


def browse(url: str, *, height: int = 3000, holding: str | None = None) -> Page:
    """The page at `url` after up to 30 s of its (virtual) time, in a window tall enough for
    its charts to render. `holding`: what the DOM should hold; on a busy machine the UI's
    fetches can outlast that time, so the page is rendered again, 3 times at most, until it
    does (as a person waits for a page to fill)."""
    for _ in range(3):
        page = _render(url, height)
        if holding is None or holding in page.html:
            break
    return page


def _render(url: str, height: int) -> Page:
    shown = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size=1600,{height}",
         "--run-all-compositor-stages-before-draw",  # charts render once laid out and painted
         "--virtual-time-budget=30000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    body = re.sub(r"<style[^>]*>.*?</style>", " ", shown.stdout, flags=re.S)
    text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)))
    return Page(html=shown.stdout, text=text)
