"""WaveGrad 2 (Chen et al. 2021): phonemes -> encoder -> durations + Gaussian upsampling ->
WaveGrad decoder that predicts the noise in a waveform, conditioned on the upsampled
features and the continuous noise level sqrt(alpha_bar).

Encoder: Tacotron 2's (embedding, convolutions, bidirectional LSTM). Resampling: Non-
Attentive Tacotron's duration and range predictors with Gaussian upsampling. Decoder:
WaveGrad's UBlocks (upsampling the features) modulated by FiLM layers computed from the
noisy waveform through DBlocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rlaif.trainer.wavegrad2.config import WaveGrad2Config

LRELU_SLOPE = 0.2
NOISE_LEVEL_SCALE = 5000.0
"""WaveGrad scales the noise level before its sinusoidal embedding."""


class Encoder(nn.Module):
    """Phoneme ids -> hidden states (B, N, D)."""

    def __init__(self, config: WaveGrad2Config):
        super().__init__()
        d, k = config.encoder_dim, config.encoder_kernel
        self.embedding = nn.Embedding(len(config.symbols), d, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(d, d, k, padding=k // 2)
                                   for _ in range(config.encoder_convs))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(config.encoder_convs))
        self.lstm = nn.LSTM(d, d // 2, batch_first=True, bidirectional=True)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = norm(F.relu(conv(x.transpose(1, 2)).transpose(1, 2))) * mask[..., None]
        return self.lstm(x)[0] * mask[..., None]


class DurationPredictor(nn.Module):
    """Hidden states -> (log(1 + frames), Gaussian range) per phoneme."""

    def __init__(self, config: WaveGrad2Config):
        super().__init__()
        self.lstm = nn.LSTM(config.encoder_dim, config.duration_dim // 2, batch_first=True,
                            bidirectional=True)
        self.log_duration = nn.Linear(config.duration_dim, 1)
        self.range_lstm = nn.LSTM(config.encoder_dim + 1, config.duration_dim // 2,
                                  batch_first=True, bidirectional=True)
        self.range = nn.Linear(config.duration_dim, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.log_duration(self.lstm(h)[0]).squeeze(-1)

    def ranges(self, h: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
        """Std of each phoneme's Gaussian, in frames (NAT's range predictor)."""
        x = torch.cat([h, durations[..., None]], dim=-1)
        return F.softplus(self.range(self.range_lstm(x)[0]).squeeze(-1)) + 1e-3


def gaussian_upsample(h: torch.Tensor, durations: torch.Tensor, ranges: torch.Tensor,
                      mask: torch.Tensor, frames: int) -> torch.Tensor:
    """Non-Attentive Tacotron eq. 4-5: frame t is a mixture of phoneme states, weighted by
    N(t + 0.5; centre_i, range_i) normalised over phonemes. Returns (B, frames, D)."""
    centres = torch.cumsum(durations, dim=1) - durations / 2
    t = torch.arange(frames, device=h.device, dtype=h.dtype)[None, :, None] + 0.5
    logits = -0.5 * ((t - centres[:, None, :]) / ranges[:, None, :]) ** 2
    logits = logits - torch.log(ranges[:, None, :])
    logits = logits.masked_fill(~mask[:, None, :].bool(), float("-inf"))
    return torch.softmax(logits, dim=-1) @ h


def noise_level_embedding(noise_level: torch.Tensor, dim: int) -> torch.Tensor:
    """WaveGrad's sinusoidal embedding of the continuous noise level, (B, dim, 1)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=noise_level.device) / half)
    angles = NOISE_LEVEL_SCALE * noise_level[:, None] * freqs[None, :]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(emb, (0, dim - 2 * half))[..., None]


class FiLM(nn.Module):
    """Waveform features + noise level -> (scale, shift) for one UBlock."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.channels_in = channels_in
        self.input = nn.Conv1d(channels_in, channels_in, 3, padding=1)
        self.scale = nn.Conv1d(channels_in, channels_out, 3, padding=1)
        self.shift = nn.Conv1d(channels_in, channels_out, 3, padding=1)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.leaky_relu(self.input(x), LRELU_SLOPE)
        x = x + noise_level_embedding(noise_level, self.channels_in)
        return self.scale(x), self.shift(x)


def dilated_convs(channels_in: int, channels_out: int,
                  dilations: tuple[int, ...]) -> nn.ModuleList:
    """Kernel-3 convolutions with growing dilation (WaveGrad's receptive field)."""
    return nn.ModuleList(
        nn.Conv1d(channels_in if i == 0 else channels_out, channels_out, 3, padding=d,
                  dilation=d) for i, d in enumerate(dilations))


class DBlock(nn.Module):
    """Downsamples the noisy waveform's features by ``factor``."""

    def __init__(self, channels_in: int, channels_out: int, factor: int):
        super().__init__()
        self.factor = factor
        self.residual = nn.Conv1d(channels_in, channels_out, 1)
        self.convs = dilated_convs(channels_in, channels_out, (1, 2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool1d(x, self.factor)
        residual = self.residual(x)
        for conv in self.convs:
            x = conv(F.leaky_relu(x, LRELU_SLOPE))
        return x + residual


class UBlock(nn.Module):
    """Upsamples the features by ``factor``, modulated twice by FiLM (WaveGrad fig. 3)."""

    def __init__(self, channels_in: int, channels_out: int, factor: int):
        super().__init__()
        self.factor = factor
        self.residual = nn.Conv1d(channels_in, channels_out, 1)
        self.convs = dilated_convs(channels_in, channels_out, (1, 2, 4, 8))

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
                ) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=self.factor, mode="nearest")
        h = self.convs[0](F.interpolate(F.leaky_relu(x, LRELU_SLOPE), scale_factor=self.factor,
                                        mode="nearest"))
        h = self.convs[1](F.leaky_relu(scale * h + shift, LRELU_SLOPE))
        x = self.residual(up) + h
        h = self.convs[2](F.leaky_relu(scale * x + shift, LRELU_SLOPE))
        h = self.convs[3](F.leaky_relu(scale * h + shift, LRELU_SLOPE))
        return x + h


class Decoder(nn.Module):
    """Predicts the noise in ``y`` (B, L) from features (B, frames, D) and the noise level."""

    def __init__(self, config: WaveGrad2Config):
        super().__init__()
        factors, up_ch = config.upsample_factors, config.upsample_channels
        down_ch = config.downsample_channels
        self.input = nn.Conv1d(config.encoder_dim, config.decoder_input_channels, 3, padding=1)
        ins = [config.decoder_input_channels, *up_ch[:-1]]
        self.ublocks = nn.ModuleList(UBlock(i, o, f) for i, o, f in zip(ins, up_ch, factors,
                                                                        strict=True))
        self.waveform = nn.Conv1d(1, down_ch[0], 5, padding=2)
        # DBlocks go fine -> coarse with the reversed factors; FiLM i feeds UBlock n-1-i.
        down_factors = list(reversed(factors))[:-1]
        down_ins = [down_ch[0], *down_ch[:-1]]
        self.dblocks = nn.ModuleList(DBlock(i, o, f) for i, o, f in zip(down_ins, down_ch,
                                                                        down_factors,
                                                                        strict=True))
        self.films = nn.ModuleList(FiLM(c, o) for c, o in zip(down_ch[:1] + down_ch,
                                                              reversed(up_ch), strict=True))
        self.output = nn.Conv1d(up_ch[-1], 1, 3, padding=1)

    def forward(self, y: torch.Tensor, features: torch.Tensor,
                noise_level: torch.Tensor) -> torch.Tensor:
        h = self.waveform(y[:, None, :])
        modulation = [self.films[0](h, noise_level)]
        for dblock, film in zip(self.dblocks, self.films[1:], strict=True):
            h = dblock(h)
            modulation.append(film(h, noise_level))
        x = self.input(features.transpose(1, 2))
        for ublock, (scale, shift) in zip(self.ublocks, reversed(modulation), strict=True):
            x = ublock(x, scale, shift)
        return self.output(x)[:, 0, :]


class WaveGrad2(nn.Module):
    """The whole model; ``encode`` runs once per text, ``decoder`` once per denoising step."""

    def __init__(self, config: WaveGrad2Config):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.durations = DurationPredictor(config)
        self.decoder = Decoder(config)

    def encode(self, ids: torch.Tensor, mask: torch.Tensor,
               durations: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features (B, frames, D), frames per text (B,), predicted log(1 + duration) (B, N).

        With ``durations`` (frames per phoneme, ground truth) the features follow them;
        without, the predicted durations are rounded to whole frames.
        """
        h = self.encoder(ids, mask)
        log_durations = self.durations(h)
        if durations is None:
            durations = (torch.expm1(log_durations).clamp(min=0).round() * mask).detach()
        durations = durations.to(h.dtype)
        frames = durations.sum(dim=1).round().long().clamp(min=1)
        ranges = self.durations.ranges(h, durations)
        features = gaussian_upsample(h, durations, ranges, mask, int(frames.max()))
        return features, frames, log_durations
