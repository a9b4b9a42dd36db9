"""``rlaif pretrain wavegrad2``: supervised training of a base WaveGrad 2 on an LJSpeech-layout
folder, minimising the noise-prediction loss plus the duration loss."""

from __future__ import annotations

import argparse
import logging
import random
from dataclasses import replace
from pathlib import Path

import torch

from rlaif.trainer.wavegrad2 import config as presets
from rlaif.trainer.wavegrad2.config import SPECIAL_SYMBOLS, WaveGrad2Config
from rlaif.trainer.wavegrad2.corpus import corpus_phonemes, read_examples, vocabulary
from rlaif.trainer.wavegrad2.losses import diffusion_loss
from rlaif.trainer.wavegrad2.model import WaveGrad2
from rlaif.trainer.wavegrad2.modeldir import save_model

log = logging.getLogger(__name__)
PRESETS = {"paper": presets.paper, "tiny": presets.tiny}


def config_for(data: Path, config: WaveGrad2Config) -> WaveGrad2Config:
    """``config`` with the corpus's phoneme vocabulary unless it lists symbols itself."""
    if config.symbols != SPECIAL_SYMBOLS:
        return config
    return replace(config, symbols=vocabulary(corpus_phonemes(data)))


def pretrain(data: Path, out: Path, config: WaveGrad2Config, steps: int,
             batch_size: int = 8, learning_rate: float = 1e-3, seed: int = 0,
             log_every: int = 50) -> tuple[WaveGrad2, list[float]]:
    """Train from scratch, save to ``out``; returns the model and the loss of every step."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    config = config_for(data, config)
    examples = read_examples(data, config)
    model = WaveGrad2(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    losses = []
    for step in range(1, steps + 1):
        batch = rng.sample(examples, min(batch_size, len(examples)))
        loss = diffusion_loss(model, batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.total.detach()))
        if step % log_every == 0 or step == steps:
            log.info("step %d/%d: noise loss %.4f, duration loss %.4f", step, steps,
                     float(loss.noise.detach()), float(loss.duration.detach()))
    save_model(model, out)
    return model, losses


def load_config_arg(value: str | None) -> WaveGrad2Config:
    """``--config``: a preset name (paper, tiny) or a JSON/YAML file of config fields."""
    if value is None:
        return presets.paper()
    if value in PRESETS:
        return PRESETS[value]()
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"--config: {value!r} is neither a preset ({', '.join(PRESETS)}) "
                         f"nor a file")
    return WaveGrad2Config.from_file(path)


def pretrain_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        config = load_config_arg(args.config)
        if args.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {args.steps}")
        _, losses = pretrain(Path(args.data), Path(args.out), config, args.steps)
    except (ValueError, FileNotFoundError) as exc:
        print(f"rlaif pretrain wavegrad2: {exc}")
        return 1
    print(f"wrote {args.out} (loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} "
          f"steps)")
    return 0
