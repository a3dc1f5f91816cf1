"""A real browser for the tests that check what a person sees: the system's Chromium, driven by
Playwright (its own browser download is never used: the machine may be offline).

Where no Chromium can be had the test is skipped with the reason; with
``PIPELINE_REQUIRE_CHROMIUM=1`` (CI, whose ``.ci/run`` installs Debian's ``chromium``) it fails.
Screenshots go to ``test-artifacts/`` (or ``$PIPELINE_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT_DIR

REQUIRE_ENV = "PIPELINE_REQUIRE_CHROMIUM"
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def artifacts_dir() -> Path:
    where = Path(os.environ.get("PIPELINE_TEST_ARTIFACTS") or PROJECT_DIR / "test-artifacts")
    where.mkdir(parents=True, exist_ok=True)
    return where


def chromium_or_skip() -> str:
    found = os.environ.get("PIPELINE_CHROMIUM") or next(filter(None, map(shutil.which, NAMES)), None)
    why = ""
    if not found:
        why = "no Chromium here (apt-get install chromium; .ci/run does)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            why = "playwright is not installed (make setup installs it)"
    if why:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {why}")
        pytest.skip(why)
    return str(found)


@dataclasses.dataclass
class Seen:
    """What a page did while it loaded: its text, and what went wrong."""

    text: str = ""
    console_errors: list[str] = dataclasses.field(default_factory=list)
    failed_requests: list[str] = dataclasses.field(default_factory=list)
    requests: list[str] = dataclasses.field(default_factory=list)


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = chromium_or_skip()
    with sync_playwright() as driver:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start. TMPDIR: its
        # socket's path must be short, and a test's own TMPDIR is a deep folder.
        launched = driver.chromium.launch(
            executable_path=executable, args=["--no-sandbox"], env={**os.environ, "TMPDIR": "/tmp"}
        )
        try:
            yield launched
        finally:
            launched.close()


def open_page(
    launched: Any,
    url: str,
    screenshot: str,
    wait_for_text: str = "",
    then: Callable[[Any], None] | None = None,
    timeout_s: float = 60,
) -> Seen:
    """Load ``url``, wait until ``wait_for_text`` shows (if given), do ``then`` with the page (as
    a person would click), save a full-page screenshot as ``screenshot`` (a file name), and return
    what the page did."""
    seen = Seen()
    page = launched.new_page(viewport={"width": 1280, "height": 900})
    page.on("console", lambda m: seen.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: seen.console_errors.append(str(exc)))
    page.on("request", lambda r: seen.requests.append(r.url))
    page.on("requestfailed", lambda r: seen.failed_requests.append(f"{r.url} ({r.failure})"))
    page.on(
        "response",
        lambda r: seen.failed_requests.append(f"{r.url} (HTTP {r.status})") if r.status >= 400 else None,
    )
    page.goto(url, wait_until="load", timeout=timeout_s * 1000)
    if wait_for_text:  # an app that keeps polling (MLflow's UI) is never idle: wait for what it shows
        page.get_by_text(wait_for_text, exact=False).first.wait_for(timeout=timeout_s * 1000)
        page.wait_for_timeout(1000)
    else:
        page.wait_for_load_state("networkidle", timeout=timeout_s * 1000)
    if then is not None:
        then(page)
    page.screenshot(path=str(artifacts_dir() / screenshot), full_page=True)
    seen.text = page.inner_text("body")
    page.close()
    return seen
