"""Settings types shared by the processes' settings classes."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator
from pydantic_settings import NoDecode


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


#: A list setting written as ``a,b,c`` in the environment.
CommaSeparated = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]
