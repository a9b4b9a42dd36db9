# The two commands of the README; each bootstraps what it needs.
.PHONY: quickstart test lint crds manifests bootstrap

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
