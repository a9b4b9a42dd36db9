"""Texts to label: read from .txt, .jsonl or .csv and split into sentences.

Every sentence becomes one training prompt, so splitting is where the data set's
granularity is decided. Sentences are keyed by their whitespace-collapsed text
(``sentence_key``), which is also how a rerun recognises what is already labelled.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

# Words whose trailing period does not end a sentence (ones that often end a sentence,
# like "etc." or "no.", are left out: a wrong split costs less than a merged pair).
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "e.g", "i.e",
                           "fig", "approx", "dept", "inc", "ltd", "mt", "cf"})

# A sentence ends at . ! ? or … (plus closing quotes/brackets), before whitespace and a
# character that can start a sentence.
_BOUNDARY = re.compile(r"""([.!?…]+["'”’)\]]*)\s+(?=["'“‘(\[]?[A-Z0-9])""")
_TERMINAL = re.compile(r"""[.!?…:;]["'”’)\]]*$""")


class InputFileError(ValueError):
    """Unreadable or malformed input; the message names the file (and line)."""


def sentence_key(text: str) -> str:
    """The identity of a sentence in the prompts file: stripped, inner whitespace collapsed."""
    return " ".join(text.split())


def split_sentences(text: str) -> list[str]:
    """Sentences of one text unit, in order (abbreviations and initials do not split)."""
    text = sentence_key(text)
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(text):
        before = text[start:match.start()].rsplit(" ", 1)[-1]
        if match.group(1) == "." and _is_abbreviation(before):
            continue
        sentences.append(text[start:match.end(1)])
        start = match.end()
    sentences.append(text[start:])
    return [s for s in sentences if s]


def _is_abbreviation(word: str) -> bool:
    word = word.lstrip("\"'“‘([").lower()
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def read_sentences(path: Path) -> list[str]:
    """Unique sentences of an input file, in first-seen order."""
    readers = {".txt": _txt_units, ".jsonl": _jsonl_units, ".csv": _csv_units}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise InputFileError(f"{path}: unsupported input type {path.suffix!r} "
                             f"(use {', '.join(readers)})")
    try:
        content = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read input: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    seen: dict[str, None] = {}
    for unit in reader(path, content):
        for sentence in split_sentences(unit):
            seen.setdefault(sentence)
    if not seen:
        raise InputFileError(f"{path}: no text to label")
    return list(seen)


def _txt_units(path: Path, content: str) -> Iterator[str]:
    """Line breaks end a text unit, except inside hard-wrapped prose: a line that stops
    mid-sentence followed by one starting in lower case continues it."""
    unit: list[str] = []
    for line in content.splitlines():
        line = line.strip()
        if unit and (not line or _TERMINAL.search(unit[-1]) or not line[0].islower()):
            yield " ".join(unit)
            unit = []
        if line:
            unit.append(line)
    if unit:
        yield " ".join(unit)


def _jsonl_units(path: Path, content: str) -> Iterator[str]:
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputFileError(f"{path}:{number}: invalid JSON: {exc.msg}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise InputFileError(f'{path}:{number}: expected an object with a string "text"')
        yield obj["text"]


def _csv_units(path: Path, content: str) -> Iterator[str]:
    rows = csv.reader(io.StringIO(content, newline=""))
    try:
        header = next(rows, [])
        columns = [h.strip().lower() for h in header]
        if "text" not in columns:
            raise InputFileError(f'{path}:1: the header has no "text" column (columns: {header})')
        index = columns.index("text")
        for row in rows:
            if not any(cell.strip() for cell in row):
                continue
            if index >= len(row):
                raise InputFileError(f'{path}:{rows.line_num}: row has no "text" cell')
            yield row[index]
    except csv.Error as exc:
        raise InputFileError(f"{path}:{rows.line_num}: malformed CSV: {exc}") from None
