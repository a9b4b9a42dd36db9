"""The RLAIF-SPA label-alignment judge: an audio LLM (Qwen2-Audio) classifies each sample in
the prosody dimensions, and the score is the share of target labels it confirms.

The judge sees the same lists the labeller used (one LabelSchema; the paper's judge had
different lists, so some targets could never match) and the text the speaker was reading.
The prompt shows the answer's form with placeholders, never an example filled with values
(an example answer pulls a model toward the values in it). Only the configured dimensions
are asked about and scored: ``structure``, a discourse role, cannot be heard and may be
dropped. This module holds the prompt, the parser and the scoring shared by both judge
backends, and the local transformers backend (loaded once, one ``generate`` per batch);
the served backend is rlaif.rewards.judge_openai.

Answers are parsed leniently: JSON first, then "Name: value" lines. An answer with nothing
usable is an item error naming the reason and quoting the answer, never a score of 0 (which
would punish the sample for the judge's failure) and never an exception. Audio past 30 s is
cut by the Whisper feature extractor.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from rlaif.api.labels import DIMENSIONS, LabelSchema
from rlaif.constants import SAMPLE_RATE
from rlaif.rewards.scoring import ScoreInput, ScoreResult

log = logging.getLogger(__name__)

MAX_NEW_TOKENS = 96
MAX_TEXT_CHARS = 1000  # of the read text quoted in the prompt
PLACEHOLDER = "<one of the values above>"


def judge_prompt(schema: LabelSchema, dimensions: tuple[str, ...] = DIMENSIONS,
                 text: str = "") -> str:
    """The question asked with one clip: the text read, the allowed values of each kept
    dimension, and the answer's form with placeholders (no value is suggested)."""
    reading = f"The speaker was reading: {json.dumps(text[:MAX_TEXT_CHARS])}\n" if text else ""
    form = json.dumps(dict.fromkeys(dimensions, PLACEHOLDER))
    return ("Listen to the speech and classify how it is spoken.\n"
            f"{reading}"
            "For each key choose exactly one value, copied exactly from its list:\n"
            f"{schema.describe(dimensions)}\n"
            f"Answer with only this JSON object, each placeholder replaced: {form}")


def answer_schema(schema: LabelSchema, dimensions: tuple[str, ...] = DIMENSIONS) -> dict[str, Any]:
    """JSON Schema of a valid answer: one enum of the schema's values per kept dimension."""
    return {"type": "object",
            "properties": {dim: {"type": "string", "enum": schema.values(dim)}
                           for dim in dimensions},
            "required": list(dimensions), "additionalProperties": False}


def parse_judgement(answer: str, schema: LabelSchema, dimensions: tuple[str, ...] = DIMENSIONS,
                    ) -> tuple[dict[str, str | None], str | None]:
    """Predicted value per kept dimension (None: absent or off-list) and why nothing usable
    was found (None when at least one kept dimension has a value)."""
    labels, errors = schema.parse_answer(answer)
    predicted = {dim: labels.get(dim) for dim in dimensions}
    if not any(predicted.values()):
        kept = [e for e in errors if e.split(":", 1)[0] in dimensions] or errors
        return predicted, f"no label values found: {'; '.join(kept)}"
    return predicted, None


def alignment(targets: dict[str, str], predicted: dict[str, str | None]) -> dict[str, float]:
    """1 per target dimension the judge confirms (case-insensitive), else 0."""
    return {dim: float((predicted.get(dim) or "").lower() == value.lower())
            for dim, value in targets.items()}


def labels_problem(item: ScoreInput, dimensions: tuple[str, ...]) -> str | None:
    """Why ``item`` cannot be judged: it has no target label in any kept dimension."""
    if not any(dim in item.labels for dim in dimensions):
        return f"labels: the judge needs target labels for at least one of {', '.join(dimensions)}"
    return None


def score_answer(item: ScoreInput, answer: str, schema: LabelSchema,
                 dimensions: tuple[str, ...]) -> ScoreResult:
    """The share of the item's kept target labels the answer confirms, or an item error
    when the answer has no usable label."""
    predicted, problem = parse_judgement(answer, schema, dimensions)
    if problem:
        log.info("judge answer for %r unusable: %s", item.id, problem)
        return ScoreResult.failed(f"judge answer unusable ({problem}): {answer[:200]!r}")
    targets = {dim: value for dim, value in item.labels.items() if dim in dimensions}
    matched = alignment(targets, predicted)
    return ScoreResult(score=sum(matched.values()) / len(matched), details={
        "answer": answer[:500], "predicted": predicted, "matched": matched})


def warm_up_item(schema: LabelSchema, dimensions: tuple[str, ...]) -> ScoreInput:
    """A one-second tone with one target label: enough for one real request."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return ScoreInput("warm-up", tone, labels={dimensions[0]: schema.values(dimensions[0])[0]})


class LlmJudge:
    """A local Qwen2-Audio directory under transformers, one batched ``generate`` per batch."""

    def __init__(self, model_dir: Path, device: str, schema: LabelSchema,
                 dimensions: tuple[str, ...] = DIMENSIONS):
        self.model_dir = model_dir
        self.device = device
        self.schema = schema
        self.dimensions = dimensions

    def load(self) -> None:
        import torch
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        self.processor = AutoProcessor.from_pretrained(self.model_dir)
        self.processor.tokenizer.padding_side = "left"  # batched generation
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        # PreTrainedModel.to is @wraps(nn.Module.to): mypy does not bind its self to the model
        self.model = Qwen2AudioForConditionalGeneration.from_pretrained(
            self.model_dir, dtype=dtype).to(self.device).eval()  # type: ignore[arg-type]

    def warm_up(self) -> None:
        self.score_batch([warm_up_item(self.schema, self.dimensions)])

    def check(self, item: ScoreInput) -> str | None:
        return labels_problem(item, self.dimensions)

    def score_batch(self, items: list[ScoreInput]) -> list[ScoreResult]:
        answers = self.generate(items)
        return [score_answer(item, answer, self.schema, self.dimensions)
                for item, answer in zip(items, answers, strict=True)]

    def chat_prompt(self, text: str) -> str:
        """The model's chat template around the audio and the question for ``text``."""
        conversation = [{"role": "user", "content": [
            {"type": "audio", "audio_url": "sample.wav"},
            {"type": "text", "text": judge_prompt(self.schema, self.dimensions, text)}]}]
        return str(self.processor.apply_chat_template(conversation, add_generation_prompt=True,
                                                      tokenize=False))

    def generate(self, items: list[ScoreInput]) -> list[str]:
        import torch

        inputs = self.processor(text=[self.chat_prompt(i.text) for i in items],
                                audio=[i.audio for i in items], sampling_rate=SAMPLE_RATE,
                                return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new, skip_special_tokens=True)
