"""The documentation site: it builds with broken links and anchors as errors, and its pages stay user docs.

Rules the pages follow, checked over every Markdown file under docs/ and README.md:

- No absolute path of a developer's or a CI machine: nothing under ``/work/``, ``/Users/``, ``/root/``,
  ``/mnt/``, ``/private/``, ``/var/folders/``, no ``/home/<name>`` other than ``/home/app`` (the images'
  user) and no file under ``/tmp/``. A bare ``/tmp`` (a container's writable folder) and system paths in
  configuration examples (``/etc/...``) are allowed: they name places inside an image or on any host, not
  one machine's files.
- No issue or pull-request number: ``#12``, ``issue 12``, ``Issue #12``, ``issues 3 and 12``, ``PR 12``.
  The docs describe the system as it is; its history lives in the decision records, told without them.
- A guide page (docs/*.md) is at most MAX_PAGE_LINES lines; decision records are short by their form.
- Every guide page is in the site's nav, and every decision record is linked from decisions/index.md,
  which is how the site reaches them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
MAX_PAGE_LINES = 400
MACHINE_PATH = re.compile(
    r"(?<![\w.~-])(?:/(?:work|Users|root|mnt|private|var/folders)/|/home/(?!app\b)\w|/tmp/\w)"
)
ISSUE_NUMBER = re.compile(r"(?<![\w&/])#\d+\b|\b[Ii]ssues? #?\d+|\b(?:PR|[Pp]ull request) #?\d+")


def markdown_files() -> list[Path]:
    return sorted(DOCS.rglob("*.md")) + [REPO / "README.md"]


def guide_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def test_the_site_builds_with_broken_links_and_anchors_as_errors(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300,
    )
    warnings = [line for line in build.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert build.returncode == 0, "\n".join(warnings) or build.stderr
    assert (tmp_path / "site" / "benchmarks" / "index.html").is_file()


def test_the_site_validates_links_and_anchors() -> None:
    """--strict fails only on warnings; these settings make broken links and anchors warnings."""
    validation = yaml.safe_load((REPO / "mkdocs.yml").read_text())["validation"]
    assert validation["links"] == {"not_found": "warn", "anchors": "warn", "absolute_links": "warn",
                                   "unrecognized_links": "warn"}


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_page_names_a_machine_path_or_an_issue_number(path: Path) -> None:
    found = [f"line {number}: {match.group(0)!r}"
             for number, line in enumerate(path.read_text().splitlines(), 1)
             for pattern in (MACHINE_PATH, ISSUE_NUMBER) for match in pattern.finditer(line)]
    assert not found, found


@pytest.mark.parametrize("path", guide_pages(), ids=lambda p: p.name)
def test_guide_pages_are_short(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_PAGE_LINES, f"{path.name}: {lines} lines, at most {MAX_PAGE_LINES}"


def _nav_pages(entries: list) -> set[str]:
    pages = set()
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages |= _nav_pages(value) if isinstance(value, list) else {value}
    return pages


def test_every_guide_page_is_in_the_nav() -> None:
    nav = _nav_pages(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"])
    missing = [page.name for page in guide_pages() if page.name not in nav]
    assert not missing, f"add to mkdocs.yml's nav: {missing}"


def test_every_decision_record_is_linked_from_the_index() -> None:
    index = (DOCS / "decisions" / "index.md").read_text()
    linked = set(re.findall(r"\]\(([^)#]+\.md)\)", index))
    records = {p.name for p in (DOCS / "decisions").glob("*.md")} - {"index.md"}
    assert records, "no decision records"
    assert not records - linked, f"add to docs/decisions/index.md: {sorted(records - linked)}"


@pytest.mark.parametrize("text", ["see /work/main/docs", "at /home/alice/x", "in /tmp/bench.json",
                                  "issue 12", "Issue #3", "fixed in #42", "PR 7", "issues 3 and 12"])
def test_the_rules_catch_what_they_name(text: str) -> None:
    assert MACHINE_PATH.search(text) or ISSUE_NUMBER.search(text)


@pytest.mark.parametrize("text", ["mount an emptyDir at `/home/app`", "writable: `/tmp` and `/cache/jax`",
                                  "credentials_file: /etc/prometheus/gateway-key",
                                  "[the rule](#how-many-gateway-cores)", "http://127.0.0.1:8080/work/x", "&#123;"])
def test_the_rules_let_through_what_they_allow(text: str) -> None:
    assert not MACHINE_PATH.search(text) and not ISSUE_NUMBER.search(text)
