"""The quickstart learns: ``rlaif run examples/quickstart-cpu.yaml`` as the README runs it,
with the real Whisper tiny.en, acoustic judge and DNSMOS servers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

MARGIN = 0.03
"""Required rise of the mean total reward from the first to the last epoch of prompts.

Both windows hold the same 16 prompts, so the difference is the policy's. The run is
seeded (same samples while rewards agree); seeded runs of this and two neighbouring
settings (learning rate 1e-2, klCoef 0.01/0.05) rose by 0.076, 0.059 and 0.084, and the
sampling noise of a difference of two 64-sample means is about 0.02, so 0.03 is met
reliably while a policy that does not learn (rise ~0 +- 0.02) fails.
"""


@pytest.mark.slow
def test_quickstart_raises_the_reward(tmp_path: Path) -> None:
    out = tmp_path / "quickstart"
    proc = subprocess.run([sys.executable, "-m", "rlaif.cli", "run",
                           str(REPO / "examples" / "quickstart-cpu.yaml"), "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["window_steps"] == 8  # one epoch each
    assert summary["reward_last"] > summary["reward_first"] + MARGIN, summary
    assert set(summary["by_reward"]) == {"intelligibility", "alignment", "naturalness"}
    assert (out / "reward_curve.png").stat().st_size > 10_000
    assert len(list((out / "samples" / "step-000024").glob("*.wav"))) == 8
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "merged" / "model.safetensors").exists()  # checkpoint.saveMerged
    assert "step 24/24" in proc.stdout and "done: reward" in proc.stdout
    # held-out evaluation: the base policy, every 8 steps, paired with the base at the end
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("kind") == "eval"]
    assert [r["step"] for r in evals] == [0, 8, 16, 24]
    assert all(r["eval_samples"] == 16 and 0 < r["eval/reward"] <= 1 for r in evals)
    assert not [r["hacking"] for r in evals if r["hacking"]]  # the guard stays quiet
    held_out = json.loads((out / "summary.json").read_text())["evaluation"]
    change = held_out["change"]["reward"]
    assert change["n"] == 16 and change["low"] <= change["mean"] <= change["high"]
    assert "held-out reward (steps 0 -> 24, same prompts and seeds)" in proc.stdout
    assert "RewardHacking" not in proc.stdout + proc.stderr
    assert (out / "best" / "adapter").is_dir() and (out / "best" / "merged").is_dir()
    assert "listening report (base vs trained): rlaif eval" in proc.stdout
