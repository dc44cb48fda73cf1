"""A compact binary body for ``/batch_predict``: rows as raw numbers, for the gateway-to-worker hop.

A JSON batch of 64 rows costs a worker more CPU to parse and validate than the
same rows as bytes cost to check. This module is stdlib only (``struct`` and
``array``): the gateway, which does not depend on numpy, encodes with it; the
worker reads the header with it and the numbers with ``numpy.frombuffer``.
Sent with ``Content-Type: application/x-jax-rows``; the answer is the JSON
array of ``/batch_predict`` either way. All integers are little-endian::

    offset          size             field
    0               4                magic b"JXR1" (format and its version)
    4               8                datatype, the Open Inference Protocol's name, NUL-padded: b"FP32\\0\\0\\0\\0"
    12              4                rank r of one row (uint32)
    16              4                number of rows n (uint32)
    20              4 * r            the shape of one row (uint32 each)
    20 + 4r         n                return_probabilities of each row (one byte, 0 or 1)
    20 + 4r + n     n * size(row)    the rows' values, C order, little-endian

Every field is checked: a body whose length is not exactly what its header
says, an unknown datatype or a flag that is not 0 or 1 is refused with a
:class:`BinaryRowsError` naming the field.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CONTENT_TYPE = "application/x-jax-rows"
MAGIC = b"JXR1"
HEADER = struct.Struct("<4s8sII")
#: Deeper rows are refused (as the JSON routes refuse deeper nesting: ``common.rows.MAX_RANK``).
MAX_RANK = 32
#: Datatype -> stdlib ``array`` typecode and the numpy dtype of the values (little-endian).
DATATYPES = {
    "FP32": ("f", "<f4"), "FP64": ("d", "<f8"),
    "INT8": ("b", "i1"), "INT16": ("h", "<i2"), "INT32": ("i", "<i4"), "INT64": ("q", "<i8"),
    "UINT8": ("B", "u1"), "UINT16": ("H", "<u2"), "UINT32": ("I", "<u4"), "UINT64": ("Q", "<u8"),
}
_NUMBERS = frozenset({int, float})


class BinaryRowsError(ValueError):
    """A body that is not a well-formed rows body; the message says which field is wrong."""


@dataclass(frozen=True)
class RowsBody:
    """A checked body: the values are ``data`` (``count * prod(row_shape)`` of ``datatype``)."""

    datatype: str
    row_shape: tuple[int, ...]
    count: int
    return_probabilities: list[bool]
    data: memoryview

    @property
    def dtype(self) -> str:
        """The values' numpy dtype string, e.g. ``"<f4"``."""
        return DATATYPES[self.datatype][1]


def pack_row(row: Any, datatype: str, rank: int) -> bytes:
    """One row (nested lists ``rank`` deep) as the body's bytes; ValueError if it does not fit ``datatype``.

    The gateway packs each request's row on its own, so a row that cannot be
    sent (a string, a boolean, a float beyond FP32) fails only its request.
    """
    typecode = DATATYPES[datatype][0]
    values = array(typecode)
    try:
        for part in _flatten(row, rank):
            if not set(map(type, part)) <= _NUMBERS:
                raise ValueError("values must be numbers")
            values.extend(part)
    except (TypeError, OverflowError) as exc:
        raise ValueError(f"values do not fit {datatype}: {exc}") from None
    if typecode in "fd" and not all(map(math.isfinite, values)):
        raise ValueError(f"values overflow {datatype}")
    if sys.byteorder == "big":
        values.byteswap()
    return values.tobytes()


def _flatten(row: Any, rank: int) -> list[list[Any]]:
    """The innermost lists of ``row``; ValueError when it is not nested ``rank`` deep."""
    if rank == 0:
        return [[row]]
    parts = [row]
    for _ in range(rank - 1):
        if not all(isinstance(part, list) for part in parts):
            raise ValueError(f"a row is nested {rank} deep")
        parts = [item for part in parts for item in part]
    if not all(isinstance(part, list) for part in parts):
        raise ValueError(f"a row is nested {rank} deep")
    return parts


def encode(rows: Sequence[bytes], row_shape: Sequence[int], datatype: str,
           return_probabilities: Sequence[bool]) -> bytes:
    """The body for rows packed with :func:`pack_row` (each of ``row_shape``), in order."""
    if datatype not in DATATYPES:
        raise ValueError(f"datatype {datatype!r} cannot be encoded; one of {', '.join(DATATYPES)}")
    if len(return_probabilities) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(return_probabilities)} return_probabilities flags")
    row_bytes = math.prod(row_shape) * struct.calcsize(DATATYPES[datatype][0])
    if any(len(row) != row_bytes for row in rows):
        raise ValueError(f"every row must be {row_bytes} bytes: shape {tuple(row_shape)} of {datatype}")
    head = HEADER.pack(MAGIC, datatype.encode(), len(row_shape), len(rows))
    shape = struct.pack(f"<{len(row_shape)}I", *row_shape)
    return b"".join([head, shape, bytes(map(bool, return_probabilities)), *rows])


def decode(body: bytes) -> RowsBody:
    """The header of ``body``, checked against the body's length; the values are not read here."""
    if len(body) < HEADER.size:
        raise BinaryRowsError(f"the body has {len(body)} bytes; a rows body starts with a {HEADER.size}-byte header")
    magic, raw_datatype, rank, count = HEADER.unpack_from(body)
    if magic != MAGIC:
        raise BinaryRowsError(f"the body does not start with {MAGIC!r} (the rows format, version 1)")
    datatype = raw_datatype.rstrip(b"\0").decode("ascii", "replace")
    if datatype not in DATATYPES:
        raise BinaryRowsError(f"unknown datatype {datatype!r}; one of {', '.join(DATATYPES)}")
    if rank > MAX_RANK:
        raise BinaryRowsError(f"rank {rank}: rows of more than {MAX_RANK} axes are refused")
    offset = HEADER.size + 4 * rank
    if len(body) < offset:
        raise BinaryRowsError(f"the body ends inside the row shape ({rank} axes need {offset} bytes)")
    row_shape = struct.unpack_from(f"<{rank}I", body, HEADER.size)
    itemsize = struct.calcsize(DATATYPES[datatype][0])
    size = offset + count + count * math.prod(row_shape) * itemsize
    if len(body) != size:
        raise BinaryRowsError(f"the body has {len(body)} bytes; {count} rows of shape {row_shape} of {datatype} "
                              f"take {size}")
    flags = body[offset : offset + count]
    if flags.strip(b"\0\1"):
        raise BinaryRowsError("return_probabilities flags must be 0 or 1, one byte per row")
    view = memoryview(body)[offset + count :]
    return RowsBody(datatype, row_shape, count, [flag == 1 for flag in flags], view)
