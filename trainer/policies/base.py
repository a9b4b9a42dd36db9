"""What GRPO needs from an autoregressive speech policy, and the sampling token LMs share.

A policy turns a prompt into G sampled completions with their log-probs, scores given
completions under the current or the reference network, and renders a completion to
16 kHz audio. The log-probs are those of the distribution actually sampled from
(temperature and the position's allowed tokens applied, top-p not), so the audio that is
scored comes from exactly the tokens that are trained, with their prompt as context.

``SpeechLMPolicy`` is the interface the GRPO algorithm calls (docs/policies.md).
``TokenLMPolicy`` implements it for a causal LM that writes one token per step (prosody-lm,
codec-lm/Llasa): a new model of that shape only says how it builds a prompt, which
vocabulary slice a completion may use (``TokenSlice``) and how tokens become audio.

Memory: the output head is applied to the allowed slice of the vocabulary only
(a selective log-softmax: logits of the slice, logsumexp over the slice), through views of
the head's weight rows, so no full-vocabulary logits, float32 copies, weight copies or
dense masks are built; the prompt's positions get no logits at all.
"""

from __future__ import annotations

import contextlib
import functools
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from rlaif.api.models import LoraSpec, PolicySpec
from rlaif.constants import SAMPLE_RATE
from rlaif.data import Prompt


@dataclass
class Completions:
    """G sampled completions of one prompt (right-padded with the pad id)."""

    ids: torch.Tensor
    """[G, T] token ids ([G, T, C] for frame policies: C codebooks per step)."""
    mask: torch.Tensor
    """[G, T] 1.0 on generated steps (the stop step included), 0.0 on padding."""
    logprobs: torch.Tensor
    """[G, T] log-probs under the sampling policy (0 on padding); per frame: summed over C."""
    entropy: float
    """Mean per-step entropy of the sampling distribution."""

    def drift(self, logprobs: torch.Tensor) -> float:
        """Largest |recomputed - sampled| log-prob over the generated steps: 0 up to float
        rounding when training scores exactly what was sampled (dropout adds noise)."""
        diff = (logprobs.detach().to(self.logprobs.device) - self.logprobs).abs()
        return float((diff * self.mask).max()) if diff.numel() else 0.0


SILENCE_SECONDS = 0.1


def silence() -> np.ndarray:
    """What a completion with no whole frame renders to: valid 16 kHz audio that scores
    badly, so the sample is trained on rather than dropped."""
    return np.zeros(int(SAMPLE_RATE * SILENCE_SECONDS), dtype=np.float32)


def top_p_sample(logprobs: torch.Tensor, top_p: float) -> torch.Tensor:
    """One index per row from ``exp(logprobs)`` restricted to the smallest set of mass >= top_p."""
    probs = logprobs.exp()
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(dim=-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p, 1)
        return order.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1).squeeze(-1)


def entropy_of(logp: torch.Tensor) -> torch.Tensor:
    """Entropy of each row's distribution (disallowed entries, -inf, count as 0)."""
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)


def split_groups(ids: torch.Tensor, mask: torch.Tensor, logprobs: torch.Tensor,
                 entropy: torch.Tensor, n: int) -> list[Completions]:
    """Rows of a batched sample -> one ``Completions`` per group of ``n`` rows, each cut to
    its own longest completion (the steps after its last stop are padding) and with the
    mean entropy of its own generated steps: what sampling the group alone returns."""
    groups = []
    for i, m, lp, h in zip(ids.split(n), mask.split(n), logprobs.split(n), entropy.split(n),
                           strict=True):
        steps = int(m.sum(1).max())
        groups.append(Completions(i[:, :steps], m[:, :steps], lp[:, :steps],
                                  float(h.sum() / m.sum())))
    return groups


def left_pad(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    """1-D tensors -> [len(rows), longest], each right-aligned after ``value`` padding."""
    return pad_sequence([r.flip(0) for r in rows], batch_first=True,
                        padding_value=value).flip(1)


@dataclass(frozen=True)
class TokenSlice:
    """The vocabulary ids a completion may hold, and which of them each position allows.

    ``ids`` [K] are sorted; position ``t`` allows the entries where ``rows[r]`` [R, K] is
    True, with ``r = t % R`` (``cycle``: interleaved codebooks) or ``r = min(t, R - 1)``
    (a fixed program, then only the stop token).
    """

    ids: torch.Tensor
    rows: torch.Tensor
    cycle: bool = True

    @staticmethod
    def build(ids: torch.Tensor, rows: torch.Tensor, cycle: bool = True) -> TokenSlice:
        """A slice from ids in any order (columns of ``rows`` follow them)."""
        order = ids.argsort()
        return TokenSlice(ids[order].long(), rows[:, order].bool(), cycle)

    def mask(self, length: int, device: torch.device | None = None) -> torch.Tensor:
        """Bool [length, K]: the slice entries allowed at each of ``length`` positions."""
        t = torch.arange(length)
        r = t % len(self.rows) if self.cycle else t.clamp(max=len(self.rows) - 1)
        return self.rows[r].to(device)

    @functools.cached_property
    def runs(self) -> list[tuple[int, int]]:
        """(first id, length) of each run of consecutive ids: the output head's rows of the
        slice as views of its weight, never a copy (65,537 rows of a 1B model's head: 0.5 GB)."""
        ids = self.ids.tolist()
        starts = [0] + [i for i in range(1, len(ids)) if ids[i] != ids[i - 1] + 1]
        return [(ids[a], b - a) for a, b in zip(starts, [*starts[1:], len(ids)], strict=True)]

    def index_of(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's position in ``ids`` and whether it is in the slice at all."""
        ids = self.ids.to(tokens.device)
        index = torch.searchsorted(ids, tokens).clamp(max=len(ids) - 1)
        return index, ids[index] == tokens


# ---------------------------------------------------------------------------- interface


class SpeechLMPolicy(ABC):
    """A speech LM (with LoRA adapters unless fine-tuned fully) that speaks through a renderer.

    The interface GRPO uses: ``sample`` (``sample_groups``: a rollout's groups), ``logprobs``,
    ``completion_tokens``, ``render``, ``describe``, the reference policy, and saving (see
    docs/policies.md).
    """

    model: torch.nn.Module
    pad_id: int
    stop_id: int
    render_in_threads: ClassVar[bool] = False
    """``render`` waits on work outside Python (a subprocess): several samples may render at
    once in threads (trainer/rendering.py). Leave False for torch decoders."""

    def __init__(self, model: torch.nn.Module, finetune: str, lora: LoraSpec,
                 gradient_checkpointing: bool = False, lora_scope: str | None = None) -> None:
        """``lora_scope``: a regex of module paths whose target modules get adapters (CSM:
        the backbone, not the codec's or the depth decoder's layers of the same names)."""
        self.finetune = finetune
        self.reference: torch.nn.Module | None = None
        if finetune == "lora":
            from peft import LoraConfig, get_peft_model

            targets: list[str] | str = list(lora.target_modules)
            if lora_scope is not None:
                names = "|".join(re.escape(t) for t in lora.target_modules)
                targets = rf"(?:{lora_scope})\..*\.(?:{names})"
            config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                target_modules=targets, bias="none")
            model = get_peft_model(model, config)  # type: ignore[arg-type]
        if gradient_checkpointing:
            # Non-reentrant checkpointing needs no gradients on the inputs, so the hooks
            # transformers adds for them go (CSM's depth decoder writes into its input
            # embeddings in place, which a leaf that requires grad forbids).
            model.activation_checkpointing_enable(  # type: ignore[operator]
                activation_checkpointing_kwargs={"use_reentrant": False})
            model.disable_input_require_grads()  # type: ignore[operator]
        self.model = model

    # ------------------------------------------------------------------ per policy

    @classmethod
    @abstractmethod
    def from_spec(cls, spec: PolicySpec, model_dir: Path, codec_dir: Path | None,
                  device: torch.device, dtype: torch.dtype) -> Self:
        """The policy for ``spec.policy`` (model and codec directories already resolved)."""

    @abstractmethod
    def sample(self, prompt: Prompt, n: int, max_new_tokens: int, temperature: float = 1.0,
               top_p: float = 1.0) -> Completions:
        """``n`` completions of ``prompt`` with their sampling log-probs."""

    def sample_groups(self, prompts: Sequence[Prompt], n: int, max_new_tokens: int,
                      temperature: float = 1.0, top_p: float = 1.0) -> list[Completions]:
        """``sample`` for each prompt: a rollout's groups. A policy that can decode them
        as one batch overrides this (``TokenLMPolicy``)."""
        return [self.sample(p, n, max_new_tokens, temperature, top_p) for p in prompts]

    @abstractmethod
    def logprobs(self, prompt: Prompt, ids: torch.Tensor, temperature: float = 1.0,
                 model: torch.nn.Module | None = None) -> torch.Tensor:
        """[G, T] log-probs of ``ids`` after ``prompt`` under ``model`` (default: the policy),
        equal to ``sample``'s for the same tokens; gradients flow when enabled."""

    @abstractmethod
    def render(self, ids: list[int], prompt: Prompt) -> np.ndarray:
        """A completion's tokens (up to, without, the stop step) -> 16 kHz float32 audio."""

    def render_group(self, completions: list[list[int]], prompt: Prompt) -> list[np.ndarray]:
        """``render`` of each of a group's completions, in order. A policy whose renderer
        can do a group in one batch (codec decoders) overrides this; the audio must stay
        what ``render`` gives each sample."""
        return [self.render(ids, prompt) for ids in completions]

    def completion_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Each row's generated tokens without padding and without the stop token."""
        rows = []
        for row, m in zip(ids.tolist(), mask.tolist(), strict=True):
            tokens = [t for t, keep in zip(row, m, strict=True) if keep]
            rows.append(tokens[:-1] if tokens and tokens[-1] == self.stop_id else tokens)
        return rows

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


# ---------------------------------------------------------------------------- token LMs


class TokenLMPolicy(SpeechLMPolicy):
    """A causal LM writing one token per step from a ``TokenSlice`` of its vocabulary."""

    @abstractmethod
    def encode_prompt(self, prompt: Prompt) -> torch.Tensor:
        """The prompt's token ids [L] (text, labels and voice prefix as the model reads them)."""

    @abstractmethod
    def token_slice(self) -> TokenSlice:
        """The vocabulary a completion may use, position by position (stop token included)."""

    def slice_logits(self, model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The output head on the slice only: [..., K] logits from hidden states [..., H].

        A plain linear head is cut to the slice's rows; a head that is adapted (LoRA on
        ``lm_head``) or partitioned (ZeRO-3) runs whole and its slice columns are kept.
        """
        head = model.get_output_embeddings()  # type: ignore[operator]
        vocab = self.token_slice()
        if type(head) is torch.nn.Linear and not hasattr(head.weight, "ds_id"):
            parts = [F.linear(hidden, head.weight.narrow(0, first, n),
                              None if head.bias is None else head.bias.narrow(0, first, n))
                     for first, n in vocab.runs]
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return head(hidden).index_select(-1, vocab.ids.to(hidden.device))

    def _slice_logprobs(self, logits: torch.Tensor, allowed: torch.Tensor,
                        temperature: float) -> torch.Tensor:
        """log-softmax over the allowed slice entries, in float32 ([..., K])."""
        scores = logits.float() / temperature
        return F.log_softmax(scores.masked_fill_(~allowed, float("-inf")), dim=-1)

    def sample(self, prompt: Prompt, n: int, max_new_tokens: int, temperature: float = 1.0,
               top_p: float = 1.0) -> Completions:
        """``n`` completions of ``prompt`` with their sampling log-probs (KV-cached decoding)."""
        return self.sample_groups([prompt], n, max_new_tokens, temperature, top_p)[0]

    @torch.no_grad()
    def sample_groups(self, prompts: Sequence[Prompt], n: int, max_new_tokens: int,
                      temperature: float = 1.0, top_p: float = 1.0) -> list[Completions]:
        """All groups in one KV-cached decoding loop: ``len(prompts) * n`` rows, the prompts
        left-padded to the longest, with an attention mask and each row's own positions, so
        every row samples from the distribution ``sample`` would (and ``logprobs`` scores)."""
        was_training = self.model.training
        self.model.eval()
        decoder = self.model.get_decoder()  # type: ignore[operator]
        encoded = [self.encode_prompt(p) for p in prompts]
        prompt_ids = left_pad(encoded, self.pad_id).repeat_interleave(n, 0).to(self.device)
        attention = left_pad([torch.ones_like(e) for e in encoded], 0)
        attention = attention.repeat_interleave(n, 0).to(self.device)
        position = (attention.cumsum(1) - 1).clamp(min=0)
        vocab = self.token_slice()
        allowed = vocab.mask(max_new_tokens, self.device)
        slice_ids = vocab.ids.to(self.device)
        out = decoder(input_ids=prompt_ids, attention_mask=attention, position_ids=position,
                      use_cache=True)
        position = position[:, -1:]
        done = torch.zeros(len(prompt_ids), dtype=torch.bool, device=self.device)
        ids, lps, masks, entropies = [], [], [], []
        for t in range(max_new_tokens):
            logits = self.slice_logits(self.model, out.last_hidden_state[:, -1])
            logp = self._slice_logprobs(logits, allowed[t], temperature)
            choice = top_p_sample(logp, top_p)
            token = torch.where(done, torch.full_like(choice, self.pad_id), slice_ids[choice])
            lp = logp.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
            live = ~done
            ids.append(token)
            lps.append(torch.where(live, lp, torch.zeros_like(lp)))
            masks.append(live.float())
            entropies.append(torch.where(live, entropy_of(logp), torch.zeros_like(lp)))
            done = done | (token == self.stop_id)
            if bool(done.all()):
                break
            attention = torch.cat([attention, attention.new_ones(len(attention), 1)], dim=1)
            position = position + 1
            out = decoder(input_ids=token.unsqueeze(-1), attention_mask=attention,
                          position_ids=position, cache=out.cache, use_cache=True)
        self.model.train(was_training)
        return split_groups(torch.stack(ids, 1), torch.stack(masks, 1), torch.stack(lps, 1),
                            torch.stack(entropies, 1), n)

    def logprobs(self, prompt: Prompt, ids: torch.Tensor, temperature: float = 1.0,
                 model: torch.nn.Module | None = None) -> torch.Tensor:
        """[G, T] log-probs of ``ids`` after ``prompt`` under ``model`` (default: the policy).

        One forward pass over prompt + completion, the head on the completion's positions
        and the slice only; tokens outside the slice (padding) get 0.
        """
        model = model if model is not None else self.model
        prompt_ids = self.encode_prompt(prompt).to(self.device)
        ids = ids.to(self.device)
        full = torch.cat([prompt_ids.expand(ids.shape[0], -1), ids], dim=1)
        hidden = model.get_decoder()(input_ids=full).last_hidden_state  # type: ignore[operator]
        logits = self.slice_logits(model, hidden[:, prompt_ids.shape[0] - 1:-1])
        vocab = self.token_slice()
        logp = self._slice_logprobs(logits, vocab.mask(ids.shape[1], self.device), temperature)
        index, inside = vocab.index_of(ids)
        lp = logp.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        return torch.where(inside & torch.isfinite(lp), lp, torch.zeros_like(lp))
