"""``rlaif eval`` beyond LoRA: a DLPO run's WaveGrad 2 (the tiny CPU example, scored by a real
DNSMOS server the command starts) and a GRPO ``finetune: full`` checkpoint (the quickstart's
prosody-lm, scored by the real acoustic judge), each saved the way the trainer saves it; and
a folder that holds neither kind of policy."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from rlaif.api.validation import load_job
from rlaif.evaluate import evaluate
from rlaif.runner import EXIT_INVALID, RunError

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROMPTS = 2
SAMPLES = 2


def job_file(tmp: Path, example: str, heldout: str, spec: dict) -> Path:
    """An example job with spec.evaluation on its first held-out prompts (and ``spec`` over
    its spec), beside a copy of examples/data."""
    doc = yaml.safe_load((REPO / "examples" / example).read_text())
    lines = (REPO / "examples" / "data" / heldout).read_text().splitlines()
    (tmp / "heldout.jsonl").write_text("\n".join(lines[:PROMPTS]) + "\n")
    shutil.copytree(REPO / "examples" / "data", tmp / "data")
    doc["spec"].update(spec, evaluation={"prompts": "heldout.jsonl",
                                         "samplesPerPrompt": SAMPLES})
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def perturb(module: torch.nn.Module, scale: float) -> None:
    """Seeded noise on every weight: a policy that differs from the base."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))


def run_eval(job: Path, checkpoint: Path, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: no thread spinning
    proc = subprocess.run([sys.executable, "-m", "rlaif.cli", "eval", str(job), "--checkpoint",
                           str(checkpoint), "--out", str(out)], capture_output=True, text=True,
                          timeout=300, cwd=job.parent, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict = json.loads((out / "eval.json").read_text())
    keys = [(i, j) for i in range(PROMPTS) for j in range(SAMPLES)]
    for side in ("base", "trained"):
        assert [(r["prompt"], r["sample"]) for r in result["samples"][side]] == keys
    for change in result["metrics"].values():
        assert change["n"] == PROMPTS * SAMPLES and change["low"] <= change["mean"]
        assert change["mean"] <= change["high"]
    page = (out / "report.html").read_text()
    assert len(re.findall(r"<audio controls[^>]*src=\"data:audio/wav;base64,", page)) == (
        2 * PROMPTS)  # base and trained, first sample of each prompt
    return result


def audio(out: Path, rows: list[dict]) -> list[np.ndarray]:
    return [sf.read(out / r["audio"], dtype="float32")[0] for r in rows]


def test_dlpo_eval_pairs_the_base_and_a_trained_wavegrad2(tmp_path: Path) -> None:
    from rlaif import modelref
    from rlaif.data import load_prompts
    from rlaif.trainer.dlpo import speak
    from rlaif.trainer.evaluation import sample_seed
    from rlaif.trainer.wavegrad2.modeldir import load_model, save_model

    job = job_file(tmp_path, "dlpo-wavegrad2-cpu.yaml", "dlpo-heldout.jsonl", {})
    spec = load_job(job).spec
    net = load_model(modelref.resolve(spec.policy.model))
    perturb(net, 0.02)
    save_model(net, tmp_path / "run" / "adapter")  # DLPOAlgorithm.save_final's layout
    out = tmp_path / "report"
    result = run_eval(job, tmp_path / "run", out)
    assert {"reward", "naturalness"} <= set(result["metrics"])
    ovrl = [r["details"]["naturalness"]["ovrl"] for r in result["samples"]["base"]]
    assert all(1.0 <= v <= 5.0 for v in ovrl)  # DNSMOS heard each render
    base, trained = audio(out, result["samples"]["base"]), audio(out, result["samples"]["trained"])
    assert any(b.shape != t.shape or not np.allclose(b, t, atol=1e-3)
               for b, t in zip(base, trained, strict=True))
    # the base side is what training's held-out evaluation renders from the same seeds
    base_net = load_model(modelref.resolve(spec.policy.model))
    prompts = load_prompts(tmp_path / "heldout.jsonl", spec.label_schema)
    seed = result["seed"]
    direct = speak(base_net, base_net.config.schedule.transitions(spec.dlpo.denoising_steps),
                   prompts, [sample_seed(seed, i) for i in range(PROMPTS)], SAMPLES)
    for written, wave in zip(base, direct, strict=True):
        assert written.shape == wave.shape
        np.testing.assert_allclose(written, np.clip(wave, -1, 1), atol=1e-4)


def test_grpo_full_fine_tune_checkpoint(tmp_path: Path) -> None:
    from rlaif.trainer.heldout import policy_at

    job = job_file(tmp_path, "quickstart-cpu.yaml", "quickstart-heldout.jsonl", {})
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["rewards"] = [r for r in doc["spec"]["rewards"] if r["name"] == "alignment"]
    doc["spec"]["policy"]["finetune"] = "full"
    job.write_text(yaml.safe_dump(doc))
    policy = policy_at(load_job(job).spec.policy, None, "cpu")
    perturb(policy.model, 0.5)
    policy.save_pretrained(tmp_path / "run" / "adapter")  # GRPOAlgorithm.save_final's layout
    assert not (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    out = tmp_path / "report"
    result = run_eval(job, tmp_path / "run", out)
    assert set(result["metrics"]) == {"reward", "alignment"}
    base, trained = audio(out, result["samples"]["base"]), audio(out, result["samples"]["trained"])
    assert any(b.shape != t.shape or not np.allclose(b, t)
               for b, t in zip(base, trained, strict=True))


@pytest.mark.parametrize("example", ["quickstart", "dlpo-wavegrad2"])
def test_a_folder_without_a_policy_is_named(tmp_path: Path, example: str) -> None:
    job = REPO / "examples" / f"{example}-cpu.yaml"
    heldout = str(REPO / "examples" / "data" / f"{example.split('-')[0]}-heldout.jsonl")
    empty = tmp_path / "run"
    (empty / "adapter").mkdir(parents=True)
    (empty / "adapter" / "config.json").write_text("{}")  # no weights beside it
    with pytest.raises(RunError) as caught:
        evaluate(job, str(empty), heldout, tmp_path / "out")
    assert caught.value.code == EXIT_INVALID
    message = str(caught.value)
    assert str(empty) in message and "expected" in message
    assert ("WaveGrad 2" in message) == example.startswith("dlpo")
    with pytest.raises(RunError, match="no such folder"):
        evaluate(job, str(tmp_path / "missing"), heldout, tmp_path / "out")
