"""Shared pieces of the study reports: command-line options, per-round bands, tables, figures."""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.grid import RESULTS_DIR, CellResult
from task.plots import plt, save_figure  # matplotlib with the Agg backend already chosen


def study_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every study takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR,
        help="folder that holds the study folders (default: results/ in the project)",
    )
    parser.add_argument(
        "--rerun", action="store_true", help="run every cell again, discarding earlier results"
    )
    return parser


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not an integer >= 1")
    return value


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def pm(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± std`` of ``values`` as text."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def group(results: Sequence[CellResult], key: str) -> dict[Any, list[CellResult]]:
    """Results grouped by one label, in first-seen order."""
    groups: dict[Any, list[CellResult]] = {}
    for result in results:
        groups.setdefault(result.cell.labels[key], []).append(result)
    return groups


def round_curves(results: Sequence[CellResult], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Rounds and a (runs x rounds) array of ``metric``, over the rounds all runs have."""
    length = min(len(r.rows) for r in results)
    rounds = np.array([row["round"] for row in results[0].rows[:length]])
    values = np.array([[row[metric] for row in r.rows[:length]] for r in results], dtype=float)
    return rounds, values


def t_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Two-sided t interval of the mean of paired differences (nan with fewer than 2)."""
    from scipy import stats

    if len(diffs) < 2:
        return math.nan, math.nan
    mean = statistics.fmean(diffs)
    half = float(stats.t.ppf(0.5 + level / 2, len(diffs) - 1)) * statistics.stdev(
        diffs) / math.sqrt(len(diffs))
    return mean - half, mean + half


def t_test_p(diffs: Sequence[float]) -> float:
    """Two-sided paired t-test p-value of differences: 1 when every difference is 0 (the
    runs are the same), nan when they are all the same other value (no spread: the test
    is undefined) or fewer than 2."""
    from scipy import stats

    if len(diffs) < 2:
        return math.nan
    if all(d == diffs[0] for d in diffs):
        return 1.0 if diffs[0] == 0 else math.nan
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error); nan p-values stay nan and do not
    count towards the number of comparisons."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if math.isfinite(p))
    m = len(indexed)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_round_bands(
    groups: dict[Any, list[CellResult]],
    path: Path,
    title: str,
    label: Callable[[Any], object] = str,
    references: dict[str, dict[str, float]] | None = None,
) -> None:
    """Accuracy and loss per round: mean line and min-max band over runs, one line per group.

    ``label(key)`` is formatted into the group's legend entry. ``references`` draws
    horizontal dashed lines, ``{"accuracy": {"paper QFL": 0.85}}``.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    for metric, ax in zip(("accuracy", "loss"), axes, strict=True):
        for index, (key, runs) in enumerate(groups.items()):
            rounds, values = round_curves(runs, metric)
            color = f"C{index}"
            mean = values.mean(0)
            ax.plot(rounds, mean, color=color, label=f"{label(key)} (mean of {len(runs)})")
            if len(runs) > 1:
                ax.fill_between(rounds, values.min(0), values.max(0), color=color, alpha=0.2)
        for ref_index, (ref_label, value) in enumerate((references or {}).get(metric, {}).items()):
            ax.axhline(value, color="0.3", linestyle=("--", ":", "-.")[ref_index % 3],
                       linewidth=1, label=ref_label)
        ax.set(
            xlabel="Server round (1 local epoch each)",
            ylabel=(
                "Test accuracy (fraction)" if metric == "accuracy" else "Test cross-entropy loss"
            ),
            title=f"Test {metric} (band: min-max over seeds)",
        )
        if metric == "accuracy":
            ax.set_ylim(0, 1)
        else:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


def write_report(study_dir: Path, text: str) -> None:
    """Write the study's ``report.md`` atomically and say where it is."""
    path = study_dir / "report.md"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text.rstrip() + "\n", encoding="utf-8")
    os.replace(tmp, path)
    print(f"{study_dir.name}: report in {path}", file=sys.stderr)
