"""The per-run output folder: config, per-round metrics, plot and final model."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import matplotlib
import torch

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402


def new_run_dir(output_dir: str, run_name: str, model: str) -> Path:
    """Create ``<output_dir>/<run_name>`` (automatic name: time stamp and model).

    An explicit name that already exists is refused rather than overwritten.
    """
    base = Path(output_dir).expanduser().resolve()
    if run_name:
        run_dir = base / run_name
        if run_dir.exists():
            resumable = (run_dir / "checkpoint.pt").is_file()
            raise FileExistsError(
                f"run folder {run_dir} already exists; choose another 'run-name' or remove it"
                + (f", or continue it with resume='{run_name}'" if resumable else "")
            )
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = base / f"{stamp}-{model}"
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = base / f"{stamp}-{model}-{suffix}"
    run_dir.mkdir(parents=True)
    return run_dir


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically: a reader never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_model(model: torch.nn.Module, path: Path) -> None:
    """Save a model's state dict atomically (``torch.save`` to a temporary file, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


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
