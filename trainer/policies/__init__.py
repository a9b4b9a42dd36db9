"""Autoregressive speech policies behind one interface (base.SpeechLMPolicy).

A model family is one module with a ``SpeechLMPolicy`` subclass that has a ``from_spec``
classmethod, plus one line in ``POLICIES`` (docs/policies.md). Modules are imported only
when their kind is used.
"""

from __future__ import annotations

import importlib

import torch

from rlaif import modelref
from rlaif.api.models import PolicySpec
from rlaif.trainer.policies.base import Completions, SpeechLMPolicy

POLICIES: dict[str, str] = {
    "prosody-lm": "rlaif.trainer.policies.prosody_lm:ProsodyLM",
    "codec-lm": "rlaif.trainer.policies.codec_lm:CodecLM",
    "csm": "rlaif.trainer.policies.csm:CSM",
}
"""spec.policy.kind -> ``module:class`` of its policy."""


def load_policy(spec: PolicySpec, device: torch.device, dtype: torch.dtype) -> SpeechLMPolicy:
    """The policy named by spec.policy, loaded from its model (and codec) directory."""
    if spec.kind not in POLICIES:
        raise ValueError(f"spec.policy.kind: {spec.kind!r} is not an autoregressive policy "
                         f"({', '.join(POLICIES)})")
    module, _, name = POLICIES[spec.kind].partition(":")
    policy_class = getattr(importlib.import_module(module), name)
    codec_dir = modelref.resolve(spec.codec) if spec.codec else None
    policy: SpeechLMPolicy = policy_class.from_spec(spec, modelref.resolve(spec.model),
                                                    codec_dir, device, dtype)
    return policy


__all__ = ["POLICIES", "Completions", "SpeechLMPolicy", "load_policy"]
