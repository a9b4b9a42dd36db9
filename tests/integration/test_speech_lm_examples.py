"""The speech-LM examples start and train: ``rlaif run`` on each GPU example with its models
swapped for tiny random-init checkpoints of the same architectures (Llasa: Llama + X-codec2;
CSM: CsmForConditionalGeneration with Mimi; their real classes and Llama-3-style
tokenizers, written with save_pretrained and loaded through the production path), the real
Whisper tiny.en server for intelligibility, a tiny WavLM speaker server for similarity, the
acoustic judge for the Qwen2-Audio judge and DNSMOS for MOS.
Everything else in the example (kind, LoRA, labelInstruction, gradient checkpointing, GRPO
settings) is kept; sizes, GPUs and volumes are cut to this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from rlaif.trainer.policies.tiny import write_tiny_csm, write_tiny_llasa
from tests.integration.reward_support import build_tiny_wavlm

REPO = Path(__file__).resolve().parents[2]
LABELS = {"structure": "Statement", "emotion": "Neutral", "speechRate": "Medium Slow",
          "intonation": "Declarative"}
MAX_TOKENS = 12
"""Llasa: 0.24 s of speech, CSM: 0.96 s (frames)."""
DRIFT = 1e-4
"""Largest |recomputed - sampled| log-prob allowed: the update trains the sampled tokens."""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("speech-lms")
    torch.manual_seed(0)  # the WavLM's random weights
    write_tiny_llasa(tmp / "llasa", tmp / "xcodec2")
    write_tiny_csm(tmp / "csm")
    build_tiny_wavlm(tmp / "wavlm")
    voices = tmp / "data" / "voices"
    voices.mkdir(parents=True)
    subprocess.run(["espeak-ng", "-w", str(voices / "ann.wav"), "-p", "30",
                    "I read the news every morning."], check=True)
    lines = [{"text": "The committee approved the budget.", "labels": LABELS},
             {"text": "We met at the station at noon.", "labels": LABELS}]
    (tmp / "data" / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    reference = {"audio": "voices/ann.wav", "text": "I read the news every morning."}
    (tmp / "data" / "clone.jsonl").write_text("".join(
        json.dumps({**x, "reference": reference}) + "\n" for x in lines))
    return {"llasa": tmp / "llasa", "xcodec2": tmp / "xcodec2", "csm": tmp / "csm",
            "wavlm": tmp / "wavlm", "prompts": tmp / "data" / "prompts.jsonl",
            "clone": tmp / "data" / "clone.jsonl"}


def shrink(example: str, models: dict[str, Path], prompts: str) -> dict[str, Any]:
    """The example with tiny models, local rewards, and a 2-step, 1-rank CPU budget."""
    job = yaml.safe_load((REPO / "examples" / example).read_text())
    spec = job["spec"]
    policy = spec["policy"]
    if policy["kind"] == "codec-lm":
        policy.update(model=str(models["llasa"]), codec=str(models["xcodec2"]))
    else:
        policy["model"] = str(models["csm"])
    policy["dtype"] = "auto"
    tiny = {"asr": "builtin:whisper-tiny.en", "speaker": str(models["wavlm"]),
            "mos": "builtin:dnsmos", "judge": "builtin:acoustic"}
    spec["rewards"] = [{"name": r["name"], "kind": r["kind"], "model": tiny[r["kind"]],
                        "weight": r["weight"]}
                       for r in spec["rewards"] if r.get("kind") in tiny]
    if not any(r["kind"] in ("mos", "speaker") for r in spec["rewards"]):
        # Random models' speech scores 0 on WER and on the judge's labels alike: a graded
        # reward gives the groups the spread without which GRPO skips its update.
        spec["rewards"].append({"name": "spread", "kind": "mos", "model": "builtin:dnsmos",
                                "weight": 0.1})
    spec["data"] = {"prompts": str(models[prompts])}
    spec["grpo"].update(groupSize=2, batchSize=1, maxNewTokens=MAX_TOKENS)
    spec["trainer"] = {"processesPerNode": 1, "deepspeed": {"zeroStage": 0}}
    spec["checkpoint"] = {"everySteps": 50, "keep": 1}
    for field in ("labeling", "volumes", "volumeMounts", "evaluation"):
        spec.pop(field, None)
    return job


@pytest.mark.slow
@pytest.mark.parametrize(("example", "prompts"), [("grpo-rlaif-spa.yaml", "prompts"),
                                                  ("grpo-csm.yaml", "prompts"),
                                                  ("grpo-voice-clone.yaml", "clone")])
def test_example_trains_two_grpo_steps_of_its_architecture(
        example: str, prompts: str, models: dict[str, Path], tmp_path: Path) -> None:
    job = shrink(example, models, prompts)
    path, out = tmp_path / "job.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(job))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    proc = subprocess.run([sys.executable, "-m", "rlaif.cli", "run", str(path), "--out",
                           str(out), "--steps", "2", "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=env)
    logs = "".join(p.read_text()[-2000:] for p in (out / "logs").glob("*.log"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert r["skipped"] == 0.0, r  # random speech: the rewards never all tie
        assert r["logprob_drift"] < DRIFT, r  # sampled log-probs = recomputed (per frame)
        assert 0 < r["completion_length"] <= MAX_TOKENS
        assert {f"reward/{x['name']}" for x in job["spec"]["rewards"]} <= set(r)
    if prompts == "clone":  # the reference audio reached the similarity server
        assert all(0 < r["reward/similarity"] <= 1 for r in records), records
    assert (out / "adapter" / "adapter_config.json").exists()


def test_voice_prompt_reference_reaches_the_similarity_reward(models: dict[str, Path]) -> None:
    """The trainer's reward requests carry each prompt's reference recording (read from the
    prompts file's voice prompt): a sample that is that recording scores 1 (cosine 1),
    another voice lower. (The offline WavLM is random-init: it tells recordings apart, not
    speakers, so "the reference speaker" here is the reference's own audio.)"""
    from rlaif.config import RewardEndpoint
    from rlaif.data import load_prompts
    from rlaif.reward_client import RewardClient
    from rlaif.rewards.server import ServerSettings
    from rlaif.trainer.loop import RewardCollector
    from tests.integration.reward_support import running_server, speak

    prompts = load_prompts(models["clone"])
    assert prompts[0].reference is not None
    same_voice = prompts[0].reference.waveform()  # the sample is the reference recording
    other_voice = speak("Please close the door behind you.", pitch=90, rate=220)
    settings = ServerSettings(kind="speaker", model=str(models["wavlm"]), device="cpu")
    with running_server(settings) as server, RewardClient(
            [RewardEndpoint(name="similarity", url=server.url, weight=1.0)]) as client:
        collector = RewardCollector(client, prompts[:1], group_size=2, step=1, rank=0,
                                    overlap=False)
        scores = collector.result([same_voice, other_voice])
    similarity = scores.per_reward["similarity"]
    assert scores.errors == {"similarity": 0}
    assert 0 < similarity[1] < similarity[0], scores.details
    assert similarity[0] == pytest.approx(1.0, abs=1e-4)
