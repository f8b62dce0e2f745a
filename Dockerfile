# ovms-celery image: one image for every role (`ovms`, `ovms api`, `ovms worker`, Celery Flower).
#
#   make docker_build                                      # ovms:latest (OVMS_CPP_DOCKER_IMAGE to rename)
#   make docker_build_offline                              # the same, with no registry and no PyPI in the build
#   docker build -t ovms-celery:gpu --target runtime-gpu . # + Intel GPU compute runtime for GPU workers
#   docker run -p 9178:9178 -p 8000:8000 ovms              # all roles in one container, embedded Redis
#
# Stages: `deps` installs the server's dependencies into /opt/venv (base + the `monitoring` extra for
# Flower, nothing else); `builder` adds the server's code; `models` adds the `models` extra to a copy of
# `deps` and builds the example models into /models; `runtime` copies only the clean venv and /models onto
# a fresh base.
#
# Build arguments, for networks without a registry or PyPI (see the README's "Building the image"):
# PYTHON_IMAGE, a Debian-based image with python3 and its venv module (the offline build makes one with
# mmdebstrap); PIP_NO_INDEX=1 and PIP_FIND_LINKS=/wheels (pip reads them from the environment) to install
# only from the wheels put in ops/docker/wheelhouse/ before the build (`make wheelhouse`).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python3 -m venv /opt/venv
# Empty but for its README unless `make wheelhouse` filled it; only the build stages see it.
COPY ops/docker/wheelhouse/ /wheels/
# The dependencies, from pyproject.toml alone (empty package folders and an empty README, the package's
# long description, stand in for the rest), so that a change of the code or the README reinstalls only the
# package itself, and the example models are not rebuilt.
COPY pyproject.toml ./
RUN touch README.md && mkdir ovms api tasks inference \
    && pip install --no-cache-dir "./[monitoring]" \
    && rm -rf ovms api tasks inference build ./*.egg-info

FROM deps AS builder
# Build arguments reach only the stages that declare them.
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
# Only what the package needs (README.md is its long description); see .dockerignore.
COPY README.md ./
COPY ovms ./ovms
COPY api ./api
COPY tasks ./tasks
COPY inference ./inference
RUN pip install --no-cache-dir --no-deps "./[monitoring]"

FROM deps AS models
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
COPY ops/build_models.py ./ops/build_models.py
RUN mkdir ovms api tasks inference \
    && pip install --no-cache-dir "./[models]" \
    && python ops/build_models.py --output /models

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OVMS_CACHE_DIR=/home/ovms/.cache/ovms
# The seed's --log_path /var/log/ie_serving.log works as the ovms user: its group may write in /var/log.
RUN groupadd --system --gid 10001 ovms \
    && useradd --system --uid 10001 --gid ovms --create-home --home-dir /home/ovms --shell /usr/sbin/nologin ovms \
    && chgrp ovms /var/log && chmod g+w /var/log
COPY --from=builder /opt/venv /opt/venv
COPY --from=models /models /models
# Numeric, so that Kubernetes can check runAsNonRoot.
USER 10001:10001
WORKDIR /home/ovms
# gRPC, REST (Flower, when this image runs it, listens on 5555)
EXPOSE 9178 8000
# Liveness of whatever the container runs (ovms/healthcheck.py reads PID 1's flags): REST /v1/health/live,
# or gRPC health when there is no REST port, or a worker's registration in Redis for `ovms worker`.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "ovms.healthcheck"]
ENTRYPOINT ["ovms"]
CMD ["--config_path", "/models/config.json", "--port", "9178", "--rest_port", "8000"]

# GPU workers: OpenVINO's GPU plugin (in the openvino wheel) needs Intel's OpenCL compute runtime.
# The container also needs the node's /dev/dri render device (the Intel GPU device plugin provides it,
# see ops/k8s/worker-gpu.yaml). The versions are Debian 12's (bookworm, the base image's release).
FROM runtime AS runtime-gpu
USER 0:0
RUN apt-get update \
    && apt-get install -y --no-install-recommends intel-opencl-icd=22.43.24595.41-1 ocl-icd-libopencl1=2.3.1-1 \
    && rm -rf /var/lib/apt/lists/*
USER 10001:10001

# The default target: `docker build .` without --target builds the CPU image.
FROM runtime
