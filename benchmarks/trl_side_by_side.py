"""This trainer and TRL's GRPOTrainer side by side: seconds per step, samples/s and phases.

Both train the quickstart's prosody-lm policy (the same Llama weights, LoRA r=8, float32) on
the quickstart's prompts, 2 prompts x 4 samples a step, one optimizer update a step, KL
0.05, learning rate 5e-3, gradient clipping 1.0, scored by the same reward servers through
the same client (rlaif/reward_client.py) after rendering with the same espeak-ng renderer
in threads (trainer/rendering.py), each group sent as soon as it is rendered. Workloads:

- ``cheap``: one stub reward server answering each request after 50 ms;
- ``real``: the quickstart's servers (Whisper tiny.en asr, acoustic judge, DNSMOS), started
  as ``rlaif run`` starts them.

Each run is a fresh process (ours, TRL, ours, TRL, ... for ``--reps`` repetitions) against
servers that stay up for the whole workload. Seconds per step: the mean of steps 2..N
(step 1 is warm-up), from step end to step end for TRL.

TRL, as it is: ``ProgramLM`` puts our allowed-token rule on the model's logits as a bias on
the current token (the program's slots follow each other, so the next slot depends only on
the current token), so TRL samples exactly our policy's distribution and every completion
is a valid 7-token program. TRL 1.16 computes training log-probs with a fused head from
``lm_head.weight`` (full vocabulary, without the bias) and refuses LoRA on ``lm_head``:
its adapters are on q_proj and v_proj only. Neither changes the work per step noticeably at
this size (a 175-token vocabulary). TRL scores a step once all of it is generated; the
reward function here still renders in threads and sends each group as it is rendered.

Phases. Ours (metrics.jsonl): generate (sampling and rendering; the groups' scoring runs
meanwhile), reward wait (the scores still missing), update (reference and policy log-probs,
loss, backward, optimizer), other. TRL: generate (model.generate), reward wait (the reward
function: render and score), update (after the rollout: loss, backward, optimizer), other
(the rest: tokenizing, reference log-probs, decoding, advantages, the trainer's
bookkeeping between steps).

Needs TRL (``pip install -e .[bench]``):

    .venv/bin/python benchmarks/trl_side_by_side.py [--steps 24] [--reps 2]
        [--workloads cheap,real]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.grpo_step_breakdown import bench_config, bench_spec, run_case
from rlaif.api.models import RLAIFJob
from rlaif.api.validation import load_job
from rlaif.config import RewardEndpoint
from rlaif.data import load_prompts
from rlaif.reward_client import RewardClient, ScoreItem
from rlaif.runner import Child, spawn, start_reward_servers, wait_ready
from rlaif.trainer.distributed import free_port

REPO = Path(__file__).resolve().parent.parent
JOB = REPO / "examples" / "quickstart-cpu.yaml"
STUB_DELAY_S = 0.05
SEPARATOR = "\x1f"
"""Joins a prompt's tokens into the string TRL's tokenizer splits again (not in the vocabulary)."""
OURS_PHASES = ("generate", "reward_wait", "update", "other")


@dataclass
class RunResult:
    """One run's figures, means over steps 2..N."""

    trainer: str
    workload: str
    rep: int
    step_s: float
    samples_per_s: float
    phases: dict[str, float]
    load_1m: float
    audio_s: float
    """Seconds of speech scored per step (all steps): the reward servers' work, which moves
    as each trainer's policy learns a speaking rate."""
    wall_s: float = 0.0


# ----------------------------------------------------------------------------- stub server


def serve_stub(port: int) -> None:
    """A reward server that answers after STUB_DELAY_S with a score from each clip's length
    (nearest 2.5 s best), so groups are not tied and both trainers update every step."""
    from aiohttp import web

    async def score(request: web.Request) -> web.Response:
        items = (await request.json())["items"]
        await asyncio.sleep(STUB_DELAY_S)
        scores = []
        for item in items:
            audio = item["audio"]
            seconds = len(base64.b64decode(audio["pcm16"])) / 2 / audio["sampleRate"]
            scores.append({"id": item["id"], "score": 1.0 / (1.0 + abs(seconds - 2.5))})
        return web.json_response({"scores": scores})

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/v1/score", score)
    app.router.add_get("/readyz", ready)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def start_servers(workload: str, job: RLAIFJob, out: Path
                  ) -> tuple[list[Child], list[RewardEndpoint]]:
    if workload == "real":
        return start_reward_servers(job, out)
    port = free_port()
    child = spawn("stub reward server", [sys.executable, __file__, "--serve-stub", str(port)],
                  out / "logs" / "reward-stub.log")
    return [child], [RewardEndpoint(name="stub", url=f"http://127.0.0.1:{port}", weight=1.0)]


# ----------------------------------------------------------------------------- our trainer


def run_ours(job: RLAIFJob, endpoints: list[RewardEndpoint], steps: int,
             out: Path) -> tuple[float, dict[str, float]]:
    """The trainer loop exactly as grpo_step_breakdown.py runs it (overlap on). Seconds per
    step from step end to step end, as TRL's (the records' times), so the loop's own
    bookkeeping between steps (logging, metrics) counts in ``other``."""
    config = bench_config(bench_spec(job, steps), endpoints, out)
    row = run_case("ours", config, endpoints, overlap=True)
    records = [json.loads(x) for x in
               (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    step_s = float(np.mean(np.diff([r["time"] for r in records])))
    phases = {p: float(row[p]) for p in OURS_PHASES[:3]}
    return step_s, {**phases, "other": step_s - sum(phases.values())}


# ----------------------------------------------------------------------------- TRL


@dataclass
class TRLTimer:
    """Phase clocks for TRL, per step: ``generate`` (model.generate), ``reward`` (the reward
    function: render + score), ``update`` (after the rollout: loss, backward, optimizer) and
    ``other`` (the rest: prompt tokenization, reference log-probs, decoding, advantages,
    the trainer's bookkeeping between steps)."""

    generate: float = 0.0
    reward: float = 0.0
    rollout_end: float = 0.0
    last_end: float | None = None
    steps: list[dict[str, float]] = field(default_factory=list)

    def timed(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                setattr(self, phase, getattr(self, phase) + time.perf_counter() - start)
        return wrapper

    def rollout(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            self.rollout_end = time.perf_counter()
            return result
        return wrapper

    def step_end(self) -> None:
        now = time.perf_counter()
        if self.last_end is not None:  # step 1 (warm-up, set-up) is not recorded
            step, update = now - self.last_end, now - self.rollout_end
            self.steps.append({"step_s": step, "generate": self.generate,
                               "reward_wait": self.reward, "update": update,
                               "other": step - self.generate - self.reward - update})
        self.last_end, self.generate, self.reward = now, 0.0, 0.0


def program_bias(tokens: list[str]) -> torch.Tensor:
    """[V, V] logit bias: row ``t`` lets only the slot after token ``t`` through (after
    <controls> the rate, after a rate the pitch, ..., after the end slot only <eos>); other
    rows (prompt tokens) are 0. -1e4 rather than -inf keeps TRL's entropy finite."""
    from rlaif.trainer.policies.prosody_lm import SLOTS

    index = {t: i for i, t in enumerate(tokens)}
    bias = torch.zeros(len(tokens), len(tokens))
    previous = [index["<controls>"]]
    for slot, values in [*SLOTS.items(), ("<eos>", [""])]:
        allowed = [index[f"{slot}={v}" if v else slot] for v in values]
        for row in previous:
            bias[row] = -1e4
            bias[row, allowed] = 0.0
        previous = allowed
    return bias


class ProgramLM(LlamaForCausalLM):
    """prosody-lm's Llama with the policy's allowed-token rule on its logits (``bias``:
    program_bias), so TRL's generate and log-probs see what our policy samples and trains."""

    bias: torch.Tensor

    def forward(self, input_ids: torch.Tensor | None = None, *args: Any,
                logits_to_keep: int | torch.Tensor = 0, **kwargs: Any) -> Any:
        output = super().forward(input_ids, *args, logits_to_keep=logits_to_keep, **kwargs)
        assert input_ids is not None, "ProgramLM needs input_ids (its bias is per token)"
        n = output.logits.shape[1]
        output.logits = output.logits + self.bias[input_ids[:, -n:]]
        return output


def run_trl(job: RLAIFJob, endpoints: list[RewardEndpoint], steps: int,
            out: Path) -> tuple[float, dict[str, float]]:
    """TRL's GRPOTrainer on the same policy weights, prompts, renderer and reward client."""
    from datasets import Dataset
    from peft import LoraConfig
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlaif import modelref
    from rlaif.trainer.loop import RewardCollector
    from rlaif.trainer.policies import load_policy
    from rlaif.trainer.policies.prosody_lm import ProsodyLM
    from rlaif.trainer.rendering import RenderQueue

    spec = bench_spec(job, steps)
    config = bench_config(spec, endpoints, out)
    grpo, lora = spec.grpo, spec.policy.lora
    timer = TRLTimer()

    # The policy object renders and encodes prompts exactly as our trainer does.
    policy = load_policy(spec.policy.model_copy(update={"finetune": "full"}),
                         torch.device("cpu"), torch.float32)
    assert isinstance(policy, ProsodyLM)
    model = ProgramLM.from_pretrained(str(modelref.resolve(spec.policy.model)),
                                      dtype=torch.float32)
    model.bias = program_bias(policy.tokens)
    model.generate = timer.timed("generate", model.generate)  # type: ignore[method-assign]

    words = Tokenizer(models.WordLevel(vocab=policy.index, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Split(SEPARATOR, behavior="removed")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<bos>",
                                        eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    prompts = load_prompts(config.resolve_path(spec.data.prompts), spec.label_schema)
    texts = [SEPARATOR.join(policy.tokens[i] for i in policy.encode_prompt(p).tolist())
             for p in prompts]
    for prompt, text in zip(prompts, texts, strict=True):
        if tokenizer(text)["input_ids"] != policy.encode_prompt(prompt).tolist():
            raise RuntimeError(f"the TRL tokenizer does not reproduce the prompt ids of "
                               f"{prompt.text!r}")
    dataset = Dataset.from_list([{"prompt": t, "index": i} for i, t in enumerate(texts)])

    client = RewardClient(endpoints)
    step = [0]

    def reward(completion_ids: list[list[int]], index: list[int], **_: Any) -> list[float | None]:
        """Render each group in threads and send it as soon as it is rendered, as our loop."""
        step[0] += 1
        groups = [prompts[i] for i in index[::grpo.group_size]]
        collector = RewardCollector(client, groups, grpo.group_size, step[0], 0, overlap=True)
        audio: list[np.ndarray] = []
        with RenderQueue.of(policy, audio, collector) as renders:
            for g, prompt in enumerate(groups):
                rows = completion_ids[g * grpo.group_size:(g + 1) * grpo.group_size]
                renders.add([r[:-1] if r and r[-1] == policy.stop_id else r for r in rows],
                            prompt)
        return [None if np.isnan(t) else float(t) for t in collector.result(audio).total]

    class StepClock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *_: Any, **__: Any) -> None:
            timer.step_end()

    args = GRPOConfig(
        output_dir=str(out / "trl"), max_steps=steps, seed=spec.seed, use_cpu=True, bf16=False,
        learning_rate=grpo.learning_rate, beta=grpo.kl_coef, epsilon=grpo.clip_epsilon,
        num_generations=grpo.group_size,
        per_device_train_batch_size=grpo.group_size * grpo.batch_size,
        gradient_accumulation_steps=1, num_iterations=grpo.inner_iterations,
        max_completion_length=grpo.max_new_tokens, temperature=grpo.temperature,
        top_p=grpo.top_p, loss_type="grpo", scale_rewards="group",
        max_grad_norm=spec.trainer.deepspeed.gradient_clipping, lr_scheduler_type="constant",
        gradient_checkpointing=False, logging_steps=10**6, save_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0)
    # TRL 1.16 refuses an adapter on lm_head (its fused head reads lm_head.weight directly).
    peft = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=[m for m in lora.target_modules if m != "lm_head"],
                      bias="none")
    trainer = GRPOTrainer(model=model, reward_funcs=timer.timed("reward", reward), args=args,
                          train_dataset=dataset, processing_class=tokenizer, peft_config=peft,
                          callbacks=[StepClock()])
    trainer._generate_and_score_completions = timer.rollout(  # type: ignore[method-assign]
        trainer._generate_and_score_completions)
    with client:
        trainer.train()
    return (float(np.mean([s["step_s"] for s in timer.steps])),
            {p: float(np.mean([s[p] for s in timer.steps])) for p in OURS_PHASES})


# ----------------------------------------------------------------------------- driver


def count_audio() -> list[float]:
    """Sums the seconds of audio every RewardClient in this process sends (both trainers
    score through RewardClient.submit)."""
    total = [0.0]
    submit = RewardClient.submit

    def counting(self: RewardClient, items: Sequence[ScoreItem]) -> Any:
        total[0] += sum(len(item.audio) / item.sample_rate for item in items)
        return submit(self, items)

    RewardClient.submit = counting  # type: ignore[method-assign]
    return total


def worker(args: argparse.Namespace) -> None:
    """One run in this process; its result goes to ``--result`` as JSON."""
    endpoints = [RewardEndpoint.model_validate(e) for e in json.loads(args.endpoints)]
    run = run_ours if args.worker == "ours" else run_trl
    load, job, audio = os.getloadavg()[0], load_job(JOB), count_audio()
    job.spec.grpo.async_rollouts = args.async_rollouts  # ours only: TRL has no such mode
    step_s, phases = run(job, endpoints, args.steps, Path(args.result).parent)
    samples = job.spec.grpo.group_size * job.spec.grpo.batch_size
    result = RunResult(args.worker, args.workload, args.rep, step_s, samples / step_s, phases,
                       load, audio[0] / args.steps)
    Path(args.result).write_text(json.dumps(asdict(result)))


def run_one(trainer: str, workload: str, rep: int, endpoints: list[RewardEndpoint],
            steps: int, out: Path, async_rollouts: int) -> RunResult:
    result = out / f"{workload}-{trainer}-{rep}" / "result.json"
    result.parent.mkdir(parents=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--worker", trainer, "--workload", workload,
                    "--rep", str(rep), "--steps", str(steps), "--result", str(result),
                    "--async-rollouts", str(async_rollouts),
                    "--endpoints", json.dumps([e.model_dump() for e in endpoints])],
                   check=True, cwd=REPO)
    row = RunResult(**json.loads(result.read_text()))
    row.wall_s = time.perf_counter() - start
    print(f"  {workload} {trainer} rep {rep}: {row.step_s:.3f} s/step, "
          f"{row.samples_per_s:.2f} samples/s, {row.audio_s:.1f} s of audio/step, "
          f"load {row.load_1m:.2f}, run {row.wall_s:.0f} s", flush=True)
    return row


def print_table(rows: list[RunResult], steps: int) -> None:
    print(f"\nSeconds per step, means of steps 2..{steps} (phases: see the module docstring)\n")
    print("| trainer | workload | rep | s/step | samples/s | generate | reward wait | update |"
          " other | audio s/step | load 1m |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r.trainer} | {r.workload} | {r.rep} | {r.step_s:.3f} | {r.samples_per_s:.2f} "
              f"| {r.phases['generate']:.3f} | {r.phases['reward_wait']:.3f} "
              f"| {r.phases['update']:.3f} | {r.phases['other']:.3f} | {r.audio_s:.1f} "
              f"| {r.load_1m:.2f} |")
    print("\n| workload | rep | ours samples/s | TRL samples/s | ours / TRL |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for (workload, rep), pair in pairs(rows).items():
        print(f"| {workload} | {rep} | {pair[0]:.2f} | {pair[1]:.2f} | {pair[0] / pair[1]:.2f} |")


def pairs(rows: list[RunResult]) -> dict[tuple[str, int], tuple[float, float]]:
    """(ours, TRL) samples/s of each repetition: neighbours in time, so a ratio compares
    runs under about the same machine load (a mean over reps would not)."""
    rate = {(r.workload, r.rep, r.trainer): r.samples_per_s for r in rows}
    return {(w, rep): (rate[w, rep, "ours"], rate[w, rep, "trl"])
            for w, rep, trainer in rate if trainer == "ours"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--workloads", default="cheap,real")
    parser.add_argument("--async-rollouts", type=int, default=0, choices=[0, 1],
                        help="this trainer's spec.grpo.asyncRollouts (TRL has no such mode)")
    parser.add_argument("--serve-stub", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--rep", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--endpoints", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stub is not None:
        return serve_stub(args.serve_stub)
    if args.worker is not None:
        return worker(args)
    if args.steps < 2:
        parser.error("--steps: at least 2 (step 1 is warm-up and not counted)")
    workloads = args.workloads.split(",")
    if unknown := set(workloads) - {"cheap", "real"}:
        parser.error(f"--workloads: unknown {sorted(unknown)} (cheap, real)")
    job = load_job(JOB)
    out = Path(tempfile.mkdtemp(prefix="rlaif-bench-trl-"))
    print(f"load before: {os.getloadavg()}; runs under {out}", flush=True)
    start, rows = time.perf_counter(), []
    for workload in workloads:
        (out / workload).mkdir()
        servers, endpoints = start_servers(workload, job, out / workload)
        try:
            wait_ready(servers, endpoints, 600)
            for rep in range(1, args.reps + 1):
                for trainer in ("ours", "trl"):
                    rows.append(run_one(trainer, workload, rep, endpoints, args.steps, out,
                                        args.async_rollouts))
        finally:
            for server in servers:
                server.stop()
    print(f"load after: {os.getloadavg()}; whole benchmark {time.perf_counter() - start:.0f} s")
    print_table(rows, args.steps)
    (out / "results.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
