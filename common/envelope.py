"""The project's one error envelope: ``{"error": {"code", "message"}, "request_id"}``.

Gateway, job routes and workers answer every error in it, so a client needs
one parser for all of them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_input.")
    message: str = Field(description="What went wrong, naming the field.")


class ErrorResponse(BaseModel):
    """The one error envelope of the project, from gateway and workers alike."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {"code": "invalid_input", "message": "input_data[1]: Input should be a valid number"},
                    "request_id": "5f0c6a4e9d7b4d8e",
                }
            ]
        }
    )

    error: ErrorDetail
    request_id: str | None = None


def error_body(code: str, message: str, request_id: str | None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}, "request_id": request_id}
