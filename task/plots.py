"""Figures: the per-run metrics plot and the atomic PNG save the studies use too.

Importing this module loads matplotlib with the Agg backend (no display on servers and
in CI); :data:`plt` is its ``pyplot`` for callers that draw their own figures.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_metrics", "plt", "save_figure"]


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


def save_figure(fig: Any, path: Path) -> None:
    """Save a figure atomically as PNG and close it."""
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
