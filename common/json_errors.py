"""Why a body orjson refused is not JSON: non-finite numbers get their own answer.

orjson (like RFC 8259) refuses ``NaN`` and ``Infinity``; Python's ``json``
takes them. A client that sent them wrote valid Python-flavoured JSON and
should hear that the numbers are the problem (422), not that the body is
unreadable (400). The check runs on the error path only, so good requests pay
nothing for it.
"""

from __future__ import annotations

import json

NON_FINITE_MESSAGE = "non-finite numbers are refused: NaN, Infinity and -Infinity are not JSON numbers"


def has_non_finite_numbers(body: bytes) -> bool:
    """True when ``body`` would be JSON but for a NaN / Infinity / -Infinity in it (and only then)."""
    seen: list[str] = []
    try:
        json.loads(body, parse_constant=seen.append)
    except (ValueError, RecursionError):  # broken otherwise too: the 400 says so
        return False
    return bool(seen)
