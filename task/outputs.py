"""The per-run output folder and atomic writes: run folders, JSON, the final model.

Figures are drawn by :mod:`task.plots`, so writing results does not load matplotlib.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

NOT_IN_DIGEST = ("run-name", "output-dir", "resume", "tracking-uri")
"""Run-config keys that name, place or watch a run rather than change what it does."""


def settings_digest(settings: Mapping[str, Any]) -> str:
    """Six hex digits that differ between runs whose settings differ (names aside)."""
    kept = {k: v for k, v in sorted(settings.items()) if k not in NOT_IN_DIGEST}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:6]


def new_run_dir(
    output_dir: str, run_name: str, model: str, relay: str = "",
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """Create ``<output_dir>/<run_name>``.

    The automatic name (``run_name`` empty) is the time stamp, the model, the relay
    channel and :func:`settings_digest` of ``settings``, for example
    ``20261127-134501-hybrid-teleport-3fa9c1``: two runs with different settings never
    look alike. An explicit name that already exists is refused rather than overwritten.
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
        parts = [time.strftime("%Y%m%d-%H%M%S"), model, relay]
        if settings is not None:
            parts.append(settings_digest(settings))
        stem = "-".join(part for part in parts if part)
        run_dir = base / stem
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = base / f"{stem}-{suffix}"
    run_dir.mkdir(parents=True)
    return run_dir


def write_json(path: Path, payload: Any) -> None:
    """Write strict JSON atomically: a reader never sees a half-written file.

    NaN and infinities (a diverged loss, say) are written as ``null``: JSON has no
    spelling for them, and ``NaN`` would break every strict reader of ``metrics.json``.
    """
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(finite_or_null(payload), indent=2, allow_nan=False)
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)


def finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite float inside it replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(item) for item in value]
    return value


class OutputError(RuntimeError):
    """Run outputs cannot be written where the run config says."""


def check_output_location(output_dir: str) -> Path:
    """The resolved ``output-dir`` once a file has been written (and removed) where its
    run folders will go: in the folder, or in its nearest existing parent when it does
    not exist yet. A file in the way, ``/proc`` or a read-only filesystem fail here,
    and nothing is left behind.

    Raises
    ------
    OutputError
        Naming the folder and why nothing can be written there.
    """
    base = Path(output_dir).expanduser().resolve()
    existing = base
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(
            f"run config 'output-dir' = {output_dir!r}: {existing} is a file, not a folder"
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(
            f"run config 'output-dir' = {output_dir!r}: cannot write in {existing} "
            f"({error.strerror or error})"
        ) from None
    return base


def save_model(model: torch.nn.Module, path: Path) -> None:
    """Save a model's state dict atomically (``torch.save`` to a temporary file, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
