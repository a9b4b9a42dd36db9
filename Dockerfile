# syntax=docker/dockerfile:1.7
# Three images from one file, each with only the extras it needs (see pyproject.toml), pinned by
# images/<target>.lock. `make images` builds all three with docker, podman or buildah:
#   docker build --target operator -t ghcr.io/rlaif-operator/rlaif:0.1.0-operator .
# Air-gapped (no registry base image, no network in the build; docs/operator.md, "Images"):
#   make images OFFLINE=1
# builds FROM the debootstrap bases of `make base-image`, with
# PIP_INSTALL_ARGS="--no-index --find-links /wheelhouse" (the wheels of `make wheelhouse`) and
# TORCH_VERSION=<version>+cpu, the CPU variant of the trainer and reward images.
# All run as uid 10001 and work with a read-only root filesystem (HOME=/tmp, an emptyDir).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
# The CUDA build from PyPI; the tests pin the same version.
ARG TORCH_VERSION=2.13.0

# --------------------------------------------------------------------------- wheel
FROM ${PYTHON_IMAGE} AS wheel
ARG PIP_INSTALL_ARGS=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rlaif rlaif
COPY operator operator
COPY trainer trainer
COPY rewards rewards
# hadolint ignore=SC2086
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    pip wheel --no-cache-dir --no-deps $PIP_INSTALL_ARGS --wheel-dir /wheels .

# --------------------------------------------------------------------------- operator
FROM ${PYTHON_IMAGE} AS operator
ARG VERSION=0.1.0
ARG REVISION=""
ARG PIP_INSTALL_ARGS=""
LABEL org.opencontainers.image.title="rlaif-operator" \
      org.opencontainers.image.description="kopf operator for RLAIFJob and RewardServer" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/rlaif-operator/rlaif-operator"
# The project's wheel and the lock are copied (a few hundred KB, kept in /usr/share/rlaif as
# provenance): build caches key COPY by content but RUN --mount by its text only. The
# wheelhouse is bind-mounted, never kept in a layer.
COPY --from=wheel /wheels/ /usr/share/rlaif/
COPY images/operator.lock /usr/share/rlaif/requirements.lock
# hadolint ignore=SC2086
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    groupadd --gid 10001 rlaif \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin rlaif \
    && pip install --no-cache-dir $PIP_INSTALL_ARGS \
       --constraint /usr/share/rlaif/requirements.lock \
       "$(ls /usr/share/rlaif/rlaif_operator-*.whl)[operator]"
ENV HOME=/tmp PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8081 9090
ENTRYPOINT ["rlaif", "operator"]

# --------------------------------------------------------------------------- CUDA + Python
FROM ${CUDA_IMAGE} AS cuda-python
ARG VERSION=0.1.0
ARG REVISION=""
ARG PIP_INSTALL_ARGS=""
ARG TORCH_VERSION
# The labels the trainer and reward images share; each adds its title and description.
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/rlaif-operator/rlaif-operator"
# espeak-ng: the prosody-lm policy speaks through it; sox/libsndfile: audio I/O. apt-get runs
# only for what the base lacks: the offline base (make base-image) has them all. POSIX sh:
# buildah's OCI format ignores SHELL.
# hadolint ignore=SC2086
RUN need=""; for p in python3 python3-venv espeak-ng sox libsndfile1 ca-certificates; do \
        dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"; done; \
    if [ -n "$need" ]; then apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need \
        && rm -rf /var/lib/apt/lists/*; fi \
    && python3 -m venv /opt/venv \
    && groupadd --gid 10001 rlaif \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin rlaif
ENV PATH=/opt/venv/bin:$PATH HOME=/tmp PYTHONUNBUFFERED=1
# hadolint ignore=SC2086,DL3013
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    pip install --no-cache-dir $PIP_INSTALL_ARGS "torch==${TORCH_VERSION}"

# --------------------------------------------------------------------------- trainer
FROM cuda-python AS trainer
ARG PIP_INSTALL_ARGS=""
ARG TORCH_VERSION
LABEL org.opencontainers.image.title="rlaif-trainer" \
      org.opencontainers.image.description="DeepSpeed GRPO/DLPO trainer and the labeller"
COPY --from=wheel /wheels/ /usr/share/rlaif/
COPY images/trainer.lock /usr/share/rlaif/requirements.lock
# hadolint ignore=SC2086
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    pip install --no-cache-dir $PIP_INSTALL_ARGS \
       --constraint /usr/share/rlaif/requirements.lock \
       "$(ls /usr/share/rlaif/rlaif_operator-*.whl)[trainer]" "torch==${TORCH_VERSION}"
USER 10001:10001
EXPOSE 9090 29500
ENTRYPOINT ["rlaif"]
CMD ["train", "--config", "/etc/rlaif/trainer.yaml"]

# --------------------------------------------------------------------------- reward
FROM cuda-python AS reward
ARG PIP_INSTALL_ARGS=""
ARG TORCH_VERSION
LABEL org.opencontainers.image.title="rlaif-reward" \
      org.opencontainers.image.description="Batched reward-model servers (asr, judge, mos, speaker)"
COPY --from=wheel /wheels/ /usr/share/rlaif/
COPY images/reward.lock /usr/share/rlaif/requirements.lock
# hadolint ignore=SC2086
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    pip install --no-cache-dir $PIP_INSTALL_ARGS \
       --constraint /usr/share/rlaif/requirements.lock \
       "$(ls /usr/share/rlaif/rlaif_operator-*.whl)[rewards]" "torch==${TORCH_VERSION}"
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["rlaif", "reward", "serve"]
