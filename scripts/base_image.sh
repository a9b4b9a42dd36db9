#!/usr/bin/env bash
# Offline base images for machines that reach no container registry: Debian bookworm made by
# debootstrap (minbase) from the Debian archive, Python 3.11 from Debian in /opt/venv on PATH.
#   scripts/base_image.sh python   -> localhost/rlaif-base:bookworm-python  (operator image)
#   scripts/base_image.sh speech   -> localhost/rlaif-base:bookworm-speech  (+ espeak-ng, sox,
#                                     libsndfile1: CPU trainer and reward images)
# The rootfs tarball is cached under ~/.cache/rlaif-operator/images, keyed by this script, the
# flavour and the mirror, and written atomically; a hit needs neither network nor debootstrap.
# debootstrap needs root (sudo is used when not root). DEBIAN_MIRROR overrides the mirror.
# Progress goes to stderr; stdout is the tag alone.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/engine.sh

flavour=${1:-python}
case "$flavour" in
    python) packages=python3,python3-venv,ca-certificates ;;
    speech) packages=python3,python3-venv,ca-certificates,espeak-ng,sox,libsndfile1 ;;
    *) echo "usage: $0 python|speech (got '$flavour')" >&2; exit 2 ;;
esac
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
tag=localhost/rlaif-base:$suite-$flavour
key=$(printf '%s\n' "$suite" "$mirror" "$packages" | cat - scripts/base_image.sh | sha256sum | cut -c1-16)
tarball=$CACHE_ROOT/base-$suite-$flavour-$key.tar
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo

if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || {
        echo "installing debootstrap" >&2
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq debootstrap >/dev/null
    }
    mkdir -p "$CACHE_ROOT/debs"
    root=$(mktemp -d "$CACHE_ROOT/.rootfs-XXXXXX")
    trap '$sudo rm -rf "$root" "$root.log" "$tarball.tmp"' EXIT
    echo "debootstrap $suite ($flavour) from $mirror" >&2
    $sudo debootstrap --variant=minbase --include="$packages" --cache-dir="$CACHE_ROOT/debs" \
        "$suite" "$root" "$mirror" >"$root.log" 2>&1 || { cat "$root.log" >&2; exit 1; }
    $sudo chroot "$root" python3 -m venv /opt/venv
    # No package caches, indexes, manuals or translations in the image.
    $sudo rm -rf "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
        "$root"/var/lib/apt/lists/* "$root"/usr/share/man "$root"/usr/share/info \
        "$root"/usr/share/locale "$root"/var/log/*.log
    $sudo tar --numeric-owner --xattrs -C "$root" -cf "$tarball.tmp" .
    $sudo chown "$(id -u):$(id -g)" "$tarball.tmp"
    mv "$tarball.tmp" "$tarball"
    # Older bases of this flavour (other keys) are obsolete.
    find "$CACHE_ROOT" -maxdepth 1 -name "base-$suite-$flavour-*.tar" ! -name "${tarball##*/}" \
        -delete
fi

detect_engine
if [ "$(image_label "$tag" org.rlaif.base.key)" != "$key" ]; then
    echo "importing $tag into $ENGINE" >&2
    import_rootfs "$tarball" "$tag" "org.rlaif.base.key=$key" \
        PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8
fi
echo "$tag"
