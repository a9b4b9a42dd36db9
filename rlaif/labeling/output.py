"""The labeller's output: the prompts file (rlaif/data.py), appended one fsynced line at a time.

A record on disk is never lost to a later crash, and a rerun skips every text already in the
file (labelled or recorded unlabelled). A crash in the middle of a write leaves a last line
without its newline; opening the file for a rerun cuts that torn line off, and its sentence
is labelled again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from rlaif.api.labels import LabelSchema
from rlaif.data import PromptFileError, parse_prompt_line
from rlaif.files import fsync_dir
from rlaif.labeling.sentences import sentence_key

log = logging.getLogger(__name__)


def labelled_record(text: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"text": text, "labels": labels}


def unlabelled_record(text: str, reason: str) -> dict[str, Any]:
    """A sentence the labeller gave up on; the trainer skips it, reruns skip it knowingly."""
    return {"text": text, "labels": None, "error": reason}


def repair_torn_tail(path: Path) -> bool:
    """Cut a last line that has no newline (a write interrupted by a crash); True if cut."""
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return False
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        f.seek(0)
        keep = f.read().rfind(b"\n") + 1
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    log.warning("%s: removed a torn last line (%d bytes) left by an interrupted run; its "
                "sentence will be labelled again", path, size - keep)
    return True


def read_records(path: Path, schema: LabelSchema) -> list[dict[str, Any]]:
    """Every record of an existing output file, checked like the trainer's loader does, with
    labels in the schema's spelling.

    A bad line in the middle is not the labeller's to fix: it raises PromptFileError naming it.
    """
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            prompt = parse_prompt_line(line, schema, path.parent)
        except ValueError as exc:
            raise PromptFileError(f"{path}:{number}: {exc} (fix or remove the line, then "
                                  f"rerun to resume)") from None
        records.append(json.loads(line) if prompt is None
                       else labelled_record(prompt.text, prompt.labels))
    return records


class PromptsWriter:
    """Appends records to the prompts file; knows which sentences it already holds."""

    def __init__(self, path: Path, schema: LabelSchema) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        self.done: set[str] = set()
        if existed:
            repair_torn_tail(path)
            self.done = {sentence_key(r["text"]) for r in read_records(path, schema)}
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if not existed:
            fsync_dir(path.parent)

    def append(self, record: dict[str, Any]) -> None:
        """One whole line, then fsync: once this returns, a crash cannot lose the record."""
        data = memoryview((json.dumps(record, ensure_ascii=False) + "\n").encode())
        while data:
            data = data[os.write(self._fd, data):]
        os.fsync(self._fd)
        self.done.add(sentence_key(record["text"]))

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> PromptsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
