"""Channel study: what the quantum relay does to learning, and what it costs.

``python -m experiments.channel`` has two parts.

1. Teleport channel, in federated runs: the hybrid model trained over the ``teleport``
   channel on the default SAGIN topology with every link's raw fidelity degraded by a
   factor (``1 - k (1 - F)``, k = 0 makes every link perfect), for several shot counts.
   Final accuracy against the measured end-to-end fidelity, and the resource bill per
   round (Bell pairs, classical bits, emulated latency).
2. QKD channel, key establishment alone (no training needed: the key decides whether the
   payload goes through): emulated BB84 sessions of 16,384 detected signals over paths of
   a given end-to-end fidelity, with an intercept-resend eavesdropper on a fraction of the
   signals. Secret key bits per session and abort rate against fidelity and eavesdropping,
   beside the asymptotic Shor-Preskill figure.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.grid import PROJECT_ROOT, Cell, CellResult, run_grid, write_csv
from experiments.report import (
    markdown_table,
    positive_int,
    save_figure,
    study_parser,
    write_report,
)
from relay import physics
from relay.bb84 import (
    DEFAULT_RAW_BITS,
    DEFAULT_SAMPLE_FRACTION,
    VERIFICATION_HASH_BITS,
    EmulatedQKDSource,
)
from relay.swarm import write_topology
from relay.topology_file import DEFAULT_TOPOLOGY_PATH
from task.plots import plt

STUDY = "channel"
DEGRADATIONS = (0.0, 1.0, 3.0, 6.0)
SHOTS = (200, 20000)
QKD_FIDELITIES = tuple(np.round(np.linspace(0.80, 1.0, 21), 3))
QKD_EAVESDROPPING = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)
QKD_SESSIONS = 40
IDEAL_CELL = "ideal-reference"
"""The same federation over the ideal channel: what the teleported runs are compared to."""
STUDY_SECRET = b"channel-study-emulation-only-secret"
"""Seeds the emulated QKD source of this study (not a key; no payload is protected)."""


# ---------------------------------------------------------------------- teleport runs
def degraded_topology(path: Path, factor: float) -> Path:
    """Write the default topology with every link's raw fidelity F -> 1 - factor (1 - F)."""
    document = tomllib.loads(DEFAULT_TOPOLOGY_PATH.read_text(encoding="utf-8"))
    for link in document["links"].values():
        link["raw_fidelity"] = round(1.0 - factor * (1.0 - link["raw_fidelity"]), 6)
    document["topology"]["name"] = f"default-sagin-raw-infidelity-x{factor:g}"
    return write_topology(
        path, document,
        f"default topology, every link's raw infidelity multiplied by {factor:g}; "
        "made by experiments.channel",
    )


def _portable(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path.resolve())


def teleport_cells(rounds: int, samples: int, topology_dir: Path,
                   degradations: Sequence[float] = DEGRADATIONS,
                   shots: Sequence[int] = SHOTS) -> list[Cell]:
    """Every (link degradation, shots) pair, and the ideal channel; same seed and data."""
    topology_dir.mkdir(parents=True, exist_ok=True)
    common = {
        "num-server-rounds": rounds,
        "max-samples-per-client": samples,
        "test-samples": 2000,
        "seed": 1,
    }
    grid = [Cell(name=IDEAL_CELL, overrides={"relay": "ideal", **common},
                 labels={"infidelity_factor": math.nan, "shots": 0})]
    for factor in degradations:
        topology = topology_dir / f"infidelity-x{factor:g}.toml"
        if not topology.exists():
            degraded_topology(topology, factor)
        for count in shots:
            grid.append(Cell(
                name=f"teleport-x{factor:g}-shots{count}",
                overrides={
                    "relay": "teleport",
                    "shots": count,
                    "topology": _portable(topology),
                    **common,
                },
                labels={"infidelity_factor": factor, "shots": count},
            ))
    return grid


def _trained_rows(result: CellResult) -> list[dict]:
    return [row for row in result.rows if row["round"] > 0]


def teleport_summary(results: Sequence[CellResult]) -> list[dict]:
    """Per cell: mean fidelity, final accuracy and the mean bill per round."""
    summary = []
    for result in results:
        if result.cell.name == IDEAL_CELL:
            continue
        rows = _trained_rows(result)
        fidelities = [row["fidelity"] for row in rows if row["fidelity"] is not None]
        summary.append({
            "factor": result.cell.labels["infidelity_factor"],
            "shots": result.cell.labels["shots"],
            "fidelity": float(np.mean(fidelities)) if fidelities else math.nan,
            "accuracy": result.rows[-1]["accuracy"],
            "loss": result.rows[-1]["loss"],
            "bell_pairs": float(np.mean([row["bell_pairs"] for row in rows])),
            "classical_bits": float(np.mean([row["classical_bits"] for row in rows])),
            "latency_s": float(np.mean([row["latency_s"] for row in rows])),
            "clients_used": float(np.mean([row["clients_used"] for row in rows])),
        })
    return summary


# -------------------------------------------------------------------------- qkd part
def asymptotic_key_bits(fidelity: float, eavesdropper: float) -> float:
    """Key bits per session if the QBER were known exactly (no finite-size bound).

    The same bits are kept as in the emulation: half the signals survive sifting, the
    disclosed sample is spent, Shor-Preskill's ``1 - 2 h(Q)`` of the rest survives
    privacy amplification, less the verification hash.
    """
    kept = DEFAULT_RAW_BITS / 2 * (1 - DEFAULT_SAMPLE_FRACTION)
    fraction = float(physics.secret_key_fraction(physics.bb84_qber(fidelity, eavesdropper)))
    return max(kept * fraction - VERIFICATION_HASH_BITS, 0.0)


def qkd_grid(fidelities: Sequence[float] = QKD_FIDELITIES,
             eavesdropping: Sequence[float] = QKD_EAVESDROPPING,
             sessions: int = QKD_SESSIONS) -> list[dict]:
    """Emulated BB84 sessions for every (fidelity, eavesdropping fraction)."""
    rows = []
    for fraction in eavesdropping:
        source = EmulatedQKDSource(STUDY_SECRET, eavesdropper=float(fraction))
        for fidelity in fidelities:
            transcripts = [
                source.establish(f"study|{fidelity}|{fraction}|{i}".encode(), float(fidelity),
                                 "sender").transcript
                for i in range(sessions)
            ]
            rows.append({
                "fidelity": float(fidelity),
                "eavesdropper": float(fraction),
                "sessions": sessions,
                "abort_rate": float(np.mean([t.aborted for t in transcripts])),
                "key_bits_mean": float(np.mean([t.key_bits for t in transcripts])),
                "qber_mean": float(np.mean([t.qber_estimate for t in transcripts])),
                "qber_model": float(physics.bb84_qber(fidelity, fraction)),
                "asymptotic_key_bits": asymptotic_key_bits(fidelity, fraction),
            })
    return rows


# ---------------------------------------------------------------------------- report
def plot_teleport(summary: Sequence[dict], ideal_accuracy: float | None, path: Path) -> None:
    """Final accuracy vs end-to-end fidelity per shot count, and the bill per round."""
    fig, (ax_acc, ax_bill) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    if ideal_accuracy is not None:
        ax_acc.axhline(ideal_accuracy, color="0.3", linestyle="--", linewidth=1,
                       label="ideal channel (same runs' settings)")
    for index, shots in enumerate(sorted({row["shots"] for row in summary})):
        rows = sorted((r for r in summary if r["shots"] == shots), key=lambda r: r["fidelity"])
        ax_acc.plot([r["fidelity"] for r in rows], [r["accuracy"] for r in rows], marker="o",
                    color=f"C{index}", label=f"{shots:,} shots per parameter")
        ax_bill.plot([r["fidelity"] for r in rows], [r["bell_pairs"] for r in rows], marker="o",
                     color=f"C{index}", label=f"Bell pairs, {shots:,} shots")
    ax_acc.set(xlabel="Mean end-to-end fidelity of the UAV paths",
               ylabel="Final test accuracy (fraction)",
               title="Teleport channel: accuracy vs path fidelity")
    ax_acc.set_ylim(0, 1)
    ax_bill.set(xlabel="Mean end-to-end fidelity of the UAV paths",
                ylabel="Bell pairs per round (all UAVs, up + down)", yscale="log",
                title="Teleport channel: entanglement used per round")
    for ax in (ax_acc, ax_bill):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_qkd(rows: Sequence[dict], path: Path) -> None:
    """Key bits per session and abort rate vs fidelity, one line per eavesdropping level."""
    fig, (ax_key, ax_abort) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    for index, fraction in enumerate(sorted({row["eavesdropper"] for row in rows})):
        line = sorted((r for r in rows if r["eavesdropper"] == fraction),
                      key=lambda r: r["fidelity"])
        f = [r["fidelity"] for r in line]
        ax_key.plot(f, [r["key_bits_mean"] for r in line], marker=".", color=f"C{index}",
                    label=f"eavesdropper on {fraction:.0%}")
        ax_key.plot(f, [r["asymptotic_key_bits"] for r in line], color=f"C{index}",
                    linestyle=":", linewidth=1)
        ax_abort.plot(f, [r["abort_rate"] for r in line], marker=".", color=f"C{index}",
                      label=f"eavesdropper on {fraction:.0%}")
    ax_key.set(xlabel="End-to-end path fidelity",
               ylabel=f"Secret key bits per session ({DEFAULT_RAW_BITS:,} signals)",
               title="QKD: key per session (dotted: asymptotic)")
    ax_abort.set(xlabel="End-to-end path fidelity", ylabel="Abort rate (fraction of sessions)",
                 title="QKD: sessions aborted (QBER bound > 11 %)")
    ax_abort.set_ylim(-0.02, 1.02)
    for ax in (ax_key, ax_abort):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def _threshold_fidelity(rows: Sequence[dict], fraction: float) -> float | None:
    """Lowest fidelity in the grid where no session aborted, for one eavesdropping level."""
    safe = [r["fidelity"] for r in rows if r["eavesdropper"] == fraction and r["abort_rate"] == 0]
    return min(safe) if safe else None


def qkd_summary_table(qkd_rows: Sequence[dict]) -> list[list[str]]:
    """Rows of the report's QKD table: per eavesdropper fraction, mean key bits / abort
    rate at a few fidelities, and the lowest fidelity with no abort."""
    qkd_table = []
    for fraction in sorted({r["eavesdropper"] for r in qkd_rows}):
        line = {r["fidelity"]: r for r in qkd_rows if r["eavesdropper"] == fraction}
        picks = [f for f in (1.0, 0.95, 0.9, 0.85) if f in line]
        threshold = _threshold_fidelity(qkd_rows, fraction)
        qkd_table.append(
            [f"{fraction:.0%}"]
            + [f"{line[f]['key_bits_mean']:.0f} / {line[f]['abort_rate']:.0%}" for f in picks]
            + [f"{threshold:.2f}" if threshold is not None else "none"]
        )
    return qkd_table


def write_channel_report(study_dir: Path, results: Sequence[CellResult],
                         qkd_rows: Sequence[dict], rounds: int, samples: int) -> None:
    """Figures and ``report.md`` of the channel study."""
    summary = teleport_summary(results)
    ideal = next((r for r in results if r.cell.name == IDEAL_CELL), None)
    ideal_accuracy = ideal.rows[-1]["accuracy"] if ideal else None
    write_csv(study_dir / "teleport_summary.csv", list(summary[0]), summary)
    plot_teleport(summary, ideal_accuracy, study_dir / "teleport.png")
    plot_qkd(qkd_rows, study_dir / "qkd.png")
    teleport_table = [
        [f"{r['factor']:g}", f"{r['shots']:,}", f"{r['fidelity']:.4f}", f"{r['accuracy']:.4f}",
         f"{r['loss']:.4f}", f"{r['bell_pairs']:.3g}", f"{r['classical_bits']:.3g}",
         f"{r['latency_s']:.3g}", f"{r['clients_used']:.1f}"]
        for r in sorted(summary, key=lambda r: (r["factor"], r["shots"]))
    ]
    qkd_table = qkd_summary_table(qkd_rows)
    total_minutes = sum(r.wall_seconds for r in results) / 60
    ideal_text = (
        f"accuracy {ideal_accuracy:.4f} (loss {ideal.rows[-1]['loss']:.4f})"
        if ideal else "(not run)"
    )
    text = f"""# Channel study: the teleport and QKD relays

Reproduce: `python -m experiments.channel` ({len(results)} federated runs, {total_minutes:.0f} min
here on 2 cores, plus {len(qkd_rows) * qkd_rows[0]['sessions']:,} emulated BB84 sessions).

## Teleport: accuracy vs path fidelity and shots
Hybrid model, 10 UAVs, Dirichlet(1.0), {rounds} rounds, {samples} images per UAV, 2,000 test
images, seed 1. Every link's raw fidelity F of the default topology is degraded to
1 - k (1 - F); the end-to-end fidelity is the mean over the UAV paths and rounds that
`metrics.json` reports. Bell pairs, classical bits and latency are per round, summed over
the up- and downlinks of all UAVs (latency: the slowest link's emulated time).
The same federation over the ideal channel reaches {ideal_text}.

{markdown_table(["k", "shots", "end-to-end fidelity", "final accuracy", "final loss",
                 "Bell pairs / round", "classical bits / round", "latency s / round",
                 "UAVs used / round"], teleport_table)}

![teleport accuracy and cost vs fidelity](teleport.png)

## QKD: key and aborts vs fidelity and eavesdropping
{QKD_SESSIONS} sessions of {DEFAULT_RAW_BITS:,} detected signals per cell, 20 % of the sifted
bits disclosed, abort when the 99 % Clopper-Pearson upper bound of the QBER exceeds 11 %.
An aborted key means the payload of that link is not sent that round (the run keeps
its model; see the relay section of the README). Cells: mean key bits / abort rate.

{markdown_table(["eavesdropper", *[f"F = {f}" for f in (1.0, 0.95, 0.9, 0.85)],
                 "lowest F with no abort"], qkd_table)}

![qkd key bits and abort rate](qkd.png)

Data: `rounds.csv`, `cells.csv`, `teleport_summary.csv`, `qkd.csv`.
"""
    write_report(study_dir, text)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the channel study and write its report."""
    parser = study_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive_int, default=8,
                        help="server rounds per teleport run (default: 8)")
    parser.add_argument("--samples", type=positive_int, default=300,
                        help="images per UAV in the teleport runs (default: 300)")
    args = parser.parse_args(argv)
    study_dir = args.results_dir / STUDY
    study_dir.mkdir(parents=True, exist_ok=True)
    qkd_rows = qkd_grid()
    write_csv(study_dir / "qkd.csv", list(qkd_rows[0]), qkd_rows)
    grid = teleport_cells(args.rounds, args.samples, study_dir / "topologies")
    results = run_grid(STUDY, grid, args.results_dir, rerun=args.rerun)
    write_channel_report(study_dir, results, qkd_rows, args.rounds, args.samples)


if __name__ == "__main__":
    main()
