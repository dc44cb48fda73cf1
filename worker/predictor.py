"""From request bytes to model rows, and from model outputs to answers, for one model.

The request is validated against the model's nesting depth, then its shape is
checked here, so a wrong row is answered "input_data: expected shape (4,), got
(3,)". Outputs that are not finite are refused: JSON has no NaN, and a null
where a number belongs is a silently wrong answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from common.json_errors import NON_FINITE_MESSAGE, has_non_finite_numbers
from common.rows import PredictRow, nested_shape, validation_message
from worker.batcher import Batcher
from worker.contract import ContractError, Model, TensorSpec, example_row
from worker.errors import InvalidInput, MalformedRequest, PayloadTooLarge
from worker.metadata import request_model, response_model


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if has_non_finite_numbers(body):
            raise InvalidInput(NON_FINITE_MESSAGE) from None
        raise MalformedRequest(f"body is not valid JSON: {exc}") from None


def first_non_finite_row(value: np.ndarray) -> int | None:
    """The first row of an output holding a NaN or an infinity; None when every row is finite."""
    if value.dtype.kind != "f":
        return None
    finite = np.isfinite(value.reshape(len(value), -1)).all(axis=1)
    return None if finite.all() else int(np.argmin(finite))


def non_finite_output_message(name: str) -> str:
    return (f"the model's output {name!r} is not finite for this input (it may be far outside the range the "
            "model was trained on)")


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

    def parse_one(self, body: bytes) -> PredictRow:
        data = _json(body)
        try:
            return self._one.validate_python(data)
        except ValidationError as exc:
            self._check_shape(data)
            raise InvalidInput(validation_message(exc)) from None

    def parse_many(self, body: bytes) -> list[PredictRow]:
        data = _json(body)
        try:
            items = self._many.validate_python(data)
        except ValidationError as exc:
            for i, item in enumerate(data if isinstance(data, list) else []):
                self._check_shape(item, f"[{i}].")
            raise InvalidInput(validation_message(exc)) from None
        if len(items) > self.max_rows_per_request:
            raise PayloadTooLarge(f"{len(items)} rows in one request; the limit is {self.max_rows_per_request}")
        return items

    def _check_shape(self, item: Any, where: str = "") -> None:
        """A row nested to the wrong depth is a shape error: say so, rather than pydantic's type message."""
        if isinstance(item, dict) and "input_data" in item:
            got = nested_shape(item["input_data"])
            if got != "ragged" and len(got) != len(self.model.input_shape or ()):
                raise InvalidInput(f"{where}input_data: expected shape {self.model.input_shape}, got {got}")

    def to_rows(self, items: Sequence[PredictRow]) -> np.ndarray:
        """Stack the items' rows; an error names the first item of the wrong shape."""
        shape = self.model.input_shape or ()
        try:
            with np.errstate(over="ignore"):
                rows = np.asarray([item.input_data for item in items], dtype=self.model.input_dtype)
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
        return rows

    @staticmethod
    def _check_finite(outputs: dict[str, np.ndarray], count: int) -> None:
        for name, value in outputs.items():
            row = first_non_finite_row(value)
            if row is not None:
                raise InvalidInput((f"row {row}: " if count > 1 else "") + non_finite_output_message(name))

    async def predict(self, items: Sequence[PredictRow]) -> list[dict[str, Any]]:
        if not items:
            return []
        rows = self.to_rows(items)
        started = time.perf_counter()
        outputs = await self.batcher.submit(rows)
        self._check_finite(outputs, len(items))
        elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
        answers = []
        for i, item in enumerate(items):
            row = {name: value[i] for name, value in outputs.items()}
            answer = self.model.postprocess(row, {"return_probabilities": item.return_probabilities})
            answer["worker_id"] = self.worker_id
            answer["inference_time_ms"] = elapsed_ms
            answers.append(answer)
        return answers

    async def check_example(self) -> None:
        """Run the example row end to end and check the answer against the response schema."""
        item = PredictRow(input_data=example_row(type(self.model)), return_probabilities=True)
        try:
            [answer] = await self.predict([item])
        except InvalidInput as exc:
            raise ContractError(self.model, "example", exc.message) from None
        try:
            self.response.model_validate(answer)
        except ValidationError as exc:
            raise ContractError(self.model, "postprocess", f"answer does not match the response model: "
                                f"{validation_message(exc)}") from None
