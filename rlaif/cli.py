"""The ``rlaif`` command line. Subcommands import their component only when run,
so ``rlaif validate`` works where torch or kopf are not installed."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rlaif import __version__
from rlaif.constants import REWARD_MAX_QUEUED_AUDIO_SECONDS


def _validate(args: argparse.Namespace) -> int:
    from rlaif.api.validation import InvalidManifest, load_file

    failed = False
    for path in args.files:
        try:
            objects = load_file(Path(path), check_paths=args.check_paths)
        except InvalidManifest as exc:
            failed = True
            for err in exc.errors:
                print(err, file=sys.stderr)
            continue
        for obj in objects:
            print(f"{path}: {obj.kind}/{obj.metadata.name} is valid ({_summary(obj)})")
    return 1 if failed else 0


def _summary(obj: object) -> str:
    from rlaif.api.models import RLAIFJob

    if isinstance(obj, RLAIFJob):
        s = obj.spec
        rewards = ", ".join(f"{r.name}={r.weight:g}" for r in s.rewards)
        return f"{s.algorithm} on {s.policy.kind}, {s.steps} steps, rewards: {rewards}"
    spec = obj.spec  # type: ignore[attr-defined]
    return f"{spec.kind} server, {spec.replicas} replica(s)"


def _crd(args: argparse.Namespace) -> int:
    from rlaif.api import crd

    if args.out:
        for path in crd.write_all(Path(args.out)):
            print(f"wrote {path}")
    else:
        print("---\n".join(crd.render(c) for c in crd.all_crds().values()), end="")
    return 0


def _lazy(target: str) -> Callable[[argparse.Namespace], int]:
    """A command implemented in ``module:function``, imported when the command runs."""

    def run(args: argparse.Namespace) -> int:
        module, func = target.split(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and (exc.name == module or module.startswith(exc.name + ".")):
                print(f"rlaif: this command is not available in this installation "
                      f"({module} is missing)", file=sys.stderr)
                return 2
            print(f"rlaif: missing dependency {exc.name!r}; install the matching extra, e.g. "
                  f"pip install 'rlaif-operator[all]'", file=sys.stderr)
            return 2
        return int(getattr(mod, func)(args) or 0)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlaif",
        description="Fine-tune text-to-speech models with reinforcement learning from AI "
                    "feedback, on Kubernetes or on this machine.",
    )
    parser.add_argument("--version", action="version", version=f"rlaif {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a whole RLAIFJob on this machine")
    p.add_argument("job", metavar="JOB.yaml", help="manifest with one RLAIFJob")
    p.add_argument("--out", default=None, help="output directory (default: runs/NAME)")
    p.add_argument("--steps", type=int, default=None, help="override spec.steps")
    p.add_argument("--ranks", type=int, default=None,
                   help="local trainer ranks (default: spec.trainer.processesPerNode)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines, no bar")
    p.set_defaults(func=_lazy("rlaif.runner:run_command"))

    p = sub.add_parser("eval", help="score base vs a trained checkpoint on held-out prompts; "
                                    "write report.html")
    p.add_argument("job", metavar="JOB.yaml", help="manifest with one RLAIFJob")
    p.add_argument("--checkpoint", required=True, metavar="DIR|base",
                   help="a run's output folder, its best/, an adapter folder, or base")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="held-out prompts JSONL (default: spec.evaluation.prompts)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="report.html, eval.json and audio/ go here")
    p.set_defaults(func=_lazy("rlaif.evaluate:eval_command"))

    p = sub.add_parser("validate", help="check manifests; exit 1 with field-path errors")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--check-paths", action="store_true",
                   help="also require model directories to exist on this machine")
    p.set_defaults(func=_validate)

    p = sub.add_parser("crd", help="print (or write) the CRDs generated from the API models")
    p.add_argument("--out", default=None, metavar="DIR", help="write one file per CRD here")
    p.set_defaults(func=_crd)

    p = sub.add_parser("operator", help="run the operator (extra arguments go to kopf)")
    p.add_argument("kopf_args", nargs=argparse.REMAINDER,
                   help="e.g. --namespace ml --liveness http://0.0.0.0:8081/healthz")
    p.set_defaults(func=_lazy("rlaif.operator.main:run_command"))

    p = sub.add_parser("train", help="trainer entry point (inside trainer pods)")
    p.add_argument("--config", required=True, metavar="FILE", help="rendered trainer config")
    p.set_defaults(func=_lazy("rlaif.trainer.main:train_command"))

    reward = sub.add_parser("reward", help="reward-model servers").add_subparsers(
        dest="reward_command", required=True, metavar="COMMAND")
    p = reward.add_parser("serve", help="serve one reward model over HTTP")
    p.add_argument("--kind", required=True, choices=["asr", "judge", "mos", "speaker"])
    p.add_argument("--model", required=True, metavar="DIR", help="directory or builtin:NAME")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--max-queue-seconds", type=float, default=REWARD_MAX_QUEUED_AUDIO_SECONDS,
                   help="audio admitted but not yet scored; past it requests get 503")
    p.add_argument("--read-timeout-s", type=float, default=60.0,
                   help="time a client has to send a whole body (then 408)")
    p.add_argument("--shutdown-grace-s", type=float, default=10.0,
                   help="after SIGTERM, time the batch in progress has to finish")
    p.add_argument("--label-schema", default=None, metavar="FILE",
                   help="YAML/JSON label schema (default: RLAIF-SPA's lists)")
    p.add_argument("--judge", default=None, metavar="JSON",
                   help="kind judge: spec.judge as JSON (dimensions, backend, endpoint, ...); "
                        "the endpoint's API key is read from $RLAIF_JUDGE_API_KEY")
    p.add_argument("--asr-packing", action=argparse.BooleanOptionalAction, default=False,
                   help="kind asr: pack short clips several to a 30-s Whisper window "
                        "(faster; WER differs from one clip per window, see docs)")
    p.set_defaults(func=_lazy("rlaif.rewards.server:serve_command"))

    p = sub.add_parser("label", help="label sentences with prosody labels using an LLM")
    p.add_argument("--in", dest="input", required=True, metavar="FILE",
                   help="texts: .txt, .jsonl or .csv")
    p.add_argument("--out", required=True, metavar="FILE", help="prompts JSONL (resumable)")
    p.add_argument("--endpoint", default=None, help="OpenAI-compatible base URL")
    p.add_argument("--model", default=None, help="model name at the endpoint")
    p.add_argument("--local-model", default=None, metavar="DIR",
                   help="a local transformers causal LM instead of an endpoint")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--retries", type=int, default=3,
                   help="retries per request (429/5xx/timeouts) and per invalid answer")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--label-schema", default=None, metavar="FILE",
                   help="YAML/JSON label schema (default: RLAIF-SPA's lists)")
    p.set_defaults(func=_lazy("rlaif.labeling:label_command"))

    pre = sub.add_parser("pretrain", help="supervised pre-training of base policies")
    pre_sub = pre.add_subparsers(dest="pretrain_command", required=True, metavar="MODEL")
    p = pre_sub.add_parser("wavegrad2", help="train a WaveGrad 2 on an LJSpeech-layout folder")
    p.add_argument("--data", required=True, metavar="DIR", help="metadata.csv + wavs/")
    p.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--config", default=None, metavar="FILE", help="model config (JSON/YAML)")
    p.set_defaults(func=_lazy("rlaif.trainer.wavegrad2.pretrain:pretrain_command"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["operator"]:
        # argparse's REMAINDER drops leading options (`rlaif operator --standalone`):
        # everything after the command goes to kopf verbatim.
        args = parser.parse_args(["operator"])
        args.kopf_args = argv[1:]
    else:
        args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
