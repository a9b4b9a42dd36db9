"""codec-lm: a speech-token language model as Llasa publishes it (Llama + X-codec2).

``AutoModelForCausalLM`` + its tokenizer from ``spec.policy.model`` and a transformers codec
from ``spec.policy.codec``: ``Xcodec2Model`` (Llasa; one FSQ codebook of
prod(quantization_levels) = 65,536 codes) or an RVQ codec (``DacModel``, ``MimiModel``:
n_codebooks x codebook_size codes). The tokenizer holds one token per code, ``<|s_K|>``.

The prompt is Llasa's, built with the tokenizer's own chat template (so ``<|begin_of_text|>``
and the headers are the model's): user "Convert the text to speech:
<|TEXT_UNDERSTANDING_START|>{text}<|TEXT_UNDERSTANDING_END|>", then the assistant turn opened
with ``<|SPEECH_GENERATION_START|>`` and continued (``continue_final_message``); the LM writes
speech tokens until ``<|SPEECH_GENERATION_END|>``. ``labelInstruction`` puts RLAIF-SPA's
four target labels in the user turn. A voice prompt (``prompt.reference``) follows Llasa's
cloning recipe: its transcript goes before the text, its audio is encoded with the codec
and its speech tokens open the assistant turn; the rendered sample is the decoded whole
minus the reference's part.

RVQ codes are interleaved frame by frame: token ``K`` is code ``K % codebook_size`` of
codebook ``K // codebook_size`` and position ``t`` holds codebook ``t % n_codebooks``.
Sampling is restricted to the valid codebook at each position, and the stop token to frame
boundaries, so every sample decodes. Audio is resampled to 16 kHz.

Optional ``rlaif_codec_lm.json`` in the model directory overrides the Llasa defaults below.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from rlaif.api.labels import DIMENSIONS
from rlaif.api.models import LoraSpec, PolicySpec
from rlaif.audio import resample
from rlaif.constants import SAMPLE_RATE
from rlaif.data import Prompt, VoiceReference
from rlaif.trainer.policies.base import TokenLMPolicy, TokenSlice
from rlaif.trainer.rendering import render_codes

SETTINGS_FILE = "rlaif_codec_lm.json"
LLASA_USER = ("Convert the text to speech:<|TEXT_UNDERSTANDING_START|>{text}"
              "<|TEXT_UNDERSTANDING_END|>")
LABEL_INSTRUCTION = ("Speak with this structure: {structure}, emotion: {emotion}, "
                     "speech rate: {speechRate}, intonation: {intonation}. ")
"""RLAIF-SPA's instruction built from the four labels, put before Llasa's request."""
TEMPLATE_TOKENS = ["<|TEXT_UNDERSTANDING_START|>", "<|TEXT_UNDERSTANDING_END|>",
                   "<|SPEECH_GENERATION_START|>", "<|SPEECH_GENERATION_END|>"]


@dataclass(frozen=True)
class CodecLMSettings:
    user_message: str = LLASA_USER
    label_instruction: str = LABEL_INSTRUCTION
    assistant_prefix: str = "<|SPEECH_GENERATION_START|>"
    speech_token: str = "<|s_{}|>"
    stop_token: str = "<|SPEECH_GENERATION_END|>"

    @classmethod
    def load(cls, model_dir: Path) -> CodecLMSettings:
        path = model_dir / SETTINGS_FILE
        if not path.is_file():
            return cls()
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: {exc}") from None


def codec_layout(config: Any) -> tuple[int, int]:
    """(n_codebooks, codebook_size) from a codec's config: FSQ (X-codec2's
    ``quantization_levels``: one codebook of their product) or RVQ (``codebook_size`` x
    ``n_codebooks`` / ``num_quantizers``)."""
    levels = getattr(config, "quantization_levels", None)
    if levels:
        return 1, int(np.prod(levels))
    size = getattr(config, "codebook_size", None)
    books = getattr(config, "n_codebooks", None) or getattr(config, "num_quantizers", None)
    if size and books:
        return int(books), int(size)
    raise ValueError(f"spec.policy.codec: {type(config).__name__} has neither "
                     f"quantization_levels (FSQ) nor codebook_size with n_codebooks or "
                     f"num_quantizers (RVQ)")


def format_labels(labels: dict[str, str], template: str) -> str:
    return template.format(**{d: labels.get(d, "") for d in DIMENSIONS})


class CodecLM(TokenLMPolicy):
    """LoRA on a speech-token LM; the codec encodes voice prompts and decodes (frozen)."""

    def __init__(self, model_dir: Path, codec_dir: Path, finetune: str, lora: LoraSpec,
                 device: torch.device, dtype: torch.dtype, label_instruction: bool = False,
                 gradient_checkpointing: bool = False) -> None:
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

        self.settings = CodecLMSettings.load(model_dir)
        self.label_instruction = label_instruction
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        if not self.tokenizer.chat_template:
            raise ValueError(f"spec.policy.model: the tokenizer in {model_dir} has no chat "
                             f"template (Llasa's prompt is built with it)")
        # PreTrainedModel.to is @wraps(nn.Module.to): mypy does not bind its self to the model
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device)  # type: ignore[arg-type]
        self.codec = AutoModel.from_pretrained(str(codec_dir)).to(device).eval()
        self.codec.requires_grad_(False)
        self.n_codebooks, self.codebook_size = codec_layout(self.codec.config)
        self.codec_rate = int(self.codec.config.sampling_rate)
        names = [self.settings.speech_token.format(k)
                 for k in range(self.n_codebooks * self.codebook_size)]
        ids = self.tokenizer.convert_tokens_to_ids(names)
        assert isinstance(ids, list)  # a list of tokens converts to a list of ids
        if None in ids or (self.tokenizer.unk_token_id is not None
                           and self.tokenizer.unk_token_id in ids):
            raise ValueError(f"spec.policy.model: tokenizer in {model_dir} lacks speech tokens "
                             f"{names[0]}..{names[-1]} for a codec with {self.n_codebooks} x "
                             f"{self.codebook_size} codes")
        self.speech_ids = torch.tensor(ids, dtype=torch.long)
        self.code_of = {tid: k for k, tid in enumerate(ids)}
        stop_id = self.tokenizer.convert_tokens_to_ids(self.settings.stop_token)
        assert not isinstance(stop_id, list)  # one token converts to one id
        self.stop_id = int(stop_id)
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                          else self.stop_id)
        self._slice = self._codebook_slice()
        self._voice_codes: dict[Path, torch.Tensor] = {}
        super().__init__(model, finetune, lora, gradient_checkpointing)

    @classmethod
    def from_spec(cls, spec: PolicySpec, model_dir: Path, codec_dir: Path | None,
                  device: torch.device, dtype: torch.dtype) -> Self:
        if codec_dir is None:
            raise ValueError("spec.policy.codec: required for codec-lm")
        return cls(model_dir, codec_dir, spec.finetune, spec.lora, device, dtype,
                   spec.label_instruction, spec.gradient_checkpointing)

    # ------------------------------------------------------------------ prompt

    def encode_prompt(self, prompt: Prompt) -> torch.Tensor:
        text = prompt.text
        voice = ""
        if prompt.reference is not None:
            text = f"{prompt.reference.text} {text}".strip()
            voice = "".join(self.settings.speech_token.format(self.code_token(k, t))
                            for t, k in enumerate(self.voice_codes(prompt.reference).T.flatten()
                                                  .tolist()))
        user = self.settings.user_message.format(text=text)
        if self.label_instruction:
            user = format_labels(prompt.labels, self.settings.label_instruction) + user
        chat = [{"role": "user", "content": user},
                {"role": "assistant", "content": self.settings.assistant_prefix + voice}]
        ids = self.tokenizer.apply_chat_template(chat, tokenize=True,
                                                 continue_final_message=True,
                                                 return_dict=False)
        return torch.tensor(ids, dtype=torch.long).flatten()

    def code_token(self, code: int, position: int) -> int:
        """The speech-token number of ``code`` at interleaved ``position``."""
        return (position % self.n_codebooks) * self.codebook_size + code

    @torch.no_grad()
    def voice_codes(self, reference: VoiceReference) -> torch.Tensor:
        """The reference recording's codes [n_codebooks, frames] (encoded once)."""
        if reference.audio not in self._voice_codes:
            wave = resample(reference.waveform(), SAMPLE_RATE, self.codec_rate)
            self._voice_codes[reference.audio] = self._encode(wave).cpu()
        return self._voice_codes[reference.audio]

    def _encode(self, wave: np.ndarray) -> torch.Tensor:
        if getattr(self.codec.config, "quantization_levels", None):
            return xcodec2_encode(self.codec, wave)
        audio = torch.from_numpy(wave).to(self.device)[None, None]
        codes = self.codec.encode(audio).audio_codes
        return codes.reshape(-1, self.n_codebooks, codes.shape[-1])[0].long()

    # ------------------------------------------------------------------ completion

    def token_slice(self) -> TokenSlice:
        return self._slice

    def _codebook_slice(self) -> TokenSlice:
        """Codebook ``t % n`` at position ``t``; the stop token at frame boundaries."""
        n, size = self.n_codebooks, self.codebook_size
        book = torch.arange(n * size) // size
        rows = torch.cat([book.unsqueeze(0) == torch.arange(n).unsqueeze(1),
                          (torch.arange(n) == 0).unsqueeze(1)], dim=1)
        ids = torch.cat([self.speech_ids, torch.tensor([self.stop_id])])
        return TokenSlice.build(ids, rows, cycle=True)

    def codes(self, ids: list[int]) -> torch.Tensor:
        """Speech tokens -> codec codes [1, n_codebooks, frames] (an incomplete frame dropped)."""
        flat = [self.code_of[t] % self.codebook_size for t in ids if t in self.code_of]
        frames = len(flat) // self.n_codebooks
        grid = torch.tensor(flat[:frames * self.n_codebooks], dtype=torch.long)
        return grid.view(frames, self.n_codebooks).T.unsqueeze(0)

    def render(self, ids: list[int], prompt: Prompt) -> np.ndarray:
        return self.render_group([ids], prompt)[0]

    def render_group(self, completions: list[list[int]], prompt: Prompt) -> list[np.ndarray]:
        """The group's codes decoded in batches (trainer/rendering.py), each after the voice
        prompt's codes, whose part of the audio is cut off."""
        prefix = self.voice_codes(prompt.reference) if prompt.reference else None
        return render_codes(self.codec, [self.codes(ids)[0] for ids in completions], prefix)

    def describe(self, ids: list[int]) -> str:
        return f"{len(ids) // self.n_codebooks} frames"


@torch.no_grad()
def xcodec2_encode(codec: Any, wave: np.ndarray) -> torch.Tensor:
    """X-codec2 codes [1, frames] of a waveform at the codec's rate.

    Semantic features as X-codec2's own ``encode_code`` makes them (w2v-BERT 2.0's
    numpy filterbank, ``SeamlessM4TFeatureExtractor``, on the audio padded by half a hop
    each side), so no torchaudio is needed; the acoustic input is padded to whole hops.
    """
    from transformers import SeamlessM4TFeatureExtractor

    hop = int(codec.config.hop_length)
    padded = np.pad(wave, (0, (-len(wave)) % hop))
    features = SeamlessM4TFeatureExtractor()(np.pad(padded, (hop // 2, hop // 2)),
                                             sampling_rate=int(codec.config.sampling_rate),
                                             return_tensors="pt")["input_features"]
    device = next(codec.parameters()).device
    out = codec.encode(input_values=torch.from_numpy(padded).to(device)[None, None],
                       input_features=features.to(device))
    return out.audio_codes[0].long()
