"""A WaveGrad 2 model directory: ``config.json`` + ``model.safetensors``.

Written atomically (a temporary sibling directory, fsynced, then renamed into place) so a
crash never leaves a half-written model where a trainer will look for one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rlaif.files import replace_dir
from rlaif.trainer.wavegrad2.config import WaveGrad2Config
from rlaif.trainer.wavegrad2.model import WaveGrad2

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_model(model: WaveGrad2, out: Path,
               state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` (or ``state``, e.g. EMA weights, with its config) to ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tensors = {k: v.detach().to("cpu").contiguous()
               for k, v in (state if state is not None else model.state_dict()).items()}
    (tmp / CONFIG_FILE).write_text(model.config.to_json())
    save_file(tensors, str(tmp / WEIGHTS_FILE))
    replace_dir(tmp, out)
    return out


def load_config(path: Path) -> WaveGrad2Config:
    file = Path(path) / CONFIG_FILE
    try:
        data = json.loads(file.read_text())
    except OSError as exc:
        raise FileNotFoundError(f"{file}: not a WaveGrad 2 model directory "
                                f"({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: invalid JSON ({exc.msg})") from None
    return WaveGrad2Config.from_dict(data, str(file))


def load_model(path: Path, device: str | torch.device = "cpu") -> WaveGrad2:
    """The model saved in ``path``; every weight must be present and of the right shape."""
    config = load_config(path)
    model = WaveGrad2(config)
    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing weights")
    missing, unexpected = model.load_state_dict(load_file(str(file)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{file}: weights do not match config.json "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device)
