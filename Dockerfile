# syntax=docker/dockerfile:1.7
# Three images from one file, each with only the extras it needs (see pyproject.toml):
#   docker build --target operator -t ghcr.io/rlaif-operator/rlaif:0.1.0-operator .
#   docker build --target trainer  -t ghcr.io/rlaif-operator/rlaif:0.1.0-trainer .
#   docker build --target reward   -t ghcr.io/rlaif-operator/rlaif:0.1.0-reward .
# All run as uid 10001 and work with a read-only root filesystem (HOME=/tmp, an emptyDir).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# --------------------------------------------------------------------------- wheel
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rlaif rlaif
COPY operator operator
COPY trainer trainer
COPY rewards rewards
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --------------------------------------------------------------------------- operator
FROM ${PYTHON_IMAGE} AS operator
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="rlaif-operator" \
      org.opencontainers.image.description="kopf operator for RLAIFJob and RewardServer" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/rlaif-operator/rlaif-operator"
RUN groupadd --gid 10001 rlaif \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin rlaif
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/rlaif_operator-*.whl)[operator]" \
    && rm -rf /wheels
ENV HOME=/tmp PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8081 9090
ENTRYPOINT ["rlaif", "operator"]

# --------------------------------------------------------------------------- CUDA + Python
FROM ${CUDA_IMAGE} AS cuda-python
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# espeak-ng: the prosody-lm policy speaks through it; sox/libsndfile: audio I/O.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3 python3-venv espeak-ng sox libsndfile1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv \
    && groupadd --gid 10001 rlaif \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin rlaif
ENV PATH=/opt/venv/bin:$PATH HOME=/tmp PYTHONUNBUFFERED=1
# The CUDA build of torch (PyPI's Linux wheels); the same version as the tests pin.
RUN pip install --no-cache-dir torch==2.13.0
COPY --from=wheel /wheels /wheels

# --------------------------------------------------------------------------- trainer
FROM cuda-python AS trainer
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="rlaif-trainer" \
      org.opencontainers.image.description="DeepSpeed GRPO/DLPO trainer and the labeller" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/rlaif-operator/rlaif-operator"
RUN pip install --no-cache-dir "$(ls /wheels/rlaif_operator-*.whl)[trainer]" torch==2.13.0 \
    && rm -rf /wheels
USER 10001:10001
EXPOSE 9090 29500
ENTRYPOINT ["rlaif"]
CMD ["train", "--config", "/etc/rlaif/trainer.yaml"]

# --------------------------------------------------------------------------- reward
FROM cuda-python AS reward
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="rlaif-reward" \
      org.opencontainers.image.description="Batched reward-model servers (asr, judge, mos, speaker)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/rlaif-operator/rlaif-operator"
RUN pip install --no-cache-dir "$(ls /wheels/rlaif_operator-*.whl)[rewards]" torch==2.13.0 \
    && rm -rf /wheels
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["rlaif", "reward", "serve"]
