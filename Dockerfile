# syntax=docker/dockerfile:1
# made-service container image. docs/deploy.md has the build and run commands.
#
#   CPU (default):  docker build -t made-service:cpu .
#   CUDA:           docker build --build-arg FLAVOUR=cuda -t made-service:cuda .
#
# FLAVOUR picks the base image (python:3.11-slim, or an NVIDIA CUDA base with Python 3.11) and the PyTorch
# wheel index that matches it (CPU wheels, or CUDA 13.0 wheels). TORCH_SPEC and TORCH_INDEX_URL override the
# wheel, as TORCH_SPEC and TORCH_INDEX do in the Makefile. Only the stages the chosen flavour needs are built.
#
# The final stage runs `made serve` (the command the integration tests run, see tests/deploy/test_image_cmd.py)
# as an unprivileged user on 0.0.0.0:8000, serving the model repository at /models: the bundled models/ are
# baked in there; mount another repository over /models to serve your own.

ARG FLAVOUR=cpu

# ---- bases: one per flavour, each with Python 3.11 and the matching PyTorch wheel index ------------------
FROM python:3.11-slim-bookworm AS base-cpu
ENV TORCH_INDEX_URL_DEFAULT=https://download.pytorch.org/whl/cpu

# The CUDA "base" image (CUDA runtime and the NVIDIA container variables) rather than "runtime": the PyTorch
# CUDA wheels bring their own cuBLAS, cuDNN etc. as pip packages, so runtime's copies would only add gigabytes.
FROM nvidia/cuda:13.0.2-base-ubuntu22.04 AS base-cuda
ENV TORCH_INDEX_URL_DEFAULT=https://download.pytorch.org/whl/cu130
# Not pinned (DL3008): Ubuntu replaces python3.11 with each security update, and a pinned version stops building.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3.11 /usr/local/bin/python3.11

# base-${FLAVOUR} is one of the two stages above, not an image to tag (DL3006).
# hadolint ignore=DL3006
FROM base-${FLAVOUR} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# ---- builder: a virtual environment with PyTorch and made-service, copied whole into the final image -----
FROM base AS builder
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# PyTorch first, in its own layer: it changes far less often than the service's code. TORCH_SPEC is a pinned
# requirement (torch==2.13.0 by default), which hadolint cannot see through the variable.
# hadolint ignore=DL3013
RUN pip install --index-url "${TORCH_INDEX_URL:-$TORCH_INDEX_URL_DEFAULT}" "${TORCH_SPEC}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
# A regular (not editable) install: the final image needs /opt/venv only, not /src.
RUN pip install . && python -m pip uninstall --yes pip

# ---- final image --------------------------------------------------------------------------------------------
FROM base AS final
ARG FLAVOUR
LABEL org.opencontainers.image.title="made-service" \
      org.opencontainers.image.description="MADE density estimation as a REST service (made serve)" \
      io.made-service.flavour="${FLAVOUR}"
RUN groupadd --system --gid 10001 made \
    && useradd --system --uid 10001 --gid made --home-dir /home/made --create-home --shell /usr/sbin/nologin made
COPY --from=builder /opt/venv /opt/venv
# The bundled model repository, readable by the service user but not writable: the server only reads it.
COPY models/ /models/
ENV PATH=/opt/venv/bin:$PATH \
    MADE_HOST=0.0.0.0 \
    MADE_PORT=8000 \
    MADE_MODEL_REPOSITORY=/models \
    MADE_LOG_FORMAT=json
WORKDIR /home/made
USER 10001:10001
EXPOSE 8000
# Liveness of the process and its event loop (not readiness: /healthz answers while models load and during a
# drain). Python's urllib because the slim image has no curl; it follows MADE_PORT if that is changed.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MADE_PORT', '8000'), timeout=4)"]
# SIGTERM starts the drain (docs/api.md, graceful shutdown): give the container up to 60 s to stop
# (docker run --stop-timeout 60, compose stop_grace_period, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
CMD ["made", "serve"]
