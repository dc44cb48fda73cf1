"""The CLI's own errors: a bad command line or unreadable input is exit status 2, before any request."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_client._cli import main

NOWHERE = ["--url", "http://127.0.0.1:9", "--retries", "0"]


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read"), ('{"input_data": [1]}', "holds no JSON array"), ("[1, 2]\n[3, 4\n", "line 2 is not JSON"),
])
def test_unreadable_rows_are_a_usage_error(tmp_path: Path, capsys, content: str | None, message: str) -> None:
    rows = tmp_path / "rows.json"
    if content is not None:
        rows.write_text(content)
    assert main([*NOWHERE, "batch-predict", str(rows)]) == 2
    assert message in capsys.readouterr().err


def test_a_row_that_is_not_json_is_a_usage_error(capsys) -> None:
    assert main(["predict", *NOWHERE, "[1, 2"]) == 2
    assert capsys.readouterr().err.startswith("error: the row is not JSON")


def test_an_unknown_command_is_argparses_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["nonsense"])
    assert caught.value.code == 2
