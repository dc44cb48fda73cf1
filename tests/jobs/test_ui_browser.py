"""The job page in a real headless browser: Debian's chromium, driven by selenium.

Skipped when chromium or its driver is missing, unless CI=true (CI installs
them with scripts/install-system-deps.sh). The gateway runs in a thread of
its own so the browser's polling is served while the test waits.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobs.settings import JobsSettings
from tests.jobs.conftest import embedded_settings, gateway, sidecar
from tests.jobs.fake_worker import FakeWorker

ROW = {"input_data": [1.0, 2.0, 3.0, 4.0]}
CHROME_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        message = "chromium and chromium-driver are not installed (scripts/install-system-deps.sh installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    return browser, driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    binary, driver = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(dir=tmp_path, prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.set_page_load_timeout(30)
    yield chrome
    chrome.quit()


class _Stack:
    """A gateway (and, once started, a sidecar) on an event loop in a thread."""

    def __init__(self, settings: JobsSettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.base_url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._start_sidecar: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self._stop, self._start_sidecar = asyncio.Event(), asyncio.Event()
        async with gateway(self.settings) as client:
            self.base_url = str(client.base_url)
            self._ready.set()
            await self._start_sidecar.wait()
            if not self._stop.is_set():
                async with sidecar(self.settings):
                    await self._stop.wait()

    def __enter__(self) -> _Stack:
        self._thread.start()
        assert self._ready.wait(30), "the gateway did not start"
        return self

    def start_sidecar(self) -> None:
        assert self._start_sidecar is not None
        self.loop.call_soon_threadsafe(self._start_sidecar.set)

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None and self._start_sidecar is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.loop.call_soon_threadsafe(self._start_sidecar.set)
        self._thread.join(30)
        self.loop.close()


def test_the_page_shows_a_job_succeed_and_cancels_another(browser, tmp_path: Path, fake_worker: FakeWorker) -> None:  # type: ignore[no-untyped-def]
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    settings = embedded_settings(tmp_path, fake_worker.url)
    with _Stack(settings) as stack, httpx.Client(base_url=stack.base_url, timeout=10) as api:
        browser.get(f"{stack.base_url}/jobs/ui")
        assert browser.title == "Jobs"
        # The table is redrawn every second: an element found just before a redraw goes stale; look again.
        wait = WebDriverWait(browser, 20, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException])

        def status_on_page(job_id: str) -> str:
            cells = browser.find_elements(By.CSS_SELECTOR, f'tr[data-job-id="{job_id}"] td.status')
            return cells[0].text if cells else ""

        to_cancel = api.post("/jobs", json={"task": "batch_predict", "inputs": [ROW]}).json()["job_id"]
        wait.until(lambda _: status_on_page(to_cancel) == "queued")
        wait.until(lambda _: browser.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{to_cancel}"] button.cancel')
                   .click() or True)
        wait.until(lambda _: status_on_page(to_cancel) == "cancelled")
        assert api.get(f"/jobs/{to_cancel}").json()["status"] == "cancelled"

        to_run = api.post("/jobs", json={"task": "batch_predict", "inputs": [ROW]}).json()["job_id"]
        wait.until(lambda _: status_on_page(to_run) == "queued")
        stack.start_sidecar()
        wait.until(lambda _: status_on_page(to_run) == "succeeded")
        href = wait.until(lambda _: browser.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{to_run}"] a.result')
                          .get_attribute("href"))
        assert href.endswith(f"/jobs/{to_run}/result")
        wait.until(lambda _: status_on_page(to_cancel) == "cancelled")
        assert fake_worker.rows_seen == 1
