"""The gateway never imports JAX: checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys


def test_importing_and_building_the_gateway_loads_no_jax() -> None:
    code = (
        "import sys\n"
        "from gateway.app import create_app\n"
        "from gateway.settings import GatewaySettings\n"
        "create_app(GatewaySettings(workers=['127.0.0.1:1']))\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in {'jax', 'jaxlib', 'numpyro'})\n"
        "print(loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
