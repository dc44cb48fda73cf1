"""The sidecar's fast path for batch_predict rows takes exactly the rows PredictRow takes unchanged."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from common.rows import PredictRow
from jobs.tasks import plain_predict_rows

ROWS = TypeAdapter(list[PredictRow])


@pytest.mark.parametrize("rows", [
    [{"input_data": [1.0, 2, 3.5, -4]}],
    [{"input_data": [[1.0, 2.0], [3.0, 4.0]], "return_probabilities": True}],
    [{"input_data": 3.0}, {"input_data": []}, {"input_data": [1.0, [2.0]]}],
])
def test_plain_rows_pass_as_they_are_and_as_pydantic_reads_them(rows: list[Any]) -> None:
    assert plain_predict_rows(rows) is rows
    assert [row.model_dump() for row in ROWS.validate_python(rows)] == [
        {"return_probabilities": False, **row} for row in rows]


@pytest.mark.parametrize("rows", [
    [{"input_data": [1.0, True]}],
    [{"input_data": [1.0, "2"]}],
    [{"input_data": [1.0], "extra": 1}],
    [{"input_data": [1.0], "return_probabilities": 1}],
    [{"return_probabilities": False}],
    [[1.0, 2.0]],
    {"input_data": [1.0]},
])
def test_other_rows_go_to_pydantic_which_refuses_them(rows: Any) -> None:
    assert plain_predict_rows(rows) is None
    with pytest.raises(ValidationError):
        ROWS.validate_python(rows)


def test_rows_nested_past_the_rank_bound_go_to_pydantic_without_recursing_here() -> None:
    value: Any = 1.0
    for _ in range(990):  # near orjson's own depth limit, past Python's recursion limit
        value = [value]
    assert plain_predict_rows([{"input_data": value}]) is None
