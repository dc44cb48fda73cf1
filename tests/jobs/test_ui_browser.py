"""The job page in a real headless browser: Debian's chromium, driven by selenium.

Skipped when chromium or its driver is missing, unless CI=true (CI installs
them with scripts/install-system-deps.sh). The gateway runs in a thread of
its own so the browser's polling is served while the test waits. Chromium runs
headless with its background networking off: it talks only to the gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.settings import JobsSettings
from tests.jobs.conftest import embedded_settings, gateway, sidecar
from tests.jobs.fake_worker import FakeWorker

ROW = {"input_data": [1.0, 2.0, 3.0, 4.0]}
JOB = {"task": "batch_predict", "inputs": [ROW]}
KEY_A, KEY_B = "browser-key-a-0123456789", "browser-key-b-9876543210"
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

    def __init__(self, settings: JobsSettings, **gateway_changes: Any) -> None:
        self.settings = settings
        self.gateway_changes = gateway_changes
        self.loop = asyncio.new_event_loop()
        self.base_url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._start_sidecar: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self._stop, self._start_sidecar = asyncio.Event(), asyncio.Event()
        async with gateway(self.settings, **self.gateway_changes) as client:
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


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _waiter(browser: Any) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The table is redrawn every second: an element found just before a redraw goes stale; look again.
    return WebDriverWait(browser, 20, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException])


def _status_on_page(browser: Any) -> Callable[[str], str]:
    from selenium.webdriver.common.by import By

    def status(job_id: str) -> str:
        cells = browser.find_elements(By.CSS_SELECTOR, f'tr[data-job-id="{job_id}"] td.status')
        return cells[0].text if cells else ""

    return status


def _click(browser: Any, wait: Any, selector: str) -> None:
    from selenium.webdriver.common.by import By

    wait.until(lambda _: browser.find_element(By.CSS_SELECTOR, selector).click() or True)


def _text(browser: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text


def _enter_key(browser: Any, key: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.find_element(By.ID, "key-input").send_keys(key, Keys.ENTER)


def test_the_page_shows_a_job_succeed_and_cancels_another(browser, tmp_path: Path, fake_worker: FakeWorker) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    settings = embedded_settings(tmp_path, fake_worker.url)
    with _Stack(settings) as stack, httpx.Client(base_url=stack.base_url, timeout=10) as api:
        browser.get(f"{stack.base_url}/jobs/ui")
        assert browser.title == "Jobs"
        wait, status_on_page = _waiter(browser), _status_on_page(browser)

        to_cancel = api.post("/jobs", json=JOB).json()["job_id"]
        wait.until(lambda _: status_on_page(to_cancel) == "queued")
        assert not browser.find_element(By.ID, "key").is_displayed()  # access control is off: no key asked
        _click(browser, wait, f'tr[data-job-id="{to_cancel}"] button.cancel')
        wait.until(lambda _: status_on_page(to_cancel) == "cancelled")
        assert api.get(f"/jobs/{to_cancel}").json()["status"] == "cancelled"

        to_run = api.post("/jobs", json=JOB).json()["job_id"]
        wait.until(lambda _: status_on_page(to_run) == "queued")
        stack.start_sidecar()
        wait.until(lambda _: status_on_page(to_run) == "succeeded")
        href = wait.until(lambda _: browser.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{to_run}"] a.result')
                          .get_attribute("href"))
        assert href.endswith(f"/jobs/{to_run}/result")
        wait.until(lambda _: status_on_page(to_cancel) == "cancelled")
        assert fake_worker.rows_seen == 1


def test_with_api_keys_the_page_asks_for_a_key_and_shows_only_its_jobs(  # type: ignore[no-untyped-def]
    browser, tmp_path: Path, fake_worker: FakeWorker,
) -> None:
    from selenium.webdriver.common.by import By

    settings = embedded_settings(tmp_path, fake_worker.url)
    with _Stack(settings, api_keys=[KEY_A, KEY_B]) as stack, httpx.Client(base_url=stack.base_url, timeout=10) as api:
        theirs = api.post("/jobs", json=JOB, headers=bearer(KEY_B)).json()["job_id"]
        browser.get(f"{stack.base_url}/jobs/ui")
        assert browser.title == "Jobs"  # the page itself takes no key
        wait, status_on_page = _waiter(browser), _status_on_page(browser)
        wait.until(lambda _: browser.find_element(By.ID, "key").is_displayed())
        assert "needs an API key" in _text(browser, "error")

        _enter_key(browser, "not-a-key")
        wait.until(lambda _: "refused this API key" in _text(browser, "error"))
        _enter_key(browser, KEY_A)
        to_cancel = api.post("/jobs", json=JOB, headers=bearer(KEY_A)).json()["job_id"]
        to_run = api.post("/jobs", json=JOB, headers=bearer(KEY_A)).json()["job_id"]
        wait.until(lambda _: status_on_page(to_cancel) == "queued" and status_on_page(to_run) == "queued")
        assert _text(browser, "error") == ""
        assert browser.current_url == f"{stack.base_url}/jobs/ui"  # the key is in no URL
        assert browser.execute_script("return sessionStorage.getItem('gateway-api-key')") == KEY_A
        assert browser.execute_script("return localStorage.length") == 0

        _click(browser, wait, f'tr[data-job-id="{to_cancel}"] button.cancel')
        wait.until(lambda _: status_on_page(to_cancel) == "cancelled")
        assert api.get(f"/jobs/{to_cancel}", headers=bearer(KEY_A)).json()["status"] == "cancelled"

        stack.start_sidecar()
        wait.until(lambda _: status_on_page(to_run) == "succeeded")
        _click(browser, wait, f'tr[data-job-id="{to_run}"] a.result')  # fetched with the key, shown on the page
        wait.until(lambda _: _text(browser, "detail-body"))
        shown = json.loads(_text(browser, "detail-body"))
        assert shown["job_id"] == to_run and len(shown["output"]) == 1
        assert browser.current_url == f"{stack.base_url}/jobs/ui"

        # B's job ran too, and every refresh since the key was entered left it out.
        wait.until(lambda _: api.get(f"/jobs/{theirs}", headers=bearer(KEY_B)).json()["status"] == "succeeded")
        listed = browser.execute_script("return [...document.querySelectorAll('#jobs tr')].map(r => r.dataset.jobId)")
        assert sorted(listed) == sorted([to_cancel, to_run])


def test_with_api_keys_the_page_says_when_its_key_is_over_the_rate_limit(  # type: ignore[no-untyped-def]
    browser, tmp_path: Path, fake_worker: FakeWorker,
) -> None:
    settings = embedded_settings(tmp_path, fake_worker.url)
    # 1 token in 1000 s: after two lists the bucket is empty for the rest of the test.
    with _Stack(settings, api_keys=[KEY_A], rate_limit_per_s=0.001, rate_limit_burst=2) as stack:
        browser.get(f"{stack.base_url}/jobs/ui")
        wait = _waiter(browser)
        wait.until(lambda _: "needs an API key" in _text(browser, "error"))
        _enter_key(browser, KEY_A)
        wait.until(lambda _: _text(browser, "error").startswith("429: this API key is over its rate limit"))
