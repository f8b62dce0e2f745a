# ovms-celery image: one image for every role (`ovms`, `ovms api`, `ovms worker`, Celery Flower).
#
#   docker build -t ovms-celery .                         # CPU image (default target: runtime)
#   docker build -t ovms-celery:gpu --target runtime-gpu . # + Intel GPU compute runtime for GPU workers
#   docker run -p 9178:9178 -p 8000:8000 ovms-celery     # all roles in one container, embedded Redis
#
# Stages: `builder` installs the server into /opt/venv (base dependencies + the `monitoring` extra for
# Flower, nothing else); `models` adds the `models` extra to a copy of that venv and builds the example
# models into /models; `runtime` copies only the clean venv and /models onto a fresh slim base.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
# Only what the package needs (README.md is its long description); see .dockerignore.
COPY pyproject.toml README.md ./
COPY ovms ./ovms
COPY api ./api
COPY tasks ./tasks
COPY inference ./inference
RUN pip install --no-cache-dir "./[monitoring]"

FROM builder AS models
COPY ops/build_models.py ./ops/build_models.py
RUN pip install --no-cache-dir "./[models]" \
    && python ops/build_models.py --output /models

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OVMS_CACHE_DIR=/home/ovms/.cache/ovms
RUN groupadd --system --gid 10001 ovms \
    && useradd --system --uid 10001 --gid ovms --create-home --home-dir /home/ovms --shell /usr/sbin/nologin ovms
COPY --from=builder /opt/venv /opt/venv
COPY --from=models /models /models
# Numeric, so that Kubernetes can check runAsNonRoot.
USER 10001:10001
WORKDIR /home/ovms
# gRPC, REST (Flower, when this image runs it, listens on 5555)
EXPOSE 9178 8000
# Liveness of the REST frontend (slim has no curl). Roles without REST (worker, Flower) override it:
# see docker-compose.yml.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v1/health/live', timeout=4)"]
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
