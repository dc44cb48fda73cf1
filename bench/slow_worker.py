"""A stand-in worker whose /predict takes a while: the gateway's drain test, the chaos suite's slow worker.

Run as ``python -m bench.slow_worker PORT SECONDS``.
"""

from __future__ import annotations

import asyncio
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def build(delay_s: float) -> Starlette:
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "healthy", "worker_id": "slow"})

    async def predict(request: Request) -> JSONResponse:
        await asyncio.sleep(delay_s)
        return JSONResponse({"prediction": [1], "worker_id": "slow", "inference_time_ms": delay_s * 1000})

    return Starlette(routes=[Route("/health", health), Route("/predict", predict, methods=["POST"])])


if __name__ == "__main__":
    uvicorn.run(build(float(sys.argv[2])), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
