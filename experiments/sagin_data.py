"""The SAGIN study's figures from its cells: per-cell totals, groups over seeds, CSV rows, plots.

:mod:`experiments.sagin` runs the cells; this module reads them (``CellResult`` rows of
``metrics.json``, labelled ``uavs``, ``mode``, ``channel``, ``seed``) into
:class:`CellFigures`, groups them by (uavs, mode, channel) and draws the figures;
:mod:`experiments.sagin_report` writes the CSVs and ``report.md`` from them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from experiments.grid import PROJECT_ROOT, CellResult
from experiments.report import mean_std, save_figure
from relay.topology_file import load_topology
from task.plots import plt

MODE_ORDER = ("flat-sync", "relays-sync", "flat-async", "relays-async")
CHANNEL_ORDER = ("ideal", "teleport", "qkd")
LAYER_LABEL = {"ground": "bs"}
"""Hop classes name the base station's layer ``bs`` (the only ground node that relays)."""
TARGET_FRACTION = 0.8
"""Target accuracy of a federation size: this fraction of flat-sync's final mean accuracy
(the baseline; the best mode's when flat-sync did not run), on the reference channel."""
BASELINE = "flat-sync"
CURVE_CHANNELS = ("ideal", "teleport")
LINESTYLES = {"ideal": "-", "teleport": "--", "qkd": ":"}
MARKERS = {"flat-sync": "o", "relays-sync": "s", "flat-async": "^", "relays-async": "v"}
"""Markers and widths tell apart the modes whose curves coincide (flat and relays)."""
BILL_KEYS = ("messages", "bell_pairs", "classical_bits", "key_bits", "bytes")


# ------------------------------------------------------------------------ per cell
@cache
def node_layers(topology: str) -> dict[str, str]:
    """Each node's layer (``uav``, ``hap``, ``leo``, ``bs``) in a topology file."""
    path = Path(topology)
    loaded = load_topology(path if path.is_absolute() else PROJECT_ROOT / path)
    return {node.name: LAYER_LABEL.get(node.layer, node.layer) for node in loaded.nodes}


def hop_class(hop: str, layers: Mapping[str, str]) -> str:
    """``"uav-3>hap-0"`` -> ``"uav>hap"``: a hop named by the layers of its two ends."""
    first, second = hop.split(">", 1)
    return f"{layers.get(first, first)}>{layers.get(second, second)}"


def is_async(result: CellResult) -> bool:
    """Whether the cell ran ``mode='async'``."""
    return result.cell.overrides.get("mode") == "async"


def updates_of(row: Mapping[str, Any], asynchronous: bool) -> int:
    """Updates aggregated into one row: an asynchronous version's, or a round's UAVs."""
    if asynchronous:
        return len(row.get("staleness") or [])
    return int(row.get("clients_used") or 0)


@dataclass
class CellFigures:
    """What the report needs of one cell."""

    final_accuracy: float
    curve: list[tuple[int, float, float, int]]
    """(round or version, accuracy, mission time s, cumulative updates) per row."""
    totals: dict[str, float]
    hops: dict[str, dict[str, float]]
    staleness: list[int] = field(default_factory=list)

    def time_to(self, target: float) -> float | None:
        """Mission time (s) of the first row at or above ``target`` accuracy, if any."""
        return next((time_s for _r, accuracy, time_s, _u in self.curve if accuracy >= target),
                    None)


def cell_figures(result: CellResult) -> CellFigures:
    """Accuracy curve, run totals, per-hop-class bill and staleness of one cell."""
    asynchronous = is_async(result)
    layers = node_layers(str(result.cell.overrides["topology"]))
    curve, updates = [], 0
    totals = dict.fromkeys(("bell_pairs", "classical_bits", "key_bits", "bytes",
                            "space_messages", "keys_aborted", "updates"), 0.0)
    hops: dict[str, dict[str, float]] = {}
    staleness: list[int] = []
    latencies: list[float] = []
    for row in result.rows:
        updates += updates_of(row, asynchronous) if row["round"] > 0 else 0
        curve.append((int(row["round"]), float(row["accuracy"]),
                      float(row.get("emulated_time_s") or 0.0), updates))
        if row["round"] == 0:
            continue
        for key in ("bell_pairs", "classical_bits", "key_bits", "space_messages",
                    "keys_aborted"):
            totals[key] += float(row.get(key) or 0)
        totals["bytes"] += float(row.get("bytes_up") or 0) + float(row.get("bytes_down") or 0)
        for hop, bill in (row.get("hops") or {}).items():
            into = hops.setdefault(hop_class(hop, layers), dict.fromkeys(BILL_KEYS, 0.0))
            for key in BILL_KEYS:
                into[key] += float(bill.get(key, 0))
            if bill.get("messages"):
                latencies.append(float(bill.get("latency_s", 0.0)) / bill["messages"])
        staleness.extend(int(value) for value in row.get("staleness") or [])
    totals["updates"] = float(updates)
    totals["messages"] = float(sum(bill["messages"] for bill in hops.values()))
    totals["hop_latency_s"] = float(np.median(latencies)) if latencies else 0.0
    return CellFigures(float(result.rows[-1]["accuracy"]), curve, totals, hops, staleness)


# ----------------------------------------------------------------------- the groups
Key = tuple[int, str, str]
"""(uavs, mode, channel)."""


def by_group(results: Sequence[CellResult]) -> dict[Key, list[CellFigures]]:
    """Each (uavs, mode, channel)'s cells over seeds, in the study's order."""
    groups: dict[Key, list[CellFigures]] = {}
    for result in results:
        labels = result.cell.labels
        key = (int(labels["uavs"]), str(labels["mode"]), str(labels["channel"]))
        groups.setdefault(key, []).append(cell_figures(result))

    def order(key: Key) -> tuple[int, int, int]:
        return (key[0], _index(MODE_ORDER, key[1]), _index(CHANNEL_ORDER, key[2]))

    return {key: groups[key] for key in sorted(groups, key=order)}


def _index(order: Sequence[str], value: str) -> int:
    return order.index(value) if value in order else len(order)


def sizes_modes_channels(groups: Mapping[Key, Any]) -> tuple[list[int], list[str], list[str]]:
    """The federation sizes, modes and channels present, in the study's order."""
    sizes = sorted({key[0] for key in groups})
    modes = sorted({key[1] for key in groups}, key=lambda m: _index(MODE_ORDER, m))
    channels = sorted({key[2] for key in groups}, key=lambda c: _index(CHANNEL_ORDER, c))
    return sizes, modes, channels


def reference_channel(channels: Sequence[str]) -> str:
    """The channel accuracy and timing are compared on: ``ideal`` when present."""
    return "ideal" if "ideal" in channels else channels[0]


def targets(groups: Mapping[Key, list[CellFigures]]) -> dict[int, float]:
    """Per federation size, :data:`TARGET_FRACTION` of the baseline's final mean accuracy
    on the reference channel (the best mode's without a baseline), rounded down to 0.01."""
    sizes, _modes, channels = sizes_modes_channels(groups)
    channel = reference_channel(channels)
    found = {}
    for size in sizes:
        finals = {mode: statistics.fmean(c.final_accuracy for c in cells)
                  for (n, mode, ch), cells in groups.items() if n == size and ch == channel}
        base = finals.get(BASELINE, max(finals.values()))
        found[size] = math.floor(TARGET_FRACTION * base * 100 + 1e-9) / 100
    return found


def mean_total(cells: Sequence[CellFigures], key: str) -> float:
    """Mean over seeds of one run total."""
    return statistics.fmean(cell.totals[key] for cell in cells)


def mean_hops(cells: Sequence[CellFigures]) -> dict[str, dict[str, float]]:
    """Mean over seeds of the bill per hop class (a class missing in a seed counts 0)."""
    classes = sorted({name for cell in cells for name in cell.hops})
    return {name: {key: statistics.fmean(cell.hops.get(name, {}).get(key, 0.0)
                                         for cell in cells) for key in BILL_KEYS}
            for name in classes}


def time_to_target(cells: Sequence[CellFigures], target: float) -> tuple[float | None, int]:
    """Mean mission time (s) to ``target`` over the seeds that reached it, and how many did."""
    times = [t for t in (cell.time_to(target) for cell in cells) if t is not None]
    return (statistics.fmean(times) if times else None), len(times)


# ------------------------------------------------------------------------ CSV files
def summary_rows(groups: Mapping[Key, list[CellFigures]]) -> list[dict[str, Any]]:
    """One row per (uavs, mode, channel): accuracy, mission time, totals, staleness."""
    goal = targets(groups)
    rows = []
    for (size, mode, channel), cells in groups.items():
        mean, std = mean_std([c.final_accuracy for c in cells])
        to_target, reached = time_to_target(cells, goal[size])
        stale = [value for cell in cells for value in cell.staleness]
        rows.append({
            "uavs": size, "mode": mode, "channel": channel, "seeds": len(cells),
            "final_accuracy_mean": round(mean, 4), "final_accuracy_std": round(std, 4),
            "mission_time_end_s": round(statistics.fmean(c.curve[-1][2] for c in cells), 1),
            "target_accuracy": goal[size],
            "mission_time_to_target_s": None if to_target is None else round(to_target, 1),
            "seeds_reaching_target": reached,
            **{key: round(mean_total(cells, key), 1) for key in (
                "updates", "messages", "space_messages", "bell_pairs", "classical_bits",
                "key_bits", "bytes", "keys_aborted", "hop_latency_s")},
            "staleness_mean": round(statistics.fmean(stale), 3) if stale else None,
            "staleness_max": max(stale) if stale else None,
        })
    return rows


def hop_rows(groups: Mapping[Key, list[CellFigures]]) -> list[dict[str, Any]]:
    """One row per (uavs, mode, channel, hop class): the bill's mean over seeds."""
    return [{"uavs": size, "mode": mode, "channel": channel, "hop_class": name,
             **{key: round(value, 1) for key, value in bill.items()}}
            for (size, mode, channel), cells in groups.items()
            for name, bill in mean_hops(cells).items()]


def staleness_rows(groups: Mapping[Key, list[CellFigures]]) -> list[dict[str, Any]]:
    """How many updates had each staleness, per asynchronous (uavs, mode, channel)."""
    rows = []
    for (size, mode, channel), cells in groups.items():
        stale = [value for cell in cells for value in cell.staleness]
        for value in sorted(set(stale)):
            rows.append({"uavs": size, "mode": mode, "channel": channel, "staleness": value,
                         "updates": stale.count(value)})
    return rows


# -------------------------------------------------------------------------- figures
def plot_accuracy(groups: Mapping[Key, list[CellFigures]], size: int, path: Path) -> None:
    """Accuracy against round/version, updates received and mission time, one line per
    mode and channel (mean over seeds)."""
    _sizes, modes, channels = sizes_modes_channels(groups)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), constrained_layout=True)
    shown = [c for c in CURVE_CHANNELS if c in channels] or channels[:1]
    for index, mode in enumerate(modes):
        for channel in shown:
            cells = groups.get((size, mode, channel))
            if not cells:
                continue
            length = min(len(cell.curve) for cell in cells)
            curve = np.array([[point[:4] for point in cell.curve[:length]] for cell in cells],
                             dtype=float).mean(0)
            style = {"color": f"C{index}", "linestyle": LINESTYLES.get(channel, "-"),
                     "marker": MARKERS.get(mode, "."), "markersize": 4,
                     "linewidth": 1.2 if mode.startswith("relays") else 2.4,
                     "label": f"{mode}, {channel} (mean of {len(cells)})"}
            axes[0].plot(curve[:, 0], curve[:, 1], **style)
            axes[1].plot(curve[:, 3], curve[:, 1], **style)
            axes[2].plot(curve[:, 2] / 60, curve[:, 1], **style)
    for ax, xlabel in zip(axes, ("Round (sync) or version (async)",
                                 "Updates aggregated (cumulative)",
                                 "Emulated mission time (min)"), strict=True):
        ax.set(xlabel=xlabel, ylabel="Test accuracy (fraction)", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{size} UAVs over a 12-satellite LEO constellation: test accuracy")
    save_figure(fig, path)


def plot_bill(groups: Mapping[Key, list[CellFigures]], path: Path) -> None:
    """Bell pairs (teleport) and key bits (qkd) per hop class, stacked, one bar per mode."""
    sizes, modes, channels = sizes_modes_channels(groups)
    panels = [(c, k) for c, k in (("teleport", "bell_pairs"), ("qkd", "key_bits"))
              if c in channels] or [(channels[0], "messages")]
    fig, axes = plt.subplots(len(panels), len(sizes), figsize=(6 * len(sizes), 4 * len(panels)),
                             constrained_layout=True, squeeze=False)
    classes = sorted({name for cells in groups.values() for cell in cells for name in cell.hops})
    for row, (channel, key) in enumerate(panels):
        for column, size in enumerate(sizes):
            ax = axes[row][column]
            bottom = np.zeros(len(modes))
            for index, name in enumerate(classes):
                heights = np.array([mean_hops(groups.get((size, m, channel), []) or [])
                                    .get(name, {}).get(key, 0.0)
                                    if groups.get((size, m, channel)) else 0.0 for m in modes])
                ax.bar(modes, heights, bottom=bottom, color=f"C{index}", label=name)
                bottom += heights
            ax.set(title=f"{size} UAVs, {channel}: {key.replace('_', ' ')} per hop class",
                   ylabel=f"{key.replace('_', ' ')} over the run (mean of seeds)")
            ax.tick_params(axis="x", labelsize=8)
            ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path)


def plot_staleness(groups: Mapping[Key, list[CellFigures]], path: Path) -> bool:
    """Histogram of update staleness of the asynchronous modes; False if there are none."""
    sizes, modes, _channels = sizes_modes_channels(groups)
    asynchronous = [m for m in modes if any(c.staleness for (n, mode, _ch), cells
                                              in groups.items() if mode == m for c in cells)]
    if not asynchronous:
        return False
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4),
                             constrained_layout=True, squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        stale = {m: [v for (n, mode, _ch), cells in groups.items() if n == size and mode == m
                     for c in cells for v in c.staleness] for m in asynchronous}
        top = max((max(values) for values in stale.values() if values), default=0)
        width = 0.8 / len(asynchronous)
        for index, mode in enumerate(asynchronous):
            if not stale[mode]:
                continue
            counts = np.bincount(stale[mode], minlength=top + 1)
            color = f"C{MODE_ORDER.index(mode)}" if mode in MODE_ORDER else f"C{index}"
            ax.bar(np.arange(top + 1) - 0.4 + width * (index + 0.5), counts / counts.sum(),
                   width=width, color=color, label=f"{mode} ({len(stale[mode])} updates)")
        ax.set(title=f"{size} UAVs: staleness of the updates (all channels and seeds)",
               xlabel="Staleness (versions behind when aggregated)",
               ylabel="Fraction of updates")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def plot_topology_round(topology_file: str, seed: int, path: Path, last_round: int = 30
                        ) -> int:
    """The topology of a study's cells at the first round (of ``seed``'s runs, up to
    ``last_round``) in which a satellite carries a path, else round 1: which relays the
    UAVs' paths share is where ``hierarchy='relays'`` aggregates (the picture every run
    folder gets as ``topology.png``). Returns the round drawn."""
    from task.plots import plot_topology

    file = Path(topology_file)
    topology = load_topology(file if file.is_absolute() else PROJECT_ROOT / file)
    satellites = {node.name for node in topology.nodes if node.layer == "leo"}
    chosen = next(
        (r for r in range(1, last_round + 1)
         if any(link is not None and satellites & set(link.path)
                for link in topology.links_for_round(r, seed).values())),
        1,
    )
    positions = topology.positions_at(chosen * topology.round_duration_s, seed)
    plot_topology(topology, positions, topology.links_for_round(chosen, seed), path,
                  f"{topology.name}: round {chosen}, seed {seed}")
    return chosen
