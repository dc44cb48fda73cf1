# syntax=docker/dockerfile:1
# The gateway: Starlette under gunicorn + uvicorn workers (uvloop). No JAX.
# Build from the repository root: docker build -f docker/gateway.Dockerfile .
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# 1. The dependency list, taken from pyproject.toml. Only this file crosses into
#    the next stage, so a pyproject edit that leaves the dependencies alone (a
#    version bump, a new extra) keeps the install layer below cached.
FROM ${PYTHON_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(project['dependencies']))" > requirements.txt

# 2. A virtualenv with the dependencies: the big layer, rebuilt only when they change.
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
COPY --from=requirements /src/requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv && pip install --requirement /tmp/requirements.txt

# 3. The project itself as a wheel (pure Python, no dependencies).
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN --mount=type=cache,target=/root/.cache/pip pip install "setuptools>=70.1"
COPY pyproject.toml README.md ./
# The gateway publishes jobs through jobs/; both use common/. It imports nothing
# of worker/ (its docs come from the workers' /metadata), and no JAX.
COPY common ./common
COPY gateway ./gateway
COPY jobs ./jobs
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    GATEWAY_PROCESSES=1 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app
COPY --from=deps /opt/venv /opt/venv
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-deps --no-index --no-cache-dir /wheels/*.whl
WORKDIR /home/app
USER 10001:10001
EXPOSE 8080
# /v2/health/live answers while the process serves, and needs no API key; /gateway/health
# would turn the container unhealthy whenever the workers are down, which is the workers' state.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/live' % os.environ.get('PORT', '8080'), timeout=4)"]
# gunicorn_conf.py reads HOST, PORT, GATEWAY_PROCESSES and LOG_LEVEL, and keeps the
# Prometheus multiprocess folder clean; `python:` loads it from the installed package.
CMD ["gunicorn", "gateway.app:create_app()", "-k", "gateway.gunicorn_worker.GatewayWorker", "-c", "python:gateway.gunicorn_conf"]
