#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: espeak-ng and sox, buildah and debootstrap (the
# image smoke test builds the operator image), chromium and chromedriver (the rlaif eval report
# test opens report.html in a headless browser), a .venv with the pinned CPU build of torch,
# the project with every extra, and the helm binary used by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for pair in espeak-ng sox buildah debootstrap chromium chromedriver:chromium-driver; do
    bin=${pair%%:*} package=${pair#*:}  # command[:Debian package], when they differ
    command -v "$bin" >/dev/null || missing+=("$package")
done
if ((${#missing[@]})); then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    echo "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.installed
want=$(sha256sum <pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing Python packages into .venv (first run takes a few minutes)"
    .venv/bin/pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
    # The CPU build; a looser pin would pull gigabytes of CUDA wheels.
    .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' torch==2.13.0
    echo "$want" > "$stamp"
fi
.venv/bin/python scripts/fetch_helm.py
