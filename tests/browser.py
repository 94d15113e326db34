"""Debian's Chromium driven by Playwright, for the console's browser tests.

Playwright's own browser download cannot work here (no network): it drives ``/usr/bin/chromium``
(``make chromium`` installs it). Chromium runs headless with a fresh profile and without the
background services whose connections a closed network refuses. When it cannot start, the test
fails with Chromium's own output (Playwright puts it in the error)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, ViewportSize, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from testkit.simulator.process import ROOT

CHROMIUM = os.environ.get("MRSA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
LAUNCH_TIMEOUT_MS = 30_000


def artifacts_dir() -> Path:
    """Where screenshots go: ``$MRSA_ARTIFACTS_DIR/console`` or ``test-artifacts/console`` (git-ignored)."""
    base = (
        Path(os.environ["MRSA_ARTIFACTS_DIR"])
        if os.environ.get("MRSA_ARTIFACTS_DIR")
        else ROOT / "test-artifacts"
    )
    folder = base / "console"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def chromium_context() -> Iterator[BrowserContext]:
    """A headless Chromium with a fresh profile (removed on exit) at 1280×800; fails the test with
    Chromium's output when it cannot start."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run `make chromium` (apt-get install chromium)", pytrace=False
        )
    with tempfile.TemporaryDirectory(prefix="mrsa-chromium-") as profile, sync_playwright() as pw:
        try:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=CHROMIUM_ARGS,
                headless=True,
                viewport=VIEWPORT,
                timeout=LAUNCH_TIMEOUT_MS,
            )
        except PlaywrightError as exc:
            pytest.fail(f"Chromium ({CHROMIUM}) did not start:\n{exc}", pytrace=False)
        context.set_default_timeout(20_000)
        try:
            yield context
        finally:
            context.close()
