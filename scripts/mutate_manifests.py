"""Mutation run of the manifest loader: hostile variants of examples/*.yaml through validation.

Each case is one example with one mutation. Mutations marked invalid must be refused; the
others (random byte flips, truncation) may go either way. Every case must end in "valid" or
an InvalidManifest with messages, never another exception. Prints the counts and exits 1 on
any traceback or accepted-invalid case:

    .venv/bin/python scripts/mutate_manifests.py [--cases 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import random
import re
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from rlaif.api.validation import InvalidManifest, load_file

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BOMB = "".join(f"{k}: &{k} [{', '.join([f'*{p}' if p else 'x'] * 9)}]\n"
               for p, k in zip(["", "a", "b", "c", "d", "e"], "abcdef", strict=True))

TextMutation = Callable[[str, random.Random], bytes]
DocMutation = Callable[[dict[str, Any], random.Random], None]


def _fields(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """Every (path, scalar) leaf of a document."""
    if isinstance(doc, dict):
        return [leaf for k, v in doc.items() for leaf in _fields(v, (*path, k))]
    if isinstance(doc, list):
        return [leaf for i, v in enumerate(doc) for leaf in _fields(v, (*path, i))]
    return [(path, doc)]


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        doc = doc[part]
    doc[path[-1]] = value


def _leaf(kind: type, doc: dict[str, Any], rng: random.Random) -> tuple[Any, ...] | None:
    leaves = [p for p, v in _fields(doc) if isinstance(v, kind) and not isinstance(v, bool)
              and "metadata" not in p]
    return rng.choice(leaves) if leaves else None


def _numbers(values: list[Any]) -> DocMutation:
    """A random spec number becomes one of ``values`` (each out of any sane range)."""
    def mutate(doc: dict[str, Any], rng: random.Random) -> None:
        path = _leaf(float, doc, rng) or _leaf(int, doc, rng)
        if path is None or path[-1] in ("metricsPort",):
            path = ("spec", "steps")
        _set(doc, path, rng.choice(values))
    return mutate


def _spec_value(path: tuple[Any, ...], value: Any) -> DocMutation:
    def mutate(doc: dict[str, Any], rng: random.Random) -> None:
        if doc.get("kind") == "RewardServer" and path[:2] == ("spec", "rewards"):
            _set(doc, ("spec", *path[3:]), value)
        else:
            _set(doc, path, value)
    return mutate


def _wrong_reward_model(doc: dict[str, Any], rng: random.Random) -> None:
    spec = doc["spec"]
    target = spec if doc["kind"] == "RewardServer" else spec["rewards"][0]
    target.pop("serverRef", None)
    target["kind"] = rng.choice(["asr", "speaker", "judge"])
    target["model"] = "builtin:dnsmos"


def _drop_required(doc: dict[str, Any], rng: random.Random) -> None:
    del doc["spec"]["policy" if doc["kind"] == "RLAIFJob" else "model"]


def _resources(value: Any) -> DocMutation:
    return _spec_value(("spec", "rewards", 0, "resources"), value)


INVALID_DOC: dict[str, DocMutation] = {
    "inf": _numbers([float("inf"), float("-inf")]),
    "nan": _numbers([float("nan")]),
    "huge": _numbers([10**30, 2**64, 1e300]),
    "negative": _numbers([-1, -0.5, -(10**12)]),
    "steps": _spec_value(("spec", "steps"), 10**30),
    "seed": _spec_value(("spec", "seed"), 2**64),
    "replicas": _spec_value(("spec", "rewards", 0, "replicas"), 10**12),
    "kind-list": lambda doc, rng: doc.__setitem__("kind", [doc["kind"]]),
    "kind-model": _wrong_reward_model,
    "required": _drop_required,
    "unknown-field": lambda doc, rng: doc["spec"].__setitem__("stepz", 3),
    "name": lambda doc, rng: doc["metadata"].__setitem__("name", "Bad_Name"),
    "resources-typo": _resources({"limitz": {"cpu": 1}}),
    "resources-nested": _resources({"limits": {"cpu": [[1], [2]]}}),
    "resources-quantity": _resources({"requests": {"memory": "lots"}}),
}


def _prefix(text: str, rng: random.Random) -> bytes:
    return text.encode()


INVALID_TEXT: dict[str, TextMutation] = {
    "non-utf8": lambda text, rng: text.encode()[:50] + b"\xff\xfe" + text.encode()[50:],
    "deep": lambda text, rng: text.encode() + b"\nx: " + b"[" * rng.choice([70, 999, 5000]),
    "deep-closed": lambda text, rng: text.encode() + b"\nx: " + b"[" * 80 + b"]" * 80,
    "bigint": lambda text, rng: text.replace("steps: ", "steps: " + "9" * 5000, 1).encode()
    if "steps: " in text else b"spec: {steps: " + b"9" * 5000 + b"}",
    "bad-int": lambda text, rng: (text + "\nextra: !!int abc\n").encode(),
    "bad-timestamp": lambda text, rng: (text + "\nextra: !!timestamp abc\n").encode(),
    "bad-bool": lambda text, rng: (text + "\nextra: !!bool maybe\n").encode(),
    "date-name": lambda text, rng: re.sub(r"(?m)^(  name: ).*$", r"\g<1>2024-13-01", text,
                                          count=1).encode(),
    "bomb": lambda text, rng: (BOMB + text).encode(),
    "cycle": lambda text, rng: (text + "\nloop: &l [*l]\n").encode(),
    "empty": lambda text, rng: b"",
    "comments": lambda text, rng: b"# nothing here\n# at all\n",
}
EITHER_TEXT: dict[str, TextMutation] = {
    "flip": lambda text, rng: _flip(text.encode(), rng),
    "truncate": lambda text, rng: text.encode()[:rng.randrange(1, len(text))],
    "unchanged": _prefix,
}


def _flip(data: bytes, rng: random.Random) -> bytes:
    raw = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        raw[rng.randrange(len(raw))] = rng.randrange(256)
    return bytes(raw)


def run(cases: int, seed: int) -> Counter[str]:
    rng = random.Random(seed)
    examples = {p.name: p.read_text() for p in sorted(EXAMPLES.glob("*.yaml"))}
    mutations: list[tuple[str, bool]] = ([(m, True) for m in INVALID_DOC]
                                         + [(m, True) for m in INVALID_TEXT]
                                         + [(m, False) for m in EITHER_TEXT])
    outcome: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for case in range(cases):
            name, text = rng.choice(sorted(examples.items()))
            mutation, invalid = mutations[case % len(mutations)]
            data = _mutated(text, mutation, rng)
            file = Path(tmp) / f"{case:04d}-{mutation}-{name}"
            file.write_bytes(data)
            try:
                load_file(file)
            except InvalidManifest as exc:
                outcome["refused"] += 1
                if not exc.errors or not all(str(e).strip() for e in exc.errors):
                    outcome["refused without a message"] += 1
                continue
            except BaseException:  # the point of the run: count and show anything else
                outcome["traceback"] += 1
                print(f"--- {file.name}: traceback\n{traceback.format_exc()}", file=sys.stderr)
                continue
            outcome["accepted"] += 1
            if invalid:
                outcome["accepted invalid"] += 1
                print(f"--- {file.name}: accepted although invalid", file=sys.stderr)
    return outcome


def _mutated(text: str, mutation: str, rng: random.Random) -> bytes:
    if mutation in INVALID_TEXT:
        return INVALID_TEXT[mutation](text, rng)
    if mutation in EITHER_TEXT:
        return EITHER_TEXT[mutation](text, rng)
    docs = list(yaml.safe_load_all(text))
    doc = copy.deepcopy(docs[0])
    INVALID_DOC[mutation](doc, rng)
    return yaml.dump(doc, sort_keys=False).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    outcome = run(args.cases, args.seed)
    seconds = time.perf_counter() - start
    print(f"{args.cases} mutated manifests in {seconds:.1f} s: "
          f"{outcome['traceback']} tracebacks, {outcome['accepted invalid']} accepted invalid, "
          f"{outcome['refused']} refused, {outcome['accepted']} accepted")
    failed = outcome["traceback"] + outcome["accepted invalid"] + outcome[
        "refused without a message"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
