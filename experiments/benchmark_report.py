"""The benchmark's report: its figures, tables and findings (:mod:`experiments.benchmark`)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from experiments.benchmark import (
    ALPHA,
    DATASETS,
    DEVICES,
    FAMILIES,
    FEW_ROUNDS,
    MIN_EFFECT,
    MIXED_DEVICE,
    MIXED_UAVS,
    MODEL_COMPARISONS,
    MODEL_LABELS,
    MODELS,
    REGIMES,
    TELEPORT_SHOTS,
    TEST_SAMPLES,
    UAVS,
    WEIGHTINGS,
    Comparison,
    accuracy_at,
    comparisons,
    parameters_of,
    select,
    target_accuracy,
    to_target,
)
from experiments.grid import CellResult, write_csv
from experiments.report import markdown_table, pm, save_figure, write_report
from task.plots import plt


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
