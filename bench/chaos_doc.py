"""The chaos tables: printed, and kept in docs/reliability.md.

The page has one section per group of scenarios (requests, jobs, database) between
``<!-- chaos:<group> -->`` markers. A run replaces the rows it measured, by scenario name, and keeps the
others, so one scenario can be measured again without the whole suite; each row carries the number of the
run that measured it, and the list under the table gives each run's command, date and cores. The rest of
the page is the page's own.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from pathlib import Path

from bench.chaos_stack import Row
from bench.stack import REPO

DOC = REPO / "docs" / "reliability.md"
HEADER = ["| scenario | requests / jobs | failed | lost | wrong | recovery s | notes |",
          "|---|---|---|---|---|---|---|"]
#: A row of the page: its scenario, the number of its run, the rest of the line.
_ROW = re.compile(r"^\| ([^|]*?) \[(\d+)\] (\|.*)$")
_RUN = re.compile(r"^- \[(\d+)\] (.*)$")


def _cells(row: Row) -> str:
    """A row's line after its scenario cell."""
    recovery = "-" if row.recovery_s is None else f"{row.recovery_s:.1f}"
    lost = "-" if row.lost is None else str(row.lost)
    return f"| {row.requests} | {row.failed} | {lost} | {row.wrong} | {recovery} | {row.note.replace('|', '/')} |"


def render(rows: list[Row]) -> str:
    return "\n".join([*HEADER, *(f"| {row.scenario} {_cells(row)}" for row in rows)])


def command(argv: list[str]) -> str:
    """The command line that reproduces a run (without where its logs and JAX cache went, or --no-doc)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--log-dir", "--jax-cache-dir"):
            skip = True
        elif not arg.startswith(("--log-dir=", "--jax-cache-dir=")) and arg != "--no-doc":
            kept.append(arg)
    return shlex.join(["python", "-m", "bench.chaos", *kept])


def merged(section: str, rows: list[Row], run: str) -> str:
    """A section's table with ``rows`` (measured by ``run``) in place of the rows of the same scenarios."""
    runs = {number: text for number, text in (m.groups() for m in map(_RUN.match, section.splitlines()) if m)}
    table = [(m[1], runs[m[2]], m[3]) for m in map(_ROW.match, section.splitlines()) if m]
    fresh = {row.scenario: (row.scenario, run, _cells(row)) for row in rows}
    table = [fresh.pop(name, (name, by, cells)) for name, by, cells in table] + list(fresh.values())
    numbers: dict[str, int] = {}
    lines = [f"| {name} [{numbers.setdefault(by, len(numbers) + 1)}] {cells}" for name, by, cells in table]
    return "\n".join([*HEADER, *lines, "", *(f"- [{n}] {by}" for by, n in numbers.items())]) + "\n"


def write_doc(groups: dict[str, list[Row]], argv: list[str], doc: Path = DOC) -> None:
    """Merge each group's rows into its section of ``doc``."""
    text = doc.read_text()
    run = f"`{command(argv)}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores"
    for group, rows in groups.items():
        if not rows:
            continue
        begin, end = f"<!-- chaos:{group} -->", f"<!-- /chaos:{group} -->"
        if begin not in text or end not in text:
            raise RuntimeError(f"{doc.name} has no {begin} ... {end} section")
        before, _, rest = text.partition(begin)
        section, _, after = rest.partition(end)
        text = f"{before}{begin}\n{merged(section, rows, run)}{end}{after}"
    doc.write_text(text)
