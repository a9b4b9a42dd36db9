# Container engine helpers, sourced by base_image.sh, images.sh and image_run.sh.
# ENGINE=docker|podman|buildah picks one; otherwise the first that works: a docker whose daemon
# answers, podman, then buildah (which needs no daemon and builds here with chroot isolation).
# shellcheck shell=bash

CACHE_ROOT="${RLAIF_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rlaif-operator/images}"

detect_engine() {
    if [ -n "${ENGINE:-}" ]; then
        command -v "$ENGINE" >/dev/null || { echo "ENGINE=$ENGINE: not on PATH" >&2; return 1; }
    elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        ENGINE=docker
    elif command -v podman >/dev/null && podman info >/dev/null 2>&1; then
        ENGINE=podman
    elif command -v buildah >/dev/null; then
        ENGINE=buildah
    else
        echo "no container engine: install docker, podman or buildah (apt-get install buildah)" >&2
        return 1
    fi
    if [ "$ENGINE" != docker ]; then
        # Daemonless engines: chroot isolation works in unprivileged containers and CI runners
        # without user namespaces. STORAGE_DRIVER=vfs where overlay cannot be mounted (rootless
        # without fuse-overlayfs); buildah 1.28 ignores that variable, a storage.conf does not.
        export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"
        if [ -n "${STORAGE_DRIVER:-}" ] && [ -z "${CONTAINERS_STORAGE_CONF:-}" ]; then
            mkdir -p "$CACHE_ROOT"
            CONTAINERS_STORAGE_CONF=$CACHE_ROOT/storage-$STORAGE_DRIVER.conf
            printf '[storage]\ndriver = "%s"\n' "$STORAGE_DRIVER" >"$CONTAINERS_STORAGE_CONF.$$"
            mv "$CONTAINERS_STORAGE_CONF.$$" "$CONTAINERS_STORAGE_CONF"
            export CONTAINERS_STORAGE_CONF
        fi
    fi
    export ENGINE
}

# image_label IMAGE KEY: the value of a label of a local image, empty when absent.
image_label() {
    case "$ENGINE" in
        buildah) buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" \
                     "$1" 2>/dev/null ;;
        podman) podman image inspect --format "{{index .Labels \"$2\"}}" "$1" 2>/dev/null ;;
        docker) docker image inspect --format "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null ;;
    esac || true
}

# image_size IMAGE: bytes of a local image.
image_size() {
    case "$ENGINE" in
        buildah) buildah images --format '{{.Size}}' --filter "reference=$1" | head -n1 ;;
        *) "$ENGINE" image inspect --format '{{.Size}}' "$1" ;;
    esac
}

# import_rootfs TARBALL TAG LABEL=VALUE ENV...: a rootfs tarball as a local image.
import_rootfs() {
    local tarball=$1 tag=$2 label=$3; shift 3
    local changes=() env
    changes+=(--change "LABEL $label")
    for env in "$@"; do changes+=(--change "ENV $env"); done
    case "$ENGINE" in
        buildah)
            local ctr
            ctr=$(buildah from scratch)
            buildah add --quiet "$ctr" "$tarball" / >/dev/null
            buildah config --label "$label" "${@/#/--env=}" --cmd /bin/bash "$ctr"
            buildah commit --quiet --rm "$ctr" "$tag" >/dev/null ;;
        *) "$ENGINE" import "${changes[@]}" --change 'CMD ["/bin/bash"]' "$tarball" "$tag" \
               >/dev/null ;;
    esac
}
