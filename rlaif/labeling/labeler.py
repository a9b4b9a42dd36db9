"""Ask an LLM for each sentence's four prosody labels, validate, and append to the prompts file.

RLAIF-SPA asked GPT-4o for one value per dimension in a "1. Structure: X / ..." form. Here the
model is asked for a JSON object with the schema's keys, the allowed values are listed from
the one LabelSchema, and an answer that is malformed or off-list is sent back with what was
wrong. After the last retry the sentence is recorded unlabelled with the reason; a value is
never mapped to a "nearby" one, since a wrong label would become a wrong training target.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlaif.api.labels import LabelSchema
from rlaif.labeling.llm import (
    ChatClient,
    EndpointError,
    EndpointUnusable,
    Messages,
    RequestRejected,
)
from rlaif.labeling.output import PromptsWriter, labelled_record, unlabelled_record

# Stop the run after this many sentences in a row failed at the transport level: the
# endpoint is down, and trying every remaining sentence would only take long to say so.
MAX_FAILURE_STREAK = 10

SYSTEM_PROMPT = (
    "You annotate sentences for expressive text-to-speech. For the given sentence choose "
    "exactly one value for each of four prosody dimensions: structure (the sentence's role "
    "in discourse), emotion (how it should sound), speechRate (how fast it should be "
    "spoken) and intonation (its tone). Copy each value exactly from its list. Answer with "
    'only a JSON object with the keys "structure", "emotion", "speechRate" and "intonation".'
)


def build_messages(text: str, schema: LabelSchema) -> Messages:
    """The chat for one sentence: the task, the allowed values, the sentence."""
    user = f"Allowed values:\n{schema.describe()}\n\nSentence: {json.dumps(text)}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def correction(answer: str, errors: list[str]) -> Messages:
    """Follow-up turns that show the model its invalid answer and what was wrong with it."""
    return [{"role": "assistant", "content": answer},
            {"role": "user", "content": "That answer is not valid: " + "; ".join(errors)
             + ". Answer again with only the JSON object, each value copied exactly from its "
               "list."}]


async def label_sentence(client: ChatClient, text: str, schema: LabelSchema,
                         retries: int) -> dict[str, Any]:
    """The prompts-file record for one sentence, labelled or unlabelled with the reason.

    Raises EndpointError when the endpoint itself kept failing (nothing is recorded, so a
    rerun tries again) and EndpointUnusable when no request can succeed.
    """
    messages = build_messages(text, schema)
    errors: list[str] = []
    for _ in range(retries + 1):
        try:
            answer = await client.complete(messages)
        except RequestRejected as exc:
            return unlabelled_record(text, str(exc))
        labels, errors = schema.parse_answer(answer)
        if not errors:
            return labelled_record(text, labels)
        messages = messages + correction(answer, errors)
    return unlabelled_record(text, f"invalid answer ({retries + 1} attempts): "
                                   + "; ".join(errors))


@dataclass
class RunStats:
    labelled: int = 0
    unlabelled: int = 0
    failed: int = 0
    last_failure: str = ""


async def label_all(todo: list[str], writer: PromptsWriter, client: ChatClient,
                    schema: LabelSchema, *, retries: int, concurrency: int,
                    advance: Callable[[], None] = lambda: None) -> RunStats:
    """Label ``todo`` with at most ``concurrency`` requests in flight, appending each record
    as soon as it is ready (so the file is in completion order, not input order)."""
    stats, pending = RunStats(), iter(todo)
    streak = 0

    async def worker() -> None:
        nonlocal streak
        for text in pending:  # one shared iterator: each sentence goes to one worker
            try:
                record = await label_sentence(client, text, schema, retries)
            except EndpointError as exc:
                stats.failed, stats.last_failure, streak = stats.failed + 1, str(exc), streak + 1
                if streak >= MAX_FAILURE_STREAK:
                    raise EndpointUnusable(f"{streak} sentences in a row failed; last: {exc}; "
                                           f"rerun to resume once the endpoint works") from None
                advance()
                continue
            writer.append(record)
            streak = 0
            if record["labels"] is None:
                stats.unlabelled += 1
            else:
                stats.labelled += 1
            advance()

    tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, min(concurrency, len(todo))))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return stats
