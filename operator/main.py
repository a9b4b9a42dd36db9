"""``rlaif operator``: kopf with this operator's handlers and sensible defaults.

Defaults (each overridable by passing the kopf option): ``--standalone`` and
``--all-namespaces``. One active replica is the design: kopf's peering is priority-based
pausing, not leader election, so instead the operator is safe to run twice: child names are
deterministic and creates are idempotent (no duplicates), and every reconciliation recomputes
status from the cluster (nothing is lost when a replica restarts).
"""

from __future__ import annotations

import argparse

HANDLERS = "rlaif.operator.handlers"
SCOPE_FLAGS = ("-n", "--namespace", "-A", "--all-namespaces")
PEERING_FLAGS = ("-P", "--peering", "--standalone", "--dev")


def kopf_argv(extra: list[str]) -> list[str]:
    """The ``kopf run`` arguments for ``rlaif operator EXTRA``."""
    args = [a for a in extra if a != "--"]
    has = {a.split("=", 1)[0] for a in args}
    defaults = []
    if not has & set(SCOPE_FLAGS):
        defaults.append("--all-namespaces")
    if not has & set(PEERING_FLAGS):
        defaults.append("--standalone")
    return ["run", "--module", HANDLERS, *defaults, *args]


def run_command(args: argparse.Namespace) -> int:
    from kopf.cli import main as kopf_main

    kopf_main(args=kopf_argv(list(args.kopf_args or [])), prog_name="rlaif operator",
              standalone_mode=False)
    return 0
