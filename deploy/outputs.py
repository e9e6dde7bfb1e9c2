"""Checks of a finished run: its ServerApp log lines, and whether its outputs are complete."""

from __future__ import annotations

import json
import re
from pathlib import Path

RUN_FOLDER_LINE = re.compile(r"[Oo]utputs in (\S.*?)\s*$")
"""The ServerApp's log line that names the run folder (``Run <name>: outputs in <path>``)."""
ROUND_LINE = re.compile(r"Round (\d+)/\d+: test accuracy")
"""The ServerApp's log line that ends a round (after its checkpoint is due)."""


def check_run_outputs(run_dir: Path) -> list[str]:
    """What keeps a finished run's outputs from being complete (empty: nothing).

    Complete means: ``config.json``, ``final_model.pt`` and a ``metrics.json`` with one
    row per round from 0 to ``num-server-rounds``, and no round in which every sampled
    node failed (Flower still calls such a run completed).
    """
    run_dir = Path(run_dir)
    problems = []
    try:
        config = json.loads((run_dir / "config.json").read_text())
        rows = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError) as err:
        return [f"cannot read the run's config.json and metrics.json in {run_dir}: {err}"]
    rounds = config["run_config"]["num-server-rounds"]
    found = [row.get("round") for row in rows]
    if found != list(range(rounds + 1)):
        problems.append(f"metrics.json has rounds {found}, expected 0..{rounds}")
    if not (run_dir / "final_model.pt").is_file():
        problems.append(f"no final_model.pt in {run_dir}")
    for row in rows:
        sampled, failed = row.get("clients_sampled", 0), row.get("clients_failed", 0)
        if sampled and failed >= sampled:
            reasons = sorted(set(row.get("failed_reasons", {}).values()))
            problems.append(
                f"round {row['round']}: all {sampled} sampled nodes failed ({'; '.join(reasons)})"
            )
    return problems
