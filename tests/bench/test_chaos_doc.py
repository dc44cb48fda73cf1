"""How ``make chaos`` keeps its tables in the page: a run replaces the rows it measured and keeps the others,
each row names its run, and the text around the sections is left alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos_doc import write_doc
from bench.chaos_stack import Row

PAGE = """# Reliability

Text others keep.

<!-- chaos:requests -->
| scenario | requests / jobs | failed | lost | wrong | recovery s | notes |
|---|---|---|---|---|---|---|
| worker kill -9 [1] | 100 | 0 | - | 0 | 2.4 | p99 66 ms |
| overload [2] | 900 | 0 | - | 0 | - | shed [2] |

- [1] `python -m bench.chaos` on 2026-12-02 05:43 UTC, 2 cores
- [2] `python -m bench.chaos --scenarios overload` on 2026-12-03 10:00 UTC, 2 cores
<!-- /chaos:requests -->

A paragraph between.

<!-- chaos:database -->
Not measured yet.
<!-- /chaos:database -->

## How each failure is absorbed
"""


@pytest.fixture
def page(tmp_path: Path) -> Path:
    path = tmp_path / "reliability.md"
    path.write_text(PAGE)
    return path


def test_a_run_replaces_its_rows_and_keeps_the_others(page: Path) -> None:
    crash = Row("worker crash loop (kill -9 x5)", 500, 0, 0, 16.2, "a | b", True)
    kill = Row("worker kill -9", 200, 0, 0, 2.0, "p99 50 ms", True)
    database = Row("database down 10 s, no backlog, embedded broker (jobs)", 15, 0, 0, 1.5, "ok", True, lost=0)
    write_doc({"requests": [kill, crash], "jobs": [], "database": [database]},
              ["--scenarios", "kill", "crashloop", "database", "--log-dir", "/somewhere", "--no-doc",
               "--jax-cache-dir=/x"], page)
    text = page.read_text()
    assert "Text others keep." in text and "A paragraph between." in text and "Not measured yet." not in text
    requests = text.split("<!-- chaos:requests -->\n", 1)[1].split("<!-- /chaos:requests -->", 1)[0]
    lines = requests.splitlines()
    assert lines[2] == "| worker kill -9 [1] | 200 | 0 | - | 0 | 2.0 | p99 50 ms |"
    assert lines[3] == "| overload [2] | 900 | 0 | - | 0 | - | shed [2] |"
    assert lines[4] == "| worker crash loop (kill -9 x5) [1] | 500 | 0 | - | 0 | 16.2 | a / b |"
    assert lines[6].startswith("- [1] `python -m bench.chaos --scenarios kill crashloop database` on ")
    assert lines[7] == "- [2] `python -m bench.chaos --scenarios overload` on 2026-12-03 10:00 UTC, 2 cores"
    assert len(lines) == 8, "the first run measures no row any more: it is no longer listed"
    assert "| database down 10 s, no backlog, embedded broker (jobs) [1] | 15 | 0 | 0 | 0 | 1.5 | ok |" in text
    assert text.endswith("<!-- /chaos:database -->\n\n## How each failure is absorbed\n")


def test_a_page_without_the_section_is_an_error(page: Path) -> None:
    with pytest.raises(RuntimeError, match="chaos:jobs"):
        write_doc({"jobs": [Row("x", 1, 0, 0, None, "", True)]}, [], page)
