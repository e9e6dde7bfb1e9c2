"""A run seen from outside: its ServerApp log lines, and whether it succeeded.

What ``python -m deploy.federation up`` calls a successful run (exit code 0):

1. Flower reports it ``finished:completed``;
2. its folder has ``config.json``, ``final_model.pt`` and a ``metrics.json`` with one row
   per round from 0 to ``num-server-rounds``;
3. no round in which every sampled node failed (the federation was unreachable then);
4. at least one round aggregated an update: a run whose every round was skipped (too few
   accepted updates, whatever kept them out: failures, rejections, no relay path) left
   the model as it started, and is not a success.

A run with some skipped rounds or rejected updates still succeeds: that is the screening
and the skip rule doing their job. :func:`run_summary` counts them for the operator.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RUN_FOLDER_LINE = re.compile(r"[Oo]utputs in (\S.*?)\s*$")
"""The ServerApp's log line that names the run folder (``Run <name>: outputs in <path>``)."""
ROUND_LINE = re.compile(r"Round (\d+)/\d+: test accuracy")
"""The ServerApp's log line that ends a round (after its checkpoint is due)."""


class RunWatcher:
    """Reads the run's log: remembers the run folder, and kills a SuperNode on cue.

    Parameters
    ----------
    kill : callable
        Kills a process of the federation by name, returns the PIDs it signalled
        (:meth:`deploy.federation.LocalFederation.kill`).
    kill_index : int, optional
        SuperNode to kill (``up --kill-supernode``); None: none.
    after_round : int
        Kill once the ServerApp has logged the end of this round or a later one.
    announce : callable
        Where the kill is reported.
    """

    def __init__(
        self,
        kill: Callable[[str], Sequence[Any]],
        kill_index: int | None,
        after_round: int,
        announce: Callable[[str], None],
    ) -> None:
        self.kill = kill
        self.kill_index = kill_index
        self.after_round = after_round
        self.announce = announce
        self.run_dir: Path | None = None

    def __call__(self, line: str) -> None:
        if (match := RUN_FOLDER_LINE.search(line)) and self.run_dir is None:
            self.run_dir = Path(match.group(1))
        match = ROUND_LINE.search(line)
        if self.kill_index is not None and match and int(match.group(1)) >= self.after_round:
            name = f"supernode-{self.kill_index}"
            self.kill_index = None
            tree = self.kill(name)
            self.announce(f"fault injection: killed {name} after round {match.group(1)} "
                          f"(pids {', '.join(str(ref.pid) for ref in tree)})")


def _read(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    config = json.loads((run_dir / "config.json").read_text())
    rows = json.loads((run_dir / "metrics.json").read_text())
    return config, rows


def _trained(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of training rounds (round 0 is the initial model's evaluation)."""
    return [row for row in rows if isinstance(row.get("round"), int) and row["round"] >= 1]


def _skipped(row: dict[str, Any]) -> bool:
    return bool(row.get("skipped")) or not row.get("clients_used")


def check_run_outputs(run_dir: Path) -> list[str]:
    """What keeps a finished run from being a success (empty: nothing).

    See the module's docstring for the rules (2 to 4 are checked here).
    """
    run_dir = Path(run_dir)
    problems = []
    try:
        config, rows = _read(run_dir)
    except (OSError, ValueError) as err:
        return [f"cannot read the run's config.json and metrics.json in {run_dir}: {err}"]
    try:
        rounds = int(config["run_config"]["num-server-rounds"])
    except (KeyError, TypeError, ValueError) as err:
        return [f"{run_dir / 'config.json'} names no num-server-rounds ({err!r})"]
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
    trained = _trained(rows)
    if trained and all(_skipped(row) for row in trained):
        reasons = sorted({str(row.get("skipped") or "no update used") for row in trained})
        problems.append(
            f"every round was skipped ({len(trained)} of {len(trained)}): no update was "
            f"aggregated, the model is the initial one ({'; '.join(reasons)})"
        )
    return problems


def run_summary(run_dir: Path) -> str:
    """One line that counts a run's aggregated and skipped rounds, rejections and failures.

    Example: ``rounds: 2 of 3 aggregated, 1 skipped (round 2); updates: 5 used,
    1 rejected, 1 failed``. Empty when ``metrics.json`` cannot be read.
    """
    try:
        _config, rows = _read(Path(run_dir))
        trained = _trained(rows)
        skipped = [row["round"] for row in trained if _skipped(row)]
        used, rejected, failed = (
            sum(int(row.get(key) or 0) for row in trained)
            for key in ("clients_used", "clients_rejected", "clients_failed")
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return ""
    where = f" (round {', '.join(map(str, skipped))})" if skipped else ""
    return (
        f"rounds: {len(trained) - len(skipped)} of {len(trained)} aggregated, "
        f"{len(skipped)} skipped{where}; updates: {used} used, {rejected} rejected, "
        f"{failed} failed"
    )
