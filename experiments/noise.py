"""Noise study: the QFL model trained and evaluated under gate noise and finite shots.

``python -m experiments.noise`` trains the hybrid model in the default federation (10
UAVs, Dirichlet 1.0) with the quantum layer run

- under depolarizing noise of probability p after every gate, on each of its wires
  (p in 0, 1e-3, 1e-2, 5e-2), simulated with density matrices
  (:class:`quantum.mixed.TorchDensityMatrixExecutor`; the tests check it against PennyLane
  ``default.mixed`` with :func:`quantum.noise.depolarizing_noise_model`, which is too slow
  to train a federation here);
- with every output estimated from a finite number of measurements (100 or 1,000 shots).

Noise acts in training (every UAV) and in the central evaluation alike. To stay
affordable each UAV keeps 200 images, runs are 8 rounds and evaluation uses 2,000 test
images; the report says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.grid import Cell, CellResult, run_grid
from experiments.report import (
    group,
    markdown_table,
    pm,
    positive_int,
    round_curves,
    save_figure,
    study_parser,
    write_report,
)
from task.plots import plt

STUDY = "noise"
SETTINGS: tuple[tuple[float, int], ...] = (
    (0.0, 0), (1e-3, 0), (1e-2, 0), (5e-2, 0), (0.0, 1000), (0.0, 100),
)
"""(depolarizing probability, shots) pairs; shots 0 = exact expectation values."""


def setting_label(gate_noise: float, shots: int) -> str:
    """Human label of one noise setting."""
    noise = f"p = {gate_noise:g}" if gate_noise else "no gate noise"
    return f"{noise}, {f'{shots:,} shots' if shots else 'exact read-out'}"


def cells(seeds: Sequence[int], rounds: int, samples: int) -> list[Cell]:
    """Every noise setting for every seed."""
    return [
        Cell(
            name=f"p{gate_noise:g}-shots{shots}-seed{seed}",
            overrides={
                "model": "hybrid",
                "gate-noise": gate_noise,
                "circuit-shots": shots,
                "seed": seed,
                "num-server-rounds": rounds,
                "max-samples-per-client": samples,
                "test-samples": 2000,
            },
            labels={"gate_noise": gate_noise, "shots": shots, "seed": seed,
                    "setting": setting_label(gate_noise, shots)},
        )
        for gate_noise, shots in SETTINGS
        for seed in seeds
    ]


def plot_noise(by_setting: dict[str, list[CellResult]], path: Path) -> None:
    """Accuracy per round for every setting, and final accuracy vs gate noise."""
    fig, (ax_rounds, ax_final) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    for index, (setting, runs) in enumerate(by_setting.items()):
        rounds, values = round_curves(runs, "accuracy")
        ax_rounds.plot(rounds, values.mean(0), color=f"C{index}", label=setting)
        if len(runs) > 1:
            ax_rounds.fill_between(rounds, values.min(0), values.max(0), color=f"C{index}",
                                   alpha=0.15)
    ax_rounds.set(xlabel="Server round", ylabel="Test accuracy (fraction)",
                  title="Accuracy per round (band: min-max over seeds)")
    ax_rounds.set_ylim(0, 1)
    ax_rounds.legend(fontsize=7)
    all_runs = [r for setting_runs in by_setting.values() for r in setting_runs]
    levels = sorted({r.cell.labels["gate_noise"] for r in all_runs})
    # p = 0 sits at the left edge of the log axis, a decade below the smallest p.
    zero_at = min((p for p in levels if p > 0), default=1e-3) / 10

    def position(p: float) -> float:
        return p if p > 0 else zero_at

    for index, shots in enumerate(sorted({r.cell.labels["shots"] for r in all_runs})):
        finals = [(r.cell.labels["gate_noise"], r.rows[-1]["accuracy"]) for r in all_runs
                  if r.cell.labels["shots"] == shots]
        noise_levels = sorted({p for p, _ in finals})
        means = [np.mean([a for q, a in finals if q == p]) for p in noise_levels]
        ax_final.plot([position(p) for p in noise_levels], means, marker="os^"[index % 3],
                      color=f"C{index}", linestyle="-" if len(noise_levels) > 1 else "none",
                      label="exact read-out" if not shots else f"{shots:,} shots")
        ax_final.scatter([position(p) for p, _ in finals], [a for _, a in finals], color="0.5",
                         s=10, zorder=3)
    ax_final.set(xscale="log", xlabel="Depolarizing probability p per gate and wire",
                 ylabel="Final test accuracy (fraction)",
                 title="Final accuracy vs gate noise (grey: single runs)")
    ax_final.set_xticks([position(p) for p in levels], [f"{p:g}" for p in levels])
    ax_final.minorticks_off()
    ax_final.legend(fontsize=8)
    for ax in (ax_rounds, ax_final):
        ax.grid(alpha=0.3, which="both")
    save_figure(fig, path)


def write_noise_report(study_dir: Path, results: Sequence[CellResult], rounds: int,
                       samples: int) -> None:
    """Figure and ``report.md`` of the noise study."""
    by_setting = group(results, "setting")
    plot_noise(by_setting, study_dir / "noise.png")
    baseline = [r.rows[-1]["accuracy"] for r in by_setting[setting_label(0.0, 0)]]
    table = []
    for setting, runs in by_setting.items():
        finals = [r.rows[-1]["accuracy"] for r in runs]
        table.append([
            setting, pm(finals), pm([r.rows[-1]["loss"] for r in runs]),
            f"{np.mean(finals) - np.mean(baseline):+.3f}",
            pm([np.mean([row["round_seconds"] for row in r.rows[1:]]) for r in runs], 1),
        ])
    seeds = sorted({r.cell.labels["seed"] for r in results})
    total_minutes = sum(r.wall_seconds for r in results) / 60
    text = f"""# Noise study: the QFL model under gate noise and finite shots

Reproduce: `python -m experiments.noise` ({len(results)} runs, {total_minutes:.0f} min here on
2 cores).

Hybrid model (4 qubits, 2 layers), 10 UAVs, Dirichlet(1.0), {rounds} rounds, {samples} images
per UAV, 2,000 test images, seeds {", ".join(map(str, seeds))}. This is a reduced setting
(fewer images and rounds than the case study) so that density-matrix training stays
affordable; compare settings with each other, not with the case study's figures.
Depolarizing noise of probability p follows every gate (encoding RY, trainable RX/RY/RZ,
CRX) on each of its wires, in training and in evaluation. With shots, every output of
the circuit is a finite-shot estimate (multinomial over the 16 basis states); the
gradient is the exact one (see `quantum/noise.py`).

{markdown_table(["setting", "final accuracy", "final loss", "vs noiseless",
                 "s per round"], table)}

![accuracy under noise](noise.png)

Per-round data: `rounds.csv`; one line per run: `cells.csv`.
"""
    write_report(study_dir, text)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the noise grid and write its report."""
    parser = study_parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2],
                        help="seeds to run (default: 1 2)")
    parser.add_argument("--rounds", type=positive_int, default=8,
                        help="server rounds per run (default: 8)")
    parser.add_argument("--samples", type=positive_int, default=200,
                        help="images per UAV (default: 200)")
    args = parser.parse_args(argv)
    results = run_grid(STUDY, cells(args.seeds, args.rounds, args.samples), args.results_dir,
                       rerun=args.rerun)
    study_dir = args.results_dir / STUDY
    write_noise_report(study_dir, results, args.rounds, args.samples)


if __name__ == "__main__":
    main()
