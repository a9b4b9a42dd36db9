# The two commands of the README; each bootstraps what it needs.
.PHONY: quickstart test lint crds manifests bootstrap images wheelhouse base-image

PY := .venv/bin/python

bootstrap:
	scripts/bootstrap.sh

quickstart: bootstrap
	.venv/bin/rlaif run examples/quickstart-cpu.yaml --out runs/quickstart

test: bootstrap
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

lint: bootstrap
	$(PY) -m ruff check .
	$(PY) -m mypy

# Render manifests/operator.yaml (the kustomize install) from the Helm chart.
manifests: bootstrap
	PATH=.tools/bin:$$PATH $(PY) -m rlaif.operator.install_manifests

# Regenerate the CRDs from rlaif/api/models.py into manifests/ and the chart.
crds: bootstrap
	.venv/bin/rlaif crd --out manifests/crds
	.venv/bin/rlaif crd --out charts/rlaif-operator/crds

# Container images (docs/operator.md, "Images"): docker, podman or buildah, whichever works.
# OFFLINE=1: debootstrap bases, the wheelhouse only, no network in the build, CPU torch.
TARGETS ?= operator trainer reward
images: bootstrap
	OFFLINE=$(OFFLINE) PYTHON=$(PY) scripts/images.sh $(TARGETS)

# The wheels of each image's lock (images/<target>.lock); LOCK=1 re-resolves the locks first.
wheelhouse: bootstrap
	$(PY) scripts/wheelhouse.py $(if $(LOCK),--lock) $(TARGETS)

# The offline bases: Debian bookworm by debootstrap, Python in /opt/venv (+ speech tools).
base-image: bootstrap
	scripts/base_image.sh python
	scripts/base_image.sh speech
