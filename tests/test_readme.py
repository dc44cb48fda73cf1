"""The README stays true: every setting is in its table, its first commands are make run / make test."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from gateway.settings import GatewaySettings
from jobs.settings import JobsSettings
from worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
JOBS_DOC = (REPO / "docs" / "jobs.md").read_text()


@pytest.mark.parametrize("settings_class", [GatewaySettings, WorkerSettings])
def test_every_setting_is_documented(settings_class: type[BaseSettings]) -> None:
    for name in settings_class.model_fields:
        assert f"| `{name.upper()}` |" in README, f"{name.upper()} is missing from the README settings table"


def test_every_job_setting_is_documented() -> None:
    for name in JobsSettings.model_fields:
        assert f"`{name.upper()}`" in JOBS_DOC, f"{name.upper()} is missing from the docs/jobs.md settings table"


def test_the_readme_opens_with_make_run_then_make_test() -> None:
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert first_block.index("make run") < first_block.index("make test")
