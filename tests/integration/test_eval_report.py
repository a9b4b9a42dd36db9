"""``rlaif eval`` end to end: a trained adapter against the base policy on held-out prompts,
scored by a real acoustic-judge server that the command starts, and the report opened in
Debian's headless ``chromium`` through Selenium and ``chromedriver`` (scripts/bootstrap.sh
installs both): its audio players must load and play the inlined WAVs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rlaif.api.validation import load_job

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROMPTS = 3


def trained_adapter(job_path: Path, out: Path) -> Path:
    """A LoRA adapter that differs from the base: the prosody-lm policy with its zero-init
    LoRA B matrices set to small seeded noise, saved the way a run saves it."""
    from rlaif.trainer.heldout import policy_at

    policy = policy_at(load_job(job_path).spec.policy, None, "cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    policy.save_pretrained(out / "adapter")
    return out


def job_file(tmp: Path) -> Path:
    """The quickstart scored by its acoustic judge only, on the first held-out prompts."""
    doc = yaml.safe_load((REPO / "examples" / "quickstart-cpu.yaml").read_text())
    lines = (REPO / "examples" / "data" / "quickstart-heldout.jsonl").read_text().splitlines()
    (tmp / "heldout.jsonl").write_text("\n".join(lines[:PROMPTS]) + "\n")
    shutil.copytree(REPO / "examples" / "data", tmp / "data")
    doc["spec"]["rewards"] = [r for r in doc["spec"]["rewards"] if r["name"] == "alignment"]
    doc["spec"]["evaluation"] = {"prompts": "heldout.jsonl", "samplesPerPrompt": 2}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_eval_writes_a_report_whose_audio_plays_in_chromium(tmp_path: Path) -> None:
    job = job_file(tmp_path)
    run = trained_adapter(job, tmp_path / "run")
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "rlaif.cli", "eval", str(job), "--checkpoint",
                           str(run), "--out", str(out)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text())
    assert set(result["metrics"]) == {"reward", "alignment"}
    change = result["metrics"]["alignment"]
    assert change["n"] == 2 * PROMPTS and change["low"] <= change["mean"] <= change["high"]
    base = result["samples"]["base"]
    assert [(r["prompt"], r["sample"]) for r in base] == [(i, j) for i in range(PROMPTS)
                                                          for j in range(2)]
    assert all((out / r["audio"]).stat().st_size > 1000 for r in base)
    assert "alignment: " in proc.stdout and "95% CI" in proc.stdout
    assert f"report: {out / 'report.html'}" in proc.stdout

    html = (out / "report.html").read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "speechRate" in html  # the acoustic judge's per-dimension figures
    players = open_report(out / "report.html")
    assert len(players) == 2 * PROMPTS  # base and trained for each prompt
    for player in players:
        assert player["error"] is None, player
        assert player["readyState"] >= 1 and player["duration"] > 0.3, player
        assert player["played"] is True, player
    images = players[0]["images"]
    assert len(images) == 2 and all(width > 100 for width in images)


PLAYER_STATE = """
const done = arguments[arguments.length - 1];
const images = [...document.images].map(i => i.naturalWidth);
Promise.all([...document.querySelectorAll('audio')].map(a => new Promise(resolve => {
  const report = played => resolve({readyState: a.readyState, duration: a.duration,
                                    error: a.error && a.error.code, played, images});
  const play = () => a.play().then(() => { a.pause(); report(true); },
                                   e => report(String(e)));
  if (a.readyState >= 1) play();
  else { a.addEventListener('loadedmetadata', play); a.addEventListener('error',
         () => report(false)); a.load(); }
}))).then(done);
"""


def open_report(report: Path) -> list[dict]:
    """Each <audio> element's state in a real headless Chromium, after it loaded and played."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_bin, "chromium and chromedriver: run scripts/bootstrap.sh"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--mute-audio",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_bin))
    try:
        driver.set_script_timeout(60)
        driver.get(report.as_uri())
        return list(driver.execute_async_script(PLAYER_STATE))
    finally:
        driver.quit()
