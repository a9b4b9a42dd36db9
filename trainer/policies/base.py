"""What GRPO needs from an autoregressive speech policy, and the sampling both policies share.

A policy turns a prompt into token ids, samples completions token by token (optionally
restricted to the tokens valid at each position, e.g. only speech tokens), scores given
completions under the current or the reference network, and renders a completion to
16 kHz audio. The log-probs are those of the distribution actually sampled from
(temperature and the position's allowed tokens applied, top-p not), so the audio that is
scored comes from exactly the tokens that are trained, with their prompt as context.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rlaif.api.models import LoraSpec
from rlaif.data import Prompt


@dataclass
class Completions:
    """G sampled completions of one prompt (right-padded with the pad id)."""

    ids: torch.Tensor
    """[G, T] token ids."""
    mask: torch.Tensor
    """[G, T] 1.0 on generated tokens (the stop token included), 0.0 on padding."""
    logprobs: torch.Tensor
    """[G, T] log-probs under the sampling policy (0 on padding)."""
    entropy: float
    """Mean per-token entropy of the sampling distribution."""


def top_p_sample(logprobs: torch.Tensor, top_p: float) -> torch.Tensor:
    """One token per row from ``exp(logprobs)`` restricted to the smallest set of mass >= top_p."""
    probs = logprobs.exp()
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(dim=-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p, 1)
        return order.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1).squeeze(-1)


class SpeechLMPolicy(ABC):
    """A causal LM (with LoRA adapters unless fine-tuned fully) that speaks through a renderer."""

    model: torch.nn.Module
    pad_id: int
    stop_id: int

    def __init__(self, model: torch.nn.Module, finetune: str, lora: LoraSpec) -> None:
        self.finetune = finetune
        self.reference: torch.nn.Module | None = None
        if finetune == "lora":
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                target_modules=list(lora.target_modules), bias="none")
            model = get_peft_model(model, config)
        self.model = model

    # ------------------------------------------------------------------ per policy

    @abstractmethod
    def encode_prompt(self, prompt: Prompt) -> torch.Tensor:
        """The prompt's token ids [L] (text, and labels when the model reads them)."""

    @abstractmethod
    def allowed_tokens(self, length: int) -> torch.Tensor | None:
        """Bool [length, V]: tokens valid at each completion position; None = all."""

    @abstractmethod
    def render(self, ids: list[int], prompt: Prompt) -> np.ndarray:
        """A completion's tokens (up to, without, the stop token) -> 16 kHz float32 audio."""

    def describe(self, ids: list[int]) -> str:
        """A short human-readable form of a completion, for logs and sample names."""
        return f"{len(ids)} tokens"

    # ------------------------------------------------------------------ shared

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def enable_reference(self) -> None:
        """Full fine-tuning has no adapters to switch off: keep a frozen copy as reference."""
        if self.finetune == "full" and self.reference is None:
            import copy

            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)

    @contextlib.contextmanager
    def reference_model(self) -> Iterator[torch.nn.Module]:
        """The reference policy: the same network with LoRA disabled (no second copy)."""
        if self.finetune == "lora":
            with self.model.disable_adapter():  # type: ignore[operator]
                yield self.model
        else:
            if self.reference is None:
                raise RuntimeError("call enable_reference() before using the reference policy")
            yield self.reference

    def _masked_logprobs(self, logits: torch.Tensor, allowed: torch.Tensor | None,
                         temperature: float) -> torch.Tensor:
        scores = logits.float() / temperature
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        return F.log_softmax(scores, dim=-1)

    @torch.no_grad()
    def sample(self, prompt: Prompt, n: int, max_new_tokens: int, temperature: float = 1.0,
               top_p: float = 1.0) -> Completions:
        """``n`` completions of ``prompt`` with their sampling log-probs (KV-cached decoding)."""
        was_training = self.model.training
        self.model.eval()
        prompt_ids = self.encode_prompt(prompt).to(self.device)
        allowed = self.allowed_tokens(max_new_tokens)
        allowed = allowed.to(self.device) if allowed is not None else None
        out = self.model(input_ids=prompt_ids.expand(n, -1), use_cache=True)
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        ids, lps, masks, entropies = [], [], [], []
        for t in range(max_new_tokens):
            logp = self._masked_logprobs(out.logits[:, -1], None if allowed is None
                                         else allowed[t], temperature)
            token = top_p_sample(logp, top_p)
            token = torch.where(done, torch.full_like(token, self.pad_id), token)
            lp = logp.gather(-1, token.unsqueeze(-1)).squeeze(-1)
            live = ~done
            ent = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)
            ids.append(token)
            lps.append(torch.where(live, lp, torch.zeros_like(lp)))
            masks.append(live.float())
            entropies.append(ent[live])
            done = done | (token == self.stop_id)
            if bool(done.all()):
                break
            out = self.model(input_ids=token.unsqueeze(-1), past_key_values=out.past_key_values,
                             use_cache=True)
        self.model.train(was_training)
        mask = torch.stack(masks, 1)
        return Completions(torch.stack(ids, 1), mask, torch.stack(lps, 1),
                           float(torch.cat(entropies).mean()))

    def logprobs(self, prompt: Prompt, ids: torch.Tensor, temperature: float = 1.0,
                 model: torch.nn.Module | None = None) -> torch.Tensor:
        """[G, T] log-probs of ``ids`` after ``prompt`` under ``model`` (default: the policy).

        One forward pass over prompt + completion; gradients flow when enabled.
        """
        model = model if model is not None else self.model
        prompt_ids = self.encode_prompt(prompt).to(self.device)
        ids = ids.to(self.device)
        full = torch.cat([prompt_ids.expand(ids.shape[0], -1), ids], dim=1)
        logits = model(input_ids=full).logits[:, prompt_ids.shape[0] - 1:-1]
        allowed = self.allowed_tokens(ids.shape[1])
        logp = self._masked_logprobs(logits, None if allowed is None
                                     else allowed.to(self.device), temperature)
        lp = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return torch.where(torch.isfinite(lp), lp, torch.zeros_like(lp))  # padding: disallowed

    def completion_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Each row's generated tokens without padding and without the stop token."""
        rows = []
        for row, m in zip(ids.tolist(), mask.tolist(), strict=True):
            tokens = [t for t, keep in zip(row, m, strict=True) if keep]
            rows.append(tokens[:-1] if tokens and tokens[-1] == self.stop_id else tokens)
        return rows

    def save_pretrained(self, out: Path) -> None:
        """The adapter (LoRA) or the full model, loadable with peft / transformers.

        The frozen base weights of adapted output layers (``lm_head``) are not copied into
        the adapter: they are the base model's."""
        if self.finetune == "lora":
            self.model.save_pretrained(str(out), save_embedding_layers=False)  # type: ignore[operator]
        else:
            self.model.save_pretrained(str(out))  # type: ignore[operator]

    def save_merged(self, out: Path) -> None:
        """The adapters folded into the base weights: a plain transformers model directory.

        Merging changes the network in place, so this is the last thing a run does."""
        # nn.Module types unknown attributes as Tensor | Module; a LoRA model is a PeftModel
        model = self.model.merge_and_unload() if self.finetune == "lora" else self.model  # type: ignore[operator]
        model.save_pretrained(str(out))  # type: ignore[operator]
