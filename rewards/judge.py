"""The RLAIF-SPA label-alignment judge: an audio LLM (Qwen2-Audio) classifies each sample in
the four prosody dimensions, and the score is the share of target labels it confirms.

The judge sees the same lists the labeller used (one LabelSchema; the paper's judge had
different lists, so some targets could never match). It is loaded once and generates for
a whole batch at a time (the paper reloaded the model for every clip). Answers are parsed
leniently: JSON first, then "Name: value" lines. An answer with nothing usable is an item
error naming the reason and quoting the answer, never a score of 0 (which would punish the
sample for the judge's failure) and never an exception. Audio past 30 s is cut by the
Whisper feature extractor.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from rlaif.api.labels import DIMENSIONS, LabelSchema
from rlaif.constants import SAMPLE_RATE
from rlaif.rewards.scoring import ScoreInput, ScoreResult

log = logging.getLogger(__name__)

MAX_NEW_TOKENS = 96


def judge_prompt(schema: LabelSchema) -> str:
    """The question asked with each clip: the schema's lists and a JSON answer form."""
    example = json.dumps({dim: schema.values(dim)[0] for dim in DIMENSIONS})
    return ("Listen to the speech and classify how it is spoken. Choose exactly one value "
            f"for each key:\n{schema.describe()}\nAnswer with JSON only, like {example}")


def parse_judgement(answer: str, schema: LabelSchema) -> tuple[dict[str, str | None], str | None]:
    """Predicted value per dimension (None: absent or off-list) and why nothing was usable."""
    labels, errors = schema.parse_answer(answer)
    if not labels:
        return dict.fromkeys(DIMENSIONS), f"no label values found: {'; '.join(errors)}"
    return {dim: labels.get(dim) for dim in DIMENSIONS}, None


def alignment(targets: dict[str, str], predicted: dict[str, str | None]) -> dict[str, float]:
    """1 per target dimension the judge confirms (case-insensitive), else 0."""
    return {dim: float((predicted.get(dim) or "").lower() == value.lower())
            for dim, value in targets.items()}


class LlmJudge:
    def __init__(self, model_dir: Path, device: str, schema: LabelSchema):
        self.model_dir = model_dir
        self.device = device
        self.schema = schema

    def load(self) -> None:
        import torch
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        self.processor = AutoProcessor.from_pretrained(self.model_dir)
        self.processor.tokenizer.padding_side = "left"  # batched generation
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        # PreTrainedModel.to is @wraps(nn.Module.to): mypy does not bind its self to the model
        self.model = Qwen2AudioForConditionalGeneration.from_pretrained(
            self.model_dir, dtype=dtype).to(self.device).eval()  # type: ignore[arg-type]
        conversation = [{"role": "user", "content": [
            {"type": "audio", "audio_url": "sample.wav"},
            {"type": "text", "text": judge_prompt(self.schema)}]}]
        self.prompt = self.processor.apply_chat_template(conversation, add_generation_prompt=True,
                                                         tokenize=False)

    def warm_up(self) -> None:
        t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
        tone = (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
        self.score_batch([ScoreInput("warm-up", tone, labels={"emotion": self.schema.emotion[0]})])

    def check(self, item: ScoreInput) -> str | None:
        if not item.labels:
            return f"labels: the judge needs target labels ({', '.join(DIMENSIONS)})"
        return None

    def score_batch(self, items: list[ScoreInput]) -> list[ScoreResult]:
        answers = self.generate([i.audio for i in items])
        return [self.judge(item, answer) for item, answer in zip(items, answers, strict=True)]

    def judge(self, item: ScoreInput, answer: str) -> ScoreResult:
        """The alignment score, or an item error when the answer has no usable label."""
        predicted, problem = parse_judgement(answer, self.schema)
        if problem:
            log.info("judge answer for %r unusable: %s", item.id, problem)
            return ScoreResult.failed(f"judge answer unusable ({problem}): {answer[:200]!r}")
        matched = alignment(item.labels, predicted)
        return ScoreResult(score=sum(matched.values()) / len(matched), details={
            "answer": answer[:500], "predicted": predicted, "matched": matched})

    def generate(self, clips: list[np.ndarray]) -> list[str]:
        import torch

        inputs = self.processor(text=[self.prompt] * len(clips), audio=clips,
                                sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new, skip_special_tokens=True)
