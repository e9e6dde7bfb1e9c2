"""Run a study's grid of Flower simulations, resumably, with progress, and collect the CSVs.

A *cell* is one simulation: run config overrides, a number of simulated UAVs and the
labels that identify it in the tables. Each cell runs in its own Python process
(:mod:`experiments.cell`), so a crash, a Ray hiccup or Ctrl-C loses that cell only, and
the process tree's memory can be measured. Its run folder is
``results/<study>/runs/<cell>/`` (the ServerApp's usual outputs); a cell counts as done
when ``cell.json`` is written there, after the process exited cleanly with every round
recorded. Done cells are never rerun; an interrupted cell's folder is removed and the
cell runs again.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from task.outputs import write_json

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = PROJECT_ROOT / "results"
DONE_FILE = "cell.json"
SAMPLE_SECONDS = 0.5
"""How often the cell's process tree is sampled for memory and progress."""


class CellError(RuntimeError):
    """A cell's simulation exited with an error or without recording every round."""


class CellStoppedError(RuntimeError):
    """A cell was stopped because another cell of the grid failed or the grid was stopped."""


@dataclass(frozen=True)
class Cell:
    """One simulation of a study.

    Parameters
    ----------
    name : str
        Folder name of the run, unique within the study (letters, digits, ``-_.``).
    overrides : Mapping[str, Any]
        Run config values (``task/config.py`` keys) that differ from the defaults.
    labels : Mapping[str, Any]
        The cell's coordinates in the grid (model, seed, ...): columns of the CSVs.
    num_supernodes : int
        Simulated UAVs (Flower SuperNodes).
    flower_polling : {"stock", "pending"}
        How Flower's simulation engine finds messages to deliver: ``"pending"`` asks only
        the nodes that have one (:mod:`experiments.flower_polling`), ``"stock"`` every node.
    """

    name: str
    overrides: Mapping[str, Any]
    labels: Mapping[str, Any] = field(default_factory=dict)
    num_supernodes: int = 10
    flower_polling: str = "stock"

    @property
    def rounds(self) -> int:
        """Server rounds this cell runs."""
        from task.config import defaults

        return int(self.overrides.get("num-server-rounds", defaults()["num-server-rounds"]))


@dataclass
class CellResult:
    """A finished cell: its rows of ``metrics.json``, what the run cost, and ``cell.json``
    as written when it finished (``record``: machine, load average, code version...)."""

    cell: Cell
    rows: list[dict[str, Any]]
    wall_seconds: float
    peak_rss_bytes: int
    record: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------ process tree
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces; fields after the last ')' are fixed.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Ray's GCS, raylet and workers included)."""
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def rss_bytes(pids: Sequence[int]) -> int:
    """Sum of the resident set sizes of ``pids`` (processes that ended count 0)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def _stop_tree(pids: Sequence[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                continue
        if not alive:
            return
        time.sleep(2)


# ---------------------------------------------------------------------------- progress
class Progress:
    """One progress line: rewritten in place on a terminal, a line every 30 s otherwise."""

    def __init__(self, study: str, total_rounds: int, total_cells: int) -> None:
        self.study = study
        self.total_rounds = max(total_rounds, 1)
        self.total_cells = total_cells
        self.rounds_done = 0
        self.cells_done = 0
        self.started = time.monotonic()
        self.rounds_at_start = 0
        self.tty = sys.stderr.isatty()
        self._last_plain = 0.0
        self._details: dict[str, str] = {}
        self._lock = threading.Lock()

    def update(self, cell: str, detail: str | None) -> None:
        """Set (or, with None, drop) the detail shown for a running cell, and show."""
        with self._lock:
            if detail is None:
                self._details.pop(cell, None)
            else:
                self._details[cell] = detail
            joined = " ; ".join(self._details.values()) or "starting"
        self.show(joined)

    def show(self, detail: str, force: bool = False) -> None:
        """Show overall progress, with ``detail`` about the running cell(s)."""
        fraction = self.rounds_done / self.total_rounds
        bar = "#" * int(24 * fraction) + "-" * (24 - int(24 * fraction))
        elapsed = time.monotonic() - self.started
        rate_rounds = self.rounds_done - self.rounds_at_start
        eta = (
            _duration(elapsed / rate_rounds * (self.total_rounds - self.rounds_done))
            if rate_rounds
            else "?"
        )
        line = (
            f"{self.study} [{bar}] {fraction:4.0%} cells {self.cells_done}/{self.total_cells}"
            f" | {detail} | {_duration(elapsed)} elapsed, ETA {eta}"
        )
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
            sys.stderr.flush()
        elif force or time.monotonic() - self._last_plain >= 30:
            print(line, file=sys.stderr, flush=True)
            self._last_plain = time.monotonic()

    def message(self, text: str) -> None:
        """Print a line of its own (above the progress line on a terminal)."""
        if self.tty:
            sys.stderr.write("\r\033[K")
        print(text, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


# ------------------------------------------------------------------------------- cells
def _read_rows(run_dir: Path) -> list[dict[str, Any]]:
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return []


def load_done(run_dir: Path, cell: Cell) -> CellResult | None:
    """The finished result of ``cell`` in ``run_dir``, or None if it is not done."""
    try:
        done = json.loads((run_dir / DONE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if (done.get("overrides") != json.loads(json.dumps(dict(cell.overrides)))
            or done.get("flower_polling", "stock") != cell.flower_polling):
        raise CellError(
            f"cell {cell.name} in {run_dir} was run with other settings "
            f"({done.get('overrides')}, Flower polling {done.get('flower_polling', 'stock')}); "
            "remove the folder (or pass --rerun) to run it again"
        )
    return CellResult(cell, _read_rows(run_dir), done["wall_seconds"], done["peak_rss_bytes"],
                      done)


def _supervise(
    process: subprocess.Popen,
    cell: Cell,
    run_dir: Path,
    progress: Progress,
    stop: threading.Event | None = None,
) -> int:
    """Wait for a cell's process, showing progress; the peak RSS of its process tree.

    On any exception (Ctrl-C included), or when ``stop`` is set (another cell of a
    parallel grid failed), the process tree is stopped; what outlives the process (Ray
    daemons of a crashed driver) is stopped in any case.
    """
    peak = 0
    tree: list[int] = [process.pid]
    try:
        while process.poll() is None:
            if stop is not None and stop.is_set():
                raise CellStoppedError(f"cell {cell.name} stopped: the grid is stopping")
            tree = process_tree(process.pid)
            peak = max(peak, rss_bytes(tree))
            rows = _read_rows(run_dir)
            done_rounds = max(len(rows) - 1, 0)
            last = rows[-1] if rows else None
            progress.update(
                cell.name,
                f"{cell.name} round {done_rounds}/{cell.rounds}"
                + (f" acc {last['accuracy']:.3f}" if last else "")
                + f" mem {peak / 2**30:.1f} GiB",
            )
            time.sleep(SAMPLE_SECONDS)
    except BaseException:
        _stop_tree(process_tree(process.pid))
        raise
    finally:
        progress.update(cell.name, None)
        # Ray daemons that outlive a crashed driver are still this cell's to stop.
        leftovers = [pid for pid in tree if pid != process.pid and _alive(pid)]
        if leftovers:
            _stop_tree(leftovers)
    return peak


def run_cell(
    cell: Cell,
    runs_dir: Path,
    log_dir: Path,
    progress: Progress,
    stop: threading.Event | None = None,
) -> CellResult:
    """Run one cell's simulation in its own process and wait for it, showing progress.

    ``stop``, when set by another thread, stops the cell's processes (:class:`CellStoppedError`).
    """
    run_dir = runs_dir / cell.name
    if run_dir.exists():
        progress.message(f"{cell.name}: an earlier attempt did not finish; running it again")
        shutil.rmtree(run_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{cell.name}.log"
    overrides = {**cell.overrides, "output-dir": str(runs_dir), "run-name": cell.name}
    spec = json.dumps({"overrides": overrides, "num_supernodes": cell.num_supernodes,
                       "flower_polling": cell.flower_polling})
    load_before = os.getloadavg()
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "experiments.cell", spec],
            cwd=PROJECT_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        peak = _supervise(process, cell, run_dir, progress, stop)
    wall = time.monotonic() - started
    rows = _read_rows(run_dir)
    if process.returncode != 0 or len(rows) != cell.rounds + 1:
        tail = "".join(log_path.read_text(errors="replace").splitlines(True)[-15:])
        raise CellError(
            f"cell {cell.name} failed (exit code {process.returncode}, "
            f"{max(len(rows) - 1, 0)}/{cell.rounds} rounds recorded); log {log_path}:\n{tail}"
        )
    record = {
        "overrides": dict(cell.overrides),
        "labels": dict(cell.labels),
        "num_supernodes": cell.num_supernodes,
        "flower_polling": cell.flower_polling,
        "wall_seconds": round(wall, 2),
        "peak_rss_bytes": peak,
        "code_version": code_version(),
        # The machine is shared: what else ran shows in the load average (1, 5, 15 min).
        "load_average_start": [round(value, 2) for value in load_before],
        "load_average_end": [round(value, 2) for value in os.getloadavg()],
        "machine": machine(),
    }
    write_json(run_dir / DONE_FILE, record)
    return CellResult(cell, rows, round(wall, 2), peak, record)


def machine() -> dict[str, Any]:
    """The CPU model, core count and memory of this machine (Linux ``/proc``)."""
    info: dict[str, Any] = {"cores": os.cpu_count()}
    try:
        cpu = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpu.splitlines()
                           if line.startswith("model name"))
        memory = Path("/proc/meminfo").read_text().split()
        info["memory_gib"] = round(int(memory[memory.index("MemTotal:") + 1]) / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    return info


def code_version() -> str:
    """The git commit of the project (with ``-dirty`` for uncommitted changes), if known."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
            text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def run_grid(
    study: str,
    cells: Sequence[Cell],
    results_dir: Path | None = None,
    rerun: bool = False,
    jobs: int = 1,
) -> list[CellResult]:
    """Run every cell of ``study`` not yet done, then write ``rounds.csv`` and ``cells.csv``.

    Parameters
    ----------
    study : str
        The study's name: its folder under ``results_dir``.
    cells : Sequence[Cell]
        The grid; names must be unique.
    results_dir : Path, optional
        Where study folders go (default ``results/`` in the project).
    rerun : bool
        Run every cell again, discarding earlier results.
    jobs : int
        Cells run at the same time (each its own process and Ray instance). On 2 cores
        two small cells at once finish about 1.3 times sooner than one after the other:
        a cell spends most of a small run starting Python and Ray on one core. The cells'
        timings then include the other cell's load. If a cell fails, the others running
        are stopped (and rerun next time) and the grid raises.

    Returns
    -------
    list[CellResult]
        One result per cell, in the order given.
    """
    if threading.current_thread() is threading.main_thread():
        # A plain `kill` (or a CI time-out) then stops the running cell's processes too.
        signal.signal(signal.SIGTERM, _terminate)
    names = [cell.name for cell in cells]
    if len(set(names)) != len(names):
        raise ValueError(f"cell names must be unique in a study: {names}")
    study_dir = (results_dir or RESULTS_DIR) / study
    runs_dir, log_dir = study_dir / "runs", study_dir / "logs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    if rerun:
        for cell in cells:
            shutil.rmtree(runs_dir / cell.name, ignore_errors=True)
    results: dict[str, CellResult] = {}
    for cell in cells:
        done = load_done(runs_dir / cell.name, cell)
        if done is not None:
            results[cell.name] = done
    _run_pending(study, cells, results, runs_dir, log_dir, jobs)
    ordered = [results[cell.name] for cell in cells]
    write_csvs(study_dir, ordered)
    return ordered


def _run_pending(
    study: str,
    cells: Sequence[Cell],
    results: dict[str, CellResult],
    runs_dir: Path,
    log_dir: Path,
    jobs: int = 1,
) -> None:
    """Run the cells not in ``results`` (done ones), ``jobs`` at a time, adding theirs."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    progress = Progress(study, sum(cell.rounds for cell in cells), len(cells))
    progress.rounds_done = progress.rounds_at_start = sum(r.cell.rounds for r in results.values())
    progress.cells_done = len(results)
    if results:
        progress.message(f"{study}: {len(results)} of {len(cells)} cells already done; skipped")
    pending = [cell for cell in cells if cell.name not in results]

    def finished(result: CellResult) -> None:
        results[result.cell.name] = result
        progress.rounds_done += result.cell.rounds
        progress.cells_done += 1
        final = result.rows[-1]
        progress.message(
            f"{result.cell.name}: accuracy {final['accuracy']:.4f}, loss {final['loss']:.4f} "
            f"after {final['round']} rounds, {_duration(result.wall_seconds)}, "
            f"peak {result.peak_rss_bytes / 2**30:.2f} GiB"
        )

    if jobs == 1:
        for cell in pending:
            finished(run_cell(cell, runs_dir, log_dir, progress))
    else:
        _run_parallel(pending, runs_dir, log_dir, progress, jobs, finished)
    progress.show("all cells done", force=True)
    if progress.tty:
        sys.stderr.write("\n")


def _run_parallel(
    pending: Sequence[Cell],
    runs_dir: Path,
    log_dir: Path,
    progress: Progress,
    jobs: int,
    finished: Callable[[CellResult], None],
) -> None:
    """Run ``pending`` cells ``jobs`` at a time. On a cell's failure (or Ctrl-C, SIGTERM)
    the running cells are stopped, no other cell starts, and the failure is raised."""
    stop = threading.Event()

    def guarded(cell: Cell) -> CellResult:
        if stop.is_set():
            raise CellStoppedError(f"cell {cell.name} not started: the grid is stopping")
        try:
            return run_cell(cell, runs_dir, log_dir, progress, stop)
        except BaseException:
            stop.set()  # before this thread can take the next cell
            raise

    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="cell")
    futures = [pool.submit(guarded, cell) for cell in pending]
    failure: BaseException | None = None
    try:
        waiting = set(futures)
        while waiting and failure is None:
            done, waiting = wait(waiting, timeout=1.0, return_when=FIRST_EXCEPTION)
            errors = []
            for future in futures:
                if future not in done or future.cancelled():
                    continue
                error = future.exception()
                if error is None:
                    finished(future.result())
                else:
                    errors.append(error)
            real = [error for error in errors if not isinstance(error, CellStoppedError)]
            failure = (real or errors)[0] if errors else None
    except BaseException:
        stop.set()
        raise
    finally:
        for future in futures:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    if failure is not None:
        raise failure


# -------------------------------------------------------------------------------- CSVs
def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def write_csvs(study_dir: Path, results: Sequence[CellResult]) -> None:
    """Write ``rounds.csv`` (every round of every cell) and ``cells.csv`` (one per cell)."""
    label_keys = list(dict.fromkeys(key for r in results for key in r.cell.labels))
    metric_keys = list(
        dict.fromkeys(
            key for r in results for row in r.rows for key, value in row.items()
            if _scalar(value) and key not in label_keys
        )
    )
    round_rows = [
        {"cell": r.cell.name, **r.cell.labels, **{k: row.get(k) for k in metric_keys}}
        for r in results
        for row in r.rows
    ]
    write_csv(study_dir / "rounds.csv", ["cell", *label_keys, *metric_keys], round_rows)
    cell_rows = []
    for r in results:
        trained = [row["round_seconds"] for row in r.rows if row["round"] > 0]
        cell_rows.append(
            {
                "cell": r.cell.name,
                **r.cell.labels,
                "supernodes": r.cell.num_supernodes,
                "rounds": r.rows[-1]["round"],
                "final_accuracy": r.rows[-1]["accuracy"],
                "final_loss": r.rows[-1]["loss"],
                "mean_round_seconds": sum(trained) / len(trained) if trained else math.nan,
                "wall_seconds": r.wall_seconds,
                "peak_rss_mib": round(r.peak_rss_bytes / 2**20, 1),
            }
        )
    columns = list(dict.fromkeys(key for row in cell_rows for key in row))
    write_csv(study_dir / "cells.csv", columns, cell_rows)


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Write rows as CSV with these columns, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
