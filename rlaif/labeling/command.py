"""``rlaif label``: texts in, prompts file out (resumable), summary at the end.

Exit status: 0 when every sentence has a record and some are labelled; 1 when sentences
are left for a rerun (the endpoint failed) or nothing could be labelled; 2 for bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from rlaif.api.labels import LabelSchema
from rlaif.labeling.labeler import RunStats, label_all
from rlaif.labeling.llm import ChatClient, EndpointUnusable, LocalChat, OpenAIChat, RetryPolicy
from rlaif.labeling.output import PromptsWriter, read_records
from rlaif.labeling.sentences import read_sentences, sentence_key
from rlaif.labeling.summary import format_summary, summarize

log = logging.getLogger("rlaif.labeling")


def usage_errors(args: argparse.Namespace) -> list[str]:
    """What is wrong with the flags, one message per problem."""
    errors = []
    if bool(args.endpoint) == bool(args.local_model):
        errors.append("give either --endpoint URL --model NAME or --local-model DIR")
    if args.endpoint and not args.endpoint.startswith(("http://", "https://")):
        errors.append(f"--endpoint: {args.endpoint!r} must start with http:// or https://")
    if args.endpoint and not args.model:
        errors.append("--model: required with --endpoint (e.g. gpt-4o)")
    if args.concurrency < 1:
        errors.append(f"--concurrency: must be at least 1, got {args.concurrency}")
    if args.retries < 0:
        errors.append(f"--retries: must be at least 0, got {args.retries}")
    if args.timeout <= 0:
        errors.append(f"--timeout: must be positive, got {args.timeout}")
    return errors


def make_client(args: argparse.Namespace) -> ChatClient:
    """The chat backend the flags ask for; the API key comes only from the environment."""
    if args.local_model:
        return LocalChat(Path(args.local_model))
    api_key = os.environ.get(args.api_key_env)
    if not api_key:
        log.warning("$%s is not set: sending requests without an API key", args.api_key_env)
    return OpenAIChat(args.endpoint, args.model, api_key, timeout_s=args.timeout,
                      policy=RetryPolicy(retries=args.retries))


def label_command(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="rlaif label: %(message)s")
    if errors := usage_errors(args):
        for err in errors:
            print(f"rlaif label: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        schema = LabelSchema.from_file(Path(args.label_schema)) if args.label_schema \
            else LabelSchema()
        stats = _label_file(Path(args.input), out, schema, args)
        summary = summarize(read_records(out, schema))
    except (ValueError, OSError, EndpointUnusable) as exc:  # input, output, schema, endpoint
        print(f"rlaif label: {exc}", file=sys.stderr)
        return 1
    print(format_summary(summary, schema))
    if stats.failed:
        print(f"rlaif label: {stats.failed} sentence(s) not labelled because the endpoint kept "
              f"failing (last: {stats.last_failure}); rerun the same command to label them",
              file=sys.stderr)
        return 1
    if not summary.labelled:
        print(f"rlaif label: {out} holds no labelled sentence: the trainer cannot use it",
              file=sys.stderr)
        return 1
    return 0


def _label_file(source: Path, out: Path, schema: LabelSchema,
                args: argparse.Namespace) -> RunStats:
    sentences = read_sentences(source)
    with PromptsWriter(out, schema) as writer:
        todo = [s for s in sentences if sentence_key(s) not in writer.done]
        log.info("%d sentence(s) in %s: %d already in %s, %d to label",
                 len(sentences), source, len(sentences) - len(todo), out, len(todo))
        if not todo:
            return RunStats()
        return asyncio.run(_run(todo, writer, schema, args))


async def _run(todo: list[str], writer: PromptsWriter, schema: LabelSchema,
               args: argparse.Namespace) -> RunStats:
    client = make_client(args)
    bar = tqdm(total=len(todo), unit="sentence", file=sys.stderr, dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)
    if isinstance(client, OpenAIChat):  # a long rate-limit pause shows on the bar
        client.on_wait = lambda seconds: bar.set_postfix_str(
            f"rate limited at {time.strftime('%H:%M:%S')}: waiting {seconds:.0f} s")
    try:
        return await label_all(todo, writer, client, schema, retries=args.retries,
                               concurrency=args.concurrency, advance=bar.update)
    finally:
        bar.close()
        await client.aclose()
