"""Test-wide settings and the browser fixture.

The tests use tiny tensors, for which one CPU thread is faster than several and immune to other
processes competing for the cores; the environment variable carries the same choice into the
command-line runs that tests start as subprocesses.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after the thread setting, which torch reads when it starts)

torch.set_num_threads(1)


# --- browser tests: a real headless Chromium driven by Playwright ------------------------------------------
# One setup for every page test (the run/edit report now, the web app later): Debian's `chromium` package
# (which .ci/run installs when it is missing), never a browser downloaded by `playwright install`.

import shutil  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import pytest  # noqa: E402

LOCAL_SCHEMES = {"file", "data", "blob", "about"}
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def chromium_executable() -> str | None:
    """``$MTRANSFER_CHROMIUM``, else ``chromium`` (Debian) or ``chromium-browser`` on the PATH."""
    return os.environ.get("MTRANSFER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def is_local_url(url: str) -> bool:
    """True for what stays on this machine: files, inline data, and servers on the loopback interface."""
    parts = urlsplit(url)
    return parts.scheme in LOCAL_SCHEMES or (parts.scheme in ("http", "https", "ws", "wss") and parts.hostname in LOCAL_HOSTS)


@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium for the session; the browser tests skip only when no executable exists."""
    executable = chromium_executable()
    if executable is None:
        pytest.skip("browser test skipped: no chromium executable (apt-get install chromium, as .ci/run does, "
                    "or set MTRANSFER_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield browser
        browser.close()


@dataclass
class BrowserPage:
    """A fresh page (1280x800) with what it tried: ``blocked`` holds every request that would have left the
    machine (aborted), ``errors`` uncaught script errors and console errors."""

    page: Any
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def browser_page(chromium):
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = BrowserPage(context.new_page())

    def route(request_route) -> None:
        url = request_route.request.url
        if is_local_url(url):
            request_route.continue_()
        else:
            page.blocked.append(url)
            request_route.abort()

    context.route("**/*", route)
    page.page.on("request", lambda request: page.requests.append(request.url))
    page.page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.page.on("console", lambda message: page.errors.append(message.text) if message.type == "error" else None)
    yield page
    context.close()
