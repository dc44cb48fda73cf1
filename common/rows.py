"""What one prediction row looks like on the wire, whatever model is served.

The served model fixes the shape of ``input_data``; code that does not load
the model (the gateway, the job path) checks it against the shape the workers
report, with :func:`nested_shape`.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import AllowInfNan, BaseModel, ConfigDict, Discriminator, Field, Strict, Tag, ValidationError
from typing_extensions import TypeAliasType

#: A finite JSON number; booleans and numeric strings are refused.
Number = Annotated[float, Strict(), AllowInfNan(False)]
#: A number or nested lists of numbers: a row of any rank. The discriminator picks the branch by
#: type, so a bad value gets one error at its place, not one per branch of the union.
NestedNumbers = TypeAliasType(
    "NestedNumbers",
    Annotated[
        Union[Annotated[Number, Tag("(number)")], Annotated[list["NestedNumbers"], Tag("(list)")]],  # noqa: UP007
        Discriminator(lambda value: "(list)" if isinstance(value, list) else "(number)"),
    ],
)


class PredictRow(BaseModel):
    """One row to predict, of any shape: the body of ``/predict``, an item of ``/batch_predict``."""

    model_config = ConfigDict(extra="forbid")

    input_data: NestedNumbers = Field(description="One input row, nested to the model's per-row shape.")
    return_probabilities: Annotated[bool, Strict()] = Field(
        False, description="Include the full output vector (e.g. class probabilities) in the answer."
    )


#: Keys of a plain row: what ``/predict`` and an item of ``/batch_predict`` both take.
ROW_FIELDS = frozenset(PredictRow.model_fields)


def is_plain_row_envelope(item: Any) -> bool:
    """Whether ``item`` is a dict of PredictRow's fields with ``input_data`` and a boolean (or no)
    ``return_probabilities``: the fast paths' first check, before they look at the numbers."""
    return (type(item) is dict and item.keys() <= ROW_FIELDS and "input_data" in item
            and type(item.get("return_probabilities", False)) is bool)


#: Nesting deeper than this is refused as "ragged" (no model row has 32 axes; recursion stays bounded).
MAX_RANK = 32


def nested_shape(value: Any, _depth: int = 0) -> tuple[int, ...] | str:
    """The shape of nested lists (a number is ``()``), or ``"ragged"``."""
    if not isinstance(value, list):
        return ()
    if _depth >= MAX_RANK:
        return "ragged"
    shapes = {nested_shape(item, _depth + 1) for item in value}
    if len(shapes) > 1 or "ragged" in shapes:
        return "ragged"
    return (len(value), *(shapes.pop() if shapes else ()))


def validation_message(error: ValidationError, prefix: str = "") -> str:
    """``"inputs[0].input_data[3]: Input should be a valid number"``: the first error, at its place."""
    first = error.errors()[0]
    parts = [part for part in first["loc"] if not (isinstance(part, str) and part.startswith("("))]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts)
    return f"{(prefix + where).lstrip('.') or 'body'}: {first['msg']}"
