"""Scale study: how round time and memory grow with the number of simulated UAVs.

``python -m experiments.scale`` runs the hybrid model in simulated federations of 100,
1,000 and 10,000 UAVs (a swarm topology from :mod:`relay.swarm`, IID partitions capped at
a few dozen images, ``fraction-train`` chosen so that every round trains the same number
of UAVs) and records seconds per round, the UAV queries each round sent, the UAVs each
round trained, and the peak resident memory of the whole simulation (the cell's process
tree: driver, Ray's GCS and raylet, workers). A federation that trains a bounded number
of UAVs per round should cost a bounded time per round; whatever grows with the number
of UAVs is overhead to find and remove. The report checks the study's targets: seconds
per round within :data:`MAX_ROUND_TIME_RATIO` x from the smallest federation to the
largest, peak memory under :data:`MAX_PEAK_GIB` GiB, every round training its UAVs.
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
STOCK_STUDY = "scale-stock-polling"
"""The same study with Flower's simulation engine unchanged (``--flower-polling stock``)."""
DEFAULT_UAVS = (100, 1000, 10000)
DEFAULT_ROUNDS = 3
MAX_ROUND_TIME_RATIO = 1.5
"""Target: mean seconds per round of the largest federation over the smallest's."""
MAX_PEAK_GIB = 8.0
"""Target: peak resident memory of the whole simulation, GiB."""
MNIST_TRAIN_IMAGES = 60_000
DATA_PARTITIONS = 1000
"""Most data partitions: above this many UAVs, UAV i holds partition i mod 1,000 (MNIST's
60,000 training images fill at most 6,000 partitions of 10, and 1,000 partitions of 60
give every UAV of every cell the same 50 images at most)."""


def cells(uavs: Sequence[int], per_round: int, rounds: int, samples: int,
          topology_dir: Path, flower_polling: str = "pending") -> list[Cell]:
    """One cell per federation size, each training ``per_round`` UAVs a round.

    ``flower_polling``: see :mod:`experiments.flower_polling`.
    """
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
                    "data-partitions": min(count, DATA_PARTITIONS),
                    "test-samples": 1000,
                    "fraction-train": trained / count,
                    "min-train-nodes": trained,
                    "topology": _portable(topology),
                },
                labels={"uavs": count, "trained_per_round": trained},
                num_supernodes=count,
                flower_polling=flower_polling,
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


def _trained(result: CellResult) -> list[int]:
    return [int(row.get("clients_used", 0)) for row in result.rows[1:]]


def _round_seconds(result: CellResult) -> list[float]:
    return [float(row["round_seconds"]) for row in result.rows[1:]]


def _queries(result: CellResult) -> list[int]:
    return [int(row.get("uav_queries", 0)) for row in result.rows[1:]]


def _load(result: CellResult) -> str:
    start, end = result.record.get("load_average_start"), result.record.get("load_average_end")
    return f"{start[0]:.1f} → {end[0]:.1f}" if start and end else "n/a"


def plot_scale(study_dir: Path, results: Sequence[CellResult], title: str) -> None:
    """``scale.png``: seconds per round and peak memory against the number of UAVs."""
    sizes = np.array([r.cell.labels["uavs"] for r in results], dtype=float)
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    for size, result in zip(sizes, results, strict=True):
        seconds = _round_seconds(result)
        ax_time.scatter([size] * len(seconds), seconds, marker="x", color="0.5", zorder=3)
    means = [float(np.mean(_round_seconds(r))) for r in results]
    ax_time.plot(sizes, means, marker="o", label="mean of the rounds")
    ax_time.scatter([], [], marker="x", color="0.5", label="each round")
    ax_time.axhline(MAX_ROUND_TIME_RATIO * means[0], color="0.3", linestyle="--", linewidth=1,
                    label=f"target: at most {MAX_ROUND_TIME_RATIO:g} x the smallest's mean")
    top = max(max(max(_round_seconds(r)) for r in results), MAX_ROUND_TIME_RATIO * means[0])
    ax_time.set(xscale="log", xlabel="Simulated UAVs (SuperNodes)", ylabel="Seconds per round",
                title="Time per round", ylim=(0, top * 1.15))
    peak_gib = np.array([r.peak_rss_bytes / 2**30 for r in results])
    ax_mem.plot(sizes, peak_gib, marker="o", color="tab:purple", label="peak (process tree)")
    ax_mem.axhline(MAX_PEAK_GIB, color="0.3", linestyle="--", linewidth=1,
                   label=f"target: under {MAX_PEAK_GIB:g} GiB")
    ax_mem.set(xscale="log", xlabel="Simulated UAVs (SuperNodes)",
               ylabel="Peak resident memory (GiB)", title="Peak memory of the whole simulation")
    ax_mem.set_ylim(0, max(peak_gib.max(), MAX_PEAK_GIB) * 1.15)
    for ax in (ax_time, ax_mem):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, study_dir / "scale.png")


def _checks(results: Sequence[CellResult]) -> list[str]:
    """The study's targets, each as one line saying whether it was met and by what."""
    means = [float(np.mean(_round_seconds(r))) for r in results]
    smallest, largest = results[0].cell.labels["uavs"], results[-1].cell.labels["uavs"]
    ratio = means[-1] / means[0]
    peak = max(r.peak_rss_bytes for r in results) / 2**30
    short = [
        f"{r.cell.labels['uavs']} UAVs round {index}: {used}"
        for r in results
        for index, used in enumerate(_trained(r), start=1)
        if used != r.cell.labels["trained_per_round"]
    ]

    def verdict(met: bool) -> str:
        return "met" if met else "**not met**"

    return [
        f"- Seconds per round, {largest:,} UAVs over {smallest:,}: {means[-1]:.2f} / "
        f"{means[0]:.2f} = {ratio:.2f} (target at most {MAX_ROUND_TIME_RATIO:g}): "
        f"{verdict(ratio <= MAX_ROUND_TIME_RATIO)}.",
        f"- Peak memory of the whole simulation: {peak:.2f} GiB at most (target under "
        f"{MAX_PEAK_GIB:g} GiB): {verdict(peak < MAX_PEAK_GIB)}.",
        "- Every round trained its UAVs: "
        + (verdict(True) if not short else f"{verdict(False)} ({'; '.join(short)})") + ".",
    ]


def _machine(results: Sequence[CellResult]) -> str:
    machine = next((r.record["machine"] for r in results if r.record.get("machine")), None)
    if not machine:
        return "not recorded"
    return (f"{machine.get('cpu', 'unknown CPU')}, {machine.get('cores')} cores, "
            f"{machine.get('memory_gib', '?')} GiB")


def _polling_text(results: Sequence[CellResult]) -> str:
    modes = {r.record.get("flower_polling", r.cell.flower_polling) for r in results}
    if modes == {"pending"}:
        return (
            "Flower's simulation engine ran with the harness fix of "
            "`experiments/flower_polling.py`: Flower 1.41 asks every simulated node for "
            "messages every 0.1 s, each time scanning every message in flight (N x M "
            "look-ups per cycle: a busy core and 0.3 s or more of latency per message "
            "exchange at 10,000 UAVs); with the fix it asks only the nodes that have a "
            "message, as deployment's SuperNodes pull only their own. "
            "`--flower-polling stock` measures the engine unchanged."
        )
    return ("Flower's simulation engine ran unchanged (`--flower-polling stock`): it asks "
            "every simulated node for messages every 0.1 s (see "
            "`experiments/flower_polling.py`).")


def write_scale_report(study_dir: Path, results: Sequence[CellResult], rounds: int,
                       samples: int, command: str = "python -m experiments.scale") -> None:
    """Figure and ``report.md`` of the scale study."""
    sizes = np.array([r.cell.labels["uavs"] for r in results], dtype=float)
    means = np.array([np.mean(_round_seconds(r)) for r in results])
    peak_gib = np.array([r.peak_rss_bytes / 2**30 for r in results])
    wall = np.array([r.wall_seconds for r in results])
    trained = results[0].cell.labels["trained_per_round"]
    title = f"Scale: {trained} UAVs trained per round, at most {samples} images each, hybrid model"
    plot_scale(study_dir, results, title)
    rows = [
        [f"{r.cell.labels['uavs']:,}", "-".join(sorted({str(n) for n in _trained(r)})),
         " / ".join(f"{s:.2f}" for s in _round_seconds(r)), f"{mean:.2f}",
         " / ".join(str(q) for q in _queries(r)), f"{w:.0f}", f"{p:.2f}",
         f"{r.rows[-1]['accuracy']:.3f}", _load(r)]
        for r, mean, w, p in zip(results, means, wall, peak_gib, strict=True)
    ]
    growth = ""
    if len(results) > 1:
        slope = np.polyfit(np.log(sizes), np.log(means), 1)[0]
        mem_slope = np.polyfit(np.log(sizes), np.log(peak_gib), 1)[0]
        growth = (
            f"Fitted growth from {int(sizes[0]):,} to {int(sizes[-1]):,} UAVs: "
            f"round time ~ N^{slope:.2f}, peak memory ~ N^{mem_slope:.2f} "
            "(N = number of UAVs; an exponent of 0 is flat, 1 is linear)."
        )
    versions = sorted({str(r.record.get("code_version", "unknown")) for r in results})
    text = f"""# Scale study: {int(sizes[0]):,} to {int(sizes[-1]):,} simulated UAVs

Reproduce: `{command}` ({wall.sum() / 60:.0f} min of cells here; code
{", ".join(versions)}). Machine: {_machine(results)}, shared with other jobs: the load
average (1 min) at the start and end of each cell is in the table.

Hybrid model, {rounds} rounds, IID partitions of MNIST's {MNIST_TRAIN_IMAGES:,} training
images capped at {samples} images per UAV: one partition per UAV up to
{DATA_PARTITIONS:,} UAVs; above, run config `data-partitions` = {DATA_PARTITIONS:,} and UAV i
holds partition i mod {DATA_PARTITIONS:,} (the split cannot give 10,000 UAVs 10 images
each), so every UAV of every cell trains on the same number of images;
{trained} UAVs trained per round whatever the federation size
(`fraction-train` = {trained}/N, `min-train-nodes` = {trained}), central evaluation on 1,000
test images, ideal relay over a swarm topology (`relay.swarm`: N UAVs within 5 km of the
base station at round 0, then on their patrol circles, plus the default HAP and LEO
satellites). Each round draws its UAVs and asks a drawn node which UAV it is only when
it is first drawn (`strategies/discovery.py`); the first round's draw is made at start-up,
before the run folder is written, so its queries count in round 1's `uav_queries` but
its seconds only in the run's wall time. Memory is the peak of the summed resident memory
of the simulation's whole process tree, sampled every 0.5 s.

{_polling_text(results)}

{markdown_table(["UAVs", "trained / round", "s per round (1 / 2 / ...)", "mean s / round",
                 "UAV queries per round", "run wall s", "peak memory GiB", "final accuracy",
                 "load avg (start → end)"], rows)}

{growth}

Targets:

{chr(10).join(_checks(results))}

![round time and memory vs number of UAVs](scale.png)
"""
    write_report(study_dir, text)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the scale grid and write its report."""
    parser = study_parser(__doc__.splitlines()[0])
    parser.add_argument("--uavs", type=positive_int, nargs="+", default=list(DEFAULT_UAVS),
                        help="federation sizes (default: 100 1000 10000)")
    parser.add_argument("--per-round", type=positive_int, default=10,
                        help="UAVs trained per round (default: 10)")
    parser.add_argument("--rounds", type=positive_int, default=DEFAULT_ROUNDS,
                        help=f"server rounds per run (default: {DEFAULT_ROUNDS})")
    parser.add_argument("--samples", type=positive_int, default=50,
                        help="images per UAV at most (default: 50)")
    parser.add_argument("--flower-polling", choices=("pending", "stock"), default="pending",
                        help="Flower's simulation engine polls only nodes with a message "
                             "(pending, default: experiments/flower_polling.py) or every "
                             f"node (stock, in results/{STOCK_STUDY}/)")
    args = parser.parse_args(argv)
    uavs = sorted(set(args.uavs))
    command = (f"python -m experiments.scale --uavs {' '.join(str(n) for n in uavs)} "
               f"--per-round {args.per_round} --rounds {args.rounds}"
               + (f" --samples {args.samples}" if args.samples != 50 else "")
               + (" --flower-polling stock" if args.flower_polling == "stock" else ""))
    study = STUDY if args.flower_polling == "pending" else STOCK_STUDY
    study_dir = args.results_dir / study
    # Both variants fly the same swarms.
    topologies = args.results_dir / STUDY / "topologies"
    grid = cells(uavs, args.per_round, args.rounds, args.samples, topologies,
                 args.flower_polling)
    results = run_grid(study, grid, args.results_dir, rerun=args.rerun)
    write_scale_report(study_dir, results, args.rounds, args.samples, command)


if __name__ == "__main__":
    main()
