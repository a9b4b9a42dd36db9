"""csm: Sesame CSM (``CsmForConditionalGeneration``), a multi-codebook speech LM.

One step writes one Mimi frame of C codes: the Llama backbone reads the sequence so far and
predicts codebook 0; the depth decoder, started from the backbone's last hidden state,
predicts codebooks 1..C-1 one after another. A completion is therefore ``[G, T, C]`` codes
and its log-probability per frame is the sum over the frame's C codes, so GRPO's ratio,
clipping and KL work per frame (the ``[G, T]`` log-probs the loss already takes). Codes are
drawn from the codec's ``codebook_size`` entries of each head only (CSM-1B's heads have 3
more entries that Mimi cannot decode). The generation stops, as transformers' CSM does,
at a frame whose codes (the last excepted) are all ``codebook_eos_token_id``.

The prompt is CSM's: ``<|begin_of_text|>[0]{text}<|end_of_text|>`` embedded with the text
embeddings. A voice prompt (``prompt.reference``) becomes a context segment before it, as
Sesame's generator builds one: its transcript the same way, then its audio encoded by the
model's own Mimi, then an end-of-audio frame. Rendering decodes the generated frames with
that Mimi (24 kHz) and resamples to 16 kHz.

LoRA goes on the backbone's target modules (Mimi and the depth decoder have layers of the
same names and stay frozen); gradients still reach the backbone through the depth
decoder's input. The reference policy is the network with adapters disabled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F

from rlaif.api.models import LoraSpec, PolicySpec
from rlaif.audio import resample
from rlaif.constants import SAMPLE_RATE
from rlaif.data import Prompt, VoiceReference
from rlaif.trainer.policies.base import (
    Completions,
    SpeechLMPolicy,
    entropy_of,
    top_p_sample,
)
from rlaif.trainer.rendering import render_codes

SPEAKER = 0
"""CSM's speaker id for the generated turn and for a voice prompt's context segment."""
BACKBONE = "backbone_model"


class CSM(SpeechLMPolicy):
    """Sesame CSM with LoRA on the backbone; its Mimi encodes voice prompts and decodes."""

    def __init__(self, model_dir: Path, finetune: str, lora: LoraSpec, device: torch.device,
                 dtype: torch.dtype, gradient_checkpointing: bool = False) -> None:
        from transformers import AutoTokenizer, CsmForConditionalGeneration

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        # PreTrainedModel.to is @wraps(nn.Module.to): mypy does not bind its self to the model
        model = CsmForConditionalGeneration.from_pretrained(str(model_dir), dtype=dtype).to(device)  # type: ignore[arg-type]
        config = model.config
        self.codec = model.codec_model.eval().requires_grad_(False)
        self.n_codebooks = int(config.num_codebooks)
        self.codebook_size = int(self.codec.config.codebook_size)
        if self.codebook_size > config.vocab_size:
            raise ValueError(f"spec.policy.model: {model_dir} has {config.vocab_size} entries "
                             f"per codebook, fewer than its codec's {self.codebook_size} codes")
        self.codec_rate = int(self.codec.config.sampling_rate)
        self.stop_id = int(config.codebook_eos_token_id)
        self.pad_id = int(config.codebook_pad_token_id)
        self.text_ids = [self._token_id("<|begin_of_text|>"), self._token_id("<|end_of_text|>")]
        self._voice_codes: dict[Path, torch.Tensor] = {}
        super().__init__(model, finetune, lora, gradient_checkpointing, lora_scope=BACKBONE)

    def _token_id(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if not isinstance(tid, int) or tid == self.tokenizer.unk_token_id:
            raise ValueError(f"spec.policy.model: the tokenizer has no {token} token")
        return tid

    @classmethod
    def from_spec(cls, spec: PolicySpec, model_dir: Path, codec_dir: Path | None,
                  device: torch.device, dtype: torch.dtype) -> Self:
        if codec_dir is not None:
            raise ValueError("spec.policy.codec: not used by csm (Mimi is inside the model)")
        return cls(model_dir, spec.finetune, spec.lora, device, dtype,
                   spec.gradient_checkpointing)

    @staticmethod
    def _csm(model: torch.nn.Module) -> Any:
        """The CsmForConditionalGeneration inside ``model`` (a PeftModel or itself)."""
        get_base = getattr(model, "get_base_model", None)
        return get_base() if callable(get_base) else model

    # ------------------------------------------------------------------ prompt

    def _text(self, text: str) -> torch.Tensor:
        ids = self.tokenizer.encode(f"[{SPEAKER}]{text}", add_special_tokens=False)
        return torch.tensor([self.text_ids[0], *ids, self.text_ids[1]], dtype=torch.long)

    def prompt_embeddings(self, csm: Any, prompt: Prompt) -> torch.Tensor:
        """[L, H]: the voice prompt's context segment (if any), then the text to speak."""
        device = self.device
        parts = []
        if prompt.reference is not None:
            eos = torch.full((1, self.n_codebooks), self.stop_id, dtype=torch.long)
            frames = torch.cat([self.voice_codes(prompt.reference), eos]).to(device)
            parts += [csm.embed_text_tokens(self._text(prompt.reference.text).to(device)),
                      csm.backbone_model.embed_tokens(frames[None])[0]]
        parts.append(csm.embed_text_tokens(self._text(prompt.text).to(device)))
        return torch.cat(parts)

    @torch.no_grad()
    def voice_codes(self, reference: VoiceReference) -> torch.Tensor:
        """The reference recording's Mimi codes [frames, C] (encoded once)."""
        if reference.audio not in self._voice_codes:
            wave = resample(reference.waveform(), SAMPLE_RATE, self.codec_rate)
            audio = torch.from_numpy(wave).to(self.device)[None, None]
            codes = self.codec.encode(audio).audio_codes[0, :self.n_codebooks]
            self._voice_codes[reference.audio] = codes.T.long().cpu()
        return self._voice_codes[reference.audio]

    # ------------------------------------------------------------------ frames

    def _code_logprobs(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """log-softmax over the decodable codes (the first ``codebook_size`` entries)."""
        return F.log_softmax(logits[..., :self.codebook_size].float() / temperature, dim=-1)

    def _is_stop(self, frames: torch.Tensor) -> torch.Tensor:
        """transformers' CSM rule: codes but the last all equal ``codebook_eos_token_id``."""
        return (frames[..., :-1] == self.stop_id).all(-1)

    def _sample_frame(self, csm: Any, hidden: torch.Tensor, temperature: float, top_p: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One frame per row from backbone states [N, H]: codes [N, C], log-prob and entropy
        [N], each summed over the codebooks (depth decoder KV-cached)."""
        logp = self._code_logprobs(csm.lm_head(hidden), temperature)
        code = top_p_sample(logp, top_p)
        codes, lp = [code], logp.gather(-1, code[:, None])[:, 0]
        entropy = entropy_of(logp)
        start = torch.stack([torch.zeros_like(code), code], dim=1)  # 0: backbone state slot
        out = csm.depth_decoder(input_ids=start, backbone_last_hidden_state=hidden,
                                use_cache=True)
        for book in range(1, self.n_codebooks):
            logp = self._code_logprobs(out.logits[:, -1], temperature)
            code = top_p_sample(logp, top_p)
            codes.append(code)
            lp = lp + logp.gather(-1, code[:, None])[:, 0]
            entropy = entropy + entropy_of(logp)
            if book < self.n_codebooks - 1:
                out = csm.depth_decoder(input_ids=code[:, None], cache=out.cache,
                                        use_cache=True, logits_to_keep=1)
        return torch.stack(codes, dim=1), lp, entropy

    @torch.no_grad()
    def sample(self, prompt: Prompt, n: int, max_new_tokens: int, temperature: float = 1.0,
               top_p: float = 1.0) -> Completions:
        """``n`` completions of up to ``max_new_tokens`` frames (backbone KV-cached)."""
        was_training = self.model.training
        self.model.eval()
        csm = self._csm(self.model)
        embeds = self.prompt_embeddings(csm, prompt)
        out = csm.backbone_model(inputs_embeds=embeds.expand(n, -1, -1), use_cache=True)
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        frames, lps, masks, entropies = [], [], [], []
        for _ in range(max_new_tokens):
            frame, lp, entropy = self._sample_frame(csm, out.last_hidden_state[:, -1],
                                                    temperature, top_p)
            live = ~done
            frames.append(torch.where(live[:, None], frame, torch.full_like(frame, self.pad_id)))
            lps.append(torch.where(live, lp, torch.zeros_like(lp)))
            masks.append(live.float())
            entropies.append(entropy[live])
            done = done | self._is_stop(frame)
            if bool(done.all()):
                break
            out = csm.backbone_model(inputs_embeds=csm.backbone_model.embed_tokens(frame[:, None]),
                                     cache=out.cache, use_cache=True)
        self.model.train(was_training)
        return Completions(torch.stack(frames, 1), torch.stack(masks, 1), torch.stack(lps, 1),
                           float(torch.cat(entropies).mean()))

    def logprobs(self, prompt: Prompt, ids: torch.Tensor, temperature: float = 1.0,
                 model: torch.nn.Module | None = None) -> torch.Tensor:
        """[G, T] per-frame log-probs of frames ``ids`` [G, T, C]: one backbone pass over
        prompt + frames, one depth-decoder pass over all G*T frames; padding gets 0."""
        csm = self._csm(model if model is not None else self.model)
        ids = ids.to(self.device)
        g, t, c = ids.shape
        embeds = self.prompt_embeddings(csm, prompt)
        inputs = torch.cat([embeds.expand(g, -1, -1), csm.backbone_model.embed_tokens(ids)], 1)
        hidden = csm.backbone_model(inputs_embeds=inputs).last_hidden_state
        hidden = hidden[:, embeds.shape[0] - 1:-1]  # the state each frame was drawn from
        real = (ids < self.codebook_size).all(-1)
        codes = torch.where(real[..., None], ids, torch.zeros_like(ids))
        first = self._code_logprobs(csm.lm_head(hidden), temperature)
        lp = first.gather(-1, codes[..., :1])[..., 0]
        start = F.pad(codes[..., :-1], (1, 0)).reshape(g * t, c)  # 0: backbone state slot
        rest = csm.depth_decoder(input_ids=start,
                                 backbone_last_hidden_state=hidden.reshape(g * t, -1)).logits
        rest = self._code_logprobs(rest, temperature).view(g, t, c - 1, -1)
        lp = lp + rest.gather(-1, codes[..., 1:, None])[..., 0].sum(-1)
        return torch.where(real, lp, torch.zeros_like(lp))

    # ------------------------------------------------------------------ audio

    def completion_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Each row's frames (flattened, C codes each) without padding and the stop frame."""
        rows = []
        for frames, m in zip(ids, mask, strict=True):
            kept = frames[m.bool()]
            if len(kept) and bool(self._is_stop(kept[-1])):
                kept = kept[:-1]
            rows.append(kept.flatten().tolist())
        return rows

    def render(self, ids: list[int], prompt: Prompt) -> np.ndarray:
        return self.render_group([ids], prompt)[0]

    def render_group(self, completions: list[list[int]], prompt: Prompt) -> list[np.ndarray]:
        """The group's frames decoded by Mimi in one batch, right-padded (trainer/rendering.py)."""
        return render_codes(self.codec, [torch.tensor(ids, dtype=torch.long)
                                         .view(-1, self.n_codebooks).T for ids in completions])

    def describe(self, ids: list[int]) -> str:
        return f"{len(ids) // self.n_codebooks} frames"
