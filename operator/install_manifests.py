"""manifests/operator.yaml, the kustomize base's operator install, rendered from the Helm
chart with its default values, so the chart and ``kubectl apply -k manifests/`` never drift.

Run ``python -m rlaif.operator.install_manifests`` (``make manifests``) after changing the
chart; a test fails while the committed file differs from a fresh rendering.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from rlaif import constants as c

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "rlaif-operator"
OUTPUT = REPO / "manifests" / "operator.yaml"
RELEASE = "rlaif-operator"
NAMESPACE = "rlaif-system"
HEADER = ("# Generated from charts/rlaif-operator (default values) by\n"
          "# `python -m rlaif.operator.install_manifests` (make manifests). Do not edit.\n")


def _plain(doc: dict) -> dict:
    """Drop Helm's bookkeeping labels: kustomize, not Helm, manages these objects."""
    for meta in (doc.get("metadata") or {}, ((doc.get("spec") or {}).get("template") or {}).get(
            "metadata") or {}):
        labels = meta.get("labels") or {}
        labels.pop("helm.sh/chart", None)
        if c.LABEL_MANAGED_BY in labels:
            labels[c.LABEL_MANAGED_BY] = "kustomize"
    return doc


def render(helm: str | None = None) -> str:
    """The chart's templates (no CRDs: kustomize lists manifests/crds itself) as one file."""
    helm = helm or shutil.which("helm") or str(REPO / ".tools" / "bin" / "helm")
    with tempfile.TemporaryDirectory() as home:  # no user config or cache leaks in
        env = {**os.environ, "HELM_CONFIG_HOME": home, "HELM_CACHE_HOME": home,
               "HELM_DATA_HOME": home}
        out = subprocess.run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                              "--skip-crds"], capture_output=True, text=True, env=env,
                             check=True).stdout
    docs = [_plain(d) for d in yaml.safe_load_all(out) if d]
    return HEADER + yaml.safe_dump_all(docs, sort_keys=False, width=100)


def main() -> int:
    text = render()
    tmp = OUTPUT.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    tmp.replace(OUTPUT)
    print(f"wrote {OUTPUT.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
