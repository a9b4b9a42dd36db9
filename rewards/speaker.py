"""Speaker similarity (RLAIF-SPA's SIM-O): WavLMForXVector embeddings of the sample and the
item's reference audio; score = (1 + cosine) / 2. Sample and reference clips of a whole
batch go through the model in one padded forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlaif.constants import SAMPLE_RATE
from rlaif.rewards.scoring import ScoreInput, ScoreResult


class SpeakerScorer:
    def __init__(self, model_dir: Path, device: str):
        self.model_dir = model_dir
        self.device = device

    def load(self) -> None:
        from transformers import AutoFeatureExtractor, Wav2Vec2FeatureExtractor, WavLMForXVector

        if (self.model_dir / "preprocessor_config.json").is_file():
            self.extractor = AutoFeatureExtractor.from_pretrained(self.model_dir)
        else:  # WavLM checkpoints expect normalised 16 kHz audio with an attention mask
            self.extractor = Wav2Vec2FeatureExtractor(sampling_rate=SAMPLE_RATE,
                                                      do_normalize=True,
                                                      return_attention_mask=True)
        # PreTrainedModel.to is @wraps(nn.Module.to): mypy does not bind its self to the model
        self.model = WavLMForXVector.from_pretrained(self.model_dir).to(self.device).eval()  # type: ignore[arg-type]

    def warm_up(self) -> None:
        t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
        tone = (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
        self.score_batch([ScoreInput("warm-up", tone, reference=tone)])

    def check(self, item: ScoreInput) -> str | None:
        if item.reference is None:
            return "reference.audio: required for speaker similarity"
        return None

    def score_batch(self, items: list[ScoreInput]) -> list[ScoreResult]:
        import torch

        clips = [i.audio for i in items] + [i.reference for i in items]
        inputs = self.extractor(clips, sampling_rate=SAMPLE_RATE, padding=True,
                                return_attention_mask=True, return_tensors="pt")
        with torch.inference_mode():
            emb = self.model(**inputs.to(self.device)).embeddings.float()
        emb = torch.nn.functional.normalize(emb, dim=-1)
        n = len(items)
        cosine = (emb[:n] * emb[n:]).sum(-1).cpu().numpy()
        return [ScoreResult.clipped((1 + float(c)) / 2, {"cosine": float(c)})
                for c in cosine]
