# syntax=docker/dockerfile:1
# A JAX worker on one NVIDIA GPU: `python -m worker` with jax[cuda12].
# The CUDA runtime, cuDNN, cuBLAS and ptxas come as pip wheels with jax[cuda12];
# the host's driver (libcuda) is mounted by the NVIDIA Container Toolkit when
# compose reserves a GPU. So a slim Python base is enough: an nvidia/cuda base
# would add a second CUDA runtime and its NVIDIA_REQUIRE_CUDA driver check.
# Hosts need an NVIDIA driver recent enough for CUDA 12 and the container toolkit.
# The job sidecars of the GPU stack run from this image with JAX_PLATFORMS=cpu.
# Build from the repository root: docker build -f docker/worker-gpu.Dockerfile .
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# 1. The dependency list (base + the `gpu` extra), taken from pyproject.toml.
#    Only this file crosses into the next stage: a pyproject edit that leaves the
#    dependencies alone keeps the install layer below cached.
FROM ${PYTHON_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(project['dependencies'] + project['optional-dependencies']['gpu']))" > requirements.txt

# 2. A virtualenv with JAX for CUDA 12, NumPyro and the server: the big layer
#    (gigabytes of CUDA wheels). Editing worker/model.py or the artifacts does
#    not touch it.
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
COPY --from=requirements /src/requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv && pip install --requirement /tmp/requirements.txt

# 3. The project as a wheel: the code, worker/artifacts and the examples' data.
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN --mount=type=cache,target=/root/.cache/pip pip install "setuptools>=70.1"
COPY pyproject.toml README.md ./
COPY common ./common
COPY worker ./worker
COPY jobs ./jobs
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    JAX_PLATFORMS=cuda \
    JAX_CACHE_DIR=/cache/jax \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# /cache/jax holds the XLA compilation cache. Compose mounts a named volume there,
# shared by the workers: a restarted or added worker loads its compiled buckets
# instead of compiling them. A new named volume copies this folder's owner.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app \
    && mkdir -p /cache/jax && chown -R 10001:10001 /cache
# The dependency layer first, then the small layer that changes with the code.
COPY --from=deps /opt/venv /opt/venv
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-deps --no-index --no-cache-dir /wheels/*.whl
WORKDIR /home/app
USER 10001:10001
EXPOSE 8000
# /health is 503 until the model is loaded and every batch bucket is compiled.
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]
# Replicas of one compose service share the environment: fall back to the
# container's host name so each reports its own worker_id.
CMD ["/bin/sh", "-c", "export WORKER_ID=\"${WORKER_ID:-$HOSTNAME}\"; exec python -m worker"]
