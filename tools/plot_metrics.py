#!/usr/bin/env python
"""Plot one or more runs' metrics.jsonl against step, runs overlaid, into one PNG.

    python tools/plot_metrics.py outputs/fsdp outputs/fsdp_tp --labels fsdp,fsdp+tp -o compare.png
    python tools/plot_metrics.py outputs/run1 --metrics loss,grad_norm,tokens_per_second,mfu -o run1.png

Each RUN is a training dump folder (holding metrics.jsonl, as titan-train writes it) or a
metrics.jsonl file. One panel per metric; a run that never logged a metric is left out of that
panel; validation_loss is drawn as points. Lines of metrics.jsonl that are not JSON (a run killed
mid-write) are skipped with a warning.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_METRICS = ("loss",)
KNOWN = ("loss", "validation_loss", "grad_norm", "lr", "tokens_per_second", "tflops", "mfu",
         "memory_max_reserved_gib", "memory_max_active_gib", "memory_rss_gib", "data_loading_pct", "step_time_s")


LINESTYLES = ("-", "--", ":", "-.")


class PlotError(ValueError):
    """A missing or unreadable run, or a bad option: printed without a traceback."""


def metrics_file(run: str) -> Path:
    path = Path(run).expanduser()
    if path.is_dir():
        # metrics.save_for_all_ranks writes metrics_rank<r>.jsonl: plot rank 0's
        path = path / "metrics.jsonl" if (path / "metrics.jsonl").is_file() else path / "metrics_rank0.jsonl"
    if not path.is_file():
        raise PlotError(f"{run}: no metrics.jsonl (or metrics_rank0.jsonl) there (give a run's dump folder or its "
                        "metrics file)")
    return path


def read_run(path: Path) -> list[dict]:
    """The records of a metrics.jsonl, in step order (a resumed run's repeated steps: last wins)."""
    by_step: dict[int, dict] = {}
    skipped = 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)):
                by_step[int(rec["step"])] = rec
    if skipped:
        print(f"warning: {path}: skipped {skipped} line(s) that are not JSON", file=sys.stderr)
    if not by_step:
        raise PlotError(f"{path}: no records with a 'step' field")
    return [by_step[s] for s in sorted(by_step)]


def series(records: list[dict], metric: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for rec in records:
        value = rec.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            xs.append(int(rec["step"]))
            ys.append(float(value))
    return xs, ys


def plot(runs: list[tuple[str, list[dict]]], metrics: Sequence[str], out: Path, *, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 2.8 * len(metrics)), sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        drawn = 0
        for i, (label, records) in enumerate(runs):
            xs, ys = series(records, metric)
            if not xs:
                continue
            # runs that agree (parity checks) would hide each other: vary width and dash
            style = {"linestyle": LINESTYLES[i % len(LINESTYLES)], "linewidth": 2.4 if i == 0 else 1.3}
            if metric == "validation_loss":
                style["marker"] = "o"
            ax.plot(xs, ys, label=label, **style)
            drawn += 1
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no run logged {metric}", ha="center", va="center", transform=ax.transAxes)
    axes[-1, 0].set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run dump folders (or metrics.jsonl files)")
    ap.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                    help=f"comma-separated metrics, one panel each (default: loss; e.g. {','.join(KNOWN[:7])})")
    ap.add_argument("--labels", help="comma-separated legend labels, one per run (default: folder names)")
    ap.add_argument("--title", help="figure title")
    ap.add_argument("-o", "--output", default="metrics.png", help="PNG to write (default: metrics.png)")
    args = ap.parse_args(argv)
    try:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        if not metrics:
            raise PlotError("--metrics: give at least one metric name")
        labels = [s.strip() for s in args.labels.split(",")] if args.labels else \
            [Path(r).expanduser().resolve().name if Path(r).is_dir() else Path(r).expanduser().resolve().parent.name
             for r in args.runs]
        if len(labels) != len(args.runs):
            raise PlotError(f"--labels has {len(labels)} label(s) for {len(args.runs)} run(s)")
        runs = [(label, read_run(metrics_file(run))) for label, run in zip(labels, args.runs)]
        logged = {k for _, recs in runs for rec in recs for k in rec}
        unknown = [m for m in metrics if m not in logged]
        if unknown:  # a metric some runs logged and others not is fine; one no run logged is a typo
            import difflib

            hint = difflib.get_close_matches(unknown[0], sorted(logged), n=1)
            raise PlotError(f"--metrics: no run logged {', '.join(unknown)}"
                            + (f"; did you mean '{hint[0]}'?" if hint else "")
                            + f" Logged: {', '.join(sorted(k for k in logged if k not in ('step', 'time')))}")
        out = plot(runs, metrics, Path(args.output).expanduser(), title=args.title)
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(runs)} run(s), {', '.join(metrics)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
