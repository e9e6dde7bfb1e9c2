"""Figures: the per-run metrics plot and the atomic PNG save the studies use too.

Importing this module loads matplotlib with the Agg backend (no display on servers and
in CI); :data:`plt` is its ``pyplot`` for callers that draw their own figures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

if TYPE_CHECKING:
    from relay.contacts import ContactPlan
    from relay.link import PathLink
    from relay.routing import Positions
    from relay.topology import Topology

__all__ = ["plot_contacts", "plot_metrics", "plot_topology", "plt", "save_figure"]

GANTT_ROWS = 40
"""Most UAV rows a contact chart draws; a larger swarm shows a sample of them."""


def plot_metrics(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Plot test accuracy and loss per round, side by side, into a PNG."""
    rounds = [row["round"] for row in rows]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax_acc.plot(rounds, [row["accuracy"] for row in rows], marker="o", color="tab:blue")
    ax_acc.set(title="Test accuracy", xlabel="Server round", ylabel="Accuracy (fraction)")
    ax_acc.set_ylim(0, 1)
    ax_loss.plot(rounds, [row["loss"] for row in rows], marker="o", color="tab:red")
    ax_loss.set(title="Test loss", xlabel="Server round", ylabel="Cross-entropy loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_contacts(plan: ContactPlan, path: Path, title: str = "Contact plan") -> None:
    """Draw a contact plan into a PNG: windows per satellite and UAV, and coverage.

    The upper panel is a Gantt chart: one row per satellite (in view of the base
    station) and per UAV (a path to it), a bar per window. Beyond :data:`GANTT_ROWS`
    UAVs it shows an evenly spaced sample of the UAVs that have gaps (the others are
    always in contact; the title says how many). The lower panel is the fraction of all
    UAVs in contact over time.
    """
    horizon = plan.horizon_s
    with_gaps = [uav for uav in plan.uav_ids if plan.windows(uav) != [(0.0, horizon)]]
    shown = with_gaps
    if len(with_gaps) > GANTT_ROWS:
        picks = sorted({round(i) for i in np.linspace(0, len(with_gaps) - 1, GANTT_ROWS)})
        shown = [with_gaps[i] for i in picks]
    rows = list(plan.satellites) + shown
    height = 2.5 + 0.18 * len(rows)
    fig, (ax_gantt, ax_share) = plt.subplots(
        2, 1, figsize=(11, height), sharex=True, constrained_layout=True,
        gridspec_kw={"height_ratios": [max(len(rows), 1) * 0.18 + 0.5, 1.6]},
    )
    minutes = 60.0
    for row, node in enumerate(rows):
        spans = [(start / minutes, (end - start) / minutes) for start, end in plan.windows(node)]
        colour = "tab:orange" if node in plan.satellite_windows else "tab:blue"
        ax_gantt.broken_barh(spans, (row - 0.35, 0.7), color=colour)
    ax_gantt.set_yticks(range(len(rows)), rows, fontsize=7 if len(rows) > 25 else 9)
    ax_gantt.invert_yaxis()
    ax_gantt.grid(axis="x", alpha=0.3)
    always = len(plan.uav_ids) - len(with_gaps)
    sample = f", {len(shown)} of {len(with_gaps)} shown" if len(shown) < len(with_gaps) else ""
    ax_gantt.set_title(f"{title}: satellites in view of the base station (orange), UAVs with "
                       f"a path (blue); {always} UAVs always in contact{sample}", fontsize=9)
    times = np.linspace(0.0, horizon, 600)
    share = [np.mean([plan.in_contact(uav, t) for uav in plan.uav_ids]) for t in times]
    ax_share.plot(times / minutes, share, color="tab:blue")
    ax_share.set(xlabel="Emulated time (min)", ylabel="UAVs in contact", ylim=(0, 1.05),
                 xlim=(0, horizon / minutes))
    ax_share.grid(alpha=0.3)
    save_figure(fig, path)


NODE_STYLES = {
    # layer: (legend label, marker, colour, size)
    "ground": ("base station", "s", "black", 90),
    "hap": ("HAP", "D", "tab:purple", 70),
    "leo": ("satellite", "*", "tab:orange", 140),
    "uav": ("UAV with a path", "o", "tab:blue", 28),
}
LABELLED_NODES = 40
"""Most nodes whose names a topology figure writes beside them."""


def _hop_fidelities(links: Mapping[str, PathLink | None]) -> dict[tuple[str, str], float]:
    """Each hop the paths use, with the lowest fidelity it has on any of them."""
    hops: dict[tuple[str, str], float] = {}
    for link in links.values():
        if link is None:
            continue
        pairs = zip(link.path, link.path[1:], strict=False)
        for (one, other), fidelity in zip(pairs, link.hop_fidelities, strict=True):
            key = (min(one, other), max(one, other))
            hops[key] = min(fidelity, hops.get(key, 1.0))
    return hops


def plot_topology(
    topology: Topology, positions: Positions, links: Mapping[str, PathLink | None],
    path: Path, title: str = "Topology",
) -> None:
    """Draw the nodes at ``positions`` and the paths of ``links`` into a PNG.

    Left, the plan (km east and north of the base station) of the ground and air nodes
    (satellites far outside it are left out; a hop to one runs off the edge towards it);
    right, every node by its distance from the base station and its altitude, both on
    scales linear near zero and logarithmic beyond, so UAVs, HAPs and satellites show
    together. Each hop a path uses is coloured by its fidelity (the pair's, when it is
    swapped; a hop shared by several paths shows its lowest); UAVs without a path are
    hollow, HAPs and satellites on no path faded.
    """
    names = [node.name for node in topology.nodes]
    layers = np.array([node.layer for node in topology.nodes])
    x, y = positions.x_km, positions.y_km
    side_x, side_y = np.hypot(x, y), np.maximum(positions.altitude_km, 0.0)
    hops = _hop_fidelities(links)
    values = np.array(list(hops.values()) or [1.0])
    norm = matplotlib.colors.Normalize(min(float(values.min()), float(values.max()) - 0.01),
                                       float(values.max()))
    cmap = matplotlib.colormaps["viridis"]
    no_path = np.array([layer == "uav" and links.get(name) is None
                        for name, layer in zip(names, layers, strict=True)])
    on_path = np.isin(names, [name for hop in hops for name in hop])
    faded = (layers != "uav") & ~on_path
    fig, (ax_plan, ax_side) = plt.subplots(1, 2, figsize=(13, 5.8), constrained_layout=True)
    # Names: the plan names the ground and air nodes, the side view the relays on a path.
    for ax, px, py, named in ((ax_plan, x, y, layers != "leo"),
                              (ax_side, side_x, side_y, (layers != "uav") & on_path)):
        hop_colours = cmap(norm(list(hops.values())))
        _draw_nodes_and_hops(ax, px, py, names, layers, hops, hop_colours, no_path, faded)
        if np.count_nonzero(named) <= LABELLED_NODES:
            for i in np.flatnonzero(named):
                ax.annotate(names[i], (px[i], py[i]), xytext=(4, 4), textcoords="offset points",
                            fontsize=7, zorder=4, annotation_clip=True)
    _plan_limits(ax_plan, x, y, layers != "leo")
    to_space = bool(np.any(on_path & (layers == "leo")))
    ax_plan.set(xlabel="East of the base station (km)", ylabel="North of the base station (km)",
                title="Plan (ground and air" + ("; lines off the edge lead to satellites)"
                                                if to_space else ")"))
    ax_side.set_xscale("symlog", linthresh=10.0)
    ax_side.set_yscale("symlog", linthresh=1.0, linscale=1.5)
    ax_side.set_xlim(0.0, max(float(side_x.max()) * 2.0, 20.0))
    ax_side.set_ylim(0.0, max(float(side_y.max()) * 2.0, 2.0))
    ax_side.set(xlabel="Distance from the base station (km)", ylabel="Altitude (km)",
                title="Side (every layer)")
    ax_plan.legend(handles=_topology_legend(layers, faded), loc="best", fontsize=8,
                   framealpha=0.85)
    colours = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(colours, ax=[ax_plan, ax_side], label="Hop fidelity", shrink=0.9)
    with_path = sum(link is not None for link in links.values())
    fig.suptitle(f"{title}: {with_path} of {len(links)} UAVs with a path; paths coloured "
                 "by each hop's fidelity", fontsize=10)
    save_figure(fig, path)


def _draw_nodes_and_hops(
    ax: Any, px: Any, py: Any, names: list[str], layers: Any,
    hops: dict[tuple[str, str], float], hop_colours: Any, no_path: Any, faded: Any,
) -> None:
    """The hops (coloured) and the nodes (one marker per kind) at ``px``, ``py``."""
    from matplotlib.collections import LineCollection

    index = {name: i for i, name in enumerate(names)}
    segments = [[(px[index[a]], py[index[a]]), (px[index[b]], py[index[b]])] for a, b in hops]
    ax.add_collection(LineCollection(segments, colors=hop_colours, linewidths=2.2, zorder=1))
    for layer, (_label, marker, colour, size) in NODE_STYLES.items():
        for shown, alpha in (((layers == layer) & ~no_path & ~faded, 1.0),
                             ((layers == layer) & faded, 0.3)):
            ax.scatter(px[shown], py[shown], marker=marker, c=colour, s=size, zorder=3,
                       alpha=alpha)
    ax.scatter(px[no_path], py[no_path], marker="o", s=28, facecolors="none",
               edgecolors="grey", zorder=3)
    ax.grid(alpha=0.3)


def _topology_legend(layers: Any, faded: Any) -> list[Any]:
    """Legend handles: each node kind present, UAVs without a path, faded relays."""
    from matplotlib.lines import Line2D

    legend = [Line2D([], [], linestyle="", marker=marker, color=colour, label=label,
                     markersize=8 if layer != "uav" else 6)
              for layer, (label, marker, colour, _size) in NODE_STYLES.items()
              if np.any(layers == layer)]
    legend.append(Line2D([], [], linestyle="", marker="o", markerfacecolor="none",
                         markeredgecolor="grey", label="UAV without a path"))
    if np.any(faded):
        legend.append(Line2D([], [], linestyle="", marker="*", color="tab:orange", alpha=0.3,
                             markersize=8, label="faded: relay on no path"))
    return legend


def _plan_limits(ax: Any, x: Any, y: Any, shown: Any) -> None:
    """Square plan limits around the nodes ``shown``, with a margin."""
    xs, ys = x[shown], y[shown]
    centre_x, centre_y = (xs.max() + xs.min()) / 2, (ys.max() + ys.min()) / 2
    half = max(xs.max() - xs.min(), ys.max() - ys.min(), 2.0) * 0.58
    ax.set_xlim(centre_x - half, centre_x + half)
    ax.set_ylim(centre_y - half, centre_y + half)
    ax.set_aspect("equal", adjustable="box")


def save_figure(fig: Any, path: Path) -> None:
    """Save a figure atomically as PNG and close it."""
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
