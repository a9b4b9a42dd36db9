"""`rlaif run` on a resume: old steps are not re-printed, and a failure says what a rerun does."""

from __future__ import annotations

import json
from pathlib import Path

from rlaif.constants import CHECKPOINT_STEP_DIR
from rlaif.files import atomic_write_text
from rlaif.runner import follow_metrics, resume_note
from rlaif.trainer.checkpoint import META


def lines(*steps: int, tag: str = "old") -> str:
    return "".join(json.dumps({"step": s, "tag": tag}) + "\n" for s in steps)


def poll(metrics) -> list[tuple[int, str]]:
    return [(r["step"], r["tag"]) for r in iter(lambda: next(metrics), {})]


def test_a_resume_prints_only_the_new_steps(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(lines(1, 2, 3, 4, 5))  # the previous run got to step 5, checkpointed at 3
    metrics = follow_metrics(path, after_step=3)
    assert poll(metrics) == []  # nothing from before the trainer rewrote the file
    atomic_write_text(path, lines(1, 2, 3))  # the trainer's truncate_after(3)
    with open(path, "a") as f:
        f.write(lines(4, tag="new"))
    assert poll(metrics) == [(4, "new")]
    with open(path, "a") as f:
        f.write(lines(5, tag="new") + '{"step": 6')  # a torn line waits for its end
    assert poll(metrics) == [(5, "new")]


def test_a_fresh_run_follows_from_the_first_step(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    metrics = follow_metrics(path)
    assert poll(metrics) == []
    path.write_text(lines(1, 2, tag="new"))
    assert poll(metrics) == [(1, "new"), (2, "new")]


def test_the_failure_message_says_where_a_rerun_resumes(tmp_path: Path) -> None:
    assert resume_note(tmp_path, 50) == ("no checkpoint yet (one is written every 50 steps): "
                                         "running the same command again starts from step 0")
    for step, complete in ((50, True), (100, True), (150, False)):
        folder = tmp_path / "checkpoints" / CHECKPOINT_STEP_DIR.format(step=step)
        folder.mkdir(parents=True)
        if complete:
            (folder / META).write_text("{}")
    newest = tmp_path / "checkpoints" / CHECKPOINT_STEP_DIR.format(step=100)
    assert resume_note(tmp_path, 50) == (f"running the same command again resumes from step "
                                         f"100 (checkpoint {newest})")
