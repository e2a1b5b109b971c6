# syntax=docker/dockerfile:1
# celery-exporter image: a wheel built in a throw-away stage, installed into python:3.11-slim.
#   docker build -t celery-exporter:0.1.0 .
#   docker run --rm -p 9808:9808 -e CELERY_BROKER_URL=redis://redis:6379/0 celery-exporter:0.1.0
# Pin the base image by digest (python:3.11-slim@sha256:...) in your registry mirror for
# byte-for-byte rebuilds; the tag alone already fixes Python 3.11 and Debian slim.
ARG PYTHON_IMAGE=python:3.11-slim
# Extras installed with the package: celery for --app (the app named is imported, and Celery
# with it; worker inspection needs kombu alone), msgpack for msgpack-encoded events.
ARG EXTRAS=celery,msgpack

FROM ${PYTHON_IMAGE} AS builder
ARG EXTRAS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_CONSTRAINT=/src/requirements.lock
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY exporter ./exporter
# One wheel per distribution, at the versions in requirements.lock (PIP_CONSTRAINT also pins the
# isolated build's setuptools and wheel). Every dependency ships binary wheels for CPython 3.11
# on manylinux, so no compiler is needed even here.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[${EXTRAS}]"

FROM ${PYTHON_IMAGE}
ARG EXTRAS
LABEL org.opencontainers.image.title="celery-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Celery" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CELERY_EXPORTER_HOST=0.0.0.0
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --system --gid 10001 exporter \
    && useradd --system --uid 10001 --gid exporter --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin exporter
# Install from the builder's wheels only (no index, no compiler, nothing cached), then drop
# the packaging tools the base image ships: nothing at run time needs them.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,source=requirements.lock,target=/tmp/requirements.lock \
    pip install --no-cache-dir --no-index --find-links=/wheels \
        --constraint /tmp/requirements.lock "celery-exporter[${EXTRAS}]" \
    && pip uninstall --yes --no-cache-dir setuptools wheel pip \
    && celery-exporter --version
USER 10001:10001
EXPOSE 9808
# slim has no curl: ask /healthz with the interpreter that is there anyway (plain HTTP: with
# --web-tls-* or another --port, override it with docker run --health-cmd).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CELERY_EXPORTER_PORT', '9808') + '/healthz', timeout=4)"]
ENTRYPOINT ["celery-exporter"]
