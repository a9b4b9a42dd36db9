"""WaveGrad 2 sizes and schedule: one dataclass, saved as config.json in the model directory.

``paper()`` is the size of WaveGrad 2 (Chen et al. 2021) with DLPO's schedule; ``tiny()``
is a CPU-sized model that tests and the CPU example pre-train in seconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from rlaif.trainer.diffusion import NoiseSchedule
from rlaif.trainer.wavegrad2.frontend import PAUSE, START

PAD = "<pad>"
UNKNOWN = "<unk>"
SPECIAL_SYMBOLS = [PAD, UNKNOWN, START, PAUSE]


@dataclass
class WaveGrad2Config:
    """Every size of the model; ``symbols`` is its phoneme vocabulary (index = id)."""

    symbols: list[str] = field(default_factory=lambda: list(SPECIAL_SYMBOLS))
    sample_rate: int = 22050
    encoder_dim: int = 512
    encoder_convs: int = 3
    encoder_kernel: int = 5
    duration_dim: int = 256
    decoder_input_channels: int = 768
    upsample_factors: list[int] = field(default_factory=lambda: [5, 5, 3, 2, 2])
    upsample_channels: list[int] = field(default_factory=lambda: [512, 512, 256, 128, 128])
    downsample_channels: list[int] = field(default_factory=lambda: [32, 128, 128, 256])
    beta_start: float = 1e-6
    beta_end: float = 0.01
    schedule_steps: int = 1000
    segment_frames: int = 32
    """Frames per training window (WaveGrad 2 trains the decoder on random segments)."""

    def __post_init__(self) -> None:
        n = len(self.upsample_factors)
        if len(self.upsample_channels) != n:
            raise ValueError(f"upsample_channels has {len(self.upsample_channels)} entries, "
                             f"upsample_factors {n}: give one channel count per factor")
        if len(self.downsample_channels) != n - 1:
            raise ValueError(f"downsample_channels needs {n - 1} entries (one fewer than "
                             f"upsample_factors), got {len(self.downsample_channels)}")
        if self.symbols[:len(SPECIAL_SYMBOLS)] != SPECIAL_SYMBOLS:
            raise ValueError(f"symbols must start with {SPECIAL_SYMBOLS}")
        if any(v <= 0 for v in [*self.upsample_factors, *self.upsample_channels,
                                *self.downsample_channels, self.encoder_dim, self.sample_rate]):
            raise ValueError("sizes and factors must be positive")

    @property
    def hop_length(self) -> int:
        """Waveform samples per feature frame (the product of the upsampling factors)."""
        return math.prod(self.upsample_factors)

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(self.beta_start, self.beta_end, self.schedule_steps)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> WaveGrad2Config:
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(data) - known):
            raise ValueError(f"{source}: unknown WaveGrad 2 config field(s) {unknown}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: Path) -> WaveGrad2Config:
        """JSON or YAML; fields not given keep their (paper-sized) defaults."""
        import yaml

        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of WaveGrad 2 config fields")
        return cls.from_dict(data, str(path))


def paper() -> WaveGrad2Config:
    """WaveGrad 2 as in the paper (hop 300), with DLPO's 1000-step linear schedule."""
    return WaveGrad2Config()


def tiny() -> WaveGrad2Config:
    """About 70 thousand parameters at 16 kHz, hop 160: seconds per step on a CPU."""
    return WaveGrad2Config(
        sample_rate=16000, encoder_dim=32, encoder_convs=2, duration_dim=32,
        decoder_input_channels=32, upsample_factors=[5, 4, 4, 2],
        upsample_channels=[32, 24, 16, 8], downsample_channels=[8, 16, 24],
        beta_start=1e-4, beta_end=0.01, schedule_steps=1000, segment_frames=16)
