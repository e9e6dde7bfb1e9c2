"""The per-run output folder and atomic writes: run folders, JSON, the final model.

Figures are drawn by :mod:`task.plots`, so writing results does not load matplotlib.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch


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
