"""report.html for ``rlaif eval``: one self-contained page (plots and audio inlined as data
URIs, no scripts, no network) a user can open, mail or attach to a ticket.

It holds each metric's paired change with its confidence interval (a table and a plot), the
spread of the per-sample differences, and for a sample of prompts the base and trained
renders side by side with what the judges heard (transcripts, predicted labels).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlaif.files import atomic_write_text
from rlaif.trainer.evaluation import CONFIDENCE, TOTAL, PairedDifference

Record = dict[str, Any]

REPORT = "report.html"
LISTEN_PROMPTS = 8
"""Prompts with side-by-side players (their first sample each)."""
STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.up{color:#1a7f37}.down{color:#b3261e}.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.side{border:1px solid #ddd;border-radius:6px;padding:.6em}.muted{color:#666;font-size:90%}
audio{width:100%}img{max-width:100%}
"""


def write_report(result: Record, out: Path) -> Path:
    """Write ``out/report.html`` from eval.json's content (audio read from ``out``)."""
    metrics = {name: PairedDifference(**f) for name, f in ordered(result["metrics"]).items()}
    samples = result["samples"]
    body = [f"<h1>Held-out evaluation: {_e(result['job'])}</h1>",
            f"<p>Base policy vs <code>{_e(result['checkpoint'])}</code> on "
            f"<code>{_e(result['prompts'])}</code>: {result['samplesPerPrompt']} "
            f"{_e(result['sampling'])} sample(s) per prompt, seed {result['seed']}, the same "
            "prompts and seeds on both sides, so each difference is paired. Intervals are "
            f"{CONFIDENCE:.0%} Student-t intervals of the mean paired difference; a change "
            "whose interval excludes 0 is unlikely to be noise.</p>",
            "<h2>Metrics</h2>", metric_table(metrics)]
    if metrics:
        body += ["<h2>Plots</h2>", _img(change_plot(metrics), "paired change per metric"),
                 _img(difference_histogram(samples, list(metrics)), "per-sample differences")]
    body += ["<h2>Listen</h2>", listening(samples, out)]
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>rlaif eval: "
            f"{_e(result['job'])}</title><style>{STYLE}</style></head><body>"
            + "\n".join(body) + "</body></html>")
    path = out / REPORT
    atomic_write_text(path, page)
    return path


def ordered(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The weighted total first, then the rewards and evaluators by name."""
    return dict(sorted(metrics.items(), key=lambda kv: (kv[0] != TOTAL, kv[0])))


def metric_table(metrics: Mapping[str, PairedDifference]) -> str:
    if not metrics:
        return "<p>No metric had two paired, scorable samples.</p>"
    rows = ["<table><tr><th>metric</th><th>base</th><th>trained</th><th>change</th>"
            f"<th>{CONFIDENCE:.0%} CI</th><th>pairs</th><th>verdict</th></tr>"]
    for name, d in metrics.items():
        verdict = ("better" if d.low > 0 else "worse") if d.significant else "no clear change"
        css = {"better": "up", "worse": "down"}.get(verdict, "muted")
        rows.append(f"<tr><td>{_e(name)}</td><td class=num>{d.before:.3f}</td>"
                    f"<td class=num>{d.after:.3f}</td><td class=num>{d.mean:+.3f}</td>"
                    f"<td class=num>{d.low:+.3f} to {d.high:+.3f}</td><td class=num>{d.n}</td>"
                    f"<td class={css}>{verdict}</td></tr>")
    return "\n".join(rows) + "</table>"


def listening(samples: Mapping[str, Sequence[Record]], out: Path) -> str:
    """Side-by-side players for the first sample of the first LISTEN_PROMPTS prompts."""
    trained = {(r["prompt"], r["sample"]): r for r in samples["trained"]}
    blocks = []
    for base in [r for r in samples["base"] if r["sample"] == 0][:LISTEN_PROMPTS]:
        after = trained.get((base["prompt"], 0))
        if after is None:
            continue
        labels = ", ".join(f"{k}: {v}" for k, v in (base.get("labels") or {}).items())
        blocks.append(f"<h3>Prompt {base['prompt']}: {_e(base['text'])}</h3>"
                      f"<p class=muted>target labels: {_e(labels) or 'none'}</p>"
                      f"<div class=pair>{_side('base', base, out)}"
                      f"{_side('trained', after, out)}</div>")
    return "\n".join(blocks) or "<p>No paired samples.</p>"


def _side(title: str, row: Record, out: Path) -> str:
    audio = base64.b64encode((out / row["audio"]).read_bytes()).decode()
    scores = ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}"
                       for k, v in ordered(row["scores"]).items())
    heard = [f"<li>{_e(name)}: {describe_details(d)}</li>"
             for name, d in sorted(row["details"].items()) if d]
    return (f"<div class=side><b>{title}</b><audio controls preload=auto "
            f"src=\"data:audio/wav;base64,{audio}\"></audio>"
            f"<p>{_e(scores)}</p><ul class=muted>{''.join(heard)}</ul></div>")


def describe_details(details: Mapping[str, Any]) -> str:
    """What a server heard, most telling first: a transcript, predicted labels, then figures."""
    parts = []
    if details.get("transcript") is not None:
        parts.append(f"transcript “{_e(details['transcript'])}”")
    if isinstance(details.get("predicted"), Mapping):
        parts.append("labels " + _e(", ".join(f"{k}: {v}"
                                              for k, v in details["predicted"].items())))
    figures = [f"{k} {v:.3g}" for k, v in details.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if figures:
        parts.append(_e(", ".join(figures)))
    return "; ".join(parts)


def change_plot(metrics: Mapping[str, PairedDifference]) -> bytes:
    """Each metric's mean paired change with its interval, against the zero line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(metrics)
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(names)))
    for y, name in enumerate(names):
        d = metrics[name]
        color = "#1a7f37" if d.low > 0 else "#b3261e" if d.high < 0 else "#555"
        ax.errorbar(d.mean, y, xerr=[[d.mean - d.low], [d.high - d.mean]], fmt="o",
                    color=color, capsize=4)
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"trained - base (mean, {CONFIDENCE:.0%} CI)")
    return _png(fig)


def difference_histogram(samples: Mapping[str, Sequence[Record]], names: list[str]) -> bytes:
    """Per-sample paired differences of each metric: is the change broad or a few outliers?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = {(r["prompt"], r["sample"]): r["scores"] for r in samples["trained"]}
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name in names:
        diffs = [after[name] - b["scores"][name] for b in samples["base"]
                 if (after := trained.get((b["prompt"], b["sample"]))) is not None
                 and after.get(name) is not None and b["scores"].get(name) is not None]
        ax.hist(diffs, bins=15, alpha=0.5, label=name)
    ax.axvline(0, color="k", lw=1)
    ax.set_xlabel("trained - base, per sample")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    return _png(fig)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f"<p><img alt=\"{_e(alt)}\" src=\"data:image/png;base64,{data}\"></p>"


def _e(value: object) -> str:
    return html.escape(str(value))
