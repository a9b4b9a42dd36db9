"""codec-lm: a speech-token language model in the Llasa / CosyVoice style.

``AutoModelForCausalLM`` + its tokenizer from ``spec.policy.model`` and a neural codec from
``spec.policy.codec`` (transformers' DacModel). The prompt template puts the text (and the
labels, where the template asks for them) before the speech tokens; the LM then writes
speech tokens ``<|s_K|>`` until the stop token. Codes are interleaved frame by frame:
token ``K`` is code ``K % codebook_size`` of codebook ``K // codebook_size`` and position
``t`` holds codebook ``t % n_codebooks`` (one codebook, as Llasa's Xcodec2, is the special
case). Sampling is restricted to the valid codebook at each position, and the stop token
to frame boundaries, so every sample decodes. Audio is resampled to 16 kHz.

Optional ``rlaif_codec_lm.json`` in the model directory overrides the defaults below:
``{"prompt_template": "...{text}...{labels}...", "speech_token": "<|s_{}|>",
"stop_token": "<|SPEECH_GENERATION_END|>"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlaif.api.labels import DIMENSIONS
from rlaif.api.models import LoraSpec
from rlaif.audio import resample
from rlaif.data import Prompt
from rlaif.trainer.policies.base import SpeechLMPolicy

SETTINGS_FILE = "rlaif_codec_lm.json"
LLASA_TEMPLATE = ("<|start_header_id|>user<|end_header_id|>\n\nConvert the text to speech:"
                  "<|TEXT_UNDERSTANDING_START|>{text}<|TEXT_UNDERSTANDING_END|><|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n<|SPEECH_GENERATION_START|>")
TEMPLATE_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", "<|TEXT_UNDERSTANDING_START|>",
                   "<|TEXT_UNDERSTANDING_END|>", "<|eot_id|>", "<|SPEECH_GENERATION_START|>",
                   "<|SPEECH_GENERATION_END|>"]
SILENCE_SECONDS = 0.1
"""What a completion with no whole frame renders to (valid audio that scores badly)."""


@dataclass(frozen=True)
class CodecLMSettings:
    prompt_template: str = LLASA_TEMPLATE
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


def format_labels(labels: dict[str, str]) -> str:
    return ", ".join(f"{d}: {labels[d]}" for d in DIMENSIONS if d in labels)


class CodecLM(SpeechLMPolicy):
    """LoRA on a speech-token LM; the codec only decodes (frozen, never trained)."""

    def __init__(self, model_dir: Path, codec_dir: Path, finetune: str, lora: LoraSpec,
                 device: torch.device, dtype: torch.dtype) -> None:
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

        self.settings = CodecLMSettings.load(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        # PreTrainedModel.to is @wraps(nn.Module.to): mypy does not bind its self to the model
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device)  # type: ignore[arg-type]
        self.codec = AutoModel.from_pretrained(str(codec_dir)).to(device).eval()
        self.codec.requires_grad_(False)
        cfg = self.codec.config
        self.n_codebooks, self.codebook_size = int(cfg.n_codebooks), int(cfg.codebook_size)
        self.codec_rate = int(cfg.sampling_rate)
        names = [self.settings.speech_token.format(k)
                 for k in range(self.n_codebooks * self.codebook_size)]
        ids = self.tokenizer.convert_tokens_to_ids(names)
        assert isinstance(ids, list)  # a list of tokens converts to a list of ids
        if self.tokenizer.unk_token_id in ids or None in ids:
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
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        super().__init__(model, finetune, lora)

    def encode_prompt(self, prompt: Prompt) -> torch.Tensor:
        text = self.settings.prompt_template.format(text=prompt.text,
                                                    labels=format_labels(prompt.labels))
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def allowed_tokens(self, length: int) -> torch.Tensor:
        allowed = torch.zeros(length, self.vocab_size, dtype=torch.bool)
        per_book = self.speech_ids.view(self.n_codebooks, self.codebook_size)
        for t in range(length):
            allowed[t, per_book[t % self.n_codebooks]] = True
            if t % self.n_codebooks == 0:
                allowed[t, self.stop_id] = True
        return allowed

    def codes(self, ids: list[int]) -> torch.Tensor:
        """Speech tokens -> codec codes [1, n_codebooks, frames] (an incomplete frame dropped)."""
        flat = [self.code_of[t] % self.codebook_size for t in ids if t in self.code_of]
        frames = len(flat) // self.n_codebooks
        grid = torch.tensor(flat[:frames * self.n_codebooks], dtype=torch.long)
        return grid.view(frames, self.n_codebooks).T.unsqueeze(0)

    @torch.no_grad()
    def render(self, ids: list[int], prompt: Prompt) -> np.ndarray:
        codes = self.codes(ids)
        if codes.shape[-1] == 0:
            return np.zeros(int(16000 * SILENCE_SECONDS), dtype=np.float32)
        audio = self.codec.decode(audio_codes=codes.to(self.device)).audio_values
        wave = audio.reshape(-1).float().cpu().numpy()
        return resample(np.clip(wave, -1.0, 1.0), self.codec_rate)

    def describe(self, ids: list[int]) -> str:
        return f"{len(ids) // self.n_codebooks} frames"


def write_tiny_model_dirs(model_dir: Path, codec_dir: Path, seed: int = 0,
                          n_codebooks: int = 2, codebook_size: int = 64) -> None:
    """A tiny random Llama + char tokenizer + DAC, for tests and benchmarks (not for quality)."""
    from tokenizers import Tokenizer, models
    from transformers import (
        DacConfig,
        DacModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    chars = ["<unk>", "<pad>"] + [chr(i) for i in range(32, 127)] + ["\n"]
    core = Tokenizer(models.BPE({c: i for i, c in enumerate(chars)}, [], unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>",
                                        pad_token="<pad>")
    tokenizer.add_special_tokens({"additional_special_tokens": TEMPLATE_TOKENS})
    settings = CodecLMSettings()
    tokenizer.add_tokens([settings.speech_token.format(k)
                          for k in range(n_codebooks * codebook_size)], special_tokens=True)
    tokenizer.save_pretrained(str(model_dir))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            max_position_embeddings=512, tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id))
        codec = DacModel(DacConfig(encoder_hidden_size=8, downsampling_ratios=[2, 4, 4],
                                   decoder_hidden_size=32, n_codebooks=n_codebooks,
                                   codebook_size=codebook_size, codebook_dim=4,
                                   sampling_rate=16000))
    lm.save_pretrained(str(model_dir))
    codec.save_pretrained(str(codec_dir))
