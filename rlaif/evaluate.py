"""``rlaif eval JOB.yaml --checkpoint DIR|base [--prompts FILE] --out DIR``: did the speech
get better?

Renders the held-out prompts with the base policy and with a trained checkpoint (GRPO: a
LoRA adapter or a full fine-tune; DLPO: a WaveGrad 2 model) through the sampler training's
held-out evaluation uses, from the same seeds (paired samples), scores both on the job's
rewards and evaluators (reward servers started the way ``rlaif run`` starts them), and
writes ``eval.json``, the audio files and ``report.html``: a self-contained listening
report with each metric's paired change and its confidence interval.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rlaif.api.models import EvaluationSpec, RLAIFJob
from rlaif.data import PromptFileError, load_prompts
from rlaif.files import atomic_write_text
from rlaif.runner import (
    EXIT_INVALID,
    EXIT_OK,
    Child,
    RunError,
    prepare_job,
    start_reward_servers,
    wait_ready,
)
from rlaif.trainer.evaluation import (
    PairedDifference,
    heldout_scores,
    paired_metrics,
    sample_rows,
    sample_seed,
)

BASE = "base"
Record = dict[str, Any]


def evaluation_spec(job: RLAIFJob, prompts: str | None) -> EvaluationSpec:
    """spec.evaluation with --prompts over its prompts (or defaults when the job has none)."""
    spec = job.spec.evaluation
    if spec is None:
        if prompts is None:
            raise RunError("rlaif eval: the job has no spec.evaluation; give --prompts FILE",
                           EXIT_INVALID)
        return EvaluationSpec(prompts=prompts)
    return spec.model_copy(update={"prompts": prompts}) if prompts else spec


EXPECTED = {
    "grpo": "a LoRA adapter (adapter_config.json) or a full or merged model (config.json and "
            "*.safetensors)",
    "dlpo": "a WaveGrad 2 model (config.json and model.safetensors)",
}
"""What a trained policy's folder holds, per spec.algorithm (what the trainer saves)."""


def holds_policy(folder: Path, algorithm: str) -> bool:
    """Whether ``folder`` is a policy as spec.algorithm's trainer saves it."""
    if algorithm == "dlpo":
        from rlaif.trainer.wavegrad2.modeldir import CONFIG_FILE, WEIGHTS_FILE

        return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()
    from transformers.utils import CONFIG_NAME

    from rlaif.trainer.heldout import ADAPTER_CONFIG

    return (folder / ADAPTER_CONFIG).is_file() or (
        (folder / CONFIG_NAME).is_file() and any(folder.glob("*.safetensors")))


def trained_dir(checkpoint: Path, algorithm: str) -> Path:
    """The trained policy in a run's output folder (adapter/, which a full fine-tune fills
    with the whole model), in its best/ (best/adapter/), or the folder itself."""
    from rlaif.trainer.heldout import BEST_DIR

    if not checkpoint.is_dir():
        raise RunError(f"--checkpoint {checkpoint}: no such folder (give a run's output "
                       f"folder, a policy folder or {BASE})", EXIT_INVALID)
    for candidate in (checkpoint / "adapter", checkpoint / BEST_DIR / "adapter", checkpoint):
        if holds_policy(candidate, algorithm):
            return candidate
    raise RunError(f"--checkpoint {checkpoint}: no trained policy here, in adapter/ or in "
                   f"{BEST_DIR}/adapter/; expected {EXPECTED[algorithm]} for spec.algorithm "
                   f"{algorithm}", EXIT_INVALID)


def render_side(job: RLAIFJob, spec: EvaluationSpec, prompts: list, trained: Path | None
                ) -> list[np.ndarray]:
    """One side's held-out audio, from the sampler training's held-out evaluation uses: the
    policy at ``trained`` (None: the base), each prompt from its own seed."""
    seeds = [sample_seed(spec.seed, i) for i in range(len(prompts))]
    n = spec.samples_per_prompt
    try:
        if job.spec.algorithm == "dlpo":
            import torch

            from rlaif import modelref
            from rlaif.trainer.dlpo import speak as diffuse
            from rlaif.trainer.wavegrad2.modeldir import load_model

            device = "cuda" if torch.cuda.is_available() else "cpu"
            net = load_model(trained or modelref.resolve(job.spec.policy.model), device)
            steps = net.config.schedule.transitions(job.spec.dlpo.denoising_steps)
            return diffuse(net, steps, prompts, seeds, n)
        from rlaif.trainer.grpo_algorithm import speak
        from rlaif.trainer.heldout import policy_at

        policy = policy_at(job.spec.policy, trained)
    except (ValueError, FileNotFoundError) as exc:
        raise RunError(f"rlaif eval: {exc}", EXIT_INVALID) from None
    return speak(policy, prompts, seeds, n, spec.sampling == "greedy", job.spec.grpo)


def evaluate(job_path: Path, checkpoint: str, prompts_arg: str | None, out: Path) -> Record:
    """Both sides rendered, scored and compared; returns eval.json's content."""
    from rlaif.reward_client import RewardClient, ScoreItem
    from rlaif.trainer.audio import write_wav

    job = prepare_job(job_path, None, None)
    spec = evaluation_spec(job, prompts_arg)
    path = Path(spec.prompts)
    path = path if path.is_absolute() or prompts_arg else job_path.resolve().parent / path
    try:
        prompts = load_prompts(path, job.spec.label_schema)
    except PromptFileError as exc:
        raise RunError(f"rlaif eval: {exc}", EXIT_INVALID) from None
    trained = (None if checkpoint == BASE
               else trained_dir(Path(checkpoint), job.spec.algorithm))
    out.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    try:
        servers, endpoints = start_reward_servers(job, out)
        children += servers
        wait_ready(servers, endpoints, job.spec.run_policy.rewards_ready_timeout_seconds)
        training = {r.name for r in job.spec.rewards}
        scored = set(spec.scored_rewards(sorted(training))) | {e.name for e in spec.evaluators}
        used = [e for e in endpoints if e.name in scored]
        weights = {e.name: e.weight for e in used}
        keys = [(i, j) for i in range(len(prompts)) for j in range(spec.samples_per_prompt)]
        texts = [prompts[i].text for i, _ in keys]
        sides: dict[str, list[Record]] = {}
        with RewardClient(used) as client:
            for side, source in ((BASE, None), ("trained", trained)):
                audio = render_side(job, spec, prompts, source)
                for (i, j), wave in zip(keys, audio, strict=True):
                    write_wav(out / "audio" / side / f"p{i:03d}-s{j}.wav", wave)
                scores = client.score([ScoreItem.for_prompt(f"{side}-{i}-{j}", wave, prompts[i])
                                       for (i, j), wave in zip(keys, audio, strict=True)])
                sides[side] = sample_rows(keys, texts, heldout_scores(scores.per_reward,
                                                                      weights), scores.details)
                for row, (i, j) in zip(sides[side], keys, strict=True):
                    row.update(audio=f"audio/{side}/p{i:03d}-s{j}.wav",
                               labels=dict(prompts[i].labels))
    finally:
        for child in reversed(children):
            child.stop()
    change = paired_metrics(sides[BASE], sides["trained"])
    return {"job": job.metadata.name, "checkpoint": checkpoint, "prompts": str(path),
            "seed": spec.seed, "sampling": spec.sampling,
            "samplesPerPrompt": spec.samples_per_prompt,
            "metrics": {name: vars(d) for name, d in change.items()}, "samples": sides}


def eval_command(args: argparse.Namespace) -> int:
    """``rlaif eval JOB.yaml --checkpoint DIR|base [--prompts FILE] --out DIR``."""
    from rlaif.report import ordered, write_report
    from rlaif.trainer.metrics import dumps

    out = Path(args.out).resolve()
    try:
        result = evaluate(Path(args.job), args.checkpoint, args.prompts, out)
    except RunError as exc:
        print(f"{exc}", file=sys.stderr)
        return exc.code
    atomic_write_text(out / "eval.json", dumps(result, indent=1))
    report = write_report(result, out)
    for name, figures in ordered(result["metrics"]).items():
        print(f"{name}: {PairedDifference(**figures).describe()}")
    print(f"report: {report}\neval.json and audio/ in {out}")
    return EXIT_OK
