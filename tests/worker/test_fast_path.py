"""The predictor's fast /predict path agrees with the pydantic path on every body: same rows, answers and errors.

Batches always take the pydantic path; they are checked here too, so any fast path added there is covered.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes import GridModel, SumModel, traced_outputs
from tests.worker.test_fuzz import json_values, predict_like
from worker.contract import Model
from worker.errors import WorkerError
from worker.predictor import Predictor, Rows


class SumBatcher:
    """What the batcher answers for SumModel, without a queue."""

    async def submit(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        with np.errstate(over="ignore"):
            return {"total": rows.sum(axis=1, keepdims=True)}


def predictors(model: type[Model] = SumModel) -> tuple[Predictor, Predictor]:
    """The predictor as served, and one whose fast path is off (every body takes the pydantic path)."""
    fast, slow = (Predictor(model(), traced_outputs(model), SumBatcher(), worker_id="w", max_rows_per_request=5)
                  for _ in range(2))
    slow._fast_limit = None
    return fast, slow


FAST, SLOW = predictors()
GRID_FAST, GRID_SLOW = predictors(GridModel)

#: Numbers the fast path takes: any int JSON carries, floats up to beyond float32's range.
numbers = st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
valid_row = st.fixed_dictionaries({"input_data": st.lists(numbers, min_size=4, max_size=4)},
                                  optional={"return_probabilities": st.booleans()})


def outcome(parse: Any, body: bytes) -> tuple[str, Any]:
    """What parsing ``body`` gives: the rows and flags, or the error's class, status and message."""
    try:
        rows: Rows = parse(body)
    except WorkerError as exc:
        return "error", (type(exc).__name__, exc.status_code, exc.message)
    return "rows", (rows.values.dtype, rows.values.shape, rows.values.tobytes(), rows.return_probabilities)


def dumps(document: Any) -> bytes:
    """JSON of any document the strategies draw (integers beyond 64 bits too, which orjson does not write)."""
    return json.dumps(document).encode()


def assert_same(body: bytes, fast: Predictor = FAST, slow: Predictor = SLOW) -> None:
    assert outcome(fast.parse_one, body) == outcome(slow.parse_one, body)
    assert outcome(fast.parse_many, body) == outcome(slow.parse_many, body)


@settings(max_examples=300, deadline=None)
@given(row=valid_row)
def test_valid_rows_get_the_same_rows_both_ways(row: dict[str, Any]) -> None:
    assert_same(dumps(row))
    assert_same(dumps([row] * 3))


@settings(max_examples=300, deadline=None)
@given(body=json_values | predict_like | st.lists(predict_like | valid_row, max_size=6))
def test_any_body_gets_the_same_rows_or_the_same_error_both_ways(body: Any) -> None:
    assert_same(dumps(body))


@pytest.mark.parametrize("body", [
    b'{"input_data": [1, 2, 3]}', b'{"input_data": [[1, 2, 3, 4]]}', b'{"input_data": 1}',
    b'{"input_data": [1, 2, 3, "4"]}', b'{"input_data": [1, 2, 3, true]}', b'{"input_data": [1, 2, 3, 1e39]}',
    b'{"input_data": [1, 2, 3, -3.5e38]}', b'{"input_data": [1, 2, 3, 3.4028235e38]}',
    b'{"input_data": [1, 2, 3, NaN]}', b'{"input_data": [1, 2, 3, 4], "extra": 1}',
    b'{"input_data": [1, 2, 3, 4], "return_probabilities": 1}', b'{"inputs": [1, 2, 3, 4]}', b"[1, 2, 3, 4]",
    b'[{"input_data": [1, 2, 3, 4]}, {"input_data": [1, 2, 3]}]', b'[{"input_data": [1, 2, 3, 4]}] ',
    b'[{"input_data": [1, 2, 3, 4]}, {"input_data": [1, null, 3, 4]}]', b"[]", b"{}",
    orjson.dumps([{"input_data": [1, 2, 3, 4]}] * 6), orjson.dumps([{"input_data": [1, 2, 3]}] * 6),
    b'{"input_data": [18446744073709551615, 1, 2, 3]}', b'{"input_data": [-9223372036854775808, 0, 0, 0]}',
])
def test_known_bodies_get_the_same_answer_both_ways(body: bytes) -> None:
    assert_same(body)


@settings(max_examples=200, deadline=None)
@given(body=json_values | st.lists(st.lists(numbers, min_size=3, max_size=3), min_size=2, max_size=2)
       | st.lists(st.lists(numbers, max_size=4), max_size=3))
def test_rows_of_rank_two_get_the_same_answer_both_ways(body: Any) -> None:
    for document in ({"input_data": body}, [{"input_data": body, "return_probabilities": True}] * 2):
        assert_same(dumps(document), GRID_FAST, GRID_SLOW)


async def test_the_answers_are_the_same_bytes_both_ways() -> None:
    bodies = [orjson.dumps({"input_data": [1, 2.5, 3, 4]}),
              orjson.dumps({"input_data": [0, 0, 1e30, 7], "return_probabilities": True})]
    fast_answers = [answer for body in bodies for answer in await FAST.predict(FAST.parse_one(body))]
    slow_answers = [answer for body in bodies for answer in await SLOW.predict(SLOW.parse_one(body))]
    for answer in (*fast_answers, *slow_answers):
        answer["inference_time_ms"] = 0.0
    assert orjson.dumps(fast_answers) == orjson.dumps(slow_answers)
    assert fast_answers[0] == {"prediction": [10.5], "worker_id": "w", "inference_time_ms": 0.0}


def test_plain_rows_take_the_fast_path_and_the_rest_the_pydantic_one() -> None:
    assert FAST._fast({"input_data": [1, 2.5, 3, 4], "return_probabilities": True}) is not None
    assert GRID_FAST._fast({"input_data": [[1, 2, 3], [4, 5, 6.5]]}) is not None
    for refused in ({"input_data": [1, 2, 3, True]}, {"input_data": [1, 2, 3, 1e39]}, {"input_data": [1, 2, 3]},
                    {"input_data": [1, 2, 3, 4], "extra": 1}, {"input_data": [1, 2, 3, 4], "return_probabilities": 1}):
        assert FAST._fast(refused) is None
