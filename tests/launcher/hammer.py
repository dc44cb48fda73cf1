"""One client sending /predict back to back, counting what it gets, for the launcher's tests under load."""

from __future__ import annotations

import threading
from collections import Counter

import httpx


class Hammer:
    """One client sending /predict back to back on a keep-alive connection, counting what it gets and which
    worker answered."""

    def __init__(self, url: str, body: dict) -> None:
        self.ok, self.failures = 0, []
        self.by_worker: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, body), daemon=True)

    def _run(self, url: str, body: dict) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(f"{url}/predict", json=body)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if response.status_code == 200:
                    self.ok += 1
                    self.by_worker[str(response.json().get("worker_id"))] += 1
                else:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)
