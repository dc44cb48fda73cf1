"""How ``make chaos`` writes its tables: each group of rows replaces only its own section of the page, and
the line above it is the command that reproduces it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import chaos
from bench.chaos_stack import Row

PAGE = """# Reliability

Text others keep.

<!-- chaos:requests -->
old requests table
<!-- /chaos:requests -->

A paragraph between.

<!-- chaos:database -->
Not measured yet.
<!-- /chaos:database -->

## How each failure is absorbed
"""


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "reliability.md"
    path.write_text(PAGE)
    monkeypatch.setattr(chaos, "DOC", path)
    return path


def test_a_run_replaces_only_the_groups_it_measured(page: Path) -> None:
    row = Row("database down 10 s, no backlog, embedded broker (jobs)", 15, 0, 0, 1.5, "a | b", True, lost=0)
    chaos.write_doc({"requests": [], "jobs": [], "database": [row]},
                    ["--scenarios", "database", "--log-dir", "/somewhere", "--no-doc", "--jax-cache-dir=/x"])
    text = page.read_text()
    assert "old requests table" in text and "Text others keep." in text and "A paragraph between." in text
    assert "Not measured yet." not in text
    assert "Measured with `python -m bench.chaos --scenarios database` on " in text
    assert "| database down 10 s, no backlog, embedded broker (jobs) | 15 | 0 | 0 | 0 | 1.5 | a / b |" in text
    assert text.endswith("<!-- /chaos:database -->\n\n## How each failure is absorbed\n")


def test_a_page_without_the_section_is_an_error(page: Path) -> None:
    with pytest.raises(RuntimeError, match="chaos:jobs"):
        chaos.write_doc({"jobs": [Row("x", 1, 0, 0, None, "", True)]}, [])
