"""Autoregressive speech policies behind one interface (see base.SpeechLMPolicy)."""

from __future__ import annotations

import torch

from rlaif import modelref
from rlaif.api.models import PolicySpec
from rlaif.trainer.policies.base import Completions, SpeechLMPolicy


def load_policy(spec: PolicySpec, device: torch.device, dtype: torch.dtype) -> SpeechLMPolicy:
    """The policy named by spec.policy, loaded from its model (and codec) directory."""
    model_dir = modelref.resolve(spec.model)
    if spec.kind == "prosody-lm":
        from rlaif.trainer.policies.prosody_lm import ProsodyLM

        return ProsodyLM(model_dir, spec.finetune, spec.lora, device, dtype)
    if spec.kind == "codec-lm":
        from rlaif.trainer.policies.codec_lm import CodecLM

        if spec.codec is None:
            raise ValueError("spec.policy.codec: required for codec-lm")
        return CodecLM(model_dir, modelref.resolve(spec.codec), spec.finetune, spec.lora,
                       device, dtype)
    raise ValueError(f"spec.policy.kind: {spec.kind!r} is not an autoregressive policy")


__all__ = ["Completions", "SpeechLMPolicy", "load_policy"]
