"""The DeepSpeed engine, built from spec.trainer.deepspeed; shared by GRPO and DLPO.

One optimizer step per training step (``micro_batches`` backward passes accumulate into
it). The learning-rate schedule is linear warm-up then StepLR decay, counted in training
steps (RLAIF-SPA: StepLR(100, 0.95)), so ``updates_per_step`` inner iterations do not
speed it up. bf16/fp16 only on GPUs; CPUs train in fp32.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

from rlaif.api.models import DeepSpeedSpec

log = logging.getLogger(__name__)


def compute_dtype(requested: str) -> torch.dtype:
    """spec.policy.dtype -> torch dtype; 'auto' is bf16 on GPUs that support it, else fp32.

    Half precision is refused on CPU (slow and unsupported by DeepSpeed's CPU path).
    """
    on_gpu = torch.cuda.is_available()
    if requested == "auto":
        return torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[
        requested]
    if dtype != torch.float32 and not on_gpu:
        log.warning("policy.dtype %s needs a GPU; training in float32 on CPU", requested)
        return torch.float32
    return dtype


def lr_factor(step: int, warmup_steps: int, decay_every: int, gamma: float) -> float:
    """Multiplier of the base learning rate at training step ``step`` (0-based)."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warm * gamma ** (step // decay_every)


def deepspeed_config(spec: DeepSpeedSpec, learning_rate: float, dtype: torch.dtype,
                     micro_batches: int) -> dict[str, Any]:
    """The DeepSpeed JSON config for this job (pure, so tests can read it)."""
    zero: dict[str, Any] = {"stage": spec.zero_stage}
    if spec.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": micro_batches,
        "optimizer": {"type": "Adam", "params": {"lr": learning_rate, "weight_decay": 0.0,
                                                  "torch_adam": not spec.offload_optimizer}},
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if spec.gradient_clipping > 0:
        config["gradient_clipping"] = spec.gradient_clipping
    return config


def build_engine(model: torch.nn.Module, params: Iterable[torch.nn.Parameter],
                 spec: DeepSpeedSpec, learning_rate: float, dtype: torch.dtype,
                 micro_batches: int = 1, updates_per_step: int = 1) -> Any:
    """Wrap ``model`` in a DeepSpeed engine training only ``params`` (e.g. LoRA weights).

    Call ``engine.backward(loss)`` then ``engine.step()`` once per micro-batch; the
    optimizer and scheduler advance every ``micro_batches`` calls.
    """
    import deepspeed

    config = deepspeed_config(spec, learning_rate, dtype, micro_batches)

    def scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: lr_factor(
            update // updates_per_step, spec.warmup_steps, spec.lr_decay_every,
            spec.lr_decay_gamma))

    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=list(params),
                                           config=config, lr_scheduler=scheduler)
    return engine
