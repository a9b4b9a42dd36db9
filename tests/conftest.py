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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny convolutions: intra-op threads only spin on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
