"""Shared fixtures. Tools installed by scripts/bootstrap.sh (.venv/bin, .tools/bin) go on PATH."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

os.environ["PATH"] = os.pathsep.join(
    [str(REPO / ".tools" / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]])


@pytest.fixture
def repo() -> Path:
    return REPO
