"""``rlaif eval JOB.yaml --checkpoint DIR|base [--prompts FILE] --out DIR``: did the speech
get better?

Renders the held-out prompts with the base policy and with a trained checkpoint, from the
same seeds (paired samples), scores both on the job's rewards and evaluators (reward
servers started the way ``rlaif run`` starts them), and writes ``eval.json``, the audio
files and ``report.html``: a self-contained listening report with each metric's paired
change and its confidence interval.
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


def adapter_dir(checkpoint: Path) -> Path:
    """The adapter in a run's output folder (adapter/), in best/, or the folder itself."""
    for candidate in (checkpoint / "adapter", checkpoint / "best" / "adapter", checkpoint):
        if (candidate / "adapter_config.json").exists():
            return candidate
    raise RunError(f"--checkpoint {checkpoint}: no LoRA adapter (adapter_config.json) here, in "
                   f"adapter/ or in best/adapter/", EXIT_INVALID)


def render_side(job: RLAIFJob, spec: EvaluationSpec, prompts: list, adapter: Path | None
                ) -> list[np.ndarray]:
    """One side's held-out audio: the policy with ``adapter`` (None: base), seeded per
    prompt."""
    from rlaif.trainer.grpo_algorithm import speak
    from rlaif.trainer.heldout import policy_at

    policy = policy_at(job.spec.policy, adapter)
    seeds = [sample_seed(spec.seed, i) for i in range(len(prompts))]
    return speak(policy, prompts, seeds, spec.samples_per_prompt, spec.sampling == "greedy",
                 job.spec.grpo)


def evaluate(job_path: Path, checkpoint: str, prompts_arg: str | None, out: Path) -> Record:
    """Both sides rendered, scored and compared; returns eval.json's content."""
    from rlaif.reward_client import RewardClient, ScoreItem
    from rlaif.trainer.audio import write_wav

    job = prepare_job(job_path, None, None)
    if job.spec.algorithm != "grpo":
        raise RunError(f"rlaif eval: spec.algorithm {job.spec.algorithm} is not supported yet "
                       f"(autoregressive policies only)", EXIT_INVALID)
    spec = evaluation_spec(job, prompts_arg)
    path = Path(spec.prompts)
    path = path if path.is_absolute() or prompts_arg else job_path.resolve().parent / path
    try:
        prompts = load_prompts(path, job.spec.label_schema)
    except PromptFileError as exc:
        raise RunError(f"rlaif eval: {exc}", EXIT_INVALID) from None
    trained = None if checkpoint == BASE else adapter_dir(Path(checkpoint))
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
