"""The binary rows body: what the stdlib encoder writes, numpy reads back; every malformed header is named."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from common import binary_rows
from common.binary_rows import BinaryRowsError, decode, encode, pack_row


def body_of(rows: list, shape: tuple[int, ...], datatype: str = "FP32", flags: list[bool] | None = None) -> bytes:
    packed = [pack_row(row, datatype, len(shape)) for row in rows]
    return encode(packed, shape, datatype, flags if flags is not None else [False] * len(rows))


@pytest.mark.parametrize(("datatype", "rows"), [
    ("FP32", [[1.5, -2, 3e38, 0.0], [0, 0, 0, 1]]), ("FP64", [[1e300, 2, 3, 4]]),
    ("INT32", [[1, -2, 2**31 - 1, 0]]), ("INT64", [[-(2**63), 0, 1, 2]]), ("UINT8", [[0, 1, 254, 255]]),
])
def test_what_the_encoder_writes_numpy_reads_back(datatype: str, rows: list) -> None:
    decoded = decode(body_of(rows, (4,), datatype, [True] + [False] * (len(rows) - 1)))
    assert (decoded.datatype, decoded.row_shape, decoded.count) == (datatype, (4,), len(rows))
    assert decoded.return_probabilities == [True] + [False] * (len(rows) - 1)
    values = np.frombuffer(decoded.data, decoded.dtype).reshape(len(rows), 4)
    np.testing.assert_array_equal(values, np.asarray(rows, decoded.dtype))


def test_rows_of_any_rank_and_no_rows_at_all() -> None:
    grid = [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]]
    decoded = decode(body_of(grid, (2, 3)))
    np.testing.assert_array_equal(np.frombuffer(decoded.data, "<f4").reshape(2, 2, 3), np.asarray(grid))
    empty = decode(body_of([], (4,)))
    assert (empty.count, len(empty.data), empty.return_probabilities) == (0, 0, [])
    scalar = decode(body_of([2.5, 3], ()))
    assert scalar.row_shape == () and np.frombuffer(scalar.data, "<f4").tolist() == [2.5, 3.0]


@pytest.mark.parametrize(("row", "datatype", "message"), [
    ([1, 2, "3", 4], "FP32", "must be numbers"), ([1, 2, True, 4], "FP32", "must be numbers"),
    ([1, 2, 3, 1e39], "FP32", "overflow FP32"), ([1, 2, 3, 1.5], "INT32", "do not fit INT32"),
    ([1, 2, 3, 2**40], "INT32", "do not fit INT32"), ([1, 2, 3, -1], "UINT8", "do not fit UINT8"),
    ([[1, 2, 3, 4]], "FP32", "must be numbers"), (5, "FP32", "nested 1 deep"),
])
def test_a_row_that_does_not_fit_is_a_value_error_of_its_own(row: object, datatype: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pack_row(row, datatype, 1)


def test_the_encoder_refuses_what_would_be_a_malformed_body() -> None:
    row = pack_row([1, 2, 3, 4], "FP32", 1)
    with pytest.raises(ValueError, match="cannot be encoded"):
        encode([row], (4,), "BF16", [False])
    with pytest.raises(ValueError, match="flags"):
        encode([row], (4,), "FP32", [])
    with pytest.raises(ValueError, match="16 bytes"):
        encode([row[:8]], (4,), "FP32", [False])


GOOD = body_of([[1, 2, 3, 4], [5, 6, 7, 8]], (4,))


@pytest.mark.parametrize(("body", "message"), [
    (b"", "a rows body starts with a 20-byte header"),
    (b"JXR1" + b"\0" * 10, "20-byte header"),
    (b"JXR2" + GOOD[4:], "does not start with b'JXR1'"),
    (GOOD[:4] + b"FP33\0\0\0\0" + GOOD[12:], "unknown datatype 'FP33'"),
    (GOOD[:4] + b"\xff" * 8 + GOOD[12:], "unknown datatype"),
    (GOOD[:12] + struct.pack("<I", 33) + GOOD[16:], "rank 33"),
    (GOOD[:12] + struct.pack("<I", 30) + GOOD[16:], "ends inside the row shape"),
    (GOOD[:-1], "the body has 57 bytes; 2 rows of shape (4,) of FP32 take 58"),
    (GOOD + b"\0", "59 bytes.*take 58"),
    (GOOD[:16] + struct.pack("<I", 3) + GOOD[20:], "3 rows"),
    (GOOD[:16] + struct.pack("<I", 2**32 - 1) + GOOD[20:], "4294967295 rows"),
    (GOOD[:20] + struct.pack("<I", 2**31) + GOOD[24:], "shape (2147483648,)"),
    (GOOD[:24] + b"\2" + GOOD[25:], "flags must be 0 or 1"),
])
def test_every_malformed_header_is_refused_with_the_field_named(body: bytes, message: str) -> None:
    with pytest.raises(BinaryRowsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode(body)


def test_the_format_is_what_the_docstring_says() -> None:
    header = struct.unpack_from("<4s8sII", GOOD)
    assert header == (b"JXR1", b"FP32\0\0\0\0", 1, 2)
    assert struct.unpack_from("<I", GOOD, 20) == (4,) and GOOD[24:26] == b"\0\0"
    assert np.frombuffer(GOOD[26:], "<f4").tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert binary_rows.CONTENT_TYPE == "application/x-jax-rows"
