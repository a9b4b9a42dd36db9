"""Rendering a rollout's completions to audio, a group's samples at once.

espeak-ng renders in worker processes (trainer/audio.py): the Python thread only waits on
a pipe, so several renders run at once on a pool of threads (one per core) while the main
thread goes on (queueing the next group; with groups sampled one by one, sampling it).
Samples are still handed over in rollout order, each group as soon as all of it is
rendered, so its scoring starts while later groups render. A policy whose renderer is
Python/torch work (codec decoders) renders inline, a group per call of its
``render_group``: threads would only contend for the GIL and the intra-op threads, while
one batched decode gives a GPU a few large kernels instead of many small ones.

Codec decoders (``render_codes``) decode a group's code grids in as few ``codec.decode``
calls as give each sample exactly the audio it gets decoded alone. Mimi's decoder is causal
throughout (left-padded convolutions, transposed convolutions trimmed on the right, a causal
sliding-window transformer), so the grids are right-padded to the longest and each output
cut to its own frames: one call per group. DAC's convolutions are centred and X-codec2's
decoder attends both ways and normalises over time (GroupNorm, a centred ISTFT), so padding
would change every sample's end: only grids of equal frame counts share a call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from rlaif.audio import resample
from rlaif.data import Prompt
from rlaif.trainer.algorithm import AudioSink
from rlaif.trainer.policies.base import silence

if TYPE_CHECKING:
    from rlaif.trainer.policies.base import SpeechLMPolicy

Render = Callable[[list[int], Prompt], np.ndarray]
RenderGroup = Callable[[list[list[int]], Prompt], list[np.ndarray]]


class RenderQueue:
    """Renders groups of completions, in threads when ``threaded`` (one ``render`` per
    sample), else inline (one ``render_group`` per group; default: ``render`` per sample);
    ``audio`` receives the waves in order (and ``on_audio`` is called for each), at the
    latest when the queue closes."""

    def __init__(self, render: Render, threaded: bool, audio: list[np.ndarray],
                 on_audio: AudioSink | None = None, render_group: RenderGroup | None = None):
        self.render, self.audio, self.on_audio = render, audio, on_audio
        self.render_group = render_group
        self.pool = ThreadPoolExecutor(os.cpu_count() or 1, "render") if threaded else None
        self.pending: list[Future[np.ndarray]] = []

    @classmethod
    def of(cls, policy: SpeechLMPolicy, audio: list[np.ndarray],
           on_audio: AudioSink | None = None) -> RenderQueue:
        """The queue for ``policy``'s renderer: threads or its group renders."""
        return cls(policy.render, policy.render_in_threads, audio, on_audio,
                   policy.render_group)

    def add(self, completions: list[list[int]], prompt: Prompt) -> None:
        """Queue one group; hand over the groups queued before it once they are rendered."""
        if self.pool is None:
            waves = (self.render_group(completions, prompt) if self.render_group is not None
                     else [self.render(tokens, prompt) for tokens in completions])
            if len(waves) != len(completions):
                raise RuntimeError(f"render_group returned {len(waves)} waves for "
                                   f"{len(completions)} completions")
            for wave in waves:
                self._deliver(wave)
            return
        earlier, self.pending = self.pending, [self.pool.submit(self.render, tokens, prompt)
                                               for tokens in completions]
        for future in earlier:
            self._deliver(future.result())

    def _deliver(self, wave: np.ndarray) -> None:
        if self.on_audio is not None:
            self.on_audio(len(self.audio), wave)
        self.audio.append(wave)

    def __enter__(self) -> RenderQueue:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.pool is None:
            return
        try:
            if kind is None:
                for future in self.pending:
                    self._deliver(future.result())
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------- codecs


def pads_exactly(config: Any) -> bool:
    """Whether a codec's decoder is causal throughout, so right-padding a sample's codes
    leaves its audio as decoded alone (Mimi with causal convolutions; not DAC, X-codec2)."""
    return getattr(config, "model_type", None) == "mimi" and bool(config.use_causal_conv)


def batches(frames: dict[int, int], padded: bool) -> list[list[int]]:
    """The grids (index -> frame count) that share one decode: all when ``padded``, else
    those of equal frame counts."""
    if padded:
        return [list(frames)] if frames else []
    same: dict[int, list[int]] = {}
    for i, n in frames.items():
        same.setdefault(n, []).append(i)
    return list(same.values())


@torch.no_grad()
def render_codes(codec: Any, grids: list[torch.Tensor],
                 prefix: torch.Tensor | None = None) -> list[np.ndarray]:
    """Code grids [C, frames] -> 16 kHz float32 audio each, decoded in batches (see above).

    A grid with no frame renders to ``silence()``. ``prefix`` [C, P] (a voice prompt's
    codes) is decoded before each grid and its share of the audio cut off (Llasa's cloning).
    """
    waves = [silence() for _ in grids]
    if not grids:
        return waves
    prefix = grids[0][:, :0] if prefix is None else prefix
    wholes = [torch.cat([prefix, g], dim=-1) for g in grids]
    frames = {i: w.shape[-1] for i, (g, w) in enumerate(zip(grids, wholes, strict=True))
              if g.shape[-1]}
    device = next(codec.parameters()).device
    rate = int(codec.config.sampling_rate)
    for batch in batches(frames, pads_exactly(codec.config)):
        longest = max(frames[i] for i in batch)
        codes = torch.stack([F.pad(wholes[i], (0, longest - frames[i])) for i in batch])
        out = codec.decode(audio_codes=codes.to(device)).audio_values
        for i, wave in zip(batch, out.reshape(len(batch), -1).float().cpu(), strict=True):
            end = wave.shape[0] * frames[i] // longest  # a whole number of samples per frame
            cut = end * prefix.shape[-1] // frames[i]  # Llasa: drop the voice part
            waves[i] = resample(np.clip(wave[cut:end].numpy(), -1.0, 1.0), rate)
    return waves
