"""The fair-baseline QFL benchmark: where a quantum layer helps, hurts or makes no difference.

``python -m experiments.benchmark`` trains, in federations of 10 simulated UAVs (the
default SAGIN topology, ideal relay, Adam at 1e-3, one local epoch per round):

- four models, every one evaluated on the same data, seeds and partitions:
  ``hybrid`` (4 qubits x 2 layers, RX/RY/RZ + CRX ring), ``hybrid-no-entangler`` (the
  same circuit without the CRX ring, run config ``entangler='none'``), ``classical``
  (the quantum layer swapped for a parameter-matched 4-wide classical layer) and
  ``cnn`` (the same trunk and head without the 4-wide bottleneck);
- on MNIST and Fashion-MNIST (both bundled);
- in three data families: ``standard`` (Dirichlet 1.0 label skew, 600 images per UAV),
  ``small`` (100 images per UAV) and ``skew`` (Dirichlet 0.1), each for ``--rounds``
  rounds. Four regimes are read from them: *few rounds* (round 3 of ``standard``; a run
  is the same up to round r whatever its length), *standard*, *100 images per UAV* and
  *label skew (Dirichlet 0.1)* (the last round);
- the hybrid model on two IBM devices' calibrations (``device='fake_manila'`` and
  ``'fake_lima'``), ``standard`` family, ``DEVICE_ROUNDS`` rounds, against the same seeds
  noiseless and against the classical twin;
- a mixed federation (5 UAVs on ``fake_lima``, 5 noiseless) under the three update
  weightings ``samples``, ``samples-x-fidelity`` and ``calibration``.

Every comparison pairs runs seed by seed (the seed fixes partitions, initial weights and
sampling). The report gives the paired difference of final test accuracy with its 95 %
interval, the effect size (Cohen's d_z: mean difference over the differences' standard
deviation), the paired t-test's p-value and Holm's adjustment over all comparisons of the
benchmark, and calls a difference only when the adjusted p is below 0.05 *and* the
difference is at least :data:`MIN_EFFECT` (well above the 0.003 accuracy that the same
run can differ by across machines; README, "What repeats, and how closely"). It also
reports the rounds each model needs to reach a target accuracy and the communication
that costs.

The grid is resumable (finished cells are kept; run it again after an interruption) and
shows a progress line; ``--report-only`` writes the report from the cells done so far.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.grid import PROJECT_ROOT, Cell, CellResult, load_done, run_grid
from experiments.report import (
    holm,
    positive_int,
    study_parser,
    t_interval,
    t_test_p,
)

STUDY = "benchmark"
UAVS = 10
TEST_SAMPLES = 2000
"""Test images evaluated each round (the first 2,000 of the test set, the same for all)."""
SEEDS = (1, 2, 3, 4, 5)
ROUNDS = 15
FEW_ROUNDS = 3
DEVICE_ROUNDS = 10
"""Rounds of the device runs (a device round costs about 4 times a noiseless one)."""
MIN_EFFECT = 0.01
"""Smallest accuracy difference the benchmark calls a difference: more than three times
the 0.003 by which one run's accuracy can differ between machines of the same kind."""
ALPHA = 0.05
TELEPORT_SHOTS = 2000
"""Shots per teleported float at run config ``relay='teleport'`` (its default): one
end-to-end Bell pair each."""

MODELS: dict[str, dict[str, Any]] = {
    "hybrid": {"model": "hybrid"},
    "hybrid-no-entangler": {"model": "hybrid", "entangler": "none"},
    "classical": {"model": "classical"},
    "cnn": {"model": "cnn"},
}
MODEL_LABELS = {
    "hybrid": "hybrid (4 qubits, CRX ring)",
    "hybrid-no-entangler": "hybrid, no entangler",
    "classical": "classical (parameter-matched)",
    "cnn": "cnn (no bottleneck)",
}
DATASETS = ("mnist", "fashion-mnist")
FAMILIES: dict[str, dict[str, Any]] = {
    "standard": {"partitioning": "dirichlet", "dirichlet-alpha": 1.0,
                 "max-samples-per-client": 600},
    "small": {"partitioning": "dirichlet", "dirichlet-alpha": 1.0,
              "max-samples-per-client": 100},
    "skew": {"partitioning": "dirichlet", "dirichlet-alpha": 0.1,
             "max-samples-per-client": 600},
}


@dataclass(frozen=True)
class Regime:
    """A regime of the report: a data family read at a round (None: its last)."""

    name: str
    family: str
    round: int | None = None


REGIMES = (
    Regime("few rounds", "standard", FEW_ROUNDS),
    Regime("standard", "standard"),
    Regime("100 images per UAV", "small"),
    Regime("label skew (Dirichlet 0.1)", "skew"),
)
DEVICES = ("fake_manila", "fake_lima")
MIXED_DEVICE = "fake_lima"
MIXED_UAVS = tuple(f"uav-{i}" for i in range(5))
"""UAVs of the mixed federation that run on :data:`MIXED_DEVICE`; the others are noiseless."""
WEIGHTINGS = ("samples", "samples-x-fidelity", "calibration")
MODEL_COMPARISONS = (
    ("hybrid", "classical", "does the quantum layer beat its parameter-matched classical twin?"),
    ("hybrid", "hybrid-no-entangler", "does the entangling CRX ring matter?"),
    ("hybrid", "cnn", "does the quantum layer keep up with an unconstrained CNN?"),
)


# ---------------------------------------------------------------------------------- grid
def _base(seed: int, dataset: str, rounds: int) -> dict[str, Any]:
    # min-train-nodes stays at its default (2): on the default topology a patrolling UAV
    # now and then has no relay path, and a round then trains the 9 that do instead of
    # being skipped (the same rounds and UAVs for every model of a seed).
    return {"seed": seed, "dataset": dataset, "num-server-rounds": rounds,
            "test-samples": TEST_SAMPLES}


def write_device_map(path: Path) -> str:
    """Write the mixed federation's device map; its path as the run config takes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f'[{uav}]\ndevice = "{MIXED_DEVICE}"\n\n' for uav in MIXED_UAVS)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path.resolve())


def cells(
    seeds: Sequence[int] = SEEDS,
    rounds: int = ROUNDS,
    device_rounds: int = DEVICE_ROUNDS,
    datasets: Sequence[str] = DATASETS,
    device_map: str = "",
) -> list[Cell]:
    """The whole grid, seed by seed (so an interrupted benchmark has whole seeds done).

    ``device_map`` is the mixed federation's map (:func:`write_device_map`); without it
    the weighting cells are left out.
    """
    grid: list[Cell] = []
    for seed in seeds:
        for dataset in datasets:
            for family, data in FAMILIES.items():
                for model, settings in MODELS.items():
                    grid.append(Cell(
                        name=f"{dataset}-{family}-{model}-seed{seed}",
                        overrides={**_base(seed, dataset, rounds), **data, **settings},
                        labels={"set": "models", "dataset": dataset, "family": family,
                                "model": model, "device": "", "weighting": "samples",
                                "seed": seed},
                        num_supernodes=UAVS,
                    ))
            for device in DEVICES:
                grid.append(Cell(
                    name=f"{dataset}-standard-hybrid-{device}-seed{seed}",
                    overrides={**_base(seed, dataset, device_rounds), **FAMILIES["standard"],
                               **MODELS["hybrid"], "device": device},
                    labels={"set": "devices", "dataset": dataset, "family": "standard",
                            "model": "hybrid", "device": device, "weighting": "samples",
                            "seed": seed},
                    num_supernodes=UAVS,
                ))
        if device_map:
            for weighting in WEIGHTINGS:
                grid.append(Cell(
                    name=f"mnist-standard-hybrid-mixed-{weighting}-seed{seed}",
                    overrides={**_base(seed, "mnist", device_rounds), **FAMILIES["standard"],
                               **MODELS["hybrid"], "device-map": device_map,
                               "weighting": weighting},
                    labels={"set": "mixed", "dataset": "mnist", "family": "standard",
                            "model": "hybrid", "device": f"mixed ({MIXED_DEVICE})",
                            "weighting": weighting, "seed": seed},
                    num_supernodes=UAVS,
                ))
    return grid


# ------------------------------------------------------------------------------ analysis
def accuracy_at(result: CellResult, round_number: int | None = None) -> float:
    """Test accuracy after ``round_number`` (None: the last round)."""
    if round_number is None:
        return float(result.rows[-1]["accuracy"])
    for row in result.rows:
        if row["round"] == round_number:
            return float(row["accuracy"])
    raise KeyError(f"{result.cell.name} has no round {round_number}")


def select(results: Sequence[CellResult], **labels: Any) -> list[CellResult]:
    """The results whose labels have these values."""
    return [r for r in results if all(r.cell.labels.get(k) == v for k, v in labels.items())]


@dataclass
class Comparison:
    """``first`` minus ``second``, final test accuracy paired by seed."""

    group: str
    question: str
    regime: str
    dataset: str
    first: str
    second: str
    diffs: list[float]
    first_mean: float
    second_mean: float
    p: float = math.nan
    p_holm: float = math.nan

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return float(np.mean(self.diffs)) if self.diffs else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        """95 % t interval of the mean difference."""
        return t_interval(self.diffs)

    @property
    def effect_size(self) -> float:
        """Cohen's d_z: mean difference over the differences' standard deviation."""
        if self.n < 2:
            return math.nan
        sd = float(np.std(self.diffs, ddof=1))
        if sd == 0.0:
            return math.inf * np.sign(self.mean) if self.mean else math.nan
        return self.mean / sd

    @property
    def verdict(self) -> str:
        """``helps`` / ``hurts`` (first against second) or ``no difference``."""
        if (math.isfinite(self.p_holm) and self.p_holm < ALPHA
                and abs(self.mean) >= MIN_EFFECT):
            return "helps" if self.mean > 0 else "hurts"
        return "no difference"


def paired(first: Sequence[CellResult], second: Sequence[CellResult],
           round_first: int | None = None, round_second: int | None = None
           ) -> tuple[list[float], float, float]:
    """Differences first - second by seed (seeds both have), and the two means."""
    by_seed = {r.cell.labels["seed"]: accuracy_at(r, round_second) for r in second}
    pairs = [(accuracy_at(r, round_first), by_seed[r.cell.labels["seed"]]) for r in first
             if r.cell.labels["seed"] in by_seed]
    diffs = [a - b for a, b in pairs]
    means = (float(np.mean([a for a, _ in pairs])) if pairs else math.nan,
             float(np.mean([b for _, b in pairs])) if pairs else math.nan)
    return diffs, *means


def comparisons(results: Sequence[CellResult], device_rounds: int = DEVICE_ROUNDS
                ) -> list[Comparison]:
    """Every comparison of the benchmark, with Holm's adjustment over all of them."""
    found: list[Comparison] = []
    models = select(results, set="models")
    for dataset in DATASETS:
        for regime in REGIMES:
            for first, second, question in MODEL_COMPARISONS:
                a = select(models, dataset=dataset, family=regime.family, model=first)
                b = select(models, dataset=dataset, family=regime.family, model=second)
                if not a or not b:
                    continue
                diffs, ma, mb = paired(a, b, regime.round, regime.round)
                found.append(Comparison("models", question, regime.name, dataset, first,
                                        second, diffs, ma, mb))
        for device in DEVICES:
            on_device = select(results, set="devices", dataset=dataset, device=device)
            for second, question in (
                ("hybrid", "what do the device's errors cost?"),
                ("classical", "does the hybrid on a real device's noise keep up with "
                              "the classical twin?"),
            ):
                base = select(models, dataset=dataset, family="standard", model=second)
                if not on_device or not base:
                    continue
                diffs, ma, mb = paired(on_device, base, None, device_rounds)
                found.append(Comparison("devices", question, f"{device_rounds} rounds",
                                        dataset, f"hybrid on {device}",
                                        f"{second} (noiseless)", diffs, ma, mb))
    mixed = select(results, set="mixed")
    reference = select(mixed, weighting="samples")
    for weighting in WEIGHTINGS[1:]:
        runs = select(mixed, weighting=weighting)
        if runs and reference:
            diffs, ma, mb = paired(runs, reference)
            found.append(Comparison(
                "weighting", "does weighting updates by expected fidelity help a "
                "federation of mixed devices?", f"{device_rounds} rounds", "mnist",
                f"weighting {weighting}", "weighting samples", diffs, ma, mb))
    for comparison in found:
        comparison.p = t_test_p(comparison.diffs)
    for comparison, adjusted in zip(found, holm([c.p for c in found]), strict=True):
        comparison.p_holm = adjusted
    return found


def target_accuracy(results: Sequence[CellResult], dataset: str, family: str) -> float:
    """The target of rounds-to-target: 90 % of the lowest of the four models' mean final
    accuracies (noiseless), rounded down to 0.01, so every model can reach it."""
    means = [np.mean([accuracy_at(r) for r in select(results, set="models", dataset=dataset,
                                                         family=family, model=model)])
             for model in MODELS]
    means = [m for m in means if np.isfinite(m)]
    return math.floor(0.9 * min(means) * 100) / 100 if means else math.nan


def parameters_of(result: CellResult, runs_dir: Path) -> int:
    """Trainable parameters of a run's model, from its ``config.json``."""
    return int(json.loads((runs_dir / result.cell.name / "config.json").read_text())[
        "parameters"])


def to_target(result: CellResult, target: float, parameters: int) -> dict[str, Any] | None:
    """Rounds (at least 1) to reach ``target`` and what they moved: floats up and down (every UAV
    trained receives the model and sends its update: 2 x parameters each), bytes as sent
    (ideal relay) and the Bell pairs the floats would take over ``relay='teleport'``."""
    floats = 0
    sent = 0
    for row in result.rows:
        if row["round"] > 0:
            floats += 2 * parameters * int(row.get("clients_used") or 0)
            sent += int(row.get("bytes_up") or 0) + int(row.get("bytes_down") or 0)
        if row["round"] > 0 and row["accuracy"] >= target:
            return {"rounds": int(row["round"]), "floats": floats, "bytes": sent,
                    "bell_pairs": floats * TELEPORT_SHOTS}
    return None


# ---------------------------------------------------------------------------------- main
def done_results(study_dir: Path, grid: Sequence[Cell]) -> list[CellResult]:
    """The cells of ``grid`` already done in ``study_dir`` (in grid order)."""
    found = []
    for cell in grid:
        result = load_done(study_dir / "runs" / cell.name, cell)
        if result is not None:
            found.append(result)
    return found


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark's grid (or what is left of it) and write its report."""
    parser = study_parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                        help="seeds to run (default: 1 2 3 4 5)")
    parser.add_argument("--rounds", type=positive_int, default=ROUNDS,
                        help=f"server rounds of the noiseless runs (default: {ROUNDS})")
    parser.add_argument("--device-rounds", type=positive_int, default=DEVICE_ROUNDS,
                        help=f"server rounds of the device runs (default: {DEVICE_ROUNDS})")
    parser.add_argument("--jobs", type=positive_int, default=2,
                        help="runs at the same time (default: 2, one per core)")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from the runs done so far; run nothing")
    args = parser.parse_args(argv)
    if args.rounds < FEW_ROUNDS:
        parser.error(f"--rounds must be at least {FEW_ROUNDS} (the few-rounds regime)")
    if args.device_rounds > args.rounds:
        parser.error("--device-rounds must be at most --rounds (the device runs are "
                     "compared with the noiseless runs at that round)")
    study_dir = args.results_dir / STUDY
    device_map = write_device_map(study_dir / "device-map.toml")
    grid = cells(args.seeds, args.rounds, args.device_rounds, DATASETS, device_map)
    if args.report_only:
        results = done_results(study_dir, grid)
        if not results:
            parser.error(f"no finished runs in {study_dir / 'runs'}; run without "
                         "--report-only first")
    else:
        results = run_grid(STUDY, grid, args.results_dir, rerun=args.rerun, jobs=args.jobs)
    from experiments.benchmark_report import write_benchmark_report

    write_benchmark_report(study_dir, results, len(grid), args.rounds, args.device_rounds,
                           args.jobs)


if __name__ == "__main__":
    main()
