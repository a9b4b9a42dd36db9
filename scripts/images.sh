#!/usr/bin/env bash
# Build the Dockerfile's targets with docker, podman or buildah (scripts/engine.sh picks one):
#   scripts/images.sh [operator] [trainer] [reward]       (default: all three)
# Tags: $IMAGE_REPOSITORY:<version>-<target>, the version from rlaif/__init__.py; the CPU
# variant of trainer and reward (TORCH_VERSION=...+cpu) gets a -cpu suffix.
# OFFLINE=1: no registry and no network in the build. Bases from scripts/base_image.sh, wheels
# from scripts/wheelhouse.py (both cached under ~/.cache/rlaif-operator), pip restricted to the
# wheelhouse, the CPU build of torch. PYTHON_IMAGE and CUDA_IMAGE override the bases.
# PRUNE=1 removes untagged images afterwards (the layer cache too): CI disks stay flat.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/engine.sh

targets=("$@"); ((${#targets[@]})) || targets=(operator trainer reward)
for t in "${targets[@]}"; do
    case "$t" in operator|trainer|reward) ;; *) echo "unknown target '$t'" >&2; exit 2 ;; esac
done
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' rlaif/__init__.py)
repository=${IMAGE_REPOSITORY:-ghcr.io/rlaif-operator/rlaif}
torch=${TORCH_VERSION:-$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile)}
python=${PYTHON:-.venv/bin/python}
args=(--build-arg "VERSION=$version")
revision=$(git rev-parse HEAD 2>/dev/null || true)
[ -z "$revision" ] || args+=(--build-arg "REVISION=$revision")

detect_engine
if [ "${OFFLINE:-0}" = 1 ]; then
    [[ "$torch" == *+cpu ]] || torch=$torch+cpu
    # Plain assignments, so that set -e stops here when a base cannot be made.
    [ -n "${PYTHON_IMAGE:-}" ] || PYTHON_IMAGE=$(scripts/base_image.sh python)
    if [[ -z "${CUDA_IMAGE:-}" && " ${targets[*]} " =~ \ (trainer|reward)\  ]]; then
        CUDA_IMAGE=$(scripts/base_image.sh speech)
    fi
    "$python" scripts/wheelhouse.py "${targets[@]}"
    args+=(--network none --build-arg "PIP_INSTALL_ARGS=--no-index --find-links /wheelhouse")
fi
args+=(--build-arg "TORCH_VERSION=$torch")
[ -z "${PYTHON_IMAGE:-}" ] || args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
[ -z "${CUDA_IMAGE:-}" ] || args+=(--build-arg "CUDA_IMAGE=$CUDA_IMAGE")
case "$ENGINE" in
    docker) build=(env DOCKER_BUILDKIT=1 docker build --force-rm) ;;
    podman) build=(podman build --layers --force-rm) ;;
    buildah) build=(buildah bud --layers --force-rm) ;;
esac

for target in "${targets[@]}"; do
    tag=$repository:$version-$target
    [[ "$target" == operator || "$torch" != *+cpu ]] || tag=$tag-cpu
    start=$SECONDS
    "${build[@]}" "${args[@]}" --target "$target" --tag "$tag" . >&2
    size=$(image_size "$tag")
    echo "built $tag with $ENGINE in $((SECONDS - start)) s; size $size" >&2
    echo "$tag"
done
if [ "${PRUNE:-0}" = 1 ]; then  # best effort: an image a container still uses stays
    case "$ENGINE" in
        buildah) prune=(buildah rmi --prune) ;;
        *) prune=("$ENGINE" image prune --force) ;;
    esac
    "${prune[@]}" >/dev/null 2>&1 || echo "warning: ${prune[*]} left some images" >&2
fi
