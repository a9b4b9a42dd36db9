"""prosody-lm: the CPU quickstart policy. A tiny Llama reads the target labels and the text
and writes a six-token prosody program that drives espeak-ng through SSML.

Prompt:     <bos> <labels> structure=.. emotion=.. speechRate=.. intonation=.. <text> c h a r s
            <controls>
Completion: rate=.. pitch=.. range=.. volume=.. pause=.. end=.. <eos>

Position ``t`` of the completion may only hold a value of slot ``t`` (then only <eos>), so
every sample is a valid program. ``pause`` is the silence inserted between phrases (at
commas, semicolons, colons and dashes: the "structure" dimension) and ``end`` replaces the
closing punctuation, which sets espeak-ng's closing intonation (statement, question,
exclamation). Rates are percentages of espeak-ng's 175 words per minute.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Self
from xml.sax.saxutils import escape

import numpy as np
import torch

from rlaif.api.labels import DIMENSIONS, LabelSchema
from rlaif.api.models import LoraSpec, PolicySpec
from rlaif.data import Prompt
from rlaif.files import build_once
from rlaif.trainer.audio import espeak_ssml
from rlaif.trainer.policies.base import TokenLMPolicy, TokenSlice

VOCAB_FILE = "prosody_vocab.json"
BUILTIN_NAME = "prosody-lm-v1"
BUILTIN_SEED = 20240607
MAX_TEXT_CHARS = 160

SPECIALS = ["<pad>", "<bos>", "<eos>", "<labels>", "<text>", "<controls>", "<unk>"]
SLOTS: dict[str, list[str]] = {
    "rate": ["50", "65", "80", "100", "120", "145", "175"],
    "pitch": ["-40", "-20", "0", "20", "40"],
    "range": ["25", "60", "100", "150", "200"],
    "volume": ["60", "80", "100", "120"],
    "pause": ["0", "150", "350", "600"],
    "end": ["statement", "question", "exclamation"],
}
END_MARK = {"statement": ".", "question": "?", "exclamation": "!"}
NEUTRAL = {"rate": "100", "pitch": "0", "range": "100", "volume": "100", "pause": "0",
           "end": "statement"}
PHRASE_BREAK = re.compile(r"\s*[,;:\u2013\u2014]\s+|\s+-\s+")


def default_vocabulary() -> list[str]:
    """Specials, one token per default label value (+ one 'other' per dimension), printable
    ASCII characters, and the control tokens."""
    schema = LabelSchema()
    labels = [f"{d}={v}" for d in DIMENSIONS for v in [*schema.values(d), "?"]]
    chars = [chr(i) for i in range(32, 127)]
    controls = [f"{slot}={v}" for slot, values in SLOTS.items() for v in values]
    return SPECIALS + labels + chars + controls


@dataclass(frozen=True)
class ProsodyProgram:
    """The decoded controls of one completion (missing slots are neutral)."""

    rate: str = "100"
    pitch: str = "0"
    range: str = "100"
    volume: str = "100"
    pause: str = "0"
    end: str = "statement"

    def ssml(self, text: str) -> str:
        """The SSML espeak-ng reads: phrases separated by breaks, closing mark replaced."""
        body = text.strip().rstrip(".?!… ")
        phrases = [p for p in PHRASE_BREAK.split(body) if p]
        brk = f' <break time="{self.pause}ms"/> ' if int(self.pause) > 0 else ", "
        spoken = brk.join(escape(p) for p in phrases) + END_MARK[self.end]
        pitch = f"{int(self.pitch):+d}%"
        return (f'<speak><prosody rate="{self.rate}%" pitch="{pitch}" range="{self.range}%" '
                f'volume="{self.volume}%">{spoken}</prosody></speak>')

    def __str__(self) -> str:
        return " ".join(f"{k}={getattr(self, k)}" for k in SLOTS)


class ProsodyLM(TokenLMPolicy):
    """The quickstart policy over espeak-ng (see the module docstring)."""

    render_in_threads = True  # espeak-ng renders in worker processes

    def __init__(self, model_dir: Path, finetune: str, lora: LoraSpec,
                 device: torch.device, dtype: torch.dtype,
                 gradient_checkpointing: bool = False) -> None:
        from transformers import AutoModelForCausalLM

        vocab_path = model_dir / VOCAB_FILE
        if not vocab_path.is_file():
            raise FileNotFoundError(f"spec.policy.model: {vocab_path} is missing "
                                    f"(not a prosody-lm model directory)")
        self.tokens: list[str] = json.loads(vocab_path.read_text())["tokens"]
        self.index = {t: i for i, t in enumerate(self.tokens)}
        # PreTrainedModel.to is @wraps(nn.Module.to): mypy does not bind its self to the model
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device)  # type: ignore[arg-type]
        self.pad_id, self.stop_id = self.index["<pad>"], self.index["<eos>"]
        super().__init__(model, finetune, lora, gradient_checkpointing)
        self._slice = self._program_slice()

    def _program_slice(self) -> TokenSlice:
        """Slot ``t``'s values at position ``t``, then only <eos>."""
        slots = [[self.index[f"{s}={v}"] for v in values] for s, values in SLOTS.items()]
        ids = [t for values in slots for t in values] + [self.stop_id]
        rows = torch.zeros(len(slots) + 1, len(ids), dtype=torch.bool)
        start = 0
        for r, values in enumerate(slots):
            rows[r, start:start + len(values)] = True
            start += len(values)
        rows[-1, -1] = True
        return TokenSlice.build(torch.tensor(ids), rows, cycle=False)

    @classmethod
    def from_spec(cls, spec: PolicySpec, model_dir: Path, codec_dir: Path | None,
                  device: torch.device, dtype: torch.dtype) -> Self:
        return cls(model_dir, spec.finetune, spec.lora, device, dtype,
                   spec.gradient_checkpointing)

    def encode_prompt(self, prompt: Prompt) -> torch.Tensor:
        unk = self.index["<unk>"]
        ids = [self.index["<bos>"], self.index["<labels>"]]
        for dim in DIMENSIONS:
            value = prompt.labels.get(dim, "")
            ids.append(self.index.get(f"{dim}={value}", self.index[f"{dim}=?"]))
        ids.append(self.index["<text>"])
        ids += [self.index.get(ch, unk) for ch in prompt.text[:MAX_TEXT_CHARS]]
        ids.append(self.index["<controls>"])
        return torch.tensor(ids, dtype=torch.long)

    def token_slice(self) -> TokenSlice:
        return self._slice

    def program(self, ids: list[int]) -> ProsodyProgram:
        values = dict(NEUTRAL)
        for tok in (self.tokens[i] for i in ids):
            slot, _, value = tok.partition("=")
            if slot in SLOTS and value in SLOTS[slot]:
                values[slot] = value
        return ProsodyProgram(**values)

    def render(self, ids: list[int], prompt: Prompt) -> np.ndarray:
        return espeak_ssml(self.program(ids).ssml(prompt.text))

    def describe(self, ids: list[int]) -> str:
        return str(self.program(ids))

    def save_pretrained(self, out: Path) -> None:
        super().save_pretrained(out)
        (out / VOCAB_FILE).write_text(json.dumps({"tokens": self.tokens}))

    def save_merged(self, out: Path) -> None:
        super().save_merged(out)
        (out / VOCAB_FILE).write_text(json.dumps({"tokens": self.tokens}))


def write_model_dir(out: Path, seed: int = BUILTIN_SEED) -> None:
    """A tiny randomly initialised Llama over the prosody vocabulary, deterministically seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens = default_vocabulary()
    index = {t: i for i, t in enumerate(tokens)}
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, tie_word_embeddings=False,
                         pad_token_id=index["<pad>"], bos_token_id=index["<bos>"],
                         eos_token_id=index["<eos>"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(str(out))
    (out / VOCAB_FILE).write_text(json.dumps({"tokens": tokens}))


def builtin_model_dir() -> Path:
    """``builtin:prosody-lm``: created once with a fixed seed, then reused."""
    return build_once(BUILTIN_NAME, VOCAB_FILE, write_model_dir)
