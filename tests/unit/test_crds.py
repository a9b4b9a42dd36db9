"""The CRDs are generated from the models, committed, valid, and agree with the examples."""

from __future__ import annotations

import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml

from rlaif.api import crd
from tests.conftest import EXAMPLES, REPO

FIX = "run `make crds` and commit manifests/crds and charts/rlaif-operator/crds"


@pytest.mark.parametrize("folder", ["manifests/crds", "charts/rlaif-operator/crds"])
def test_committed_crds_are_current(folder: str) -> None:
    for name, generated in crd.all_crds().items():
        path = REPO / folder / name
        assert path.exists(), f"{path} is missing: {FIX}"
        assert path.read_text() == crd.render(generated), f"{path} is stale: {FIX}"


def test_cli_prints_the_same_crds() -> None:
    out = subprocess.run([sys.executable, "-m", "rlaif.cli", "crd"], capture_output=True,
                         text=True, check=True).stdout
    assert list(yaml.safe_load_all(out)) == list(crd.all_crds().values())


@pytest.mark.parametrize("name", list(crd.all_crds()))
def test_crds_pass_kubernetes_schema(name: str) -> None:
    kubernetes_validate.validate(crd.all_crds()[name], "1.37", strict=True)


def test_crd_shape() -> None:
    job, server = crd.job_crd()["spec"], crd.server_crd()["spec"]
    assert job["names"]["shortNames"] == ["rj"] and server["names"]["shortNames"] == ["rs"]
    columns = [c["name"] for c in job["versions"][0]["additionalPrinterColumns"]]
    assert {"Phase", "Step", "Reward", "Age"} <= set(columns)
    scale = server["versions"][0]["subresources"]["scale"]
    assert scale["labelSelectorPath"] == ".status.selector"
    schema = job["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    grpo = schema["properties"]["grpo"]["properties"]
    assert grpo["learningRate"]["default"] == 5e-6 and grpo["groupSize"]["minimum"] == 2
    assert schema["properties"]["algorithm"]["enum"] == ["grpo", "dlpo"]
    assert "policy" in schema["required"] and "rewards" in schema["required"]
    assert "$ref" not in yaml.safe_dump(job)


def _openapi(kind: str) -> dict:
    """The CRD's schema as JSON Schema (nullable -> also null; unknown fields rejected)."""
    spec = {"RLAIFJob": crd.job_crd, "RewardServer": crd.server_crd}[kind]()["spec"]
    schema = spec["versions"][0]["schema"]["openAPIV3Schema"]

    def convert(node: dict) -> dict:
        node = dict(node)
        if node.pop("nullable", False):
            node["type"] = [node["type"], "null"] if "type" in node else None
        if node.pop("exclusiveMinimum", False):
            node["exclusiveMinimum"] = node.pop("minimum")
        if node.pop("exclusiveMaximum", False):
            node["exclusiveMaximum"] = node.pop("maximum")
        if "properties" in node:
            node["properties"] = {k: convert(v) for k, v in node["properties"].items()}
            if not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
        if isinstance(node.get("additionalProperties"), dict):
            node["additionalProperties"] = convert(node["additionalProperties"])
        if "items" in node:
            node["items"] = convert(node["items"])
        return node

    return convert(schema)


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_examples_validate_against_generated_crd_schema(example: str) -> None:
    for doc in yaml.safe_load_all((EXAMPLES / example).read_text()):
        jsonschema.validate(doc, _openapi(doc["kind"]))


def test_crd_schema_rejects_what_the_models_reject() -> None:
    doc = yaml.safe_load((EXAMPLES / "quickstart-cpu.yaml").read_text())
    doc["spec"]["grpo"]["groupSize"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, _openapi("RLAIFJob"))
