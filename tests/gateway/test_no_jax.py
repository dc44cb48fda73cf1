"""Dependencies point one way: the gateway loads no JAX and nothing of worker/; jobs/ nothing of gateway/.

Checked in fresh interpreters, so nothing imported by another test hides an import.
"""

from __future__ import annotations

import subprocess
import sys


def loaded_packages(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_importing_and_building_the_gateway_loads_no_jax_and_no_worker_code() -> None:
    loaded = loaded_packages(
        "from gateway.app import create_app\n"
        "from gateway.settings import GatewaySettings\n"
        "create_app(GatewaySettings(workers=['127.0.0.1:1']))"
    )
    assert "gateway" in loaded
    assert not loaded & {"jax", "jaxlib", "numpyro", "worker"}


def test_the_job_path_imports_nothing_of_the_gateway_or_the_worker() -> None:
    loaded = loaded_packages("import jobs.service, jobs.sidecar, jobs.tasks")
    assert "jobs" in loaded
    assert not loaded & {"gateway", "worker", "jax"}
