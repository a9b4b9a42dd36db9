"""Held-out evaluation inside a training run (spec.evaluation).

Every ``everySteps`` steps (and before the first step and at the last), each rank renders
its share of the held-out prompts with their fixed seeds, scores them on the scored training
rewards and the evaluators, and rank 0 gathers the samples in prompt order, writes
``eval/step-NNNNNN.json`` (per sample: text, scores, details) and its audio, and returns the
metrics.jsonl row. The guard and the best-so-far tracking run on that row; every rank gets
the guard's verdict and whether the row is the best so far (both collective decisions).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlaif.api.models import PolicySpec, RLAIFJobSpec
from rlaif.config import TrainerConfig
from rlaif.data import load_prompts
from rlaif.files import atomic_write_text
from rlaif.reward_client import RewardClient, ScoreItem
from rlaif.trainer.algorithm import Algorithm
from rlaif.trainer.audio import write_wav
from rlaif.trainer.distributed import DistContext, all_gather_objects
from rlaif.trainer.evaluation import (
    EVAL_KIND,
    Best,
    Hacking,
    Record,
    check_guard,
    detail_means,
    eval_row,
    heldout_scores,
    metric,
    paired_metrics,
    sample_rows,
    sample_seed,
)
from rlaif.trainer.metrics import TensorBoardLog, dumps

log = logging.getLogger(__name__)

EVAL_DIR = "eval"
"""Under the output directory: ``step-NNNNNN.json`` and ``step-NNNNNN/*.wav`` per evaluation."""
BEST_DIR = "best"
"""Under the output directory: the policy best by bestMetric (``adapter/``, ``meta.json``)."""
TENSORBOARD_AUDIO = 4
"""Held-out samples per evaluation logged to TensorBoard as audio."""


def eval_file(out: Path, step: int) -> Path:
    return out / EVAL_DIR / f"step-{step:06d}.json"


@dataclass
class Verdict:
    """What one evaluation means for the run, the same on every rank."""

    row: Record | None
    """The metrics.jsonl row (rank 0 only)."""
    improved: bool = False
    """Best so far by spec.evaluation.bestMetric: export the policy to best/."""
    hacking: list[Hacking] = field(default_factory=list)


class HeldOutEvaluation:
    """The held-out prompts, their reward client, and the rows so far (rank 0)."""

    def __init__(self, config: TrainerConfig, ctx: DistContext, algorithm: Algorithm,
                 previous: list[Record]) -> None:
        spec = config.spec.evaluation
        assert spec is not None
        self.spec, self.ctx, self.algorithm = spec, ctx, algorithm
        self.total_steps, self.out = config.spec.steps, Path(config.output_dir)
        self.prompts = load_prompts(config.resolve_path(spec.prompts), config.spec.label_schema)
        training = {e.name: e for e in config.rewards}
        endpoints = [training[n] for n in spec.scored_rewards(list(training))]
        self.client = RewardClient(endpoints + list(config.evaluators))
        self.weights = {e.name: e.weight for e in endpoints}
        self.rows = [r for r in previous if r.get("kind") == EVAL_KIND]
        self.best = Best.from_rows(self.rows, spec.best_metric)
        self.train_rewards: list[float] = []
        self.base_train = next((r.get("reward_mean") for r in previous
                                if r.get("step") == 1 and "kind" not in r), None)
        """The first step's training reward: the base policy's (check_guard)."""
        last = max((int(r["step"]) for r in self.rows), default=-1)
        for record in previous:  # a resume: the steps since the last evaluation still count
            if "kind" not in record and record.get("step", 0) > last:
                self.observe(record)

    def due(self, step: int) -> bool:
        return step == 0 or step % self.spec.every_steps == 0 or step == self.total_steps

    def observe(self, record: Record) -> None:
        """A training step's record: its reward counts toward the next row's train_reward."""
        if record.get("reward_mean") is not None:
            self.train_rewards.append(float(record["reward_mean"]))
            if record["step"] == 1:
                self.base_train = float(record["reward_mean"])

    def run(self, step: int) -> Verdict:
        """Evaluate the policy as it is after ``step`` (a collective: every rank calls it).
        An evaluation already in metrics.jsonl is not repeated (a run that crashed before its
        first checkpoint starts again at step 0, whose base evaluation is there): no row."""
        if all_gather_objects(any(r["step"] == step for r in self.rows))[0]:  # rank 0's rows
            return Verdict(None)
        mine = list(range(self.ctx.rank, len(self.prompts), self.ctx.world_size))
        n = self.spec.samples_per_prompt
        audio = self.algorithm.synthesize([self.prompts[i] for i in mine],
                                          [sample_seed(self.spec.seed, i) for i in mine], n,
                                          self.spec.sampling == "greedy")
        keys = [(i, j) for i in mine for j in range(n)]
        items = [ScoreItem.for_prompt(f"eval{step}-{i}-{j}", wave, self.prompts[i])
                 for (i, j), wave in zip(keys, audio, strict=True)]
        scores = self.client.score(items)
        parts = all_gather_objects((keys, audio, scores.per_reward, scores.details))
        verdict = Verdict(self._record(step, parts) if self.ctx.is_main else None)
        if verdict.row is not None:
            verdict.improved = self.best.update(verdict.row)
            verdict.hacking = check_guard(self.rows, self.spec.guard, self.base_train)
            verdict.row["hacking"] = [vars(found) for found in verdict.hacking]
        shared = all_gather_objects((verdict.improved, verdict.hacking))[0]
        verdict.improved, verdict.hacking = shared
        return verdict

    def _record(self, step: int, parts: list[tuple]) -> Record:
        """Rank 0: the gathered samples in prompt order -> files and the row."""
        keys = [k for p in parts for k in p[0]]
        order = np.argsort([i * 1_000_000 + j for i, j in keys], kind="stable")
        audio = [a for p in parts for a in p[1]]
        names = list(parts[0][2])
        per_reward = {n: np.concatenate([p[2][n] for p in parts])[order] for n in names}
        flat = {n: [d for p in parts for d in p[3][n]] for n in names}
        details = {n: [flat[n][k] for k in order] for n in names}
        keys = [keys[k] for k in order]
        scores = heldout_scores(per_reward, self.weights)
        texts = [self.prompts[i].text for i, _ in keys]
        folder = self.out / EVAL_DIR / f"step-{step:06d}"
        for (i, j), k in zip(keys, order, strict=True):
            write_wav(folder / f"p{i:03d}-s{j}.wav", audio[k])
        atomic_write_text(eval_file(self.out, step), dumps(
            {"step": step, "seed": self.spec.seed, "sampling": self.spec.sampling,
             "samples": sample_rows(keys, texts, scores, details)}, indent=1))
        train = float(np.mean(self.train_rewards)) if self.train_rewards else None
        self.train_rewards = []
        row = eval_row(step, scores, detail_means(details), train)
        self.rows.append(row)
        return row

    def close(self) -> None:
        self.client.close()


def export_best(algorithm: Algorithm, out: Path, step: int, is_main: bool) -> None:
    """Replace best/ with the policy as it is now (every rank calls; rank 0 writes). Written
    beside it first, then swapped in, so a crash leaves the previous best whole."""
    tmp, best, old = out / f".{BEST_DIR}-tmp", out / BEST_DIR, out / f".{BEST_DIR}-old"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    algorithm.save_policy(tmp / "adapter")
    if not is_main:
        return
    atomic_write_text(tmp / "meta.json", json.dumps({"step": step}))
    shutil.rmtree(old, ignore_errors=True)
    if best.exists():
        os.replace(best, old)
    os.replace(tmp, best)
    shutil.rmtree(old, ignore_errors=True)


ADAPTER_CONFIG = "adapter_config.json"
"""A LoRA adapter folder's marker (peft's save_pretrained); a full or merged model folder
holds config.json and the weights instead."""


def policy_at(spec: PolicySpec, trained: Path | None, device: str | None = None) -> Any:
    """The spec's autoregressive policy with a trained checkpoint's weights (None: the base),
    for inference: ``rlaif eval``'s two sides and the best checkpoint's merged export.
    ``trained`` is a LoRA adapter folder or a full model folder (what a ``finetune: full``
    run saves as adapter/ and best/adapter/, or a merged/ export)."""
    import torch
    from peft import load_peft_weights, set_peft_model_state_dict

    from rlaif.trainer.engine import compute_dtype
    from rlaif.trainer.policies import load_policy

    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    lora = trained is not None and (trained / ADAPTER_CONFIG).is_file()
    if trained is not None:  # the network the checkpoint's weights fit
        spec = spec.model_copy(update={"finetune": "lora" if lora else "full"})
    policy = load_policy(spec, where, compute_dtype(spec.dtype))
    if lora:
        set_peft_model_state_dict(policy.model, load_peft_weights(str(trained)))
    elif trained is not None:
        load_full_weights(policy.model, trained)
    policy.model.eval()
    return policy


def load_full_weights(model: Any, folder: Path) -> None:
    """A full model folder's weights into ``model`` (the base network, built by its policy
    with the tokenizer, codec and settings the folder lacks), read by transformers itself so
    shards, tied weights and renamed keys load as they were saved."""
    try:
        saved = type(model).from_pretrained(str(folder), dtype=model.dtype)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}: not a model folder transformers can load ({exc})") from None
    try:
        model.load_state_dict(saved.state_dict())
    except RuntimeError as exc:
        raise ValueError(f"{folder}: its weights do not fit spec.policy.model "
                         f"({str(exc).splitlines()[0]})") from None


def merge_best(spec: RLAIFJobSpec, out: Path) -> None:
    """best/merged beside best/adapter when spec.checkpoint.saveMerged (autoregressive LoRA
    policies): a fresh CPU copy with the best adapter, folded in, since merging the training
    copy would end training."""
    adapter = out / BEST_DIR / "adapter"
    if (spec.algorithm != "grpo" or spec.policy.finetune != "lora"
            or not spec.checkpoint.save_merged or not adapter.is_dir()):
        return
    policy_at(spec.policy, adapter, "cpu").save_merged(out / BEST_DIR / "merged")


def load_samples(out: Path, step: int) -> list[Record]:
    """The per-sample rows of the evaluation at ``step``."""
    return list(json.loads(eval_file(out, step).read_text())["samples"])


def heldout_summary(out: Path, rows: list[Record], best: Best) -> Record:
    """summary.json's evaluation part: the paired change of every held-out metric from the
    first evaluation (the base policy on a fresh run) to the last, and the best so far."""
    summary: Record = {"evaluations": len(rows), "best_metric": best.metric,
                       "best_step": best.step, "best": dict(best.values), "change": {}}
    if len(rows) >= 2:
        first, last = rows[0]["step"], rows[-1]["step"]
        summary.update(first_step=first, last_step=last)
        change = paired_metrics(load_samples(out, first), load_samples(out, last))
        summary["change"] = {name: vars(d) for name, d in change.items()}
    summary["last"] = {n: metric(rows[-1], n) for n in best.values} if rows else {}
    return summary


def log_eval_audio(tensorboard: TensorBoardLog, out: Path, step: int) -> None:
    """The first few held-out samples of an evaluation, as TensorBoard audio."""
    import soundfile as sf

    folder = out / EVAL_DIR / f"step-{step:06d}"
    for wav in sorted(folder.glob("*.wav"))[:TENSORBOARD_AUDIO]:
        wave, rate = sf.read(wav, dtype="float32")
        tensorboard.audio(f"heldout/{wav.stem}", wave, step, rate)
