"""Figures: the per-run metrics plot and the atomic PNG save the studies use too.

Importing this module loads matplotlib with the Agg backend (no display on servers and
in CI); :data:`plt` is its ``pyplot`` for callers that draw their own figures.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

if TYPE_CHECKING:
    from relay.contacts import ContactPlan

__all__ = ["plot_contacts", "plot_metrics", "plt", "save_figure"]

GANTT_ROWS = 40
"""Most UAV rows a contact chart draws; a larger swarm shows a sample of them."""


def plot_metrics(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Plot test accuracy and loss per round, side by side, into a PNG."""
    rounds = [row["round"] for row in rows]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax_acc.plot(rounds, [row["accuracy"] for row in rows], marker="o", color="tab:blue")
    ax_acc.set(title="Test accuracy", xlabel="Server round", ylabel="Accuracy (fraction)")
    ax_acc.set_ylim(0, 1)
    ax_loss.plot(rounds, [row["loss"] for row in rows], marker="o", color="tab:red")
    ax_loss.set(title="Test loss", xlabel="Server round", ylabel="Cross-entropy loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_contacts(plan: ContactPlan, path: Path, title: str = "Contact plan") -> None:
    """Draw a contact plan into a PNG: windows per satellite and UAV, and coverage.

    The upper panel is a Gantt chart: one row per satellite (in view of the base
    station) and per UAV (a path to it), a bar per window. Beyond :data:`GANTT_ROWS`
    UAVs it shows an evenly spaced sample of the UAVs that have gaps (the others are
    always in contact; the title says how many). The lower panel is the fraction of all
    UAVs in contact over time.
    """
    horizon = plan.horizon_s
    with_gaps = [uav for uav in plan.uav_ids if plan.windows(uav) != [(0.0, horizon)]]
    shown = with_gaps
    if len(with_gaps) > GANTT_ROWS:
        picks = sorted({round(i) for i in np.linspace(0, len(with_gaps) - 1, GANTT_ROWS)})
        shown = [with_gaps[i] for i in picks]
    rows = list(plan.satellites) + shown
    height = 2.5 + 0.18 * len(rows)
    fig, (ax_gantt, ax_share) = plt.subplots(
        2, 1, figsize=(11, height), sharex=True, constrained_layout=True,
        gridspec_kw={"height_ratios": [max(len(rows), 1) * 0.18 + 0.5, 1.6]},
    )
    minutes = 60.0
    for row, node in enumerate(rows):
        spans = [(start / minutes, (end - start) / minutes) for start, end in plan.windows(node)]
        colour = "tab:orange" if node in plan.satellite_windows else "tab:blue"
        ax_gantt.broken_barh(spans, (row - 0.35, 0.7), color=colour)
    ax_gantt.set_yticks(range(len(rows)), rows, fontsize=7 if len(rows) > 25 else 9)
    ax_gantt.invert_yaxis()
    ax_gantt.grid(axis="x", alpha=0.3)
    always = len(plan.uav_ids) - len(with_gaps)
    sample = f", {len(shown)} of {len(with_gaps)} shown" if len(shown) < len(with_gaps) else ""
    ax_gantt.set_title(f"{title}: satellites in view of the base station (orange), UAVs with "
                       f"a path (blue); {always} UAVs always in contact{sample}", fontsize=9)
    times = np.linspace(0.0, horizon, 600)
    share = [np.mean([plan.in_contact(uav, t) for uav in plan.uav_ids]) for t in times]
    ax_share.plot(times / minutes, share, color="tab:blue")
    ax_share.set(xlabel="Emulated time (min)", ylabel="UAVs in contact", ylim=(0, 1.05),
                 xlim=(0, horizon / minutes))
    ax_share.grid(alpha=0.3)
    save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> None:
    """Save a figure atomically as PNG and close it."""
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
