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
from matplotlib.ticker import MaxNLocator

from experiments.grid import PROJECT_ROOT, Cell, CellResult, load_done, run_grid, write_csv
from experiments.report import (
    holm,
    markdown_table,
    pm,
    positive_int,
    save_figure,
    study_parser,
    t_interval,
    t_test_p,
    write_report,
)
from task.plots import plt

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


def rounds_to_target_rows(results: Sequence[CellResult], runs_dir: Path) -> list[list[str]]:
    """One row per dataset, family and model: target, rounds and communication to it."""
    table = []
    for dataset in DATASETS:
        for family in FAMILIES:
            target = target_accuracy(results, dataset, family)
            if not math.isfinite(target):
                continue
            for model in MODELS:
                runs = select(results, set="models", dataset=dataset, family=family,
                              model=model)
                if not runs:
                    continue
                parameters = parameters_of(runs[0], runs_dir)
                reached = [x for x in (to_target(r, target, parameters) for r in runs) if x]
                if not reached:
                    table.append([dataset, family, f"{target:.2f}", MODEL_LABELS[model],
                                  f"{parameters:,}", f"0 of {len(runs)}", "-", "-", "-"])
                    continue
                table.append([
                    dataset, family, f"{target:.2f}", MODEL_LABELS[model], f"{parameters:,}",
                    f"{len(reached)} of {len(runs)}",
                    f"{np.mean([x['rounds'] for x in reached]):.1f}",
                    f"{np.mean([x['floats'] for x in reached]) / 1e6:.2f} M",
                    f"{np.mean([x['bell_pairs'] for x in reached]):.2e}",
                ])
    return table


# ------------------------------------------------------------------------------- figures
def plot_differences(found: Sequence[Comparison], path: Path) -> None:
    """Forest plot: every comparison's paired difference and 95 % interval."""
    height = 1.2 + 0.26 * len(found)
    fig, ax = plt.subplots(figsize=(10, height), constrained_layout=True)
    colors = {"helps": "C2", "hurts": "C3", "no difference": "0.35"}
    labels = []
    for index, comparison in enumerate(reversed(found)):
        low, high = comparison.interval
        y = index
        ax.errorbar([comparison.mean], [y],
                    xerr=[[comparison.mean - low], [high - comparison.mean]]
                    if math.isfinite(low) else None,
                    fmt="o", color=colors[comparison.verdict], capsize=3, markersize=4)
        labels.append(f"{comparison.dataset}, {comparison.regime}: {comparison.first} - "
                      f"{comparison.second}")
    ax.axvline(0.0, color="0.2", linewidth=1)
    ax.axvspan(-MIN_EFFECT, MIN_EFFECT, color="0.85", zorder=0,
               label=f"|difference| < {MIN_EFFECT}: not called a difference")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylim(-0.8, len(labels) - 0.2)
    for verdict, color in colors.items():
        ax.plot([], [], "o", color=color, label=verdict)
    ax.set(xlabel="Paired difference of final test accuracy (mean and 95 % interval, "
                  "seed by seed)",
           title="Every comparison of the benchmark (colour: verdict after Holm's "
                 "correction)")
    ax.grid(alpha=0.3, axis="x")
    fig.legend(fontsize=8, loc="outside lower center", ncols=4)
    save_figure(fig, path)


def _mean_curve(runs: Sequence[CellResult], length: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    length = min(len(r.rows) for r in runs) if length is None else length
    rounds = np.array([row["round"] for row in runs[0].rows[:length]])
    values = np.array([[row["accuracy"] for row in r.rows[:length]] for r in runs])
    return rounds, values.mean(0), values.min(0), values.max(0)


def plot_curves(results: Sequence[CellResult], path: Path) -> None:
    """Accuracy per round, one panel per dataset and family, one line per model."""
    fig, axes = plt.subplots(len(DATASETS), len(FAMILIES), figsize=(14, 8.4), sharey=True,
                             constrained_layout=True, squeeze=False)
    for i, dataset in enumerate(DATASETS):
        for j, family in enumerate(FAMILIES):
            ax = axes[i][j]
            for index, model in enumerate(MODELS):
                runs = select(results, set="models", dataset=dataset, family=family,
                              model=model)
                if not runs:
                    continue
                rounds, mean, low, high = _mean_curve(runs)
                ax.plot(rounds, mean, color=f"C{index}",
                        label=MODEL_LABELS[model] if i == j == 0 else None)
                ax.fill_between(rounds, low, high, color=f"C{index}", alpha=0.15)
            if family == "standard":
                ax.axvline(FEW_ROUNDS, color="0.5", linestyle=":", linewidth=1,
                           label=f"few rounds (round {FEW_ROUNDS})" if i == 0 else None)
            ax.set_title(f"{dataset}, {family}\n{_family_text(family)}", fontsize=10)
            ax.set(xlabel="Server round", ylim=(0, 1))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if j == 0:
                ax.set_ylabel("Test accuracy")
            ax.grid(alpha=0.3)
    seeds = len({r.cell.labels["seed"] for r in select(results, set="models")})
    fig.legend(loc="outside lower center", ncols=5, fontsize=9,
               title=f"mean over {seeds} seeds, band: min to max")
    save_figure(fig, path)


def plot_devices(results: Sequence[CellResult], path: Path, device_rounds: int) -> None:
    """Left: the hybrid on each device against noiseless hybrid and classical (per
    dataset); right: the mixed federation under each weighting."""
    fig, axes = plt.subplots(1, len(DATASETS) + 1, figsize=(15, 4.6), sharey=True,
                             constrained_layout=True)
    length = device_rounds + 1
    for ax, dataset in zip(axes, DATASETS, strict=False):
        lines = [(f"hybrid on {d}", select(results, set="devices", dataset=dataset, device=d))
                 for d in DEVICES]
        lines += [(f"{m} (noiseless)", select(results, set="models", dataset=dataset,
                                               family="standard", model=m))
                  for m in ("hybrid", "classical")]
        for index, (label, runs) in enumerate(lines):
            if not runs:
                continue
            rounds, mean, low, high = _mean_curve(runs, length)
            ax.plot(rounds, mean, color=f"C{index}", label=f"{label} ({len(runs)} seeds)",
                    linestyle="-" if "on fake" in label else "--")
            ax.fill_between(rounds, low, high, color=f"C{index}", alpha=0.15)
        ax.set(title=f"{dataset}, standard family: device noise", xlabel="Server round",
               ylim=(0, 1), ylabel="Test accuracy (mean, band min-max)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    ax = axes[-1]
    for index, weighting in enumerate(WEIGHTINGS):
        runs = select(results, set="mixed", weighting=weighting)
        if not runs:
            continue
        rounds, mean, low, high = _mean_curve(runs, length)
        ax.plot(rounds, mean, color=f"C{index + 4}", label=f"{weighting} ({len(runs)} seeds)")
        ax.fill_between(rounds, low, high, color=f"C{index + 4}", alpha=0.15)
    ax.set(title=f"mnist, 5 UAVs on {MIXED_DEVICE} + 5 noiseless: weighting",
           xlabel="Server round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


# -------------------------------------------------------------------------------- report
def _family_text(family: str) -> str:
    data = FAMILIES[family]
    return (f"Dirichlet {data['dirichlet-alpha']:g}, "
            f"{data['max-samples-per-client']} images per UAV")


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _fmt_d(d: float) -> str:
    if math.isnan(d):
        return "n/a"
    return f"{d:+.2f}" if math.isfinite(d) else ("+inf" if d > 0 else "-inf")


def comparison_rows(found: Sequence[Comparison]) -> list[list[str]]:
    """The comparisons as table rows."""
    rows = []
    for c in found:
        low, high = c.interval
        rows.append([c.dataset, c.regime, f"{c.first} - {c.second}",
                     f"{c.first_mean:.3f} / {c.second_mean:.3f}",
                     f"{c.mean:+.3f} [{low:+.3f}, {high:+.3f}]" if math.isfinite(low)
                     else f"{c.mean:+.3f} [n/a]", _fmt_d(c.effect_size),
                     _fmt_p(c.p), _fmt_p(c.p_holm), f"**{c.verdict}**"
                     if c.verdict != "no difference" else c.verdict])
    return rows


def accuracy_table(results: Sequence[CellResult]) -> list[list[str]]:
    """Final accuracy (mean ± std over seeds) per dataset, regime and model."""
    rows = []
    for dataset in DATASETS:
        for regime in REGIMES:
            row = [dataset, regime.name]
            for model in MODELS:
                runs = select(results, set="models", dataset=dataset, family=regime.family,
                              model=model)
                row.append(pm([accuracy_at(r, regime.round) for r in runs]) if runs else "-")
            rows.append(row)
    return rows


PAIR_HEADLINES = {
    ("hybrid", "classical"): "The quantum layer against its parameter-matched classical twin",
    ("hybrid", "hybrid-no-entangler"): "The entangling CRX ring (hybrid against the same "
                                       "circuit without it)",
    ("hybrid", "cnn"): "The hybrid against the unconstrained CNN",
}


def _range(chosen: Sequence[Comparison]) -> str:
    means = [c.mean for c in chosen]
    return f"{min(means):+.3f} to {max(means):+.3f}"


def headline(found: Sequence[Comparison], first: str, second: str) -> str | None:
    """One sentence: in how many dataset-regime cells ``first`` scores above, below or
    the same as ``second``, and the range of the mean differences."""
    chosen = [c for c in found if c.group == "models" and (c.first, c.second) == (first, second)]
    if not chosen:
        return None
    helps = [f"{c.dataset} {c.regime}" for c in chosen if c.verdict == "helps"]
    hurts = [f"{c.dataset} {c.regime}" for c in chosen if c.verdict == "hurts"]
    same = len(chosen) - len(helps) - len(hurts)
    text = (f"higher in {len(helps)}, lower in {len(hurts)} and no different in {same} of "
            f"the {len(chosen)} dataset-regime cells (mean differences {_range(chosen)})")
    details = "; ".join(part for part in (
        f"higher: {', '.join(helps)}" if helps else "",
        f"lower: {', '.join(hurts)}" if hurts else "") if part)
    return text + (f". {details[0].upper()}{details[1:]}" if details else "")


def _cell_text(c: Comparison) -> str:
    low, high = c.interval
    text = (f"{c.mean:+.3f} [{low:+.3f}, {high:+.3f}]" if math.isfinite(low)
            else f"{c.mean:+.3f}")
    return f"**{text} {c.verdict}**" if c.verdict != "no difference" else text


def headline_rows(found: Sequence[Comparison]) -> list[list[str]]:
    """Per dataset and regime: the hybrid's and its twin's accuracy and the hybrid's
    paired differences to the other three models (verdicts in bold)."""
    rows = []
    by_key = {(c.dataset, c.regime, c.second): c for c in found if c.group == "models"}
    for dataset in DATASETS:
        for regime in REGIMES:
            versus = [by_key.get((dataset, regime.name, second))
                      for _, second, _ in MODEL_COMPARISONS]
            if not any(versus):
                continue
            first = next(c for c in versus if c)
            twin = by_key.get((dataset, regime.name, "classical"))
            rows.append([dataset, regime.name, f"{first.first_mean:.3f}",
                         f"{twin.second_mean:.3f}" if twin else "-",
                         *(_cell_text(c) if c else "-" for c in versus)])
    return rows


HEADLINE_HEADER = ["dataset", "regime", "hybrid", "classical twin",
                   "hybrid - classical twin", "hybrid - no entangler", "hybrid - cnn"]


def findings(found: Sequence[Comparison]) -> list[str]:
    """Plain sentences from the comparisons."""
    lines = []
    for (first, second), title in PAIR_HEADLINES.items():
        sentence = headline(found, first, second)
        if sentence:
            lines.append(f"- **{title}:** {first} scores {sentence}.")
    for group, text in (("models", "model comparisons (noiseless)"),
                        ("devices", "device comparisons"),
                        ("weighting", "weighting comparisons")):
        chosen = [c for c in found if c.group == group]
        if not chosen:
            continue
        called = [c for c in chosen if c.verdict != "no difference"]
        lines.append(f"- Of the {len(chosen)} {text}, {len(called)} show a difference "
                     f"(Holm-adjusted p < {ALPHA}, |difference| >= {MIN_EFFECT}).")
        for c in called:
            low, high = c.interval
            lines.append(f"  - {c.dataset}, {c.regime}: {c.first} scores {abs(c.mean):.3f} "
                         f"{'above' if c.mean > 0 else 'below'} {c.second} "
                         f"({c.mean:+.3f} [{low:+.3f}, {high:+.3f}], d_z "
                         f"{_fmt_d(c.effect_size)}, adjusted p {_fmt_p(c.p_holm)}).")
        quiet = [c for c in chosen if c.verdict == "no difference" and c.n >= 2]
        if quiet:
            widest = max(quiet, key=lambda c: max(abs(x) for x in c.interval))
            bound = max(abs(x) for x in widest.interval)
            lines.append(f"  - Where no difference is called, every 95 % interval lies "
                         f"within ±{bound:.3f} accuracy (the widest: {widest.dataset}, "
                         f"{widest.regime}, {widest.first} - {widest.second}).")
    uncorrected = [c for c in found if math.isfinite(c.p) and c.p < ALPHA
                   and c.verdict == "no difference"]
    if uncorrected:
        listed = "; ".join(f"{c.dataset}, {c.regime}: {c.first} - {c.second} {c.mean:+.3f} "
                           f"(p {_fmt_p(c.p)})" for c in sorted(uncorrected, key=lambda c: c.p))
        lines.append(
            f"- Not called, but with p < {ALPHA} before the correction ({len(uncorrected)} of "
            f"{len(found)}; by chance alone about {ALPHA * len(found):.1f} would be): "
            f"{listed}. With {max(c.n for c in found)} seeds and {len(found)} comparisons "
            f"Holm's method needs p < {ALPHA / len(found):.4f} for the strongest; these are "
            "the places to look with more seeds.")
    return lines


def write_benchmark_report(study_dir: Path, results: Sequence[CellResult], expected: int,
                           rounds: int, device_rounds: int, jobs: int = 2,
                           runs_dir: Path | None = None) -> None:
    """Figures, ``comparisons.csv`` and ``report.md`` of the benchmark into ``study_dir``,
    from the runs in ``runs_dir`` (default: ``study_dir / "runs"``)."""
    runs_dir = study_dir / "runs" if runs_dir is None else runs_dir
    found = comparisons(results, device_rounds)
    plot_differences(found, study_dir / "differences.png")
    plot_curves(results, study_dir / "curves.png")
    plot_devices(results, study_dir / "devices.png", device_rounds)
    write_csv(study_dir / "comparisons.csv",
              ["group", "dataset", "regime", "first", "second", "n", "first_mean",
               "second_mean", "difference", "ci_low", "ci_high", "effect_size_dz", "p",
               "p_holm", "verdict"],
              [{"group": c.group, "dataset": c.dataset, "regime": c.regime, "first": c.first,
                "second": c.second, "n": c.n, "first_mean": round(c.first_mean, 5),
                "second_mean": round(c.second_mean, 5), "difference": round(c.mean, 5),
                "ci_low": round(c.interval[0], 5), "ci_high": round(c.interval[1], 5),
                "effect_size_dz": round(c.effect_size, 4), "p": c.p, "p_holm": c.p_holm,
                "verdict": c.verdict} for c in found])
    seeds = sorted({r.cell.labels["seed"] for r in results})
    cores = "/".join(sorted({str(r.record.get("machine", {}).get("cores", "?"))
                             for r in results}))
    hours = sum(r.wall_seconds for r in results) / 3600
    loads = [r.record.get("load_average_start", [math.nan])[0] for r in results if r.record]
    partial = (f"\n**Partial: {len(results)} of {expected} runs done.** Run the command "
               "again to finish; the tables below use what is done.\n"
               if len(results) < expected else "")
    table_header = ["dataset", "regime", *[MODEL_LABELS[m] for m in MODELS]]
    device_rows = []
    for dataset in DATASETS:
        for device in DEVICES:
            runs = select(results, set="devices", dataset=dataset, device=device)
            if runs:
                device_rows.append([dataset, f"hybrid on {device}",
                                    pm([accuracy_at(r) for r in runs])])
        for model in ("hybrid", "classical"):
            runs = select(results, set="models", dataset=dataset, family="standard",
                          model=model)
            if runs:
                device_rows.append([dataset, f"{model} (noiseless)",
                                    pm([accuracy_at(r, device_rounds) for r in runs])])
    for weighting in WEIGHTINGS:
        runs = select(results, set="mixed", weighting=weighting)
        if runs:
            device_rows.append(["mnist", f"mixed federation, weighting {weighting}",
                                pm([accuracy_at(r) for r in runs])])
    environment = _environment(results, runs_dir)
    text = f"""# The fair-baseline QFL benchmark

Reproduce: `python -m experiments.benchmark` ({len(results)} runs, {hours:.2f} h of run
time summed over runs, {jobs} at a time on a {cores}-core machine; load
average at the runs' starts {np.nanmin(loads) if loads else math.nan:.1f} to
{np.nanmax(loads) if loads else math.nan:.1f}; resumable: run it again after an
interruption). `--report-only` rewrites this report from the runs on disk.
{partial}
**Setting.** {UAVS} simulated UAVs (default SAGIN topology, ideal relay), Adam at 1e-3,
one local epoch per round, batch 32, the first {TEST_SAMPLES:,} test images evaluated
centrally after every round, seeds {", ".join(map(str, seeds))} (a seed fixes the
partitions, initial weights and sampling, so runs are paired by seed). Data families
(each {rounds} rounds): {"; ".join(f"`{f}` = {_family_text(f)}" for f in FAMILIES)}.
Regimes: *few rounds* = round {FEW_ROUNDS} of `standard`; *standard*, *100 images per
UAV* and *label skew* = the last round of `standard`, `small` and `skew`. Device runs:
the hybrid with `device` = {", ".join(f"`{d}`" for d in DEVICES)} (IBM calibration
snapshots; README "Device-realistic circuits"), `standard` family, {device_rounds}
rounds, compared with the noiseless runs of the same seeds at round {device_rounds}.

**Statistics.** Paired difference of test accuracy (first minus second), mean over
seeds with its 95 % t interval; effect size d_z (mean difference / standard deviation of
the differences); two-sided paired t-test p; p adjusted by Holm's method over all
{len(found)} comparisons. A difference is called (**helps** / **hurts**) only when the
adjusted p < {ALPHA} and the difference is at least {MIN_EFFECT} accuracy, more than
three times the 0.003 by which the same run differs across machines (README, Results,
"What repeats, and how closely"), so no verdict rests on floating-point noise.

## Findings

{chr(10).join(findings(found))}

Final test accuracy of the hybrid and its classical twin, and the hybrid's paired
differences (mean over seeds [95 % interval]; a verdict in bold where one is called):

{markdown_table(HEADLINE_HEADER, headline_rows(found))}

![paired differences](differences.png)

## Final test accuracy (mean ± std over seeds)

{markdown_table(table_header, accuracy_table(results))}

![accuracy per round](curves.png)

## Every comparison

{markdown_table(["dataset", "regime", "comparison", "means", "difference [95 % CI]",
                 "d_z", "p", "p (Holm)", "verdict"], comparison_rows(found))}

## Device noise and calibration-aware weighting

{markdown_table(["dataset", "runs", f"accuracy after {device_rounds} rounds"], device_rows)}

The mixed federation: UAVs {MIXED_UAVS[0]} to {MIXED_UAVS[-1]} run on `{MIXED_DEVICE}`
(expected circuit fidelity 0.49), the others noiseless (1.0); `calibration` weighs each
update by its samples times that fidelity, `samples-x-fidelity` by its samples times the
relay path's end-to-end fidelity (ideal channel: the topology's figures).

![device noise and weighting](devices.png)

## Rounds and communication to a target

Target per dataset and family: 90 % of the lowest of the four models' mean final
accuracies, rounded down to 0.01, so that every model can reach it. Floats moved: every
UAV trained receives the model and returns its update (2 x parameters each round);
Bell pairs: what those floats would take over `relay='teleport'` at its default
{TELEPORT_SHOTS:,} shots (one end-to-end pair per shot; README "Relay channels"). Means
over the seeds that reached the target.

{markdown_table(["dataset", "family", "target", "model", "parameters", "seeds reaching",
                 "rounds", "floats moved", "Bell pairs (teleport)"],
                rounds_to_target_rows(results, runs_dir))}

## What was cut to fit 2 hours on 2 cores

- 10 UAVs and at most 600 images each (6,000 of the 60,000 training images), {rounds}
  rounds; 2,000 test images. A cell of this size costs about 30 s, two thirds of it
  starting Python, Ray and Flower, so more, smaller cells buy more comparisons.
- Device noise on the `standard` family only, for {device_rounds} rounds; the
  no-entangler and device settings are not crossed (the device compiles the ring).
- {len(seeds)} seeds. In regimes this small the seeds spread widely (the table's ±),
  so most 95 % intervals are several hundredths wide: each says how large a difference
  its comparison could have missed. More seeds and longer runs would narrow them.
- Classical models train the same number of rounds as the hybrid; no per-model learning
  rate tuning (Adam at 1e-3 for all, as the paper).

## Reproducibility

Runs repeat bit for bit on one machine. On another machine of the same kind the same
seeds differ by up to about 0.003 accuracy (README, "What repeats, and how closely");
the verdicts need differences of at least {MIN_EFFECT}. What decides the last digits was
recorded per run (`runs/*/config.json`, key `environment`): {environment}

Data: `comparisons.csv` (every comparison), `rounds.csv` (every round of every run),
`cells.csv` (one line per run), `runs/` (each run's outputs).
"""
    write_report(study_dir, text)


def _environment(results: Sequence[CellResult], runs_dir: Path) -> str:
    """The distinct environments the runs recorded, in one line."""
    seen: dict[str, int] = {}
    for result in results:
        try:
            env = json.loads((runs_dir / result.cell.name / "config.json").read_text()).get(
                "environment", {})
        except (OSError, ValueError):
            continue
        versions = env.get("versions", {})
        parts = [env.get("cpu_model"), f"torch kernels {env.get('torch_cpu_capability')}",
                 f"torch threads {env.get('torch_threads')}",
                 *(f"{name} {versions[name]}" for name in ("torch", "numpy", "pennylane", "flwr")
                   if name in versions)]
        text = ", ".join(str(part) for part in parts if part)
        seen[text] = seen.get(text, 0) + 1
    if not seen:
        return "not recorded."
    return "; ".join(f"{text} ({count} runs)" for text, count in seen.items()) + "."


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
    write_benchmark_report(study_dir, results, len(grid), args.rounds, args.device_rounds,
                           args.jobs)


if __name__ == "__main__":
    main()
