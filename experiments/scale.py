"""Scale study: how round time and memory grow with the number of simulated UAVs.

``python -m experiments.scale`` runs the hybrid model in simulated federations of 10, 100
and 1000 UAVs (a swarm topology from :mod:`relay.swarm`, IID partitions capped at a few
dozen images, ``fraction-train`` chosen so that every round trains the same number of
UAVs) and records seconds per round and the peak resident memory of the whole simulation
(the cell's process tree: driver, Ray's GCS and raylet, workers). A federation that
trains a bounded number of UAVs per round should cost a bounded time per round; whatever
grows with the number of UAVs is overhead to find and remove.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.grid import PROJECT_ROOT, Cell, CellResult, run_grid
from experiments.report import (
    markdown_table,
    positive_int,
    save_figure,
    study_parser,
    write_report,
)
from relay.swarm import write_swarm
from task.plots import plt

STUDY = "scale"
DEFAULT_UAVS = (10, 100, 1000)


def cells(uavs: Sequence[int], per_round: int, rounds: int, samples: int,
          topology_dir: Path) -> list[Cell]:
    """One cell per federation size, each training ``per_round`` UAVs a round."""
    grid = []
    topology_dir.mkdir(parents=True, exist_ok=True)
    for count in uavs:
        topology = topology_dir / f"swarm-{count}.toml"
        if not topology.exists():
            write_swarm(topology, count, seed=0)
        trained = min(per_round, count)
        grid.append(
            Cell(
                name=f"uavs-{count}",
                overrides={
                    "model": "hybrid",
                    "num-server-rounds": rounds,
                    "partitioning": "iid",
                    "max-samples-per-client": samples,
                    "test-samples": 1000,
                    "fraction-train": trained / count,
                    "min-train-nodes": trained,
                    "topology": _portable(topology),
                },
                labels={"uavs": count, "trained_per_round": trained},
                num_supernodes=count,
            )
        )
    return grid


def _portable(path: Path) -> str:
    # Cells run in the project folder: a path relative to it stays valid in another clone,
    # so a finished cell is still recognised there.
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path.resolve())


def write_scale_report(study_dir: Path, results: Sequence[CellResult], rounds: int,
                       samples: int) -> None:
    """Figure and ``report.md`` of the scale study."""
    sizes = np.array([r.cell.labels["uavs"] for r in results], dtype=float)
    # Round 1 also pays for mapping every node to its UAV: shown apart from the rest.
    first = np.array([r.rows[1]["round_seconds"] for r in results])
    later = np.array([np.mean([row["round_seconds"] for row in r.rows[2:]]) if len(r.rows) > 2
                      else np.nan for r in results])
    peak_gib = np.array([r.peak_rss_bytes / 2**30 for r in results])
    wall = np.array([r.wall_seconds for r in results])
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    ax_time.plot(sizes, later, marker="o", label="rounds 2+ (mean)")
    ax_time.plot(sizes, first, marker="s", linestyle="--", label="round 1")
    ax_time.plot(sizes, wall, marker="^", linestyle=":", label="whole run (incl. start-up)")
    ax_time.set(xscale="log", yscale="log", xlabel="Simulated UAVs (SuperNodes)",
                ylabel="Seconds", title="Time per round and per run")
    ax_mem.plot(sizes, peak_gib, marker="o", color="tab:purple")
    ax_mem.set(xscale="log", xlabel="Simulated UAVs (SuperNodes)",
               ylabel="Peak resident memory (GiB)", title="Peak memory of the whole simulation")
    ax_mem.set_ylim(0, max(peak_gib.max() * 1.2, 1))
    for ax in (ax_time, ax_mem):
        ax.grid(alpha=0.3, which="both")
    ax_time.legend(fontsize=8)
    trained = results[0].cell.labels["trained_per_round"]
    fig.suptitle(f"Scale: {trained} UAVs trained per round, {samples} images each, hybrid model")
    save_figure(fig, study_dir / "scale.png")
    rows = [
        [r.cell.labels["uavs"], r.cell.labels["trained_per_round"], f"{f:.2f}", f"{lt:.2f}",
         f"{w:.0f}", f"{p:.2f}", f"{r.rows[-1]['accuracy']:.3f}"]
        for r, f, lt, w, p in zip(results, first, later, wall, peak_gib, strict=True)
    ]
    growth = ""
    if len(results) > 1 and np.all(np.isfinite(later)):
        slope = np.polyfit(np.log(sizes), np.log(later), 1)[0]
        mem_slope = np.polyfit(np.log(sizes), np.log(peak_gib), 1)[0]
        growth = (
            f"Fitted growth from {int(sizes[0])} to {int(sizes[-1])} UAVs: "
            f"round time ~ N^{slope:.2f}, peak memory ~ N^{mem_slope:.2f} "
            "(N = number of UAVs; an exponent of 0 is flat, 1 is linear)."
        )
    text = f"""# Scale study: 10 to 1000 simulated UAVs

Reproduce: `python -m experiments.scale` ({sum(wall) / 60:.0f} min here on 2 cores).

Hybrid model, {rounds} rounds, IID partitions capped at {samples} images, {trained} UAVs
trained per round whatever the federation size (`fraction-train` = {trained}/N), central
evaluation on 1,000 test images, ideal relay over a swarm topology (`relay.swarm`: N UAVs
within 5 km of the base station, plus the default HAP and LEO satellites). Memory is the
peak of the summed resident memory of the simulation's whole process tree, sampled every
0.5 s.

{markdown_table(["UAVs", "trained / round", "round 1 s", "rounds 2+ s", "run wall s",
                 "peak memory GiB", "final accuracy"], rows)}

{growth}

![round time and memory vs number of UAVs](scale.png)
"""
    write_report(study_dir, text)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the scale grid and write its report."""
    parser = study_parser(__doc__.splitlines()[0])
    parser.add_argument("--uavs", type=positive_int, nargs="+", default=list(DEFAULT_UAVS),
                        help="federation sizes (default: 10 100 1000)")
    parser.add_argument("--per-round", type=positive_int, default=10,
                        help="UAVs trained per round (default: 10)")
    parser.add_argument("--rounds", type=positive_int, default=5,
                        help="server rounds per run (default: 5)")
    parser.add_argument("--samples", type=positive_int, default=50,
                        help="images per UAV (default: 50)")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (round 1 is reported apart)")
    study_dir = args.results_dir / STUDY
    grid = cells(args.uavs, args.per_round, args.rounds, args.samples, study_dir / "topologies")
    results = run_grid(STUDY, grid, args.results_dir, rerun=args.rerun)
    write_scale_report(study_dir, results, args.rounds, args.samples)


if __name__ == "__main__":
    main()
