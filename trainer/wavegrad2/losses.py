"""WaveGrad 2's training loss: L1 noise prediction on random windows at a continuous noise
level, plus MSE on log(1 + duration). Pre-training minimises it; DLPO keeps it low."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlaif.trainer.diffusion import sample_noise_levels
from rlaif.trainer.wavegrad2.corpus import Example
from rlaif.trainer.wavegrad2.model import WaveGrad2


@dataclass
class DiffusionLoss:
    noise: torch.Tensor
    duration: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.noise + self.duration


def pad_ids(sequences: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, N) ids (pad id 0) and their float mask."""
    ids = torch.nn.utils.rnn.pad_sequence(list(sequences), batch_first=True)
    lengths = torch.tensor([len(s) for s in sequences])
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).float()
    return ids, mask


def diffusion_loss(model: WaveGrad2, batch: Sequence[Example],
                   generator: torch.Generator | None = None) -> DiffusionLoss:
    """The loss on ground-truth pairs (one random window of ``segment_frames`` each)."""
    config, device = model.config, next(model.parameters()).device
    hop, seg = config.hop_length, config.segment_frames
    ids, mask = pad_ids([e.ids for e in batch])
    durations = torch.nn.utils.rnn.pad_sequence([e.durations for e in batch], batch_first=True)
    ids, mask, durations = ids.to(device), mask.to(device), durations.to(device)
    features, frames, log_durations = model.encode(ids, mask, durations)
    duration = ((log_durations - torch.log1p(durations)) ** 2 * mask).sum() / mask.sum()

    windows, audio, audio_mask = [], [], []
    for b, example in enumerate(batch):
        n = int(frames[b])
        start = int(torch.randint(0, max(n - seg, 0) + 1, (1,), generator=generator))
        feat = features[b, start:start + seg]
        windows.append(F.pad(feat, (0, 0, 0, seg - feat.shape[0])))
        wav = example.audio[start * hop:(start + seg) * hop].to(device)
        audio.append(F.pad(wav, (0, seg * hop - len(wav))))
        audio_mask.append(F.pad(torch.ones_like(wav), (0, seg * hop - len(wav))))
    x0, sample_mask = torch.stack(audio), torch.stack(audio_mask)
    level = sample_noise_levels(config.schedule, len(batch), generator).to(device)
    eps = torch.randn(x0.shape, generator=generator).to(device)
    y = level[:, None] * x0 + (1 - level[:, None] ** 2).sqrt() * eps
    predicted = model.decoder(y, torch.stack(windows), level)
    noise = ((predicted - eps).abs() * sample_mask).sum() / sample_mask.sum()
    return DiffusionLoss(noise, duration)
