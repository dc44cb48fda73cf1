"""From request bytes to model rows, and from model outputs to answers, for one model.

A ``/predict`` body takes a fast path first: plain nested lists of numbers, of
the model's shape and within its dtype's range, become a row with one numpy
call and no pydantic object (a third of the cost of validating one row).
Anything else, and every ``/batch_predict`` JSON body (where pydantic's
validator costs no more per row than checks in Python would), goes the
pydantic path, which decides and words every refusal: the request is
validated against the model's nesting depth, then its shape is checked here,
so a wrong row is answered "input_data: expected shape (4,), got (3,)". The
fast path accepts only what that path accepts, with the same row
(tests/worker check both on generated bodies).

A binary body (``common.binary_rows``) carries the rows as raw numbers: its
header is checked, the numbers are read with ``numpy.frombuffer``.

Outputs that are not finite are refused: JSON has no NaN, and a null where a
number belongs is a silently wrong answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from common import binary_rows
from common.json_errors import NON_FINITE_MESSAGE, has_non_finite_numbers
from common.rows import PredictRow, is_plain_row_envelope, nested_shape, validation_message
from worker.batcher import Batcher, Target
from worker.contract import ContractError, Model, TensorSpec, example_row
from worker.errors import InvalidInput, MalformedBody, MalformedRequest, PayloadTooLarge
from worker.metadata import datatype, request_model, response_model


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if has_non_finite_numbers(body):
            raise InvalidInput(NON_FINITE_MESSAGE) from None
        raise MalformedRequest(f"body is not valid JSON: {exc}") from None


def first_non_finite_row(value: np.ndarray) -> int | None:
    """The first row of an array holding a NaN or an infinity; None when every row is finite."""
    if value.dtype.kind != "f" or np.isfinite(value).all():  # one check for the usual case: all finite
        return None
    finite = np.isfinite(value.reshape(len(value), -1)).all(axis=1)
    return int(np.argmin(finite))


def non_finite_output_message(name: str) -> str:
    return (f"the model's output {name!r} is not finite for this input (it may be far outside the range the "
            "model was trained on)")


class Rows(NamedTuple):
    """A parsed request: its rows, ``(n, *input_shape)`` of the input dtype, and each row's flag."""

    values: np.ndarray
    return_probabilities: list[bool]


_NUMBERS = frozenset({int, float})


def _plain_numbers(value: Any, rank: int, limit: float) -> bool:
    """Lists nested ``rank`` deep whose leaves are ints or floats (not bools) of magnitude at most ``limit``."""
    if type(value) is not list:
        return False
    if rank > 1:
        return all(_plain_numbers(item, rank - 1, limit) for item in value)
    return set(map(type, value)) <= _NUMBERS and (not value or -limit <= min(value) and max(value) <= limit)


def _refuse_fractions(values: list[Any], dtype: np.dtype) -> None:
    """An integer input takes whole numbers: 9.9 is refused, never cut to 9 (jobs and /v2 refuse it too)."""
    numbers = np.asarray(values)  # ValueError when ragged: the caller words it
    if numbers.dtype.kind == "f" and not np.array_equal(numbers, np.trunc(numbers)):
        raise InvalidInput(f"input_data: values must be whole numbers for {dtype}")


class Predictor:
    """Parses, batches and answers predictions for the served model."""

    def __init__(
        self, model: Model, outputs: tuple[TensorSpec, ...], batcher: Batcher, *, worker_id: str,
        max_rows_per_request: int,
    ) -> None:
        self.model = model
        self.outputs = outputs
        self.batcher = batcher
        self.worker_id = worker_id
        self.max_rows_per_request = max_rows_per_request
        request = request_model(model, exact=False)
        self._one = TypeAdapter(request)
        self._many = TypeAdapter(list[request])  # type: ignore[valid-type]
        self.response: type[BaseModel] = response_model(model, outputs)
        self._shape = tuple(model.input_shape or ())
        self._dtype = np.dtype(model.input_dtype)
        self._datatype = datatype(model.input_dtype)
        # Numbers up to the dtype's largest convert as the slow path converts them, and stay finite; the
        # fast path serves float inputs of rank 1 and more (other rows always take the slow path).
        self._fast_limit = float(np.finfo(self._dtype).max) if self._dtype.kind == "f" and self._shape else None

    def parse_one(self, body: bytes) -> Rows:
        data = _json(body)
        fast = self._fast(data)
        if fast is not None:
            return fast
        try:
            item = self._one.validate_python(data)
        except ValidationError as exc:
            self._check_shape(data)
            raise InvalidInput(validation_message(exc)) from None
        return self._rows([item])

    def parse_many(self, body: bytes) -> Rows:
        data = _json(body)
        try:
            items = self._many.validate_python(data)
        except ValidationError as exc:
            for i, item in enumerate(data if isinstance(data, list) else []):
                self._check_shape(item, f"[{i}].")
            raise InvalidInput(validation_message(exc)) from None
        if len(items) > self.max_rows_per_request:
            raise PayloadTooLarge(f"{len(items)} rows in one request; the limit is {self.max_rows_per_request}")
        return self._rows(items)

    def parse_binary(self, body: bytes) -> Rows:
        """A ``common.binary_rows`` body; its answer is the same as the JSON batch's."""
        try:
            rows = binary_rows.decode(body)
        except binary_rows.BinaryRowsError as exc:
            raise MalformedBody(exc.args[0]) from None
        if rows.datatype != self._datatype:
            raise InvalidInput(f"input_data: datatype {rows.datatype}, the model takes {self._datatype}")
        if rows.row_shape != self._shape:
            raise InvalidInput(f"input_data: expected shape {self._shape}, got {rows.row_shape}")
        if rows.count > self.max_rows_per_request:
            raise PayloadTooLarge(f"{rows.count} rows in one request; the limit is {self.max_rows_per_request}")
        values = np.frombuffer(rows.data, rows.dtype).astype(self._dtype).reshape(rows.count, *self._shape)
        if (row := first_non_finite_row(values)) is not None:
            raise InvalidInput(f"[{row}].input_data: {NON_FINITE_MESSAGE}")
        return Rows(values, rows.return_probabilities)

    def _fast(self, item: Any) -> Rows | None:
        """The row of an item the pydantic path would accept unchanged, or None to let that path decide."""
        limit = self._fast_limit
        if limit is None or not is_plain_row_envelope(item):
            return None
        flag = item.get("return_probabilities", False)
        value = item["input_data"]
        if not _plain_numbers(value, len(self._shape), limit):
            return None
        try:
            values = np.array([value], self._dtype)
        except ValueError:  # ragged
            return None
        return Rows(values, [flag]) if values.shape[1:] == self._shape else None

    def _check_shape(self, item: Any, where: str = "") -> None:
        """A row nested to the wrong depth is a shape error: say so, rather than pydantic's type message."""
        if isinstance(item, dict) and "input_data" in item:
            got = nested_shape(item["input_data"])
            if got != "ragged" and len(got) != len(self.model.input_shape or ()):
                raise InvalidInput(f"{where}input_data: expected shape {self.model.input_shape}, got {got}")

    def _rows(self, items: Sequence[PredictRow]) -> Rows:
        """Stack the items' rows; an error names the first item of the wrong shape."""
        flags = [item.return_probabilities for item in items]
        shape = self._shape
        if not items:
            return Rows(np.empty((0, *shape), self._dtype), flags)
        try:
            values = [item.input_data for item in items]
            if self._dtype.kind in "iu":
                _refuse_fractions(values, self._dtype)
            with np.errstate(over="ignore"):
                rows = np.asarray(values, dtype=self.model.input_dtype)
        except ValueError:  # ragged nesting
            rows = None
        except OverflowError:  # a number beyond an integer input dtype
            raise InvalidInput(f"input_data: values overflow {self.model.input_dtype}") from None
        if rows is None or rows.shape[1:] != shape:
            for i, item in enumerate(items):
                try:
                    got: object = np.shape(item.input_data)
                except ValueError:
                    got = "ragged rows"
                if got != shape:
                    where = f"[{i}]." if len(items) > 1 else ""
                    raise InvalidInput(f"{where}input_data: expected shape {shape}, got {got}")
        assert rows is not None
        if not np.isfinite(rows).all():
            raise InvalidInput(f"input_data: values overflow {self.model.input_dtype}")
        return Rows(rows, flags)

    @staticmethod
    def _check_finite(outputs: dict[str, np.ndarray], count: int) -> None:
        for name, value in outputs.items():
            row = first_non_finite_row(value)
            if row is not None:
                raise InvalidInput((f"row {row}: " if count > 1 else "") + non_finite_output_message(name))

    async def predict(self, rows: Rows, target: Target | None = None) -> list[dict[str, Any]]:
        """The rows' answers, computed by ``target`` (a model version; default: the batcher's own)."""
        count = len(rows.return_probabilities)
        if not count:
            return []
        started = time.perf_counter()
        submitted = self.batcher.submit(rows.values) if target is None else self.batcher.submit(rows.values, target)
        outputs = await submitted
        self._check_finite(outputs, count)
        elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
        answers = []
        for i, flag in enumerate(rows.return_probabilities):
            row = {name: value[i] for name, value in outputs.items()}
            answer = self.model.postprocess(row, {"return_probabilities": flag})
            answer["worker_id"] = self.worker_id
            answer["inference_time_ms"] = elapsed_ms
            answers.append(answer)
        return answers

    async def check_example(self, target: Target | None = None) -> None:
        """Run the example row end to end (with ``target``'s parameters) and check the answer's schema."""
        try:
            rows = self._rows([PredictRow(input_data=example_row(type(self.model)), return_probabilities=True)])
            [answer] = await self.predict(rows, target)
        except InvalidInput as exc:
            raise ContractError(self.model, "example", exc.message) from None
        try:
            self.response.model_validate(answer)
        except ValidationError as exc:
            raise ContractError(self.model, "postprocess", f"answer does not match the response model: "
                                f"{validation_message(exc)}") from None
